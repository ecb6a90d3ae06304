//! The GPU backend behind the seam: [`GpuBackend`] implements the
//! compiler's `CodeGenerator` for two targets, `wgpu` (WGSL) and `cuda`
//! (PTX). Its artifact is text, the kernel table and arena plan (JSON)
//! and the weights; the runtime's `gpu` device runs it through wgpu or
//! the CUDA driver.

use std::time::Instant;

use m4c_compiler::backend::{
    check_graph, Artifact, ArtifactFile, BackendError, Capabilities, CodeGenerator, CompileRequest,
};
use m4c_compiler::opt::Roofline;
use m4c_gpu_device::Manifest;
use m4c_ir::{DType, Graph, Node, Op, OpKind};
use m4c_runtime::bundle::format::SectionKind;

#[cfg(feature = "ptx")]
use crate::ptx;
use crate::{lower, wgsl};

/// The element types GPU kernels compute on (i8 and i64 in 32 bits);
/// anything else, including element types added to the IR later, is
/// refused.
const DTYPES: [DType; 5] = [DType::F32, DType::I32, DType::I64, DType::I8, DType::Bool];

/// The operators with GPU kernels; an operator added to the IR later is
/// refused until it gets one.
const OPS: [OpKind; 38] = [
    OpKind::MatMul,
    OpKind::Conv,
    OpKind::Add,
    OpKind::Sub,
    OpKind::Mul,
    OpKind::Div,
    OpKind::Pow,
    OpKind::Max,
    OpKind::Min,
    OpKind::Equal,
    OpKind::Less,
    OpKind::Where,
    OpKind::Exp,
    OpKind::Log,
    OpKind::Sqrt,
    OpKind::Erf,
    OpKind::Tanh,
    OpKind::Sigmoid,
    OpKind::Sin,
    OpKind::Cos,
    OpKind::Floor,
    OpKind::Cast,
    OpKind::Softmax,
    OpKind::Norm,
    OpKind::Gelu,
    OpKind::ReduceSum,
    OpKind::ReduceMax,
    OpKind::ArgMax,
    OpKind::MaxPool,
    OpKind::AvgPool,
    OpKind::Reshape,
    OpKind::Transpose,
    OpKind::Slice,
    OpKind::Concat,
    OpKind::Gather,
    OpKind::Expand,
    OpKind::Pad,
    OpKind::Resize,
];

/// The portable target (WGSL through wgpu: Vulkan, Metal, DX12).
pub const WGPU: &str = "wgpu";

/// NVIDIA GPUs through the CUDA driver (PTX for `sm_90`, JIT-compiled by
/// the driver when the module loads).
pub const CUDA: &str = "cuda";

/// The largest storage binding every WebGPU device offers (128 MiB): the
/// arena must fit one, the weights are split into bindings of at most
/// this many bytes (no tensor across two).
pub const MAX_BINDING: usize = m4c_gpu_device::BINDING_BYTES as usize;

/// The GPU backend's code generator.
pub struct GpuBackend;

