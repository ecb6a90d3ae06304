//! int8 convolution as im2col + the int8 GEMM: the integer convolution of
//! QLinearConv / ConvInteger (`Conv` on i32 over centred int8/uint8
//! operands, as the importer writes them) and of QDQ convolutions
//! (dequantised operands), for ungrouped convolutions with constant
//! weights.
//!
//! The activation's bytes are copied, unconverted, into the rows of a
//! `[batch·positions, channels·taps]` matrix; a tap in the padding gets
//! the activation's zero point, so it contributes `za − za = 0` to the
//! centred product exactly as ONNX pads. The int8 GEMM (constant B = the
//! filters, `[channels·taps, filters]`) then writes `[batch·positions,
//! filters]` through its epilogue, and a copy transposes that into NCHW.

use inkwell::values::IntValue;
use m4c_ir::DType;

use crate::kernels::window::Window;
use crate::kernels::{contiguous_strides, Cx, Kernel};
use crate::CodegenError;

/// The geometry of an int8 convolution.
#[derive(Clone, Debug)]
pub(crate) struct ConvShape {
    pub batch: usize,
    pub channels: usize,
    pub window: Window,
}

impl ConvShape {
    /// Output positions per image.
    pub fn positions(&self) -> usize {
        self.window.output.iter().product()
    }

    /// Taps per channel.
    pub fn taps(&self) -> usize {
        self.window.kernel.iter().product()
    }
}

/// What a padded tap holds: the activation's zero point, known at compile
/// time, or a one-element tensor of this type read at run time (in the
/// buffer after the activation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pad {
    Constant(i32),
    Runtime(DType),
}

/// Emits the byte im2col `col[b·P + p, c·T + t] = x[b, c, tap(p, t)]`
/// (the zero point outside the input): buffers `[col, x]`, plus the zero
/// point's when `pad` is [`Pad::Runtime`]; iterations over the batch.
pub(crate) fn emit_im2col8(
    cx: Cx<'_, '_>,
    symbol: &str,
    shape: &ConvShape,
    pad: Pad,
) -> Result<(), CodegenError> {
    let buffers = if matches!(pad, Pad::Runtime(_)) { 3 } else { 2 };
    let k = Kernel::define(cx, symbol, buffers)?;
    let i8t = cx.context.i8_type();
    let w = &shape.window;
    let (c, positions, taps) = (shape.channels, shape.positions(), shape.taps());
    let plane: usize = w.input.iter().product();
    let pad_byte: IntValue<'_> = match pad {
        // The zero point's low byte is its int8/uint8 representation.
        Pad::Constant(z) => i8t.const_int(z as u8 as u64, false),
        Pad::Runtime(dtype) => {
            let ty = match dtype {
                DType::I8 | DType::U8 => i8t,
                DType::I32 => cx.context.i32_type(),
                other => {
                    return Err(CodegenError::Unsupported(format!(
                        "an int8 convolution zero point of type {other}"
                    )))
                }
            };
            let z =
                k.em.builder
                    .build_load(ty, k.buffers[2], "zp")?
                    .into_int_value();
            k.em.builder.build_int_truncate_or_bit_cast(z, i8t, "zp8")?
        }
    };
    let sp = w.output.len();
    let mut dims = vec![shape.batch];
    dims.extend(&w.output);
    dims.push(c);
    dims.extend(&w.kernel);
    let out_strides = contiguous_strides(&w.output);
    let tap_strides = contiguous_strides(&w.kernel);
    k.nest(&dims, true, &mut |idx: &[IntValue<'_>]| {
        let [batch, rest @ ..] = idx else {
            return Err(CodegenError::Llvm("the loop nest has no batch axis".into()));
        };
        let (o, rest) = rest.split_at(sp);
        let [channel, t @ ..] = rest else {
            return Err(CodegenError::Llvm(
                "the loop nest has no channel axis".into(),
            ));
        };
        let (at, inside) = w.offset(&k, o, t)?;
        let plane_base = k.em.mul_add(*batch, k.int(c as i64), *channel)?;
        let at = k.em.mul_add(plane_base, k.int(plane as i64), at)?;
        let x =
            k.em.builder
                .build_load(i8t, k.element(k.buffers[1], i8t.into(), at)?, "x")?;
        let x = k.em.builder.build_select(inside, x, pad_byte.into(), "x")?;
        let p = k.linear(0, o, &out_strides)?;
        let row = k.em.mul_add(*batch, k.int(positions as i64), p)?;
        let tap = k.linear(0, t, &tap_strides)?;
        let column = k.em.mul_add(*channel, k.int(taps as i64), tap)?;
        let at = k.em.mul_add(row, k.int((c * taps) as i64), column)?;
        k.em.builder
            .build_store(k.element(k.buffers[0], i8t.into(), at)?, x)?;
        Ok(())
    })?;
    k.finish()
}
