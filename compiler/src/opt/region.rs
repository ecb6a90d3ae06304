//! Regions: equality saturation runs on one slice of the graph at a time
//! (about a transformer block), so that e-graph size, saturation and the
//! extractor's whole-DAG local search (quadratic in the classes) stay
//! bounded on big models.
//!
//! A region is a contiguous range of nodes in topological order, cut right
//! before a MatMul or Conv where the fewest runtime values cross. No
//! recognised pattern has a matrix product inside it (LayerNorm, softmax,
//! GELU lie between products), and the fewest crossings keep the products
//! of one input (Q/K/V, gate/up, a LoRA branch and its base) together:
//! between them that input and the first results are live as well.
//! [`Stitcher`] cuts
//! each region out as a graph of its own (values from earlier regions
//! become inputs, or constants when they were folded), and pastes the
//! optimised region back.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use m4c_ir::{Graph, Unit, ValueDef, ValueId};

use super::OptError;

/// Splits `g`'s nodes into ranges of at most `budget` nodes (at least half
/// of it, but for the last), each cut before a matrix product where the
/// fewest values cross (anywhere in the window when it has no product).
pub fn split(g: &Graph, budget: usize) -> Vec<Range<usize>> {
    let n = g.nodes.len();
    let budget = budget.max(2);
    // crossing[i]: runtime values defined before node i and used from i on.
    let mut diff = vec![0i64; n + 2];
    let last = last_uses(g);
    for (i, node) in g.nodes.iter().enumerate() {
        let end = last[node.output.index()].min(n);
        if end > i {
            diff[i + 1] += 1;
            diff[end + 1] -= 1;
        }
    }
    let mut crossing = vec![0i64; n + 1];
    let mut acc = 0;
    for (i, c) in crossing.iter_mut().enumerate() {
        acc += diff[i];
        *c = acc;
    }
    let mut ranges = vec![];
    let mut start = 0;
    while n - start > budget {
        let window = start + budget / 2..=start + budget;
        let before_matrix = |i: &usize| g.nodes[*i].op.kind().unit() == Unit::Matrix;
        let best = |w: &mut dyn Iterator<Item = usize>| {
            w.min_by_key(|&i| (crossing[i], std::cmp::Reverse(i)))
        };
        #[allow(
            clippy::expect_used,
            reason = "an inclusive range a..=b with a <= b is never empty"
        )]
        let cut = best(&mut window.clone().filter(before_matrix))
            .or_else(|| best(&mut window.clone()))
            .expect("non-empty window");
        ranges.push(start..cut);
        start = cut;
    }
    ranges.push(start..n);
    ranges
}

/// The index of the last node using each value (`usize::MAX` for graph
/// outputs, 0 for unused values).
fn last_uses(g: &Graph) -> Vec<usize> {
    let mut last = vec![0usize; g.values.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        for v in &node.inputs {
            last[v.index()] = last[v.index()].max(i);
        }
    }
    for o in &g.outputs {
        last[o.index()] = usize::MAX;
    }
    last
}

/// One region as a graph of its own.
pub struct Cut {
    pub graph: Graph,
    /// The source value behind each input of `graph`.
    inputs: Vec<ValueId>,
    /// The source value behind each output of `graph`.
    outputs: Vec<ValueId>,
}

/// Builds the optimised graph region by region.
pub struct Stitcher<'a> {
    src: &'a Graph,
    last: Vec<usize>,
    out: Graph,
    /// The value of `out` each source value became.
    map: Vec<Option<ValueId>>,
    used: HashSet<String>,
    /// Names of `src`'s constants.
    src_consts: HashSet<String>,
    /// Source constants already in `out`, by name (shared by regions).
    consts: HashMap<String, ValueId>,
}

impl<'a> Stitcher<'a> {
    /// Starts with `src`'s inputs.
    pub fn new(src: &'a Graph) -> Self {
        let mut s = Stitcher {
            src,
            last: last_uses(src),
            out: Graph::new(src.name.clone()),
            map: vec![None; src.values.len()],
            used: HashSet::new(),
            src_consts: src.constants().map(|c| src.value(c).name.clone()).collect(),
            consts: HashMap::new(),
        };
        for &i in &src.inputs {
            let v = src.value(i);
            s.used.insert(v.name.clone());
            s.map[i.index()] = Some(s.out.add_input(v.name.clone(), v.ty.clone()));
        }
        s
    }

