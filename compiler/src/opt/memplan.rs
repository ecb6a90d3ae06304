//! Static memory planning: liveness intervals of activations, placed in
//! one arena by greedy best-fit in decreasing size order (weights and
//! graph inputs are not in the arena).

use m4c_ir::{Graph, ValueDef};

/// Where each activation lives and what the arena costs.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemoryPlan {
    /// (value index, byte offset, byte size) for each node result.
    pub placements: Vec<(usize, usize, usize)>,
    /// Arena size.
    pub arena_bytes: usize,
    /// Largest sum of simultaneously live activations (a lower bound).
    pub peak_live_bytes: usize,
    /// Sum of all activations (one buffer each, no reuse).
    pub naive_bytes: usize,
}

const ALIGN: usize = 64;

/// Plans the activations of `g` (symbolic dimensions count as 1).
pub fn plan_memory(g: &Graph) -> MemoryPlan {
    let n = g.nodes.len();
    let mut last = vec![0usize; g.values.len()];
    for (idx, node) in g.nodes.iter().enumerate() {
        for i in &node.inputs {
            last[i.index()] = idx;
        }
    }
    for o in &g.outputs {
        last[o.index()] = n;
    }
    // (value, first, last, size)
    let mut bufs: Vec<(usize, usize, usize, usize)> = g
        .values
        .iter()
        .enumerate()
        .filter_map(|(v, val)| match val.def {
            ValueDef::Node(def) => {
                let elems: usize = super::cost::elems(&val.ty) as usize;
                let size = val.ty.dtype.storage_bytes(elems).div_ceil(ALIGN) * ALIGN;
                Some((v, def, last[v].max(def), size))
            }
            _ => None,
        })
        .collect();
    let naive_bytes = bufs.iter().map(|b| b.3).sum();
    let mut live = vec![0usize; n + 1];
    for &(_, a, b, s) in &bufs {
        for l in &mut live[a..=b] {
            *l += s;
        }
    }
    bufs.sort_by(|x, y| y.3.cmp(&x.3).then(x.0.cmp(&y.0)));
    let mut placed: Vec<(usize, usize, usize, usize, usize)> = vec![]; // v, first, last, off, size
    for (v, a, b, s) in bufs {
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|p| p.1 <= b && a <= p.2)
            .map(|p| (p.3, p.3 + p.4))
            .collect();
        busy.sort();
        let mut off = 0;
        for (lo, hi) in busy {
            if off + s <= lo {
                break;
            }
            off = off.max(hi);
        }
        placed.push((v, a, b, off, s));
    }
    let arena_bytes = placed.iter().map(|p| p.3 + p.4).max().unwrap_or(0);
    placed.sort_by_key(|p| p.0);
    MemoryPlan {
        placements: placed.iter().map(|p| (p.0, p.3, p.4)).collect(),
        arena_bytes,
        peak_live_bytes: live.into_iter().max().unwrap_or(0),
        naive_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use m4c_ir::{DType, Op, TensorType};

    #[test]
    fn reuses_dead_buffers_without_overlap() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[16]));
        let a = g.add_node(Op::Exp, &[x], "a").unwrap();
        let b = g.add_node(Op::Exp, &[a], "b").unwrap();
        let c = g.add_node(Op::Exp, &[b], "c").unwrap();
        g.outputs.push(c);
        let p = plan_memory(&g);
        assert_eq!(p.naive_bytes, 3 * 64);
        assert_eq!(p.arena_bytes, 2 * 64);
        // a and c are never live together: they share an offset.
        assert_eq!(p.placements[0].1, p.placements[2].1);
        assert_ne!(p.placements[0].1, p.placements[1].1);
    }
}
