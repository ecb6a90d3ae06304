//! The optimiser: an e-graph pass (egg) with LoRA fold/keep, layout
//! canonicalisation, composite recognition and horizontal fusion, a
//! roofline cost model with a DAG-aware extractor, the LoRA policy, and
//! classic passes (CSE by hash-consing, elementwise fusion groups, static
//! memory planning).
//!
//! ```no_run
//! use m4c_compiler::opt::{apply_adapters, LoraPolicy, OptOptions, Roofline};
//! # let graph = m4c_ir::Graph::new("g");
//! let opts = OptOptions { lora: LoraPolicy::Auto, ..Default::default() };
//! let (g, report) = apply_adapters(&graph, &["adapter_dir".into()], &opts, &Roofline::cpu())?;
//! println!("{report}");
//! # Ok::<(), m4c_compiler::opt::OptError>(())
//! ```

pub mod convert;
pub mod cost;
mod error;
pub mod extract;
pub mod lang;
mod phase;
pub mod policy;
pub mod region;
pub mod report;
pub mod rule;
pub mod rules;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use m4c_ir::Graph;

use crate::adapter::{attach, detect, LoraSite, PeftAdapter};
pub use cost::{CostModel, Roofline};
pub use error::OptError;
/// What schedules kernels for the report's memory plan ([`OptOptions::scheduler`]).
pub use m4c_plan::memory::Scheduler;
pub use policy::LoraPolicy;
pub use report::OptReport;

/// Limits of each equality-saturation run (all three always apply, per
/// region), and the region size.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Limits {
    pub nodes: usize,
    pub iterations: usize,
    pub time: Duration,
    /// Graph nodes per region (see [`region`]).
    pub region_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            nodes: 100_000,
            iterations: 16,
            time: Duration::from_secs(10),
            region_nodes: 128,
        }
    }
}

/// What the optimiser does.
#[derive(Clone, Debug, Default)]
pub struct OptOptions {
    pub lora: LoraPolicy,
    pub limits: Limits,
    /// Keep every MatMul a LoRA adapter can attach to by its module name:
    /// no horizontal fusion (which concatenates q/k/v projections). A
    /// firmware's modules need it, since apps adapt them after the build.
    pub keep_adapter_sites: bool,
    /// Who schedules kernels for the report's memory plan: the target's
    /// code generator (its arena is then the one it allocates), or `None`
    /// for the shared rules alone.
    pub scheduler: Option<std::sync::Arc<dyn m4c_plan::memory::Scheduler>>,
}

/// Attaches the PEFT adapters in `dirs` (in order) to `g`, then optimises
/// with the options' LoRA policy. With no directories, LoRA branches
/// already inside the graph are the ones the policy decides on.
pub fn apply_adapters(
    g: &Graph,
    dirs: &[PathBuf],
    opts: &OptOptions,
    model: &dyn CostModel,
) -> Result<(Graph, OptReport), OptError> {
    let mut graph = g.clone();
    for dir in dirs {
        let ad = PeftAdapter::load(dir)?;
        graph = attach(&graph, &ad)?.0;
    }
    optimise(&graph, opts, model)
}

/// Optimises `g`: phase 1 (LoRA fold per policy, layout, recognition),
/// phase 2 (horizontal fusion), each saturated under limits and extracted
/// by cost; then reports fusion groups and the memory plan.
pub fn optimise(
    g: &Graph,
    opts: &OptOptions,
    model: &dyn CostModel,
) -> Result<(Graph, OptReport), OptError> {
    let sites: Vec<LoraSite> = detect(g);
    let adapter: HashSet<String> = sites
        .iter()
        .flat_map(|s| [s.a.clone(), s.b.clone()])
        .collect();
    let mut mixed = HashSet::new();
    let penalty_fn = |ty: &m4c_ir::TensorType| model.private_weight_ns(ty.dtype);
    let penalty: Option<&dyn Fn(&m4c_ir::TensorType) -> f64> = match opts.lora {
        LoraPolicy::Auto => Some(&penalty_fn),
        LoraPolicy::Fold | LoraPolicy::Keep => None,
    };
    let run = |graph: &Graph, rules, mixed: &mut HashSet<String>| {
        phase::run(graph, &adapter, mixed, rules, &opts.limits, model, penalty)
    };
    let (rewritten, first) = run(g, phase::rewrite_rules(opts.lora), &mut mixed)?;
    // Decisions are read before fusion, which may concatenate factors.
    let decisions = policy::decide(g, &rewritten, &sites, opts.lora, model);
    let (graph, phases) = if opts.keep_adapter_sites {
        (rewritten, vec![first])
    } else {
        let (graph, second) = run(&rewritten, phase::fusion_rules(), &mut mixed)?;
        (graph, vec![first, second])
    };
    let report = OptReport::new(
        g,
        &graph,
        phases,
        decisions,
        model,
        opts.scheduler.as_deref(),
    );
    Ok((graph, report))
}
