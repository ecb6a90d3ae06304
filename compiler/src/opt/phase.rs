//! One equality-saturation phase: per region, load, run the rules under
//! limits, extract, rebuild; then stitch the regions together.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use egg::{Rewrite as EggRewrite, Runner, SimpleScheduler};
use m4c_ir::{Graph, TensorType};

use super::convert::{load, rebuild, Loaded, Provenance};
use super::extract::extract;
use super::lang::{ENode, OptAnalysis};
use super::region::{split, Stitcher};
use super::report::{PhaseReport, RegionReport};
use super::rule::{EggRule, Rule};
use super::rules::{activation, fusion, layout, lora, norm, quant, softmax};
use super::{CostModel, Limits, LoraPolicy, OptError};

/// Phase 1: LoRA fold (unless the policy keeps), layout, recognition,
/// requantisation of dequantised values.
pub fn rewrite_rules(policy: LoraPolicy) -> Vec<Arc<dyn Rule>> {
    let mut rules: Vec<Arc<dyn Rule>> = vec![
        Arc::new(norm::RmsNorm),
        Arc::new(norm::LayerNorm),
        Arc::new(norm::NormBias),
        Arc::new(softmax::Softmax),
        Arc::new(activation::Gelu { tanh: false }),
        Arc::new(activation::Gelu { tanh: true }),
        Arc::new(activation::Sigmoid),
        Arc::new(activation::Silu),
        Arc::new(layout::TransposeIntoMatMul),
        Arc::new(layout::ComposeTransposes),
        Arc::new(layout::ComposeReshapes),
        Arc::new(quant::RequantiseDequantised),
        Arc::new(quant::QuantiseBeforeMoving),
    ];
    if policy != LoraPolicy::Keep {
        rules.push(Arc::new(lora::LoraFold));
    }
    rules
}

/// Phase 2: horizontal fusion on the graph phase 1 chose.
pub fn fusion_rules() -> Vec<Arc<dyn Rule>> {
    vec![Arc::new(fusion::HorizontalMatMul)]
}

/// Runs one phase on `g`, region by region.
pub fn run(
    g: &Graph,
    adapter: &HashSet<String>,
    mixed: &mut HashSet<String>,
    rules: Vec<Arc<dyn Rule>>,
    limits: &Limits,
    model: &dyn CostModel,
    penalty: Option<&dyn Fn(&TensorType) -> f64>,
) -> Result<(Graph, PhaseReport), OptError> {
    let start = Instant::now();
    let rewrites: Vec<EggRewrite<_, _>> = rules
        .iter()
        .map(|r| {
            let e = EggRule(r.clone());
            EggRewrite::new(r.name(), e.clone(), e).map_err(OptError::Internal)
        })
        .collect::<Result<_, _>>()?;
    let mut report = PhaseReport::new(rules.iter().map(|r| r.name()));
    let mut stitcher = Stitcher::new(g);
    for range in split(g, limits.region_nodes) {
        let cut = stitcher.cut(range);
        let ctx = Region {
            adapter,
            rewrites: &rewrites,
            limits,
            model,
            penalty,
        };
        let done = ctx.run(&cut.graph, mixed, &mut report)?;
        stitcher.paste(&cut, &done)?;
    }
    let graph = stitcher.finish()?;
    report.total_ms = start.elapsed().as_secs_f64() * 1e3;
    Ok((graph, report))
}

/// What every region of a phase shares.
struct Region<'a> {
    adapter: &'a HashSet<String>,
    rewrites: &'a [EggRewrite<ENode, OptAnalysis>],
    limits: &'a Limits,
    model: &'a dyn CostModel,
    penalty: Option<&'a dyn Fn(&TensorType) -> f64>,
}

impl Region<'_> {
    /// Loads, saturates, extracts and rebuilds one region.
    fn run(
        &self,
        g: &Graph,
        mixed: &mut HashSet<String>,
        report: &mut PhaseReport,
    ) -> Result<Graph, OptError> {
        let start = Instant::now();
        let loaded = load(
            g,
            &Provenance {
                adapter: self.adapter,
                mixed,
            },
        );
        let limits = self.limits;
        let runner = Runner::default()
            .with_scheduler(SimpleScheduler)
            .with_node_limit(limits.nodes)
            .with_iter_limit(limits.iterations)
            .with_time_limit(limits.time)
            .with_egraph(loaded.eg)
            .run(self.rewrites);
        for it in &runner.iterations {
            for (name, n) in &it.applied {
                report.count(name.as_str(), *n);
            }
        }
        let saturate_ms = start.elapsed().as_secs_f64() * 1e3;
        let loaded = Loaded {
            eg: runner.egraph,
            class_of: loaded.class_of,
            cse_merged: loaded.cse_merged,
        };
        let roots: Vec<_> = g
            .outputs
            .iter()
            .map(|o| loaded.class_of[o.index()])
            .collect();
        let ex = extract(&loaded.eg, &roots, self.model, self.penalty);
        let rebuilt = rebuild(g, &loaded, &ex)?;
        mixed.extend(rebuilt.mixed.iter().cloned());
        report.cse_merged += loaded.cse_merged;
        report.constants_folded += rebuilt.folded;
        report.extracted_cost_ns += ex.cost_ns;
        report.regions.push(RegionReport {
            nodes: g.nodes.len(),
            iterations: runner.iterations.len(),
            stop_reason: format!("{:?}", runner.stop_reason),
            egraph_nodes: loaded.eg.total_size(),
            egraph_classes: loaded.eg.number_of_classes(),
            saturate_ms,
            total_ms: start.elapsed().as_secs_f64() * 1e3,
        });
        Ok(rebuilt.graph)
    }
}
