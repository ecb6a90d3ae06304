//! The activation arena of one module, planned before it runs: each node
//! result gets a byte range of one buffer, live from the node that makes it
//! to its last use (outputs: to the end), placed greedily largest first at
//! the lowest offset free for its whole lifetime.

use m4c_ir::{Graph, ValueDef};

/// Alignment of every buffer in the arena.
const ALIGN: usize = 64;

/// Where each activation lives and what the arena costs.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ArenaPlan {
    /// (value index, byte offset, byte size) per node result, in value order.
    pub placements: Vec<(usize, usize, usize)>,
    /// Size of the one arena the module needs.
    pub arena_bytes: usize,
    /// Largest sum of simultaneously live activations (a lower bound).
    pub peak_live_bytes: usize,
    /// One buffer per activation, no reuse.
    pub naive_bytes: usize,
}

/// Plans `g`'s activations; `None` when a node result has a symbolic shape
/// (firmware modules are bound to static shapes when built).
pub fn plan(g: &Graph) -> Option<ArenaPlan> {
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
    // (value, first step, last step, bytes)
    let mut bufs = vec![];
    for (v, val) in g.values.iter().enumerate() {
        if let ValueDef::Node(def) = val.def {
            let elems: usize = val.ty.static_shape()?.iter().product();
            let size = val.ty.dtype.storage_bytes(elems).div_ceil(ALIGN) * ALIGN;
            bufs.push((v, def, last[v].max(def), size));
        }
    }
    let naive_bytes = bufs.iter().map(|b| b.3).sum();
    let mut live = vec![0usize; n + 1];
    for &(_, a, b, s) in &bufs {
        for l in &mut live[a..=b] {
            *l += s;
        }
    }
    bufs.sort_by(|x, y| y.3.cmp(&x.3).then(x.0.cmp(&y.0)));
    // (first, last, offset, size) of the buffers placed so far.
    let mut placed: Vec<(usize, usize, usize, usize)> = vec![];
    let mut placements = vec![];
    let mut arena_bytes = 0;
    for (v, a, b, s) in bufs {
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|p| p.0 <= b && a <= p.1)
            .map(|p| (p.2, p.2 + p.3))
            .collect();
        busy.sort_unstable();
        let mut off = 0;
        for (start, end) in busy {
            if off + s <= start {
                break;
            }
            off = off.max(end);
        }
        placed.push((a, b, off, s));
        placements.push((v, off, s));
        arena_bytes = arena_bytes.max(off + s);
    }
    placements.sort_unstable();
    Some(ArenaPlan {
        placements,
        arena_bytes,
        peak_live_bytes: live.into_iter().max().unwrap_or(0),
        naive_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use m4c_ir::{DType, Op, TensorType};

    /// A chain x → a → b → c of 16-float results: at most two live at once.
    #[test]
    fn a_chain_reuses_buffers_and_no_live_pair_overlaps() {
        let mut g = Graph::new("chain");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[16]));
        let a = g.add_node(Op::Exp, &[x], "a").unwrap();
        let b = g.add_node(Op::Exp, &[a], "b").unwrap();
        let c = g.add_node(Op::Exp, &[b], "c").unwrap();
        g.outputs = vec![c];
        let p = plan(&g).unwrap();
        assert_eq!(p.naive_bytes, 3 * 64);
        assert_eq!(p.peak_live_bytes, 2 * 64);
        assert_eq!(p.arena_bytes, 2 * 64);
        let off = |v: m4c_ir::ValueId| p.placements.iter().find(|q| q.0 == v.index()).unwrap().1;
        assert_ne!(off(a), off(b));
        assert_ne!(off(b), off(c));
    }

    #[test]
    fn symbolic_shapes_have_no_plan() {
        let mut g = Graph::new("sym");
        let ty = TensorType {
            dtype: DType::F32,
            dims: vec![m4c_ir::Dim::Sym("n".into())],
        };
        let x = g.add_input("x", ty);
        let y = g.add_node(Op::Exp, &[x], "y").unwrap();
        g.outputs = vec![y];
        assert!(plan(&g).is_none());
    }
}
