//! The CPU backend's device: a module's shared library, plan and packed
//! weights are handed to the CPU backend's device-side loader
//! (`m4c-cpu-device`: dlopen, no LLVM), whose executor runs every call of
//! the plan from one activation arena planned at compile time. The packed
//! weights are read where they lie in the code's map (the bundle's, or the
//! anonymous map of a just-compiled artifact).

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use m4c_cpu_device::{GraphExecutor, KernelLibrary, Manifest as CodePlan, Step};
use m4c_ir::{DType, Graph, Tensor};
use m4c_ops::Value;
use ndarray::{ArrayD, IxDyn};

use super::device::Device;
use super::{check_inputs, ArenaPlan, ExecError, ModuleExecutor, Signature};
use crate::bundle::format::SectionKind;
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
    #[error("this runtime has no device for backend `{0}`")]
    NoDevice(String),
}

/// The CPU backend's [`Device`].
pub struct CpuDevice;

impl Device for CpuDevice {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn runs_here(&self, target: &str) -> Result<(), String> {
        host_runs(target)
    }

    fn check(&self, code: &ModuleCode, graph: &Graph) -> Result<(), String> {
        let plan = parse_plan(code)?;
        let weights = code
            .section(SectionKind::CodeWeights)
            .ok_or("no code-weights section")?;
        if code.section(SectionKind::Code).is_none() {
            return Err("no code section (the shared library)".into());
        }
        super::plan_check::check_plan(&plan, code.entry(), graph, weights.len())
    }

    fn load(
        &self,
        name: &str,
        code: &ModuleCode,
        signature: Signature,
        threads: usize,
    ) -> Result<Arc<dyn ModuleExecutor>, CodeLoadError> {
        Ok(Arc::new(CompiledModule::load(
            name, code, signature, threads,
        )?))
    }
}

