//! The fusion planner: groups elementwise nodes into trees that one
//! kernel evaluates without intermediate buffers.

use m4c_ir::{Graph, ValueId};

/// For every node, the fusion group it belongs to (the index of the
/// group's root node), or `None` for nodes that are not elementwise.
///
/// A node joins its consumer's group when it is elementwise, its result is
/// read only by that one consumer (possibly several times) and is not a
/// graph output, and it has the consumer group's output shape, so the
/// group's loop nest computes each of its elements exactly once. Groups are
/// therefore maximal trees of same-shape elementwise nodes whose leaves
/// (graph inputs, constants, other kernels' results) may broadcast.
pub(crate) fn fusion_groups(g: &Graph) -> Vec<Option<usize>> {
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); g.values.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        for &input in &node.inputs {
            if !consumers[input.index()].contains(&i) {
                consumers[input.index()].push(i);
            }
        }
    }
    let outputs: Vec<ValueId> = g.outputs.clone();
    let mut root: Vec<Option<usize>> = vec![None; g.nodes.len()];
    for i in (0..g.nodes.len()).rev() {
        let node = &g.nodes[i];
        if !node.op.kind().is_elementwise() {
            continue;
        }
        let out = node.output;
        let users = &consumers[out.index()];
        let joined = match users.as_slice() {
            [user] if !outputs.contains(&out) => {
                root[*user].filter(|&r| g.value(g.nodes[r].output).ty.dims == g.value(out).ty.dims)
            }
            _ => None,
        };
        root[i] = Some(joined.unwrap_or(i));
    }
    root
}

/// The nodes of each group in evaluation (topological) order, keyed by
/// root.
pub(crate) fn group_members(root: &[Option<usize>]) -> Vec<Vec<usize>> {
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); root.len()];
    for (i, r) in root.iter().enumerate() {
        if let Some(r) = r {
            members[*r].push(i);
        }
    }
    members
}
