//! Whole-graph compilation: IR graph → one LLVM module of kernels → object
//! file, weight blob and manifest with the execution plan → (on the host)
//! a shared library the device crate's executor runs.

mod dedupe;
mod lower;
mod slices;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use inkwell::context::Context;
use m4c_cpu_device::{
    BufRef, GraphExecutor, GraphPlan, KernelLibrary, Manifest, Region, Step, TensorSpec,
};
use m4c_ir::{DType, Graph, Storage, Tensor, ValueId};
use m4c_plan::memory::kernel_step;

use lower::{BufKind, PlanStep};
pub(crate) use lower::{Loc, Lowering};

use crate::artifact::{build_artifact, BuiltArtifact};
use crate::{CodegenError, Machine, Target};

/// How to compile a graph.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// The code-generation target.
    pub target: Target,
    /// Threads the executor spreads GEMMs and parallel loops over.
    pub threads: usize,
}

/// Figures about one compilation.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CompileStats {
    /// Wall time of code generation, optimisation, emission and linking.
    pub compile_ms: f64,
    /// Generated kernels (GEMMs included).
    pub kernels: usize,
    /// GEMMs with compile-time packed weights.
    pub gemms: usize,
    /// The liveness-planned activation arena.
    pub arena_bytes: usize,
    /// The activations without buffer reuse.
    pub naive_arena_bytes: usize,
    /// The weight blob (packed GEMM operands and other constants).
    pub weight_bytes: usize,
}

/// A graph compiled for this host and loaded, ready to run.
pub struct CompiledGraph {
    executor: GraphExecutor,
    stats: CompileStats,
    // Holds the artifact files while the library is loaded.
    _dir: tempfile::TempDir,
}

