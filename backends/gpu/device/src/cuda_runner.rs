//! Runs a module's PTX kernels through the CUDA driver API (`cudarc`,
//! libcuda opened at run time). One context per process, on device 0,
//! opened on first use after checking that a driver library exists
//! (`CudaContext::new` would panic without one); each loaded module owns
//! its arena, its weights (uploaded once, at load) and the PTX module the
//! driver JIT-compiles for the device. A run copies the inputs into the
//! arena, launches every kernel in order on one stream (kernels on one
//! stream run one after another, so each sees the previous one's writes)
//! and copies the outputs back.

use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};

use crate::{GpuError, Manifest, Space};

/// The process's CUDA device: its context and the stream every module
/// launches on.
pub struct Cuda {
    stream: Arc<CudaStream>,
    /// `name (sm_XY)` of the device, for messages.
    pub device: String,
}

static CUDA: OnceLock<Result<Cuda, String>> = OnceLock::new();

/// The process's CUDA device, opened on first call; `Err` says why there
/// is none (no driver library, no device, a failed initialisation).
pub fn cuda() -> Result<&'static Cuda, GpuError> {
    CUDA.get_or_init(open)
        .as_ref()
        .map_err(|e| GpuError::NoDevice(e.clone()))
}

fn open() -> Result<Cuda, String> {
    // SAFETY: only tries to dlopen libcuda under its usual names and
    // drops what it opened; no CUDA call is made.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no CUDA driver (libcuda.so not found); install the NVIDIA driver".into());
    }
    let ctx = CudaContext::new(0).map_err(|e| format!("CUDA device 0: {e}"))?;
    let name = ctx.name().map_err(|e| e.to_string())?;
    let (major, minor) = ctx.compute_capability().map_err(|e| e.to_string())?;
    Ok(Cuda {
        stream: ctx.default_stream(),
        device: format!("{name} (sm_{major}{minor})"),
    })
}

/// One loaded module: its kernels and buffers; runs are serialised.
pub struct CudaModule {
    manifest: Manifest,
    kernels: Vec<(CudaFunction, LaunchConfig)>,
    state: Mutex<Buffers>,
    /// Outputs that are constants: their bytes, read from the weights at
    /// load (`None` for outputs in the arena).
    constant_outputs: Vec<Option<Vec<u8>>>,
}

struct Buffers {
    arena: CudaSlice<u8>,
    weights: CudaSlice<u8>,
}

fn run_err(e: impl std::fmt::Display) -> GpuError {
    GpuError::Run(e.to_string())
}

impl CudaModule {
    /// Loads `ptx` (every kernel of the manifest), creates the arena and
    /// uploads `weights` once. `manifest` must have passed
    /// [`Manifest::check`].
    pub fn load(manifest: Manifest, ptx: &str, weights: &[u8]) -> Result<CudaModule, GpuError> {
        let cuda = cuda()?;
        if ptx.contains('\0') {
            return Err(GpuError::Shader("the PTX text contains a NUL byte".into()));
        }
        let ctx = cuda.stream.context();
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(|e| GpuError::Shader(format!("the driver refused the PTX: {e}")))?;
        let kernels = manifest
            .kernels
            .iter()
            .map(|k| {
                let f = module
                    .load_function(&k.entry)
                    .map_err(|e| GpuError::Shader(format!("kernel `{}`: {e}", k.entry)))?;
                let [gx, gy, gz] = k.workgroups;
                let [tx, ty, tz] = k.threads;
                let cfg = LaunchConfig {
                    grid_dim: (gx, gy, gz),
                    block_dim: (tx, ty, tz),
                    shared_mem_bytes: 0,
                };
                Ok((f, cfg))
            })
            .collect::<Result<Vec<_>, GpuError>>()?;
        let constant_outputs = manifest
            .outputs
            .iter()
            .map(|b| {
                (b.space == Space::Weights)
                    .then(|| weights[b.offset as usize..(b.offset + b.bytes) as usize].to_vec())
            })
            .collect();
        let arena = cuda
            .stream
            .alloc_zeros::<u8>((manifest.arena_bytes as usize).max(4))
            .map_err(run_err)?;
        let mut padded = weights.to_vec();
        padded.resize(weights.len().max(4), 0);
        let weights = cuda.stream.clone_htod(&padded).map_err(run_err)?;
        Ok(CudaModule {
            manifest,
            kernels,
            state: Mutex::new(Buffers { arena, weights }),
            constant_outputs,
        })
    }

    /// Launches every kernel once on what the arena holds.
    fn launch(&self, cuda: &Cuda, state: &mut Buffers) -> Result<(), GpuError> {
        for (f, cfg) in &self.kernels {
            let mut launch = cuda.stream.launch_builder(f);
            launch.arg(&mut state.arena).arg(&state.weights);
            // SAFETY: every kernel of the emitter takes exactly (arena,
            // weights) as global pointers, and its launch geometry is the
            // manifest's (checked against the module); each kernel clamps
            // its loads into its tensors and bounds its stores by its
            // launch, all inside the arena whose size the plan gives.
            unsafe { launch.launch(*cfg) }.map_err(run_err)?;
        }
        Ok(())
    }

    /// Runs every kernel once on `inputs` (raw bytes, signature order,
    /// sizes as checked) and gives each output's bytes.
    pub fn run(&self, inputs: &[&[u8]]) -> Result<Vec<Vec<u8>>, GpuError> {
        let cuda = cuda()?;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (binding, bytes) in self.manifest.inputs.iter().zip(inputs) {
            if bytes.len() as u64 != binding.bytes {
                return Err(GpuError::Run(format!(
                    "an input of {} bytes where {} are planned",
                    bytes.len(),
                    binding.bytes
                )));
            }
            if !bytes.is_empty() {
                let at = binding.offset as usize;
                let mut view = state.arena.slice_mut(at..at + bytes.len());
                cuda.stream
                    .memcpy_htod(*bytes, &mut view)
                    .map_err(run_err)?;
            }
        }
        self.launch(cuda, &mut state)?;
        self.manifest
            .outputs
            .iter()
            .zip(&self.constant_outputs)
            .map(|(b, constant)| match constant {
                Some(bytes) => Ok(bytes.clone()),
                None if b.bytes == 0 => Ok(Vec::new()),
                None => {
                    let at = b.offset as usize;
                    let view = state.arena.slice(at..at + b.bytes as usize);
                    cuda.stream.clone_dtoh(&view).map_err(run_err)
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a driver library, opening the device is one line saying
    /// so, never a panic (CI hosts have no NVIDIA driver).
    #[test]
    fn no_driver_is_an_error_not_a_panic() {
        // SAFETY: as in `open`.
        if unsafe { cudarc::driver::sys::is_culib_present() } {
            println!("skipped: this host has a CUDA driver");
            return;
        }
        let err = cuda().err().expect("no driver, no device").to_string();
        assert!(err.starts_with("no GPU: no CUDA driver"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let manifest = Manifest {
            target: "cuda".into(),
            arena_bytes: 4,
            weights_bytes: 0,
            inputs: vec![],
            outputs: vec![],
            kernels: vec![],
        };
        let err = CudaModule::load(manifest, "", &[]).err().unwrap();
        assert!(matches!(err, GpuError::NoDevice(_)), "{err}");
    }
}
