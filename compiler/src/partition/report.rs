//! Fig. 2 figures of a partition (the paper's (a) coverage category,
//! (b) sub-graphs and (c) boundary and time cost) as a Markdown table,
//! CSV and JSON. Times come from the caller: the NPU's are simulated, the
//! boundary conversions estimated, the CPU's measured ([`Times`]).

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use m4c_ir::op::bytes;
use m4c_ir::{Graph, ValueDef};

use super::{partition, OpSupport};
use crate::backend::Refusal;

/// How much of a model the accelerator covers (Fig. 2(a)'s categories).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Every node on the accelerator.
    Full,
    /// Some nodes on the accelerator, some on the CPU.
    Partial,
    /// No node on the accelerator.
    CpuOnly,
    /// The model did not load, lower or compile: nothing was partitioned.
    FailsToConvert,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Full => "Full",
            Status::Partial => "Partial",
            Status::CpuOnly => "CPU-only",
            Status::FailsToConvert => "Fails-to-convert",
        })
    }
}

/// Fig. 2(c)'s time of one model: accelerator plus fallback against the
/// CPU alone. Each figure says how it was obtained.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Times {
    /// Accelerator cycles (simulated, deterministic).
    pub accelerator_cycles: u64,
    /// Those cycles at the machine's clock, ms (simulated).
    pub accelerator_ms: f64,
    /// The quantise/dequantise conversions at the boundary, ms
    /// (estimated from the machine's rates, not simulated).
    pub boundary_ms: f64,
    /// The CPU-fallback parts, ms (host wall time, measured: the median
    /// of `runs` runs of each part).
    pub fallback_ms: f64,
    /// Fallback parts that ran on the reference interpreter, not as
    /// compiled CPU code (their time is the interpreter's).
    pub fallback_interpreted: usize,
    /// The whole model as compiled CPU code, ms (host wall time,
    /// measured: the median of `runs` runs); `None` when the CPU backend
    /// could not compile or run it (`cpu_only_error`).
    pub cpu_only_ms: Option<f64>,
    /// Why there is no CPU-only time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_only_error: Option<String>,
    /// Timed runs per measured figure.
    pub runs: usize,
    /// Where the inputs came from (`FILE.npz`, or `synthetic`).
    pub inputs: String,
}

impl Times {
    /// Accelerator, boundary and fallback together, ms.
    pub fn total_ms(&self) -> f64 {
        self.accelerator_ms + self.boundary_ms + self.fallback_ms
    }

    /// CPU-only time over [`Self::total_ms`].
    pub fn speedup(&self) -> Option<f64> {
        let total = self.total_ms();
        self.cpu_only_ms
            .filter(|_| total > 0.0)
            .map(|cpu| cpu / total)
    }
}

