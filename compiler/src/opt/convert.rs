//! Graph ⇄ e-graph. A graph goes in node by node through `EGraph::add`
//! (never through s-expression strings, which would duplicate shared
//! sub-graphs); hash-consing merges identical nodes on the way (CSE). An
//! extraction comes back as a graph in which constant sub-expressions are
//! evaluated by the reference interpreter and stored as new constants
//! (constant folding: folded LoRA weights, concatenated fused weights).

use std::collections::{HashMap, HashSet};

use egg::{Id, Language};
use m4c_ir::{DType, Graph, ValueDef, ValueId};
use m4c_ops::{eval_op, Value};

use super::error::OptError;
use super::extract::Extraction;
use super::lang::{Constness, ENode, LeafInfo, OpKey, OptAnalysis, EG, LITERAL_MAX_ELEMS};

/// A graph loaded into an e-graph.
pub struct Loaded {
    pub eg: EG,
    /// The e-class of every value of the source graph.
    pub class_of: Vec<Id>,
    /// Nodes that hash-consing merged into an existing identical node.
    pub cse_merged: usize,
}

/// Constness of a graph constant: adapter factors are named in `adapter`,
/// `mixed` names constants already holding a folded (private) weight.
pub struct Provenance<'a> {
    pub adapter: &'a HashSet<String>,
    pub mixed: &'a HashSet<String>,
}

/// Loads `g` into a fresh e-graph.
pub fn load(g: &Graph, prov: &Provenance) -> Loaded {
    let mut eg = EG::new(OptAnalysis::default());
    let mut class_of = vec![Id::from(0usize); g.values.len()];
    let mut cse_merged = 0;
    for (i, v) in g.values.iter().enumerate() {
        let (constness, scalar) = match &v.def {
            ValueDef::Node(_) => continue,
            ValueDef::Input => (Constness::Runtime, None),
            ValueDef::Const(t) => {
                let c = if prov.mixed.contains(&v.name) {
                    Constness::Mixed
                } else if prov.adapter.contains(&v.name) {
                    Constness::Adapter
                } else if t.len() <= LITERAL_MAX_ELEMS {
                    Constness::Literal
                } else {
                    Constness::Backbone
                };
                let scalar = (t.len() == 1).then(|| scalar_value(t)).flatten();
                (c, scalar)
            }
        };
        let leaf = eg.analysis.leaves.len() as u32;
        eg.analysis.leaves.push(LeafInfo {
            value: ValueId(i as u32),
            ty: v.ty.clone(),
            constness,
            scalar,
        });
        class_of[i] = eg.add(ENode::Leaf(leaf));
    }
    for node in &g.nodes {
        let children: Vec<Id> = node.inputs.iter().map(|v| class_of[v.index()]).collect();
        let enode = ENode::Op(OpKey::new(node.op.clone()), children);
        if eg.lookup(enode.clone()).is_some() {
            cse_merged += 1;
        }
        class_of[node.output.index()] = eg.add(enode);
    }
    eg.rebuild();
    Loaded {
        eg,
        class_of,
        cse_merged,
    }
}

/// Result of turning an extraction back into a graph.
pub struct Rebuilt {
    pub graph: Graph,
    /// Constants computed at compile time from constant sub-expressions.
    pub folded: usize,
    /// Names of folded constants that mix backbone and adapter weights.
    pub mixed: HashSet<String>,
}

/// Builds the extracted graph. Inputs keep their order, values that
/// existed in `src` keep their names (outputs first), new values are named
/// `opt/<Op>_<n>`.
pub fn rebuild(src: &Graph, loaded: &Loaded, ex: &Extraction) -> Result<Rebuilt, OptError> {
    let eg = &loaded.eg;
    let mut names: HashMap<Id, String> = HashMap::new();
    for &o in &src.outputs {
        names
            .entry(eg.find(loaded.class_of[o.index()]))
            .or_insert_with(|| src.value(o).name.clone());
    }
    for (i, v) in src.values.iter().enumerate() {
        names
            .entry(eg.find(loaded.class_of[i]))
            .or_insert_with(|| v.name.clone());
    }
    let mut b = Builder {
        src,
        eg,
        ex,
        names,
        used: HashSet::new(),
        counter: 0,
        emitted: HashMap::new(),
        out: Graph::new(src.name.clone()),
        folded: 0,
        mixed: HashSet::new(),
        fold_budget: m4c_ir::op::FoldBudget::default(),
    };
    for &i in &src.inputs {
        let v = src.value(i);
        let id = b.out.add_input(v.name.clone(), v.ty.clone());
        b.used.insert(v.name.clone());
        b.emitted.insert(eg.find(loaded.class_of[i.index()]), id);
    }
    let mut outputs = vec![];
    for &o in &src.outputs {
        outputs.push(b.emit(eg.find(loaded.class_of[o.index()]))?);
    }
    b.out.outputs = outputs;
    crate::passes::dce(&mut b.out);
    b.out
        .verify()
        .map_err(|e| OptError::Internal(format!("optimised graph: {e}")))?;
    Ok(Rebuilt {
        graph: b.out,
        folded: b.folded,
        mixed: b.mixed,
    })
}