/// The CPU backend's manifest (kernels and execution plan) of `code`.
fn parse_plan(code: &ModuleCode) -> Result<CodePlan, String> {
    let bytes = code
        .section(SectionKind::CodePlan)
        .ok_or("no code-plan section")?;
    serde_json::from_slice(bytes).map_err(|e| format!("code-plan: {e}"))
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
    /// Loads `code` (of module `name`, whose IR has `signature`; checked
    /// by [`CpuDevice::check`]) to run on `threads` threads.
    ///
    /// The library must be a file for dlopen: it alone is written to a
    /// fresh private directory (mode 0700, from `tempfile`), loaded, and the
    /// directory is removed at once (the loaded library stays mapped). The
    /// packed weights are not copied: the kernels read the `code-weights`
    /// section in the code's map, which the loaded module keeps alive.
    /// A bundle library's checksum is verified again just before it is
    /// written, since its bytes become executable code (code compiled in
    /// this process has no recorded checksum and needs none).
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
        let fail = |msg: String| CodeLoadError::Load {
            section: entry.section.clone(),
            msg,
        };
        let library = code
            .section(SectionKind::Code)
            .ok_or_else(|| fail("no code section".into()))?;
        if let Some(recorded) = code.blake3(SectionKind::Code) {
            if blake3::hash(library).to_hex().as_str() != recorded {
                return Err(CodeLoadError::Checksum {
                    section: entry.section.clone(),
                });
            }
        }
        let plan = parse_plan(code).map_err(fail)?;
        m4c_plan::host::host_has(&plan.requires).map_err(|reason| CodeLoadError::NotRunnable {
            target: format!("{} ({})", entry.target, entry.cpu),
            reason,
        })?;
        let arena_bytes = plan.graph.as_ref().map_or(0, |g| g.arena_bytes);
        let dir = tempfile::Builder::new()
            .prefix("m4c-code-")
            .tempdir()
            .map_err(|e| fail(format!("temporary directory: {e}")))?;
        let library_path = dir.path().join("libmodule.so");
        std::fs::write(&library_path, library).map_err(|e| fail(format!("libmodule.so: {e}")))?;
        let weights = Arc::new(CodeWeights(code.clone()));
        let library = KernelLibrary::open_shared(&library_path, plan, weights)
            .map_err(|e| fail(e.to_string()))?;
        let executor =
            GraphExecutor::new(library, threads.max(1)).map_err(|e| fail(e.to_string()))?;
        drop(dir);
        Ok(CompiledModule {
            name: name.to_string(),
            signature,
            target: entry.target.clone(),
            arena_bytes,
            executor: Mutex::new(executor),
        })
    }

    /// The CPU target of the loaded code (e.g. `x86_64-avx512`).
    pub fn code_target(&self) -> &str {
        &self.target
    }

    /// The address range of the packed weights the code reads: inside the
    /// code's map (the `code-weights` section), which shows they were not
    /// copied.
    pub fn code_weights_at(&self) -> std::ops::Range<*const u8> {
        let executor = self.executor.lock().unwrap_or_else(|e| e.into_inner());
        let floats = executor.library().weights().as_ptr_range();
        floats.start.cast()..floats.end.cast()
    }

    /// Runs the module kernel by kernel `runs` times and gives each step's
    /// kernel and its median time, in plan order (`m4c bench --profile`).
    pub fn profile_steps(&self, inputs: &[Value], runs: usize) -> Result<Vec<StepTime>, ExecError> {
        check_inputs(&self.name, &self.signature, inputs)?;
        let raw: Vec<Cow<'_, [u8]>> = inputs.iter().map(le_bytes).collect();
        let bytes: Vec<&[u8]> = raw.iter().map(|b| b.as_ref()).collect();
        let mut executor = self.executor.lock().unwrap_or_else(|e| e.into_inner());
        let mut samples: Vec<Vec<f64>> = vec![];
        for _ in 0..runs.max(1) {
            let times = executor
                .run_profiled(&bytes)
                .map_err(|e| self.fail(e.to_string()))?
                .1;
            samples.resize(times.len(), vec![]);
            for (s, t) in samples.iter_mut().zip(times) {
                s.push(t.as_secs_f64() * 1e3);
            }
        }
        Ok(executor
            .plan()
            .steps
            .iter()
            .zip(samples)
            .map(|(step, mut ms)| {
                let symbol = match step {
                    Step::Kernel { symbol, .. } | Step::Gemm { symbol, .. } => symbol,
                };
                ms.sort_by(f64::total_cmp);
                StepTime {
                    kind: symbol.splitn(3, '_').nth(2).unwrap_or(symbol).to_string(),
                    symbol: symbol.clone(),
                    ms: ms.get(ms.len() / 2).copied().unwrap_or(0.0),
                }
            })
            .collect())
    }

    fn fail(&self, msg: String) -> ExecError {
        ExecError::Run {
            module: self.name.clone(),
            msg,
        }
    }
}

/// One step of a compiled module, timed ([`CompiledModule::profile_steps`]).
#[derive(Clone, Debug)]
pub struct StepTime {
    /// The kernel's symbol (e.g. `m4c_12_conv_gemm`).
    pub symbol: String,
    /// The symbol without its prefix and number (e.g. `conv_gemm`): what
    /// `--profile` sums by.
    pub kind: String,
    /// The median of the step's wall times over the runs, in ms.
    pub ms: f64,
}

/// The steps' time summed per kernel kind, largest first.
pub fn by_kind(steps: &[StepTime]) -> Vec<(String, f64)> {
    let mut kinds: Vec<(String, f64)> = Vec::new();
    for s in steps {
        match kinds.iter_mut().find(|(k, _)| *k == s.kind) {
            Some((_, total)) => *total += s.ms,
            None => kinds.push((s.kind.clone(), s.ms)),
        }
    }
    kinds.sort_by(|a, b| b.1.total_cmp(&a.1));
    kinds
}

