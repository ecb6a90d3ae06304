//! The IR verifier: structural and type invariants of a [`Graph`].

use crate::{infer, Graph, IrError, ValueDef};

/// Checks that
/// - every node's inputs are defined earlier (topological order, SSA),
/// - each node's recorded result type is what its operator infers,
/// - constants have as many bytes as their type needs,
/// - graph inputs and outputs refer to existing values.
pub fn verify(g: &Graph) -> Result<(), IrError> {
    let err = |msg: String| Err(IrError::Verify(msg));
    let n = g.values.len();
    let mut defined = vec![false; n];
    for &i in &g.inputs {
        if i.index() >= n || !matches!(g.value(i).def, ValueDef::Input) {
            return err(format!("graph input {i:?} is not an input value"));
        }
        defined[i.index()] = true;
    }
    for (id, t) in g.constant_tensors() {
        t.check_len()
            .map_err(|e| IrError::Verify(format!("%{}: {e}", g.value(id).name)))?;
        defined[id.index()] = true;
    }
    for (idx, node) in g.nodes.iter().enumerate() {
        let out = &g
            .values
            .get(node.output.index())
            .ok_or_else(|| IrError::Verify(format!("node {idx}: result out of range")))?;
        for &i in &node.inputs {
            if i.index() >= n || !defined[i.index()] {
                return err(format!(
                    "%{}: input {i:?} used before it is defined",
                    out.name
                ));
            }
        }
        if !matches!(out.def, ValueDef::Node(k) if k == idx) {
            return err(format!("%{}: result not owned by node {idx}", out.name));
        }
        let tys: Vec<_> = node.inputs.iter().map(|&i| &g.value(i).ty).collect();
        let ty = infer::infer_type(&node.op, &tys)
            .map_err(|e| IrError::Verify(format!("%{}: {e}", out.name)))?;
        if ty != out.ty {
            return err(format!(
                "%{}: recorded type {} but {} infers {ty}",
                out.name,
                out.ty,
                node.op.name()
            ));
        }
        defined[node.output.index()] = true;
    }
    for &o in &g.outputs {
        if o.index() >= n || !defined[o.index()] {
            return err(format!("graph output {o:?} is not defined"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::{DType, Graph, Op, TensorType, ValueId};

    #[test]
    fn rejects_use_before_definition() {
        let mut g = Graph::new("bad");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[2]));
        let y = g.add_node(Op::Exp, &[x], "y").unwrap();
        g.nodes[0].inputs[0] = ValueId(y.0);
        assert!(g
            .verify()
            .unwrap_err()
            .to_string()
            .contains("before it is defined"));
    }

    #[test]
    fn rejects_wrong_recorded_type() {
        let mut g = Graph::new("bad");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[2]));
        let y = g.add_node(Op::Exp, &[x], "y").unwrap();
        g.values[y.index()].ty = TensorType::fixed(DType::F32, &[3]);
        assert!(g
            .verify()
            .unwrap_err()
            .to_string()
            .contains("infers f32[2]"));
    }
}
