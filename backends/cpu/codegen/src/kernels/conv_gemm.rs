//! Ungrouped convolution as a GEMM on the NCHW layout:
//! `y[n] (M × P) = W (M × K) · B[n] (K × P)`, where `W` is the weight tensor
//! as it is stored (`[M, C·taps]` row-major) and `B[n]` the im2col matrix
//! of the input (row `c·taps + t` holds the input under tap `t` for every
//! output pixel), never written out: each panel's rows of `B` are read
//! from the input, or a zero-padded copy of it when the window pads,
//! through offset tables ([`TapOffsets`]). The output is written in NCHW
//! directly, with the bias and any fused elementwise group ([`Epilogue`])
//! applied to the accumulators before the store.
//!
//! The micro-tile is `rows × (vectors·lanes)`: `rows` filters (broadcast
//! weights) by a panel of consecutive pixels (vector loads of the packed
//! panel). The filters are split into tiles of equal height (16 filters
//! are two tiles of 8, not 14 + 2) and the panel is as wide as the
//! registers left by that height allow. Iterations are (batch, pixel
//! panel) pairs, so threads split the pixels. When a filter group's `W`
//! fits half the L2 each panel runs every K block in turn (its output
//! tile stays in L1 between blocks); otherwise the K blocks are the
//! outermost loop (the block's slice of `W` stays in L2 while a thread's
//! panels go by). At stride 1 a full panel whose vectors each lie in one
//! input row (all of a 1×1 convolution's; a window's where no vector
//! crosses an output row) is read by the tiles straight from the input,
//! one load per vector and k, over all of K at once when the panel runs
//! every block (the blocks bound the packed rows). Any other panel's rows
//! of `B` are first packed into the thread's scratch (contiguous, so the
//! tiles' loads stay in L1 and touch few pages) and then swept by every
//! filter tile: a
//! vector whose pixels step evenly through one input row with one (wide)
//! load per k, one across a row break with two masked loads, any other
//! one with a gather.
//!
//! Why no im2col matrix: it is `taps` times the input (7.4 MB for
//! ResNet-50's 7×7 stem at 224², 7.2 MB for a 3×3 layer of 64 channels at
//! 56²), written once and read back from beyond the L2.

use inkwell::types::VectorType;
use inkwell::values::{IntValue, PointerValue, VectorValue};
use inkwell::IntPredicate;

use super::conv_epilogue::Epilogue;
use super::window::{every_stride, table_bytes, TapOffsets, Window, MAX_LOADED_STRIDE};
use super::{Cx, Elem, Kernel};
use crate::{CodegenError, Target};

/// Bytes of `B` one K block of a panel may take: three quarters of a
/// 32 KiB L1 (with half, ResNet-50's 7×7 stem at K = 147 ran two blocks
/// and took 4 % longer; the tile's slice of W streams beside it).
const B_BLOCK_BYTES: usize = 24 * 1024;

/// Depths up to which a tile's output lines are prefetched for writing
/// as it starts: its few multiply-adds per stored vector leave the stores
/// waiting for their lines otherwise.
const SHALLOW_DEPTH: i64 = 64;

/// Tiles of at least this many filters read B straight from the input
/// where the panel allows ([`Panel::source`]), as do up to
/// [`DIRECT_TILES`] tiles of any height.
const DIRECT_ROWS: usize = 8;

/// See [`DIRECT_ROWS`].
const DIRECT_TILES: usize = 3;

/// Bytes of a cache line: the narrowest panel row read straight from
/// the input.
const CACHE_LINE: usize = 64;

/// The most vectors a micro-tile row spans.
const MAX_VECTORS: usize = 4;

/// The fewest (batch, filter group, panel) iterations the parallel axis
/// should have: small feature maps (7×7 is two panels) split their filter
/// tiles into groups until there are this many.
const MIN_ITERATIONS: usize = 16;

/// The fewest filter tiles a group keeps, so that packing a panel of `B`
/// (once per group) stays small next to the tiles that use it.
const MIN_TILES_PER_GROUP: usize = 2;

/// The convolution both GEMM kernels compute (pixels or filters in the
/// lanes): its sizes, the window over its (padded) input, its bias and
/// epilogue.
#[derive(Clone, Debug)]
pub(crate) struct GemmConv {
    pub batch: usize,
    /// Filters (M).
    pub filters: usize,
    pub channels: usize,
    /// The window over the input the kernel reads: no padding (`input`
    /// are the dimensions of the padded copy when the convolution pads).
    pub window: Window,
    pub bias: bool,
    pub epilogue: Option<Epilogue>,
}

impl GemmConv {
    /// Reduction length (K = channels · taps).
    pub fn depth(&self) -> usize {
        self.channels * self.window.kernel.iter().product::<usize>()
    }

