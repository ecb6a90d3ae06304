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
//!
//! Narrow planes (rows of two to [`PADDED_MAX_VECTORS`] output vectors:
//! 28×28 and 14×14 maps at 8 lanes) would read most rows through masks,
//! so their plane is first copied into the thread's scratch between zero
//! columns (a [`Padded`] plane) and every tap is a plain load from there.
//! (Rows of one vector gain nothing from it: measured, the copy costs
//! more than their masks.)

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

/// Output rows of two to this many vectors are read from a padded copy
/// of the plane.
const PADDED_MAX_VECTORS: usize = 4;

/// A plane copied between zero columns: the input's rows, each
/// [`Padded::width`] floats with input column `c` at `pad + c`, wide
/// enough that every tap of every output vector is a plain load inside
/// the row.
#[derive(Clone, Debug)]
struct Padded {
    /// Input columns, and where column 0 goes in a copied row.
    columns: usize,
    pad: usize,
    /// The window over the copy (no column padding; the same rows).
    window: Window,
}

impl Padded {
    /// Rows of the copy (the input's).
    fn rows(&self) -> usize {
        self.window.input[0]
    }

    /// Floats per copied row.
    fn width(&self) -> usize {
        self.window.input[1]
    }
}

impl Depthwise {
    /// The padded copy this convolution reads its planes from, if its
    /// rows are narrow and its taps are wide loads.
    fn padded(&self, lanes: usize) -> Option<Padded> {
        let w = &self.window;
        let (h, width) = (w.input[0], w.input[1]);
        let vectors = w.output[1].div_ceil(lanes);
        if !(2..=PADDED_MAX_VECTORS).contains(&vectors) || !w.loads_wide() {
            return None;
        }
        let (stride, dilation, pad) = (w.strides[1], w.dilations[1], w.pads[1]);
        // The last tap of the last vector reads up to here; the copy
        // writes whole vectors from `pad`.
        let reads = vectors * lanes * stride + (w.kernel[1] - 1) * dilation;
        let writes = pad + width.div_ceil(lanes) * lanes;
        let mut window = w.clone();
        window.input = vec![h, reads.max(writes).next_multiple_of(lanes)];
        window.pads = vec![w.pads[0], 0];
        Some(Padded {
            columns: width,
            pad,
            window,
        })
    }

    /// Scratch bytes per thread: the padded plane, if any.
    pub fn scratch_bytes(&self, cx: Cx<'_, '_>) -> usize {
        let lanes = self.window.row_lanes(cx) as usize;
        self.padded(lanes).map_or(0, |p| p.rows() * p.width() * 4)
    }

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
        let padded = self.padded(lanes as usize);
        if let Some(p) = &padded {
            // The zero columns: written once per call, never overwritten.
            let vectors = p.rows() * p.width() / lanes as usize;
            k.em.counted_loop(k.int(0), k.int(vectors as i64), |v| {
                let at =
                    k.em.builder
                        .build_int_mul(v, k.int(i64::from(lanes)), "z")?;
                k.store(
                    Elem::F32,
                    k.element(k.scratch, f32t.into(), at)?,
                    vf.const_zero(),
                )
            })?;
        }
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
            if let Some(p) = &padded {
                copy_plane(&k, p, lanes, x_base)?;
            }
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
                padded: padded.as_ref(),
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
    /// The plane's padded copy in the scratch, when it is read from there.
    padded: Option<&'d Padded>,
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
            // The taps, read with plain loads (`interior`, and always from a
            // padded copy) or masked ones.
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
                        // The row in the input, or in the plane's padded copy.
                        let (window, source) = match self.padded {
                            Some(p) => {
                                let at = k.em.builder.build_int_mul(
                                    ih,
                                    k.int(p.width() as i64),
                                    "padded_row",
                                )?;
                                (&p.window, (k.scratch, at))
                            }
                            None => {
                                let at = k.em.mul_add(ih, k.int(w.input[1] as i64), self.x_base)?;
                                (w, (k.buffers[1], at))
                            }
                        };
                        // At strides above 1 an interior row's taps share
                        // one load.
                        let shared = match interior && window.strides[1] > 1 {
                            true => Some(window.load_interior_taps(k, source, &columns)?),
                            false => None,
                        };
                        for tw in 0..kw {
                            let t = k.int(tw as i64);
                            let x = match (&shared, interior) {
                                (Some(taps), _) => taps[tw],
                                (None, true) => window.load_interior_row(k, source, &columns, t)?,
                                (None, false) => window.load_row(k, source, &columns, t, 0.0)?.0,
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
            match (self.padded, w.interior(k, &columns, None)?) {
                // Every tap of the padded copy is inside its rows.
                (Some(_), _) => taps(true)?,
                (None, Some(interior)) => {
                    k.em.if_then(interior, || taps(true))?;
                    let edge = k.em.builder.build_not(interior, "edge")?;
                    k.em.if_then(edge, || taps(false))?;
                }
                (None, None) => taps(false)?,
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

/// Copies the plane at element `x_base` of the input into the scratch's
/// padded plane: each row's whole vectors, the last one a masked load
/// whose missing lanes store the zeros of the right padding.
fn copy_plane<'ctx>(
    k: &Kernel<'_, 'ctx>,
    p: &Padded,
    lanes: u32,
    x_base: IntValue<'ctx>,
) -> Result<(), CodegenError> {
    let f32t = k.cx.context.f32_type();
    let n = lanes as usize;
    let (full, tail) = (p.columns / n, p.columns % n);
    k.em.counted_loop(k.int(0), k.int(p.rows() as i64), |row| {
        let from = k.em.mul_add(row, k.int(p.columns as i64), x_base)?;
        let to =
            k.em.mul_add(row, k.int(p.width() as i64), k.int(p.pad as i64))?;
        for v in 0..full + usize::from(tail > 0) {
            let offset = k.int((v * n) as i64);
            let b = &k.em.builder;
            let src = k.element(
                k.buffers[1],
                f32t.into(),
                b.build_int_add(from, offset, "src")?,
            )?;
            let dst = k.element(k.scratch, f32t.into(), b.build_int_add(to, offset, "dst")?)?;
            let value = match v < full {
                true => k.load(Elem::F32, lanes, src)?,
                false => k.masked_load(src, k.prefix_mask(lanes, tail))?,
            };
            k.store(Elem::F32, dst, value)?;
        }
        Ok(())
    })
}
