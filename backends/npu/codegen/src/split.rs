//! The split of an optimised graph into NPU parts and CPU-fallback parts:
//! the compiler's convex partitioner (`m4c_compiler::partition`) places
//! nodes by the NPU's constraints, the rest is grouped the same way, and
//! the parts' dependency graph (petgraph) gives their execution order. A
//! grouping of fallback nodes that would make the parts' graph cyclic is
//! undone (each fallback node its own part: with convex NPU parts that
//! graph is acyclic).

use m4c_compiler::partition::{partition, OpSupport};
use m4c_ir::{Graph, Node, ValueDef};
use petgraph::algo::toposort;
use petgraph::graph::DiGraph;

/// One part: its nodes (graph order) and whether the NPU runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// True for an NPU part.
    pub npu: bool,
    /// Node indices, in graph order.
    pub nodes: Vec<usize>,
}

struct Placed<'a>(&'a dyn Fn(&Graph, &Node) -> bool, bool);

impl OpSupport for Placed<'_> {
    fn name(&self) -> &str {
        "npu-split"
    }
    fn supports(&self, g: &Graph, node: &Node) -> bool {
        (self.0)(g, node) == self.1
    }
}

/// Splits `g` into parts in an execution order; `on_npu` decides each node.
pub fn split(g: &Graph, on_npu: &dyn Fn(&Graph, &Node) -> bool) -> Vec<Part> {
    let npu = partition(g, &Placed(on_npu, true));
    let cpu = partition(g, &Placed(on_npu, false));
    let grouped = |singletons: bool| {
        let mut parts: Vec<Part> = (0..npu.subgraphs)
            .map(|_| Part {
                npu: true,
                nodes: vec![],
            })
            .collect();
        let mut cpu_part = vec![None; cpu.subgraphs];
        let mut owner = vec![0usize; g.nodes.len()];
        for (i, slot) in owner.iter_mut().enumerate() {
            let k = match (npu.placement[i], cpu.placement[i]) {
                (Some(k), _) => k,
                (None, Some(c)) if !singletons => *cpu_part[c].get_or_insert_with(|| {
                    parts.push(Part {
                        npu: false,
                        nodes: vec![],
                    });
                    parts.len() - 1
                }),
                _ => {
                    parts.push(Part {
                        npu: false,
                        nodes: vec![],
                    });
                    parts.len() - 1
                }
            };
            parts[k].nodes.push(i);
            *slot = k;
        }
        order(g, parts, &owner)
    };
    grouped(false).unwrap_or_else(|| grouped(true).unwrap_or_default())
}

/// The parts in a topological order of their dependencies, or `None`
/// when they depend on each other in a cycle.
fn order(g: &Graph, parts: Vec<Part>, owner: &[usize]) -> Option<Vec<Part>> {
    let mut dag = DiGraph::<usize, ()>::new();
    let ids: Vec<_> = (0..parts.len()).map(|k| dag.add_node(k)).collect();
    for (i, node) in g.nodes.iter().enumerate() {
        for &v in &node.inputs {
            if let ValueDef::Node(p) = g.value(v).def {
                if owner[p] != owner[i] {
                    dag.update_edge(ids[owner[p]], ids[owner[i]], ());
                }
            }
        }
    }
    let sorted = toposort(&dag, None).ok()?;
    let mut slots: Vec<Option<Part>> = parts.into_iter().map(Some).collect();
    Some(
        sorted
            .into_iter()
            .filter_map(|n| slots[dag[n]].take())
            .filter(|p| !p.nodes.is_empty())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use m4c_ir::{DType, Op, OpKind, TensorType};

    #[test]
    fn parts_alternate_in_dependency_order() {
        // a = exp(x) [npu]; b = floor(a) [cpu]; c = a + b [npu]; d = exp(c) [npu]
        let mut g = Graph::new("g");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[4]));
        let a = g.add_node(Op::Exp, &[x], "a").unwrap();
        let b = g.add_node(Op::Floor, &[a], "b").unwrap();
        let c = g.add_node(Op::Add, &[a, b], "c").unwrap();
        let d = g.add_node(Op::Exp, &[c], "d").unwrap();
        g.outputs.push(d);
        let on_npu = |_: &Graph, n: &Node| n.op.kind() != OpKind::Floor;
        let parts = split(&g, &on_npu);
        let want = [(true, vec![0]), (false, vec![1]), (true, vec![2, 3])];
        assert_eq!(parts.len(), 3);
        for (p, (npu, nodes)) in parts.iter().zip(want) {
            assert_eq!((p.npu, &p.nodes), (npu, &nodes));
        }
    }
}
