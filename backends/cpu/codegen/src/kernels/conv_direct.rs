//! Direct convolution vectorised along the last output axis: each
//! iteration computes a block of filters over a vector of consecutive
//! output positions of one row, reading the input with one masked load
//! (stride 1) or masked gather (other strides) per tap and channel, and
//! broadcasting one weight per filter into a fused multiply-add. Padding is
//! the mask (lanes outside the input read 0), so nothing is copied: this
//! is the path for grouped (depthwise) convolutions, run-time weights and
//! convolutions with too few filters to fill the GEMM's 32-wide tile.

use inkwell::values::IntValue;

use super::math::math;
use super::window::Window;
use super::{contiguous_strides, fold_axes, folded_extent, Cx, Elem, Kernel};
use crate::CodegenError;

/// The largest number of filters one iteration accumulates at once (each
/// is one vector register).
const MAX_FILTER_BLOCK: usize = 8;

/// The geometry of a convolution computed directly.
pub(crate) struct DirectConv {
    pub batch: usize,
    pub channels: usize,
    pub filters: usize,
    pub group: usize,
    pub window: Window,
    pub bias: bool,
}

impl DirectConv {
    /// Filters computed per iteration: the largest divisor of the filters
    /// per group up to [`MAX_FILTER_BLOCK`], so a block never spans groups.
    fn block(&self) -> usize {
        let per_group = self.filters / self.group;
        (1..=MAX_FILTER_BLOCK.min(per_group))
            .rev()
            .find(|b| per_group.is_multiple_of(*b))
            .unwrap_or(1)
    }

    /// The loop axes: (batch, filter block) pairs, then the output rows
    /// and row vectors.
    fn loop_dims(&self, lanes: u32) -> Vec<usize> {
        let mut dims = vec![self.batch * self.filters / self.block()];
        dims.extend(self.window.row_dims(lanes));
        dims
    }

    /// The range of the kernel's parallel axis: (batch, filter block)
    /// pairs, folded with the output rows when there are few
    /// ([`fold_axes`]).
    pub fn extent(&self, cx: Cx<'_, '_>) -> usize {
        folded_extent(&self.loop_dims(self.window.row_lanes(cx)))
    }

    /// Emits the kernel (buffers: y, x, w, bias?).
    pub fn emit(&self, cx: Cx<'_, '_>, symbol: &str) -> Result<(), CodegenError> {
        let w = &self.window;
        let sp = w.output.len();
        let k = Kernel::define(cx, symbol, 3 + usize::from(self.bias))?;
        let f32t = cx.context.f32_type();
        let lanes = w.row_lanes(cx);
        let math = math(&k, lanes);
        let vf = f32t.vec_type(lanes);
        let block = self.block();
        let blocks = self.filters / block;
        let (cg, mg) = (self.channels / self.group, self.filters / self.group);
        let plane: usize = w.input.iter().product();
        let taps: usize = w.kernel.iter().product();
        let out_plane: usize = w.output.iter().product();
        let out_strides = contiguous_strides(&w.output);
        let tap_strides = contiguous_strides(&w.kernel);
        let accs = (0..block)
            .map(|_| k.slot(vf.into()))
            .collect::<Result<Vec<_>, _>>()?;
        let dims = self.loop_dims(lanes);
        k.nest_folded(&dims, fold_axes(&dims), &mut |idx: &[IntValue<'_>]| {
            let (nb, rest) = idx
                .split_first()
                .ok_or(CodegenError::Internal("block axis"))?;
            let (rows, column) = rest.split_at(sp - 1);
            let columns = w.columns(&k, lanes, column[0])?;
            let b = &k.em.builder;
            let batch = b.build_int_unsigned_div(*nb, k.int(blocks as i64), "n")?;
            let first = b.build_int_unsigned_rem(*nb, k.int(blocks as i64), "blk")?;
            let first = b.build_int_mul(first, k.int(block as i64), "f0")?;
            let g = b.build_int_unsigned_div(first, k.int(mg as i64), "g")?;
            for (j, acc) in accs.iter().enumerate() {
                let start = if self.bias {
                    let f = b.build_int_add(first, k.int(j as i64), "f")?;
                    k.load_splat(Elem::F32, lanes, k.element(k.buffers[3], f32t.into(), f)?)?
                } else {
                    math.c(0.0)
                };
                b.build_store(*acc, start)?;
            }
            let first_channel = b.build_int_mul(g, k.int(cg as i64), "c0")?;
            k.em.counted_loop(k.int(0), k.int(cg as i64), |ci| {
                let b = &k.em.builder;
                let channel = b.build_int_add(first_channel, ci, "c")?;
                let x_plane = k.em.mul_add(batch, k.int(self.channels as i64), channel)?;
                let x_base = b.build_int_mul(x_plane, k.int(plane as i64), "xb")?;
                k.nest(&w.kernel, false, &mut |t: &[IntValue<'_>]| {
                    let (at, inside) = w.row_offset(&k, rows, t)?;
                    let at = k.em.builder.build_int_add(at, x_base, "at")?;
                    let tap = k.linear(0, t, &tap_strides)?;
                    k.em.if_then(inside, || {
                        let (x, _) =
                            w.load_row(&k, (k.buffers[1], at), &columns, t[sp - 1], 0.0)?;
                        for (j, acc) in accs.iter().enumerate() {
                            let b = &k.em.builder;
                            let f = b.build_int_add(first, k.int(j as i64), "f")?;
                            let row = k.em.mul_add(f, k.int(cg as i64), ci)?;
                            let wi = k.em.mul_add(row, k.int(taps as i64), tap)?;
                            let weight = k.load_splat(
                                Elem::F32,
                                lanes,
                                k.element(k.buffers[2], f32t.into(), wi)?,
                            )?;
                            let a = b.build_load(vf, *acc, "acc")?.into_vector_value();
                            b.build_store(*acc, math.fma(x, weight, a)?)?;
                        }
                        Ok(())
                    })
                })
            })?;
            let row_base = k.linear(0, rows, &out_strides[..sp - 1])?;
            let row_base = k.em.builder.build_int_add(row_base, columns.first, "ob")?;
            for (j, acc) in accs.iter().enumerate() {
                let b = &k.em.builder;
                let f = b.build_int_add(first, k.int(j as i64), "f")?;
                let plane_index = k.em.mul_add(batch, k.int(self.filters as i64), f)?;
                let at =
                    k.em.mul_add(plane_index, k.int(out_plane as i64), row_base)?;
                let value = b.build_load(vf, *acc, "r")?.into_vector_value();
                w.store_row(
                    &k,
                    k.element(k.buffers[0], f32t.into(), at)?,
                    &columns,
                    value,
                )?;
            }
            Ok(())
        })?;
        k.finish()
    }
}
