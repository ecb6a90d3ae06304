//! [`NpuBackend`], the NPU's `CodeGenerator`: the graph is split into NPU
//! and CPU-fallback parts, each NPU part lowered to layer programs, each
//! fallback part compiled by the CPU backend (`fallback`). The artifact's
//! sections: `code` (the packed programs), `code-plan`
//! (`m4c_npu::module::ModulePlan`, JSON) and `code-weights` (the fallback
//! parts' constants and compiled CPU code).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use m4c_compiler::backend::{
    Artifact, ArtifactFile, BackendError, Capabilities, CodeGenerator, CompileRequest, Refusal,
};
use m4c_compiler::opt::Roofline;
use m4c_ir::{DType, Graph, Node, ValueId};
use m4c_npu::config::MachineConfig;
use m4c_npu::module::{pack_programs, ModulePart, ModulePlan};
use m4c_runtime::bundle::format::SectionKind;

use crate::calibrate::Calibration;
use crate::{constraints, fallback, lower, split};

/// The machine a request without `--target` compiles for.
pub const DEFAULT_TARGET: &str = "edge-small";

/// The NPU backend's code generator.
pub struct NpuBackend;

impl CodeGenerator for NpuBackend {
    fn name(&self) -> &'static str {
        "npu"
    }

    fn description(&self) -> &'static str {
        "int8 programs for the simulated NPU (m4c-npu), CPU fallback compiled by the CPU backend; float graphs need calibration (run/bench calibrate on the inputs, firmware build on --calibrate data)"
    }

    fn targets(&self) -> Vec<String> {
        vec!["edge-small".into(), "phone-flagship".into()]
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ops: constraints::ops(),
            dtypes: vec![DType::F32],
        }
    }

    fn refuse(&self, g: &Graph, node: &Node) -> Option<String> {
        constraints::refuse(g, node)
    }

    fn runnable(&self, target: Option<&str>) -> Result<(), String> {
        config(target).map(|_| ())
    }

    fn compile(&self, graph: &Graph, request: &CompileRequest) -> Result<Artifact, BackendError> {
        Err(BackendError::Compile {
            backend: "npu",
            msg: format!(
                "graph `{}` needs activation ranges: `m4c run`/`m4c bench --backend npu` calibrate on their inputs, `m4c firmware build --backend npu` on --calibrate data (m4c_npu_codegen::compile_calibrated){}",
                graph.name,
                request.target.as_deref().map_or(String::new(), |t| format!(" for `{t}`"))
            ),
        })
    }

    fn cost_model(&self) -> Roofline {
        roofline(&MachineConfig::edge_small())
    }
}

/// The roofline the optimiser plans with for machine `c`: the array's
/// peak, the vector lanes, the DRAM rate, one DMA latency per kernel (from
/// the config, not measured).
pub fn roofline(c: &MachineConfig) -> Roofline {
    let hz = c.clock_mhz * 1e6;
    let dram = c.dram_bytes_per_cycle.unwrap_or(c.dma_in.bytes_per_cycle);
    Roofline {
        name: format!("npu:{}", c.name),
        peak_flops: 2.0 * f64::from(c.array_rows) * f64::from(c.array_cols) * hz,
        vector_flops: f64::from(c.vector_lanes) * hz,
        bandwidth: f64::from(dram) * hz,
        launch_ns: f64::from(c.dma_in.latency_cycles) / hz * 1e9,
        source: format!(
            "config: {}x{} array, {} vector lanes, {} B/cycle, {} MHz",
            c.array_rows, c.array_cols, c.vector_lanes, dram, c.clock_mhz
        ),
    }
}

/// The machine configuration a target names (`None`: [`DEFAULT_TARGET`]).
fn config(target: Option<&str>) -> Result<MachineConfig, String> {
    MachineConfig::load(target.unwrap_or(DEFAULT_TARGET)).map_err(|e| e.to_string())
}

/// Compiles `graph` for the NPU of `request.target` with the activation
/// ranges of `cal`: NPU parts where the constraints allow, CPU-fallback
/// parts elsewhere, compiled by `fallback_codegen` (the CPU backend, injected by
/// the caller; `None` leaves them to the runtime's interpreter).
pub fn compile_calibrated(
    graph: &Graph,
    cal: &Calibration,
    request: &CompileRequest,
    fallback_codegen: Option<&dyn CodeGenerator>,
) -> Result<Artifact, BackendError> {
    let fail = |msg: String| BackendError::Compile {
        backend: "npu",
        msg,
    };
    let config = config(request.target.as_deref()).map_err(|msg| BackendError::Target {
        backend: "npu",
        msg,
    })?;
    let started = Instant::now();
    // Nodes whose layer could not be generated (a shape or scale outside
    // a generator's range) fall back too; the split is redone without them.
    let mut failed: HashMap<ValueId, String> = HashMap::new();
    let mut notes = vec![];
    let (lowered, parts) = loop {
        match lower_parts(graph, cal, &config, &failed) {
            Ok(done) => break done,
            Err((Some(node), msg)) if !failed.contains_key(&graph.nodes[node].output) => {
                failed.insert(graph.nodes[node].output, msg.clone());
                notes.push(msg);
            }
            Err((_, msg)) => return Err(fail(msg)),
        }
    };
    let npu_ms = started.elapsed().as_secs_f64() * 1e3;
    let owner = owners(graph, &parts);
    let outputs: HashSet<ValueId> = graph.outputs.iter().copied().collect();
    let mut module = ModulePlan {
        config,
        parts: vec![],
    };
    let mut programs = vec![];
    let mut store = fallback::Store::default();
    let mut why = vec![];
    let mut lowered = lowered.into_iter();
    for (k, part) in parts.iter().enumerate() {
        if part.npu {
            let l = lowered
                .next()
                .ok_or_else(|| fail("an NPU part was not lowered".into()))?;
            module.parts.push(ModulePart::Npu {
                plan: l.plan,
                first_program: programs.len(),
                inputs: l.inputs,
                outputs: l.outputs,
                indices: l.indices,
            });
            programs.extend(l.programs);
            continue;
        }
        let exported = |v: ValueId| exported(graph, &owner, &outputs, k, v);
        let built = fallback::build(
            graph,
            &part.nodes,
            &exported,
            &failed,
            fallback_codegen,
            request,
            &mut store,
        )
        .map_err(fail)?;
        module.parts.push(built.part);
        why.extend(built.nodes);
    }
    let ms = Timing {
        npu: npu_ms,
        fallback: started.elapsed().as_secs_f64() * 1e3 - npu_ms,
    };
    finish(graph, module, programs, store.bytes, why, notes, ms).map_err(fail)
}

