//! The Fig. 14 statistics over groups of censused models: distinct op types,
//! growth of their union as models are added, usage frequency, lowering
//! coverage, and how the groups' op sets overlap.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::census::{Lowering, ModelCensus, Outcome};

/// A named, ordered selection of the censused models (indices into them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSpec {
    pub name: String,
    /// Indices into the model list, in the order the growth curve adds them.
    pub members: Vec<usize>,
}

/// Everything `m4c coverage` reports; serialised as `coverage.json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CoverageReport {
    /// Every model, in analysis order, with its op types and lowering.
    pub models: Vec<ModelCensus>,
    /// Per-group statistics, in the order the groups were given.
    pub groups: Vec<GroupReport>,
    /// How the groups' op-type sets relate.
    pub overlap: Overlap,
}

/// The statistics of one group. Unreadable models are listed but count
/// nowhere else: `models_read` is the denominator of every fraction.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupReport {
    pub name: String,
    /// Names of the group's models, in order.
    pub models: Vec<String>,
    /// How many of them could be read.
    pub models_read: usize,
    /// Names of the models that could not be read.
    pub unreadable: Vec<String>,
    /// Distinct ONNX op types over the group's models, sorted.
    pub op_types: Vec<String>,
    /// `growth[k]`: distinct op types after the first `k + 1` readable models (Fig. 14a).
    pub growth: Vec<usize>,
    /// Share of the group's models using each op type, most used first (Fig. 14b).
    pub frequency: Vec<OpUsage>,
    /// How many models lower fully, and what blocks the rest.
    pub lowering: LoweringSummary,
    /// Distinct IR ops over the models that lowered fully, sorted.
    pub ir_ops: Vec<String>,
    /// Per backend asked about: how much of the fully lowered models it
    /// compiles (empty when none was asked about).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendTotals>,
}

/// One backend's support summed over a group's fully lowered models.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendTotals {
    pub target: String,
    /// Models every node of which the backend takes.
    pub models_whole: usize,
    /// Fully lowered models it was measured on.
    pub models: usize,
    pub nodes: usize,
    pub nodes_supported: usize,
    pub macs: u64,
    pub macs_supported: u64,
    /// IR ops it refuses, with node counts over the group.
    pub refused: BTreeMap<String, usize>,
}

/// How many of a group's models use one op type.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpUsage {
    pub op_type: String,
    pub models: usize,
    /// `models / models_read`.
    pub fraction: f64,
}

/// Lowering outcomes of a group's readable models.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LoweringSummary {
    pub full: usize,
    pub blocked: usize,
    pub failed: usize,
    /// Op types that block some model, most models blocked first.
    pub blockers: Vec<BlockerCount>,
}

/// One blocking op type and its reach within a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BlockerCount {
    pub op_type: String,
    /// Models it blocks.
    pub models: usize,
    /// Nodes of it that failed to lower, over those models.
    pub nodes: usize,
}

/// Set relations between the groups' op types.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Overlap {
    /// Op types used by any group.
    pub union: Vec<String>,
    /// Op types used by every group.
    pub intersection: Vec<String>,
    /// Per group (in group order): op types no other group uses.
    pub unique: Vec<GroupOps>,
}

/// A group's name with a list of op types.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupOps {
    pub group: String,
    pub op_types: Vec<String>,
}

/// Computes every statistic of the report.
pub fn analyze(models: Vec<ModelCensus>, groups: &[GroupSpec]) -> CoverageReport {
    let groups: Vec<GroupReport> = groups.iter().map(|g| group_report(&models, g)).collect();
    let sets: Vec<(String, BTreeSet<String>)> = groups
        .iter()
        .map(|g| (g.name.clone(), g.op_types.iter().cloned().collect()))
        .collect();
    CoverageReport {
        models,
        groups,
        overlap: overlap(&sets),
    }
}

