//! Elementwise fusion: which elementwise nodes one kernel evaluates as a
//! tree, without intermediate buffers. The CPU backend generates its
//! kernels from these groups; the optimiser's report counts them.

use m4c_ir::Graph;

/// For every node, the fusion group it belongs to (the index of the
/// group's root node, its last member), or `None` for nodes that are not
/// elementwise.
///
/// A node joins its consumer's group when it is elementwise, its result is
/// read only by that one consumer (possibly several times) and is not a
/// graph output, and it has the consumer group's output shape, so the
/// group's loop nest computes each of its elements exactly once. Groups are
/// therefore maximal trees of same-shape elementwise nodes whose leaves
/// (graph inputs, constants, other kernels' results) may broadcast.
pub fn fusion_roots(g: &Graph) -> Vec<Option<usize>> {
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); g.values.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        for &input in &node.inputs {
            if !consumers[input.index()].contains(&i) {
                consumers[input.index()].push(i);
            }
        }
    }
    let mut root: Vec<Option<usize>> = vec![None; g.nodes.len()];
    for i in (0..g.nodes.len()).rev() {
        let node = &g.nodes[i];
        if !node.op.kind().is_elementwise() {
            continue;
        }
        let out = node.output;
        let joined = match consumers[out.index()].as_slice() {
            [user] if !g.outputs.contains(&out) => {
                root[*user].filter(|&r| g.value(g.nodes[r].output).ty.dims == g.value(out).ty.dims)
            }
            _ => None,
        };
        root[i] = Some(joined.unwrap_or(i));
    }
    root
}

/// The nodes of each group in evaluation (topological) order, indexed by
/// root (empty for nodes that are not roots).
pub fn group_members(root: &[Option<usize>]) -> Vec<Vec<usize>> {
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); root.len()];
    for (i, r) in root.iter().enumerate() {
        if let Some(r) = r {
            members[*r].push(i);
        }
    }
    members
}

/// The node indices of every group (singletons included), ordered by
/// root.
pub fn fusion_groups(g: &Graph) -> Vec<Vec<usize>> {
    group_members(&fusion_roots(g))
        .into_iter()
        .filter(|m| !m.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use m4c_ir::{DType, Op, TensorType};

    #[test]
    fn single_use_same_shape_elementwise_nodes_share_a_group() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[4]));
        let a = g.add_node(Op::Exp, &[x], "a").unwrap();
        let b = g.add_node(Op::Sqrt, &[a], "b").unwrap();
        let c = g.add_node(Op::Softmax { axis: 0 }, &[b], "c").unwrap();
        let d = g.add_node(Op::Log, &[c], "d").unwrap();
        g.outputs.push(d);
        assert_eq!(fusion_roots(&g), vec![Some(1), Some(1), None, Some(3)]);
        assert_eq!(fusion_groups(&g), vec![vec![0, 1], vec![3]]);
    }

    /// A result read twice, a graph output, or one of another shape ends
    /// a group.
    #[test]
    fn shared_output_and_broadcast_results_start_their_own_group() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[4]));
        let row = g.add_input("row", TensorType::fixed(DType::F32, &[1]));
        let twice = g.add_node(Op::Exp, &[x], "twice").unwrap();
        let sum = g.add_node(Op::Add, &[twice, twice], "sum").unwrap();
        let small = g.add_node(Op::Tanh, &[row], "small").unwrap();
        let out = g.add_node(Op::Mul, &[sum, small], "out").unwrap();
        let again = g.add_node(Op::Exp, &[sum], "again").unwrap();
        g.outputs = vec![out, again];
        let roots = fusion_roots(&g);
        // `twice` has one consumer (read twice): it joins `sum`; `sum` is
        // read by two nodes; `small` has another shape.
        assert_eq!(roots, vec![Some(1), Some(1), Some(2), Some(3), Some(4)]);
    }
}
