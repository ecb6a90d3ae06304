//! Convolution: im2col + the packed GEMM for ungrouped convolutions with
//! constant weights (output pixels × taps times taps × channels, then a
//! transposing bias add into NCHW), and a direct kernel for grouped
//! (depthwise) convolutions or run-time weights.

use inkwell::values::IntValue;
use m4c_ir::op::ConvAttrs;
use m4c_ir::{DType, Node, Op};

use super::elementwise::{Arg, ExprNode, Fused, Operand};
use super::math::Math;
use super::movement::{AxisMap, IndexCopy};
use super::pool::Window;
use super::{contiguous_strides, Cx, Elem, Kernel};
use crate::graph::Lowering;
use crate::CodegenError;

/// Emits im2col: `col[n·P + p, c·T + t] = x[n, c, tap(p, t)]` (0 outside),
/// `P` output positions, `T` taps (buffers: col, x).
fn emit_im2col(
    cx: Cx<'_, '_>,
    symbol: &str,
    n: usize,
    c: usize,
    w: &Window,
) -> Result<(), CodegenError> {
    let k = Kernel::define(cx, symbol, 2)?;
    let f32t = cx.context.f32_type();
    let positions: usize = w.output.iter().product();
    let taps: usize = w.kernel.iter().product();
    let plane: usize = w.input.iter().product();
    let sp = w.output.len();
    let mut dims = vec![n];
    dims.extend(&w.output);
    dims.push(c);
    dims.extend(&w.kernel);
    let out_strides = contiguous_strides(&w.output);
    let tap_strides = contiguous_strides(&w.kernel);
    k.nest(&dims, true, &mut |idx: &[IntValue<'_>]| {
        let (batch, rest) = idx.split_first().expect("batch axis");
        let (o, rest) = rest.split_at(sp);
        let (channel, t) = rest.split_first().expect("channel axis");
        let (at, inside) = w.offset(&k, o, t)?;
        let plane_base = k.em.mul_add(*batch, k.int(c as i64), *channel)?;
        let at = k.em.mul_add(plane_base, k.int(plane as i64), at)?;
        let x =
            k.em.builder
                .build_load(f32t, k.element(k.buffers[1], f32t.into(), at)?, "x")?;
        let x =
            k.em.builder
                .build_select(inside, x, f32t.const_zero().into(), "x")?;
        let p = k.linear(0, o, &out_strides)?;
        let row = k.em.mul_add(*batch, k.int(positions as i64), p)?;
        let tap = k.linear(0, t, &tap_strides)?;
        let column = k.em.mul_add(*channel, k.int(taps as i64), tap)?;
        let at = k.em.mul_add(row, k.int((c * taps) as i64), column)?;
        k.em.builder
            .build_store(k.element(k.buffers[0], f32t.into(), at)?, x)?;
        Ok(())
    })?;
    k.finish()
}

/// Emits a direct convolution (buffers: y, x, w, bias?), parallel over
/// `N·M` output planes.
fn emit_direct(
    cx: Cx<'_, '_>,
    symbol: &str,
    (n, c, m, group): (usize, usize, usize, usize),
    w: &Window,
    bias: bool,
) -> Result<(), CodegenError> {
    let k = Kernel::define(cx, symbol, 3 + usize::from(bias))?;
    let f32t = cx.context.f32_type();
    let v1 = f32t.vec_type(1);
    let acc = k.slot(v1.into())?;
    let one = Math::new(&k, 1);
    let (cg, mg) = (c / group, m / group);
    let plane: usize = w.input.iter().product();
    let taps: usize = w.kernel.iter().product();
    let out_plane: usize = w.output.iter().product();
    let tap_strides = contiguous_strides(&w.kernel);
    let out_strides = contiguous_strides(&w.output);
    let mut dims = vec![n * m];
    dims.extend(&w.output);
    k.nest(&dims, true, &mut |idx: &[IntValue<'_>]| {
        let (nm, o) = idx.split_first().expect("plane axis");
        let batch =
            k.em.builder
                .build_int_unsigned_div(*nm, k.int(m as i64), "n")?;
        let filter =
            k.em.builder
                .build_int_unsigned_rem(*nm, k.int(m as i64), "m")?;
        let g =
            k.em.builder
                .build_int_unsigned_div(filter, k.int(mg as i64), "g")?;
        let start = if bias {
            k.load(Elem::F32, 1, k.element(k.buffers[3], f32t.into(), filter)?)?
        } else {
            one.c(0.0)
        };
        k.em.builder.build_store(acc, start)?;
        let first_channel = k.em.builder.build_int_mul(g, k.int(cg as i64), "c0")?;
        k.em.counted_loop(k.int(0), k.int(cg as i64), |ci| {
            let channel = k.em.builder.build_int_add(first_channel, ci, "c")?;
            let x_plane = k.em.mul_add(batch, k.int(c as i64), channel)?;
            let x_base =
                k.em.builder
                    .build_int_mul(x_plane, k.int(plane as i64), "xb")?;
            let w_row = k.em.mul_add(filter, k.int(cg as i64), ci)?;
            let w_base =
                k.em.builder
                    .build_int_mul(w_row, k.int(taps as i64), "wb")?;
            k.nest(&w.kernel, false, &mut |t: &[IntValue<'_>]| {
                let (at, inside) = w.offset(&k, o, t)?;
                let at = k.em.builder.build_int_add(at, x_base, "at")?;
                let x = k.em.builder.build_load(
                    f32t,
                    k.element(k.buffers[1], f32t.into(), at)?,
                    "x",
                )?;
                let x =
                    k.em.builder
                        .build_select(inside, x, f32t.const_zero().into(), "x")?;
                let wt = k.linear(0, t, &tap_strides)?;
                let wt = k.em.builder.build_int_add(wt, w_base, "wt")?;
                let weight = k.em.builder.build_load(
                    f32t,
                    k.element(k.buffers[2], f32t.into(), wt)?,
                    "w",
                )?;
                let a = k.em.builder.build_load(v1, acc, "acc")?.into_vector_value();
                let xv = k.em.builder.build_insert_element(
                    v1.get_poison(),
                    x.into_float_value(),
                    cx.context.i32_type().const_zero(),
                    "xv",
                )?;
                let wv = k.em.builder.build_insert_element(
                    v1.get_poison(),
                    weight.into_float_value(),
                    cx.context.i32_type().const_zero(),
                    "wv",
                )?;
                k.em.builder.build_store(acc, one.fma(xv, wv, a)?)?;
                Ok(())
            })
        })?;
        let result = k.em.builder.build_load(v1, acc, "r")?.into_vector_value();
        let at = k.linear(0, o, &out_strides)?;
        let at = k.em.mul_add(*nm, k.int(out_plane as i64), at)?;
        k.store(Elem::F32, k.element(k.buffers[0], f32t.into(), at)?, result)?;
        Ok(())
    })?;
    k.finish()
}

