//! DAG-aware greedy extraction.
//!
//! egg's stock extractor sums a node's children's costs, so a value used
//! twice is paid twice, which on real graphs (an input feeding Q, K and V;
//! one fused MatMul feeding three slices) picks the wrong forms. Here every
//! candidate carries the *set* of e-classes it needs with each one's own
//! cost, and a candidate's cost is the sum over the union of its children's
//! sets: each shared node counts once. Iterated to a fixpoint (greedy, not
//! optimal; ILP extraction would be exact).
//!
//! Greedy choices are made class by class, so a node that only pays off
//! when several classes share it (one fused MatMul feeding three slices)
//! is never picked. A local search follows: for each e-class, switch every
//! class that can use it to a node that does, all at once, and keep the
//! switch when the whole DAG's cost drops.
//!
//! Costs: a runtime node costs its roofline time; constant nodes cost
//! nothing at run time, but a [`Constness::Mixed`] constant computed by an
//! operator (a private copy of backbone weights) costs `penalty_ns_per_elem`
//! per element once, charged where a runtime node consumes it.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use egg::{Id, Language};
use m4c_ir::op::elements;
use m4c_ir::TensorType;

use super::cost::CostModel;
use super::lang::{Constness, ENode, EG};

/// The chosen node of every reachable e-class and the total cost.
pub struct Extraction {
    pub choice: HashMap<Id, ENode>,
    pub cost_ns: f64,
}

struct Best {
    node: usize,
    set: Rc<BTreeMap<Id, f64>>,
    total: f64,
}

