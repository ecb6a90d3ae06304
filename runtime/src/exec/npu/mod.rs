//! The NPU backend's device: the simulator of `m4c-npu` is the NPU. A
//! module's plan (`m4c_npu::module::ModulePlan`, JSON) lists its parts in
//! execution order; NPU parts run their layers' programs on the
//! bit-exact cycle simulator (float values are quantised on entry and
//! dequantised on exit, counted as boundary cost); CPU-fallback parts run
//! the CPU backend's compiled code for them through the CPU device
//! ([`CompiledModule`]), or their IR on the reference interpreter where the
//! CPU backend did not compile them or its code cannot load here (each
//! part's engine and the reason are in [`RunFigures::parts`]). Sections:
//! `code` = the packed programs, `code-plan` = the plan, `code-weights` =
//! the fallback parts' constants ([`encode_constants`]) and CPU code.
//!
//! Trust: the programs are data the simulator runs, the fallback parts'
//! CPU code is native. From a bundle whose native code is refused the
//! device still loads the programs ([`Device::load_without_native`]) and
//! runs every fallback part on the interpreter, with the refusal as its
//! reason.

mod fallback;
mod linked;

use std::collections::HashMap;
use std::sync::Arc;

use m4c_ir::Graph;
use m4c_npu::config::MachineConfig;
use m4c_npu::link::{link, LinkedPart};
use m4c_npu::module::{unpack_programs, Boundary, ModulePart, ModulePlan};
use m4c_npu::program::Program;
use m4c_npu::sim::SimOptions;
use m4c_ops::Value;

pub use fallback::{decode_constants, encode_constants};

use super::device::Device;
use super::{check_inputs, ArenaPlan, CodeLoadError, ExecError, ModuleExecutor, Signature};
use crate::bundle::format::SectionKind;
use crate::bundle::ModuleCode;

/// The NPU backend's [`Device`]: targets are machine configurations
/// (presets or config files), all simulated here.
pub struct NpuDevice;

/// One layer's figures from a run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerFigures {
    /// The IR value the layer computes.
    pub name: String,
    /// The kernel.
    pub kernel: String,
    /// Index of its NPU part.
    pub part: usize,
    /// Rows of its result per tile of its pipeline (the code generator's
    /// cut to fit the SRAMs).
    pub tile_rows: usize,
    /// Simulated cycles.
    pub cycles: u64,
    /// Matrix-unit multiply-accumulates.
    pub macs: u64,
    /// MACs / (array PEs × cycles).
    pub utilization: f64,
    /// SRAM bytes its program addresses.
    pub sram_bytes: u64,
    /// DRAM bytes read plus written.
    pub dram_bytes: u64,
    /// Feature-map SRAM bytes read plus written (by DMA).
    pub fmap_bytes: u64,
    /// Where its result lives: `fmap` (on chip, in the feature-map SRAM,
    /// for the next layer to read there: the feature map stays on chip)
    /// or `dram`.
    pub result_in: &'static str,
    /// Simulated energy, pJ.
    pub energy_pj: f64,
}

/// What ran one part of a module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartEngine {
    /// The simulated NPU.
    Npu,
    /// The CPU backend's compiled code.
    CompiledCpu,
    /// The reference interpreter.
    Interpreter,
}

/// One part's figures from a run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PartFigures {
    /// Index in the plan.
    pub part: usize,
    /// What ran it.
    pub engine: PartEngine,
    /// Simulated cycles (NPU parts).
    pub cycles: u64,
    /// Host wall time, seconds (fallback parts: the median of the timed
    /// runs).
    pub seconds: f64,
    /// Why a fallback part ran on the interpreter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Estimated cycles of quantising an NPU part's inputs on entry (as
    /// [`RunFigures::boundary_cycles`]; 0 for fallback parts): where a
    /// trace places the conversions.
    pub quantize_cycles: u64,
    /// Estimated cycles of dequantising its outputs on exit.
    pub dequantize_cycles: u64,
    /// NPU parts: how its layers ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<PartSchedule>,
}