/// Lowers Conv.
pub(crate) fn lower(
    l: &mut Lowering<'_, '_>,
    node: &Node,
    attrs: &ConvAttrs,
) -> Result<(), CodegenError> {
    for &input in &node.inputs {
        if l.dtype(input) != DType::F32 {
            return Err(CodegenError::Unsupported(format!(
                "Conv on {} (only f32)",
                l.dtype(input)
            )));
        }
    }
    let x_shape = l.shape(node.inputs[0])?;
    let w_shape = l.shape(node.inputs[1])?;
    let y_shape = l.shape(node.output)?;
    let sp = x_shape.len() - 2;
    let window = Window {
        input: x_shape[2..].to_vec(),
        output: y_shape[2..].to_vec(),
        kernel: w_shape[2..].to_vec(),
        strides: attrs.strides.clone(),
        pads: attrs.pads[..sp].to_vec(),
        dilations: attrs.dilations.clone(),
    };
    let (n, c, m) = (x_shape[0], x_shape[1], w_shape[0]);
    let out = l.define(node.output)?;
    if y_shape.iter().product::<usize>() == 0 {
        return Ok(());
    }
    let weights = l.constant(node.inputs[1]);
    let taps: usize = window.kernel.iter().product();
    if let (Some(weights), 1) = (weights, attrs.group) {
        let values = weights.to_f32_vec().map_err(|e| CodegenError::Graph {
            graph: l.graph.name.clone(),
            reason: format!("Conv weights: {e}"),
        })?;
        let depth = c * taps;
        let positions: usize = window.output.iter().product();
        // B = Wᵀ: depth × m.
        let b: Vec<f32> = (0..depth)
            .flat_map(|r| (0..m).map(move |f| (r, f)))
            .map(|(r, f)| values[f * depth + r])
            .collect();
        let col = l.temp(n * positions * depth * 4);
        let symbol = l.symbol("im2col");
        emit_im2col(l.cx, &symbol, n, c, &window)?;
        let x = l.loc(node.inputs[0])?;
        l.kernel(symbol, vec![col, x], n, true);
        let product = l.temp(n * positions * m * 4);
        l.gemm((n * positions, depth, m), &b, col, product)?;
        // y[b, f, p] = product[(b·P + p)·m + f] (+ bias[f]).
        let mut strides = vec![(positions * m) as i64, 1];
        strides.extend(
            contiguous_strides(&window.output)
                .iter()
                .map(|s| s * m as i64),
        );
        let symbol = l.symbol("conv_out");
        let extent = if let Some(&bias) = node.inputs.get(2) {
            let mut bias_strides = vec![0i64; y_shape.len()];
            bias_strides[1] = 1;
            let fused = Fused {
                shape: y_shape.clone(),
                operands: vec![
                    Operand {
                        elem: Elem::F32,
                        strides,
                    },
                    Operand {
                        elem: Elem::F32,
                        strides: bias_strides,
                    },
                ],
                nodes: vec![ExprNode {
                    op: Op::Add,
                    args: vec![Arg::Operand(0), Arg::Operand(1)],
                    elem: Elem::F32,
                }],
            };
            fused.emit(l.cx, &symbol)?;
            let bias = l.loc(bias)?;
            l.kernel(
                symbol,
                vec![out, product, bias],
                fused.extent(l.cx.lanes()),
                true,
            );
            return Ok(());
        } else {
            let copy = IndexCopy {
                elem_bytes: 4,
                out_strides: contiguous_strides(&y_shape),
                maps: vec![AxisMap::Affine { start: 0, step: 1 }; y_shape.len()],
                in_strides: strides,
                shape: y_shape.clone(),
                fill: 0,
            };
            copy.emit(l.cx, &symbol)?;
            copy.extent()
        };
        l.kernel(symbol, vec![out, product], extent, true);
        return Ok(());
    }
    let symbol = l.symbol("conv_direct");
    emit_direct(
        l.cx,
        &symbol,
        (n, c, m, attrs.group),
        &window,
        node.inputs.len() > 2,
    )?;
    let mut buffers = vec![out];
    for &input in &node.inputs {
        buffers.push(l.loc(input)?);
    }
    l.kernel(symbol, buffers, n * m, true);
    Ok(())
}
