//! Gather: a row copy per index, the index read at run time (negative
//! indices count from the end). An index outside `[-n, n)` is reported in
//! the kernel's status (an error, as in the interpreter); the copy reads a
//! clamped row meanwhile, so no access leaves the buffer.

use inkwell::values::IntValue;
use inkwell::IntPredicate;
use m4c_ir::{DType, Node};

use super::movement::element_bytes;
use super::{int_type, Cx, Kernel};
use crate::graph::Lowering;
use crate::CodegenError;
use m4c_cpu_device::STATUS_INDEX_OUT_OF_RANGE;

/// Emits `out[p, t, :] = data[p, index[t], :]` for `p < pre`, `t < count`,
/// rows of `post` elements of `elem_bytes` (buffers: out, data, indices).
fn emit(
    cx: Cx<'_, '_>,
    symbol: &str,
    (pre, n, post): (usize, usize, usize),
    count: usize,
    elem_bytes: u32,
    index_bytes: u32,
) -> Result<(), CodegenError> {
    let k = Kernel::define(cx, symbol, 3)?;
    let byte = cx.context.i8_type();
    let index_type = int_type(cx.context, index_bytes);
    let row_bytes = (post * elem_bytes as usize) as i64;
    k.nest(&[pre, count], true, &mut |pt: &[IntValue<'_>]| {
        let at = k.element(k.buffers[2], index_type.into(), pt[1])?;
        let raw =
            k.em.builder
                .build_load(index_type, at, "index")?
                .into_int_value();
        let raw =
            k.em.builder
                .build_int_s_extend_or_bit_cast(raw, cx.context.i64_type(), "index")?;
        let negative =
            k.em.builder
                .build_int_compare(IntPredicate::SLT, raw, k.int(0), "neg")?;
        let wrapped =
            k.em.builder
                .build_int_add(raw, k.int(n as i64), "wrapped")?;
        let index =
            k.em.builder
                .build_select(negative, wrapped, raw, "i")?
                .into_int_value();
        let below =
            k.em.builder
                .build_int_compare(IntPredicate::SLT, index, k.int(0), "below")?;
        let above =
            k.em.builder
                .build_int_compare(IntPredicate::SGE, index, k.int(n as i64), "above")?;
        let outside = k.em.builder.build_or(below, above, "outside")?;
        k.report_if(outside.into(), STATUS_INDEX_OUT_OF_RANGE)?;
        let index =
            k.em.builder
                .build_select(below, k.int(0), index, "i")?
                .into_int_value();
        let index = k.em.umin(index, k.int(n as i64 - 1))?;
        let src_row = k.em.mul_add(pt[0], k.int(n as i64), index)?;
        let src = k.element(
            k.buffers[1],
            byte.into(),
            k.em.builder
                .build_int_mul(src_row, k.int(row_bytes), "src")?,
        )?;
        let dst_row = k.linear(0, pt, &[count as i64, 1])?;
        let dst = k.element(
            k.buffers[0],
            byte.into(),
            k.em.builder
                .build_int_mul(dst_row, k.int(row_bytes), "dst")?,
        )?;
        k.em.builder
            .build_memcpy(dst, elem_bytes, src, elem_bytes, k.int(row_bytes))?;
        Ok(())
    })?;
    k.finish()
}

/// Lowers Gather.
pub(crate) fn lower(
    l: &mut Lowering<'_, '_>,
    node: &Node,
    axis: usize,
) -> Result<(), CodegenError> {
    let (data, indices) = (node.inputs[0], node.inputs[1]);
    let shape = l.shape(data)?;
    let index_bytes = match l.dtype(indices) {
        DType::I64 => 8,
        DType::I32 => 4,
        other => {
            return Err(CodegenError::Unsupported(format!(
                "Gather indices of type {other}"
            )))
        }
    };
    let elem_bytes = element_bytes(l.dtype(data), &node.op)?;
    let pre: usize = shape[..axis].iter().product();
    let post: usize = shape[axis + 1..].iter().product();
    let count: usize = l.shape(indices)?.iter().product();
    let out = l.define(node.output)?;
    if pre * post * count == 0 || shape[axis] == 0 {
        return Ok(());
    }
    let symbol = l.symbol("gather");
    emit(
        l.cx,
        &symbol,
        (pre, shape[axis], post),
        count,
        elem_bytes,
        index_bytes,
    )?;
    let (d, i) = (l.loc(data)?, l.loc(indices)?);
    l.kernel(symbol, vec![out, d, i], pre, true);
    Ok(())
}
