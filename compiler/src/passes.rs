//! Graph clean-up passes shared by the frontend and the optimiser.

use m4c_ir::{Graph, ValueDef, ValueId};

/// Dead-code elimination: drops nodes and constants that no output needs,
/// renumbering values while keeping the topological order.
pub fn dce(g: &mut Graph) {
    let mut live = vec![false; g.values.len()];
    for &o in &g.outputs {
        live[o.index()] = true;
    }
    for &i in &g.inputs {
        live[i.index()] = true;
    }
    for node in g.nodes.iter().rev() {
        if live[node.output.index()] {
            for &i in &node.inputs {
                live[i.index()] = true;
            }
        }
    }
    let mut remap = vec![None; g.values.len()];
    let mut values = Vec::new();
    for (i, v) in g.values.iter().enumerate() {
        if live[i] {
            remap[i] = Some(ValueId(values.len() as u32));
            values.push(v.clone());
        }
    }
    #[allow(clippy::expect_used, reason = "a live node's inputs are live")]
    let map = |id: ValueId| remap[id.index()].expect("live value");
    let mut nodes = Vec::new();
    for node in &g.nodes {
        if live[node.output.index()] {
            let mut n = node.clone();
            n.inputs = n.inputs.iter().map(|&i| map(i)).collect();
            n.output = map(n.output);
            values[n.output.index()].def = ValueDef::Node(nodes.len());
            nodes.push(n);
        }
    }
    g.inputs = g.inputs.iter().map(|&i| map(i)).collect();
    g.outputs = g.outputs.iter().map(|&o| map(o)).collect();
    g.values = values;
    g.nodes = nodes;
}

#[cfg(test)]
mod tests {
    use super::*;
    use m4c_ir::{DType, Op, TensorType};

    #[test]
    fn removes_unused_nodes_and_keeps_order() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[3]));
        let _dead = g.add_node(Op::Exp, &[x], "dead").unwrap();
        let y = g.add_node(Op::Sqrt, &[x], "y").unwrap();
        let z = g.add_node(Op::Log, &[y], "z").unwrap();
        g.outputs.push(z);
        dce(&mut g);
        g.verify().unwrap();
        assert_eq!(g.nodes.len(), 2);
        assert_eq!(g.value(g.outputs[0]).name, "z");
    }
}
