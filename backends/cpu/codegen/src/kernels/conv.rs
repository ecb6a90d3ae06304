//! Convolution: ungrouped convolutions as a GEMM on the NCHW layout
//! (`conv_gemm` with the pixels in the lanes, on small maps `conv_gemm_t`
//! with the filters in the lanes; both read the input, or a zero-padded
//! copy of it, through offset tables instead of an im2col matrix, and
//! write NCHW with the bias in the epilogue), depthwise 2-D convolutions
//! register-blocked over output
//! rows (`conv_depthwise`), other grouped ones directly (`conv_direct`).
//! The first two also evaluate a fused elementwise group on their
//! accumulators (`conv_epilogue`).

use m4c_ir::op::{ConvAttrs, PadMode};
use m4c_ir::{DType, Node, Op};

use super::contiguous_strides;
use super::conv_depthwise::Depthwise;
use super::conv_direct::DirectConv;
use super::conv_epilogue::Epilogue;
use super::conv_gemm::{ConvGemm, GemmConv};
use super::conv_gemm_t::ConvGemmT;
use super::movement::{pad_table, AxisMap, IndexCopy};
use super::window::Window;
use crate::graph::{Loc, Lowering};
use crate::CodegenError;

/// The kernel a convolution runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Gemm,
    Depthwise,
    Direct,
}

/// The kernel for `node` (a Conv) with `attrs` on its input of `x_shape`
/// and weights of `w_shape`.
fn path(attrs: &ConvAttrs, x_shape: &[usize], w_shape: &[usize]) -> Path {
    if attrs.group == 1 {
        Path::Gemm
    } else if Depthwise::applies(attrs.group, x_shape[1], w_shape[0], x_shape.len() - 2) {
        Path::Depthwise
    } else {
        Path::Direct
    }
}

/// Whether the kernel of `node` (a Conv) can evaluate a fused elementwise
/// group on its result.
pub(crate) fn takes_epilogue(l: &Lowering<'_, '_>, node: &Node) -> bool {
    let Op::Conv(attrs) = &node.op else {
        return false;
    };
    match (l.shape(node.inputs[0]), l.shape(node.inputs[1])) {
        (Ok(x), Ok(w)) if x.len() >= 3 => path(attrs, &x, &w) != Path::Direct,
        _ => false,
    }
}

/// The input `x` (`planes` channel planes) as a window without padding
/// reads it: `x` itself when `window` does not pad, else a zero-padded
/// copy (a copy kernel into a temporary) with the window over it.
fn padded(
    l: &mut Lowering<'_, '_>,
    x: Loc,
    planes: usize,
    window: Window,
) -> Result<(Loc, Window), CodegenError> {
    let pads = window.padding();
    if pads
        .iter()
        .all(|&(before, after)| before == 0 && after == 0)
    {
        return Ok((x, window));
    }
    let input = window.padded_input();
    let mut shape = vec![planes];
    shape.extend(&input);
    let mut maps = vec![AxisMap::Affine { start: 0, step: 1 }];
    for (&(before, after), &n) in pads.iter().zip(&window.input) {
        maps.push(AxisMap::Table(pad_table(
            n,
            before,
            after,
            PadMode::Constant(0.0),
        )?));
    }
    let mut source = vec![planes];
    source.extend(&window.input);
    let copy = IndexCopy {
        elem_bytes: 4,
        out_strides: contiguous_strides(&shape),
        in_strides: contiguous_strides(&source),
        shape: shape.clone(),
        maps,
        fill: 0,
    };
    let xp = l.temp(shape.iter().product::<usize>() * 4);
    let symbol = l.symbol("pad");
    copy.emit(l.cx, &symbol)?;
    l.kernel(symbol, vec![xp, x], copy.extent(), true);
    let window = Window {
        input,
        pads: vec![0; window.pads.len()],
        ..window
    };
    Ok((xp, window))
}

