//! int8 conv2d over NHWC images (1x1, 3x3, any kernel, stride, zero
//! padding) as an implicit-im2col GEMM: M = output pixels, K = kh*kw*c_in,
//! N = c_out. The DMA builds each im2col panel straight from the image:
//! one strided `ld` per (output row, kernel tap), whose zero padding rows
//! stand in for pixels outside the image.

use super::data::{i8_bytes, SplitMix64};
use super::pipeline::{emit, param_bytes, MatmulIo};
use super::reference::ConvShape;
use super::{KernelError, ProgramBuilder, TilePlan};
use crate::config::MachineConfig;
use crate::isa::Instr;
use crate::program::Program;
use crate::quant::Requant;
use std::ops::Range;

/// Operands of one convolution layer.
#[derive(Clone, Debug)]
pub struct ConvOperands {
    /// The shape.
    pub shape: ConvShape,
    /// Input, h x w x c_in.
    pub input: Vec<i8>,
    /// Weights, kh x kw x c_in x c_out.
    pub weights: Vec<i8>,
    /// Per-output-channel bias.
    pub bias: Option<Vec<i32>>,
    /// Output requantisation (its multiplier and shift apply unless
    /// `channel_scales` is given).
    pub quant: Requant,
    /// Per-output-channel multiplier and shift (per-channel quantised weights).
    pub channel_scales: Option<Vec<(i32, i32)>>,
}

impl ConvOperands {
    /// Random operands from `seed`.
    pub fn random(shape: ConvShape, seed: u64) -> ConvOperands {
        let mut rng = SplitMix64::new(seed);
        let k = shape.kh * shape.kw * shape.c_in;
        let (multiplier, shift) = Requant::quantize_scale(1.0 / (128.0 * (k.max(1) as f64).sqrt()))
            .unwrap_or((1 << 30, -31));
        ConvOperands {
            shape,
            input: rng.i8s(shape.h * shape.w * shape.c_in),
            weights: rng.i8s(k * shape.c_out),
            bias: Some(rng.i32s(shape.c_out, 4096)),
            quant: Requant {
                multiplier,
                shift,
                zero_point: 3,
                clamp_min: -128,
                clamp_max: 127,
            },
            channel_scales: None,
        }
    }

    /// The same operands requantised per output channel, with scales
    /// spread over 4x around the per-tensor one.
    pub fn per_channel(mut self, seed: u64) -> ConvOperands {
        let q = self.quant;
        let base = q.multiplier as f64 / 2f64.powi(31) * 2f64.powi(q.shift) / 2.0;
        self.channel_scales = Some(SplitMix64::new(seed).channel_scales(self.shape.c_out, base));
        self
    }

    /// The reference result (NHWC int8).
    pub fn reference(&self) -> Vec<i8> {
        super::reference::conv2d(
            &self.input,
            &self.weights,
            self.bias.as_deref(),
            &self.shape,
            (&self.quant, self.channel_scales.as_deref()),
        )
    }
}

/// A generated convolution program.
pub struct ConvProgram {
    /// The program (operands in its DRAM image).
    pub program: Program,
    /// DRAM address of the out_h x out_w x c_out output.
    pub out_addr: u32,
    /// The tiling of the implicit GEMM.
    pub plan: TilePlan,
    /// DRAM address of the h x w x c_in input (where a caller writes a
    /// run-time image, as for [`super::KernelProgram::inputs`]).
    pub input_addr: u32,
}

/// Generates a convolution program for `config` (`unsplit`: as for GEMM).
pub fn generate(
    ops: &ConvOperands,
    config: &MachineConfig,
    unsplit: bool,
) -> Result<ConvProgram, KernelError> {
    generate_with(ops, None, config, unsplit)
}

