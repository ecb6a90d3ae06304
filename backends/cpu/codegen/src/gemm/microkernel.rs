//! The register-blocked micro-kernel: a `rows × (vectors·lanes)` tile of C
//! accumulated in vector registers over a block of the reduction.

use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::types::VectorType;
use inkwell::values::{FunctionValue, IntValue, PointerValue, VectorValue};
use inkwell::IntPredicate;

use crate::ir::{define_function, Emitter};
use crate::{CodegenError, Target};

/// The shape of one micro-kernel variant.
#[derive(Clone, Copy, Debug)]
pub(super) struct Tile {
    /// Rows of C this variant computes (`tile_rows`, or the M remainder).
    pub rows: usize,
    /// Row stride of A, which is read in place (the GEMM's K): the `rows`
    /// broadcasts of one k share a base register and differ by constant
    /// displacements.
    pub a_row_stride: usize,
    /// Vector registers per row.
    pub vectors: usize,
    /// f32 lanes per vector.
    pub lanes: usize,
    /// Columns of C actually stored (`vectors·lanes`, or the N remainder);
    /// the rest of the tile is computed on B's zero padding and dropped.
    pub valid_cols: usize,
    /// Row stride of C (the GEMM's N).
    pub c_stride: usize,
}

/// Emits `void name(ptr a_tile, ptr b_panel, ptr c, i64 kc, i1 accumulate)`:
/// for `k in 0..kc` it loads one row of the packed B panel, broadcasts each
/// of the tile's A elements and FMAs them into the accumulators; then it
/// stores (or adds, if `accumulate`) the tile into C, masking the columns
/// past `valid_cols`.
pub(super) fn emit<'ctx>(
    context: &'ctx Context,
    module: &Module<'ctx>,
    target: &Target,
    name: &str,
    tile: Tile,
) -> Result<FunctionValue<'ctx>, CodegenError> {
    let ptr = context.ptr_type(Default::default());
    let i64t = context.i64_type();
    let ty = context.void_type().fn_type(
        &[
            ptr.into(),
            ptr.into(),
            ptr.into(),
            i64t.into(),
            context.bool_type().into(),
        ],
        false,
    );
    let em = define_function(context, module, target, name, ty, false);
    let vector = context.f32_type().vec_type(tile.lanes as u32);
    let (a, b, c) = (em.ptr_param(0), em.ptr_param(1), em.ptr_param(2));
    let (kc, accumulate) = (em.int_param(3), em.int_param(4));

    let entry = em.current_block();
    let body = context.append_basic_block(em.function, "k_loop");
    let store = context.append_basic_block(em.function, "store");
    em.builder.build_unconditional_branch(body)?;
    em.builder.position_at_end(body);
    let k_phi = em.builder.build_phi(i64t, "k")?;
    let mut phis = Vec::with_capacity(tile.rows * tile.vectors);
    for _ in 0..tile.rows * tile.vectors {
        let phi = em.builder.build_phi(vector, "acc")?;
        phi.add_incoming(&[(&vector.const_zero(), entry)]);
        phis.push(phi);
    }
    k_phi.add_incoming(&[(&em.i64(0), entry)]);
    let k = k_phi.as_basic_value().into_int_value();

    let b_row = em
        .builder
        .build_int_mul(k, em.i64(tile.vectors * tile.lanes), "b_row")?;
    let b_vectors = (0..tile.vectors)
        .map(|v| {
            let at = em
                .builder
                .build_int_add(b_row, em.i64(v * tile.lanes), "b_col")?;
            em.load_vector(vector, em.float_offset(b, at)?)
        })
        .collect::<Result<Vec<_>, _>>()?;
    prefetch_next_block(&em, b, b_row, kc, tile)?;
    let mut updated = Vec::with_capacity(phis.len());
    for r in 0..tile.rows {
        let at = em
            .builder
            .build_int_add(k, em.i64(r * tile.a_row_stride), "a_at")?;
        let a_ptr = em.float_offset(a, at)?;
        let scalar = em
            .builder
            .build_load(context.f32_type(), a_ptr, "a")?
            .into_float_value();
        let broadcast = em.splat(scalar, vector)?;
        for (v, b_vector) in b_vectors.iter().enumerate() {
            let acc = phis[r * tile.vectors + v]
                .as_basic_value()
                .into_vector_value();
            let sum = em
                .call_value(
                    "llvm.fma",
                    &[vector.into()],
                    &[broadcast.into(), (*b_vector).into(), acc.into()],
                )?
                .into_vector_value();
            updated.push(sum);
        }
    }
    let next = em.builder.build_int_add(k, em.i64(1), "k_next")?;
    let latch = em.current_block();
    k_phi.add_incoming(&[(&next, latch)]);
    for (phi, value) in phis.iter().zip(&updated) {
        phi.add_incoming(&[(value, latch)]);
    }
    let more = em
        .builder
        .build_int_compare(IntPredicate::ULT, next, kc, "more")?;
    em.builder.build_conditional_branch(more, body, store)?;

    em.builder.position_at_end(store);
    for r in 0..tile.rows {
        for v in 0..tile.vectors {
            let first_col = v * tile.lanes;
            if first_col >= tile.valid_cols {
                continue;
            }
            let cols = (tile.valid_cols - first_col).min(tile.lanes);
            let at = em.float_offset(c, em.i64(r * tile.c_stride + first_col))?;
            let acc = updated[r * tile.vectors + v];
            store_tile_vector(&em, vector, at, acc, cols, accumulate)?;
        }
    }
    em.builder.build_return(None)?;
    Ok(em.function)
}

