//! The exported GEMM function: cache blocking over K and M, a sweep over the
//! caller's range of B panels, and dispatch to the micro-kernel variants
//! that handle the M and N edges.

use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::values::{FunctionValue, IntValue, PointerValue};
use inkwell::IntPredicate;

use super::microkernel::{self, Tile};
use super::{GemmPlan, GemmSpec};
use crate::ir::{define_function, Emitter};
use crate::{CodegenError, Target};

/// The micro-kernels for one panel kind (full width or the N remainder):
/// full-height tiles and, if M is not a multiple of the tile height, the
/// M-remainder tile.
struct PanelKernels<'ctx> {
    full_rows: FunctionValue<'ctx>,
    last_rows: Option<FunctionValue<'ctx>>,
}

/// Emits `void symbol(ptr a, ptr packed_b, ptr c, i64 panel_begin,
/// i64 panel_end, ptr scratch)` (see `m4c_cpu_device::GemmManifest`).
///
/// Loop order (outer to inner): K blocks of `k_block`, M blocks of
/// `m_block` (A block packed into scratch), B panels of the caller's range,
/// micro-tiles down the M block. The K block of one B panel stays in L1
/// while the micro-kernel walks the packed A block held in L2.
pub(super) fn emit<'ctx>(
    context: &'ctx Context,
    module: &Module<'ctx>,
    target: &Target,
    spec: &GemmSpec,
    plan: &GemmPlan,
) -> Result<(), CodegenError> {
    let (m, k, n) = (spec.m, spec.k, spec.n);
    let nr = plan.tile_cols();
    let full_panels = n / nr;
    let kernels_for = |valid_cols: usize| -> Result<PanelKernels<'ctx>, CodegenError> {
        let tile = |rows| Tile {
            rows,
            a_row_stride: k,
            vectors: plan.vectors,
            lanes: plan.lanes,
            valid_cols,
            c_stride: n,
        };
        let name = |rows| format!("{}.kernel_{rows}x{valid_cols}", spec.symbol);
        let last = m % plan.tile_rows;
        Ok(PanelKernels {
            full_rows: microkernel::emit(
                context,
                module,
                target,
                &name(plan.tile_rows),
                tile(plan.tile_rows),
            )?,
            last_rows: match last {
                0 => None,
                rows => Some(microkernel::emit(
                    context,
                    module,
                    target,
                    &name(rows),
                    tile(rows),
                )?),
            },
        })
    };
    let full = kernels_for(nr)?;
    let tail = match n % nr {
        0 => None,
        cols => Some(kernels_for(cols)?),
    };

    let ptr = context.ptr_type(Default::default());
    let i64t = context.i64_type();
    let ty = context.void_type().fn_type(
        &[
            ptr.into(),
            ptr.into(),
            ptr.into(),
            i64t.into(),
            i64t.into(),
            ptr.into(),
        ],
        false,
    );
    let em = define_function(context, module, target, &spec.symbol, ty, true);
    let (a, packed_b, c) = (em.ptr_param(0), em.ptr_param(1), em.ptr_param(2));
    // Parameter 5 (scratch) is unused: A is read in place.
    let (panel_begin, panel_end) = (em.int_param(3), em.int_param(4));

    // Groups of `group` panels, each finished over all of K before the next
    // starts, so the group's block of C stays in L2 across the K blocks.
    let group = plan.group_panels(m, k);
    em.chunked_loop(panel_begin, panel_end, group, |group_begin, group_end| {
        em.counted_loop(em.i64(0), em.i64(k.div_ceil(plan.k_block)), |k_index| {
            let pc = em
                .builder
                .build_int_mul(k_index, em.i64(plan.k_block), "pc")?;
            let k_left = em.builder.build_int_sub(em.i64(k), pc, "k_left")?;
            let kc = em.umin(k_left, em.i64(plan.k_block))?;
            let later_block =
                em.builder
                    .build_int_compare(IntPredicate::NE, k_index, em.i64(0), "later")?;
            let accumulate = if spec.accumulate {
                context.bool_type().const_int(1, false)
            } else {
                later_block
            };
            em.counted_loop(em.i64(0), em.i64(m.div_ceil(plan.m_block)), |m_index| {
                let ic = em
                    .builder
                    .build_int_mul(m_index, em.i64(plan.m_block), "ic")?;
                let m_left = em.builder.build_int_sub(em.i64(m), ic, "m_left")?;
                let mc = em.umin(m_left, em.i64(plan.m_block))?;
                let a_block = em.float_offset(a, em.mul_add(ic, em.i64(k), pc)?)?;
                let block = Block {
                    em: &em,
                    plan,
                    n,
                    k,
                    kc,
                    mc,
                    a_block,
                    accumulate,
                };
                em.counted_loop(group_begin, group_end, |panel| {
                    let b_offset = em.mul_add(panel, em.i64(k), pc)?;
                    let b_panel = em.float_offset(
                        packed_b,
                        em.builder.build_int_mul(b_offset, em.i64(nr), "b")?,
                    )?;
                    let c_col = em.builder.build_int_mul(panel, em.i64(nr), "c_col")?;
                    let c_block = em.float_offset(c, em.mul_add(ic, em.i64(n), c_col)?)?;
                    match &tail {
                        None => block.sweep(&full, b_panel, c_block),
                        Some(tail) => {
                            let is_tail = em.builder.build_int_compare(
                                IntPredicate::EQ,
                                panel,
                                em.i64(full_panels),
                                "is_tail",
                            )?;
                            let tail_block = context.append_basic_block(em.function, "tail_panel");
                            let full_block = context.append_basic_block(em.function, "full_panel");
                            let join = context.append_basic_block(em.function, "panel_done");
                            em.builder
                                .build_conditional_branch(is_tail, tail_block, full_block)?;
                            for (entry, kernels) in [(tail_block, tail), (full_block, &full)] {
                                em.builder.position_at_end(entry);
                                block.sweep(kernels, b_panel, c_block)?;
                                em.builder.build_unconditional_branch(join)?;
                            }
                            em.builder.position_at_end(join);
                            Ok(())
                        }
                    }
                })
            })
        })
    })?;
    em.builder.build_return(None)?;
    Ok(())
}