/// [`generate`] with `table` applied in the output stage, as
/// [`super::gemm::generate_with`].
pub fn generate_with(
    ops: &ConvOperands,
    table: Option<&[i8; 256]>,
    config: &MachineConfig,
    unsplit: bool,
) -> Result<ConvProgram, KernelError> {
    let s = ops.shape;
    if [s.h, s.w, s.c_in, s.c_out, s.kh, s.kw, s.stride].contains(&0) {
        return Err(KernelError::BadShape(format!("{s:?} has a zero dimension")));
    }
    if s.h + 2 * s.pad < s.kh || s.w + 2 * s.pad < s.kw {
        return Err(KernelError::BadShape(
            "kernel larger than the padded input".into(),
        ));
    }
    let (m, k, n) = (s.out_h() * s.out_w(), s.kh * s.kw * s.c_in, s.c_out);
    if ops.input.len() != s.h * s.w * s.c_in
        || ops.weights.len() != k * n
        || ops.bias.as_ref().is_some_and(|b| b.len() != n)
    {
        return Err(KernelError::BadShape(
            "operand lengths do not match the shape".into(),
        ));
    }
    let plan = TilePlan::choose_reserving(
        config,
        (m, k, n),
        param_bytes(ops.channel_scales.is_some()),
        table.map_or(0, |t| t.len()),
        unsplit,
    )?;
    let mut b = ProgramBuilder::default();
    let in_dram = b.alloc_data(i8_bytes(&ops.input))? as usize;
    let io = MatmulIo::alloc(
        &mut b,
        (m, k, n),
        &ops.weights,
        ops.bias.as_deref(),
        ops.channel_scales.as_deref(),
        (ops.quant, table),
    )?;
    let load_a = |b: &mut ProgramBuilder, pixels: Range<usize>, ks: Range<usize>, sram, stride| {
        im2col_panel(b, &s, in_dram, (pixels, ks), sram, stride)
    };
    emit(&mut b, &io, plan, &load_a)?;
    Ok(ConvProgram {
        program: b.finish()?,
        out_addr: io.out_dram,
        plan,
        input_addr: in_dram as u32,
    })
}

/// Loads the implicit-im2col panel of output pixels `pixels` and im2col
/// columns `ks` (index `tap * c_in + channel`) into SRAM at `sram`, one
/// pixel per row `stride` bytes apart.
pub(super) fn im2col_panel(
    b: &mut ProgramBuilder,
    s: &ConvShape,
    in_dram: usize,
    (pixels, ks): (Range<usize>, Range<usize>),
    sram: u64,
    stride: u64,
) -> Result<(), KernelError> {
    let mut kk = ks.start;
    while kk < ks.end {
        let (tap, c0) = (kk / s.c_in, kk % s.c_in);
        let len = (s.c_in - c0).min(ks.end - kk);
        let col = (kk - ks.start) as u64;
        let mut p = pixels.start;
        while p < pixels.end {
            let (oy, ox0) = (p / s.out_w(), p % s.out_w());
            let ox1 = (ox0 + pixels.end - p).min(s.out_w());
            let dst = sram + (p - pixels.start) as u64 * stride + col;
            load_taps(b, s, in_dram, (oy, ox0..ox1), (tap, c0, len), dst, stride)?;
            p += ox1 - ox0;
        }
        kk += len;
    }
    Ok(())
}

/// Loads channels `c0..c0+len` of kernel tap `tap` for output pixels
/// `ox` of output row `oy` into consecutive panel rows at `dst`.
fn load_taps(
    b: &mut ProgramBuilder,
    s: &ConvShape,
    in_dram: usize,
    (oy, ox): (usize, Range<usize>),
    (tap, c0, len): (usize, usize, usize),
    dst: u64,
    stride: u64,
) -> Result<(), KernelError> {
    let (ky, kx) = (tap / s.kw, tap % s.kw);
    let y = (oy * s.stride + ky) as isize - s.pad as isize;
    // Output columns whose input column lies inside the image.
    let x_of = |o: usize| (o * s.stride + kx) as isize - s.pad as isize;
    let valid =
        |o: &usize| y >= 0 && (y as usize) < s.h && x_of(*o) >= 0 && (x_of(*o) as usize) < s.w;
    let lo = ox.clone().find(valid).unwrap_or(ox.end);
    let hi = ox.clone().rev().find(valid).map_or(lo, |o| o + 1);
    let (top, rows, bottom) = (lo - ox.start, hi - lo, ox.end - hi);
    let dram = if rows > 0 {
        in_dram + ((y as usize * s.w + x_of(lo) as usize) * s.c_in + c0)
    } else {
        0
    };
    b.emit(Instr::LdCfg {
        dram_stride: (s.stride * s.c_in) as i64,
        sram_stride: stride as i64,
        pad_top: top as i64,
        pad_bottom: bottom as i64,
        pad_left: 0,
        pad_right: 0,
    })?;
    b.emit(Instr::Ld {
        space: 1,
        sram: dst as i64,
        dram: dram as i64,
        rows: rows as i64,
        row_bytes: len as i64,
    })
}
