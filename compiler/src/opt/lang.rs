//! The e-graph language over IR operators and its shape/dtype/constness
//! analysis.
//!
//! Nodes are IR operators with their attributes ([`ENode::Op`]) or leaves
//! naming a graph input or constant ([`ENode::Leaf`]). The analysis gives
//! every e-class its tensor type (checked with the IR's own type rules),
//! whether it is known at compile time (and if so, whether it derives from
//! adapter factors, which matters to the LoRA policy), and its value when it
//! is a one-element constant (what pattern guards test).

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use egg::{Analysis, DidMerge, EGraph, Id, Language};
use m4c_ir::{infer_type, Op, TensorType, ValueId};

/// An IR operator with a canonical key, so that it can be hashed, ordered
/// and compared (attributes include floats, which are not `Eq`).
#[derive(Clone, Debug)]
pub struct OpKey {
    pub op: Op,
    key: Arc<str>,
}

impl OpKey {
    /// Wraps an operator.
    pub fn new(op: Op) -> Self {
        let key = format!("{op:?}").into();
        OpKey { op, key }
    }
}

impl PartialEq for OpKey {
    fn eq(&self, o: &Self) -> bool {
        self.key == o.key
    }
}
impl Eq for OpKey {}
impl Hash for OpKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.key.hash(h)
    }
}
impl PartialOrd for OpKey {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for OpKey {
    fn cmp(&self, o: &Self) -> Ordering {
        self.key.cmp(&o.key)
    }
}

/// One e-node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ENode {
    /// The leaf at this index of [`OptAnalysis::leaves`].
    Leaf(u32),
    /// An operator applied to e-classes.
    Op(OpKey, Vec<Id>),
}

/// What [`Language::matches`] compares: the operator or leaf, not children.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Discriminant {
    Leaf(u32),
    Op(Arc<str>),
}

impl Language for ENode {
    type Discriminant = Discriminant;

    fn discriminant(&self) -> Discriminant {
        match self {
            ENode::Leaf(i) => Discriminant::Leaf(*i),
            ENode::Op(k, _) => Discriminant::Op(k.key.clone()),
        }
    }

    fn matches(&self, other: &Self) -> bool {
        self.discriminant() == other.discriminant()
            && self.children().len() == other.children().len()
    }

    fn children(&self) -> &[Id] {
        match self {
            ENode::Leaf(_) => &[],
            ENode::Op(_, c) => c,
        }
    }

    fn children_mut(&mut self) -> &mut [Id] {
        match self {
            ENode::Leaf(_) => &mut [],
            ENode::Op(_, c) => c,
        }
    }
}

/// Whether a value is known before the model runs, and from what.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Constness {
    /// A small literal (at most [`LITERAL_MAX_ELEMS`] elements): neutral.
    Literal,
    /// Computed from backbone weights (and literals).
    Backbone,
    /// Computed from adapter factors only (stored per adapter anyway).
    Adapter,
    /// Mixes backbone weights with adapter factors: materialising it makes a
    /// private copy of backbone weights for one adapter (the LoRA policy's
    /// penalty applies to these).
    Mixed,
    /// Depends on a graph input.
    Runtime,
}

/// Constants up to this many elements are literals, not weights.
pub const LITERAL_MAX_ELEMS: usize = 16;

impl Constness {
    /// True for compile-time values.
    pub fn is_const(self) -> bool {
        self != Constness::Runtime
    }

    /// The constness of an operator applied to values of these constnesses.
    pub fn combine(parts: impl IntoIterator<Item = Constness>) -> Constness {
        let (mut backbone, mut adapter) = (false, false);
        for p in parts {
            match p {
                Constness::Runtime => return Constness::Runtime,
                Constness::Literal => {}
                Constness::Backbone => backbone = true,
                Constness::Adapter => adapter = true,
                Constness::Mixed => (backbone, adapter) = (true, true),
            }
        }
        match (backbone, adapter) {
            (true, true) => Constness::Mixed,
            (true, false) => Constness::Backbone,
            (false, true) => Constness::Adapter,
            (false, false) => Constness::Literal,
        }
    }
}

/// A graph input or constant that the e-graph refers to by index.
#[derive(Clone, Debug)]
pub struct LeafInfo {
    pub value: ValueId,
    pub ty: TensorType,
    pub constness: Constness,
    pub scalar: Option<f64>,
}

/// The analysis data of an e-class.
#[derive(Clone, Debug, PartialEq)]
pub struct Info {
    pub ty: TensorType,
    pub constness: Constness,
    /// The value of a one-element constant (float or integer).
    pub scalar: Option<f64>,
}

/// The e-class analysis: shapes, dtypes and constness.
#[derive(Default)]
pub struct OptAnalysis {
    pub leaves: Vec<LeafInfo>,
}

/// The e-graph type of the optimiser.
pub type EG = EGraph<ENode, OptAnalysis>;

/// The type an operator node would have, or `None` when its operands do
/// not fit (rules call this before adding a node).
pub fn node_type(eg: &EG, op: &Op, children: &[Id]) -> Option<TensorType> {
    let tys: Vec<&TensorType> = children.iter().map(|&c| &eg[c].data.ty).collect();
    infer_type(op, &tys).ok()
}

impl Analysis<ENode> for OptAnalysis {
    type Data = Info;

    fn make(eg: &mut EG, enode: &ENode, _id: Id) -> Info {
        match enode {
            ENode::Leaf(i) => {
                let l = &eg.analysis.leaves[*i as usize];
                Info {
                    ty: l.ty.clone(),
                    constness: l.constness,
                    scalar: l.scalar,
                }
            }
            ENode::Op(k, children) => {
                #[allow(clippy::expect_used, reason = "rewrites add only type-checked nodes")]
                let ty = node_type(eg, &k.op, children)
                    .expect("the optimiser adds only type-checked nodes");
                let constness = Constness::combine(children.iter().map(|&c| eg[c].data.constness));
                Info {
                    ty,
                    constness,
                    scalar: None,
                }
            }
        }
    }

    fn merge(&mut self, a: &mut Info, b: Info) -> DidMerge {
        let mut changed_a = false;
        if b.constness < a.constness {
            a.constness = b.constness;
            changed_a = true;
        }
        if a.scalar.is_none() && b.scalar.is_some() {
            a.scalar = b.scalar;
            changed_a = true;
        }
        let changed_b = a.constness < b.constness || (b.scalar.is_none() && a.scalar.is_some());
        DidMerge(changed_a, changed_b)
    }
}

/// Static shape of an e-class (symbolic dimensions count as 1).
pub fn shape_of(eg: &EG, id: Id) -> Vec<usize> {
    static_dims(&eg[id].data.ty)
}

/// Static dimensions of a type, symbolic ones as 1.
pub fn static_dims(ty: &TensorType) -> Vec<usize> {
    ty.dims
        .iter()
        .map(|d| match d {
            m4c_ir::Dim::Fixed(n) => *n,
            m4c_ir::Dim::Sym(_) => 1,
        })
        .collect()
}
