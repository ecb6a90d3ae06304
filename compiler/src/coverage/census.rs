//! What one model uses: its ONNX op types (subgraphs included) and how far it
//! lowers onto the IR.

use std::collections::BTreeMap;
use std::path::Path;

use prost::Message;
use serde::Serialize;
use tract_onnx::pb::{GraphProto, ModelProto};

use crate::partition::OpSupport;
use crate::{lower_report, FrontendError, LowerOptions, OnnxModel, UnsupportedNode};

/// One model of a coverage run: where it came from and what was found in it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelCensus {
    /// Short name used in tables (the file stem unless that is ambiguous).
    pub name: String,
    /// The path as given on the command line or found by a glob.
    pub path: String,
    /// What reading the model gave.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Whether a model could be read at all.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// The file is missing or not an ONNX protobuf; it is left out of every
    /// statistic and listed in the report.
    Unreadable { error: String },
    /// The model parsed.
    Read(ModelOps),
}

/// The operators of a model that parsed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelOps {
    /// Opset of the default domain, when imported.
    pub opset: Option<i64>,
    /// Node count per op type over the main graph and all subgraphs; the op
    /// type is `op_type` in the default domain and `domain.op_type` elsewhere.
    pub op_types: BTreeMap<String, usize>,
    /// The result of lowering the model onto the IR.
    pub lowering: Lowering,
}

/// How far a model lowers onto the IR.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Lowering {
    /// Every node lowered; IR node count per IR op after dead-code removal,
    /// and how much of the graph each backend asked about compiles.
    Full {
        ir_ops: BTreeMap<String, usize>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        backends: Vec<BackendSupport>,
    },
    /// Some nodes have no lowering; these op types block the model.
    Blocked { blockers: Vec<Blocker> },
    /// Lowering stopped on an error that is not an unsupported op (an opset
    /// outside the frontend's range, a broken tensor, a missing external-data
    /// file, an input without a usable type).
    Failed { error: String },
}

/// How much of one fully lowered model a backend (or the NPU's op set)
/// compiles, by IR node and by multiply-accumulate: the hardware team's
/// question "what would run on our accelerator".
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendSupport {
    /// The backend or target name ([`OpSupport::name`]).
    pub target: String,
    /// IR nodes of the (unoptimised) lowered graph.
    pub nodes: usize,
    /// Of those, the nodes the backend takes.
    pub nodes_supported: usize,
    /// Multiply-accumulates of the graph (symbolic dims bound to 1).
    pub macs: u64,
    /// Of those, the MACs of nodes the backend takes.
    pub macs_supported: u64,
    /// IR ops the backend refuses, with node counts.
    pub refused: BTreeMap<String, usize>,
}

impl BackendSupport {
    /// Measures `g` against `target`.
    pub fn of(g: &m4c_ir::Graph, target: &dyn OpSupport) -> BackendSupport {
        let mut r = BackendSupport {
            target: target.name().to_string(),
            nodes: g.nodes.len(),
            nodes_supported: 0,
            macs: 0,
            macs_supported: 0,
            refused: BTreeMap::new(),
        };
        for node in &g.nodes {
            let macs = crate::partition::node_macs(g, node);
            r.macs += macs;
            if target.supports(g, node) {
                r.nodes_supported += 1;
                r.macs_supported += macs;
            } else {
                *r.refused.entry(node.op.name().to_string()).or_insert(0) += 1;
            }
        }
        r
    }
}

/// An op type that keeps a model from lowering fully.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Blocker {
    pub op_type: String,
    /// How many of the model's nodes of this op type failed to lower.
    pub nodes: usize,
    /// The frontend's reason for the first such node.
    pub reason: String,
}

/// The options coverage lowers with: symbolic dims default to 1, since the
/// question is which operators appear, not at which sizes.
fn lower_options() -> LowerOptions {
    LowerOptions {
        default_dim: Some(1),
        ..Default::default()
    }
}

/// Reads and lowers the model at `path` and, when it lowers fully, measures
/// it against each of `targets`; never fails, a model that cannot be read
/// becomes [`Outcome::Unreadable`].
pub fn census_model(path: &Path, name: String, targets: &[&dyn OpSupport]) -> ModelCensus {
    let outcome = match OnnxModel::load(path) {
        Ok(model) => Outcome::Read(ModelOps {
            opset: model.opset(""),
            op_types: op_type_counts(model.graph()),
            lowering: lower(&model, targets),
        }),
        // The frontend refuses the opset, but the operators can still be counted.
        Err(err @ FrontendError::Opset { .. }) => match decode(path) {
            Some(proto) => Outcome::Read(ModelOps {
                opset: proto
                    .opset_import
                    .iter()
                    .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
                    .map(|o| o.version),
                op_types: proto.graph.as_ref().map(op_type_counts).unwrap_or_default(),
                lowering: Lowering::Failed {
                    error: err.to_string(),
                },
            }),
            None => Outcome::Unreadable {
                error: err.to_string(),
            },
        },
        Err(err) => Outcome::Unreadable {
            error: err.to_string(),
        },
    };
    ModelCensus {
        name,
        path: path.display().to_string(),
        outcome,
    }
}

fn decode(path: &Path) -> Option<ModelProto> {
    ModelProto::decode(std::fs::read(path).ok()?.as_slice()).ok()
}