    /// Cuts out the nodes in `range` (which must follow the regions
    /// already pasted).
    #[allow(
        clippy::expect_used,
        reason = "the source graph is verified: its nodes type-check in order"
    )]
    pub fn cut(&self, range: Range<usize>) -> Cut {
        let src = self.src;
        let mut g = Graph::new(format!("{}[{}..{}]", src.name, range.start, range.end));
        let mut local: HashMap<ValueId, ValueId> = HashMap::new();
        let mut inputs = vec![];
        for node in &src.nodes[range.clone()] {
            for &i in &node.inputs {
                if local.contains_key(&i) {
                    continue;
                }
                let id = match self.map[i.index()] {
                    Some(o) => {
                        let v = self.out.value(o);
                        match &v.def {
                            ValueDef::Const(t) => g.add_const(v.name.clone(), t.clone()),
                            _ => {
                                inputs.push(i);
                                g.add_input(v.name.clone(), v.ty.clone())
                            }
                        }
                    }
                    None => {
                        let v = src.value(i);
                        let ValueDef::Const(t) = &v.def else {
                            unreachable!("regions are pasted in order")
                        };
                        g.add_const(v.name.clone(), t.clone())
                    }
                };
                local.insert(i, id);
            }
            let ins: Vec<ValueId> = node.inputs.iter().map(|i| local[i]).collect();
            let name = src.value(node.output).name.clone();
            let id = g
                .add_node(node.op.clone(), &ins, name)
                .expect("a node of a verified graph");
            local.insert(node.output, id);
        }
        let mut outputs = vec![];
        for node in &src.nodes[range.clone()] {
            if self.last[node.output.index()] >= range.end {
                outputs.push(node.output);
                g.outputs.push(local[&node.output]);
            }
        }
        Cut {
            graph: g,
            inputs,
            outputs,
        }
    }

    fn unique(&mut self, name: &str) -> String {
        let mut n = name.to_string();
        let mut k = 1;
        while !self.used.insert(n.clone()) {
            n = format!("{name}#{k}");
            k += 1;
        }
        n
    }

    /// Pastes `done`, the optimised `cut.graph`.
    pub fn paste(&mut self, cut: &Cut, done: &Graph) -> Result<(), OptError> {
        let mut map: Vec<Option<ValueId>> = vec![None; done.values.len()];
        for (k, &i) in done.inputs.iter().enumerate() {
            map[i.index()] = self.map[cut.inputs[k].index()];
        }
        for id in done.constants() {
            let v = done.value(id);
            let ValueDef::Const(t) = &v.def else {
                continue;
            };
            let shared = self.consts.get(&v.name).copied();
            map[id.index()] = Some(match shared {
                Some(o) => o,
                None => {
                    let name = self.unique(&v.name);
                    let o = self.out.add_const(name.clone(), t.clone());
                    if self.src_consts.contains(&v.name) {
                        self.consts.insert(v.name.clone(), o);
                    }
                    o
                }
            });
        }
        for node in &done.nodes {
            let ins = node
                .inputs
                .iter()
                .map(|i| {
                    map[i.index()].ok_or_else(|| {
                        OptError::Internal(format!(
                            "stitching regions: {} is used before it is defined",
                            done.value(*i).name
                        ))
                    })
                })
                .collect::<Result<Vec<ValueId>, _>>()?;
            let name = self.unique(&done.value(node.output).name);
            let o = self
                .out
                .add_node(node.op.clone(), &ins, name)
                .map_err(|e| OptError::Internal(format!("stitching regions: {e}")))?;
            map[node.output.index()] = Some(o);
        }
        for (k, &o) in done.outputs.iter().enumerate() {
            self.map[cut.outputs[k].index()] = map[o.index()];
        }
        Ok(())
    }

    /// The stitched graph with `src`'s outputs.
    pub fn finish(mut self) -> Result<Graph, OptError> {
        let mut outputs = vec![];
        for &o in &self.src.outputs {
            let id = match (self.map[o.index()], &self.src.value(o).def) {
                (Some(id), _) => id,
                (None, ValueDef::Const(t)) => {
                    let name = self.unique(&self.src.value(o).name);
                    self.out.add_const(name, t.clone())
                }
                (None, _) => {
                    return Err(OptError::Internal(format!(
                        "output `{}` not produced by any region",
                        self.src.value(o).name
                    )))
                }
            };
            outputs.push(id);
        }
        self.out.outputs = outputs;
        crate::passes::dce(&mut self.out);
        self.out
            .verify()
            .map_err(|e| OptError::Internal(format!("stitched graph: {e}")))?;
        Ok(self.out)
    }
}
