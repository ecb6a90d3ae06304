//! The device side of the backend seam: the one trait the runtime loads
//! compiled code through ([`Device`]) and the registry of devices this
//! runtime carries ([`lookup`], [`all`]). A backend's code generator (the
//! compile side, `m4c_compiler::backend::CodeGenerator`) and its device
//! share the backend's name, which bundles record per module.
//!
//! The reference backend has no device: its artifact is the IR, which
//! [`super::Interpreter`] runs.

use std::sync::Arc;

use m4c_ir::Graph;

use super::compiled::CpuDevice;
use super::{CodeLoadError, ModuleExecutor, Signature};
use crate::bundle::ModuleCode;

/// Loads one backend's compiled code into a [`ModuleExecutor`]. No LLVM,
/// no compiler: a device crate's loader behind a uniform face.
pub trait Device: Send + Sync {
    /// The backend name (as the code generator's and the bundle's).
    fn name(&self) -> &'static str;
    /// Whether this host can run code built for `target`, with the reason
    /// when not.
    fn runs_here(&self, target: &str) -> Result<(), String>;
    /// Validates `code` against the module's graph (interface, buffers,
    /// weights) before anything of it is loaded or run; bundles call it
    /// when opened.
    fn check(&self, code: &ModuleCode, graph: &Graph) -> Result<(), String>;
    /// Loads `code` (already checked) of module `name` with `signature`,
    /// to run on `threads` threads.
    fn load(
        &self,
        name: &str,
        code: &ModuleCode,
        signature: Signature,
        threads: usize,
    ) -> Result<Arc<dyn ModuleExecutor>, CodeLoadError>;
    /// Loads `code` of a bundle whose native code is refused (`why`, see
    /// `load::check_trust`) where part of the backend's code is data that
    /// this runtime runs itself (the NPU's programs, run by the
    /// simulator): every native part runs on the reference interpreter
    /// with `why` as its reason. `None` (the default) when all of the
    /// code is native, so nothing of it may be loaded.
    fn load_without_native(
        &self,
        _name: &str,
        _code: &ModuleCode,
        _signature: Signature,
        _threads: usize,
        _why: &str,
    ) -> Option<Result<Arc<dyn ModuleExecutor>, CodeLoadError>> {
        None
    }
}

/// Every device this runtime carries.
pub fn all() -> &'static [&'static dyn Device] {
    &[
        &CpuDevice,
        &super::npu::NpuDevice,
        #[cfg(feature = "gpu")]
        &super::gpu::GpuDevice,
    ]
}

/// The device for backend `name`, if this runtime has one.
pub fn lookup(name: &str) -> Option<&'static dyn Device> {
    all().iter().copied().find(|d| d.name() == name)
}
