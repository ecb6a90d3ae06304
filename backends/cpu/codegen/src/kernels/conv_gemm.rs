//! Ungrouped convolution as a GEMM on the NCHW layout:
//! `y[n] (M × P) = W (M × K) · B[n] (K × P)`, where `W` is the weight tensor
//! as it is stored (`[M, C·taps]` row-major), `B[n]` the input itself for a
//! 1×1 stride-1 convolution without padding (`K = C`) and otherwise its
//! im2col matrix (row `c·taps + t` holds the input under tap `t` for every
//! output pixel, written by the vectorised [`Im2col`]). The output is
//! written in NCHW directly, with the bias and any fused elementwise group
//! ([`Epilogue`]) applied to the accumulators before the store.
//!
//! The micro-tile is `rows × (vectors·lanes)`: `rows` filters (broadcast
//! weights) by a panel of consecutive pixels (vector loads of `B`'s rows,
//! read in place with row stride P). The filters are split into tiles of
//! equal height (16 filters are two tiles of 8, not 14 + 2) and the
//! panel is as wide as the registers left by that height allow. Iterations
//! are (batch, pixel panel) pairs, so threads split the pixels. K blocks
//! are the outermost loop (the block's slice of `W` stays in L2 while a
//! thread's panels go by); per panel the block's rows of `B` are first
//! packed into the thread's scratch (contiguous, so the tiles' loads stay
//! in L1 and touch few pages) and then swept by every filter tile.

use inkwell::values::{IntValue, PointerValue, VectorValue};
use inkwell::IntPredicate;

use super::conv_epilogue::{Epilogue, Lanes};
use super::window::Window;
use super::{contiguous_strides, fold_axes, folded_extent, Cx, Elem, Kernel};
use crate::{CodegenError, Target};

/// Bytes of `B` one K block of a panel may take (half of a 32 KiB L1).
const B_BLOCK_BYTES: usize = 16 * 1024;

/// The most vectors a micro-tile row spans.
const MAX_VECTORS: usize = 4;

/// The fewest (batch, filter group, panel) iterations the parallel axis
/// should have: small feature maps (7×7 is two panels) split their filter
/// tiles into groups until there are this many.
const MIN_ITERATIONS: usize = 16;

/// The fewest filter tiles a group keeps, so that packing a panel of `B`
/// (once per group) stays small next to the tiles that use it.
const MIN_TILES_PER_GROUP: usize = 2;

/// A convolution computed as `W · B` in NCHW.
#[derive(Clone, Debug)]
pub(crate) struct ConvGemm {
    pub batch: usize,
    /// Filters (M).
    pub filters: usize,
    /// Reduction length (K = channels · taps).
    pub depth: usize,
    /// Output pixels per plane (P).
    pub pixels: usize,
    pub bias: bool,
    pub epilogue: Option<Epilogue>,
}

/// How the GEMM is cut up for a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tiling {
    lanes: usize,
    /// Filters per tile, and in the last tile.
    rows: usize,
    last_rows: usize,
    tiles: usize,
    /// Groups the filter tiles are split into (contiguous ranges; the
    /// last group holds the last tile), part of the parallel axis.
    groups: usize,
    /// Vectors per tile row.
    vectors: usize,
    panels: usize,
    /// Pixels of the last panel when it is partial (0: all full).
    tail: usize,
    /// K per block and number of blocks.
    k_block: usize,
    k_blocks: usize,
}

impl ConvGemm {
    fn tiling(&self, target: &Target) -> Tiling {
        let lanes = target.isa.f32_lanes();
        let registers = target.isa.vector_registers();
        let max_rows = (registers - 3) / 2;
        let tiles = self.filters.div_ceil(max_rows);
        let rows = self.filters.div_ceil(tiles);
        let vectors = ((registers - 1) / (rows + 1))
            .clamp(1, MAX_VECTORS)
            .min(self.pixels.div_ceil(lanes));
        let width = vectors * lanes;
        let k_block = (B_BLOCK_BYTES / (width * 4)).max(8);
        let k_blocks = self.depth.div_ceil(k_block);
        let panels = self.pixels.div_ceil(width);
        // Enough groups for the parallel axis, and enough that a group's
        // slice of W for one K block fits half the L2 while its panels go by.
        let k_block_len = self.depth.div_ceil(k_blocks);
        let w_groups = (self.filters * k_block_len * 4).div_ceil(target.l2_bytes / 2);
        let groups = MIN_ITERATIONS
            .div_ceil(self.batch * panels)
            .max(w_groups)
            .min(tiles / MIN_TILES_PER_GROUP)
            .max(1);
        Tiling {
            lanes,
            rows,
            last_rows: self.filters - (tiles - 1) * rows,
            tiles,
            groups,
            vectors,
            panels,
            tail: self.pixels % width,
            k_block: k_block_len,
            k_blocks,
        }
    }

