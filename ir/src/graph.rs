//! The graph: values in SSA form, operations in topological order.

use crate::{infer, IrError, Op, Tensor, TensorType};

/// Index of a value in its [`Graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

impl ValueId {
    /// Position in [`Graph::values`].
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// How a value comes to be.
#[derive(Clone, Debug)]
pub enum ValueDef {
    /// The n-th graph input.
    Input,
    /// A constant (literal or referenced weight).
    Const(Tensor),
    /// The result of the node at this index of [`Graph::nodes`].
    Node(usize),
}

/// A named, typed value.
#[derive(Clone, Debug)]
pub struct Value {
    pub name: String,
    pub ty: TensorType,
    pub def: ValueDef,
}

/// One operation. Its single result is `output`.
#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub output: ValueId,
}

/// A dataflow graph over the IR's operators.
///
/// Nodes are kept in a topological order (every input defined before use),
/// which the builder guarantees and the verifier checks.
///
/// ```
/// use m4c_ir::{DType, Graph, Op, TensorType};
/// let mut g = Graph::new("demo");
/// let x = g.add_input("x", TensorType::fixed(DType::F32, &[2, 3]));
/// let y = g.add_node(Op::Exp, &[x], "y").unwrap();
/// g.outputs.push(y);
/// assert_eq!(g.value(y).ty.to_string(), "f32[2,3]");
/// g.verify().unwrap();
/// ```
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    pub values: Vec<Value>,
    pub nodes: Vec<Node>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

impl Graph {
    /// An empty graph.
    pub fn new(name: impl Into<String>) -> Self {
        Graph {
            name: name.into(),
            ..Default::default()
        }
    }

    /// The value behind an id.
    pub fn value(&self, id: ValueId) -> &Value {
        &self.values[id.index()]
    }

    fn push_value(&mut self, name: String, ty: TensorType, def: ValueDef) -> ValueId {
        let id = ValueId(self.values.len() as u32);
        self.values.push(Value { name, ty, def });
        id
    }

    /// Declares a graph input.
    pub fn add_input(&mut self, name: impl Into<String>, ty: TensorType) -> ValueId {
        let id = self.push_value(name.into(), ty, ValueDef::Input);
        self.inputs.push(id);
        id
    }

    /// Adds a constant value.
    pub fn add_const(&mut self, name: impl Into<String>, tensor: Tensor) -> ValueId {
        let ty = TensorType::fixed(tensor.dtype, &tensor.shape);
        self.push_value(name.into(), ty, ValueDef::Const(tensor))
    }

    /// Appends an operation, inferring its result type from its inputs.
    pub fn add_node(
        &mut self,
        op: Op,
        inputs: &[ValueId],
        name: impl Into<String>,
    ) -> Result<ValueId, IrError> {
        let tys: Vec<&TensorType> = inputs.iter().map(|&i| &self.value(i).ty).collect();
        let ty = infer::infer_type(&op, &tys)?;
        let id = self.push_value(name.into(), ty, ValueDef::Node(self.nodes.len()));
        self.nodes.push(Node {
            op,
            inputs: inputs.to_vec(),
            output: id,
        });
        Ok(id)
    }

    /// The constant behind a value, if it is one.
    pub fn constant(&self, id: ValueId) -> Option<&Tensor> {
        match &self.value(id).def {
            ValueDef::Const(t) => Some(t),
            _ => None,
        }
    }

    /// Every constant value with its tensor, in id order.
    pub fn constant_tensors(&self) -> impl Iterator<Item = (ValueId, &Tensor)> + '_ {
        self.values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| match &v.def {
                ValueDef::Const(t) => Some((ValueId(i as u32), t)),
                _ => None,
            })
    }

    /// Ids of all constant values.
    pub fn constants(&self) -> impl Iterator<Item = ValueId> + '_ {
        self.values
            .iter()
            .enumerate()
            .filter(|(_, v)| matches!(v.def, ValueDef::Const(_)))
            .map(|(i, _)| ValueId(i as u32))
    }

    /// Checks the graph's invariants (see [`crate::verify`]).
    pub fn verify(&self) -> Result<(), IrError> {
        crate::verify::verify(self)
    }
}
