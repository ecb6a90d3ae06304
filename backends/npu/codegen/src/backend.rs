//! [`NpuBackend`], the NPU's `CodeGenerator`: the graph is split into NPU
//! and CPU-fallback parts, each NPU part lowered to layer programs, each
//! fallback part kept as IR. The artifact's sections: `code` (the packed
//! programs), `code-plan` (`m4c_npu::module::ModulePlan`, JSON) and
//! `code-weights` (the fallback parts' constants).

use std::collections::HashSet;
use std::time::Instant;

use m4c_compiler::backend::{
    Artifact, ArtifactFile, BackendError, Capabilities, CodeGenerator, CompileRequest,
};
use m4c_compiler::opt::Roofline;
use m4c_ir::{DType, Graph, Node, Tensor, ValueDef, ValueId};
use m4c_npu::config::MachineConfig;
use m4c_npu::module::{pack_programs, ModulePart, ModulePlan};
use m4c_runtime::bundle::format::SectionKind;
use m4c_runtime::exec::npu::encode_constants;

use crate::calibrate::Calibration;
use crate::{constraints, lower, split};

/// The machine a request without `--target` compiles for.
pub const DEFAULT_TARGET: &str = "edge-small";

/// The NPU backend's code generator.
pub struct NpuBackend;

impl CodeGenerator for NpuBackend {
    fn name(&self) -> &'static str {
        "npu"
    }

    fn description(&self) -> &'static str {
        "int8 programs for the simulated NPU (m4c-npu), CPU fallback on the interpreter; float graphs need calibration (run/bench calibrate on the inputs)"
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
                "graph `{}` needs activation ranges: `m4c run`/`m4c bench --backend npu` calibrate on their inputs (m4c_npu_codegen::compile_calibrated){}",
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
/// ranges of `cal`: NPU parts where the constraints allow, CPU fallback
/// elsewhere.
pub fn compile_calibrated(
    graph: &Graph,
    cal: &Calibration,
    request: &CompileRequest,
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
    let mut failed: HashSet<ValueId> = HashSet::new();
    let mut notes = vec![];
    loop {
        match try_compile(graph, cal, &config, &failed) {
            Ok((module, programs, constants, parts)) => {
                return finish(graph, module, programs, constants, &parts, notes, started)
                    .map_err(fail)
            }
            Err((Some(node), msg)) if failed.insert(graph.nodes[node].output) => notes.push(msg),
            Err((_, msg)) => return Err(fail(msg)),
        }
    }
}

/// What one compilation attempt produced.
type Compiled<'g> = (
    ModulePlan,
    Vec<m4c_npu::program::Program>,
    Vec<(String, &'g Tensor)>,
    Vec<split::Part>,
);

/// Splits and lowers `graph` with the nodes computing `failed` on the
/// CPU; a layer that cannot be generated names its node.
fn try_compile<'g>(
    graph: &'g Graph,
    cal: &Calibration,
    config: &MachineConfig,
    failed: &HashSet<ValueId>,
) -> Result<Compiled<'g>, (Option<usize>, String)> {
    let parts = split::split(graph, &|g, n| {
        !failed.contains(&n.output) && constraints::refuse(g, n).is_none()
    });
    let owner = owners(graph, &parts);
    let mut programs = vec![];
    let mut module = ModulePlan {
        config: config.clone(),
        parts: vec![],
    };
    let mut constants: Vec<(String, &Tensor)> = vec![];
    let outputs: HashSet<ValueId> = graph.outputs.iter().copied().collect();
    for (k, part) in parts.iter().enumerate() {
        let exported = |v: ValueId| {
            outputs.contains(&v)
                || graph
                    .nodes
                    .iter()
                    .enumerate()
                    .any(|(i, n)| owner[i] != k && n.inputs.contains(&v))
        };
        if part.npu {
            let l = lower::lower_part(graph, &part.nodes, &exported, cal, config)
                .map_err(|(i, msg)| (Some(i), msg))?;
            module.parts.push(ModulePart::Npu {
                plan: l.plan,
                first_program: programs.len(),
                inputs: l.inputs,
                outputs: l.outputs,
            });
            programs.extend(l.programs);
        } else {
            let (ir, reasons) = fallback(graph, &part.nodes, &exported, &mut constants, failed)
                .map_err(|msg| (None, msg))?;
            module.parts.push(ModulePart::Fallback { ir, reasons });
        }
    }
    Ok((module, programs, constants, parts))
}

/// The artifact of a compiled module.
fn finish(
    graph: &Graph,
    module: ModulePlan,
    programs: Vec<m4c_npu::program::Program>,
    constants: Vec<(String, &Tensor)>,
    parts: &[split::Part],
    notes: Vec<String>,
    started: Instant,
) -> Result<Artifact, String> {
    let config = &module.config;
    let npu_parts = parts.iter().filter(|p| p.npu).count();
    let stats = serde_json::json!({
        "config": config.name,
        "npu_parts": npu_parts,
        "fallback_parts": parts.len() - npu_parts,
        "npu_nodes": parts.iter().filter(|p| p.npu).map(|p| p.nodes.len()).sum::<usize>(),
        "fallback_nodes": parts.iter().filter(|p| !p.npu).map(|p| p.nodes.len()).sum::<usize>(),
        "programs": programs.len(),
        "layers_not_generated": notes,
        "compile_ms": started.elapsed().as_secs_f64() * 1e3,
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
            file(
                "weights",
                SectionKind::CodeWeights,
                encode_constants(&constants)?,
            ),
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

/// The IR text of a fallback part (its constants appended to
/// `constants`) and why its operators are not on the NPU.
fn fallback<'g>(
    g: &'g Graph,
    nodes: &[usize],
    exported: &dyn Fn(ValueId) -> bool,
    constants: &mut Vec<(String, &'g Tensor)>,
    failed: &HashSet<ValueId>,
) -> Result<(String, Vec<String>), String> {
    let mut sub = Graph::new(format!("{}/fallback", g.name));
    let mut map = std::collections::HashMap::new();
    let mut reasons: Vec<String> = vec![];
    for &i in nodes {
        let node = &g.nodes[i];
        let mut args = vec![];
        for &v in &node.inputs {
            let value = g.value(v);
            let id = match map.get(&v) {
                Some(&id) => id,
                None => {
                    let id = match &value.def {
                        ValueDef::Const(t) => {
                            constants.push((value.name.clone(), t));
                            sub.add_const(value.name.clone(), t.clone())
                        }
                        _ => sub.add_input(value.name.clone(), value.ty.clone()),
                    };
                    map.insert(v, id);
                    id
                }
            };
            args.push(id);
        }
        let out = sub
            .add_node(node.op.clone(), &args, g.value(node.output).name.clone())
            .map_err(|e| e.to_string())?;
        map.insert(node.output, out);
        if exported(node.output) {
            sub.outputs.push(out);
        }
        let why = constraints::refuse(g, node).unwrap_or_else(|| {
            if failed.contains(&node.output) {
                "no layer could be generated".into()
            } else {
                "grouped with the fallback".into()
            }
        });
        let line = format!("{}: {why}", node.op.kind().name());
        if !reasons.contains(&line) {
            reasons.push(line);
        }
    }
    Ok((m4c_ir::text::print(&sub), reasons))
}