    /// Output pixels per plane (P).
    pub fn pixels(&self) -> usize {
        self.window.output.iter().product()
    }

    /// W (`[M, K]` row-major, f32) repacked for a kernel: per group of
    /// consecutive filters `(first, count)`, `[K][count]`, so that the
    /// group's weights for one k are adjacent; filters past `M` (a last
    /// group reaching beyond) are zeros.
    pub fn pack_groups(
        &self,
        w: &[f32],
        groups: impl Iterator<Item = (usize, usize)>,
    ) -> Result<Vec<u8>, CodegenError> {
        let depth = self.depth();
        if w.len() != self.filters * depth {
            return Err(CodegenError::Internal(
                "a convolution's weights match its shape",
            ));
        }
        let mut bytes = Vec::with_capacity(w.len() * 4);
        for (first, count) in groups {
            for k in 0..depth {
                for j in first..first + count {
                    let value = if j < self.filters {
                        w[j * depth + k]
                    } else {
                        0.0
                    };
                    bytes.extend(value.to_le_bytes());
                }
            }
        }
        Ok(bytes)
    }

    /// A 1×1 convolution without bias or epilogue over a map of `spatial`
    /// (tests of the kernels' tilings).
    #[cfg(test)]
    pub fn pointwise(filters: usize, channels: usize, spatial: &[usize]) -> Self {
        let ones = vec![1; spatial.len()];
        Self {
            batch: 1,
            filters,
            channels,
            window: Window {
                input: spatial.to_vec(),
                output: spatial.to_vec(),
                kernel: ones.clone(),
                strides: ones.clone(),
                pads: vec![0; spatial.len()],
                dilations: ones,
            },
            bias: false,
            epilogue: None,
        }
    }
}

/// Entry `at` of the `i32` offset table in buffer 3 of both GEMM
/// convolution kernels, as an `i64`.
pub(super) fn table_entry<'ctx>(
    k: &Kernel<'_, 'ctx>,
    at: IntValue<'ctx>,
) -> Result<IntValue<'ctx>, CodegenError> {
    let (i32t, i64t) = (k.cx.context.i32_type(), k.cx.context.i64_type());
    let b = &k.em.builder;
    let entry = b.build_load(i32t, k.element(k.buffers[3], i32t.into(), at)?, "off")?;
    Ok(b.build_int_s_extend(entry.into_int_value(), i64t, "off")?)
}

/// A convolution computed as `W · B` in NCHW.
#[derive(Clone, Debug)]
pub(crate) struct ConvGemm {
    pub conv: GemmConv,
    /// Whether W comes repacked by [`ConvGemm::pack`] (a constant) rather
    /// than as stored.
    pub w_packed: bool,
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
    /// Whether each panel runs every K block (else the K blocks are the
    /// outermost loop).
    k_inner: bool,
}

impl Tiling {
    /// Whether the tiles may read B straight from the input
    /// ([`Panel::source`]): they are tall or few, and a panel row spans a
    /// cache line.
    fn reads_straight(&self) -> bool {
        (self.rows >= DIRECT_ROWS || self.tiles <= DIRECT_TILES)
            && self.vectors * self.lanes * 4 >= CACHE_LINE
    }
}

impl ConvGemm {
    /// The offset tables the kernel reads: [`TapOffsets`]' rows and
    /// columns, a vector of spare zeros (the gather of a partial last
    /// vector loads whole vectors of columns), then per vector of pixels
    /// whether it is a run ([`TapOffsets::runs`]).
    pub fn offsets(&self, target: &Target) -> Result<Vec<u8>, CodegenError> {
        let lanes = target.isa.f32_lanes();
        let t = TapOffsets::new(&self.conv.window, self.conv.channels)?;
        let step = self.conv.window.strides.last().copied().unwrap_or(1);
        let spare = vec![0; lanes];
        Ok(table_bytes(&[
            &t.rows,
            &t.columns,
            &spare,
            &t.runs(lanes, step),
        ]))
    }

    /// W (`[M, K]` row-major, f32) repacked per filter tile as `[K][rows]`,
    /// so that a tile's broadcasts for one k are adjacent floats. Read as
    /// stored, they are `K` floats apart: with K = 1024 every one of a
    /// 14-row AVX-512 tile's rows falls in the same set of an 8-way L1,
    /// and a 1024-deep 1×1 layer ran at 65 % of the FMA peak on Zen 4
    /// against 86 % at AVX2's 6 rows.
    pub fn pack(&self, target: &Target, w: &[f32]) -> Result<Vec<u8>, CodegenError> {
        let t = self.tiling(target);
        self.conv.pack_groups(
            w,
            (0..t.tiles).map(|tile| {
                let rows = if tile + 1 == t.tiles {
                    t.last_rows
                } else {
                    t.rows
                };
                (tile * t.rows, rows)
            }),
        )
    }

