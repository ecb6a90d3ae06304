//! Compiled code in a bundle: per module and CPU target, a shared library,
//! its plan (the CPU backend's artifact manifest) and its packed weights,
//! checked against the module's IR when the bundle is opened so that the
//! loader (`crate::exec::compiled`) can trust them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::sync::Arc;

use m4c_cpu_device::{GraphPlan, Manifest as CodePlan, Region, Step, TensorSpec};
use m4c_ir::Graph;
use memmap2::Mmap;

use super::format::{CodeEntry, Manifest, SectionEntry, SectionKind, Target};
use super::BundleError;

/// One module's code for one target, validated: its plan parses, describes
/// a graph with exactly the module's inputs and outputs, and every packed
/// GEMM operand lies inside the weights section.
#[derive(Clone)]
pub struct ModuleCode {
    map: Arc<Mmap>,
    entry: CodeEntry,
    plan: CodePlan,
    library: Range<usize>,
    library_blake3: String,
    weights: Range<usize>,
}

impl std::fmt::Debug for ModuleCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleCode")
            .field("entry", &self.entry)
            .field("library_bytes", &self.library.len())
            .field("weights_bytes", &self.weights.len())
            .finish()
    }
}

impl ModuleCode {
    /// The manifest entry (target, CPU name, section name).
    pub fn entry(&self) -> &CodeEntry {
        &self.entry
    }

    /// The CPU backend's manifest: kernels and execution plan.
    pub fn plan(&self) -> &CodePlan {
        &self.plan
    }

    /// The graph's execution plan (present: checked at open).
    pub fn graph_plan(&self) -> &GraphPlan {
        self.plan
            .graph
            .as_ref()
            .expect("checked when the bundle was opened")
    }

    /// The shared library's bytes (a slice of the bundle's map).
    pub fn library(&self) -> &[u8] {
        &self.map[self.library.clone()]
    }

    /// BLAKE3 (hex) the manifest records for the library section.
    pub fn library_blake3(&self) -> &str {
        &self.library_blake3
    }

    /// The packed weights' bytes (a slice of the bundle's map).
    pub fn weights(&self) -> &[u8] {
        &self.map[self.weights.clone()]
    }
}

/// Checks every module's code entries against the sections and the
/// module's graph; code sections that belong to no entry are refused.
pub(crate) fn load_code(
    map: &Arc<Mmap>,
    manifest: &Manifest,
    graphs: &BTreeMap<String, Graph>,
) -> Result<BTreeMap<String, Vec<ModuleCode>>, BundleError> {
    let by_kind = |kind: SectionKind| -> HashMap<&str, &SectionEntry> {
        manifest
            .sections
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| (s.name.as_str(), s))
            .collect()
    };
    let kinds = [
        SectionKind::Code,
        SectionKind::CodePlan,
        SectionKind::CodeWeights,
    ];
    let sections = kinds.map(by_kind);
    let mut used = BTreeSet::new();
    let mut all = BTreeMap::new();
    for m in &manifest.modules {
        let err = |msg: String| BundleError::module(&m.name, msg);
        match (m.target, m.code.is_empty()) {
            (Target::Reference, false) => {
                return Err(err("target `reference` but it lists compiled code".into()))
            }
            (Target::Cpu, true) => return Err(err("target `cpu` but no compiled code".into())),
            _ => {}
        }
        let graph = &graphs[&m.name];
        let mut codes = vec![];
        for c in &m.code {
            if !used.insert(c.section.as_str()) {
                return Err(err(format!("code section `{}` is used twice", c.section)));
            }
            let [lib, plan, weights] = [0, 1, 2].map(|k| sections[k].get(c.section.as_str()));
            let (Some(lib), Some(plan), Some(weights)) = (lib, plan, weights) else {
                return Err(err(format!(
                    "code `{}` needs sections code, code-plan and code-weights of that name",
                    c.section
                )));
            };
            let range = |s: &SectionEntry| s.offset as usize..(s.offset + s.len) as usize;
            let plan: CodePlan = serde_json::from_slice(&map[range(plan)])
                .map_err(|e| err(format!("code-plan `{}`: {e}", c.section)))?;
            check_plan(&plan, c, graph, weights.len)
                .map_err(|e| err(format!("code `{}`: {e}", c.section)))?;
            codes.push(ModuleCode {
                map: Arc::clone(map),
                entry: c.clone(),
                plan,
                library: range(lib),
                library_blake3: lib.blake3.clone(),
                weights: range(weights),
            });
        }
        all.insert(m.name.clone(), codes);
    }
    for (kind, names) in kinds.iter().zip(&sections) {
        if let Some(unused) = names.keys().find(|n| !used.contains(*n)) {
            return Err(BundleError::Manifest(format!(
                "section {kind} `{unused}` belongs to no module"
            )));
        }
    }
    Ok(all)
}

/// The plan must be a graph plan for the entry's target whose inputs and
/// outputs are the graph's (names, element types, shapes), and whose GEMM
/// operands lie inside the weights section.
fn check_plan(
    plan: &CodePlan,
    entry: &CodeEntry,
    graph: &Graph,
    weights_len: u64,
) -> Result<(), String> {
    if plan.target != entry.target || plan.cpu != entry.cpu {
        return Err(format!(
            "the plan is for {} ({}), the manifest says {} ({})",
            plan.target, plan.cpu, entry.target, entry.cpu
        ));
    }
    let graph_plan = plan.graph.as_ref().ok_or("the plan holds no graph")?;
    let side = |what: &str, specs: &[TensorSpec], ids: &[m4c_ir::ValueId]| {
        if specs.len() != ids.len() {
            return Err(format!(
                "the code has {} {what}s, the IR {}",
                specs.len(),
                ids.len()
            ));
        }
        for (s, &id) in specs.iter().zip(ids) {
            let v = graph.value(id);
            let same = s.name == v.name
                && s.dtype == v.ty.dtype.name()
                && v.ty.static_shape().as_deref() == Some(&s.shape[..]);
            if !same {
                return Err(format!(
                    "{what} `{}` is {}{:?} in the code but {} `{}` in the IR",
                    s.name, s.dtype, s.shape, v.ty, v.name
                ));
            }
        }
        Ok(())
    };
    side("input", &graph_plan.inputs, &graph.inputs)?;
    let inputs = graph_plan.inputs.len();
    let refs = graph_plan.steps.iter().flat_map(|s| match s {
        Step::Kernel { buffers, .. } => buffers.clone(),
        Step::Gemm { a, c, .. } => vec![*a, *c],
    });
    let specs = graph_plan.inputs.iter().chain(&graph_plan.outputs);
    if let Some(bad) = refs
        .chain(specs.map(|s| s.buf))
        .find(|b| matches!(b.region, Region::Input(i) if i >= inputs))
    {
        return Err(format!(
            "the plan refers to {:?}, the graph has {inputs} inputs",
            bad.region
        ));
    }
    side("output", &graph_plan.outputs, &graph.outputs)?;
    if !weights_len.is_multiple_of(4) {
        return Err(format!(
            "code-weights has {weights_len} bytes, not a whole number of f32"
        ));
    }
    for g in &plan.gemms {
        let end = (g.weights_offset as u64 + g.packed_b.len() as u64) * 4;
        if end > weights_len {
            return Err(format!(
                "kernel `{}` reads up to byte {end} of code-weights ({weights_len} bytes)",
                g.symbol
            ));
        }
    }
    Ok(())
}