impl CodeGenerator for GpuBackend {
    fn name(&self) -> &'static str {
        "gpu"
    }

    fn description(&self) -> &'static str {
        "WGSL compute shaders run through wgpu (Vulkan; Mesa's lavapipe without a GPU), or PTX through the CUDA driver (target cuda)"
    }

    fn targets(&self) -> Vec<String> {
        vec![WGPU.into(), CUDA.into()]
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ops: OPS.to_vec(),
            dtypes: DTYPES.to_vec(),
        }
    }

    fn refuse(&self, g: &Graph, node: &Node) -> Option<String> {
        if let Some(why) = self.capabilities().refuse(g, node) {
            return Some(why);
        }
        let values = node.inputs.iter().chain(std::iter::once(&node.output));
        for &v in values {
            let value = g.value(v);
            match value.ty.num_elements() {
                None => {
                    return Some(format!(
                        "the symbolic shape {} (bind every dimension)",
                        value.ty
                    ))
                }
                Some(n) if n > i32::MAX as usize / 2 => {
                    return Some(format!("{n} elements (GPU kernels index in i32)"))
                }
                Some(_) => {}
            }
        }
        refuse_op(g, node)
    }

    fn runnable(&self, target: Option<&str>) -> Result<(), String> {
        let target = resolve(target)?;
        let device = m4c_runtime::exec::device::lookup(self.name())
            .ok_or("this runtime was built without its GPU device (feature `gpu`)")?;
        device.runs_here(target)
    }

    fn compile(&self, graph: &Graph, request: &CompileRequest) -> Result<Artifact, BackendError> {
        let target = resolve(request.target.as_deref()).map_err(|msg| BackendError::Target {
            backend: "gpu",
            msg,
        })?;
        check_graph(self, graph)?;
        let started = Instant::now();
        let fail = |msg: String| BackendError::Compile {
            backend: "gpu",
            msg,
        };
        // CUDA kernels take plain pointers: only WebGPU bounds a binding.
        let chunk = (target == WGPU).then_some(MAX_BINDING);
        let program = lower::lower(graph, chunk).map_err(fail)?;
        if target == WGPU {
            let bytes = program.arena_bytes;
            if bytes > MAX_BINDING {
                return Err(fail(format!(
                    "the arena needs {bytes} bytes, over the {MAX_BINDING}-byte storage binding every device offers"
                )));
            }
            let bindings = program.weights.len().div_ceil(MAX_BINDING);
            if bindings as u64 > m4c_gpu_device::MAX_WEIGHT_BINDINGS {
                return Err(fail(format!(
                    "the weights need {bindings} bindings of {MAX_BINDING} bytes (at most {})",
                    m4c_gpu_device::MAX_WEIGHT_BINDINGS
                )));
            }
        }
        let (text, kernels, ext) = if target == CUDA {
            #[cfg(feature = "ptx")]
            let (text, kernels) = ptx::emit(&program.kernels).map_err(fail)?;
            #[cfg(not(feature = "ptx"))]
            let (text, kernels) = Err(fail(
                "this build has no PTX emitter (feature `ptx` of m4c-gpu-codegen)".into(),
            ))?;
            (text, kernels, "ptx")
        } else {
            let (text, kernels) =
                wgsl::emit(&program.kernels, program.weights.len()).map_err(fail)?;
            (text, kernels, "wgsl")
        };
        let manifest = Manifest {
            target: target.into(),
            arena_bytes: program.arena_bytes as u64,
            weights_bytes: program.weights.len() as u64,
            inputs: program.inputs,
            outputs: program.outputs,
            kernels,
        };
        let stats = serde_json::json!({
            "kernels": manifest.kernels.len(),
            "arena_bytes": manifest.arena_bytes,
            "planned_bytes": program.memory.arena_bytes,
            "weights_bytes": manifest.weights_bytes,
            "shader_bytes": text.len(),
            "compile_ms": started.elapsed().as_secs_f64() * 1e3,
        });
        let plan = serde_json::to_vec_pretty(&manifest).map_err(|e| fail(e.to_string()))?;
        let file = |ext: &str, section, bytes| ArtifactFile {
            name: format!("{}.{ext}", graph.name),
            section: Some(section),
            bytes,
        };
        Ok(Artifact {
            backend: self.name().into(),
            target: target.into(),
            tuning: String::new(),
            runnable: self.runnable(Some(target)).is_ok(),
            files: vec![
                file(ext, SectionKind::Code, text.into_bytes()),
                file("plan.json", SectionKind::CodePlan, plan),
                file("weights", SectionKind::CodeWeights, program.weights),
            ],
            stats,
        })
    }

    fn cost_model(&self) -> Roofline {
        // Nominal figures of a mobile-class GPU; not measured.
        Roofline {
            name: "gpu-nominal".into(),
            peak_flops: 1e12,
            vector_flops: 2e11,
            bandwidth: 5e10,
            launch_ns: 5000.0,
            source: "nominal".into(),
        }
    }
}

/// The target a request names (`None`: `wgpu`).
fn resolve(target: Option<&str>) -> Result<&'static str, String> {
    match target {
        None | Some(WGPU) => Ok(WGPU),
        Some(CUDA) => Ok(CUDA),
        Some(t) => Err(format!(
            "unknown target `{t}` (the GPU backend has `{WGPU}` and `{CUDA}`)"
        )),
    }
}

/// Per-operator limits beyond the element types.
fn refuse_op(g: &Graph, node: &Node) -> Option<String> {
    let kind = node.op.kind();
    let dtype = |k: usize| g.value(node.inputs[k]).ty.dtype;
    let first = dtype(0);
    let float_only = matches!(
        node.op,
        Op::MatMul { .. }
            | Op::Conv(_)
            | Op::Softmax { .. }
            | Op::Norm { .. }
            | Op::Gelu { .. }
            | Op::Exp
            | Op::Log
            | Op::Sqrt
            | Op::Erf
            | Op::Tanh
            | Op::Sigmoid
            | Op::Sin
            | Op::Cos
            | Op::Floor
            | Op::MaxPool(_)
            | Op::AvgPool { .. }
            | Op::Resize { .. }
            | Op::Div
    );
    if float_only && first != DType::F32 {
        return Some(format!(
            "{} on {first} tensors (GPU kernels compute it in f32 only)",
            kind.name()
        ));
    }
    let numeric = matches!(
        node.op,
        Op::Add
            | Op::Sub
            | Op::Mul
            | Op::Pow
            | Op::Less
            | Op::ReduceSum { .. }
            | Op::ReduceMax { .. }
            | Op::ArgMax { .. }
    );
    if numeric && first == DType::Bool {
        return Some(format!("{} on bool tensors", kind.name()));
    }
    match &node.op {
        Op::Norm { axis, .. } => {
            let x = g.value(node.inputs[0]).ty.static_shape()?;
            let trailing = &x[*axis..];
            node.inputs[1..].iter().find_map(|&p| {
                let s = g.value(p).ty.static_shape()?;
                let dims: Vec<usize> = s.iter().copied().skip_while(|&d| d == 1).collect();
                (!trailing.ends_with(&dims)).then(|| {
                    format!("Norm parameter of shape {s:?} over {trailing:?} (only trailing broadcasts)")
                })
            })
        }
        _ => None,
    }
}