/// Prefetches the row of B that the same k of the next K block will read.
/// A panel's K blocks lie one after another in packed B (and the next panel
/// follows the last), so while the tiles of one block run, the next block
/// streams in from memory: without it a B too large for the caches (the
/// 32 000-column logits of an LLM) stalls the first tile of every block.
fn prefetch_next_block<'ctx>(
    em: &Emitter<'_, 'ctx>,
    b: PointerValue<'ctx>,
    b_row: IntValue<'ctx>,
    kc: IntValue<'ctx>,
    tile: Tile,
) -> Result<(), CodegenError> {
    let row_floats = tile.vectors * tile.lanes;
    let block_floats = em
        .builder
        .build_int_mul(kc, em.i64(row_floats), "block_floats")?;
    let ahead = em.builder.build_int_add(b_row, block_floats, "ahead")?;
    const LINE_FLOATS: usize = 16;
    for line in (0..row_floats).step_by(LINE_FLOATS) {
        let index = em.builder.build_int_add(ahead, em.i64(line), "line")?;
        // Past the last block the address may leave packed B.
        em.prefetch(em.context.f32_type().into(), b, index, false, 3)?;
    }
    Ok(())
}

/// Stores `cols` lanes of `acc` at `at` (adding what is there when
/// `accumulate`), with a masked load/store for a partial vector.
fn store_tile_vector<'ctx>(
    em: &Emitter<'_, 'ctx>,
    ty: VectorType<'ctx>,
    at: inkwell::values::PointerValue<'ctx>,
    acc: VectorValue<'ctx>,
    cols: usize,
    accumulate: inkwell::values::IntValue<'ctx>,
) -> Result<(), CodegenError> {
    let lanes = ty.get_size() as usize;
    if cols == lanes {
        let old = em.load_vector(ty, at)?;
        let sum = em.builder.build_float_add(old, acc, "sum")?;
        let value = em.builder.build_select(accumulate, sum, acc, "c")?;
        em.store_vector(at, value.into_vector_value())?;
        return Ok(());
    }
    let bool_type = em.context.bool_type();
    let mask = VectorType::const_vector(
        &(0..lanes)
            .map(|lane| bool_type.const_int(u64::from(lane < cols), false))
            .collect::<Vec<_>>(),
    );
    let align = em.context.i32_type().const_int(4, false);
    let old = em
        .call_value(
            "llvm.masked.load",
            &[ty.into(), at.get_type().into()],
            &[at.into(), align.into(), mask.into(), ty.const_zero().into()],
        )?
        .into_vector_value();
    let sum = em.builder.build_float_add(old, acc, "sum")?;
    let value = em.builder.build_select(accumulate, sum, acc, "c")?;
    em.call_intrinsic(
        "llvm.masked.store",
        &[ty.into(), at.get_type().into()],
        &[value.into(), at.into(), align.into(), mask.into()],
    )?;
    Ok(())
}
