//! Depthwise 2-D convolution (one filter per channel), register-blocked
//! over output rows: an iteration is one (batch, channel) plane; a block of
//! `R` output rows by one vector of columns keeps `R` accumulators, and
//! each input row under the block is read once per horizontal tap and
//! multiplied into every output row of the block that uses it (a 3×3
//! stride-1 block of 6 rows reads 8 input rows instead of 18). The taps'
//! weights are splatted once per plane; padding is the read mask (lanes
//! outside the input read 0, rows outside it are skipped); the bias starts
//! the accumulators and a fused elementwise group ([`Epilogue`]) is
//! applied before the store.

use inkwell::values::IntValue;
use inkwell::IntPredicate;

use super::conv_epilogue::Epilogue;
use super::math::math;
use super::window::Window;
use super::{Cx, Elem, Kernel};
use crate::CodegenError;

/// A depthwise convolution over `[batch, channels, h, w]`.
#[derive(Clone, Debug)]
pub(crate) struct Depthwise {
    pub batch: usize,
    pub channels: usize,
    pub window: Window,
    pub bias: bool,
    pub epilogue: Option<Epilogue>,
}

impl Depthwise {
    /// Whether the kernel computes this convolution: 2-D, one filter per
    /// channel.
    pub fn applies(group: usize, channels: usize, filters: usize, spatial: usize) -> bool {
        group > 1 && group == channels && filters == channels && spatial == 2
    }

    /// The range of the kernel's parallel axis (planes).
    pub fn extent(&self) -> usize {
        self.batch * self.channels
    }

    /// Output rows per register block.
    fn block_rows(&self, cx: Cx<'_, '_>) -> usize {
        let rows = if cx.target.isa.vector_registers() >= 32 {
            6
        } else {
            4
        };
        rows.min(self.window.output[0])
    }

    /// Emits the kernel (buffers: y, x, w, bias?, epilogue operands..).
    pub fn emit(&self, cx: Cx<'_, '_>, symbol: &str) -> Result<(), CodegenError> {
        let w = &self.window;
        let extra = self.epilogue.as_ref().map_or(0, Epilogue::buffers);
        let k = Kernel::define(cx, symbol, 3 + usize::from(self.bias) + extra)?;
        let f32t = cx.context.f32_type();
        let lanes = w.row_lanes(cx);
        let vf = f32t.vec_type(lanes);
        let math = math(&k, lanes);
        let rows = self.block_rows(cx);
        let accs = (0..rows)
            .map(|_| k.slot(vf.into()))
            .collect::<Result<Vec<_>, _>>()?;
        let (kh, kw) = (w.kernel[0], w.kernel[1]);
        let in_plane = w.input[0] * w.input[1];
        let (oh, ow) = (w.output[0], w.output[1]);
        k.nest(&[self.extent()], true, &mut |idx: &[IntValue<'_>]| {
            let plane = idx[0];
            let b = &k.em.builder;
            let batch = b.build_int_unsigned_div(plane, k.int(self.channels as i64), "n")?;
            let channel = b.build_int_unsigned_rem(plane, k.int(self.channels as i64), "c")?;
            let w_base = b.build_int_mul(channel, k.int((kh * kw) as i64), "wb")?;
            let mut weights = Vec::with_capacity(kh * kw);
            for tap in 0..kh * kw {
                let at = k.em.builder.build_int_add(w_base, k.int(tap as i64), "w")?;
                weights.push(k.load_splat(
                    Elem::F32,
                    lanes,
                    k.element(k.buffers[2], f32t.into(), at)?,
                )?);
            }
            let start = if self.bias {
                k.load_splat(
                    Elem::F32,
                    lanes,
                    k.element(k.buffers[3], f32t.into(), channel)?,
                )?
            } else {
                math.c(0.0)
            };
            let x_base =
                k.em.builder
                    .build_int_mul(plane, k.int(in_plane as i64), "xb")?;
            let y_base =
                k.em.builder
                    .build_int_mul(plane, k.int((oh * ow) as i64), "yb")?;
            let at = Plane {
                dw: self,
                accs: &accs,
                weights: &weights,
                start,
                batch,
                channel,
                x_base,
                y_base,
            };
            let full = oh / rows;
            k.em.counted_loop(k.int(0), k.int(full as i64), |block| {
                let first =
                    k.em.builder
                        .build_int_mul(block, k.int(rows as i64), "oh0")?;
                at.block(&k, rows, first)
            })?;
            if oh % rows > 0 {
                at.block(&k, oh % rows, k.int((full * rows) as i64))?;
            }
            Ok(())
        })?;
        k.finish()
    }
}

