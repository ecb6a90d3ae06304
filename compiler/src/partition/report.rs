//! Fig. 2 figures of a partition, as a Markdown table and JSON.

use std::collections::HashSet;

use m4c_ir::op::bytes;
use m4c_ir::{Graph, ValueDef};

use super::{partition, OpSupport};

/// How much of a model the accelerator covers (Fig. 2(a)'s categories).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Full,
    Partial,
    Unsupported,
    /// The model did not load or lower: nothing was partitioned.
    FailsToConvert,
}

/// The partition figures of one model.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PartitionReport {
    pub model: String,
    pub target: String,
    pub status: Status,
    pub subgraphs: usize,
    pub ops: usize,
    pub ops_on_accelerator: usize,
    pub macs: u64,
    pub macs_on_accelerator: u64,
    /// Bytes of values produced on one side and consumed on the other
    /// (each value counted once per consuming side), graph inputs and
    /// outputs included when the accelerator reads or writes them.
    pub boundary_bytes: u64,
    /// Op types that fell back to the CPU, with counts.
    pub cpu_ops: Vec<(String, usize)>,
    /// Why the model could not be converted ([`Status::FailsToConvert`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl PartitionReport {
    /// Partitions `g` for `support` and measures the result.
    pub fn of(model: &str, g: &Graph, support: &dyn OpSupport) -> PartitionReport {
        let p = partition(g, support);
        let side = |v: m4c_ir::ValueId| match g.value(v).def {
            ValueDef::Node(i) => Some(p.placement[i].is_some()),
            ValueDef::Input => Some(false),
            ValueDef::Const(_) => None,
        };
        let mut crossings: HashSet<(u32, bool)> = HashSet::new();
        let (mut macs, mut macs_acc, mut on_acc) = (0, 0, 0);
        let mut cpu_ops: std::collections::BTreeMap<String, usize> = Default::default();
        for (i, node) in g.nodes.iter().enumerate() {
            let m = super::node_macs(g, node);
            macs += m;
            let here = p.placement[i].is_some();
            if here {
                macs_acc += m;
                on_acc += 1;
            } else {
                *cpu_ops.entry(node.op.name().to_string()).or_default() += 1;
            }
            for &v in &node.inputs {
                if side(v).is_some_and(|s| s != here) {
                    crossings.insert((v.0, here));
                }
            }
        }
        for &o in &g.outputs {
            if side(o) == Some(true) {
                crossings.insert((o.0, false));
            }
        }
        let boundary_bytes = crossings
            .iter()
            .map(|(v, _)| bytes(&g.values[*v as usize].ty))
            .sum();
        let status = match on_acc {
            0 => Status::Unsupported,
            k if k == g.nodes.len() => Status::Full,
            _ => Status::Partial,
        };
        PartitionReport {
            model: model.to_string(),
            target: support.name().to_string(),
            status,
            subgraphs: p.subgraphs,
            ops: g.nodes.len(),
            ops_on_accelerator: on_acc,
            macs,
            macs_on_accelerator: macs_acc,
            boundary_bytes,
            cpu_ops: cpu_ops.into_iter().collect(),
            error: None,
        }
    }

    /// The row of a model that could not be loaded or lowered: a table of
    /// many models reports it with its reason instead of stopping.
    pub fn failed(model: &str, target: &str, error: String) -> PartitionReport {
        PartitionReport {
            model: model.to_string(),
            target: target.to_string(),
            status: Status::FailsToConvert,
            subgraphs: 0,
            ops: 0,
            ops_on_accelerator: 0,
            macs: 0,
            macs_on_accelerator: 0,
            boundary_bytes: 0,
            cpu_ops: vec![],
            error: Some(error),
        }
    }
}

/// The Fig. 2 table of several models, headed by the target (and its
/// machine configuration) they were partitioned for.
pub fn markdown_table(reports: &[PartitionReport]) -> String {
    let mut s = String::new();
    if let Some(r) = reports.first() {
        s += &format!("Target: {}\n\n", r.target);
    }
    s += "| model | status | sub-graphs | ops on accel | MACs on accel | boundary bytes | CPU ops |\n|---|---|---|---|---|---|---|\n";
    for r in reports {
        if let Some(error) = &r.error {
            s += &format!(
                "| {} | FailsToConvert | - | - | - | - | {} |\n",
                r.model,
                error.replace('|', "\\|")
            );
            continue;
        }
        let pct = |a: u64, b: u64| {
            if b == 0 {
                100.0
            } else {
                100.0 * a as f64 / b as f64
            }
        };
        let cpu: Vec<String> = r.cpu_ops.iter().map(|(k, n)| format!("{k}×{n}")).collect();
        s += &format!(
            "| {} | {:?} | {} | {}/{} | {:.1}% | {} | {} |\n",
            r.model,
            r.status,
            r.subgraphs,
            r.ops_on_accelerator,
            r.ops,
            pct(r.macs_on_accelerator, r.macs),
            r.boundary_bytes,
            cpu.join(" ")
        );
    }
    let full = reports
        .iter()
        .filter(|r| r.status == super::Status::Full)
        .count();
    let partial = reports
        .iter()
        .filter(|r| r.status == super::Status::Partial)
        .count();
    let failed = reports
        .iter()
        .filter(|r| r.status == super::Status::FailsToConvert)
        .count();
    s += &format!(
        "\n{} models: {full} fully supported, {partial} partial, {} unsupported, {failed} failed to convert\n",
        reports.len(),
        reports.len() - full - partial - failed
    );
    s
}