/// Extracts the cheapest DAG for `roots`. `penalty` is `None` to charge
/// nothing for private weight copies, else ns per element by dtype.
pub fn extract(
    eg: &EG,
    roots: &[Id],
    model: &dyn CostModel,
    penalty: Option<&dyn Fn(&TensorType) -> f64>,
) -> Extraction {
    let mut classes: Vec<Id> = eg.classes().map(|c| c.id).collect();
    classes.sort();
    let mut best: HashMap<Id, Best> = HashMap::new();
    for _pass in 0..100 {
        let mut changed = false;
        for &class in &classes {
            for (idx, node) in eg[class].nodes.iter().enumerate() {
                let Some((set, total)) = candidate(eg, class, node, &best, model, penalty) else {
                    continue;
                };
                let better = best.get(&class).is_none_or(|b| total < b.total - 1e-9);
                if better {
                    best.insert(
                        class,
                        Best {
                            node: idx,
                            set: Rc::new(set),
                            total,
                        },
                    );
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let roots: Vec<Id> = roots.iter().map(|&r| eg.find(r)).collect();
    let mut pick: HashMap<Id, usize> = best.iter().map(|(c, b)| (*c, b.node)).collect();
    let ctx = Dag { eg, model, penalty };
    let mut cost = ctx.cost(&roots, &pick).unwrap_or(f64::INFINITY);
    for _round in 0..4 {
        let mut improved = false;
        for &shared in &classes {
            let Some(trial) = ctx.adopt(shared, &roots, &pick) else {
                continue;
            };
            if let Some(c) = ctx.cost(&roots, &trial) {
                if c < cost - 1e-9 {
                    (cost, pick, improved) = (c, trial, true);
                }
            }
        }
        if !improved {
            break;
        }
    }
    let mut choice = HashMap::new();
    let mut stack = roots.clone();
    while let Some(c) = stack.pop() {
        if choice.contains_key(&c) {
            continue;
        }
        let Some(&i) = pick.get(&c) else { continue };
        let node = eg[c].nodes[i].clone();
        stack.extend(node.children().iter().map(|&k| eg.find(k)));
        choice.insert(c, node);
    }
    Extraction {
        choice,
        cost_ns: cost,
    }
}

/// Whole-DAG costing of a selection (class → node index).
struct Dag<'a> {
    eg: &'a EG,
    model: &'a dyn CostModel,
    penalty: Option<&'a dyn Fn(&TensorType) -> f64>,
}

impl Dag<'_> {
    /// The cost of the DAG reachable from `roots`, or `None` when the
    /// selection is cyclic or incomplete.
    fn cost(&self, roots: &[Id], pick: &HashMap<Id, usize>) -> Option<f64> {
        // 0 = unseen, 1 = on the DFS stack, 2 = done.
        let mut state: HashMap<Id, u8> = HashMap::new();
        let mut penalised: BTreeMap<Id, f64> = BTreeMap::new();
        let mut total = 0.0;
        let mut stack: Vec<(Id, bool)> = roots.iter().map(|&r| (r, false)).collect();
        while let Some((c, done)) = stack.pop() {
            if done {
                state.insert(c, 2);
                continue;
            }
            match state.get(&c) {
                Some(1) => return None,
                Some(_) => continue,
                None => {}
            }
            state.insert(c, 1);
            stack.push((c, true));
            let node = &self.eg[c].nodes[*pick.get(&c)?];
            let children: Vec<Id> = node.children().iter().map(|&k| self.eg.find(k)).collect();
            total += own_cost(self.eg, c, node, &children, self.model);
            if let (Some(p), false) = (self.penalty, self.eg[c].data.constness.is_const()) {
                for &k in &children {
                    let materialised = matches!(self.eg[k].nodes[*pick.get(&k)?], ENode::Op(..));
                    if self.eg[k].data.constness == Constness::Mixed && materialised {
                        let ty = &self.eg[k].data.ty;
                        penalised.insert(k, p(ty) * elements(ty) as f64);
                    }
                }
            }
            for k in children {
                if state.get(&k) == Some(&1) {
                    return None;
                }
                stack.push((k, false));
            }
        }
        Some(total + penalised.values().sum::<f64>())
    }

    /// `pick` with every other class that has a node using `shared`
    /// switched to that node; `None` when no class switches.
    fn adopt(
        &self,
        shared: Id,
        roots: &[Id],
        pick: &HashMap<Id, usize>,
    ) -> Option<HashMap<Id, usize>> {
        let mut trial = pick.clone();
        let mut switched = false;
        let reachable = self.reachable(roots, pick);
        for p in self.eg[shared].parents().map(|p| self.eg.find(p)) {
            if p == shared || !reachable.contains(&p) {
                continue;
            }
            let uses = |n: &ENode| n.children().iter().any(|&k| self.eg.find(k) == shared);
            if uses(&self.eg[p].nodes[pick[&p]]) {
                continue;
            }
            if let Some(i) = self.eg[p].nodes.iter().position(uses) {
                trial.insert(p, i);
                switched = true;
            }
        }
        switched.then_some(trial)
    }

    fn reachable(&self, roots: &[Id], pick: &HashMap<Id, usize>) -> std::collections::HashSet<Id> {
        let mut seen = std::collections::HashSet::new();
        let mut stack = roots.to_vec();
        while let Some(c) = stack.pop() {
            if !seen.insert(c) {
                continue;
            }
            if let Some(&i) = pick.get(&c) {
                stack.extend(
                    self.eg[c].nodes[i]
                        .children()
                        .iter()
                        .map(|&k| self.eg.find(k)),
                );
            }
        }
        seen
    }
}

/// The own cost of a node: run time for runtime nodes, nothing for leaves
/// and compile-time constants.
fn own_cost(eg: &EG, class: Id, node: &ENode, children: &[Id], model: &dyn CostModel) -> f64 {
    match node {
        ENode::Op(k, _) if !eg[class].data.constness.is_const() => {
            let tys: Vec<&TensorType> = children.iter().map(|&c| &eg[c].data.ty).collect();
            model.op_time_ns(&k.op, &tys, &eg[class].data.ty)
        }
        _ => 0.0,
    }
}

fn candidate(
    eg: &EG,
    class: Id,
    node: &ENode,
    best: &HashMap<Id, Best>,
    model: &dyn CostModel,
    penalty: Option<&dyn Fn(&TensorType) -> f64>,
) -> Option<(BTreeMap<Id, f64>, f64)> {
    let children: Vec<Id> = node.children().iter().map(|&c| eg.find(c)).collect();
    let mut set: BTreeMap<Id, f64> = BTreeMap::new();
    for c in &children {
        let b = best.get(c)?;
        if b.set.contains_key(&class) {
            return None;
        }
        for (k, v) in b.set.iter() {
            let e = set.entry(*k).or_insert(0.0);
            *e = e.max(*v);
        }
    }
    if !eg[class].data.constness.is_const() {
        if let Some(penalty) = penalty {
            for &c in &children {
                let materialised = matches!(eg[c].nodes[best[&c].node], ENode::Op(..));
                if eg[c].data.constness == Constness::Mixed && materialised {
                    let ty = &eg[c].data.ty;
                    let p = penalty(ty) * elements(ty) as f64;
                    let e = set.entry(c).or_insert(0.0);
                    *e = e.max(p);
                }
            }
        }
    }
    set.insert(class, own_cost(eg, class, node, &children, model));
    let total = set.values().sum();
    Some((set, total))
}