/// The per-plane values of one iteration.
struct Plane<'d, 'ctx> {
    dw: &'d Depthwise,
    accs: &'d [inkwell::values::PointerValue<'ctx>],
    weights: &'d [inkwell::values::VectorValue<'ctx>],
    start: inkwell::values::VectorValue<'ctx>,
    batch: IntValue<'ctx>,
    channel: IntValue<'ctx>,
    x_base: IntValue<'ctx>,
    y_base: IntValue<'ctx>,
}

impl<'ctx> Plane<'_, 'ctx> {
    /// Output rows `first..first + rows` (a compile-time count), every
    /// column vector.
    fn block(
        &self,
        k: &Kernel<'_, 'ctx>,
        rows: usize,
        first: IntValue<'ctx>,
    ) -> Result<(), CodegenError> {
        let w = &self.dw.window;
        let lanes = w.row_lanes(k.cx);
        let vf = k.cx.context.f32_type().vec_type(lanes);
        let f32t = k.cx.context.f32_type();
        let (kh, kw) = (w.kernel[0], w.kernel[1]);
        let (stride, dilation) = (w.strides[0], w.dilations[0]);
        let ow = w.output[1];
        let extra = 3 + usize::from(self.dw.bias);
        // Input row j (relative to the block's first tap row) feeds output
        // row r through vertical tap i when j = r·stride + i·dilation.
        let span = (rows - 1) * stride + (kh - 1) * dilation + 1;
        let users: Vec<Vec<(usize, usize)>> = (0..span)
            .map(|j| {
                (0..rows)
                    .flat_map(|r| (0..kh).map(move |i| (r, i)))
                    .filter(|&(r, i)| r * stride + i * dilation == j)
                    .collect()
            })
            .collect();
        let top =
            k.em.mul_add(first, k.int(stride as i64), k.int(-(w.pads[0] as i64)))?;
        k.em.counted_loop(k.int(0), k.int(ow.div_ceil(lanes as usize) as i64), |cv| {
            let columns = w.columns(k, lanes, cv)?;
            for acc in &self.accs[..rows] {
                k.em.builder.build_store(*acc, self.start)?;
            }
            // The taps, read with plain loads (`interior`) or masked ones.
            let taps = |interior: bool| -> Result<(), CodegenError> {
                for (j, users) in users.iter().enumerate() {
                    if users.is_empty() {
                        continue;
                    }
                    let b = &k.em.builder;
                    let ih = b.build_int_add(top, k.int(j as i64), "ih")?;
                    let inside = b.build_int_compare(
                        IntPredicate::ULT,
                        ih,
                        k.int(w.input[0] as i64),
                        "inside",
                    )?;
                    k.em.if_then(inside, || {
                        let at = k.em.mul_add(ih, k.int(w.input[1] as i64), self.x_base)?;
                        for tw in 0..kw {
                            let (source, t) = ((k.buffers[1], at), k.int(tw as i64));
                            let x = match interior {
                                true => w.load_interior_row(k, source, &columns, t)?,
                                false => w.load_row(k, source, &columns, t, 0.0)?.0,
                            };
                            for &(r, i) in users {
                                let b = &k.em.builder;
                                let acc =
                                    b.build_load(vf, self.accs[r], "acc")?.into_vector_value();
                                let sum =
                                    k.em.call_value(
                                        "llvm.fma",
                                        &[vf.into()],
                                        &[x.into(), self.weights[i * kw + tw].into(), acc.into()],
                                    )?
                                    .into_vector_value();
                                k.em.builder.build_store(self.accs[r], sum)?;
                            }
                        }
                        Ok(())
                    })?;
                }
                Ok(())
            };
            match w.interior(k, &columns)? {
                Some(interior) => {
                    k.em.if_then(interior, || taps(true))?;
                    let edge = k.em.builder.build_not(interior, "edge")?;
                    k.em.if_then(edge, || taps(false))?;
                }
                None => taps(false)?,
            }
            for (r, acc) in self.accs[..rows].iter().enumerate() {
                let b = &k.em.builder;
                let row = b.build_int_add(first, k.int(r as i64), "oh")?;
                let pixel = k.em.mul_add(row, k.int(ow as i64), columns.first)?;
                let mut value = b.build_load(vf, *acc, "r")?.into_vector_value();
                if let Some(epilogue) = &self.dw.epilogue {
                    let live = (!ow.is_multiple_of(lanes as usize)).then_some(columns.live);
                    value = epilogue.apply(
                        k,
                        &k.buffers[extra..],
                        value,
                        self.batch,
                        self.channel,
                        pixel,
                        live,
                    )?;
                }
                let at = k.em.builder.build_int_add(self.y_base, pixel, "y")?;
                w.store_row(
                    k,
                    k.element(k.buffers[0], f32t.into(), at)?,
                    &columns,
                    value,
                )?;
            }
            Ok(())
        })
    }
}
