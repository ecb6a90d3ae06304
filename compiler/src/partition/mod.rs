//! The partitioner: given a backend's supported-op predicate, split a
//! graph into maximal convex accelerator sub-graphs plus CPU fallback, and
//! report the paper's Fig. 2 figures (full / partial / CPU-only /
//! fails-to-convert, sub-graphs, ops and MACs on the accelerator, bytes
//! crossing the boundary, and times when the caller measures them). The
//! NPU's rows come from its code generator's own split
//! ([`PartitionReport::placed`], filled by `m4c partition`).
//!
//! The compiler does not depend on backends: a backend (or the CLI on its
//! behalf) implements [`OpSupport`]. [`NpuOpSet`] is the NPU's op set as
//! the operators' declarations state it (`m4c_ir::OpInfo::npu`), for use
//! until the NPU crate exposes its own predicate.

mod report;

use std::collections::BTreeSet;

use m4c_ir::op::PadMode;
use m4c_ir::{DType, Graph, Node, Op, ValueDef};

pub use report::{csv, markdown_table, PartitionReport, Status, Times};

/// The multiply-accumulates of `node` in `g` (what the partition and
/// coverage reports weigh placement by).
pub fn node_macs(g: &Graph, node: &Node) -> u64 {
    let tys: Vec<&m4c_ir::TensorType> = node.inputs.iter().map(|&v| &g.value(v).ty).collect();
    node.op.cost(&tys, &g.value(node.output).ty).macs
}

/// Which IR nodes a backend executes.
pub trait OpSupport {
    /// Target name for reports.
    fn name(&self) -> &str;
    /// True when the backend runs `node` of `g`.
    fn supports(&self, g: &Graph, node: &Node) -> bool;
    /// Why the backend does not run `node` (`None`: no reason known).
    fn refusal(&self, _g: &Graph, _node: &Node) -> Option<String> {
        None
    }
}

/// The simulated NPU of `backends/npu`: every operator its declaration
/// places there ([`m4c_ir::Npu::placed`]: a kernel generator emits it, or
/// the NPU's instructions cover it — `vred` reductions, `vsfu` reciprocals
/// and square roots, `vlut` tables, DMA strides), for float or int8 values,
/// within the attribute ranges its generators take (2-D convolutions,
/// constant padding). Everything else falls back to the CPU.
pub struct NpuOpSet;

impl OpSupport for NpuOpSet {
    fn name(&self) -> &str {
        "npu"
    }

    fn supports(&self, g: &Graph, node: &Node) -> bool {
        let dtype = g.value(node.output).ty.dtype;
        let attrs_ok = match &node.op {
            Op::Conv(c) => c.strides.len() == 2,
            Op::Pad { mode, .. } => matches!(mode, PadMode::Constant(_)),
            _ => true,
        };
        node.op.kind().info().npu.placed() && attrs_ok && (dtype.is_float() || dtype == DType::I8)
    }
}

/// The placement of every node: `Some(k)` for accelerator sub-graph `k`,
/// `None` for the CPU.
#[derive(Clone, Debug, PartialEq)]
pub struct Partition {
    pub placement: Vec<Option<usize>>,
    pub subgraphs: usize,
}

/// Greedy convex partitioning in topological order: a supported node
/// joins the lowest-numbered sub-graph of its supported producers that it
/// does not also reach through a CPU node (joining such a sub-graph would
/// create a cycle between it and the CPU); otherwise it opens a new one.
pub fn partition(g: &Graph, support: &dyn OpSupport) -> Partition {
    let n = g.nodes.len();
    let producer = |v: m4c_ir::ValueId| match g.value(v).def {
        ValueDef::Node(p) => Some(p),
        _ => None,
    };
    // reach[i]: sub-graphs with a path to node i; tainted[i]: those whose
    // path to node i passes through a CPU node.
    let mut reach: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    let mut tainted: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    let mut placement: Vec<Option<usize>> = vec![None; n];
    let mut subgraphs = 0;
    for (i, node) in g.nodes.iter().enumerate() {
        let preds: Vec<usize> = node.inputs.iter().filter_map(|&v| producer(v)).collect();
        let (mut r, mut t) = (BTreeSet::new(), BTreeSet::new());
        for &p in &preds {
            r.extend(reach[p].iter().copied());
            t.extend(tainted[p].iter().copied());
            if placement[p].is_none() {
                t.extend(reach[p].iter().copied());
            }
        }
        if support.supports(g, node) {
            let join = preds
                .iter()
                .filter_map(|&p| placement[p])
                .filter(|k| !t.contains(k))
                .min();
            let k = join.unwrap_or_else(|| {
                subgraphs += 1;
                subgraphs - 1
            });
            placement[i] = Some(k);
            r.insert(k);
        }
        reach[i] = r;
        tainted[i] = t;
    }
    Partition {
        placement,
        subgraphs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use m4c_ir::{OpKind, TensorType};

    struct NoExp;
    impl OpSupport for NoExp {
        fn name(&self) -> &str {
            "no-exp"
        }
        fn supports(&self, _: &Graph, n: &Node) -> bool {
            n.op.kind() != OpKind::Exp
        }
    }

    #[test]
    fn never_merges_across_a_cpu_detour() {
        // a = sqrt(x); b = exp(a) [cpu]; c = a + b: c may not join a's
        // sub-graph (a → b → c would leave and re-enter it).
        let mut g = Graph::new("g");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[4]));
        let a = g.add_node(Op::Sqrt, &[x], "a").unwrap();
        let b = g.add_node(Op::Exp, &[a], "b").unwrap();
        let c = g.add_node(Op::Add, &[a, b], "c").unwrap();
        let d = g.add_node(Op::Sqrt, &[c], "d").unwrap();
        g.outputs.push(d);
        let p = partition(&g, &NoExp);
        assert_eq!(p.placement, vec![Some(0), None, Some(1), Some(1)]);
        assert_eq!(p.subgraphs, 2);
    }

    /// The NPU takes what the declarations place there, within its
    /// generators' attribute ranges and element types.
    #[test]
    fn npu_op_set_follows_the_declarations() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[1, 2, 4, 4]));
        let i = g.add_input("i", TensorType::fixed(DType::I32, &[4]));
        let idx = g.add_input("idx", TensorType::fixed(DType::I64, &[2]));
        let results = [
            g.add_node(Op::Softmax { axis: 3 }, &[x], "softmax"),
            g.add_node(Op::Gather { axis: 3 }, &[x, idx], "gather"),
            g.add_node(Op::Add, &[i, i], "int_add"),
            g.add_node(
                Op::Pad {
                    pads: vec![0, 0, 1, 1, 0, 0, 1, 1],
                    mode: PadMode::Constant(0.0),
                },
                &[x],
                "pad",
            ),
            g.add_node(
                Op::Pad {
                    pads: vec![0, 0, 1, 1, 0, 0, 1, 1],
                    mode: PadMode::Reflect,
                },
                &[x],
                "reflect",
            ),
        ];
        assert!(results.iter().all(Result::is_ok));
        let placed: Vec<bool> = g.nodes.iter().map(|n| NpuOpSet.supports(&g, n)).collect();
        assert_eq!(placed, [true, false, false, true, false]);
        assert!(OpKind::Softmax.info().npu.placed() && !OpKind::Gather.info().npu.placed());
    }
}