/// A module's `code-weights` section, shared with the device loader in
/// place: it holds the code's map, which never changes (bundles are
/// immutable, replaced by rename; in-memory code maps are read-only), so
/// the bytes stay put while loaded.
struct CodeWeights(ModuleCode);

impl AsRef<[u8]> for CodeWeights {
    fn as_ref(&self) -> &[u8] {
        self.0.section(SectionKind::CodeWeights).unwrap_or_default()
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

    fn backend(&self) -> &str {
        "cpu"
    }

    fn as_compiled(&self) -> Option<&CompiledModule> {
        Some(self)
    }

    /// Runs the code on `inputs` with no intermediate copies: each input's
    /// elements are handed to the kernels where they lie (when the array is
    /// in standard layout), and each output is copied once, from the arena
    /// (reused between calls) into its result array.
    fn run(&self, inputs: &[Value]) -> Result<Vec<Value>, ExecError> {
        check_inputs(&self.name, &self.signature, inputs)?;
        let raw: Vec<Cow<'_, [u8]>> = inputs.iter().map(le_bytes).collect();
        let bytes: Vec<&[u8]> = raw.iter().map(|b| b.as_ref()).collect();
        let mut executor = self.executor.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = executor
            .run_borrowed(&bytes)
            .map_err(|e| self.fail(e.to_string()))?;
        self.signature
            .outputs
            .iter()
            .zip(outputs)
            .map(|((_, ty), bytes)| {
                let shape = ty.static_shape().unwrap_or_default();
                value_from_le_bytes(ty.dtype, &shape, bytes).map_err(|e| self.fail(e))
            })
            .collect()
    }
}

/// The little-endian bytes of `value`'s elements in row-major order, as
/// compiled code reads them: the array's own memory when it is in standard
/// layout on a little-endian host (no copy), an encoded copy otherwise.
pub(crate) fn le_bytes(value: &Value) -> Cow<'_, [u8]> {
    fn borrow<T: bytemuck::NoUninit>(a: &ArrayD<T>) -> Option<&[u8]> {
        let slice = a.as_slice()?;
        cfg!(target_endian = "little").then(|| bytemuck::cast_slice(slice))
    }
    let borrowed = match value {
        Value::F32(a) => borrow(a),
        Value::I64(a) => borrow(a),
        Value::I32(a) => borrow(a),
        Value::I8(a) => borrow(a),
        Value::U8(a) => borrow(a),
        Value::Bool(a) => borrow(a),
        Value::F16(_) | Value::BF16(_) => None,
    };
    match borrowed {
        Some(bytes) => Cow::Borrowed(bytes),
        None => {
            let tensor = value.to_tensor();
            // An owned tensor always has its bytes.
            Cow::Owned(tensor.bytes().map(<[u8]>::to_vec).unwrap_or_default())
        }
    }
}

/// A value of `dtype` and `shape` from the little-endian bytes compiled
/// code wrote: one copy into the result array for the types kernels
/// compute in (f32, i64, i32, i8, u8, bool) on a little-endian host; other
/// types are decoded through an IR tensor.
pub(crate) fn value_from_le_bytes(
    dtype: DType,
    shape: &[usize],
    bytes: &[u8],
) -> Result<Value, String> {
    fn array<T: bytemuck::Pod>(shape: &[usize], bytes: &[u8]) -> Result<ArrayD<T>, String> {
        if !bytes.len().is_multiple_of(std::mem::size_of::<T>()) {
            return Err(format!(
                "{} output bytes are not whole elements",
                bytes.len()
            ));
        }
        ArrayD::from_shape_vec(IxDyn(shape), bytemuck::pod_collect_to_vec(bytes))
            .map_err(|e| format!("output of shape {shape:?}: {e}"))
    }
    if cfg!(target_endian = "little") {
        match dtype {
            DType::F32 => return array(shape, bytes).map(Value::F32),
            DType::I64 => return array(shape, bytes).map(Value::I64),
            DType::I32 => return array(shape, bytes).map(Value::I32),
            DType::I8 => return array(shape, bytes).map(Value::I8),
            DType::U8 => return array(shape, bytes).map(Value::U8),
            DType::Bool => {
                let flags = bytes.iter().map(|&b| b != 0).collect();
                return ArrayD::from_shape_vec(IxDyn(shape), flags)
                    .map(Value::Bool)
                    .map_err(|e| format!("output of shape {shape:?}: {e}"));
            }
            _ => {}
        }
    }
    Value::from_tensor(&Tensor::from_bytes(dtype, shape, bytes.to_vec())).map_err(|e| e.to_string())
}