    /// The range of the kernel's parallel axis (batch × filter groups ×
    /// pixel panels).
    pub fn extent(&self, target: &Target) -> usize {
        let t = self.tiling(target);
        self.batch * t.groups * t.panels
    }

    /// Scratch bytes per thread: one K block of a packed panel of `B`.
    pub fn scratch_bytes(&self, target: &Target) -> usize {
        let t = self.tiling(target);
        t.k_block * t.vectors * t.lanes * 4
    }

    /// Emits the kernel (buffers: y, B, W, bias?, epilogue operands..).
    pub fn emit<'ctx>(&self, cx: Cx<'_, 'ctx>, symbol: &str) -> Result<(), CodegenError> {
        let t = self.tiling(cx.target);
        let extra = self.epilogue.as_ref().map_or(0, Epilogue::buffers);
        let k = Kernel::define(cx, symbol, 3 + usize::from(self.bias) + extra)?;
        let vf = cx.context.f32_type().vec_type(t.lanes as u32);
        let accs = (0..t.rows * t.vectors)
            .map(|_| k.slot(vf.into()))
            .collect::<Result<Vec<_>, _>>()?;
        let width = t.vectors * t.lanes;
        let block = |kb: IntValue<'ctx>| -> Result<(), CodegenError> {
            let b = &k.em.builder;
            let k0 = b.build_int_mul(kb, k.int(t.k_block as i64), "k0")?;
            let left = b.build_int_sub(k.int(self.depth as i64), k0, "k_left")?;
            let kc = k.em.umin(left, k.int(t.k_block as i64))?;
            let first = b.build_int_compare(IntPredicate::EQ, kb, k.int(0), "first")?;
            let last =
                b.build_int_compare(IntPredicate::EQ, kb, k.int(t.k_blocks as i64 - 1), "last")?;
            let blk = KBlock {
                k0,
                kc,
                first,
                last,
            };
            let dims = [self.batch, t.groups, t.panels];
            k.nest_folded(&dims, dims.len(), &mut |idx: &[IntValue<'_>]| {
                let (batch, group, panel) = (idx[0], idx[1], idx[2]);
                let b = &k.em.builder;
                let p0 = b.build_int_mul(panel, k.int(width as i64), "p0")?;
                let at = Panel {
                    gemm: self,
                    t,
                    accs: &accs,
                    batch,
                    group,
                    p0,
                };
                if t.tail == 0 {
                    return at.emit(&k, width, &blk);
                }
                let is_tail = k.em.builder.build_int_compare(
                    IntPredicate::EQ,
                    panel,
                    k.int(t.panels as i64 - 1),
                    "is_tail",
                )?;
                let context = k.cx.context;
                let tail_block = context.append_basic_block(k.em.function, "tail_panel");
                let full_block = context.append_basic_block(k.em.function, "full_panel");
                let join = context.append_basic_block(k.em.function, "panel_done");
                k.em.builder
                    .build_conditional_branch(is_tail, tail_block, full_block)?;
                for (block, valid) in [(tail_block, t.tail), (full_block, width)] {
                    k.em.builder.position_at_end(block);
                    at.emit(&k, valid, &blk)?;
                    k.em.builder.build_unconditional_branch(join)?;
                }
                k.em.builder.position_at_end(join);
                Ok(())
            })
        };
        // K blocks outermost: a block's slice of W (M × k_block) stays in
        // L2 while the thread's panels go by.
        if t.k_blocks == 1 {
            block(k.int(0))?;
        } else {
            k.em.counted_loop(k.int(0), k.int(t.k_blocks as i64), block)?;
        }
        k.finish()
    }
}

