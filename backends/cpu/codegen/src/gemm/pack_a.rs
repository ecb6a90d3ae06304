//! Run-time packing of a block of A into micro-tile order.

use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::values::FunctionValue;

use crate::ir::define_function;
use crate::{CodegenError, Target};

/// Emits `void name(ptr src, ptr dst, i64 mc, i64 kc)`, which copies the
/// `mc × kc` block of A at `src` (row stride `k`) into `dst` as consecutive
/// tiles of `tile_rows` rows, each stored column by column
/// (`dst[t·tile_rows·kc + j·tile_rows + r] = src[(t·tile_rows + r)·k + j]`),
/// so the micro-kernel reads its A elements contiguously.
pub(super) fn emit<'ctx>(
    context: &'ctx Context,
    module: &Module<'ctx>,
    target: &Target,
    name: &str,
    tile_rows: usize,
    k: usize,
) -> Result<FunctionValue<'ctx>, CodegenError> {
    let ptr = context.ptr_type(Default::default());
    let i64t = context.i64_type();
    let ty = context
        .void_type()
        .fn_type(&[ptr.into(), ptr.into(), i64t.into(), i64t.into()], false);
    let em = define_function(context, module, target, name, ty, false);
    let (src, dst) = (em.ptr_param(0), em.ptr_param(1));
    let (mc, kc) = (em.int_param(2), em.int_param(3));
    let f32t = context.f32_type();
    let rows = em.i64(tile_rows);
    em.counted_loop(em.i64(0), mc, |row| {
        let tile = em.builder.build_int_unsigned_div(row, rows, "tile")?;
        let lane = em.builder.build_int_unsigned_rem(row, rows, "lane")?;
        let tile_floats = em.builder.build_int_mul(rows, kc, "tile_floats")?;
        let dst_base = em.mul_add(tile, tile_floats, lane)?;
        let src_base = em.builder.build_int_mul(row, em.i64(k), "src_row")?;
        em.counted_loop(em.i64(0), kc, |col| {
            let from = em.builder.build_int_add(src_base, col, "from")?;
            let to = em.mul_add(col, rows, dst_base)?;
            let value = em
                .builder
                .build_load(f32t, em.float_offset(src, from)?, "a")?;
            em.builder.build_store(em.float_offset(dst, to)?, value)?;
            Ok(())
        })
    })?;
    em.builder.build_return(None)?;
    Ok(em.function)
}
