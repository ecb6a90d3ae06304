//! The GPU backend's device: a module's kernel text (WGSL for target
//! `wgpu`, PTX for `cuda`), its plan (kernel table, arena, input and
//! output bindings) and its weights are handed to `m4c-gpu-device`'s wgpu
//! or CUDA runner, which uploads the weights once and runs every kernel
//! from one arena buffer per call.

use std::sync::Arc;

use m4c_gpu_device::wgpu_runner::{gpu, WgpuModule};
use m4c_gpu_device::{GpuError, Manifest};
use m4c_ir::{Graph, Tensor, TensorType};
use m4c_ops::Value;

use super::device::Device;
use super::{check_inputs, ArenaPlan, CodeLoadError, ExecError, ModuleExecutor, Signature};
use crate::bundle::format::SectionKind;
use crate::bundle::ModuleCode;

/// The GPU backend's [`Device`] (targets `wgpu` and `cuda`).
pub struct GpuDevice;

/// A module loaded on one of the runners.
enum Runner {
    Wgpu(WgpuModule),
    #[cfg(feature = "cuda")]
    Cuda(m4c_gpu_device::cuda_runner::CudaModule),
}

impl Runner {
    fn load(
        target: &str,
        manifest: Manifest,
        text: &str,
        weights: &[u8],
    ) -> Result<Runner, GpuError> {
        match target {
            #[cfg(feature = "cuda")]
            "cuda" => Ok(Runner::Cuda(m4c_gpu_device::cuda_runner::CudaModule::load(
                manifest, text, weights,
            )?)),
            _ => Ok(Runner::Wgpu(WgpuModule::load(manifest, text, weights)?)),
        }
    }

    fn run(&self, inputs: &[&[u8]]) -> Result<Vec<Vec<u8>>, GpuError> {
        match self {
            Runner::Wgpu(m) => m.run(inputs),
            #[cfg(feature = "cuda")]
            Runner::Cuda(m) => m.run(inputs),
        }
    }
}

/// Bytes of each tensor of a signature side (`None`: a symbolic shape).
fn sizes(side: &[(String, TensorType)]) -> Option<Vec<u64>> {
    side.iter()
        .map(|(_, ty)| Some(ty.dtype.storage_bytes(ty.num_elements()?) as u64))
        .collect()
}

fn parse(code: &ModuleCode) -> Result<Manifest, String> {
    let bytes = code
        .section(SectionKind::CodePlan)
        .ok_or("no code-plan section")?;
    serde_json::from_slice(bytes).map_err(|e| format!("code-plan: {e}"))
}

impl Device for GpuDevice {
    fn name(&self) -> &'static str {
        "gpu"
    }

    fn runs_here(&self, target: &str) -> Result<(), String> {
        match target {
            "wgpu" => gpu().map(|_| ()).map_err(|e| e.to_string()),
            #[cfg(feature = "cuda")]
            "cuda" => m4c_gpu_device::cuda_runner::cuda()
                .map(|_| ())
                .map_err(|e| e.to_string()),
            #[cfg(not(feature = "cuda"))]
            "cuda" => Err("this runtime was built without the CUDA runner (feature `cuda`)".into()),
            _ => Err(format!(
                "GPU target `{target}` has no runner here (this runtime runs `wgpu` and `cuda`)"
            )),
        }
    }

    fn check(&self, code: &ModuleCode, graph: &Graph) -> Result<(), String> {
        let manifest = parse(code)?;
        let sig = Signature::of(graph);
        let (inputs, outputs) = sizes(&sig.inputs)
            .zip(sizes(&sig.outputs))
            .ok_or("the module has symbolic shapes")?;
        let weights = code
            .section(SectionKind::CodeWeights)
            .ok_or("no code-weights section")?;
        let text = code
            .section(SectionKind::Code)
            .ok_or("no code section (the shader)")?;
        std::str::from_utf8(text).map_err(|_| "the shader is not UTF-8")?;
        if manifest.target != code.entry().target {
            return Err(format!(
                "plan for `{}` in a `{}` section",
                manifest.target,
                code.entry().target
            ));
        }
        manifest.check(&inputs, &outputs, weights.len() as u64)
    }

    fn load(
        &self,
        name: &str,
        code: &ModuleCode,
        signature: Signature,
        _threads: usize,
    ) -> Result<Arc<dyn ModuleExecutor>, CodeLoadError> {
        let section = code.entry().section.clone();
        let fail = |msg: String| CodeLoadError::Load {
            section: section.clone(),
            msg,
        };
        self.runs_here(&code.entry().target)
            .map_err(|reason| CodeLoadError::NotRunnable {
                target: code.entry().target.clone(),
                reason,
            })?;
        let manifest = parse(code).map_err(fail)?;
        let text = code.section(SectionKind::Code).unwrap_or_default();
        let text = std::str::from_utf8(text).map_err(|_| fail("the shader is not UTF-8".into()))?;
        let weights = code.section(SectionKind::CodeWeights).unwrap_or_default();
        let arena_bytes = manifest.arena_bytes as usize;
        let module = Runner::load(&code.entry().target, manifest, text, weights)
            .map_err(|e| fail(e.to_string()))?;
        Ok(Arc::new(GpuModule {
            name: name.to_string(),
            signature,
            arena_bytes,
            module,
        }))
    }
}

/// A module loaded on the GPU.
struct GpuModule {
    name: String,
    signature: Signature,
    arena_bytes: usize,
    module: Runner,
}

impl ModuleExecutor for GpuModule {
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
        "gpu"
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
        let outputs = self.module.run(&bytes).map_err(|e| fail(e.to_string()))?;
        self.signature
            .outputs
            .iter()
            .zip(outputs)
            .map(|((_, ty), bytes)| {
                let shape = ty.static_shape().unwrap_or_default();
                Value::from_tensor(&Tensor::from_bytes(ty.dtype, &shape, bytes))
                    .map_err(|e| fail(e.to_string()))
            })
            .collect()
    }
}