/// How an NPU part's layers ran.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct PartSchedule {
    /// Linked into one program (else layer by layer, each its own
    /// program; `PartFigures::note` says why when linking failed).
    pub linked: bool,
    /// Linked: the feature-map SRAM its memory plan uses (high-water
    /// mark), bytes.
    pub fmap_peak_bytes: u64,
    /// Linked: the DRAM arena of its tensors (boundary values and what
    /// did not fit on chip; high-water mark), bytes.
    pub arena_bytes: u64,
}

/// One NPU layer's result as the simulator left it, dequantised with its
/// tensor's scale and zero point: what `m4c bench` compares with the
/// float reference (per-layer SQNR). Only for the last layer of its part
/// that writes the tensor of the value it is named after (an op split
/// over layers is complete there; a multi-layer op's intermediates and
/// earlier slices have none).
#[derive(Clone, Debug)]
pub struct LayerOutput {
    /// The IR value (the layer's name).
    pub name: String,
    /// Its elements, row-major.
    pub values: Vec<f32>,
}

/// What one run of a module measured.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RunFigures {
    /// Every NPU layer, in execution order.
    pub layers: Vec<LayerFigures>,
    /// Every part, in execution order.
    pub parts: Vec<PartFigures>,
    /// Values quantised into or dequantised out of NPU parts.
    pub boundary_values: usize,
    /// Bytes of those conversions (int8 side).
    pub boundary_bytes: u64,
    /// Estimated cycles of the conversions: one vector-unit pass and one
    /// DMA transfer per byte at the config's rates (not simulated).
    pub boundary_cycles: u64,
    /// Host wall time of the CPU-fallback parts (each the median of its
    /// timed runs), seconds.
    pub fallback_seconds: f64,
    /// Fallback parts run.
    pub fallback_parts: usize,
    /// Of those, the ones run by compiled CPU code.
    pub fallback_compiled: usize,
}

fn section<'a>(code: &'a ModuleCode, kind: SectionKind, what: &str) -> Result<&'a [u8], String> {
    code.section(kind)
        .ok_or_else(|| format!("no {what} section"))
}

/// The plan of `code` (JSON), its programs and its fallback parts.
fn parse(code: &ModuleCode) -> Result<NpuModuleCode, String> {
    let plan: ModulePlan =
        serde_json::from_slice(section(code, SectionKind::CodePlan, "code-plan")?)
            .map_err(|e| format!("code-plan: {e}"))?;
    let programs = unpack_programs(section(code, SectionKind::Code, "code")?)?;
    let store = section(code, SectionKind::CodeWeights, "code-weights")?;
    plan.check(programs.len(), store)?;
    let mut fallbacks = vec![];
    for (k, part) in plan.parts.iter().enumerate() {
        fallbacks.push(match part {
            ModulePart::Npu { plan, .. } => {
                let bytes = plan
                    .tensors
                    .iter()
                    .try_fold(0usize, |sum, t| sum.checked_add(t.bytes));
                if bytes.is_none_or(|b| b > m4c_ops::budget::max_memory()) {
                    return Err("an NPU part's tensors exceed the memory budget".into());
                }
                None
            }
            ModulePart::Fallback { .. } => Some(
                fallback::parse(code, k, part, store)
                    .map_err(|e| format!("fallback part {k}: {e}"))?,
            ),
        });
    }
    Ok(NpuModuleCode {
        plan,
        programs,
        fallbacks,
    })
}

/// A module's NPU code, decoded and checked.
pub struct NpuModuleCode {
    plan: ModulePlan,
    programs: Vec<Program>,
    fallbacks: Vec<Option<fallback::FallbackCode>>,
}