/// Compile times, ms.
struct Timing {
    /// Split and NPU lowering.
    npu: f64,
    /// The fallback parts (the CPU code generator's share).
    fallback: f64,
}

/// The parts of a split and the lowered NPU parts, in part order.
type Split = (Vec<lower::Lowered>, Vec<split::Part>);

/// Splits `graph` with the nodes computing `failed` on the CPU and lowers
/// every NPU part (in part order); a layer that cannot be generated names
/// its node.
fn lower_parts(
    graph: &Graph,
    cal: &Calibration,
    config: &MachineConfig,
    failed: &HashMap<ValueId, String>,
) -> Result<Split, (Option<usize>, String)> {
    let parts = split::split(graph, &|g, n| {
        !failed.contains_key(&n.output) && constraints::refuse(g, n).is_none()
    });
    let owner = owners(graph, &parts);
    let outputs: HashSet<ValueId> = graph.outputs.iter().copied().collect();
    let mut lowered = vec![];
    for (k, part) in parts.iter().enumerate().filter(|(_, p)| p.npu) {
        let exported = |v: ValueId| exported(graph, &owner, &outputs, k, v);
        lowered.push(
            lower::lower_part(graph, &part.nodes, &exported, cal, config)
                .map_err(|(i, msg)| (Some(i), msg))?,
        );
    }
    Ok((lowered, parts))
}

/// Whether value `v` is read outside part `k` (or is a graph output).
fn exported(
    graph: &Graph,
    owner: &[usize],
    outputs: &HashSet<ValueId>,
    k: usize,
    v: ValueId,
) -> bool {
    outputs.contains(&v)
        || graph
            .nodes
            .iter()
            .enumerate()
            .any(|(i, n)| owner[i] != k && n.inputs.contains(&v))
}

/// The artifact of a compiled module: `why` lists every fallback node
/// with its reason (`constraint: detail`), `notes` the layers that could
/// not be generated.
fn finish(
    graph: &Graph,
    module: ModulePlan,
    programs: Vec<m4c_npu::program::Program>,
    weights: Vec<u8>,
    why: Vec<Refusal>,
    notes: Vec<String>,
    ms: Timing,
) -> Result<Artifact, String> {
    let config = &module.config;
    let (mut npu_parts, mut compiled, mut interpreted) = (0, 0, vec![]);
    for part in &module.parts {
        match part {
            ModulePart::Npu { .. } => npu_parts += 1,
            ModulePart::Fallback { cpu: Some(_), .. } => compiled += 1,
            ModulePart::Fallback { not_compiled, .. } => {
                interpreted.push(not_compiled.clone().unwrap_or_default())
            }
        }
    }
    let stats = serde_json::json!({
        "config": config.name,
        "npu_parts": npu_parts,
        "fallback_parts": module.parts.len() - npu_parts,
        "fallback_compiled": compiled,
        "fallback_interpreted": interpreted,
        "npu_nodes": graph.nodes.len() - why.len(),
        "fallback_nodes": why.len(),
        "fallback": why,
        "programs": programs.len(),
        "layers_not_generated": notes,
        "compile_ms": ms.npu + ms.fallback,
        "fallback_compile_ms": ms.fallback,
    });
    let plan = serde_json::to_vec_pretty(&module).map_err(|e| e.to_string())?;
    let file = |ext: &str, section, bytes| ArtifactFile {
        name: format!("{}.{ext}", graph.name),
        section: Some(section),
        bytes,
    };
    Ok(Artifact {
        backend: "npu".into(),
        target: config.name.clone(),
        tuning: String::new(),
        runnable: true,
        files: vec![
            file("npub", SectionKind::Code, pack_programs(&programs)),
            file("plan.json", SectionKind::CodePlan, plan),
            file("fallback", SectionKind::CodeWeights, weights),
        ],
        stats,
    })
}

/// The part of every node.
fn owners(g: &Graph, parts: &[split::Part]) -> Vec<usize> {
    let mut owner = vec![0; g.nodes.len()];
    for (k, p) in parts.iter().enumerate() {
        for &i in &p.nodes {
            owner[i] = k;
        }
    }
    owner
}
