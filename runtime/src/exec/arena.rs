//! The interpreter's view of a module's activation arena, planned before it
//! runs by the shared planner (`m4c-plan`) under the shared rules: one
//! buffer per node result outside elementwise fusion groups, reshapes
//! aliasing their input, greedy largest-first placement at 64-byte
//! alignment. A compiled module's arena is its code generator's plan
//! (which also knows the backend's own kernels and scratch): see
//! [`super::ModuleExecutor::arena_bytes`].

use m4c_ir::Graph;
use m4c_plan::memory::{plan as plan_memory, Schedule};

/// Where each activation lives and what the arena costs.
pub use m4c_plan::memory::MemoryPlan as ArenaPlan;

/// Plans `g`'s activations; `None` when a node result has a symbolic shape
/// (firmware modules are bound to static shapes when built).
pub fn plan(g: &Graph) -> Option<ArenaPlan> {
    plan_memory(g, &Schedule::fused(g)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use m4c_ir::{DType, Op, TensorType};
    use m4c_plan::memory::Buffer;

    /// A chain x → a → b → c of 16-float results, each a softmax (no
    /// fusion): at most two live at once.
    #[test]
    fn a_chain_reuses_buffers_and_no_live_pair_overlaps() {
        let mut g = Graph::new("chain");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[16]));
        let a = g.add_node(Op::Softmax { axis: 0 }, &[x], "a").unwrap();
        let b = g.add_node(Op::Softmax { axis: 0 }, &[a], "b").unwrap();
        let c = g.add_node(Op::Softmax { axis: 0 }, &[b], "c").unwrap();
        g.outputs = vec![c];
        let p = plan(&g).unwrap();
        assert_eq!(p.naive_bytes, 3 * 64);
        assert_eq!(p.peak_live_bytes, 2 * 64);
        assert_eq!(p.arena_bytes, 2 * 64);
        let off = |v: m4c_ir::ValueId| p.get(Buffer::Value(v.index())).unwrap().offset;
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