/// Lowers Conv; with `group` (the members of a fusion group reading only
/// its result, root last), the kernel also evaluates the group and writes
/// the root's result instead.
pub(crate) fn lower(
    l: &mut Lowering<'_, '_>,
    node: &Node,
    attrs: &ConvAttrs,
    group: Option<&[usize]>,
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
    let (epilogue, operands) = match group {
        Some(members) => {
            let (epilogue, operands) =
                Epilogue::describe(l, node.output, members).ok_or_else(|| CodegenError::Graph {
                    graph: l.graph.name.clone(),
                    reason: "a convolution epilogue no longer fits its group".into(),
                })?;
            let root = &l.graph.nodes[*members
                .last()
                .ok_or(CodegenError::Internal("groups are non-empty"))?];
            (Some(epilogue), Some((root.output, operands)))
        }
        None => (None, None),
    };
    let out = match &operands {
        Some((root, _)) => l.define(*root)?,
        None => l.define(node.output)?,
    };
    if y_shape.iter().product::<usize>() == 0 {
        return Ok(());
    }
    let x = l.loc(node.inputs[0])?;
    let bias = node.inputs.get(2).map(|&b| l.loc(b)).transpose()?;
    let mut tail: Vec<_> = bias.into_iter().collect();
    for &value in operands.iter().flat_map(|(_, values)| values) {
        tail.push(l.loc(value)?);
    }
    match path(attrs, &x_shape, &w_shape) {
        Path::Gemm => {
            // Both GEMM kernels read B from the input (zero-padded first
            // when the window pads) through offset tables. Small maps put
            // the filters in the lanes, larger ones the pixels; constant
            // weights are repacked for the kernel, others read as stored.
            let weights = l
                .constant(node.inputs[1])
                .map(|w| {
                    w.to_f32_vec()
                        .map_err(|e| CodegenError::Unsupported(format!("Conv weights: {e}")))
                })
                .transpose()?;
            let filters_in_lanes = ConvGemmT::applies(l.cx.target, m, c, &window);
            let (b, window) = padded(l, x, n * c, window)?;
            let conv = GemmConv {
                batch: n,
                filters: m,
                channels: c,
                window,
                bias: bias.is_some(),
                epilogue,
            };
            let (symbol, weights, offsets, extent, scratch) = match weights {
                Some(w) if filters_in_lanes => {
                    let gemm = ConvGemmT { conv };
                    let packed = gemm.pack(l.cx.target, &w)?;
                    let offsets = gemm.offsets()?;
                    let symbol = l.symbol("conv_gemm_t");
                    gemm.emit(l.cx, &symbol)?;
                    let extent = gemm.extent(l.cx.target);
                    let scratch = gemm.scratch_bytes(l.cx.target);
                    (symbol, l.weights_loc(&packed), offsets, extent, scratch)
                }
                w => {
                    let gemm = ConvGemm {
                        conv,
                        w_packed: w.is_some(),
                    };
                    let weights = match &w {
                        Some(w) => l.weights_loc(&gemm.pack(l.cx.target, w)?),
                        None => l.loc(node.inputs[1])?,
                    };
                    let offsets = gemm.offsets(l.cx.target)?;
                    let symbol = l.symbol("conv_gemm");
                    gemm.emit(l.cx, &symbol)?;
                    let extent = gemm.extent(l.cx.target);
                    let scratch = gemm.scratch_bytes(l.cx.target);
                    (symbol, weights, offsets, extent, scratch)
                }
            };
            let mut buffers = vec![out, b, weights, l.weights_loc(&offsets)];
            buffers.extend(tail);
            l.kernel_with_scratch(symbol, buffers, extent, scratch, true);
        }
        Path::Depthwise => {
            let weights = l.loc(node.inputs[1])?;
            let dw = Depthwise {
                batch: n,
                channels: c,
                window,
                bias: bias.is_some(),
                epilogue,
            };
            let symbol = l.symbol("conv_dw");
            dw.emit(l.cx, &symbol)?;
            let mut buffers = vec![out, x, weights];
            buffers.extend(tail);
            let scratch = dw.scratch_bytes(l.cx);
            l.kernel_with_scratch(symbol, buffers, dw.extent(), scratch, true);
        }
        Path::Direct => {
            let weights = l.loc(node.inputs[1])?;
            let direct = DirectConv {
                batch: n,
                channels: c,
                filters: m,
                group: attrs.group,
                window,
                bias: bias.is_some(),
            };
            let symbol = l.symbol("conv_direct");
            direct.emit(l.cx, &symbol)?;
            let mut buffers = vec![out, x, weights];
            buffers.extend(tail);
            l.kernel(symbol, buffers, direct.extent(l.cx), true);
        }
    }
    Ok(())
}