/// The partition figures of one model.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PartitionReport {
    /// The model's name (file stem).
    pub model: String,
    /// The target as named (`npu:edge-small`, a backend name).
    pub target: String,
    /// Fig. 2(a)'s category.
    pub status: Status,
    /// Accelerator sub-graphs.
    pub subgraphs: usize,
    /// CPU-fallback sub-graphs.
    pub fallback_subgraphs: usize,
    /// Nodes of the (optimised) graph.
    pub ops: usize,
    /// Of those, on the accelerator.
    pub ops_on_accelerator: usize,
    /// Multiply-accumulates of the graph.
    pub macs: u64,
    /// Of those, on the accelerator.
    pub macs_on_accelerator: u64,
    /// Bytes of values produced on one side and consumed on the other
    /// (each value counted once per consuming side), graph inputs and
    /// outputs included when the accelerator reads or writes them.
    pub boundary_bytes: u64,
    /// Op types that fell back to the CPU, with counts.
    pub cpu_ops: Vec<(String, usize)>,
    /// Every node on the CPU and why (`constraint: detail` for the NPU).
    pub fallback: Vec<Refusal>,
    /// Fig. 2(c)'s times, when the target measures them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<Times>,
    /// Why the model could not be converted ([`Status::FailsToConvert`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl PartitionReport {
    /// Partitions `g` for `support` (the convex partitioner) and measures
    /// the result.
    pub fn of(model: &str, g: &Graph, support: &dyn OpSupport) -> PartitionReport {
        let p = partition(g, support);
        let on: Vec<bool> = p.placement.iter().map(Option::is_some).collect();
        let cpu = partition(g, &Inverse(support)).subgraphs;
        let mut r = PartitionReport::placed(model, support.name(), g, &on, p.subgraphs, cpu);
        r.fallback = g
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| !on[*i])
            .map(|(i, node)| Refusal {
                node: i,
                value: g.value(node.output).name.clone(),
                op: node.op.kind().name(),
                reason: support
                    .refusal(g, node)
                    .unwrap_or_else(|| "not supported".into()),
            })
            .collect();
        r
    }

    /// The figures of `g` placed by `on_accelerator` (per node) into
    /// `subgraphs` accelerator and `fallback_subgraphs` CPU sub-graphs
    /// (by a code generator's own split); `fallback` stays empty for the
    /// caller to fill.
    pub fn placed(
        model: &str,
        target: &str,
        g: &Graph,
        on_accelerator: &[bool],
        subgraphs: usize,
        fallback_subgraphs: usize,
    ) -> PartitionReport {
        let here = |i: usize| on_accelerator.get(i).copied().unwrap_or(false);
        let side = |v: m4c_ir::ValueId| match g.value(v).def {
            ValueDef::Node(i) => Some(here(i)),
            ValueDef::Input => Some(false),
            ValueDef::Const(_) => None,
        };
        let mut crossings: HashSet<(u32, bool)> = HashSet::new();
        let (mut macs, mut macs_acc, mut on_acc) = (0, 0, 0);
        let mut cpu_ops: BTreeMap<String, usize> = BTreeMap::new();
        for (i, node) in g.nodes.iter().enumerate() {
            let m = super::node_macs(g, node);
            macs += m;
            if here(i) {
                macs_acc += m;
                on_acc += 1;
            } else {
                *cpu_ops.entry(node.op.name().to_string()).or_default() += 1;
            }
            for &v in &node.inputs {
                if side(v).is_some_and(|s| s != here(i)) {
                    crossings.insert((v.0, here(i)));
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
            0 => Status::CpuOnly,
            k if k == g.nodes.len() => Status::Full,
            _ => Status::Partial,
        };
        PartitionReport {
            model: model.to_string(),
            target: target.to_string(),
            status,
            subgraphs,
            fallback_subgraphs,
            ops: g.nodes.len(),
            ops_on_accelerator: on_acc,
            macs,
            macs_on_accelerator: macs_acc,
            boundary_bytes,
            cpu_ops: cpu_ops.into_iter().collect(),
            fallback: vec![],
            time: None,
            error: None,
        }
    }

    /// The row of a model that could not be loaded, lowered or compiled:
    /// a table of many models reports it with its reason instead of
    /// stopping.
    pub fn failed(model: &str, target: &str, error: String) -> PartitionReport {
        PartitionReport {
            model: model.to_string(),
            target: target.to_string(),
            status: Status::FailsToConvert,
            subgraphs: 0,
            fallback_subgraphs: 0,
            ops: 0,
            ops_on_accelerator: 0,
            macs: 0,
            macs_on_accelerator: 0,
            boundary_bytes: 0,
            cpu_ops: vec![],
            fallback: vec![],
            time: None,
            error: Some(error),
        }
    }

    /// The MACs on the accelerator, percent.
    fn mac_share(&self) -> f64 {
        if self.macs == 0 {
            100.0
        } else {
            100.0 * self.macs_on_accelerator as f64 / self.macs as f64
        }
    }

    /// The CPU op types, `Op×n` separated by spaces.
    fn cpu_ops_text(&self) -> String {
        let ops: Vec<String> = self
            .cpu_ops
            .iter()
            .map(|(k, n)| format!("{k}×{n}"))
            .collect();
        ops.join(" ")
    }
}

/// The support of everything `0` does not support (the CPU's side).
struct Inverse<'a>(&'a dyn OpSupport);

impl OpSupport for Inverse<'_> {
    fn name(&self) -> &str {
        "cpu"
    }
    fn supports(&self, g: &Graph, node: &m4c_ir::Node) -> bool {
        !self.0.supports(g, node)
    }
}

/// The columns of the table; the time columns only when a row has times.
fn columns(timed: bool) -> Vec<&'static str> {
    let mut c = vec![
        "model",
        "status",
        "accel sub-graphs",
        "CPU sub-graphs",
        "ops on accel",
        "MACs on accel",
        "boundary B",
    ];
    if timed {
        c.extend([
            "accel cycles (sim)",
            "accel ms (sim)",
            "boundary ms (est)",
            "CPU fallback ms (host)",
            "accel+CPU ms",
            "CPU-only ms (host)",
            "speed-up",
        ]);
    }
    c.push("CPU ops / reason");
    c
}