fn lower(model: &OnnxModel, targets: &[&dyn OpSupport]) -> Lowering {
    match lower_report(model, &lower_options()) {
        Ok(report) => match report.graph {
            Some(g) => {
                let mut ir_ops = BTreeMap::new();
                for node in &g.nodes {
                    *ir_ops.entry(node.op.kind().name().to_string()).or_insert(0) += 1;
                }
                let backends = targets.iter().map(|t| BackendSupport::of(&g, *t)).collect();
                Lowering::Full { ir_ops, backends }
            }
            None => Lowering::Blocked {
                blockers: blockers(&report.unsupported),
            },
        },
        Err(err) => Lowering::Failed {
            error: err.to_string(),
        },
    }
}

/// Groups unsupported nodes by op type, keeping the first reason of each.
fn blockers(nodes: &[UnsupportedNode]) -> Vec<Blocker> {
    let mut by_op: BTreeMap<String, Blocker> = BTreeMap::new();
    for n in nodes {
        let op_type = qualified(&n.domain, &n.op_type);
        by_op
            .entry(op_type.clone())
            .or_insert_with(|| Blocker {
                op_type,
                nodes: 0,
                reason: n.reason.clone(),
            })
            .nodes += 1;
    }
    by_op.into_values().collect()
}

/// The name an op type is reported under: bare in the default domain.
pub fn qualified(domain: &str, op_type: &str) -> String {
    if domain.is_empty() || domain == "ai.onnx" {
        op_type.to_string()
    } else {
        format!("{domain}.{op_type}")
    }
}

/// Node count per op type in `graph` and, recursively, in the subgraphs held
/// by node attributes (`If` branches, `Loop` and `Scan` bodies).
pub fn op_type_counts(graph: &GraphProto) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    add_counts(graph, &mut counts);
    counts
}

fn add_counts(graph: &GraphProto, counts: &mut BTreeMap<String, usize>) {
    for node in &graph.node {
        *counts
            .entry(qualified(&node.domain, &node.op_type))
            .or_insert(0) += 1;
        for attr in &node.attribute {
            for sub in attr.g.iter().chain(&attr.graphs) {
                add_counts(sub, counts);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::{AttributeProto, NodeProto};

    fn node(domain: &str, op: &str) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            domain: domain.into(),
            ..Default::default()
        }
    }

    fn graph(nodes: Vec<NodeProto>) -> GraphProto {
        GraphProto {
            node: nodes,
            ..Default::default()
        }
    }

    #[test]
    fn counts_nodes_of_nested_subgraphs_with_domains() {
        let then_branch = graph(vec![node("", "Relu"), node("ai.onnx", "Add")]);
        let loop_body = graph(vec![node("com.microsoft", "FusedMatMul"), node("", "Add")]);
        let mut if_node = node("", "If");
        if_node.attribute.push(AttributeProto {
            name: "then_branch".into(),
            g: Some(then_branch),
            ..Default::default()
        });
        let mut scan = node("", "Scan");
        scan.attribute.push(AttributeProto {
            name: "bodies".into(),
            graphs: vec![graph(vec![if_node.clone()]), loop_body],
            ..Default::default()
        });
        let g = graph(vec![node("", "Add"), if_node, scan]);
        let counts = op_type_counts(&g);
        // By hand: Add 1 (top) + 1 (then) + 1 (If inside Scan's then) + 1 (loop body);
        // If 1 + 1; Relu 1 + 1; Scan 1; FusedMatMul 1.
        let expected: BTreeMap<String, usize> = [
            ("Add", 4),
            ("If", 2),
            ("Relu", 2),
            ("Scan", 1),
            ("com.microsoft.FusedMatMul", 1),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
        assert_eq!(counts, expected);
    }

    #[test]
    fn groups_unsupported_nodes_by_qualified_op_type() {
        let un = |domain: &str, op: &str, node: &str, reason: &str| UnsupportedNode {
            op_type: op.into(),
            domain: domain.into(),
            node: node.into(),
            opset: 17,
            reason: reason.into(),
        };
        let b = blockers(&[
            un("", "Loop", "l1", "no lowering"),
            un("x", "Custom", "c", "unknown domain"),
            un("", "Loop", "l2", "other"),
        ]);
        assert_eq!(
            b,
            vec![
                Blocker {
                    op_type: "Loop".into(),
                    nodes: 2,
                    reason: "no lowering".into()
                },
                Blocker {
                    op_type: "x.Custom".into(),
                    nodes: 1,
                    reason: "unknown domain".into()
                },
            ]
        );
    }

    #[test]
    fn missing_and_corrupt_files_are_unreadable_not_fatal() {
        let dir = std::env::temp_dir().join(format!("m4c-census-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let corrupt = dir.join("corrupt.onnx");
        std::fs::write(&corrupt, [0x0a, 0xff, 0xff, 0xff]).unwrap();
        for path in [dir.join("missing.onnx"), corrupt] {
            let c = census_model(&path, "m".into(), &[]);
            match c.outcome {
                Outcome::Unreadable { error } => {
                    assert!(error.contains(&path.display().to_string()), "{error}")
                }
                other => panic!("{} read as {other:?}", path.display()),
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
