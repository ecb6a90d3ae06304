//! The backend registry: every code generator m4c has, by name, and the
//! few facts a caller asks of one before compiling (as cranelift's
//! `isa::lookup`). A new backend is one line in [`all`] plus its device in
//! `m4c_runtime::exec::device::all` (see `docs/BACKENDS.md`); the CLI, the
//! conformance suite and `m4c backends` pick it up from here.

// No unwrap/expect on input: each remaining `expect` names its invariant
// (`#[allow(..., reason = ...)]`; see docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use m4c_compiler::backend::{Artifact, CodeGenerator, CompileRequest, Reference};
use m4c_cpu_codegen::CpuBackend;
use m4c_gpu_codegen::GpuBackend;
use m4c_ir::Graph;
use m4c_npu_codegen::NpuBackend;
use m4c_runtime::bundle::format::{CodeEntry, REFERENCE_BACKEND};
use m4c_runtime::bundle::ModuleCode;
use m4c_runtime::exec::{device, load_code, Interpreter, ModuleExecutor, Signature};

/// Every registered code generator, the reference backend first.
pub fn all() -> &'static [&'static dyn CodeGenerator] {
    &[&Reference, &CpuBackend, &GpuBackend]
}

/// Backends that compile only with calibration data (`m4c run`/`bench`
/// give it): found by [`lookup`] but not in [`all`], whose suites compile
/// through [`prepare`] without inputs. The NPU (`m4c_npu_codegen`).
pub fn calibrated() -> &'static [&'static dyn CodeGenerator] {
    &[&NpuBackend]
}

/// The code generator that compiles the NPU's CPU-fallback parts (the
/// CPU backend), handed to `m4c_npu_codegen::compile_calibrated` so that
/// the NPU's code generator does not depend on another backend's.
pub fn npu_fallback() -> &'static dyn CodeGenerator {
    &CpuBackend
}

/// The backend called `name`, or an error listing the known names.
pub fn lookup(name: &str) -> Result<&'static dyn CodeGenerator, UnknownBackend> {
    all()
        .iter()
        .chain(calibrated())
        .copied()
        .find(|b| b.name() == name)
        .ok_or_else(|| UnknownBackend(name.to_string()))
}

/// Whether this host can execute `backend`'s code for `target` (`None`:
/// its default): the code generator says the host fits the target, and
/// this runtime has a device to load it (the reference backend needs none:
/// the interpreter runs its IR).
pub fn runnable(backend: &dyn CodeGenerator, target: Option<&str>) -> Result<(), String> {
    backend.runnable(target)?;
    let needs_device = backend.name() != Reference.name();
    if needs_device && device::lookup(backend.name()).is_none() {
        return Err(format!(
            "this runtime has no device for backend `{}`",
            backend.name()
        ));
    }
    Ok(())
}

/// Compiles `graph` (named `name`) with `backend` and loads it on this
/// host, in this process: the interpreter for the reference backend, else
/// the artifact's sections through the runtime's device, exactly as a
/// bundle's code is loaded. The one compile → load path of `m4c run`,
/// `m4c bench` and the conformance suite. Returns the executor and, for
/// compiled backends, the artifact (for its figures).
pub fn prepare(
    backend: &dyn CodeGenerator,
    name: &str,
    graph: Graph,
    request: &CompileRequest,
) -> Result<(Arc<dyn ModuleExecutor>, Option<Artifact>), PrepareError> {
    if backend.name() == REFERENCE_BACKEND {
        return Ok((Arc::new(Interpreter::new(name, graph)), None));
    }
    runnable(backend, request.target.as_deref()).map_err(|why| PrepareError::NotRunnable {
        backend: backend.name(),
        why,
    })?;
    let artifact = backend.compile(&graph, request)?;
    let executor = load_artifact(name, &artifact, Signature::of(&graph), request.threads)?;
    Ok((executor, Some(artifact)))
}

/// Loads an artifact compiled in this process through its backend's
/// device.
pub fn load_artifact(
    name: &str,
    artifact: &Artifact,
    signature: Signature,
    threads: usize,
) -> Result<Arc<dyn ModuleExecutor>, PrepareError> {
    let entry = CodeEntry {
        cpu: artifact.tuning.clone(),
        section: format!("{name}.{}", artifact.target),
        target: artifact.target.clone(),
    };
    let files: Vec<_> = artifact
        .files
        .iter()
        .filter_map(|f| f.section.map(|k| (k, f.bytes.as_slice())))
        .collect();
    let code =
        ModuleCode::from_memory(&artifact.backend, entry, &files).map_err(PrepareError::Memory)?;
    Ok(load_code(name, &code, signature, threads.max(1))?)
}

/// Why [`prepare`] failed.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("backend `{backend}` cannot run here: {why}")]
    NotRunnable { backend: &'static str, why: String },
    #[error(transparent)]
    Compile(#[from] m4c_compiler::backend::BackendError),
    #[error("{0}")]
    Memory(String),
    #[error(transparent)]
    Load(#[from] m4c_runtime::exec::CodeLoadError),
}

/// A `--backend` name no backend has.
#[derive(Debug, thiserror::Error)]
#[error("unknown backend `{name}` (known: {known})", name = .0, known = names().join(", "))]
pub struct UnknownBackend(pub String);

/// The registered names, in registry order.
pub fn names() -> Vec<&'static str> {
    all().iter().chain(calibrated()).map(|b| b.name()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_looked_up() {
        let mut names = names();
        assert_eq!(names[0], "reference");
        for n in &names {
            assert_eq!(lookup(n).unwrap().name(), *n);
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all().len() + calibrated().len());
        let err = lookup("tpu").err().unwrap().to_string();
        assert!(
            err.contains("unknown backend `tpu`") && err.contains("cpu"),
            "{err}"
        );
    }

    #[test]
    fn every_compiled_backend_has_a_device() {
        for b in all().iter().filter(|b| b.name() != "reference") {
            assert!(
                device::lookup(b.name()).is_some(),
                "{} has no device",
                b.name()
            );
        }
    }
}
