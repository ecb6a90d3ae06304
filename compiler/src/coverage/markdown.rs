//! The coverage report as Markdown (`coverage.md`, and stdout by default).

use std::fmt::Write;

use super::analysis::{CoverageReport, GroupReport};
use super::census::{Lowering, Outcome};

/// Renders the whole report: summary, overlap, growth, frequency, lowering, IR ops.
pub fn render_markdown(r: &CoverageReport) -> String {
    let mut s = String::new();
    let read = r
        .models
        .iter()
        .filter(|m| matches!(m.outcome, Outcome::Read(_)))
        .count();
    let _ = writeln!(s, "# Operator coverage\n");
    let _ = writeln!(
        s,
        "{} model(s) in {} group(s), {read} read. Op types are ONNX `op_type`s (prefixed by their domain outside the default one), \
         counted over the main graph and every subgraph (`If`/`Loop`/`Scan`). Lowering binds unbound symbolic dimensions to 1. \
         Unreadable models are listed but left out of every statistic.\n",
        r.models.len(),
        r.groups.len()
    );
    summary(&mut s, r);
    overlap(&mut s, r);
    growth(&mut s, &r.groups);
    for g in &r.groups {
        frequency(&mut s, g);
    }
    models(&mut s, r);
    blockers(&mut s, &r.groups);
    backends(&mut s, &r.groups);
    s
}

/// Which backends compile the fully lowered models, by node and by MAC.
fn backends(s: &mut String, groups: &[GroupReport]) {
    if groups.iter().all(|g| g.backends.is_empty()) {
        return;
    }
    let _ = writeln!(
        s,
        "## Backend support
"
    );
    let _ = writeln!(
        s,
        "Of the models that lower fully: IR nodes and multiply-accumulates each backend compiles \
         (unoptimised graphs, symbolic dimensions bound to 1); `npu:*` is the NPU's op set.\n"
    );
    let _ = writeln!(
        s,
        "| group | backend | whole models | nodes | MACs | refused IR ops |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---|");
    let pct = |a: u64, b: u64| {
        if b == 0 {
            100.0
        } else {
            100.0 * a as f64 / b as f64
        }
    };
    for g in groups {
        for b in &g.backends {
            let refused: Vec<String> = b
                .refused
                .iter()
                .map(|(op, n)| format!("{op}×{n}"))
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {}/{} | {:.1}% | {:.1}% | {} |",
                g.name,
                b.target,
                b.models_whole,
                b.models,
                pct(b.nodes_supported as u64, b.nodes as u64),
                pct(b.macs_supported, b.macs),
                refused.join(" ")
            );
        }
    }
    let _ = writeln!(s);
}

fn summary(s: &mut String, r: &CoverageReport) {
    let _ = writeln!(s, "## Summary\n");
    let _ = writeln!(s, "| group | models | read | distinct ONNX op types | used by every model | used by ≥ half | lower fully | blocked | failed | distinct IR ops |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for g in &r.groups {
        let every = g
            .frequency
            .iter()
            .filter(|u| u.models == g.models_read)
            .count();
        let half = g
            .frequency
            .iter()
            .filter(|u| 2 * u.models >= g.models_read)
            .count();
        let l = &g.lowering;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {every} | {half} | {} | {} | {} | {} |",
            g.name,
            g.models.len(),
            g.models_read,
            g.op_types.len(),
            l.full,
            l.blocked,
            l.failed,
            g.ir_ops.len()
        );
    }
    let _ = writeln!(s);
}

fn overlap(s: &mut String, r: &CoverageReport) {
    let o = &r.overlap;
    let _ = writeln!(s, "## Op types across groups\n");
    let _ = writeln!(
        s,
        "- union of all groups ({}): {}",
        o.union.len(),
        list(&o.union)
    );
    let _ = writeln!(
        s,
        "- in every group ({}): {}",
        o.intersection.len(),
        list(&o.intersection)
    );
    for u in &o.unique {
        let _ = writeln!(
            s,
            "- only in {} ({}): {}",
            u.group,
            u.op_types.len(),
            list(&u.op_types)
        );
    }
    let _ = writeln!(s);
}

