//! MaxPool / AvgPool, vectorised along the output rows; a row vector whose
//! taps all lie inside the input row is read with plain loads, the others
//! (at the padding and the row's end) with masked ones.

use inkwell::types::VectorType;
use inkwell::values::IntValue;
use inkwell::FloatPredicate;
use m4c_ir::op::PoolAttrs;
use m4c_ir::{DType, Node};

use super::math::math;
use super::window::Window;
use super::{contiguous_strides, fold_axes, folded_extent, Cx, Kernel};
use crate::graph::Lowering;
use crate::CodegenError;

/// The loop axes of a pool over `planes` planes: the planes, then the
/// output rows and row vectors of one plane; the parallel axis folds the
/// leading ones ([`fold_axes`]) so that few planes still split evenly.
fn loop_dims(cx: Cx<'_, '_>, planes: usize, w: &Window) -> Vec<usize> {
    let mut dims = vec![planes];
    dims.extend(w.row_dims(w.row_lanes(cx)));
    dims
}

/// Emits a pool over `[planes, spatial..]` (buffers: out, in), vectorised
/// along the output rows; `average` is `Some(count_include_pad)` for
/// AvgPool. Padding never wins the max and is not counted unless asked.
fn emit(
    cx: Cx<'_, '_>,
    symbol: &str,
    planes: usize,
    w: &Window,
    average: Option<bool>,
) -> Result<(), CodegenError> {
    let k = Kernel::define(cx, symbol, 2)?;
    let f32t = cx.context.f32_type();
    let sp = w.output.len();
    let lanes = w.row_lanes(cx);
    let vf = f32t.vec_type(lanes);
    let acc = k.slot(vf.into())?;
    let count = k.slot(vf.into())?;
    let math = math(&k, lanes);
    let in_plane: usize = w.input.iter().product();
    let out_plane: usize = w.output.iter().product();
    let out_strides = contiguous_strides(&w.output);
    let fill = if average.is_some() {
        0.0
    } else {
        f32::NEG_INFINITY
    };
    let all_lanes = VectorType::const_vector(&vec![
        cx.context.bool_type().const_all_ones();
        lanes as usize
    ]);
    let dims = loop_dims(cx, planes, w);
    k.nest_folded(&dims, fold_axes(&dims), &mut |idx: &[IntValue<'_>]| {
        let (plane, rest) = idx
            .split_first()
            .ok_or(CodegenError::Internal("plane axis"))?;
        let (rows, column) = rest.split_at(sp - 1);
        let columns = w.columns(&k, lanes, column[0])?;
        k.em.builder.build_store(acc, math.c(fill))?;
        k.em.builder.build_store(count, math.c(0.0))?;
        let base =
            k.em.builder
                .build_int_mul(*plane, k.int(in_plane as i64), "base")?;
        // Adds one tap's values (`mask`: the lanes that read the input).
        let update = |x, mask| -> Result<(), CodegenError> {
            let b = &k.em.builder;
            let a = b.build_load(vf, acc, "acc")?.into_vector_value();
            let updated = match average {
                Some(_) => math.add(a, x)?,
                None => {
                    let gt = b.build_float_compare(FloatPredicate::OGT, x, a, "gt")?;
                    b.build_select(gt, x, a, "max")?.into_vector_value()
                }
            };
            b.build_store(acc, updated)?;
            let c = b.build_load(vf, count, "c")?.into_vector_value();
            let one = b.build_select(mask, math.c(1.0), math.c(0.0), "one")?;
            b.build_store(count, math.add(c, one.into_vector_value())?)?;
            Ok(())
        };
        // The taps, read with plain loads (`interior`) or masked ones; at
        // strides above 1 an interior row's taps share their loads.
        let (lead, last) = w.kernel.split_at(sp - 1);
        let taps = |interior: bool| {
            k.nest(lead, false, &mut |t: &[IntValue<'_>]| {
                let (at, inside) = w.row_offset(&k, rows, t)?;
                let at = k.em.builder.build_int_add(at, base, "at")?;
                k.em.if_then(inside, || {
                    let source = (k.buffers[1], at);
                    if interior && w.strides[sp - 1] > 1 {
                        for x in w.load_interior_taps(&k, source, &columns)? {
                            update(x, all_lanes)?;
                        }
                        return Ok(());
                    }
                    k.nest(last, false, &mut |tl: &[IntValue<'_>]| {
                        let (x, mask) = match interior {
                            true => (w.load_interior_row(&k, source, &columns, tl[0])?, all_lanes),
                            false => w.load_row(&k, source, &columns, tl[0], fill)?,
                        };
                        update(x, mask)
                    })
                })
            })
        };
        match w.interior(&k, &columns, Some(rows))? {
            Some(interior) => {
                k.em.if_then(interior, || taps(true))?;
                let edge = k.em.builder.build_not(interior, "edge")?;
                k.em.if_then(edge, || taps(false))?;
            }
            None => taps(false)?,
        }
        let mut result = k.em.builder.build_load(vf, acc, "r")?.into_vector_value();
        if let Some(include_pad) = average {
            let divisor = if include_pad {
                math.c(w.kernel.iter().product::<usize>() as f32)
            } else {
                k.em.builder.build_load(vf, count, "n")?.into_vector_value()
            };
            result = math.div(result, divisor)?;
        }
        let at = k.linear(0, rows, &out_strides[..sp - 1])?;
        let at = k.em.builder.build_int_add(at, columns.first, "at")?;
        let at = k.em.mul_add(*plane, k.int(out_plane as i64), at)?;
        w.store_row(
            &k,
            k.element(k.buffers[0], f32t.into(), at)?,
            &columns,
            result,
        )?;
        Ok(())
    })?;
    k.finish()
}

/// Lowers MaxPool (`average: None`) and AvgPool.
pub(crate) fn lower(
    l: &mut Lowering<'_, '_>,
    node: &Node,
    pool: &PoolAttrs,
    average: Option<bool>,
) -> Result<(), CodegenError> {
    if l.dtype(node.inputs[0]) != DType::F32 {
        return Err(CodegenError::Unsupported(format!(
            "{} on {} (only f32)",
            node.op.name(),
            l.dtype(node.inputs[0])
        )));
    }
    let shape = l.shape(node.inputs[0])?;
    let out_shape = l.shape(node.output)?;
    let window = Window {
        input: shape[2..].to_vec(),
        output: out_shape[2..].to_vec(),
        kernel: pool.kernel.clone(),
        strides: pool.strides.clone(),
        pads: pool.pads[..shape.len() - 2].to_vec(),
        dilations: pool.dilations.clone(),
    };
    let out = l.define(node.output)?;
    let planes = shape[0] * shape[1];
    if out_shape.iter().product::<usize>() == 0 {
        return Ok(());
    }
    let symbol = l.symbol("pool");
    emit(l.cx, &symbol, planes, &window, average)?;
    let input = l.loc(node.inputs[0])?;
    let extent = folded_extent(&loop_dims(l.cx, planes, &window));
    l.kernel(symbol, vec![out, input], extent, true);
    Ok(())
}