fn group_report(models: &[ModelCensus], spec: &GroupSpec) -> GroupReport {
    let members: Vec<&ModelCensus> = spec.members.iter().map(|&i| &models[i]).collect();
    let read: Vec<_> = members
        .iter()
        .filter_map(|m| match &m.outcome {
            Outcome::Read(ops) => Some(ops),
            Outcome::Unreadable { .. } => None,
        })
        .collect();
    let op_sets: Vec<BTreeSet<String>> = read
        .iter()
        .map(|ops| ops.op_types.keys().cloned().collect())
        .collect();
    let mut lowering = LoweringSummary {
        full: 0,
        blocked: 0,
        failed: 0,
        blockers: vec![],
    };
    let mut blockers: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut ir_ops = BTreeSet::new();
    let mut backends: Vec<BackendTotals> = vec![];
    for ops in &read {
        match &ops.lowering {
            Lowering::Full {
                ir_ops: used,
                backends: supports,
            } => {
                lowering.full += 1;
                ir_ops.extend(used.keys().cloned());
                for b in supports {
                    let pos = match backends.iter().position(|t| t.target == b.target) {
                        Some(i) => i,
                        None => {
                            backends.push(BackendTotals {
                                target: b.target.clone(),
                                models_whole: 0,
                                models: 0,
                                nodes: 0,
                                nodes_supported: 0,
                                macs: 0,
                                macs_supported: 0,
                                refused: BTreeMap::new(),
                            });
                            backends.len() - 1
                        }
                    };
                    let t = &mut backends[pos];
                    t.models += 1;
                    t.models_whole += usize::from(b.nodes_supported == b.nodes);
                    t.nodes += b.nodes;
                    t.nodes_supported += b.nodes_supported;
                    t.macs += b.macs;
                    t.macs_supported += b.macs_supported;
                    for (op, n) in &b.refused {
                        *t.refused.entry(op.clone()).or_insert(0) += n;
                    }
                }
            }
            Lowering::Blocked { blockers: bs } => {
                lowering.blocked += 1;
                for b in bs {
                    let e = blockers.entry(&b.op_type).or_default();
                    e.0 += 1;
                    e.1 += b.nodes;
                }
            }
            Lowering::Failed { .. } => lowering.failed += 1,
        }
    }
    lowering.blockers = blockers
        .into_iter()
        .map(|(op, (models, nodes))| BlockerCount {
            op_type: op.to_string(),
            models,
            nodes,
        })
        .collect();
    lowering.blockers.sort_by(|a, b| {
        b.models
            .cmp(&a.models)
            .then_with(|| a.op_type.cmp(&b.op_type))
    });
    GroupReport {
        name: spec.name.clone(),
        models: members.iter().map(|m| m.name.clone()).collect(),
        models_read: read.len(),
        unreadable: members
            .iter()
            .filter(|m| matches!(m.outcome, Outcome::Unreadable { .. }))
            .map(|m| m.name.clone())
            .collect(),
        op_types: union(&op_sets).into_iter().collect(),
        growth: growth(&op_sets),
        frequency: frequency(&op_sets),
        lowering,
        ir_ops: ir_ops.into_iter().collect(),
        backends,
    }
}

/// The union of op-type sets.
pub fn union(sets: &[BTreeSet<String>]) -> BTreeSet<String> {
    sets.iter().flatten().cloned().collect()
}

/// Size of the union after each model in turn (Fig. 14a).
pub fn growth(sets: &[BTreeSet<String>]) -> Vec<usize> {
    let mut seen = BTreeSet::new();
    sets.iter()
        .map(|s| {
            seen.extend(s.iter());
            seen.len()
        })
        .collect()
}

/// For each op type, the number and share of sets containing it; most used
/// first, ties by name (Fig. 14b).
pub fn frequency(sets: &[BTreeSet<String>]) -> Vec<OpUsage> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for op in sets.iter().flatten() {
        *counts.entry(op).or_insert(0) += 1;
    }
    let mut usage: Vec<OpUsage> = counts
        .into_iter()
        .map(|(op, n)| OpUsage {
            op_type: op.to_string(),
            models: n,
            fraction: n as f64 / sets.len() as f64,
        })
        .collect();
    usage.sort_by(|a, b| {
        b.models
            .cmp(&a.models)
            .then_with(|| a.op_type.cmp(&b.op_type))
    });
    usage
}

/// Union, intersection and per-group unique op types of named sets.
pub fn overlap(sets: &[(String, BTreeSet<String>)]) -> Overlap {
    let all: Vec<BTreeSet<String>> = sets.iter().map(|(_, s)| s.clone()).collect();
    let union = union(&all);
    let intersection = match all.split_first() {
        Some((first, rest)) => first
            .iter()
            .filter(|op| rest.iter().all(|s| s.contains(*op)))
            .cloned()
            .collect(),
        None => vec![],
    };
    let unique = sets
        .iter()
        .enumerate()
        .map(|(i, (name, set))| GroupOps {
            group: name.clone(),
            op_types: set
                .iter()
                .filter(|op| {
                    !sets
                        .iter()
                        .enumerate()
                        .any(|(j, (_, other))| j != i && other.contains(*op))
                })
                .cloned()
                .collect(),
        })
        .collect();
    Overlap {
        union: union.into_iter().collect(),
        intersection,
        unique,
    }
}

#[cfg(test)]
mod tests {
    use super::super::census::{Blocker, ModelOps};
    use super::*;

    fn set(ops: &[&str]) -> BTreeSet<String> {
        ops.iter().map(|s| s.to_string()).collect()
    }

