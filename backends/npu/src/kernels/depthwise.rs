//! Depthwise int8 conv2d (NHWC, one filter per channel, any kernel, stride
//! and zero padding) on the vector unit: the DMA builds the implicit-im2col
//! panel of a tile of output pixels (one row per pixel, `taps x channels`
//! bytes, shared with the dense convolution), then per kernel tap one
//! `vbin mul`/`mac` multiplies the panel column block by that tap's
//! per-channel weights and accumulates, and `requant` applies per-channel
//! bias, multiplier and shift; a function of the result (HardSwish after a
//! MobileNet depthwise conv) can follow as a `vlut` on the requantised tile.

use super::conv::im2col_panel;
use super::data::{i32_bytes, i8_bytes, SplitMix64};
use super::reference::ConvShape;
use super::stream::{self, StreamKernel, StreamShape, Tile};
use super::vector::{self, Operand};
use super::{align, KernelError, KernelProgram, ProgramBuilder};
use crate::config::MachineConfig;
use crate::fixed::Prescale;
use crate::isa::Instr;
use crate::quant::{Requant, SHIFT_RANGE};
use crate::sim::BinOp;

/// Operands of one depthwise convolution (`shape.c_out == shape.c_in`).
#[derive(Clone, Debug)]
pub struct DepthwiseOperands {
    /// The shape; `c_in` channels in and out.
    pub shape: ConvShape,
    /// Input, h x w x c.
    pub input: Vec<i8>,
    /// Weights, kh x kw x c.
    pub weights: Vec<i8>,
    /// Per-channel bias.
    pub bias: Vec<i32>,
    /// Per-channel requantisation multiplier and shift.
    pub scales: Vec<(i32, i32)>,
    /// Output zero point.
    pub zero_point: i32,
    /// Lowest output value (-128; the zero point fuses a Relu).
    pub clamp_min: i8,
    /// A table applied to each requantised result `q` (`table[q + 128]`)
    /// before it is stored: a function of the conv's result computed in
    /// its output stage instead of a layer of its own.
    pub table: Option<[i8; 256]>,
}

impl DepthwiseOperands {
    /// Random operands from `seed`, per-channel scales spread over 4x.
    pub fn random(shape: ConvShape, seed: u64) -> DepthwiseOperands {
        let mut rng = SplitMix64::new(seed);
        let c = shape.c_in;
        let taps = shape.kh * shape.kw;
        let base = 1.0 / (128.0 * (taps as f64).sqrt());
        let scales = rng.channel_scales(c, base);
        DepthwiseOperands {
            shape,
            input: rng.i8s(shape.h * shape.w * c),
            weights: rng.i8s(taps * c),
            bias: rng.i32s(c, 2048),
            scales,
            zero_point: (rng.next_u64() % 7) as i32 - 3,
            clamp_min: -128,
            table: None,
        }
    }

    fn channel_quant(&self, c: usize) -> Requant {
        Requant {
            multiplier: self.scales[c].0,
            shift: self.scales[c].1,
            zero_point: self.zero_point,
            clamp_min: self.clamp_min,
            clamp_max: 127,
        }
    }

    /// The reference result (NHWC int8).
    pub fn reference(&self) -> Vec<i8> {
        let s = self.shape;
        let (oh, ow, ch) = (s.out_h(), s.out_w(), s.c_in);
        let mut out = vec![0i8; oh * ow * ch];
        for oy in 0..oh {
            for ox in 0..ow {
                for c in 0..ch {
                    let mut acc = self.bias[c];
                    for ky in 0..s.kh {
                        for kx in 0..s.kw {
                            let y = (oy * s.stride + ky) as isize - s.pad as isize;
                            let x = (ox * s.stride + kx) as isize - s.pad as isize;
                            if y < 0 || x < 0 || y >= s.h as isize || x >= s.w as isize {
                                continue;
                            }
                            let iv = self.input[(y as usize * s.w + x as usize) * ch + c] as i32;
                            let wv = self.weights[(ky * s.kw + kx) * ch + c] as i32;
                            acc = acc.wrapping_add(iv * wv);
                        }
                    }
                    let q = self.channel_quant(c).apply(acc);
                    out[(oy * ow + ox) * ch + c] = match &self.table {
                        Some(t) => t[(q as i32 + 128) as usize],
                        None => q,
                    };
                }
            }
        }
        out
    }