    fn tiling(&self, target: &Target) -> Tiling {
        let lanes = target.isa.f32_lanes();
        let registers = target.isa.vector_registers();
        let max_rows = (registers - 3) / 2;
        let (depth, pixels) = (self.conv.depth(), self.conv.pixels());
        let tiles = self.conv.filters.div_ceil(max_rows);
        let rows = self.conv.filters.div_ceil(tiles);
        let vectors = ((registers - 1) / (rows + 1))
            .clamp(1, MAX_VECTORS)
            .min(pixels.div_ceil(lanes));
        let width = vectors * lanes;
        let k_block = (B_BLOCK_BYTES / (width * 4)).max(8);
        let k_blocks = depth.div_ceil(k_block);
        let panels = pixels.div_ceil(width);
        // Enough groups for the parallel axis, and enough that a group's
        // slice of W fits half the L2 while its panels go by: all of K
        // when that is possible (each panel then runs every K block, its
        // output tile kept in the L1), else one K block (the blocks
        // outermost: the output goes through memory once per block).
        let k_block_len = depth.div_ceil(k_blocks);
        let most_groups = (tiles / MIN_TILES_PER_GROUP).max(1);
        let w_groups = |k: usize| (self.conv.filters * k * 4).div_ceil(target.l2_bytes / 2);
        let k_inner = w_groups(depth) <= most_groups;
        let groups = MIN_ITERATIONS
            .div_ceil(self.conv.batch * panels)
            .max(w_groups(if k_inner { depth } else { k_block_len }))
            .min(most_groups);
        Tiling {
            lanes,
            rows,
            last_rows: self.conv.filters - (tiles - 1) * rows,
            tiles,
            groups,
            vectors,
            panels,
            tail: pixels % width,
            k_block: k_block_len,
            k_blocks,
            k_inner,
        }
    }

    /// The range of the kernel's parallel axis (batch × filter groups ×
    /// pixel panels).
    pub fn extent(&self, target: &Target) -> usize {
        let t = self.tiling(target);
        self.conv.batch * t.groups * t.panels
    }

    /// Scratch bytes per thread: one K block of a packed panel of `B`.
    pub fn scratch_bytes(&self, target: &Target) -> usize {
        let t = self.tiling(target);
        t.k_block * t.vectors * t.lanes * 4
    }

    /// Emits the kernel (buffers: y, x (padded), W, offsets, bias?,
    /// epilogue operands..).
    pub fn emit<'ctx>(&self, cx: Cx<'_, 'ctx>, symbol: &str) -> Result<(), CodegenError> {
        let t = self.tiling(cx.target);
        let extra = self.conv.epilogue.as_ref().map_or(0, Epilogue::buffers);
        let k = Kernel::define(cx, symbol, 4 + usize::from(self.conv.bias) + extra)?;
        let vf = cx.context.f32_type().vec_type(t.lanes as u32);
        let accs = (0..t.rows * t.vectors)
            .map(|_| k.slot(vf.into()))
            .collect::<Result<Vec<_>, _>>()?;
        let width = t.vectors * t.lanes;
        let panels = |kb: Option<IntValue<'ctx>>| {
            let dims = [self.conv.batch, t.groups, t.panels];
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
                    return at.emit(&k, width, kb);
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
                    at.emit(&k, valid, kb)?;
                    k.em.builder.build_unconditional_branch(join)?;
                }
                k.em.builder.position_at_end(join);
                Ok(())
            })
        };
        if t.k_inner || t.k_blocks == 1 {
            // Each panel over every K block: its output tile stays in
            // the L1 between blocks, the group's W in the L2.
            panels(None)?;
        } else {
            // K blocks outermost: a block's slice of W (M × k_block)
            // stays in L2 while the thread's panels go by.
            k.em.counted_loop(k.int(0), k.int(t.k_blocks as i64), |kb| panels(Some(kb)))?;
        }
        k.finish()
    }
}