/// One pixel panel of one batch.
struct Panel<'g, 'ctx> {
    gemm: &'g ConvGemm,
    t: Tiling,
    accs: &'g [PointerValue<'ctx>],
    batch: IntValue<'ctx>,
    /// The filter group: tiles `group·tiles/groups ..
    /// (group+1)·tiles/groups`.
    group: IntValue<'ctx>,
    /// The panel's first pixel.
    p0: IntValue<'ctx>,
}

impl<'ctx> Panel<'_, 'ctx> {
    /// The panel with `valid` pixels (a compile-time count) over one K
    /// block: its rows of `B` packed into scratch (contiguous, the
    /// masked-off lanes zero), then every filter tile.
    fn emit(
        &self,
        k: &Kernel<'_, 'ctx>,
        valid: usize,
        blk: &KBlock<'ctx>,
    ) -> Result<(), CodegenError> {
        let t = self.t;
        let g = self.gemm;
        let lanes = t.lanes as u32;
        let f32t = k.cx.context.f32_type();
        let (kd, p) = (g.depth as i64, g.pixels as i64);
        let width = (t.vectors * t.lanes) as i64;
        let b_plane =
            k.em.builder
                .build_int_mul(self.batch, k.int(kd * p), "bb")?;
        let b_base = k.em.builder.build_int_add(b_plane, self.p0, "bb")?;
        k.em.counted_loop(k.int(0), blk.kc, |kk| {
            let b = &k.em.builder;
            let kidx = b.build_int_add(blk.k0, kk, "k")?;
            let row = k.em.mul_add(kidx, k.int(p), b_base)?;
            let packed = k.em.builder.build_int_mul(kk, k.int(width), "pk")?;
            for v in (0..t.vectors).filter(|v| v * t.lanes < valid) {
                let cols = valid - v * t.lanes;
                let b = &k.em.builder;
                let at = b.build_int_add(row, k.int((v * t.lanes) as i64), "b")?;
                let ptr = k.element(k.buffers[1], f32t.into(), at)?;
                let value = if cols < t.lanes {
                    k.masked_load(ptr, k.prefix_mask(lanes, cols))?
                } else {
                    k.load(Elem::F32, lanes, ptr)?
                };
                let to =
                    k.em.builder
                        .build_int_add(packed, k.int((v * t.lanes) as i64), "to")?;
                k.store(Elem::F32, k.element(k.scratch, f32t.into(), to)?, value)?;
            }
            Ok(())
        })?;
        let full_tile = |tile: IntValue<'ctx>| {
            let m0 =
                k.em.builder
                    .build_int_mul(tile, k.int(t.rows as i64), "m0")?;
            self.tile(k, t.rows, m0, valid, blk)
        };
        let m0 = k.int(((t.tiles - 1) * t.rows) as i64);
        let last_tile = || self.tile(k, t.last_rows, m0, valid, blk);
        if t.groups == 1 {
            if t.tiles > 1 {
                k.em.counted_loop(k.int(0), k.int(t.tiles as i64 - 1), full_tile)?;
            }
            return last_tile();
        }
        // The group's full tiles, then the last tile in the last group.
        let b = &k.em.builder;
        let (tiles, groups) = (k.int(t.tiles as i64), k.int(t.groups as i64));
        let first = b.build_int_mul(self.group, tiles, "g0")?;
        let first = b.build_int_unsigned_div(first, groups, "t0")?;
        let next = b.build_int_add(self.group, k.int(1), "g1")?;
        let next = b.build_int_mul(next, tiles, "g1")?;
        let next = b.build_int_unsigned_div(next, groups, "t1")?;
        let stop = k.em.umin(next, k.int(t.tiles as i64 - 1))?;
        k.em.counted_loop(first, stop, full_tile)?;
        let is_last = k.em.builder.build_int_compare(
            IntPredicate::EQ,
            self.group,
            k.int(t.groups as i64 - 1),
            "last_group",
        )?;
        k.em.if_then(is_last, last_tile)
    }

    /// One micro-tile: filters `m0..m0 + rows` by the panel's `valid`
    /// pixels over one K block.
    fn tile(
        &self,
        k: &Kernel<'_, 'ctx>,
        rows: usize,
        m0: IntValue<'ctx>,
        valid: usize,
        blk: &KBlock<'ctx>,
    ) -> Result<(), CodegenError> {
        let t = self.t;
        let g = self.gemm;
        let lanes = t.lanes as u32;
        let f32t = k.cx.context.f32_type();
        let vf = f32t.vec_type(lanes);
        let (m, kd, p) = (g.filters as i64, g.depth as i64, g.pixels as i64);
        let vectors: Vec<(usize, Option<VectorValue<'ctx>>)> = (0..t.vectors)
            .filter(|v| v * t.lanes < valid)
            .map(|v| {
                let cols = valid - v * t.lanes;
                let mask = (cols < t.lanes).then(|| k.prefix_mask(lanes, cols));
                (v, mask)
            })
            .collect();
        let b = &k.em.builder;
        let y_plane0 = k.em.mul_add(self.batch, k.int(m), m0)?;
        let y_row = |r: usize, v: usize| -> Result<PointerValue<'ctx>, CodegenError> {
            let b = &k.em.builder;
            let plane = b.build_int_add(y_plane0, k.int(r as i64), "plane")?;
            let at = k.em.mul_add(plane, k.int(p), self.p0)?;
            let at = b.build_int_add(at, k.int((v * t.lanes) as i64), "at")?;
            k.element(k.buffers[0], f32t.into(), at)
        };
        let load = |ptr, mask: Option<VectorValue<'ctx>>| match mask {
            None => k.load(Elem::F32, lanes, ptr),
            Some(mask) => k.masked_load(ptr, mask),
        };
        // Start: the bias (or 0) in the first K block, the partial sums
        // stored by the previous block otherwise.
        for r in 0..rows {
            let filter = b.build_int_add(m0, k.int(r as i64), "f")?;
            let start = if g.bias {
                k.load_splat(
                    Elem::F32,
                    lanes,
                    k.element(k.buffers[3], f32t.into(), filter)?,
                )?
            } else {
                vf.const_zero()
            };
            for &(v, mask) in &vectors {
                let value = if t.k_blocks == 1 {
                    start
                } else {
                    let previous = load(y_row(r, v)?, mask)?;
                    k.em.builder
                        .build_select(blk.first, start, previous, "start")?
                        .into_vector_value()
                };
                k.em.builder
                    .build_store(self.accs[r * t.vectors + v], value)?;
            }
        }
        let w_base = k.em.builder.build_int_mul(m0, k.int(kd), "wb")?;
        let width = (t.vectors * t.lanes) as i64;
        k.em.counted_loop(k.int(0), blk.kc, |kk| {
            let b = &k.em.builder;
            let kidx = b.build_int_add(blk.k0, kk, "k")?;
            let row = b.build_int_mul(kk, k.int(width), "row")?;
            let mut bv = Vec::with_capacity(vectors.len());
            for &(v, _) in &vectors {
                let at =
                    k.em.builder
                        .build_int_add(row, k.int((v * t.lanes) as i64), "b")?;
                bv.push(k.load(Elem::F32, lanes, k.element(k.scratch, f32t.into(), at)?)?);
            }
            let w_at = k.em.builder.build_int_add(w_base, kidx, "w")?;
            for r in 0..rows {
                let at =
                    k.em.builder
                        .build_int_add(w_at, k.int(r as i64 * kd), "w")?;
                let a =
                    k.load_splat(Elem::F32, lanes, k.element(k.buffers[2], f32t.into(), at)?)?;
                for (&(v, _), &bvec) in vectors.iter().zip(&bv) {
                    let slot = self.accs[r * t.vectors + v];
                    let acc =
                        k.em.builder
                            .build_load(vf, slot, "acc")?
                            .into_vector_value();
                    let sum =
                        k.em.call_value(
                            "llvm.fma",
                            &[vf.into()],
                            &[a.into(), bvec.into(), acc.into()],
                        )?
                        .into_vector_value();
                    k.em.builder.build_store(slot, sum)?;
                }
            }
            Ok(())
        })?;
        let extra_start = 3 + usize::from(g.bias);
        for r in 0..rows {
            let filter = k.em.builder.build_int_add(m0, k.int(r as i64), "f")?;
            for &(v, mask) in &vectors {
                let slot = self.accs[r * t.vectors + v];
                let value =
                    k.em.builder
                        .build_load(vf, slot, "acc")?
                        .into_vector_value();
                let ptr = y_row(r, v)?;
                let store = |value| match mask {
                    None => k.store(Elem::F32, ptr, value),
                    Some(mask) => k.masked_store(ptr, value, mask),
                };
                let Some(epilogue) = &g.epilogue else {
                    store(value)?;
                    continue;
                };
                let finish = || -> Result<(), CodegenError> {
                    let pixel =
                        k.em.builder
                            .build_int_add(self.p0, k.int((v * t.lanes) as i64), "px")?;
                    store(epilogue.apply(
                        k,
                        &k.buffers[extra_start..],
                        value,
                        self.batch,
                        filter,
                        pixel,
                        Lanes::Pixels(mask),
                    )?)
                };
                if t.k_blocks == 1 {
                    finish()?;
                } else {
                    // Partial sums of earlier K blocks are stored as they are;
                    // the epilogue runs once, after the last block.
                    k.em.if_then(blk.last, finish)?;
                    let more = k.em.builder.build_not(blk.last, "more")?;
                    k.em.if_then(more, || store(value))?;
                }
            }
        }
        Ok(())
    }
}

