//! Softmax (three passes over each row: max, exp-and-sum, scale) and
//! LayerNorm / RMSNorm (mean, variance, normalise-scale-shift), vectorised
//! along contiguous rows.

use inkwell::types::VectorType;
use inkwell::values::{IntValue, PointerValue, VectorValue};
use m4c_ir::op::NormKind;
use m4c_ir::{DType, Node};

use super::math::{math, Math};
use super::{Cx, Elem, Kernel};
use crate::graph::Lowering;
use crate::CodegenError;

/// What a row fold applies to each element: `(math, x, position, lanes,
/// mask)`, the mask `Some` on a row's last, partial vector (its other
/// lanes are 0 in `x` and must not be stored).
type ElementFn<'f, 'ctx> = dyn Fn(
        &Math<'_, 'ctx>,
        VectorValue<'ctx>,
        IntValue<'ctx>,
        u32,
        Option<VectorValue<'ctx>>,
    ) -> Result<VectorValue<'ctx>, CodegenError>
    + 'f;

/// Sums (or maxes) a row of `len` floats at `row` (stride `step`) into one
/// scalar vector, `value(x)` applied to each element first.
fn fold_row<'ctx>(
    k: &Kernel<'_, 'ctx>,
    buffer: PointerValue<'ctx>,
    row: IntValue<'ctx>,
    len: usize,
    step: i64,
    max: bool,
    value: &ElementFn<'_, 'ctx>,
) -> Result<VectorValue<'ctx>, CodegenError> {
    let context = k.cx.context;
    let lanes = if step == 1 { k.cx.lanes() } else { 1 };
    let f32t = context.f32_type();
    let slot = k.slot(f32t.vec_type(lanes).into())?;
    let start = if max { f32::NEG_INFINITY } else { 0.0 };
    let wide = math(k, lanes);
    k.em.builder.build_store(slot, wide.c(start))?;
    k.row_masked(len, lanes, &mut |pos, width, mask| {
        let at = k.em.mul_add(pos, k.int(step), row)?;
        let x = k.load_f32(k.element(buffer, f32t.into(), at)?, width, mask)?;
        let v = value(&wide, x, pos, width, mask)?;
        // The lanes past the row's end add nothing to the fold.
        let v = match mask {
            Some(mask) => {
                k.em.builder
                    .build_select(mask, v, wide.c(start), "live")?
                    .into_vector_value()
            }
            None => v,
        };
        let acc = k.em.builder.build_load(f32t.vec_type(lanes), slot, "acc")?;
        let acc = acc.into_vector_value();
        let acc = if max {
            wide.intrinsic("llvm.maximum", &[acc, v])?
        } else {
            wide.add(acc, v)?
        };
        k.em.builder.build_store(slot, acc)?;
        Ok(())
    })?;
    // The lanes folded pairwise, halves at a time: log2(lanes) steps.
    let wide = k.em.builder.build_load(f32t.vec_type(lanes), slot, "w")?;
    let mut total = wide.into_vector_value();
    let mut width = lanes;
    while width > 1 {
        width /= 2;
        let half = |from: u32| {
            let picks: Vec<_> = (from..from + width)
                .map(|lane| context.i32_type().const_int(u64::from(lane), false))
                .collect();
            k.em.builder.build_shuffle_vector(
                total,
                total.get_type().get_poison(),
                VectorType::const_vector(&picks),
                "half",
            )
        };
        let (low, high) = (half(0)?, half(width)?);
        let m = math(k, width);
        total = if max {
            m.intrinsic("llvm.maximum", &[low, high])?
        } else {
            m.add(low, high)?
        };
    }
    Ok(total)
}

/// Emits softmax over the middle axis of `[outer, len, inner]` (buffers:
/// output, input); parallel over `outer·inner` rows.
pub(crate) fn emit_softmax(
    cx: Cx<'_, '_>,
    symbol: &str,
    (outer, len, inner): (usize, usize, usize),
) -> Result<(), CodegenError> {
    let k = Kernel::define(cx, symbol, 2)?;
    let f32t = cx.context.f32_type();
    let step = inner as i64;
    let lanes = if step == 1 { cx.lanes() } else { 1 };
    k.nest(&[outer * inner], true, &mut |r: &[IntValue<'_>]| {
        let o =
            k.em.builder
                .build_int_unsigned_div(r[0], k.int(inner as i64), "o")?;
        let i =
            k.em.builder
                .build_int_unsigned_rem(r[0], k.int(inner as i64), "i")?;
        let row = k.em.mul_add(o, k.int((len * inner) as i64), i)?;
        let max = fold_row(&k, k.buffers[1], row, len, step, true, &|_, x, _, _, _| {
            Ok(x)
        })?;
        let sum = fold_row(
            &k,
            k.buffers[1],
            row,
            len,
            step,
            false,
            &|m, x, pos, width, mask| {
                let e = m.exp(m.sub(x, k.splat_lane(max, width)?)?)?;
                let at = k.em.mul_add(pos, k.int(step), row)?;
                k.store_f32(k.element(k.buffers[0], f32t.into(), at)?, e, mask)?;
                Ok(e)
            },
        )?;
        let inverse = math(&k, 1).div(math(&k, 1).c(1.0), sum)?;
        k.row_masked(len, lanes, &mut |pos, width, mask| {
            let m = math(&k, width);
            let at = k.em.mul_add(pos, k.int(step), row)?;
            let out = k.element(k.buffers[0], f32t.into(), at)?;
            let e = k.load_f32(out, width, mask)?;
            k.store_f32(out, m.mul(e, k.splat_lane(inverse, width)?)?, mask)
        })
    })?;
    k.finish()
}

