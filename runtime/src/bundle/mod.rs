//! Deployable bundles: one file holding several modules (IR graphs and,
//! per CPU target, compiled code) and their weights, installed once and memory-mapped
//! at load. The format is specified in `docs/BUNDLE.md`; the compiler writes
//! it with [`container::encode`] and the definitions in [`format`].
//!
//! ```no_run
//! use m4c_runtime::bundle::Bundle;
//! let fw = Bundle::open("M4.fw".as_ref())?;
//! for name in fw.modules() {
//!     let graph = fw.module(name)?; // weights are slices of the file's map
//!     println!("{name}: {} nodes", graph.nodes.len());
//! }
//! # Ok::<(), m4c_runtime::bundle::BundleError>(())
//! ```

mod code;
pub mod container;
mod error;
pub mod format;
pub mod lean;
pub(crate) mod reader;
pub mod sign;

use std::io::Read;
use std::path::Path;

pub use code::ModuleCode;
pub use error::BundleError;
pub use reader::Bundle;

/// True when the file at `path` starts with the bundle magic, so that a
/// command taking "a model" can tell a bundle from an ONNX file. Says
/// nothing about validity: [`Bundle::open`] checks that.
pub fn is_bundle(path: &Path) -> bool {
    let mut magic = [0u8; 8];
    crate::input_file::open_regular(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == format::MAGIC
}