    fn strings(ops: &[&str]) -> Vec<String> {
        ops.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn growth_counts_new_op_types_per_model() {
        let sets = [
            set(&["Conv", "Relu"]),
            set(&["Relu"]),
            set(&["Add", "Conv", "Gemm"]),
            set(&[]),
        ];
        // By hand: {Conv,Relu}=2, +nothing=2, +Add,Gemm=4, +nothing=4.
        assert_eq!(growth(&sets), vec![2, 2, 4, 4]);
        assert_eq!(union(&sets), set(&["Add", "Conv", "Gemm", "Relu"]));
        assert!(growth(&[]).is_empty());
    }

    #[test]
    fn frequency_is_share_of_models_sorted_by_use_then_name() {
        let sets = [
            set(&["MatMul", "Add"]),
            set(&["MatMul", "Softmax"]),
            set(&["MatMul", "Add", "Erf"]),
            set(&["Gather"]),
        ];
        let got: Vec<(String, usize, f64)> = frequency(&sets)
            .into_iter()
            .map(|u| (u.op_type, u.models, u.fraction))
            .collect();
        let want = vec![
            ("MatMul".to_string(), 3, 0.75),
            ("Add".to_string(), 2, 0.5),
            ("Erf".to_string(), 1, 0.25),
            ("Gather".to_string(), 1, 0.25),
            ("Softmax".to_string(), 1, 0.25),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn overlap_finds_shared_and_unique_op_types() {
        let o = overlap(&[
            ("a".into(), set(&["Add", "MatMul", "Erf"])),
            ("b".into(), set(&["Add", "MatMul", "Relu"])),
            ("c".into(), set(&["Add", "Relu", "LSTM"])),
        ]);
        assert_eq!(o.union, strings(&["Add", "Erf", "LSTM", "MatMul", "Relu"]));
        assert_eq!(o.intersection, strings(&["Add"]));
        let unique: Vec<(String, Vec<String>)> = o
            .unique
            .into_iter()
            .map(|g| (g.group, g.op_types))
            .collect();
        assert_eq!(
            unique,
            vec![
                ("a".into(), strings(&["Erf"])),
                ("b".into(), vec![]),
                ("c".into(), strings(&["LSTM"]))
            ]
        );
    }

    fn model(name: &str, ops: &[&str], lowering: Lowering) -> ModelCensus {
        ModelCensus {
            name: name.into(),
            path: format!("{name}.onnx"),
            outcome: Outcome::Read(ModelOps {
                opset: Some(17),
                op_types: ops.iter().map(|o| (o.to_string(), 1)).collect(),
                lowering,
            }),
        }
    }

    fn blocked(ops: &[(&str, usize)]) -> Lowering {
        Lowering::Blocked {
            blockers: ops
                .iter()
                .map(|(o, n)| Blocker {
                    op_type: o.to_string(),
                    nodes: *n,
                    reason: "r".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn group_report_skips_unreadable_models_and_tallies_blockers() {
        let full = |ir: &[&str]| Lowering::Full {
            ir_ops: ir.iter().map(|o| (o.to_string(), 2)).collect(),
            backends: vec![],
        };
        let models = vec![
            model("m0", &["MatMul", "Add"], full(&["MatMul", "Add"])),
            ModelCensus {
                name: "bad".into(),
                path: "bad.onnx".into(),
                outcome: Outcome::Unreadable {
                    error: "bad.onnx: nope".into(),
                },
            },
            model(
                "m2",
                &["Loop", "Add", "NonZero"],
                blocked(&[("Loop", 2), ("NonZero", 1)]),
            ),
            model("m3", &["Loop"], blocked(&[("Loop", 3)])),
            model("m4", &["Conv"], Lowering::Failed { error: "e".into() }),
            model("m5", &["Relu"], full(&["Max"])),
        ];
        let groups = [
            GroupSpec {
                name: "g".into(),
                members: vec![0, 1, 2, 3, 4],
            },
            GroupSpec {
                name: "h".into(),
                members: vec![5, 0],
            },
        ];
        let r = analyze(models, &groups);
        let g = &r.groups[0];
        assert_eq!(g.models, strings(&["m0", "bad", "m2", "m3", "m4"]));
        assert_eq!(
            (g.models_read, g.unreadable.clone()),
            (4, strings(&["bad"]))
        );
        assert_eq!(
            g.op_types,
            strings(&["Add", "Conv", "Loop", "MatMul", "NonZero"])
        );
        assert_eq!(g.growth, vec![2, 4, 4, 5]);
        assert_eq!(g.frequency[0].op_type, "Add");
        assert_eq!(g.frequency[0].fraction, 0.5);
        assert_eq!(
            (g.lowering.full, g.lowering.blocked, g.lowering.failed),
            (1, 2, 1)
        );
        let blockers: Vec<(&str, usize, usize)> = g
            .lowering
            .blockers
            .iter()
            .map(|b| (b.op_type.as_str(), b.models, b.nodes))
            .collect();
        assert_eq!(blockers, vec![("Loop", 2, 5), ("NonZero", 1, 1)]);
        assert_eq!(g.ir_ops, strings(&["Add", "MatMul"]));
        let h = &r.groups[1];
        assert_eq!(
            (h.growth.clone(), h.ir_ops.clone()),
            (vec![1, 3], strings(&["Add", "MatMul", "Max"]))
        );
        assert_eq!(r.overlap.intersection, strings(&["Add", "MatMul"]));
    }
}