/// One (K block, M block) of the blocked loop nest, with A packed in
/// `scratch`.
struct Block<'e, 'a, 'ctx> {
    em: &'e Emitter<'a, 'ctx>,
    plan: &'e GemmPlan,
    n: usize,
    k: usize,
    kc: IntValue<'ctx>,
    mc: IntValue<'ctx>,
    /// A's first element of the block (A is read in place, row stride K).
    a_block: PointerValue<'ctx>,
    accumulate: IntValue<'ctx>,
}

impl<'ctx> Block<'_, '_, 'ctx> {
    /// Runs the micro-kernels down the M block for one B panel.
    fn sweep(
        &self,
        kernels: &PanelKernels<'ctx>,
        b_panel: PointerValue<'ctx>,
        c_block: PointerValue<'ctx>,
    ) -> Result<(), CodegenError> {
        let em = self.em;
        let rows = em.i64(self.plan.tile_rows);
        let full_tiles = em.builder.build_int_unsigned_div(self.mc, rows, "tiles")?;
        let call = |kernel: FunctionValue<'ctx>,
                    tile: IntValue<'ctx>|
         -> Result<(), CodegenError> {
            let a_tile = em.float_offset(
                self.a_block,
                em.builder
                    .build_int_mul(tile, em.i64(self.plan.tile_rows * self.k), "a_tile")?,
            )?;
            let c_rows = em.builder.build_int_mul(tile, rows, "c_rows")?;
            let c_tile = em.float_offset(
                c_block,
                em.builder.build_int_mul(c_rows, em.i64(self.n), "c_tile")?,
            )?;
            em.builder.build_call(
                kernel,
                &[
                    a_tile.into(),
                    b_panel.into(),
                    c_tile.into(),
                    self.kc.into(),
                    self.accumulate.into(),
                ],
                "",
            )?;
            Ok(())
        };
        em.counted_loop(em.i64(0), full_tiles, |tile| call(kernels.full_rows, tile))?;
        if let Some(last_rows) = kernels.last_rows {
            let covered = em.builder.build_int_mul(full_tiles, rows, "covered")?;
            let partial =
                em.builder
                    .build_int_compare(IntPredicate::ULT, covered, self.mc, "partial")?;
            em.if_then(partial, || call(last_rows, full_tiles))?;
        }
        Ok(())
    }
}