/// One row's cells, as [`columns`].
fn cells(r: &PartitionReport, timed: bool) -> Vec<String> {
    let width = columns(timed).len();
    if let Some(error) = &r.error {
        let mut row = vec![r.model.clone(), r.status.to_string()];
        row.resize(width - 1, "-".into());
        row.push(error.clone());
        return row;
    }
    let mut row = vec![
        r.model.clone(),
        r.status.to_string(),
        r.subgraphs.to_string(),
        r.fallback_subgraphs.to_string(),
        format!("{}/{}", r.ops_on_accelerator, r.ops),
        format!("{:.1}%", r.mac_share()),
        r.boundary_bytes.to_string(),
    ];
    if timed {
        match &r.time {
            Some(t) => row.extend([
                t.accelerator_cycles.to_string(),
                format!("{:.4}", t.accelerator_ms),
                format!("{:.4}", t.boundary_ms),
                format!("{:.4}", t.fallback_ms),
                format!("{:.4}", t.total_ms()),
                t.cpu_only_ms.map_or("-".into(), |ms| format!("{ms:.4}")),
                t.speedup().map_or("-".into(), |x| format!("{x:.2}×")),
            ]),
            None => row.extend(std::iter::repeat_n("-".to_string(), 7)),
        }
    }
    row.push(r.cpu_ops_text());
    row
}

/// The Fig. 2 table of several models, headed by the target they were
/// partitioned for (`header`: the target and how times were obtained).
pub fn markdown_table(header: &str, reports: &[PartitionReport]) -> String {
    let timed = reports.iter().any(|r| r.time.is_some());
    let mut s = format!("{header}\n\n");
    let cols = columns(timed);
    let _ = writeln!(s, "| {} |", cols.join(" | "));
    let _ = writeln!(s, "|{}", "---|".repeat(cols.len()));
    for r in reports {
        let row: Vec<String> = cells(r, timed)
            .into_iter()
            .map(|c| c.replace('|', "\\|"))
            .collect();
        let _ = writeln!(s, "| {} |", row.join(" | "));
    }
    let count = |st: Status| reports.iter().filter(|r| r.status == st).count();
    let _ = writeln!(
        s,
        "\n{} models: {} full, {} partial, {} CPU-only, {} failed to convert",
        reports.len(),
        count(Status::Full),
        count(Status::Partial),
        count(Status::CpuOnly),
        count(Status::FailsToConvert)
    );
    s
}

/// The table as CSV (RFC 4180 quoting), the same columns as
/// [`markdown_table`] plus the target.
pub fn csv(reports: &[PartitionReport]) -> String {
    let timed = reports.iter().any(|r| r.time.is_some());
    let quote = |c: &str| {
        if c.contains([',', '"', '\n']) {
            format!("\"{}\"", c.replace('"', "\"\""))
        } else {
            c.to_string()
        }
    };
    let mut s = String::new();
    let mut header = vec!["target"];
    header.extend(columns(timed));
    let _ = writeln!(s, "{}", header.join(","));
    for r in reports {
        let mut row = vec![quote(&r.target)];
        row.extend(cells(r, timed).iter().map(|c| quote(c)));
        let _ = writeln!(s, "{}", row.join(","));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_rows_keep_their_reason_and_the_columns() {
        let mut ok = PartitionReport::failed("good", "npu:edge-small", String::new());
        ok.error = None;
        ok.status = Status::Full;
        ok.time = Some(Times {
            accelerator_ms: 1.0,
            fallback_ms: 1.0,
            cpu_only_ms: Some(4.0),
            ..Times::default()
        });
        let bad = PartitionReport::failed("bad", "npu:edge-small", "a | b, \"c\"".into());
        let table = markdown_table("Target: npu:edge-small", &[ok.clone(), bad.clone()]);
        let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| ")).collect();
        let bars = |l: &str| l.matches(" | ").count();
        assert_eq!(rows.len(), 3, "{table}");
        assert!(rows.iter().all(|l| bars(l) == bars(rows[0])), "{table}");
        assert!(rows[1].contains("2.00×"), "{table}");
        assert!(rows[2].contains("Fails-to-convert") && rows[2].contains("a \\| b"));
        let csv = csv(&[ok, bad]);
        assert!(
            csv.lines()
                .nth(2)
                .unwrap()
                .ends_with("\"a | b, \"\"c\"\"\""),
            "{csv}"
        );
    }
}
