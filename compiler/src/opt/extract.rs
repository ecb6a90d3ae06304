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
//! Costs: a runtime node costs its roofline time; constant nodes cost
//! nothing at run time, but a [`Constness::Mixed`] constant computed by an
//! operator (a private copy of backbone weights) costs `penalty_ns_per_elem`
//! per element once, charged where a runtime node consumes it.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use egg::{Id, Language};
use m4c_ir::TensorType;

use super::cost::{elems, CostModel};
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
    let mut choice = HashMap::new();
    let mut cost = BTreeMap::new();
    let mut stack: Vec<Id> = roots.iter().map(|&r| eg.find(r)).collect();
    while let Some(c) = stack.pop() {
        if choice.contains_key(&c) {
            continue;
        }
        let Some(b) = best.get(&c) else { continue };
        let node = eg[c].nodes[b.node].clone();
        stack.extend(node.children().iter().map(|&k| eg.find(k)));
        cost.extend(b.set.iter().map(|(k, v)| (*k, *v)));
        choice.insert(c, node);
    }
    Extraction {
        choice,
        cost_ns: cost.values().sum(),
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
    let data = &eg[class].data;
    let own = match node {
        ENode::Leaf(_) => 0.0,
        ENode::Op(..) if data.constness.is_const() => 0.0,
        ENode::Op(k, _) => {
            let tys: Vec<&TensorType> = children.iter().map(|&c| &eg[c].data.ty).collect();
            if let Some(penalty) = penalty {
                for &c in &children {
                    let materialised = matches!(best[&c].node_ref(eg, c), ENode::Op(..));
                    if eg[c].data.constness == Constness::Mixed && materialised {
                        let ty = &eg[c].data.ty;
                        let p = penalty(ty) * elems(ty) as f64;
                        let e = set.entry(c).or_insert(0.0);
                        *e = e.max(p);
                    }
                }
            }
            model.op_time_ns(&k.op, &tys, &data.ty)
        }
    };
    set.insert(class, own);
    let total = set.values().sum();
    Some((set, total))
}

impl Best {
    fn node_ref<'a>(&self, eg: &'a EG, class: Id) -> &'a ENode {
        &eg[class].nodes[self.node]
    }
}