impl Device for NpuDevice {
    fn name(&self) -> &'static str {
        "npu"
    }

    /// The simulator runs any machine: the plan carries its validated
    /// configuration (a preset's or a config file's), whose name is the
    /// target ([`Device::check`]); no file is read for it.
    fn runs_here(&self, _target: &str) -> Result<(), String> {
        Ok(())
    }

    fn check(&self, code: &ModuleCode, _graph: &Graph) -> Result<(), String> {
        let parsed = parse(code)?;
        let (config, target) = (&parsed.plan.config.name, &code.entry().target);
        if config != target {
            return Err(format!(
                "the plan is for NPU config `{config}`, the code entry for `{target}`"
            ));
        }
        Ok(())
    }

    fn load(
        &self,
        name: &str,
        code: &ModuleCode,
        signature: Signature,
        threads: usize,
    ) -> Result<Arc<dyn ModuleExecutor>, CodeLoadError> {
        let section = code.entry().section.clone();
        let code = parse(code).map_err(|msg| CodeLoadError::Load { section, msg })?;
        Ok(Arc::new(NpuModule::new(
            name, code, signature, threads, None,
        )))
    }

    fn load_without_native(
        &self,
        name: &str,
        code: &ModuleCode,
        signature: Signature,
        threads: usize,
        why: &str,
    ) -> Option<Result<Arc<dyn ModuleExecutor>, CodeLoadError>> {
        let section = code.entry().section.clone();
        Some(
            parse(code)
                .map_err(|msg| CodeLoadError::Load { section, msg })
                .map(|code| {
                    let module = NpuModule::new(name, code, signature, threads, Some(why));
                    Arc::new(module) as Arc<dyn ModuleExecutor>
                }),
        )
    }
}

/// What a module's NPU code holds, for listings (`m4c firmware info`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeSummary {
    /// The machine configuration it was compiled for.
    pub config: String,
    /// Its NPU parts.
    pub npu_parts: usize,
    /// Its programs (one per layer).
    pub programs: usize,
    /// Its CPU-fallback parts.
    pub fallback_parts: usize,
    /// Of those, the parts with native CPU code (the rest are IR only).
    pub native_parts: usize,
}

/// Decodes and checks `code` (as [`Device::check`] does) and summarises it.
pub fn summary(code: &ModuleCode) -> Result<CodeSummary, String> {
    let parsed = parse(code)?;
    let fallbacks: Vec<_> = parsed.fallbacks.iter().flatten().collect();
    Ok(CodeSummary {
        config: parsed.plan.config.name.clone(),
        npu_parts: parsed.plan.parts.len() - fallbacks.len(),
        programs: parsed.programs.len(),
        fallback_parts: fallbacks.len(),
        native_parts: fallbacks.iter().filter(|f| f.is_native()).count(),
    })
}

/// A module loaded on the simulated NPU.
pub struct NpuModule {
    name: String,
    signature: Signature,
    code: NpuModuleCode,
    fallbacks: Vec<Option<fallback::Fallback>>,
    /// Per NPU part, its layers linked into one program, or why they
    /// could not be (the part then runs layer by layer).
    linked: Vec<Option<Result<LinkedPart, String>>>,
}

impl NpuModule {
    /// Loads decoded code: each compiled fallback part through the CPU
    /// device (on `threads` threads); a part without code, or whose code
    /// does not load on this host, on the interpreter (with the reason).
    /// With `refused` (why native code may not be loaded) no CPU code is
    /// loaded: every fallback part runs on the interpreter.
    fn new(
        name: &str,
        mut code: NpuModuleCode,
        signature: Signature,
        threads: usize,
        refused: Option<&str>,
    ) -> NpuModule {
        let fallbacks = std::mem::take(&mut code.fallbacks)
            .into_iter()
            .enumerate()
            .map(|(k, f)| f.map(|f| fallback::load(name, k, f, threads, refused)))
            .collect();
        let linked = code
            .plan
            .parts
            .iter()
            .map(|part| link_part(part, &code.programs, &code.plan.config))
            .collect();
        NpuModule {
            name: name.to_string(),
            signature,
            code,
            fallbacks,
            linked,
        }
    }

    /// Loads a module from its sections in memory (what `m4c bench` uses
    /// to get per-layer figures); compiled fallback code runs on
    /// `threads` threads.
    pub fn from_sections(
        name: &str,
        code: &ModuleCode,
        signature: Signature,
        threads: usize,
    ) -> Result<NpuModule, String> {
        Ok(NpuModule::new(name, parse(code)?, signature, threads, None))
    }

    /// Runs every NPU part layer by layer, each layer a program of its
    /// own (`--layer-by-layer`: the schedule the linked one is compared
    /// with).
    pub fn unlink(&mut self) {
        self.linked.iter_mut().for_each(|l| *l = None);
    }