/// Where a panel's tiles read `B` ([`Panel::source`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// The panel packed into the thread's scratch.
    Packed,
    /// A 1×1 convolution's input: row k is channel plane k.
    Planes,
    /// A window's input where every vector of the panel is a run: row k
    /// at the offset table's `rows[k]`, each vector from its first
    /// pixel's column.
    Taps,
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
    /// The panel with `valid` pixels (a compile-time count) over K block
    /// `kb`, or over every K block in turn: every filter tile, reading
    /// `B` from the input where [`Panel::source`] allows (then over all
    /// of K at once when every block is asked for: the blocks bound the
    /// packed rows, and each one more costs the tiles a store and a load
    /// of their accumulators), else from its rows packed into scratch
    /// first (contiguous, the masked-off lanes zero).
    fn emit(
        &self,
        k: &Kernel<'_, 'ctx>,
        valid: usize,
        kb: Option<IntValue<'ctx>>,
    ) -> Result<(), CodegenError> {
        let t = self.t;
        let depth = self.gemm.conv.depth();
        let direct = |source: Source| {
            let blk = match kb {
                Some(kb) => KBlock::new(k, kb, t.k_block, depth)?,
                None => KBlock::new(k, k.int(0), depth, depth)?,
            };
            self.tiles(k, valid, &blk, source)
        };
        let packed_block = |kb: IntValue<'ctx>| {
            let blk = KBlock::new(k, kb, t.k_block, depth)?;
            for v in (0..t.vectors).filter(|v| v * t.lanes < valid) {
                self.pack(k, v, valid - v * t.lanes, &blk)?;
            }
            self.tiles(k, valid, &blk, Source::Packed)
        };
        let packed = || match kb {
            Some(kb) => packed_block(kb),
            None => {
                k.em.counted_loop(k.int(0), k.int(t.k_blocks as i64), packed_block)
            }
        };
        match self.source(valid) {
            Source::Packed => packed(),
            Source::Planes => direct(Source::Planes),
            Source::Taps => {
                // Straight from the input when every vector is a run.
                let mut runs = k.cx.context.bool_type().const_all_ones();
                for v in 0..t.vectors {
                    let pixel =
                        k.em.builder
                            .build_int_add(self.p0, k.int((v * t.lanes) as i64), "px")?;
                    let kind = self.run_kind(k, pixel)?;
                    let b = &k.em.builder;
                    let run = b.build_int_compare(IntPredicate::EQ, kind, k.int(1), "run")?;
                    runs = b.build_and(runs, run, "runs")?;
                }
                k.em.if_then(runs, || direct(Source::Taps))?;
                let scattered = k.em.builder.build_not(runs, "scattered")?;
                k.em.if_then(scattered, packed)
            }
        }
    }

    /// Every filter tile of the group over the panel, reading `B` from
    /// `source`.
    fn tiles(
        &self,
        k: &Kernel<'_, 'ctx>,
        valid: usize,
        blk: &KBlock<'ctx>,
        source: Source,
    ) -> Result<(), CodegenError> {
        let t = self.t;
        let full_tile = |tile: IntValue<'ctx>| {
            let m0 =
                k.em.builder
                    .build_int_mul(tile, k.int(t.rows as i64), "m0")?;
            self.tile(k, t.rows, m0, valid, blk, source)
        };
        let m0 = k.int(((t.tiles - 1) * t.rows) as i64);
        let last_tile = || self.tile(k, t.last_rows, m0, valid, blk, source);
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

    /// Where the tiles read the panel's `B`: straight from the input in
    /// a full panel of stride 1 (a 1×1 convolution's row k is
    /// `lanes·vectors` consecutive floats of channel plane k; a window's
    /// where every vector is a run, checked as the panel starts) when
    /// the tiles are few or tall, else from a packed copy. Packing cost a
    /// load and a store per float besides the tiles' loads, as much as
    /// the multiply-adds of a convolution with few filter tiles (alone,
    /// Zen 4: SqueezeNet's 128 → 16 at 55² 0.150 → 0.115 ms, ResNet-50's
    /// 256 → 64 at 56² 1.00 → 0.92, 512 → 128 at 28² 0.94 → 0.90). Read
    /// straight, row k of every vector lies in its own plane, and planes
    /// a multiple of 256 bytes apart share few L1 sets: short AVX2 tiles
    /// (6 filters per B load) waited on those reads (the same layers on
    /// AVX2 code, 11 and 22 tiles: 1.00 → 1.08–1.16 and 0.95 → 1.05 ms),
    /// so there many tiles read the packed copy, which stays in the L1.
    /// Panels narrower than a cache line (NEON's 8 floats) read only part
    /// of each line so: they stay packed (not measured; as before).
    fn source(&self, valid: usize) -> Source {
        let w = &self.gemm.conv.window;
        let t = self.t;
        if !t.reads_straight() || valid < t.vectors * t.lanes || w.strides.iter().any(|&n| n != 1) {
            Source::Packed
        } else if w.kernel.iter().all(|&n| n == 1) {
            Source::Planes
        } else {
            Source::Taps
        }
    }

    /// The runs table's entry ([`TapOffsets::runs`], after the rows, the
    /// columns and the spare zeros in [`ConvGemm::offsets`]) of the
    /// vector starting at `pixel`: 1 a run, `−s` two runs split after `s`
    /// lanes, 0 a gather.
    fn run_kind(
        &self,
        k: &Kernel<'_, 'ctx>,
        pixel: IntValue<'ctx>,
    ) -> Result<IntValue<'ctx>, CodegenError> {
        let conv = &self.gemm.conv;
        let lanes = self.t.lanes as i64;
        let b = &k.em.builder;
        let vector = b.build_int_unsigned_div(pixel, k.int(lanes), "vec")?;
        let skip = (conv.depth() + conv.pixels()) as i64 + lanes;
        table_entry(k, b.build_int_add(vector, k.int(skip), "runs")?)
    }

    /// Packs vector `v` of the panel (`cols` valid pixels) for every k of
    /// the block: `B[k, pixels]` read from the input at `rows[k]` plus
    /// each pixel's column, with one (wide) load when the vector is a run
    /// of the last axis's stride, else with a gather.
    fn pack(
        &self,
        k: &Kernel<'_, 'ctx>,
        v: usize,
        cols: usize,
        blk: &KBlock<'ctx>,
    ) -> Result<(), CodegenError> {
        let t = self.t;
        let g = self.gemm;
        let lanes = t.lanes as u32;
        let (f32t, i32t, i64t) = (
            k.cx.context.f32_type(),
            k.cx.context.i32_type(),
            k.cx.context.i64_type(),
        );
        let kd = g.conv.depth() as i64;
        let width = (t.vectors * t.lanes) as i64;
        let offset = |at| table_entry(k, at);
        let b = &k.em.builder;
        let plane: usize = g.conv.window.input.iter().product();
        let x_base = b.build_int_mul(self.batch, k.int((g.conv.channels * plane) as i64), "xb")?;
        let pixel = b.build_int_add(self.p0, k.int((v * t.lanes) as i64), "px")?;
        let columns = b.build_int_add(pixel, k.int(kd), "cols")?;
        // Every k of the block: the address of the tap's row, the vector
        // read from it, stored to the packed panel.
        let stride = g.conv.window.strides.last().copied().unwrap_or(1) as i64;
        let first = offset(columns)?;
        let pointwise = g.conv.window.kernel.iter().all(|&n| n == 1);
        let sweep = |read: &dyn Fn(IntValue<'ctx>) -> Result<VectorValue<'ctx>, CodegenError>| {
            k.em.counted_loop(k.int(0), blk.kc, |kk| {
                let b = &k.em.builder;
                let row = offset(b.build_int_add(blk.k0, kk, "k")?)?;
                let row = b.build_int_add(x_base, row, "row")?;
                if pointwise {
                    // The next panel's pixels of this row into L2: a
                    // thread's panels sweep K channel planes at once, more
                    // streams than the hardware follows. (A window's taps
                    // share planes; there it measured slower.)
                    let ahead = b.build_int_add(row, first, "ahead")?;
                    let ahead = b.build_int_add(ahead, k.int(width * stride), "ahead")?;
                    k.em.prefetch(f32t.into(), k.buffers[1], ahead, false, 2)?;
                }
                let value = read(row)?;
                let to =
                    k.em.mul_add(kk, k.int(width), k.int((v * t.lanes) as i64))?;
                k.store(Elem::F32, k.element(k.scratch, f32t.into(), to)?, value)
            })
        };
        let gather = || {
            let index = k.load(
                Elem::I32,
                lanes,
                k.element(k.buffers[3], i32t.into(), columns)?,
            )?;
            let index =
                k.em.builder
                    .build_int_s_extend(index, i64t.vec_type(lanes), "cols")?;
            let mask = k.prefix_mask(lanes, cols);
            sweep(&|row| {
                let at = k.element(k.buffers[1], f32t.into(), row)?;
                k.masked_gather(at, index, mask, 0.0)
            })
        };
        if cols < t.lanes || stride > MAX_LOADED_STRIDE {
            return gather();
        }
        // At strides above 1 a wide load reads only its lanes' taps
        // (every stride-th element): the others may lie past the input's
        // end after a row's last pixel.
        let taps_only = (stride > 1).then(|| {
            let bool_type = k.cx.context.bool_type();
            VectorType::const_vector(
                &(0..t.lanes * stride as usize)
                    .map(|j| bool_type.const_int(u64::from(j % stride as usize == 0), false))
                    .collect::<Vec<_>>(),
            )
        });
        let wide = || {
            sweep(&|row| {
                let b = &k.em.builder;
                let at = b.build_int_add(row, first, "at")?;
                let at = k.element(k.buffers[1], f32t.into(), at)?;
                let loaded = k.load_f32(at, lanes * stride as u32, taps_only)?;
                every_stride(k, loaded, lanes, stride)
            })
        };
        let b = &k.em.builder;
        let kind = self.run_kind(k, pixel)?;
        let run = b.build_int_compare(IntPredicate::EQ, kind, k.int(1), "run")?;
        k.em.if_then(run, wide)?;
        // A vector across a row break: two runs, two masked wide loads
        // (a 16-lane gather is several times slower on AVX-512). The
        // second load starts `before·stride` elements ahead of its first
        // lane's tap, so that element `j` of either load is lane
        // `j / stride`'s.
        let b = &k.em.builder;
        let split = b.build_int_compare(IntPredicate::SLT, kind, k.int(0), "split")?;
        let two_runs = || {
            let b = &k.em.builder;
            let lanes_before = b.build_int_neg(kind, "lanes_before")?;
            let at = b.build_int_add(columns, lanes_before, "second")?;
            let ahead = b.build_int_mul(lanes_before, k.int(stride), "ahead")?;
            let second = b.build_int_sub(offset(at)?, ahead, "second")?;
            let wide = t.lanes * stride as usize;
            let lane_of = VectorType::const_vector(
                &(0..wide)
                    .map(|j| i64t.const_int((j / stride as usize) as u64, false))
                    .collect::<Vec<_>>(),
            );
            let before = k.splat_i64(lanes_before, wide as u32)?;
            let low = b.build_int_compare(IntPredicate::ULT, lane_of, before, "low")?;
            let high = b.build_not(low, "high")?;
            let (low, high) = match taps_only {
                Some(taps) => (
                    b.build_and(low, taps, "low")?,
                    b.build_and(high, taps, "high")?,
                ),
                None => (low, high),
            };
            sweep(&|row| {
                let b = &k.em.builder;
                let read = |from, mask| -> Result<VectorValue<'ctx>, CodegenError> {
                    let at = b.build_int_add(row, from, "at")?;
                    k.masked_load(k.element(k.buffers[1], f32t.into(), at)?, mask)
                };
                let (head, tail) = (read(first, low)?, read(second, high)?);
                let both = b.build_select(low, head, tail, "two_runs")?;
                every_stride(k, both.into_vector_value(), lanes, stride)
            })
        };
        k.em.if_then(split, two_runs)?;
        let b = &k.em.builder;
        let other = b.build_or(run, split, "loaded")?;
        let scattered = b.build_not(other, "scattered")?;
        k.em.if_then(scattered, gather)
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
        source: Source,
    ) -> Result<(), CodegenError> {
        let t = self.t;
        let g = self.gemm;
        let lanes = t.lanes as u32;
        let f32t = k.cx.context.f32_type();
        let vf = f32t.vec_type(lanes);
        let (m, kd, p) = (
            g.conv.filters as i64,
            g.conv.depth() as i64,
            g.conv.pixels() as i64,
        );
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
        let y_at = |r: IntValue<'ctx>, v: usize| -> Result<PointerValue<'ctx>, CodegenError> {
            let b = &k.em.builder;
            let plane = b.build_int_add(y_plane0, r, "plane")?;
            let at = k.em.mul_add(plane, k.int(p), self.p0)?;
            let at = b.build_int_add(at, k.int((v * t.lanes) as i64), "at")?;
            k.element(k.buffers[0], f32t.into(), at)
        };
        let y_row = |r: usize, v: usize| y_at(k.int(r as i64), v);
        // Start: the bias (or 0) in the first K block, the partial sums
        // stored by the previous block otherwise.
        for r in 0..rows {
            let filter = b.build_int_add(m0, k.int(r as i64), "f")?;
            let start = if g.conv.bias {
                k.load_splat(
                    Elem::F32,
                    lanes,
                    k.element(k.buffers[4], f32t.into(), filter)?,
                )?
            } else {
                vf.const_zero()
            };
            for &(v, mask) in &vectors {
                let value = if t.k_blocks == 1 {
                    start
                } else {
                    let previous = k.load_f32(y_row(r, v)?, lanes, mask)?;
                    k.em.builder
                        .build_select(blk.first, start, previous, "start")?
                        .into_vector_value()
                };
                k.em.builder
                    .build_store(self.accs[r * t.vectors + v], value)?;
            }
        }
        let extra_start = 4 + usize::from(g.conv.bias);
        // The lines the tile's epilogue reads and writes are prefetched
        // for the same tile of the next panel (the group's other tiles
        // run in between): at the tile's own start its K loop was too
        // short to hide them (ResNet-50's 56² 64 → 256 layers with a
        // residual, 1.24–1.28 → 1.17–1.20 ms). Past the last panel the
        // addresses are only prefetched.
        let next_panel = (t.vectors * t.lanes) as i64;
        if kd <= SHALLOW_DEPTH {
            for r in 0..rows {
                for &(v, _) in &vectors {
                    let plane =
                        k.em.builder
                            .build_int_add(y_plane0, k.int(r as i64), "plane")?;
                    let at = k.em.mul_add(plane, k.int(p), self.p0)?;
                    let at = k.em.builder.build_int_add(
                        at,
                        k.int((v * t.lanes) as i64 + next_panel),
                        "at",
                    )?;
                    k.em.prefetch(f32t.into(), k.buffers[0], at, true, 3)?;
                }
            }
        }
        if let Some(epilogue) = &g.conv.epilogue {
            for r in 0..rows {
                let filter = k.em.builder.build_int_add(m0, k.int(r as i64), "f")?;
                for &(v, _) in &vectors {
                    let pixel = k.em.builder.build_int_add(
                        self.p0,
                        k.int((v * t.lanes) as i64 + next_panel),
                        "px",
                    )?;
                    epilogue.prefetch(k, &k.buffers[extra_start..], self.batch, filter, pixel)?;
                }
            }
        }
        let w_base = k.em.builder.build_int_mul(m0, k.int(kd), "wb")?;
        let width = (t.vectors * t.lanes) as i64;
        // Row k of the panel's B: in the scratch, in the input's channel
        // plane k (the next panel's part of it prefetched, as the packing
        // did), or at the tap's row offset; each vector from its first
        // pixel's column.
        let plane: usize = g.conv.window.input.iter().product();
        let x_base = k.em.builder.build_int_mul(
            self.batch,
            k.int((g.conv.channels * plane) as i64),
            "xb",
        )?;
        let mut firsts = Vec::with_capacity(vectors.len());
        for &(v, _) in &vectors {
            let v0 = (v * t.lanes) as i64;
            firsts.push(match source {
                Source::Packed => k.int(v0),
                Source::Planes => {
                    let at = k.em.builder.build_int_add(self.p0, k.int(v0), "px")?;
                    k.em.builder.build_int_add(x_base, at, "first")?
                }
                Source::Taps => {
                    let at = k.em.builder.build_int_add(self.p0, k.int(kd + v0), "col")?;
                    k.em.builder
                        .build_int_add(x_base, table_entry(k, at)?, "first")?
                }
            });
        }
        let b_buffer = match source {
            Source::Packed => k.scratch,
            Source::Planes | Source::Taps => k.buffers[1],
        };
        let b_row =
            |kidx: IntValue<'ctx>, kk: IntValue<'ctx>| -> Result<IntValue<'ctx>, CodegenError> {
                match source {
                    Source::Packed => Ok(k.em.builder.build_int_mul(kk, k.int(width), "row")?),
                    Source::Taps => table_entry(k, kidx),
                    Source::Planes => {
                        let row =
                            k.em.builder
                                .build_int_mul(kidx, k.int(plane as i64), "row")?;
                        let ahead = k.em.builder.build_int_add(row, firsts[0], "ahead")?;
                        let ahead = k.em.builder.build_int_add(ahead, k.int(width), "ahead")?;
                        k.em.prefetch(f32t.into(), k.buffers[1], ahead, false, 2)?;
                        Ok(row)
                    }
                }
            };
        k.em.counted_loop(k.int(0), blk.kc, |kk| {
            let b = &k.em.builder;
            let kidx = b.build_int_add(blk.k0, kk, "k")?;
            let mut bv = Vec::with_capacity(vectors.len());
            let row = b_row(kidx, kk)?;
            for &first in &firsts {
                let at = k.em.builder.build_int_add(row, first, "b")?;
                bv.push(k.load(Elem::F32, lanes, k.element(b_buffer, f32t.into(), at)?)?);
            }
            // Filter r of k: packed, `rows` floats per k; as stored, K
            // floats per filter.
            let (w_at, w_step) = if g.w_packed {
                (k.em.mul_add(kidx, k.int(rows as i64), w_base)?, 1)
            } else {
                (k.em.builder.build_int_add(w_base, kidx, "w")?, kd)
            };
            if g.w_packed {
                // The next tile's weights for this k into L2 (its packed
                // `[K][rows]` follows this tile's): a filter group's first
                // panel reads them from memory (2 MB for SqueezeNet's last
                // layer).
                let ahead =
                    k.em.builder
                        .build_int_add(w_at, k.int(rows as i64 * kd), "ahead")?;
                k.em.prefetch(f32t.into(), k.buffers[2], ahead, false, 2)?;
            }
            for r in 0..rows {
                let at =
                    k.em.builder
                        .build_int_add(w_at, k.int(r as i64 * w_step), "w")?;
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
        let epilogue = g.conv.epilogue.as_ref();
        if epilogue.is_some_and(Epilogue::is_costly) {
            // A costly epilogue runs as a loop over the tile's rows, on
            // the sums stored first: evaluated straight on the
            // accumulators, LLVM interleaves every row's exp and division
            // and spills most of them (a SiLU layer spent 21 cycles per
            // vector).
            for r in 0..rows {
                for &(v, mask) in &vectors {
                    let slot = self.accs[r * t.vectors + v];
                    let value = k.em.builder.build_load(vf, slot, "acc")?;
                    k.store_f32(y_row(r, v)?, value.into_vector_value(), mask)?;
                }
            }
            let rows_loop = || {
                k.em.counted_loop(k.int(0), k.int(rows as i64), |r| {
                    let filter = k.em.builder.build_int_add(m0, r, "f")?;
                    for &(v, mask) in &vectors {
                        let ptr = y_at(r, v)?;
                        let value = k.load_f32(ptr, lanes, mask)?;
                        let pixel = k.em.builder.build_int_add(
                            self.p0,
                            k.int((v * t.lanes) as i64),
                            "px",
                        )?;
                        let operands = &k.buffers[extra_start..];
                        let e = epilogue.ok_or(CodegenError::Internal("a costly epilogue"))?;
                        let value = e.apply(k, operands, value, self.batch, filter, pixel, mask)?;
                        k.store_f32(ptr, value, mask)?;
                    }
                    Ok(())
                })
            };
            return if t.k_blocks == 1 {
                rows_loop()
            } else {
                k.em.if_then(blk.last, rows_loop)
            };
        }
        for r in 0..rows {
            let filter = k.em.builder.build_int_add(m0, k.int(r as i64), "f")?;
            for &(v, mask) in &vectors {
                let slot = self.accs[r * t.vectors + v];
                let value =
                    k.em.builder
                        .build_load(vf, slot, "acc")?
                        .into_vector_value();
                let ptr = y_row(r, v)?;
                let store = |value| k.store_f32(ptr, value, mask);
                let Some(epilogue) = epilogue else {
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
                        mask,
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

impl<'ctx> KBlock<'ctx> {
    /// Block `kb` of `depth` cut into blocks of `k_block`.
    pub fn new(
        k: &Kernel<'_, 'ctx>,
        kb: IntValue<'ctx>,
        k_block: usize,
        depth: usize,
    ) -> Result<Self, CodegenError> {
        let b = &k.em.builder;
        let k0 = b.build_int_mul(kb, k.int(k_block as i64), "k0")?;
        let left = b.build_int_sub(k.int(depth as i64), k0, "k_left")?;
        let blocks = depth.div_ceil(k_block) as i64;
        Ok(Self {
            k0,
            kc: k.em.umin(left, k.int(k_block as i64))?,
            first: b.build_int_compare(IntPredicate::EQ, kb, k.int(0), "first")?,
            last: b.build_int_compare(IntPredicate::EQ, kb, k.int(blocks - 1), "last")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiling(target: &str, filters: usize, pixels: usize, depth: usize) -> Tiling {
        // A 1×1 window over a row of `pixels`: K is the channel count.
        let gemm = ConvGemm {
            conv: GemmConv::pointwise(filters, depth, &[pixels]),
            w_packed: false,
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
        // K blocks inside each panel while the group's W (all of K)
        // fits half the L2; outermost once it cannot.
        let t = tiling("x86_64-avx512", 64, 3136, 576);
        assert!(t.k_blocks > 1 && t.k_inner);
        let t = tiling("x86_64-avx512", 64, 3136, 8192);
        assert!(t.k_blocks > 1 && !t.k_inner);
        // A plane narrower than a vector is one partial panel.
        let t = tiling("x86_64-avx512", 2, 7, 64);
        assert_eq!((t.vectors, t.panels, t.tail), (1, 1, 7));
    }

    /// AVX-512 tiles read B straight from the input; AVX2's 6-filter
    /// tiles only when there are at most three of them; NEON's tall
    /// tiles have 8-float panels and do not, a single short one spans 4
    /// vectors (a line) and does.
    #[test]
    fn tall_or_few_tiles_read_straight() {
        for filters in [1, 16, 64, 512] {
            assert!(tiling("x86_64-avx512", filters, 3136, 256).reads_straight());
        }
        assert!(tiling("x86_64-avx2", 16, 3136, 256).reads_straight());
        assert!(!tiling("x86_64-avx2", 64, 3136, 256).reads_straight());
        assert!(!tiling("aarch64", 64, 3136, 256).reads_straight());
        let t = tiling("aarch64", 1, 3136, 256);
        assert!(t.vectors * t.lanes == 16 && t.reads_straight());
    }
}