fn growth(s: &mut String, groups: &[GroupReport]) {
    let _ = writeln!(s, "## Growth of distinct op types (Fig. 14a)\n");
    let _ = writeln!(s, "Distinct ONNX op types after the first k readable models of each group, in the order given.\n");
    let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    let _ = writeln!(s, "| k | {} |", names.join(" | "));
    let _ = writeln!(s, "|---:|{}", "---:|".repeat(groups.len()));
    let rows = groups.iter().map(|g| g.growth.len()).max().unwrap_or(0);
    for k in 0..rows {
        let cells: Vec<String> = groups
            .iter()
            .map(|g| g.growth.get(k).map(|n| n.to_string()).unwrap_or_default())
            .collect();
        let _ = writeln!(s, "| {} | {} |", k + 1, cells.join(" | "));
    }
    let _ = writeln!(s);
}

fn frequency(s: &mut String, g: &GroupReport) {
    let _ = writeln!(s, "## Op usage frequency in {} (Fig. 14b)\n", g.name);
    let _ = writeln!(s, "| op type | models | share |");
    let _ = writeln!(s, "|---|---:|---:|");
    for u in &g.frequency {
        let _ = writeln!(
            s,
            "| {} | {}/{} | {:.0}% |",
            u.op_type,
            u.models,
            g.models_read,
            100.0 * u.fraction
        );
    }
    let _ = writeln!(s);
}

fn models(s: &mut String, r: &CoverageReport) {
    let _ = writeln!(s, "## Models\n");
    let _ = writeln!(
        s,
        "| model | groups | opset | nodes | op types | lowering |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---|");
    for m in &r.models {
        let groups: Vec<&str> = r
            .groups
            .iter()
            .filter(|g| g.models.contains(&m.name))
            .map(|g| g.name.as_str())
            .collect();
        let groups = groups.join(", ");
        match &m.outcome {
            Outcome::Unreadable { error } => {
                let _ = writeln!(
                    s,
                    "| {} | {groups} |  |  |  | unreadable: {} |",
                    m.name,
                    cell(error)
                );
            }
            Outcome::Read(ops) => {
                let lowering = match &ops.lowering {
                    Lowering::Full { ir_ops, .. } => format!(
                        "full ({} IR ops, {} nodes)",
                        ir_ops.len(),
                        ir_ops.values().sum::<usize>()
                    ),
                    Lowering::Blocked { blockers } => {
                        let b: Vec<String> = blockers
                            .iter()
                            .map(|b| format!("{} ×{}", b.op_type, b.nodes))
                            .collect();
                        format!("blocked by {}", b.join(", "))
                    }
                    Lowering::Failed { error } => format!("failed: {}", cell(error)),
                };
                let opset = ops.opset.map(|o| o.to_string()).unwrap_or_default();
                let nodes: usize = ops.op_types.values().sum();
                let _ = writeln!(
                    s,
                    "| {} | {groups} | {opset} | {nodes} | {} | {lowering} |",
                    m.name,
                    ops.op_types.len()
                );
            }
        }
    }
    let _ = writeln!(s);
}

fn blockers(s: &mut String, groups: &[GroupReport]) {
    let _ = writeln!(s, "## Lowering onto the IR\n");
    for g in groups {
        let l = &g.lowering;
        let _ = writeln!(
            s,
            "**{}**: {} of {} readable model(s) lower fully.",
            g.name, l.full, g.models_read
        );
        if !l.blockers.is_empty() {
            let _ = writeln!(
                s,
                "\n| blocking op type | models blocked | nodes |\n|---|---:|---:|"
            );
            for b in &l.blockers {
                let _ = writeln!(s, "| {} | {} | {} |", b.op_type, b.models, b.nodes);
            }
        }
        let _ = writeln!(
            s,
            "\nIR ops after lowering ({}): {}\n",
            g.ir_ops.len(),
            list(&g.ir_ops)
        );
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "—".to_string()
    } else {
        items
            .iter()
            .map(|i| format!("`{i}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Keeps free text inside one table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}