    fn check(&self) -> Result<(), KernelError> {
        let s = self.shape;
        let bad = |m: String| Err(KernelError::BadShape(m));
        if [s.h, s.w, s.c_in, s.kh, s.kw, s.stride].contains(&0) || s.c_out != s.c_in {
            return bad(format!(
                "depthwise {s:?} needs non-zero sizes and c_out == c_in"
            ));
        }
        if s.h + 2 * s.pad < s.kh || s.w + 2 * s.pad < s.kw {
            return bad("kernel larger than the padded input".into());
        }
        let c = s.c_in;
        if self.input.len() != s.h * s.w * c
            || self.weights.len() != s.kh * s.kw * c
            || self.bias.len() != c
            || self.scales.len() != c
        {
            return bad("operand lengths do not match the shape".into());
        }
        if let Some((c, _)) = self
            .scales
            .iter()
            .enumerate()
            .find(|(_, q)| !SHIFT_RANGE.contains(&q.1))
        {
            return bad(format!("channel {c} shift outside {SHIFT_RANGE:?}"));
        }
        Ok(())
    }
}

/// Generates the depthwise program for `config`.
pub fn generate(
    ops: &DepthwiseOperands,
    config: &MachineConfig,
) -> Result<KernelProgram, KernelError> {
    ops.check()?;
    let s = ops.shape;
    let (c, taps, pixels) = (s.c_in, s.kh * s.kw, s.out_h() * s.out_w());
    let records_at = align(taps * c) as u64;
    let table_at = align(records_at as usize + 12 * c) as u64;
    let shape = StreamShape {
        rows: pixels,
        in_row_bytes: taps * c,
        out_row_bytes: c,
        acc_per_row: c,
        const_bytes: table_at as usize + ops.table.map_or(0, |t| t.len()),
    };
    let tile_rows = stream::tile_rows(config, &shape)?;
    let mut b = ProgramBuilder::default();
    let records: Vec<i32> = (0..c)
        .flat_map(|ch| [ops.bias[ch], ops.scales[ch].0, ops.scales[ch].1])
        .collect();
    let w_dram = b.alloc_data(i8_bytes(&ops.weights))?;
    let rec_dram = b.alloc_data(i32_bytes(&records))?;
    let table_dram = match &ops.table {
        Some(t) => Some(b.alloc_data(i8_bytes(t))?),
        None => None,
    };
    let in_dram = b.alloc_data(i8_bytes(&ops.input))? as usize;
    let out_dram = b.alloc(pixels * c)?;
    let load_consts = |b: &mut ProgramBuilder| {
        stream::load_block(b, w_dram, taps * c, 0)?;
        stream::load_block(b, rec_dram, 12 * c, records_at)?;
        match table_dram {
            Some(t) => stream::load_block(b, t, 256, table_at),
            None => Ok(()),
        }
    };
    let load = |b: &mut ProgramBuilder, t: &Tile| {
        let panel = (t.rows.clone(), 0..taps * c);
        im2col_panel(b, &s, in_dram, panel, t.input, (taps * c) as u64)
    };
    let compute = |b: &mut ProgramBuilder, t: &Tile| {
        let r = t.rows.len();
        vector::strides(b, c, taps * c, 0)?;
        vector::prescale(b, Prescale::IDENTITY, Prescale::IDENTITY)?;
        vector::requant(b, &vector::int32_out(0, 0))?;
        for tap in 0..taps {
            let op = if tap == 0 { BinOp::Mul } else { BinOp::Mac };
            let (x, w) = (t.input + (tap * c) as u64, (tap * c) as u64);
            vector::binary(
                b,
                op,
                Operand::Acc(0),
                Operand::Act(x),
                Operand::Act(w),
                r,
                c,
                false,
            )?;
        }
        vector::strides(b, c, c, 0)?;
        vector::requant(
            b,
            &Requant {
                zero_point: ops.zero_point,
                clamp_min: ops.clamp_min,
                ..vector::int32_out(0, 0)
            },
        )?;
        b.emit(Instr::Requant {
            dst: t.output as i64,
            acc: 0,
            bias: records_at as i64,
            rows: r as i64,
            cols: c as i64,
            mode: 2,
        })?;
        if ops.table.is_none() {
            return Ok(());
        }
        b.emit(Instr::Vlut {
            dst: t.output as i64,
            src: t.output as i64,
            table: table_at as i64,
            rows: r as i64,
            cols: c as i64,
        })
    };
    let kernel = StreamKernel {
        load_consts: &load_consts,
        load: &load,
        compute: &compute,
        store: &|b, t| stream::store_rows(b, out_dram, c, t),
    };
    stream::emit(&mut b, &shape, tile_rows, &kernel)?;
    Ok(KernelProgram {
        program: b.finish()?,
        out_addr: out_dram,
        out_len: pixels * c,
        inputs: vec![in_dram as u32],
        tile_rows,
    })
}
