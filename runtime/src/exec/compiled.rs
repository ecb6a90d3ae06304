//! Running a module's compiled CPU code: the bundle's shared library,
//! plan and packed weights are handed to the CPU backend's device-side
//! loader (`m4c-cpu-device`: dlopen, no LLVM), whose executor runs every
//! call of the plan from one activation arena planned at compile time.
//! The packed weights are read where they lie in the bundle's map.

use std::sync::{Arc, Mutex};

use m4c_cpu_device::{GraphExecutor, KernelLibrary};
use m4c_ir::{DType, Tensor};
use m4c_ops::Value;

use super::{check_inputs, ArenaPlan, ExecError, ModuleExecutor, Signature};
use crate::bundle::format::Target;
use crate::bundle::ModuleCode;

/// Why compiled code could not be loaded (the caller may fall back to the
/// reference interpreter).
#[derive(Debug, thiserror::Error)]
pub enum CodeLoadError {
    #[error("code for {target} cannot run on this host: {reason}")]
    NotRunnable { target: String, reason: String },
    #[error("code `{section}`: the library's bytes no longer match their checksum")]
    Checksum { section: String },
    #[error("code `{section}`: {msg}")]
    Load { section: String, msg: String },
}

/// A module whose compiled code is loaded and ready: calls are serialised
/// (the code runs from the one arena of its plan).
pub struct CompiledModule {
    name: String,
    signature: Signature,
    target: String,
    arena_bytes: usize,
    executor: Mutex<GraphExecutor>,
}

impl CompiledModule {
    /// Loads `code` (of module `name`, whose IR has `signature`) to run on
    /// `threads` threads.
    ///
    /// The library must be a file for dlopen: it alone is written to a
    /// fresh private directory (mode 0700, from `tempfile`), loaded, and the
    /// directory is removed at once (the loaded library stays mapped). The
    /// packed weights are not copied: the kernels read the `code-weights`
    /// section in the bundle's map, which the loaded module keeps alive.
    /// The library's checksum is verified again just before it is written,
    /// since its bytes become executable code.
    pub fn load(
        name: &str,
        code: &ModuleCode,
        signature: Signature,
        threads: usize,
    ) -> Result<CompiledModule, CodeLoadError> {
        let entry = code.entry();
        host_runs(&entry.target).map_err(|reason| CodeLoadError::NotRunnable {
            target: entry.target.clone(),
            reason,
        })?;
        if blake3::hash(code.library()).to_hex().as_str() != code.library_blake3() {
            return Err(CodeLoadError::Checksum {
                section: entry.section.clone(),
            });
        }
        let fail = |msg: String| CodeLoadError::Load {
            section: entry.section.clone(),
            msg,
        };
        let dir = tempfile::Builder::new()
            .prefix("m4c-code-")
            .tempdir()
            .map_err(|e| fail(format!("temporary directory: {e}")))?;
        let library_path = dir.path().join("libmodule.so");
        std::fs::write(&library_path, code.library())
            .map_err(|e| fail(format!("libmodule.so: {e}")))?;
        let weights = Arc::new(CodeWeights(code.clone()));
        let library = KernelLibrary::open_shared(&library_path, code.plan().clone(), weights)
            .map_err(|e| fail(e.to_string()))?;
        let executor =
            GraphExecutor::new(library, threads.max(1)).map_err(|e| fail(e.to_string()))?;
        drop(dir);
        Ok(CompiledModule {
            name: name.to_string(),
            signature,
            target: entry.target.clone(),
            arena_bytes: code.graph_plan().arena_bytes,
            executor: Mutex::new(executor),
        })
    }

    /// The CPU target of the loaded code (e.g. `x86_64-avx512`).
    pub fn code_target(&self) -> &str {
        &self.target
    }

    /// The address range of the packed weights the code reads: inside the
    /// bundle's map (the `code-weights` section), which shows they were
    /// not copied.
    pub fn code_weights_at(&self) -> std::ops::Range<*const u8> {
        let executor = self.executor.lock().unwrap_or_else(|e| e.into_inner());
        let floats = executor.library().weights().as_ptr_range();
        floats.start.cast()..floats.end.cast()
    }
}

/// A module's `code-weights` section, shared with the device loader in
/// place: it holds the bundle's map, which never changes (bundles are
/// immutable, replaced by rename), so the bytes stay put while loaded.
struct CodeWeights(ModuleCode);

impl AsRef<[u8]> for CodeWeights {
    fn as_ref(&self) -> &[u8] {
        self.0.weights()
    }
}

impl ModuleExecutor for CompiledModule {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn arena(&self) -> Option<&ArenaPlan> {
        None
    }

    fn arena_bytes(&self) -> Option<usize> {
        Some(self.arena_bytes)
    }

    fn target(&self) -> Target {
        Target::Cpu
    }

    fn run(&self, inputs: &[Value]) -> Result<Vec<Value>, ExecError> {
        check_inputs(&self.name, &self.signature, inputs)?;
        let fail = |msg: String| ExecError::Run {
            module: self.name.clone(),
            msg,
        };
        let tensors: Vec<Tensor> = inputs.iter().map(Value::to_tensor).collect();
        let bytes = tensors
            .iter()
            .map(|t| t.bytes().map_err(|e| fail(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = self
            .executor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .run(&bytes)
            .map_err(|e| fail(e.to_string()))?;
        self.signature
            .outputs
            .iter()
            .zip(outputs)
            .map(|((_, ty), bytes)| {
                let shape = ty.static_shape().unwrap_or_default();
                let dtype: DType = ty.dtype;
                Value::from_tensor(&Tensor::from_bytes(dtype, &shape, bytes))
                    .map_err(|e| fail(e.to_string()))
            })
            .collect()
    }
}

/// Whether this host can run code for the CPU backend's `target`; the
/// reason when not (the shared check the code generator applies too).
pub use m4c_plan::host::host_runs;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_foreign_targets_do_not_run() {
        assert!(host_runs("riscv64")
            .unwrap_err()
            .contains("unknown code target"));
        let foreign = if cfg!(target_arch = "aarch64") {
            "x86_64-avx2"
        } else {
            "aarch64"
        };
        assert!(host_runs(foreign).is_err());
    }
}
