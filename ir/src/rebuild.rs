//! Copying a graph node by node into a new one while replacing some nodes:
//! the scaffolding every graph-to-graph rewrite outside the optimiser needs
//! (decomposition, LoRA attach, LoRA slots). It keeps the map from old
//! value ids to new ones and reports a value used before its definition as
//! an error instead of trusting the source graph's order.

use crate::{Graph, IrError, Node, ValueId};

/// A graph being rebuilt from `src`: inputs first, then whatever the caller
/// adds, then (after [`Rebuild::copy_constants`]) the constants and nodes.
pub struct Rebuild<'g> {
    src: &'g Graph,
    /// The graph under construction; callers add nodes and inputs to it.
    pub out: Graph,
    map: Vec<Option<ValueId>>,
}

impl<'g> Rebuild<'g> {
    /// Starts a copy of `src` holding its inputs (same names, types, order).
    pub fn new(src: &'g Graph) -> Self {
        let mut out = Graph::new(src.name.clone());
        let mut map = vec![None; src.values.len()];
        for &i in &src.inputs {
            let v = src.value(i);
            if let Some(slot) = map.get_mut(i.index()) {
                *slot = Some(out.add_input(v.name.clone(), v.ty.clone()));
            }
        }
        Rebuild { src, out, map }
    }

    /// Copies every constant of the source (weights are shared, not copied).
    pub fn copy_constants(&mut self) {
        for (id, t) in self.src.constant_tensors() {
            let v = self.src.value(id);
            self.map[id.index()] = Some(self.out.add_const(v.name.clone(), t.clone()));
        }
    }

    /// The new ids of `node`'s inputs; an input not yet defined (a source
    /// graph out of topological order) is an error.
    pub fn inputs_of(&self, node: &Node) -> Result<Vec<ValueId>, IrError> {
        node.inputs.iter().map(|&v| self.lookup(v)).collect()
    }

    /// Records that the source value `old` is now `new`.
    pub fn set(&mut self, old: ValueId, new: ValueId) {
        if let Some(slot) = self.map.get_mut(old.index()) {
            *slot = Some(new);
        }
    }

    /// Copies `node` unchanged (its inputs mapped) and records its output.
    pub fn copy_node(&mut self, node: &Node) -> Result<ValueId, IrError> {
        let ins = self.inputs_of(node)?;
        let name = self.src.value(node.output).name.clone();
        let y = self.out.add_node(node.op.clone(), &ins, name)?;
        self.set(node.output, y);
        Ok(y)
    }

    /// Maps the source's outputs and returns the new graph (not verified:
    /// callers verify once they are done).
    pub fn finish(mut self) -> Result<Graph, IrError> {
        let outputs = self
            .src
            .outputs
            .iter()
            .map(|&o| self.lookup(o))
            .collect::<Result<Vec<_>, _>>()?;
        self.out.outputs = outputs;
        Ok(self.out)
    }

    fn lookup(&self, v: ValueId) -> Result<ValueId, IrError> {
        self.map.get(v.index()).copied().flatten().ok_or_else(|| {
            IrError::Verify(format!(
                "value {} is used before it is defined",
                self.src
                    .values
                    .get(v.index())
                    .map_or("?", |x| x.name.as_str())
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Op, TensorType};

    #[test]
    fn copies_a_graph_and_rejects_a_use_before_definition() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[2]));
        let y = g.add_node(Op::Exp, &[x], "y").unwrap();
        g.outputs.push(y);
        let mut rb = Rebuild::new(&g);
        rb.copy_constants();
        for n in &g.nodes {
            rb.copy_node(n).unwrap();
        }
        let copy = rb.finish().unwrap();
        assert_eq!(crate::text::print(&copy), crate::text::print(&g));

        // Nodes skipped: the output is undefined.
        let rb = Rebuild::new(&g);
        let e = rb.finish().unwrap_err().to_string();
        assert!(e.contains("y is used before it is defined"), "{e}");
    }
}
