//! The optimiser's report: per phase, the rules fired, e-graph size and
//! time; for the graph, FLOPs, MACs, weight bytes and op counts before and
//! after; LoRA decisions; fusion groups; the memory plan.

use std::collections::BTreeMap;
use std::fmt;

use m4c_ir::{Graph, TensorType, ValueDef};

use m4c_plan::fusion::fusion_groups;
use m4c_plan::memory::{MemoryPlan, Scheduler, SharedRules};

use super::cost::{op_flops, op_macs, CostModel};
use super::lang::LITERAL_MAX_ELEMS;
use super::policy::Decision;

/// One equality-saturation phase over all regions.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PhaseReport {
    /// Applications of each rule, summed over regions.
    pub rules_fired: Vec<(String, usize)>,
    pub regions: Vec<RegionReport>,
    pub cse_merged: usize,
    pub constants_folded: usize,
    pub extracted_cost_ns: f64,
    /// The whole phase, stitching included.
    pub total_ms: f64,
}

/// One region's saturation run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RegionReport {
    /// Graph nodes in the region.
    pub nodes: usize,
    pub iterations: usize,
    pub stop_reason: String,
    pub egraph_nodes: usize,
    pub egraph_classes: usize,
    pub saturate_ms: f64,
    /// Load, saturation, extraction and rebuild.
    pub total_ms: f64,
}

impl PhaseReport {
    /// An empty report for these rules.
    pub fn new<'a>(rules: impl Iterator<Item = &'a str>) -> Self {
        PhaseReport {
            rules_fired: rules.map(|r| (r.to_string(), 0)).collect(),
            regions: vec![],
            cse_merged: 0,
            constants_folded: 0,
            extracted_cost_ns: 0.0,
            total_ms: 0.0,
        }
    }

    /// Adds `n` applications of `rule`.
    pub fn count(&mut self, rule: &str, n: usize) {
        if let Some(f) = self.rules_fired.iter_mut().find(|f| f.0 == rule) {
            f.1 += n;
        }
    }

    /// The largest region's e-graph (nodes, classes).
    pub fn largest_egraph(&self) -> (usize, usize) {
        self.regions
            .iter()
            .map(|r| (r.egraph_nodes, r.egraph_classes))
            .max()
            .unwrap_or((0, 0))
    }
}

/// Static figures of a graph.
#[derive(Clone, Debug, serde::Serialize, PartialEq)]
pub struct GraphFigures {
    pub nodes: usize,
    pub flops: u64,
    pub macs: u64,
    pub weight_bytes: usize,
    pub estimated_ns: f64,
    pub ops: BTreeMap<String, usize>,
}

impl GraphFigures {
    /// Measures `g` with `model`.
    pub fn of(g: &Graph, model: &dyn CostModel) -> GraphFigures {
        let mut f = GraphFigures {
            nodes: g.nodes.len(),
            flops: 0,
            macs: 0,
            weight_bytes: 0,
            estimated_ns: 0.0,
            ops: BTreeMap::new(),
        };
        for n in &g.nodes {
            let tys: Vec<&TensorType> = n.inputs.iter().map(|&i| &g.value(i).ty).collect();
            let out = &g.value(n.output).ty;
            f.flops += op_flops(&n.op, &tys, out);
            f.macs += op_macs(&n.op, &tys, out);
            f.estimated_ns += model.op_time_ns(&n.op, &tys, out);
            *f.ops.entry(n.op.name().to_string()).or_default() += 1;
        }
        f.weight_bytes = g
            .values
            .iter()
            .filter_map(|v| match &v.def {
                ValueDef::Const(t) if t.len() > LITERAL_MAX_ELEMS => {
                    Some(t.dtype.storage_bytes(t.len()))
                }
                _ => None,
            })
            .sum();
        f
    }
}

/// Everything `m4c opt` reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OptReport {
    pub target: String,
    pub phases: Vec<PhaseReport>,
    pub before: GraphFigures,
    pub after: GraphFigures,
    pub lora: Vec<Decision>,
    /// Elementwise fusion groups of two or more ops, and the ops in them:
    /// the groups the CPU backend emits as one kernel each.
    pub fusion_groups: usize,
    pub fused_ops: usize,
    /// Who scheduled the kernels the memory plan is of.
    pub memory_planned_by: String,
    /// The arena the optimised graph runs from (placements left out);
    /// `None` when there is none: see `memory_error`.
    pub memory: Option<MemoryPlan>,
    /// Why there is no memory plan.
    pub memory_error: Option<String>,
}

