//! Convolution: im2col + the packed GEMM for ungrouped convolutions with
//! constant weights and many filters or short rows (output pixels × taps
//! times taps × channels, then a transposing bias add into NCHW); the
//! others (grouped/depthwise, run-time weights, few filters) are computed
//! directly (`conv_direct`).

use inkwell::values::IntValue;
use m4c_ir::op::ConvAttrs;
use m4c_ir::{DType, Node, Op};

use super::conv_direct::DirectConv;
use super::elementwise::{Arg, ExprNode, Fused, Operand};
use super::movement::{AxisMap, IndexCopy};
use super::window::Window;
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

/// From this many filters the im2col copy and the GEMM always pay.
const GEMM_MIN_FILTERS: usize = 64;

/// Whether an ungrouped convolution with constant weights goes through
/// im2col + GEMM rather than the direct kernel: always from
/// [`GEMM_MIN_FILTERS`] filters, otherwise when the GEMM's 32-filter-wide
/// tile would be fuller than the direct kernel's row vectors (short output
/// rows, e.g. a patch embedding's 4-wide rows). Measured on the fixtures:
/// deeplab_head's 32-filter convolution over 16-wide rows is faster
/// direct (0.080 → 0.060 ms), clip_vision's 32-filter 8×8/8 patch
/// embedding over 4-wide rows faster as a GEMM (0.020 → 0.015 ms).
fn prefers_gemm(filters: usize, row: usize, lanes: usize) -> bool {
    let tile = 32;
    let gemm_use = filters as f64 / filters.next_multiple_of(tile) as f64;
    let direct_use = row as f64 / row.next_multiple_of(lanes) as f64;
    filters >= GEMM_MIN_FILTERS || gemm_use > direct_use
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
    if x_shape.len() < 3 {
        return Err(CodegenError::Unsupported(format!(
            "Conv on a rank-{} input (needs batch, channel and spatial axes)",
            x_shape.len()
        )));
    }
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
    let row = y_shape[y_shape.len() - 1];
    let gemm_weights =
        weights.filter(|_| attrs.group == 1 && prefers_gemm(m, row, l.cx.lanes() as usize));
    if let Some(weights) = gemm_weights {
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
    let direct = DirectConv {
        batch: n,
        channels: c,
        filters: m,
        group: attrs.group,
        window,
        bias: node.inputs.len() > 2,
    };
    let symbol = l.symbol("conv_direct");
    direct.emit(l.cx, &symbol)?;
    let mut buffers = vec![out];
    for &input in &node.inputs {
        buffers.push(l.loc(input)?);
    }
    l.kernel(symbol, buffers, direct.extent(), true);
    Ok(())
}