/// The K block a tile accumulates (both GEMM convolution kernels): its
/// start, its length, and whether it is the first or the last.
pub(super) struct KBlock<'ctx> {
    pub k0: IntValue<'ctx>,
    pub kc: IntValue<'ctx>,
    pub first: IntValue<'ctx>,
    pub last: IntValue<'ctx>,
}

/// The im2col matrix of a convolution in the layout [`ConvGemm`] reads:
/// per batch and channel, per tap `t`, the row of every output pixel's
/// input under that tap (0 in the padding). Vectorised along the output
/// rows like the direct kernels (masked loads, strided reads as a wide
/// load and a shuffle); iterations are (batch, channel) planes, folded
/// with the taps when there are few planes.
pub(crate) struct Im2col {
    pub planes: usize,
    pub window: Window,
}

impl Im2col {
    /// The axes the parallel loop may fold: planes, then the taps (not
    /// when a plane has fewer pixels than taps, so the extent never passes
    /// the input's element count, which bundle checks bound it by).
    fn parallel_dims(&self) -> Vec<usize> {
        let mut dims = vec![self.planes];
        let taps: usize = self.window.kernel.iter().product();
        if taps <= self.window.input.iter().product() {
            dims.extend(&self.window.kernel);
        }
        dims
    }

    /// The range of the kernel's parallel axis: (plane, tap) pairs folded
    /// until there are enough ([`fold_axes`]), so the 3 planes of an RGB
    /// stem are not split 2:1 over two threads.
    pub fn extent(&self) -> usize {
        folded_extent(&self.parallel_dims())
    }

