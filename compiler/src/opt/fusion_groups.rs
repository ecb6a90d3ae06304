//! Elementwise fusion groups: chains of elementwise operators that a
//! backend emits as one kernel (each intermediate has a single consumer
//! and the same shape, so it never needs to reach memory).

use m4c_ir::{Graph, ValueDef};

/// Node indices of each group, in graph order (singletons included).
pub fn fusion_groups(g: &Graph) -> Vec<Vec<usize>> {
    let mut uses = vec![0usize; g.values.len()];
    for n in &g.nodes {
        for i in &n.inputs {
            uses[i.index()] += 1;
        }
    }
    for o in &g.outputs {
        uses[o.index()] += 1;
    }
    let mut group_of: Vec<Option<usize>> = vec![None; g.nodes.len()];
    let mut groups: Vec<Vec<usize>> = vec![];
    for (idx, n) in g.nodes.iter().enumerate() {
        let joins = n.op.kind().is_elementwise().then(|| {
            n.inputs.iter().find_map(|i| match g.value(*i).def {
                ValueDef::Node(p)
                    if g.nodes[p].op.kind().is_elementwise()
                        && uses[i.index()] == 1
                        && g.value(*i).ty.dims == g.value(n.output).ty.dims =>
                {
                    group_of[p]
                }
                _ => None,
            })
        });
        match joins.flatten() {
            Some(gid) => {
                groups[gid].push(idx);
                group_of[idx] = Some(gid);
            }
            None => {
                group_of[idx] = Some(groups.len());
                groups.push(vec![idx]);
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use m4c_ir::{DType, Op, TensorType};

    #[test]
    fn chains_single_use_elementwise_ops() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[4]));
        let a = g.add_node(Op::Exp, &[x], "a").unwrap();
        let b = g.add_node(Op::Sqrt, &[a], "b").unwrap();
        let c = g.add_node(Op::Softmax { axis: 0 }, &[b], "c").unwrap();
        let d = g.add_node(Op::Log, &[c], "d").unwrap();
        g.outputs.push(d);
        assert_eq!(fusion_groups(&g), vec![vec![0, 1], vec![2], vec![3]]);
    }
}