struct Builder<'a> {
    src: &'a Graph,
    eg: &'a EG,
    ex: &'a Extraction,
    names: HashMap<Id, String>,
    used: HashSet<String>,
    counter: usize,
    emitted: HashMap<Id, ValueId>,
    out: Graph,
    folded: usize,
    mixed: HashSet<String>,
    /// The arithmetic folding may still spend on this graph.
    fold_budget: m4c_ir::op::FoldBudget,
}

impl Builder<'_> {
    fn name(&mut self, class: Id, op: &str) -> String {
        let base = match self.names.get(&class) {
            Some(n) => n.clone(),
            None => {
                self.counter += 1;
                format!("opt/{op}_{}", self.counter)
            }
        };
        let mut name = base.clone();
        let mut k = 1;
        while !self.used.insert(name.clone()) {
            name = format!("{base}#{k}");
            k += 1;
        }
        name
    }

    /// Emits the chosen node of `class` (children first, iteratively).
    fn emit(&mut self, root: Id) -> Result<ValueId, OptError> {
        let mut stack = vec![(root, false)];
        while let Some((class, ready)) = stack.pop() {
            if self.emitted.contains_key(&class) {
                continue;
            }
            let node = self.ex.choice.get(&class).ok_or_else(|| {
                OptError::Internal(format!("extraction has no choice for e-class {class}"))
            })?;
            let children: Vec<Id> = node.children().iter().map(|&c| self.eg.find(c)).collect();
            if !ready {
                stack.push((class, true));
                stack.extend(children.iter().map(|&c| (c, false)));
                continue;
            }
            let id = match node {
                ENode::Leaf(i) => {
                    let leaf = &self.eg.analysis.leaves[*i as usize];
                    let v = self.src.value(leaf.value);
                    let ValueDef::Const(t) = &v.def else {
                        return Err(OptError::Internal(format!("input `{}` not bound", v.name)));
                    };
                    let name = self.name(class, "Const");
                    self.out.add_const(name, t.clone())
                }
                ENode::Op(k, _) => {
                    let ins: Vec<ValueId> = children.iter().map(|c| self.emitted[c]).collect();
                    let name = self.name(class, k.op.name());
                    let data = &self.eg[class].data;
                    // A quantised weight stays a weight: dequantising it
                    // at compile time would store it in f32 (and what
                    // reads a kept node is kept too); a large expansion
                    // of small constants stays a node too, and so does
                    // what the graph's fold budget cannot pay for.
                    let tys: Vec<&m4c_ir::TensorType> =
                        ins.iter().map(|&i| &self.out.value(i).ty).collect();
                    if data.constness.is_const()
                        && ins.iter().all(|&i| self.out.constant(i).is_some())
                        && self.fold_budget.take(&k.op, &tys, &data.ty)
                    {
                        let t = self.fold(&k.op, &ins, &name, &data.ty)?;
                        if data.constness == Constness::Mixed {
                            self.mixed.insert(name.clone());
                        }
                        self.folded += 1;
                        self.out.add_const(name, t)
                    } else {
                        self.out
                            .add_node(k.op.clone(), &ins, name)
                            .map_err(|e| OptError::Internal(e.to_string()))?
                    }
                }
            };
            self.emitted.insert(class, id);
        }
        Ok(self.emitted[&root])
    }

    fn fold(
        &self,
        op: &m4c_ir::Op,
        ins: &[ValueId],
        name: &str,
        ty: &m4c_ir::TensorType,
    ) -> Result<m4c_ir::Tensor, OptError> {
        let fail = |e: String| OptError::Fold {
            value: name.to_string(),
            reason: e,
        };
        let vals: Vec<Value> = ins
            .iter()
            .map(|&i| {
                let t = self
                    .out
                    .constant(i)
                    .ok_or_else(|| fail("operand is not constant".into()))?;
                Value::from_tensor(t).map_err(|e| fail(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let refs: Vec<&Value> = vals.iter().collect();
        Ok(eval_op(op, &refs)
            .map_err(|e| fail(e.to_string()))?
            .to_tensor_as(ty.dtype))
    }
}

/// The value of a one-element float or integer constant (integer zero
/// points included, which the quantisation rules compare with the float
/// ones of dequantisation).
fn scalar_value(t: &m4c_ir::Tensor) -> Option<f64> {
    match t.dtype {
        DType::F32 => t.to_f32_vec().ok()?.first().map(|&v| f64::from(v)),
        DType::I8 => t.to_i8_vec().ok()?.first().map(|&v| f64::from(v)),
        DType::U8 => t.to_u8_vec().ok()?.first().map(|&v| f64::from(v)),
        DType::I32 => t.to_i32_vec().ok()?.first().map(|&v| f64::from(v)),
        DType::I64 => t.to_i64_vec().ok()?.first().map(|&v| v as f64),
        _ => None,
    }
}
