//! The kernels' f32 transcendentals: `m4c-llvm-math` (one copy, shared with
//! the GPU backend's PTX emitter) emitted at a kernel's builder. Their
//! measured maximum errors against the f64 functions are in
//! `docs/CPU_BACKEND.md` (test `math_accuracy`).

use super::Kernel;

/// Arithmetic on f32 (and matching i32) vectors of one width.
pub(crate) type Math<'k, 'ctx> = m4c_llvm_math::Math<'k, 'ctx>;

/// Math on vectors of `lanes` lanes, emitted where `k`'s builder is.
pub(crate) fn math<'k, 'ctx>(k: &'k Kernel<'_, 'ctx>, lanes: u32) -> Math<'k, 'ctx> {
    Math::new(k.cx.context, &k.em.builder, k.em.module, lanes)
}
