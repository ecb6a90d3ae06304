//! Direct convolution vectorised along the last output axis: each
//! iteration computes a block of filters over a vector of consecutive
//! output positions of one row, reading the input with one masked load
//! (stride 1) or masked gather (other strides) per tap and channel, and
//! broadcasting one weight per filter into a fused multiply-add. Padding is
//! the mask (lanes outside the input read 0), so nothing is copied: this
//! is the path for grouped (depthwise) convolutions, run-time weights and
//! convolutions with too few filters to fill the GEMM's 32-wide tile.

use inkwell::types::VectorType;
use inkwell::values::{IntValue, PointerValue, VectorValue};
use inkwell::{AddressSpace, IntPredicate};

use super::math::Math;
use super::pool::Window;
use super::{contiguous_strides, Cx, Elem, Kernel};
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

    /// The range of the kernel's parallel axis (batch × filter blocks).
    pub fn extent(&self) -> usize {
        self.batch * self.filters / self.block()
    }

    /// Emits the kernel (buffers: y, x, w, bias?).
    pub fn emit(&self, cx: Cx<'_, '_>, symbol: &str) -> Result<(), CodegenError> {
        let w = &self.window;
        let sp = w.output.len();
        let k = Kernel::define(cx, symbol, 3 + usize::from(self.bias))?;
        let f32t = cx.context.f32_type();
        let i64t = cx.context.i64_type();
        let last_out = w.output[sp - 1];
        let lanes = (cx.lanes() as usize).min(last_out.next_power_of_two()) as u32;
        let math = Math::new(&k, lanes);
        let vf = f32t.vec_type(lanes);
        let block = self.block();
        let blocks = self.filters / block;
        let (cg, mg) = (self.channels / self.group, self.filters / self.group);
        let plane: usize = w.input.iter().product();
        let taps: usize = w.kernel.iter().product();
        let out_plane: usize = w.output.iter().product();
        let in_strides = contiguous_strides(&w.input);
        let out_strides = contiguous_strides(&w.output);
        let tap_strides = contiguous_strides(&w.kernel);
        let accs = (0..block)
            .map(|_| k.slot(vf.into()))
            .collect::<Result<Vec<_>, _>>()?;
        let lane_index = VectorType::const_vector(
            &(0..lanes)
                .map(|l| i64t.const_int(u64::from(l), false))
                .collect::<Vec<_>>(),
        );
        let mut dims = vec![self.batch * blocks];
        dims.extend(&w.output[..sp - 1]);
        dims.push(last_out.div_ceil(lanes as usize));
        k.nest(&dims, true, &mut |idx: &[IntValue<'_>]| {
            let (nb, rest) = idx.split_first().expect("block axis");
            let (rows, column) = rest.split_at(sp - 1);
            let b = &k.em.builder;
            let batch = b.build_int_unsigned_div(*nb, k.int(blocks as i64), "n")?;
            let first = b.build_int_unsigned_rem(*nb, k.int(blocks as i64), "blk")?;
            let first = b.build_int_mul(first, k.int(block as i64), "f0")?;
            let g = b.build_int_unsigned_div(first, k.int(mg as i64), "g")?;
            let o0 = b.build_int_mul(column[0], k.int(lanes as i64), "o0")?;
            let o = b.build_int_add(splat(&k, o0, lanes)?, lane_index, "o")?;
            let out_mask = b.build_int_compare(
                IntPredicate::ULT,
                o,
                splat(&k, k.int(last_out as i64), lanes)?,
                "live",
            )?;
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
                    let b = &k.em.builder;
                    // The taps on the leading axes: one position per row.
                    let mut at = x_base;
                    let mut inside = cx.context.bool_type().const_all_ones();
                    for d in 0..sp - 1 {
                        let (p, ok) = w.tap(&k, d, rows[d], t[d])?;
                        at = k.em.mul_add(p, k.int(in_strides[d]), at)?;
                        inside = b.build_and(inside, ok, "inside")?;
                    }
                    let tap = k.linear(0, t, &tap_strides)?;
                    k.em.if_then(inside, || {
                        let x = self.load_row(&k, lanes, at, (o, o0, out_mask), t[sp - 1])?;
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
            let row_base = k.em.builder.build_int_add(row_base, o0, "ob")?;
            for (j, acc) in accs.iter().enumerate() {
                let b = &k.em.builder;
                let f = b.build_int_add(first, k.int(j as i64), "f")?;
                let plane_index = k.em.mul_add(batch, k.int(self.filters as i64), f)?;
                let at =
                    k.em.mul_add(plane_index, k.int(out_plane as i64), row_base)?;
                let value = b.build_load(vf, *acc, "r")?.into_vector_value();
                let ptr = k.element(k.buffers[0], f32t.into(), at)?;
                if last_out.is_multiple_of(lanes as usize) {
                    k.store(Elem::F32, ptr, value)?;
                } else {
                    k.em.call_intrinsic(
                        "llvm.masked.store",
                        &[vf.into(), ptr.get_type().into()],
                        &[value.into(), ptr.into(), align(&k).into(), out_mask.into()],
                    )?;
                }
            }
            Ok(())
        })?;
        k.finish()
    }

    /// The input under tap `t` (last axis) of the output positions `o`
    /// (starting at `o0`, live where `out_mask`) in the row at element
    /// `at`: zero where the tap falls in the padding or the output position
    /// is past the end.
    fn load_row<'ctx>(
        &self,
        k: &Kernel<'_, 'ctx>,
        lanes: u32,
        at: IntValue<'ctx>,
        (o, o0, out_mask): (VectorValue<'ctx>, IntValue<'ctx>, VectorValue<'ctx>),
        t: IntValue<'ctx>,
    ) -> Result<VectorValue<'ctx>, CodegenError> {
        let w = &self.window;
        let d = w.output.len() - 1;
        let b = &k.em.builder;
        let f32t = k.cx.context.f32_type();
        let vf = f32t.vec_type(lanes);
        let (stride, dilation, pad) =
            (w.strides[d] as i64, w.dilations[d] as i64, w.pads[d] as i64);
        // Input position of lane l: (o0 + l)·stride + t·dilation - pad.
        let shift = k.em.mul_add(t, k.int(dilation), k.int(-pad))?;
        let p = b.build_int_mul(o, splat(k, k.int(stride), lanes)?, "p")?;
        let p = b.build_int_add(p, splat(k, shift, lanes)?, "p")?;
        let inside = b.build_int_compare(
            IntPredicate::ULT,
            p,
            splat(k, k.int(w.input[d] as i64), lanes)?,
            "inside",
        )?;
        let mask = b.build_and(inside, out_mask, "mask")?;
        let zero = vf.const_zero();
        let buffer = k.buffers[1];
        let loaded = if stride == 1 {
            // Consecutive lanes: one masked load from the first lane's
            // address (masked-off lanes are never read).
            let first = k.em.mul_add(o0, k.int(stride), shift)?;
            let first = b.build_int_add(at, first, "first")?;
            let ptr: PointerValue<'ctx> = k.element(buffer, f32t.into(), first)?;
            k.em.call_intrinsic(
                "llvm.masked.load",
                &[vf.into(), ptr.get_type().into()],
                &[ptr.into(), align(k).into(), mask.into(), zero.into()],
            )?
        } else {
            let index = b.build_int_add(p, splat(k, at, lanes)?, "index")?;
            let bytes = b.build_int_mul(index, splat(k, k.int(4), lanes)?, "bytes")?;
            let base = b.build_ptr_to_int(buffer, k.cx.context.i64_type(), "base")?;
            let address = b.build_int_add(bytes, splat(k, base, lanes)?, "address")?;
            let pointers = b.build_int_to_ptr(
                address,
                k.cx.context
                    .ptr_type(AddressSpace::default())
                    .vec_type(lanes),
                "pointers",
            )?;
            k.em.call_intrinsic(
                "llvm.masked.gather",
                &[vf.into(), pointers.get_type().into()],
                &[pointers.into(), align(k).into(), mask.into(), zero.into()],
            )?
        };
        Ok(loaded
            .expect("masked loads return a value")
            .into_vector_value())
    }
}

/// The alignment argument of the masked memory intrinsics (4: f32).
fn align<'ctx>(k: &Kernel<'_, 'ctx>) -> IntValue<'ctx> {
    k.cx.context.i32_type().const_int(4, false)
}

/// An `i64` scalar in every one of `lanes` lanes.
fn splat<'ctx>(
    k: &Kernel<'_, 'ctx>,
    value: IntValue<'ctx>,
    lanes: u32,
) -> Result<VectorValue<'ctx>, CodegenError> {
    let ty = k.cx.context.i64_type().vec_type(1);
    let zero = k.cx.context.i32_type().const_zero();
    let one =
        k.em.builder
            .build_insert_element(ty.get_poison(), value, zero, "one")?;
    k.splat_lane(one, lanes)
}