    /// NPU part `index` linked into one program, or why it could not be
    /// (`None`: a fallback part, or the module runs layer by layer).
    pub fn linked(&self, index: usize) -> Option<Result<&LinkedPart, &str>> {
        match self.linked.get(index)? {
            Some(Ok(l)) => Some(Ok(l)),
            Some(Err(e)) => Some(Err(e.as_str())),
            None => None,
        }
    }

    /// The machine it simulates.
    pub fn config(&self) -> &MachineConfig {
        &self.code.plan.config
    }

    /// The plan it runs.
    pub fn plan(&self) -> &ModulePlan {
        &self.code.plan
    }

    /// What runs each part, with the reason for a fallback part on the
    /// interpreter (as loaded, before any run).
    pub fn engines(&self) -> Vec<(PartEngine, Option<&str>)> {
        self.fallbacks
            .iter()
            .map(|f| match f {
                None => (PartEngine::Npu, None),
                Some(f) => match &f.note {
                    None => (PartEngine::CompiledCpu, None),
                    Some(n) => (PartEngine::Interpreter, Some(n.as_str())),
                },
            })
            .collect()
    }

    /// The values fallback part `index` computes (module value names, in
    /// its output order); empty for an NPU part: what a report names the
    /// part by.
    pub fn fallback_outputs(&self, index: usize) -> Vec<&str> {
        match self.fallbacks.get(index) {
            Some(Some(f)) => f
                .executor
                .signature()
                .outputs
                .iter()
                .map(|(n, _)| n.as_str())
                .collect(),
            _ => vec![],
        }
    }

    /// The fallback parts that run on the interpreter, grouped by the
    /// reason (in part order, each reason once).
    pub fn interpreted_parts(&self) -> Vec<(&str, Vec<usize>)> {
        let mut groups: Vec<(&str, Vec<usize>)> = vec![];
        for (k, (_, why)) in self.engines().into_iter().enumerate() {
            let Some(why) = why else { continue };
            match groups.iter_mut().find(|(w, _)| *w == why) {
                Some((_, parts)) => parts.push(k),
                None => groups.push((why, vec![k])),
            }
        }
        groups
    }

    /// Runs the module and reports what the simulator measured; each
    /// fallback part runs `reps` times (at least once) on the same inputs
    /// and its time is the median.
    pub fn run_measured(
        &self,
        inputs: &[Value],
        reps: usize,
    ) -> Result<(Vec<Value>, RunFigures), ExecError> {
        self.run_inner(inputs, reps, None)
    }

    /// [`NpuModule::run_measured`] that also keeps each NPU layer's
    /// result (aligned with [`RunFigures::layers`]; `None` for a layer
    /// that does not complete a value, see [`LayerOutput`]).
    #[allow(clippy::type_complexity)]
    pub fn run_capturing(
        &self,
        inputs: &[Value],
        reps: usize,
    ) -> Result<(Vec<Value>, RunFigures, Vec<Option<LayerOutput>>), ExecError> {
        let mut captured = vec![];
        let (outputs, figures) = self.run_inner(inputs, reps, Some(&mut captured))?;
        Ok((outputs, figures, captured))
    }