    /// Emits the kernel (buffers: col, x).
    pub fn emit(&self, cx: Cx<'_, '_>, symbol: &str) -> Result<(), CodegenError> {
        let w = &self.window;
        let k = Kernel::define(cx, symbol, 2)?;
        let f32t = cx.context.f32_type();
        let lanes = w.row_lanes(cx);
        let vf = f32t.vec_type(lanes);
        let sp = w.output.len();
        let in_plane: usize = w.input.iter().product();
        let pixels: usize = w.output.iter().product();
        let taps: usize = w.kernel.iter().product();
        let out_strides = contiguous_strides(&w.output);
        let tap_strides = contiguous_strides(&w.kernel);
        let value = k.slot(vf.into())?;
        // The loops: plane, taps, output rows; the leading ones the
        // parallel axis takes are folded into it (taps only when
        // `parallel_dims` admits them, else they stay inner loops).
        let fold = fold_axes(&self.parallel_dims());
        let mut dims = vec![self.planes];
        dims.extend(&w.kernel);
        dims.extend(w.row_dims(lanes));
        k.nest_folded(&dims, fold, &mut |idx: &[IntValue<'_>]| {
            let (plane, rest) = idx
                .split_first()
                .ok_or(CodegenError::Internal("plane axis"))?;
            let (tap, rd) = rest.split_at(sp);
            let b = &k.em.builder;
            let x_base = b.build_int_mul(*plane, k.int(in_plane as i64), "xb")?;
            let col_plane = b.build_int_mul(*plane, k.int(taps as i64), "cp")?;
            let t = k.linear(0, tap, &tap_strides)?;
            let col_row = k.em.builder.build_int_add(col_plane, t, "cr")?;
            let col_base =
                k.em.builder
                    .build_int_mul(col_row, k.int(pixels as i64), "cb")?;
            let (rows, column) = rd.split_at(sp - 1);
            let columns = w.columns(&k, lanes, column[0])?;
            let (at, inside) = w.row_offset(&k, rows, tap)?;
            let at = k.em.builder.build_int_add(at, x_base, "at")?;
            k.em.builder.build_store(value, vf.const_zero())?;
            k.em.if_then(inside, || {
                w.load_row_into(&k, value, (k.buffers[1], at), &columns, tap[sp - 1])
            })?;
            let out = k.linear(0, rows, &out_strides[..sp - 1])?;
            let out = k.em.builder.build_int_add(out, columns.first, "o")?;
            let out = k.em.builder.build_int_add(out, col_base, "o")?;
            let x = k.em.builder.build_load(vf, value, "x")?.into_vector_value();
            w.store_row(&k, k.element(k.buffers[0], f32t.into(), out)?, &columns, x)
        })?;
        k.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiling(target: &str, filters: usize, pixels: usize, depth: usize) -> Tiling {
        let gemm = ConvGemm {
            batch: 1,
            filters,
            depth,
            pixels,
            bias: false,
            epilogue: None,
        };
        gemm.tiling(&Target::parse(Some(target), None).unwrap())
    }

    #[test]
    fn filter_tiles_are_even_and_fit_the_registers() {
        for target in ["x86_64-avx512", "x86_64-avx2", "aarch64"] {
            let regs = Target::parse(Some(target), None)
                .unwrap()
                .isa
                .vector_registers();
            for filters in 1..200 {
                let t = tiling(target, filters, 3136, 64);
                assert_eq!((t.tiles - 1) * t.rows + t.last_rows, filters);
                assert!(t.last_rows >= 1 && t.last_rows <= t.rows);
                assert!(t.rows * t.vectors + t.vectors < regs, "{target} {filters}");
            }
        }
        let t = tiling("x86_64-avx512", 16, 3136, 64);
        assert_eq!((t.rows, t.tiles, t.vectors), (8, 2, 3));
        let t = tiling("x86_64-avx512", 64, 3136, 64);
        assert_eq!((t.rows, t.last_rows, t.vectors), (13, 12, 2));
    }

    fn im2col(planes: usize, input: usize, output: usize, kernel: usize) -> Im2col {
        Im2col {
            planes,
            window: Window {
                input: vec![input; 2],
                output: vec![output; 2],
                kernel: vec![kernel; 2],
                strides: vec![1; 2],
                pads: vec![kernel / 2; 2],
                dilations: vec![1; 2],
            },
        }
    }

    /// Few planes fold in their taps; the extent never passes the input's
    /// elements (the bound bundle checks hold every kernel to).
    #[test]
    fn im2col_folds_taps_within_the_input() {
        // An RGB stem: (plane, row-of-taps, tap) until ≥ 32 iterations.
        assert_eq!(im2col(3, 30, 15, 7).extent(), 3 * 7 * 7);
        assert_eq!(im2col(64, 56, 56, 3).extent(), 64);
        // A 1×1 input under a 3×3 kernel: planes only.
        assert_eq!(im2col(2, 1, 1, 3).extent(), 2);
    }

    /// On small maps the filter tiles form groups, so there are more
    /// iterations than pixel panels; large maps keep one group.
    #[test]
    fn small_maps_group_filter_tiles() {
        let t = tiling("x86_64-avx512", 512, 49, 512);
        assert_eq!(t.panels, 2);
        assert_eq!(t.groups, 8);
        assert!(t.tiles / t.groups >= MIN_TILES_PER_GROUP);
        let t = tiling("x86_64-avx512", 64, 3136, 64);
        assert_eq!(t.groups, 1);
        // Too few tiles to split: one group.
        let t = tiling("x86_64-avx512", 20, 49, 64);
        assert_eq!(t.groups, 1);
    }

    #[test]
    fn k_blocks_cover_the_depth() {
        for depth in [1, 7, 100, 128, 129, 1000, 4608] {
            let t = tiling("x86_64-avx512", 64, 49, depth);
            assert!(t.k_block * t.k_blocks >= depth);
            assert!(t.k_block * (t.k_blocks - 1) < depth);
            assert!(t.k_block <= (B_BLOCK_BYTES / (t.vectors * t.lanes * 4)).max(8));
        }
        // A plane narrower than a vector is one partial panel.
        let t = tiling("x86_64-avx512", 2, 7, 64);
        assert_eq!((t.vectors, t.panels, t.tail), (1, 1, 7));
    }
}