/// Compiles `graph` for `options.target` (which must run on this host),
/// links and loads it.
pub fn compile_graph(
    graph: &Graph,
    options: &CompileOptions,
) -> Result<CompiledGraph, CodegenError> {
    options.target.check_runs_on_host()?;
    let started = Instant::now();
    let dir = tempfile::tempdir().map_err(|source| CodegenError::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    let manifest = write_graph_artifact(graph, &options.target, dir.path())?;
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    let plan = manifest.graph.as_ref().ok_or_else(|| CodegenError::Graph {
        graph: graph.name.clone(),
        reason: "the artifact has no graph plan".into(),
    })?;
    let stats = CompileStats {
        compile_ms,
        kernels: plan.steps.len(),
        gemms: manifest.gemms.len(),
        arena_bytes: plan.arena_bytes,
        naive_arena_bytes: plan.naive_arena_bytes,
        weight_bytes: std::fs::metadata(dir.path().join(&manifest.weights))
            .map(|m| m.len() as usize)
            .unwrap_or(0),
    };
    let library = KernelLibrary::open(dir.path())?;
    let executor = GraphExecutor::new(library, options.threads)?;
    Ok(CompiledGraph {
        executor,
        stats,
        _dir: dir,
    })
}

/// Compiles `graph` into an artifact directory (object, weights,
/// manifest with the plan, and the shared library when `target` runs
/// here). Cross targets produce the object only.
pub fn write_graph_artifact(
    graph: &Graph,
    target: &Target,
    dir: &Path,
) -> Result<Manifest, CodegenError> {
    let built = build_graph_artifact(graph, target)?;
    built.write(dir)?;
    Ok(built.manifest)
}

/// Compiles `graph` into an artifact held in memory (only the linker
/// works on files, in a scratch directory): what the backend seam hands to
/// bundles and to in-process runs.
pub fn build_graph_artifact(graph: &Graph, target: &Target) -> Result<BuiltArtifact, CodegenError> {
    let machine = Machine::new(target)?;
    let context = Context::create();
    let module = machine.new_module(&context, &graph.name);
    let mut lowering = Lowering::run(&context, &module, target, graph)?;
    dedupe::share_identical_kernels(&module, &mut lowering.steps);
    let plan = plan(&lowering, graph)?;
    build_artifact(
        &machine,
        &module,
        std::mem::take(&mut lowering.weights),
        lowering.gemms.clone(),
        Some(plan),
    )
}

/// The CPU backend's [`Schedule`](m4c_plan::memory::Schedule) of a graph,
/// for the shared planner: the graph is lowered to LLVM IR exactly as
/// [`write_graph_artifact`] lowers it (no optimisation, emission or
/// linking) and the kernels it emitted are reported, so whoever plans
/// memory with it (the optimiser's report) gets the arena
/// [`compile_graph`] allocates.
#[derive(Clone, Debug)]
pub struct CpuScheduler {
    pub target: Target,
}

impl m4c_plan::memory::Scheduler for CpuScheduler {
    fn name(&self) -> String {
        format!("cpu {} kernels", self.target.name())
    }

    fn schedule(&self, graph: &Graph) -> Result<m4c_plan::memory::Schedule, String> {
        let machine = Machine::new(&self.target).map_err(|e| e.to_string())?;
        let context = Context::create();
        let module = machine.new_module(&context, &graph.name);
        Lowering::run(&context, &module, &self.target, graph)
            .map(|l| l.schedule())
            .map_err(|e| e.to_string())
    }
}

/// Places the arena buffers with the shared planner (on the schedule
/// lowering followed) and resolves every location. Every step's buffers
/// are checked to be live, in the shared plan, at the step it runs at: the
/// plan is only as good as the schedule lowering reports.
fn plan(l: &Lowering<'_, '_>, graph: &Graph) -> Result<GraphPlan, CodegenError> {
    let memory = m4c_plan::memory::plan(graph, &l.schedule()).map_err(|e| CodegenError::Graph {
        graph: graph.name.clone(),
        reason: e.to_string(),
    })?;
    let placed = |b: usize| -> Result<&m4c_plan::memory::Placed, CodegenError> {
        let inconsistent = |what: &str| CodegenError::Graph {
            graph: graph.name.clone(),
            reason: format!("internal: arena buffer {b} {what} in the shared memory plan"),
        };
        match l.bufs[b] {
            BufKind::Arena { buffer, bytes } => {
                let p = memory
                    .get(buffer)
                    .ok_or_else(|| inconsistent("is missing"))?;
                if p.lifetime.bytes < bytes {
                    return Err(inconsistent("is smaller"));
                }
                Ok(p)
            }
            _ => Err(inconsistent("is not an arena buffer")),
        }
    };
    let mut arena_offset = vec![0usize; l.bufs.len()];
    let mut check_live = |loc: Loc, at: usize| -> Result<(), CodegenError> {
        if let BufKind::Arena { .. } = l.bufs[loc.buf] {
            let p = placed(loc.buf)?;
            if !(p.lifetime.first..=p.lifetime.last).contains(&at) {
                return Err(CodegenError::Graph {
                    graph: graph.name.clone(),
                    reason: format!(
                        "internal: {:?} is used at step {at} outside its planned lifetime {}..={}",
                        p.buffer, p.lifetime.first, p.lifetime.last
                    ),
                });
            }
            arena_offset[loc.buf] = p.offset;
        }
        Ok(())
    };
    let writing = l.steps_writing_result();
    for ((step, &at), &writes) in l.steps.iter().zip(&l.step_at).zip(&writing) {
        for loc in step.locs() {
            check_live(loc, kernel_step(at, writes))?;
        }
    }
    let mut outputs = Vec::with_capacity(graph.outputs.len());
    for &o in &graph.outputs {
        let loc = l.loc_of(o)?;
        check_live(loc, 2 * graph.nodes.len())?;
        outputs.push((o, loc));
    }
    let resolve = |loc: Loc| -> BufRef {
        let (region, base) = match l.bufs[loc.buf] {
            BufKind::Input(i) => (Region::Input(i), 0),
            BufKind::Weights(offset) => (Region::Weights, offset),
            BufKind::Arena { .. } => (Region::Arena, arena_offset[loc.buf]),
        };
        BufRef {
            region,
            offset: base + loc.offset,
        }
    };
    let spec = |id: ValueId, loc: Loc| -> Result<TensorSpec, CodegenError> {
        let dtype = l.dtype(id);
        Ok(TensorSpec {
            name: graph.value(id).name.clone(),
            dtype: dtype.name().to_string(),
            elem_bytes: dtype.size_bits().div_ceil(8),
            shape: l.shape(id)?,
            buf: resolve(loc),
        })
    };
    let inputs = graph
        .inputs
        .iter()
        .map(|&i| spec(i, l.loc_of(i)?))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = outputs
        .into_iter()
        .map(|(o, loc)| spec(o, loc))
        .collect::<Result<Vec<_>, _>>()?;
    let steps = l
        .steps
        .iter()
        .map(|step| match step {
            PlanStep::Kernel {
                symbol,
                buffers,
                extent,
                scratch_bytes,
                parallel,
            } => Step::Kernel {
                symbol: symbol.clone(),
                buffers: buffers.iter().map(|&b| resolve(b)).collect(),
                extent: *extent,
                scratch_bytes: *scratch_bytes,
                parallel: *parallel,
            },
            PlanStep::Gemm { symbol, a, c } => Step::Gemm {
                symbol: symbol.clone(),
                a: resolve(*a),
                c: resolve(*c),
            },
        })
        .collect();
    Ok(GraphPlan {
        arena_bytes: memory.arena_bytes,
        naive_arena_bytes: memory.naive_bytes,
        inputs,
        outputs,
        steps,
    })
}

impl CompiledGraph {
    /// Figures about the compilation.
    pub fn stats(&self) -> &CompileStats {
        &self.stats
    }

    /// The execution plan.
    pub fn plan(&self) -> &GraphPlan {
        self.executor.plan()
    }

    /// Runs the graph on `inputs` (in graph input order; element types and
    /// shapes must match the compiled graph) and returns its outputs.
    pub fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, CodegenError> {
        let specs = &self.executor.plan().inputs;
        if inputs.len() != specs.len() {
            return Err(CodegenError::Input(format!(
                "the graph takes {} inputs, got {}",
                specs.len(),
                inputs.len()
            )));
        }
        let mut bytes = Vec::with_capacity(inputs.len());
        for (t, spec) in inputs.iter().zip(specs) {
            if t.dtype.name() != spec.dtype || t.shape != spec.shape {
                return Err(CodegenError::Input(format!(
                    "input `{}` is {}{:?}, the graph was compiled for {}{:?}",
                    spec.name, t.dtype, t.shape, spec.dtype, spec.shape
                )));
            }
            bytes.push(
                t.bytes()
                    .map_err(|e| CodegenError::Input(format!("input `{}`: {e}", spec.name)))?,
            );
        }
        let specs = self.executor.plan().outputs.clone();
        let outputs = self.executor.run_borrowed(&bytes)?;
        specs
            .iter()
            .zip(outputs)
            .map(|(spec, bytes)| {
                let dtype: DType = spec
                    .dtype
                    .parse()
                    .map_err(|e: String| CodegenError::Input(e))?;
                // One copy, straight from the arena into the tensor.
                Ok(Tensor {
                    dtype,
                    shape: spec.shape.clone(),
                    storage: Storage::Owned(Arc::from(bytes)),
                })
            })
            .collect::<Result<Vec<_>, CodegenError>>()
    }
}