    fn run_inner(
        &self,
        inputs: &[Value],
        reps: usize,
        mut capture: Option<&mut Vec<Option<LayerOutput>>>,
    ) -> Result<(Vec<Value>, RunFigures), ExecError> {
        check_inputs(&self.name, &self.signature, inputs)?;
        let fail = |msg: String| ExecError::Run {
            module: self.name.clone(),
            msg,
        };
        let mut env: HashMap<String, Value> = self
            .signature
            .inputs
            .iter()
            .map(|(n, _)| n.clone())
            .zip(inputs.iter().cloned())
            .collect();
        let mut figures = RunFigures::default();
        for (index, part) in self.code.plan.parts.iter().enumerate() {
            let figure = match (part, &self.fallbacks[index]) {
                (ModulePart::Npu { .. }, _) => {
                    let capture = capture.as_deref_mut();
                    self.run_npu(index, part, &mut env, &mut figures, capture)?
                }
                (ModulePart::Fallback { .. }, Some(f)) => {
                    let figure = fallback::run(index, f, &mut env, reps).map_err(&fail)?;
                    figures.fallback_seconds += figure.seconds;
                    figures.fallback_parts += 1;
                    figures.fallback_compiled += usize::from(figure.note.is_none());
                    figure
                }
                (ModulePart::Fallback { .. }, None) => {
                    return Err(fail(format!("fallback part {index} was not loaded")))
                }
            };
            figures.parts.push(figure);
        }
        let outputs = self
            .signature
            .outputs
            .iter()
            .map(|(n, _)| {
                env.remove(n)
                    .ok_or_else(|| fail(format!("output `{n}` was not computed")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((outputs, figures))
    }

    /// Runs NPU part `index` on the simulator.
    fn run_npu(
        &self,
        index: usize,
        part: &ModulePart,
        env: &mut HashMap<String, Value>,
        figures: &mut RunFigures,
        mut capture: Option<&mut Vec<Option<LayerOutput>>>,
    ) -> Result<PartFigures, ExecError> {
        let fail = |msg: String| ExecError::Run {
            module: self.name.clone(),
            msg,
        };
        let ModulePart::Npu {
            plan,
            first_program,
            inputs,
            outputs,
            indices,
        } = part
        else {
            return Err(fail(format!("part {index} is not an NPU part")));
        };
        let indices = indices
            .iter()
            .map(|i| {
                let v = env
                    .get(&i.value)
                    .ok_or_else(|| fail(format!("NPU part {index}: `{}` missing", i.value)))?;
                index_values(v, i.elements).map_err(|e| fail(format!("`{}`: {e}", i.value)))
            })
            .collect::<Result<Vec<Vec<i64>>, _>>()?;
        let config = &self.code.plan.config;
        let mut tensors: Vec<Vec<i8>> = plan.tensors.iter().map(|t| vec![0; t.bytes]).collect();
        let mut quantize_cycles = 0;
        for b in inputs {
            let v = env
                .get(&b.value)
                .ok_or_else(|| fail(format!("NPU part {index}: `{}` missing", b.value)))?;
            tensors[b.tensor] = quantize(v, &plan.tensors[b.tensor])
                .and_then(|q| b.layout.arrange(q, &b.shape))
                .map_err(|e| fail(format!("`{}`: {e}", b.value)))?;
            quantize_cycles += count_boundary(figures, config, b);
        }
        let programs = &self.code.programs[*first_program..];
        let linked = match self.linked.get(index) {
            Some(Some(Ok(l))) => Some(l),
            _ => None,
        };
        let mut cycles = 0;
        if let Some(l) = linked {
            let io = (inputs.as_slice(), outputs.as_slice(), indices.as_slice());
            let (c, layers) = linked::run(index, plan, l, io, &mut tensors, config)
                .map_err(|e| fail(format!("NPU part {index}: {e}")))?;
            cycles = c;
            figures.layers.extend(layers);
        }
        // Layer by layer: where the part is not linked, or to keep every
        // layer's result (the linked program reuses their memory).
        if linked.is_none() || capture.is_some() {
            for (l, layer) in plan.layers.iter().enumerate() {
                let run = plan
                    .run_layer(
                        l,
                        programs,
                        (&mut tensors, &indices),
                        config,
                        SimOptions::default(),
                    )
                    .map_err(&fail)?;
                if let Some(c) = capture.as_deref_mut() {
                    c.push(layer_output(plan, l, &tensors));
                }
                if linked.is_some() {
                    continue;
                }
                let s = &run.stats;
                cycles += s.cycles;
                figures.layers.push(LayerFigures {
                    name: layer.name.clone(),
                    kernel: layer.kernel.clone(),
                    part: index,
                    tile_rows: layer.tile_rows,
                    cycles: s.cycles,
                    macs: s.macs,
                    utilization: s.utilization,
                    sram_bytes: run.sram_bytes,
                    dram_bytes: s.dram_read_bytes + s.dram_write_bytes,
                    fmap_bytes: s.fmap_read_bytes + s.fmap_write_bytes,
                    result_in: "dram",
                    energy_pj: s.energy_pj,
                });
            }
        }
        let mut dequantize_cycles = 0;
        for b in outputs {
            let t = &plan.tensors[b.tensor];
            let v = dequantize(&tensors[b.tensor], t, &b.shape)
                .map_err(|e| fail(format!("`{}`: {e}", b.value)))?;
            env.insert(b.value.clone(), v);
            dequantize_cycles += count_boundary(figures, config, b);
        }
        Ok(PartFigures {
            part: index,
            engine: PartEngine::Npu,
            cycles,
            seconds: 0.0,
            note: self
                .linked
                .get(index)
                .and_then(|l| l.as_ref()?.as_ref().err())
                .map(|e| format!("run layer by layer: {e}")),
            schedule: Some(PartSchedule {
                linked: linked.is_some(),
                fmap_peak_bytes: linked.map_or(0, |l| l.memory.fmap_bytes),
                arena_bytes: linked.map_or(0, |l| l.memory.dram_bytes),
            }),
            quantize_cycles,
            dequantize_cycles,
        })
    }
}

/// Links an NPU part's layers ([`m4c_npu::link`]); `None` for a fallback
/// part. The part's boundary values stay in DRAM for the host; the
/// feature-map SRAM of `config` holds what fits of the rest.
fn link_part(
    part: &ModulePart,
    programs: &[Program],
    config: &MachineConfig,
) -> Option<Result<LinkedPart, String>> {
    let ModulePart::Npu {
        plan,
        first_program,
        inputs,
        outputs,
        ..
    } = part
    else {
        return None;
    };
    let mut pinned = vec![false; plan.tensors.len()];
    for b in inputs.iter().chain(outputs) {
        if let Some(p) = pinned.get_mut(b.tensor) {
            *p = true;
        }
    }
    let programs = programs.get(*first_program..).unwrap_or_default();
    Some(link(plan, programs, &pinned, config.fmap_sram_bytes).map_err(|e| e.to_string()))
}

/// Layer `l`'s result in `tensors`, dequantised, when it is the last
/// layer writing the tensor of the value it is named after.
fn layer_output(
    plan: &m4c_npu::module::PartPlan,
    l: usize,
    tensors: &[Vec<i8>],
) -> Option<LayerOutput> {
    let layer = &plan.layers[l];
    let b = &layer.output;
    let t = plan.tensors.get(b.tensor)?;
    let later = plan.layers.get(l + 1..).unwrap_or_default();
    if t.name != layer.name || later.iter().any(|x| x.output.tensor == b.tensor) {
        return None;
    }
    Some(LayerOutput {
        name: layer.name.clone(),
        values: dequantize_bytes(tensors.get(b.tensor)?, t),
    })
}

/// Counts boundary value `b` into `f` and returns its estimated cycles.
fn count_boundary(f: &mut RunFigures, config: &MachineConfig, b: &Boundary) -> u64 {
    let bytes = b.shape.iter().product::<usize>() as u64;
    let dma = config
        .dram_bytes_per_cycle
        .unwrap_or(config.dma_in.bytes_per_cycle)
        .max(1) as u64;
    f.boundary_values += 1;
    f.boundary_bytes += bytes;
    let cycles = bytes.div_ceil(config.vector_lanes.max(1) as u64) + bytes.div_ceil(dma);
    f.boundary_cycles += cycles;
    cycles
}

/// The `elements` integers of an index value (an embedding lookup's
/// indices, taken as they are).
fn index_values(v: &Value, elements: usize) -> Result<Vec<i64>, String> {
    let values: Vec<i64> = match v {
        Value::I64(a) => a.iter().copied().collect(),
        Value::I32(a) => a.iter().map(|&x| i64::from(x)).collect(),
        _ => return Err(format!("is {}, indices are i64 or i32", v.dtype())),
    };
    if values.len() != elements {
        return Err(format!(
            "{} indices, the part takes {elements}",
            values.len()
        ));
    }
    Ok(values)
}

/// Quantises a float value into a tensor's int8 bytes.
fn quantize(v: &Value, t: &m4c_npu::module::TensorSpec) -> Result<Vec<i8>, String> {
    let Value::F32(a) = v else {
        return Err(format!("is {}, the NPU takes f32 values", v.dtype()));
    };
    if a.len() != t.bytes {
        return Err(format!(
            "{} elements for a {}-byte tensor",
            a.len(),
            t.bytes
        ));
    }
    Ok(a.iter()
        .map(|&x| (((x as f64) / t.scale).round() + t.zero_point as f64).clamp(-128.0, 127.0) as i8)
        .collect())
}

/// Dequantises a tensor's bytes: `scale * (q - zero_point)`.
fn dequantize_bytes(q: &[i8], t: &m4c_npu::module::TensorSpec) -> Vec<f32> {
    q.iter()
        .map(|&v| (t.scale * (v as i32 - t.zero_point) as f64) as f32)
        .collect()
}

/// Dequantises a tensor's bytes into a float value of `shape`.
fn dequantize(q: &[i8], t: &m4c_npu::module::TensorSpec, shape: &[usize]) -> Result<Value, String> {
    let data = dequantize_bytes(q, t);
    ndarray::ArrayD::from_shape_vec(shape.to_vec(), data)
        .map(Value::F32)
        .map_err(|e| format!("output shape {shape:?}: {e}"))
}

impl ModuleExecutor for NpuModule {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn arena(&self) -> Option<&ArenaPlan> {
        None
    }

    fn backend(&self) -> &str {
        "npu"
    }

    fn as_npu(&self) -> Option<&NpuModule> {
        Some(self)
    }

    fn run(&self, inputs: &[Value]) -> Result<Vec<Value>, ExecError> {
        self.run_measured(inputs, 1).map(|(outputs, _)| outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::format::CodeEntry;

    /// An empty module's code for `target` with a plan for `config`.
    fn empty_code(target: &str, config: MachineConfig) -> ModuleCode {
        let plan = serde_json::to_vec(&ModulePlan {
            config,
            parts: vec![],
        })
        .unwrap();
        let entry = CodeEntry {
            cpu: String::new(),
            section: format!("m.{target}"),
            target: target.into(),
        };
        let programs = m4c_npu::module::pack_programs(&[]);
        let files = [
            (SectionKind::Code, programs.as_slice()),
            (SectionKind::CodePlan, plan.as_slice()),
            (SectionKind::CodeWeights, &[][..]),
        ];
        ModuleCode::from_memory("npu", entry, &files).unwrap()
    }

    #[test]
    fn the_plan_config_must_be_the_code_entry_target() {
        let graph = Graph::new("m");
        let code = empty_code("edge-small", MachineConfig::edge_small());
        NpuDevice.check(&code, &graph).unwrap();
        let s = summary(&code).unwrap();
        assert_eq!(
            (s.config.as_str(), s.npu_parts, s.fallback_parts),
            ("edge-small", 0, 0)
        );
        // Nothing native: loads without native code, nothing interpreted.
        let loaded = NpuDevice
            .load_without_native("m", &code, Signature::of(&graph), 1, "unsigned")
            .unwrap()
            .unwrap();
        assert!(loaded.as_npu().unwrap().interpreted_parts().is_empty());
        let code = empty_code("phone-flagship", MachineConfig::edge_small());
        let err = NpuDevice.check(&code, &graph).unwrap_err();
        assert!(
            err.contains("config `edge-small`, the code entry for `phone-flagship`"),
            "{err}"
        );
    }

    #[test]
    fn a_plan_naming_missing_programs_is_refused() {
        let plan = ModulePlan {
            config: MachineConfig::edge_small(),
            parts: vec![ModulePart::Npu {
                plan: m4c_npu::module::PartPlan {
                    tensors: vec![],
                    layers: vec![],
                },
                first_program: 3,
                inputs: vec![],
                indices: vec![],
                outputs: vec![],
            }],
        };
        assert!(plan.check(1, &[]).unwrap_err().contains("first program 3"));
        let quant = m4c_npu::module::TensorSpec {
            name: "x".into(),
            bytes: 3,
            scale: 0.5,
            zero_point: 0,
        };
        let v = Value::F32(ndarray::arr1(&[1.0f32, -100.0, 0.26]).into_dyn());
        assert_eq!(quantize(&v, &quant).unwrap(), [2, -128, 1]);
        assert!(quantize(&Value::I64(ndarray::arr1(&[1i64]).into_dyn()), &quant).is_err());
    }
}