/// Whether this host can run code for the CPU backend's `target`; the
/// reason when not (the shared check the code generator applies too).
pub use m4c_plan::host::host_runs;

#[cfg(test)]
mod tests {
    use super::*;

    /// Standard-layout arrays are handed over in place; other layouts and
    /// types are encoded exactly as `Value::to_tensor` encodes them.
    #[test]
    fn input_bytes_are_borrowed_when_the_layout_allows() {
        let a =
            ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1.0f32, -2.0, 3.5, 4.0, 5.0, 6.0]).unwrap();
        let v = Value::F32(a.clone());
        let bytes = le_bytes(&v);
        assert!(matches!(bytes, Cow::Borrowed(_)));
        let Value::F32(held) = &v else { unreachable!() };
        assert_eq!(bytes.as_ptr(), held.as_ptr().cast::<u8>());
        assert_eq!(&*bytes, v.to_tensor().bytes().unwrap());
        // A transposed view is not in standard layout: encoded row-major.
        let t = Value::F32(a.t().to_owned().into_dyn());
        let transposed = Value::F32(a.reversed_axes());
        assert!(matches!(le_bytes(&transposed), Cow::Owned(_)));
        assert_eq!(&*le_bytes(&transposed), t.to_tensor().bytes().unwrap());
        let flags =
            Value::Bool(ArrayD::from_shape_vec(IxDyn(&[3]), vec![true, false, true]).unwrap());
        assert_eq!(&*le_bytes(&flags), &[1, 0, 1]);
        let half = Value::from_tensor(&Tensor::from_bytes(
            DType::F16,
            &[2],
            vec![0, 0x3e, 0, 0xbc],
        ))
        .unwrap();
        assert_eq!(&*le_bytes(&half), half.to_tensor().bytes().unwrap());
    }

    /// Output bytes decode to the values `Value::from_tensor` gives.
    #[test]
    fn output_bytes_decode_like_tensors() {
        let cases = [
            Value::F32(ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![0.5, -1.0, 2.0, 8.0]).unwrap()),
            Value::I64(ArrayD::from_shape_vec(IxDyn(&[3]), vec![-1, 7, i64::MAX]).unwrap()),
            Value::I32(ArrayD::from_elem(IxDyn(&[1, 2]), -9)),
            Value::I8(ArrayD::from_elem(IxDyn(&[2]), -3)),
            Value::U8(ArrayD::from_elem(IxDyn(&[2]), 250)),
            Value::Bool(ArrayD::from_shape_vec(IxDyn(&[2]), vec![false, true]).unwrap()),
            Value::from_tensor(&Tensor::from_bytes(
                DType::F16,
                &[2],
                vec![0, 0x3e, 0, 0xbc],
            ))
            .unwrap(),
        ];
        for value in cases {
            let tensor = value.to_tensor();
            let back = value_from_le_bytes(tensor.dtype, &tensor.shape, tensor.bytes().unwrap());
            assert_eq!(back.unwrap(), value);
        }
        let short = value_from_le_bytes(DType::F32, &[2], &[0; 7]).unwrap_err();
        assert!(short.contains("not whole elements"), "{short}");
        let wrong = value_from_le_bytes(DType::F32, &[3], &[0; 8]).unwrap_err();
        assert!(wrong.contains("shape [3]"), "{wrong}");
    }

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
