//! Whole-graph evaluation.

use std::collections::HashMap;

use m4c_ir::{Dim, Graph, TensorType, ValueDef, ValueId};

use crate::error::{OpsError, Result};
use crate::{eval_op, Value};

/// A value held while the graph runs: a caller's input is borrowed, the rest
/// is owned and dropped after its last use.
enum Slot<'a> {
    Empty,
    Borrowed(&'a Value),
    Owned(Value),
}

impl Slot<'_> {
    fn get(&self) -> Option<&Value> {
        match self {
            Slot::Empty => None,
            Slot::Borrowed(v) => Some(v),
            Slot::Owned(v) => Some(v),
        }
    }
}

/// Runs `g` on `inputs` (in `g.inputs` order) and returns the values of
/// `g.outputs`. Inputs are checked against the graph's declared types
/// (symbolic dimensions must bind consistently); every intermediate is freed
/// after its last use; each result is checked against the type the graph
/// records for it.
pub fn run_graph(g: &Graph, inputs: &[Value]) -> Result<Vec<Value>> {
    if inputs.len() != g.inputs.len() {
        return Err(OpsError::InputCount {
            graph: g.name.clone(),
            expected: g.inputs.len(),
            found: inputs.len(),
        });
    }
    let mut symbols = HashMap::new();
    let mut env: Vec<Slot> = (0..g.values.len()).map(|_| Slot::Empty).collect();
    for (&id, v) in g.inputs.iter().zip(inputs) {
        let decl = g.value(id);
        if !conforms(&decl.ty, v, &mut symbols) {
            return Err(OpsError::InputType {
                name: decl.name.clone(),
                expected: decl.ty.to_string(),
                found: describe(v),
            });
        }
        env[id.index()] = Slot::Borrowed(v);
    }
    let last_use = last_uses(g);
    for (idx, node) in g.nodes.iter().enumerate() {
        let out = g.value(node.output);
        let fail = |source: OpsError| OpsError::Node {
            value: out.name.clone(),
            op: node.op.name(),
            source: Box::new(source),
        };
        for &i in &node.inputs {
            materialize(g, &mut env, i).map_err(fail)?;
        }
        let args: Vec<&Value> = node
            .inputs
            .iter()
            .filter_map(|&i| env[i.index()].get())
            .collect();
        let result = eval_op(&node.op, &args).map_err(fail)?;
        if !conforms(&out.ty, &result, &mut symbols) {
            let msg = format!(
                "interpreter produced {} but the graph records {}",
                describe(&result),
                out.ty
            );
            return Err(fail(OpsError::invalid(node.op.name(), msg)));
        }
        env[node.output.index()] = Slot::Owned(result);
        for &i in &node.inputs {
            if last_use[i.index()] == Some(idx) {
                env[i.index()] = Slot::Empty;
            }
        }
    }
    g.outputs
        .iter()
        .map(|&o| {
            materialize(g, &mut env, o)?;
            env[o.index()].get().cloned().ok_or_else(|| {
                OpsError::invalid(
                    "graph",
                    format!("output %{} is never computed", g.value(o).name),
                )
            })
        })
        .collect()
}

/// Index of the last node reading each value; `None` for graph outputs
/// (kept to the end) and unread values.
fn last_uses(g: &Graph) -> Vec<Option<usize>> {
    let mut last = vec![None; g.values.len()];
    for (idx, node) in g.nodes.iter().enumerate() {
        for &i in &node.inputs {
            last[i.index()] = Some(idx);
        }
    }
    for &o in &g.outputs {
        last[o.index()] = None;
    }
    last
}

/// Makes value `id` available: decodes a constant on first use, fails for a
/// value read before the node defining it ran.
fn materialize(g: &Graph, env: &mut [Slot], id: ValueId) -> Result<()> {
    let slot = env
        .get_mut(id.index())
        .ok_or_else(|| OpsError::invalid("graph", format!("value {id:?} does not exist")))?;
    if slot.get().is_some() {
        return Ok(());
    }
    let v = g.value(id);
    match &v.def {
        ValueDef::Const(t) => {
            *slot =
                Slot::Owned(Value::from_tensor(t).map_err(|e| {
                    OpsError::invalid("graph", format!("constant %{}: {e}", v.name))
                })?);
            Ok(())
        }
        _ => Err(OpsError::invalid(
            "graph",
            format!("value %{} is read before it is computed", v.name),
        )),
    }
}

/// True when `v` has type `ty` (int4 values held widened, see
/// [`m4c_ir::DType::unpacked`]), binding symbolic dimensions on first sight.
fn conforms(ty: &TensorType, v: &Value, symbols: &mut HashMap<String, usize>) -> bool {
    ty.dtype.unpacked() == v.dtype()
        && ty.rank() == v.shape().len()
        && ty.dims.iter().zip(v.shape()).all(|(d, &n)| match d {
            Dim::Fixed(k) => *k == n,
            Dim::Sym(s) => *symbols.entry(s.clone()).or_insert(n) == n,
        })
}

fn describe(v: &Value) -> String {
    let dims: Vec<String> = v.shape().iter().map(|n| n.to_string()).collect();
    format!("{}[{}]", v.dtype(), dims.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use m4c_ir::{DType, Op, Tensor};
    use ndarray::{arr1, ArrayD, IxDyn};

    fn graph() -> Graph {
        // y = exp(x) + c, z = y * y
        let mut g = Graph::new("demo");
        let x = g.add_input(
            "x",
            TensorType {
                dtype: DType::F32,
                dims: vec![Dim::Sym("n".into())],
            },
        );
        let c = g.add_const("c", Tensor::from_f32(&[1], &[1.0]));
        let e = g.add_node(Op::Exp, &[x], "e").unwrap();
        let y = g.add_node(Op::Add, &[e, c], "y").unwrap();
        let z = g.add_node(Op::Mul, &[y, y], "z").unwrap();
        g.outputs = vec![z, y];
        g
    }

    #[test]
    fn runs_and_returns_outputs_in_order() {
        let x = Value::F32(arr1(&[0.0, 1.0]).into_dyn());
        let out = run_graph(&graph(), &[x]).unwrap();
        let e1 = 1f32.exp() + 1.0;
        assert_eq!(
            out,
            vec![
                Value::F32(arr1(&[4.0, e1 * e1]).into_dyn()),
                Value::F32(arr1(&[2.0, e1]).into_dyn())
            ]
        );
    }

    #[test]
    fn input_mismatches_name_the_input() {
        let g = graph();
        let wrong = Value::I32(ArrayD::zeros(IxDyn(&[2])));
        assert_eq!(
            run_graph(&g, &[wrong]).unwrap_err().to_string(),
            "input `x`: expected f32[n], got i32[2]"
        );
        let rank = Value::F32(ArrayD::zeros(IxDyn(&[2, 1])));
        assert!(run_graph(&g, &[rank]).is_err());
        assert!(run_graph(&g, &[])
            .unwrap_err()
            .to_string()
            .contains("takes 1 inputs, 0 given"));
    }

    #[test]
    fn node_errors_name_the_node() {
        let mut g = Graph::new("gather");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[2]));
        let i = g.add_const("i", Tensor::from_i64(&[1], &[5]));
        let y = g
            .add_node(Op::Gather { axis: 0 }, &[x, i], "picked")
            .unwrap();
        g.outputs = vec![y];
        let e = run_graph(&g, &[Value::F32(arr1(&[1.0, 2.0]).into_dyn())]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "node %picked (Gather): Gather: index 5 out of range for axis 0 of size 2"
        );
    }
}