/// Lowers Softmax.
pub(crate) fn lower_softmax(
    l: &mut Lowering<'_, '_>,
    node: &Node,
    axis: usize,
) -> Result<(), CodegenError> {
    check_f32(l, node)?;
    let shape = l.shape(node.inputs[0])?;
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let out = l.define(node.output)?;
    if outer * inner * shape[axis] == 0 {
        return Ok(());
    }
    let symbol = l.symbol("softmax");
    emit_softmax(l.cx, &symbol, (outer, shape[axis], inner))?;
    let input = l.loc(node.inputs[0])?;
    l.kernel(symbol, vec![out, input], outer * inner, true);
    Ok(())
}

/// How scale and bias are read along a row: per element, or one value.
#[derive(Clone, Copy, Debug)]
enum Param {
    Row,
    Scalar,
}

/// Emits a norm over rows of `len` (buffers: output, x, scale, bias?).
fn emit_norm<'ctx>(
    cx: Cx<'_, 'ctx>,
    symbol: &str,
    kind: NormKind,
    (rows, len): (usize, usize),
    epsilon: f32,
    scale: Param,
    bias: Option<Param>,
) -> Result<(), CodegenError> {
    let k = Kernel::define(cx, symbol, 3 + usize::from(bias.is_some()))?;
    let f32t = cx.context.f32_type();
    let lanes = cx.lanes();
    let one = math(&k, 1);
    k.nest(&[rows], true, &mut |r: &[IntValue<'ctx>]| {
        let row = k.em.builder.build_int_mul(r[0], k.int(len as i64), "row")?;
        let inv_len = one.c(1.0 / len as f32);
        let mean = if kind == NormKind::Layer {
            let sum = fold_row(&k, k.buffers[1], row, len, 1, false, &|_, x, _, _, _| Ok(x))?;
            Some(one.mul(sum, inv_len)?)
        } else {
            None
        };
        let centre = |m: &Math<'_, 'ctx>, x: VectorValue<'ctx>, width: u32| match mean {
            Some(mean) => Ok(m.sub(x, k.splat_lane(mean, width)?)?),
            None => Ok::<_, CodegenError>(x),
        };
        let squares = fold_row(
            &k,
            k.buffers[1],
            row,
            len,
            1,
            false,
            &|m, x, _, width, _| {
                let c = centre(m, x, width)?;
                Ok(m.mul(c, c)?)
            },
        )?;
        let variance = one.fma(squares, inv_len, one.c(epsilon))?;
        let rstd = one.div(one.c(1.0), one.intrinsic("llvm.sqrt", &[variance])?)?;
        k.row_masked(len, lanes, &mut |pos, width, mask| {
            let m = math(&k, width);
            let at = k.em.builder.build_int_add(row, pos, "at")?;
            let x = k.load_f32(k.element(k.buffers[1], f32t.into(), at)?, width, mask)?;
            let param = |buffer: usize, p: Param| match p {
                Param::Row => {
                    k.load_f32(k.element(k.buffers[buffer], f32t.into(), pos)?, width, mask)
                }
                Param::Scalar => k.load_splat(Elem::F32, width, k.buffers[buffer]),
            };
            let y = m.mul(centre(&m, x, width)?, k.splat_lane(rstd, width)?)?;
            let y = m.mul(y, param(2, scale)?)?;
            let y = match bias {
                Some(p) => m.add(y, param(3, p)?)?,
                None => y,
            };
            k.store_f32(k.element(k.buffers[0], f32t.into(), at)?, y, mask)
        })
    })?;
    k.finish()
}

/// Lowers Norm.
pub(crate) fn lower_norm(
    l: &mut Lowering<'_, '_>,
    node: &Node,
    kind: NormKind,
    axis: usize,
    epsilon: f32,
) -> Result<(), CodegenError> {
    check_f32(l, node)?;
    let shape = l.shape(node.inputs[0])?;
    let rows: usize = shape[..axis].iter().product();
    let len: usize = shape[axis..].iter().product();
    let param = |l: &Lowering<'_, '_>, v| -> Result<Param, CodegenError> {
        match l.shape(v)?.iter().product::<usize>() {
            1 => Ok(Param::Scalar),
            n if n == len => Ok(Param::Row),
            n => Err(CodegenError::Unsupported(format!(
                "Norm scale/bias of {n} elements for rows of {len}"
            ))),
        }
    };
    let scale = param(l, node.inputs[1])?;
    let bias = match node.inputs.get(2) {
        Some(&b) => Some(param(l, b)?),
        None => None,
    };
    let out = l.define(node.output)?;
    if rows * len == 0 {
        return Ok(());
    }
    let symbol = l.symbol("norm");
    emit_norm(l.cx, &symbol, kind, (rows, len), epsilon, scale, bias)?;
    let mut buffers = vec![out];
    for &input in &node.inputs {
        buffers.push(l.loc(input)?);
    }
    l.kernel(symbol, buffers, rows, true);
    Ok(())
}

fn check_f32(l: &Lowering<'_, '_>, node: &Node) -> Result<(), CodegenError> {
    for &input in &node.inputs {
        if l.dtype(input) != DType::F32 {
            return Err(CodegenError::Unsupported(format!(
                "{} on {} (only f32)",
                node.op.name(),
                l.dtype(input)
            )));
        }
    }
    Ok(())
}
