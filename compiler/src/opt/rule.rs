//! Rewrite rules written in Rust over the e-graph, and their adapter to
//! egg's [`Searcher`]/[`Applier`] so that egg's [`egg::Runner`] schedules them.
//!
//! IR operators carry attributes (axes, permutations, epsilons) and every
//! rule is guarded by shapes and constant values, which string patterns
//! cannot express; a rule is therefore a function from an e-class to the
//! alternatives it proves equal ([`Rewrite`]s). Both operand orders of a
//! commutative operator are written out by [`binary`] — the rule set has no
//! general commutativity or associativity rule, which would blow the e-graph
//! up for no gain.

use std::sync::Arc;

use egg::{Applier, Id, PatternAst, SearchMatches, Searcher, Subst, Symbol, Var};
use m4c_ir::{Op, OpKind};

use super::lang::{node_type, ENode, OpKey, OptAnalysis, EG};

/// A reference inside an [`Alt`]: an existing e-class or an earlier node of
/// the same alternative.
#[derive(Clone, Copy, Debug)]
pub enum Ref {
    Class(Id),
    New(usize),
}

/// A small expression to add to the e-graph; its last node (or `root`) is
/// the value proven equal to the matched e-class.
#[derive(Clone, Debug)]
pub struct Alt {
    nodes: Vec<(Op, Vec<Ref>)>,
    root: Option<Ref>,
}

impl Alt {
    /// An alternative that is an existing e-class (e.g. `transpose∘transpose = x`).
    pub fn class(id: Id) -> Self {
        Alt {
            nodes: vec![],
            root: Some(Ref::Class(id)),
        }
    }

    /// An empty alternative to build with [`Alt::push`].
    pub fn build() -> Self {
        Alt {
            nodes: vec![],
            root: None,
        }
    }

    /// Appends a node; it becomes the root.
    pub fn push(&mut self, op: Op, children: Vec<Ref>) -> Ref {
        self.nodes.push((op, children));
        let r = Ref::New(self.nodes.len() - 1);
        self.root = Some(r);
        r
    }

    /// Adds the nodes (type-checking each) and returns the root's e-class,
    /// or `None` when a node does not type-check.
    fn add_to(&self, eg: &mut EG) -> Option<Id> {
        let mut ids: Vec<Id> = Vec::with_capacity(self.nodes.len());
        let resolve = |r: &Ref, ids: &[Id]| match r {
            Ref::Class(c) => *c,
            Ref::New(i) => ids[*i],
        };
        for (op, children) in &self.nodes {
            let cs: Vec<Id> = children.iter().map(|r| resolve(r, &ids)).collect();
            node_type(eg, op, &cs)?;
            ids.push(eg.add(ENode::Op(OpKey::new(op.clone()), cs)));
        }
        self.root.map(|r| resolve(&r, &ids))
    }
}

/// One rewrite found by a rule: `target` equals `alt`.
pub struct Rewrite {
    pub target: Id,
    pub alt: Alt,
}

/// A rewrite rule: given an e-class, the rewrites it proves.
pub trait Rule: Send + Sync {
    /// Name used in reports.
    fn name(&self) -> &'static str;
    /// The rewrites for `class` (empty when the rule does not match).
    fn rewrites(&self, eg: &EG, class: Id) -> Vec<Rewrite>;
}

/// Wraps a [`Rule`] as egg's searcher and applier. The searcher only marks
/// matching e-classes; the applier re-derives the rewrites on the current
/// e-graph, so no state travels through egg's substitutions.
#[derive(Clone)]
pub struct EggRule(pub Arc<dyn Rule>);

impl Searcher<ENode, OptAnalysis> for EggRule {
    fn search_eclass_with_limit(
        &self,
        eg: &EG,
        eclass: Id,
        limit: usize,
    ) -> Option<SearchMatches<'_, ENode>> {
        (limit > 0 && !self.0.rewrites(eg, eclass).is_empty()).then(|| SearchMatches {
            eclass,
            substs: vec![Subst::with_capacity(0)],
            ast: None,
        })
    }

    fn vars(&self) -> Vec<Var> {
        vec![]
    }
}

impl Applier<ENode, OptAnalysis> for EggRule {
    fn apply_one(
        &self,
        eg: &mut EG,
        eclass: Id,
        _subst: &Subst,
        _ast: Option<&PatternAst<ENode>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        let mut changed = vec![];
        for rw in self.0.rewrites(eg, eclass) {
            if let Some(root) = rw.alt.add_to(eg) {
                if eg.union(rw.target, root) {
                    changed.push(root);
                }
            }
        }
        changed
    }
}

/// The operator nodes of an e-class.
pub fn ops_in(eg: &EG, class: Id) -> impl Iterator<Item = (&Op, &[Id])> {
    eg[class].nodes.iter().filter_map(|n| match n {
        ENode::Op(k, c) => Some((&k.op, c.as_slice())),
        ENode::Leaf(_) => None,
    })
}

/// Operand pairs of the binary `kind` nodes of a class; for operators
/// declared commutative (Add, Mul, Max, Min) both orders.
pub fn binary(eg: &EG, class: Id, kind: OpKind) -> Vec<(Id, Id)> {
    let commutative = kind.info().commutative;
    let mut out = vec![];
    for (op, c) in ops_in(eg, class) {
        if op.kind() == kind && c.len() == 2 {
            out.push((eg.find(c[0]), eg.find(c[1])));
            if commutative {
                out.push((eg.find(c[1]), eg.find(c[0])));
            }
        }
    }
    out
}

/// Operands (with the operator) of the unary `kind` nodes of a class.
pub fn unary(eg: &EG, class: Id, kind: OpKind) -> Vec<(Op, Id)> {
    ops_in(eg, class)
        .filter(|(op, c)| op.kind() == kind && c.len() == 1)
        .map(|(op, c)| (op.clone(), eg.find(c[0])))
        .collect()
}

/// The value of a one-element constant (float or integer).
pub fn scalar(eg: &EG, id: Id) -> Option<f64> {
    eg[id].data.scalar
}

/// True when `v` is within a relative 1e-6 of `want` (exporters round
/// literals such as 1/√2 or 1/n to f32, a relative 6e-8). Relative, so that
/// small literals such as 1/4096 are not confused with 1/4097.
pub fn approx(v: Option<f64>, want: f64) -> bool {
    v.is_some_and(|v| (v - want).abs() <= 1e-6 * want.abs())
}

/// Both operand orders' first operands of the binary `kind` nodes of
/// `class` whose other operand is the constant `want` (e.g. the `t` of
/// `t · 0.5` or `0.5 · t`; for non-commutative ops only `t op want`).
pub fn with_literal(eg: &EG, class: Id, kind: OpKind, want: f64) -> Vec<Id> {
    binary(eg, class, kind)
        .into_iter()
        .filter(|&(_, k)| approx(scalar(eg, k), want))
        .map(|(t, _)| t)
        .collect()
}