impl OptReport {
    /// Assembles the report of an optimisation of `before` into `after`;
    /// its memory plan is the shared planner's on `scheduler`'s kernels
    /// (a code generator's: the arena it allocates) or, without one, on
    /// the shared rules.
    pub fn new(
        before: &Graph,
        after: &Graph,
        phases: Vec<PhaseReport>,
        lora: Vec<Decision>,
        model: &dyn CostModel,
        scheduler: Option<&dyn Scheduler>,
    ) -> OptReport {
        let groups: Vec<Vec<usize>> = fusion_groups(after)
            .into_iter()
            .filter(|g| g.len() > 1)
            .collect();
        let scheduler = scheduler.unwrap_or(&SharedRules);
        let memory = scheduler
            .schedule(after)
            .and_then(|s| m4c_plan::memory::plan(after, &s).map_err(|e| e.to_string()));
        let (memory, memory_error) = match memory {
            Ok(mut m) => {
                m.placements.clear();
                (Some(m), None)
            }
            Err(e) => (None, Some(e)),
        };
        OptReport {
            target: model.describe(),
            phases,
            before: GraphFigures::of(before, model),
            after: GraphFigures::of(after, model),
            lora,
            fusion_groups: groups.len(),
            fused_ops: groups.iter().map(Vec::len).sum(),
            memory_planned_by: scheduler.name(),
            memory,
            memory_error,
        }
    }

    /// Total count of a rule's applications over all phases.
    pub fn fired(&self, rule: &str) -> usize {
        self.phases
            .iter()
            .flat_map(|p| &p.rules_fired)
            .filter(|(n, _)| n == rule)
            .map(|(_, c)| c)
            .sum()
    }
}

impl fmt::Display for OptReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "target: {}", self.target)?;
        for (i, p) in self.phases.iter().enumerate() {
            let fired: Vec<String> = p
                .rules_fired
                .iter()
                .map(|(n, c)| format!("{n}={c}"))
                .collect();
            let (nodes, classes) = p.largest_egraph();
            let iterations = p.regions.iter().map(|r| r.iterations).max().unwrap_or(0);
            let saturated = p
                .regions
                .iter()
                .filter(|r| r.stop_reason == "Some(Saturated)")
                .count();
            let saturate_ms: f64 = p.regions.iter().map(|r| r.saturate_ms).sum();
            writeln!(
                f,
                "phase {}: {} region(s), {} saturated, at most {} iterations, largest e-graph {} nodes / {} classes, {} CSE merges, {} constants folded, {:.1} ms (saturation {:.1} ms)",
                i + 1,
                p.regions.len(),
                saturated,
                iterations,
                nodes,
                classes,
                p.cse_merged,
                p.constants_folded,
                p.total_ms,
                saturate_ms
            )?;
            writeln!(f, "  rules fired: {}", fired.join(", "))?;
        }
        let (b, a) = (&self.before, &self.after);
        writeln!(f, "nodes: {} -> {}", b.nodes, a.nodes)?;
        writeln!(
            f,
            "FLOPs: {} -> {} (MACs {} -> {})",
            b.flops, a.flops, b.macs, a.macs
        )?;
        writeln!(f, "weight bytes: {} -> {}", b.weight_bytes, a.weight_bytes)?;
        writeln!(
            f,
            "estimated time: {:.1} us -> {:.1} us",
            b.estimated_ns / 1e3,
            a.estimated_ns / 1e3
        )?;
        for d in &self.lora {
            writeln!(
                f,
                "lora {}: {} ({})",
                d.module,
                if d.folded { "folded" } else { "kept" },
                d.why
            )?;
        }
        writeln!(
            f,
            "elementwise fusion groups: {} covering {} ops",
            self.fusion_groups, self.fused_ops
        )?;
        match (&self.memory, &self.memory_error) {
            (Some(m), _) => write!(
                f,
                "memory plan ({}): arena {} B (peak live {} B, no reuse {} B; buffers include {} B of backend scratch)",
                self.memory_planned_by,
                m.arena_bytes,
                m.peak_live_bytes,
                m.naive_bytes,
                m.scratch_bytes
            ),
            (None, error) => write!(
                f,
                "memory plan ({}): none ({})",
                self.memory_planned_by,
                error.as_deref().unwrap_or("not planned")
            ),
        }
    }
}
