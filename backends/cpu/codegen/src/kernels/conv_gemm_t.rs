//! Ungrouped convolution on small feature maps as the transposed GEMM
//! `y[n]ᵀ (P × M) = B[n]ᵀ (P × K) · Wᵀ (K × M)`: the filters lie in the
//! vector lanes and the output pixels are the tile's rows.
//!
//! Why: [`super::conv_gemm::ConvGemm`] puts pixels in the lanes, so a map
//! of 7×7 = 49 pixels computes 56 (a last vector for one pixel) with a
//! tile of few accumulators for that last vector; measured, 1×1
//! convolutions on 7×7 maps ran at 65–75 % of the FMA peak where those on
//! 14×14 and larger maps reach 85–90 %. Here the filter count (a multiple
//! of the lanes) fills every vector and the pixel tiles are of balanced
//! heights (49 = 4 × 6 + 5 × 5). Windowed convolutions on larger maps
//! (up to 1024 pixels) whose output rows the lanes split (14, 13, 28
//! wide) come here too: there the pixel-lane kernel gathers every vector
//! that crosses a row, while a tile row here is any pixel (a 3×3 layer of
//! 256 channels on 14×14: 1.15 → 1.07 of onnxruntime's time on Zen 3).
//! Their pixels are cut into blocks of about 64, and the K blocks run
//! over one pixel block at a time.
//!
//! B is never written out: the tile broadcasts `B[k, p]` straight from
//! the input, element `rows[k] + columns[p]` of the batch's planes, where
//! `k = c·taps + t` and the two offset tables (compile-time constants)
//! hold `c·plane + tap t's shift` and `output pixel p's first input
//! position`. The input is the convolution's own, or a zero-padded copy
//! of it when the window pads (a copy kernel runs first; im2col's matrix
//! would be `taps` times larger). On ResNet-50's 7×7 3×3 convolutions the
//! matrix was 0.9 MB, past the L2, and every filter panel streamed it.
//!
//! W is a constant repacked at compile time into panels of `F =
//! vectors·lanes` filters, `[K][F]` each; the tile (`rows` pixels × F
//! filters) broadcasts B's values against one panel row per k. K is cut
//! into blocks whose rows of the panel and of B fit half the L2 together
//! (a deep layer's panel, 4608 × 32 floats, would not), or the L1 for
//! short or narrow (AVX2) tiles, and every pixel tile runs through a
//! block before the next (the partial sums wait in the scratch). The
//! bias starts the accumulators; after the last block each group of a
//! tile's accumulators is transposed in registers into vectors of
//! consecutive pixels of one filter, which the epilogue takes and the
//! NCHW output receives whole. Iterations are (batch, filter panel)
//! pairs.

use inkwell::values::IntValue;
use inkwell::IntPredicate;

use super::conv_epilogue::Epilogue;
use super::conv_gemm::{table_entry, GemmConv, KBlock};
use super::window::{table_bytes, TapOffsets, Window};
use super::{Cx, Elem, Kernel};
use crate::{CodegenError, Target};

/// Maps of at most this many pixels take this kernel whenever their
/// pixel count leaves a partial vector in the pixel-lane kernel (14×14 =
/// 196 is 12¼ vectors of 16: ResNet-50's 1×1 layers there ran 10–15 %
/// faster here once the output left the tile transposed, Zen 4).
const SMALL_PIXELS: usize = 256;

/// Filter counts from which a small map takes this kernel even when they
/// are not a multiple of the lanes (the last filter panel partial, its
/// missing filters zeros): SqueezeNet's 1000 classes on 13×13.
const MANY_FILTERS: usize = 256;

/// The most pixels a larger map may have for this kernel.
const MAX_PIXELS: usize = 1024;

/// Pixels per block: K blocks run over one block's tiles at a time, so
/// that their rows of B stay in the L1 beside the W panel's row.
const BLOCK_PIXELS: usize = 64;

/// General-purpose registers the tile's k loop keeps besides one input
/// address per row: k, its end, the W pointer, the tap's offset, the
/// table pointer and the stack pointer. On x86-64 this leaves 10 rows:
/// measured on Zen 4, tiles of 14 rows (the 28 accumulators AVX-512's
/// 32 registers allow) spilled addresses and accumulators every k and
/// ran 1.5–3× slower, varying from run to run with the stack's
/// alignment; at 10 rows and below they run at the FMA peak.
const LOOP_REGISTERS: usize = 6;

/// Bytes of W's panel and B that one K block of short tiles may take
/// (most of a 32 KiB L1; [`ConvGemmT::k_block`]).
const L1_BLOCK_BYTES: usize = 24 * 1024;

/// Pixels from which a tile's K blocks fill half the L2 rather than the
/// L1 ([`ConvGemmT::k_block`]).
const TALL_ROWS: usize = 8;

/// Lanes from which a tile's K blocks fill half the L2 rather than the
/// L1 ([`ConvGemmT::k_block`]).
const WIDE_LANES: usize = 16;

/// The most input bytes (per batch, padded) the kernel reads, in L2s:
/// every filter panel reads all of them. Measured on Zen 3 (512 KiB L2):
/// inputs up to 3.5 L2s (1024 channels of 9×9) still ran faster here
/// than with pixels in the lanes.
const MAX_INPUT_L2S: usize = 4;

/// A convolution computed as `Bᵀ · Wᵀ` with filters in the lanes (a
/// filter count the lanes divide).
#[derive(Clone, Debug)]
pub(crate) struct ConvGemmT {
    pub conv: GemmConv,
}

/// How the product is cut up for a target.
#[derive(Clone, Copy, Debug)]
struct Tiling {
    lanes: usize,
    /// Vectors per panel (F = vectors · lanes filters).
    vectors: usize,
    /// Pixels per tile, and the number of tiles of `rows` (the rest have
    /// `rows − 1`).
    rows: usize,
    tall_tiles: usize,
    tiles: usize,
    /// Tiles per pixel block (the pixels a K block's rows of B cover).
    tiles_per_block: usize,
}

impl ConvGemmT {
    /// Whether this kernel should compute a convolution of `channels` over
    /// window `w` into `filters`: filters a multiple of the lanes (or
    /// many: [`MANY_FILTERS`], the last panel partial), a
    /// (padded) input of at most [`MAX_INPUT_L2S`] L2s whose offsets fit
    /// the `i32` tables, and either a map of at most [`SMALL_PIXELS`]
    /// pixels that leaves a partial vector in the pixel-lane kernel, or a
    /// window of several taps on a map of at most [`MAX_PIXELS`] whose
    /// rows the lanes split, with filters for two vectors per panel (1×1
    /// convolutions there, and panels of one vector, measured slower
    /// here).
    pub fn applies(target: &Target, filters: usize, channels: usize, w: &Window) -> bool {
        let lanes = target.isa.f32_lanes();
        let pixels: usize = w.output.iter().product();
        let plane: usize = w.padded_input().iter().product();
        let elements = channels.saturating_mul(plane);
        let taps: usize = w.kernel.iter().product();
        let row = w.output.last().copied().unwrap_or(1);
        let small = pixels <= SMALL_PIXELS && !pixels.is_multiple_of(lanes);
        let split_rows = taps > 1
            && pixels <= MAX_PIXELS
            && !row.is_multiple_of(lanes)
            && filters.is_multiple_of(2 * lanes);
        (small || split_rows)
            && (filters.is_multiple_of(lanes) || (small && filters >= MANY_FILTERS))
            && elements.saturating_mul(4) <= MAX_INPUT_L2S * target.l2_bytes
            && i32::try_from(elements).is_ok()
    }

    fn tiling(&self, target: &Target) -> Tiling {
        let lanes = target.isa.f32_lanes();
        let vectors = if self.conv.filters.is_multiple_of(2 * lanes) {
            2
        } else {
            1
        };
        // Accumulators, the panel row's vectors and one broadcast; and,
        // unless the rows read consecutive inputs, one input address per
        // row beside the loop's own registers.
        let mut max_rows = (target.isa.vector_registers() - vectors - 1) / vectors;
        if !self.in_place() {
            max_rows = max_rows.min(target.isa.general_registers() - LOOP_REGISTERS);
        }
        let pixels = self.conv.pixels();
        let tiles = pixels.div_ceil(max_rows);
        let rows = pixels.div_ceil(tiles);
        // `tiles` tiles of `rows` or `rows − 1` pixels summing to P.
        let tall_tiles = pixels - tiles * (rows - 1);
        Tiling {
            lanes,
            vectors,
            rows,
            tall_tiles,
            tiles,
            tiles_per_block: (BLOCK_PIXELS / rows).max(1),
        }
    }

    /// Whether output pixel `p` reads input pixel `p` (1×1, stride 1, no
    /// padding): a tile's rows then read consecutive floats, one address
    /// with constant displacements instead of a register per row.
    fn in_place(&self) -> bool {
        let w = &self.conv.window;
        w.kernel.iter().chain(&w.strides).all(|&n| n == 1) && w.input == w.output
    }

    fn panel_filters(&self, target: &Target) -> usize {
        let t = self.tiling(target);
        t.vectors * t.lanes
    }

    /// The range of the kernel's parallel axis (batch × filter panels).
    pub fn extent(&self, target: &Target) -> usize {
        self.conv.batch * self.panels(target)
    }

    /// Whether the last filter panel is partial.
    fn partial(&self, t: Tiling) -> bool {
        !self.conv.filters.is_multiple_of(t.vectors * t.lanes)
    }

    /// Filter panels (the last one partial when the filters are not a
    /// multiple of the panel's).
    fn panels(&self, target: &Target) -> usize {
        self.conv.filters.div_ceil(self.panel_filters(target))
    }

    /// W (`[M, K]` row-major, f32) repacked as the kernel reads it: per
    /// panel of F filters, `[K][F]`.
    pub fn pack(&self, target: &Target, w: &[f32]) -> Result<Vec<u8>, CodegenError> {
        let f = self.panel_filters(target);
        self.conv
            .pack_groups(w, (0..self.panels(target)).map(|panel| (panel * f, f)))
    }

    /// The offset tables the kernel reads ([`TapOffsets`]: rows, then
    /// columns).
    pub fn offsets(&self) -> Result<Vec<u8>, CodegenError> {
        let t = TapOffsets::new(&self.conv.window, self.conv.channels)?;
        Ok(table_bytes(&[&t.rows, &t.columns]))
    }

    /// K per block: the block's rows of the W panel and of B stay in half
    /// the L2 while every pixel tile goes by, the tile's accumulators in
    /// registers throughout, when the tiles are tall (at least
    /// [`TALL_ROWS`] pixels) and wide (16 lanes); other tiles keep blocks
    /// that fit the L1 ([`L1_BLOCK_BYTES`]). In AVX-512 code the L1's
    /// blocks cost a store and a load of every accumulator per 64 k or
    /// so, more than the W panel's stream from the L2 (alone, Zen 4: a
    /// 1024 → 256 1×1 layer on 14² 0.910 → 0.886 ms, a 3×3 layer of 128
    /// channels on 28² 2.045 → 2.016, of 256 on 14² 2.025 → 1.996); AVX2
    /// code's tiles, with half the multiply-adds per load, waited on the
    /// L2 instead (on the same host: a 512 → 2048 1×1 layer on 7² 1.03 →
    /// 1.23–1.29 ms with 6-pixel tiles, SqueezeNet's classifier 2.10–2.20
    /// → 2.21–2.28 with 14-pixel ones).
    fn k_block(&self, t: Tiling, target: &Target) -> usize {
        let block_pixels = (t.tiles_per_block * t.rows).min(self.conv.pixels());
        let per_k = (t.vectors * t.lanes + block_pixels) * 4;
        let bytes = match t.rows >= TALL_ROWS && t.lanes >= WIDE_LANES {
            true => target.l2_bytes / 2,
            false => L1_BLOCK_BYTES,
        };
        (bytes / per_k).max(8).min(self.conv.depth())
    }

    /// Scratch bytes per thread: the accumulators of every tile between K
    /// blocks.
    pub fn scratch_bytes(&self, target: &Target) -> usize {
        self.conv.pixels() * self.panel_filters(target) * 4
    }

    /// Emits the kernel (buffers: y, x (padded), packed W, offsets, bias?,
    /// epilogue operands..).
    pub fn emit<'ctx>(&self, cx: Cx<'_, 'ctx>, symbol: &str) -> Result<(), CodegenError> {
        let t = self.tiling(cx.target);
        let extra = self.conv.epilogue.as_ref().map_or(0, Epilogue::buffers);
        let k = Kernel::define(cx, symbol, 4 + usize::from(self.conv.bias) + extra)?;
        let panels = self.panels(cx.target);
        let k_block = self.k_block(t, cx.target);
        let depth = self.conv.depth();
        let k_blocks = depth.div_ceil(k_block);
        let end = k.em.umin(k.end, k.int((self.conv.batch * panels) as i64))?;
        let (per_block, blocks) = (t.tiles_per_block, t.tiles.div_ceil(t.tiles_per_block));
        k.em.counted_loop(k.begin, end, |i| {
            let b = &k.em.builder;
            let batch = b.build_int_unsigned_div(i, k.int(panels as i64), "n")?;
            let panel = b.build_int_unsigned_rem(i, k.int(panels as i64), "panel")?;
            k.em.counted_loop(k.int(0), k.int(blocks as i64), |pb| {
                // The block's tiles `j0..j1`: the tall ones, then the
                // short ones (after all tall tiles' pixels).
                let b = &k.em.builder;
                let j0 = b.build_int_mul(pb, k.int(per_block as i64), "j0")?;
                let j1 = b.build_int_add(j0, k.int(per_block as i64), "j1")?;
                let j1 = k.em.umin(j1, k.int(t.tiles as i64))?;
                let tall = k.int(t.tall_tiles as i64);
                let ranges = [
                    (j0, k.em.umin(j1, tall)?, t.rows),
                    (k.em.umax(j0, tall)?, j1, t.rows - 1),
                ];
                k.em.counted_loop(k.int(0), k.int(k_blocks as i64), |kb| {
                    let blk = KBlock::new(&k, kb, k_block, depth)?;
                    for &(from, to, rows) in &ranges {
                        if rows == 0 {
                            continue;
                        }
                        k.em.counted_loop(from, to, |j| {
                            // Tile j's first pixel: j·rows, less one per
                            // short tile before it.
                            let b = &k.em.builder;
                            let short = b.build_int_sub(k.em.umax(j, tall)?, tall, "short")?;
                            let p0 = b.build_int_mul(j, k.int(t.rows as i64), "p0")?;
                            let p0 = b.build_int_sub(p0, short, "p0")?;
                            self.tile(&k, t, (batch, panel), (p0, rows), &blk)
                        })?;
                    }
                    Ok(())
                })
            })
        })?;
        k.finish()
    }

    /// Pixels `p0..p0 + rows` of batch `batch` by the filters of `panel`,
    /// over the K block `blk`.
    fn tile<'ctx>(
        &self,
        k: &Kernel<'_, 'ctx>,
        t: Tiling,
        (batch, panel): (IntValue<'ctx>, IntValue<'ctx>),
        (p0, rows): (IntValue<'ctx>, usize),
        blk: &KBlock<'ctx>,
    ) -> Result<(), CodegenError> {
        let f32t = k.cx.context.f32_type();
        let lanes = t.lanes as u32;
        let vf = f32t.vec_type(lanes);
        let f = (t.vectors * t.lanes) as i64;
        let kd = self.conv.depth() as i64;
        let offset = |at| table_entry(k, at);
        let b = &k.em.builder;
        let m0 = b.build_int_mul(panel, k.int(f), "m0")?;
        let accs = (0..rows * t.vectors)
            .map(|_| k.slot(vf.into()))
            .collect::<Result<Vec<_>, _>>()?;
        // The tile's accumulators in the scratch between K blocks:
        // pixel-major, F each (unused when K is one block).
        let single = self.k_block(t, k.cx.target) >= self.conv.depth();
        let saved = |r: usize, v: usize| -> Result<_, CodegenError> {
            let at = k.em.mul_add(
                p0,
                k.int(f),
                k.int((r * t.vectors * t.lanes + v * t.lanes) as i64),
            )?;
            k.element(k.scratch, f32t.into(), at)
        };
        for v in 0..t.vectors {
            let start = if self.conv.bias {
                let at = b.build_int_add(m0, k.int((v * t.lanes) as i64), "bias")?;
                let at = k.element(k.buffers[4], f32t.into(), at)?;
                if self.partial(t) {
                    // The last panel's filters past M have no bias.
                    let left = b.build_int_sub(k.int(self.conv.filters as i64), m0, "left")?;
                    let left = b.build_int_sub(left, k.int((v * t.lanes) as i64), "left")?;
                    k.masked_load(at, k.lanes_below(lanes, left)?)?
                } else {
                    k.load(Elem::F32, lanes, at)?
                }
            } else {
                vf.const_zero()
            };
            for r in 0..rows {
                // One K block: nothing was saved, nothing to read back.
                let value = if single {
                    start
                } else {
                    let previous = k.load(Elem::F32, lanes, saved(r, v)?)?;
                    b.build_select(blk.first, start, previous, "start")?
                        .into_vector_value()
                };
                b.build_store(accs[r * t.vectors + v], value)?;
            }
        }
        // Per row, the element of its pixel's first tap in the batch's
        // input planes; per k, the tap's offset from it.
        let plane: usize = self.conv.window.input.iter().product();
        let x_base = b.build_int_mul(batch, k.int((self.conv.channels * plane) as i64), "xb")?;
        let in_place = self.in_place();
        let row_base = (0..rows)
            .map(|r| {
                let b = &k.em.builder;
                // In place, pixel p's input is element p; else the
                // columns table (after the K rows) says where.
                let column = if in_place {
                    b.build_int_add(p0, k.int(r as i64), "col")?
                } else {
                    offset(b.build_int_add(p0, k.int(kd + r as i64), "col")?)?
                };
                Ok(b.build_int_add(x_base, column, "row")?)
            })
            .collect::<Result<Vec<_>, CodegenError>>()?;
        let w_base = b.build_int_mul(panel, k.int(kd * f), "w")?;
        let w_ahead = (self.k_block(t, k.cx.target) as i64) * f;
        k.em.counted_loop(blk.k0, b.build_int_add(blk.k0, blk.kc, "k1")?, |kk| {
            let b = &k.em.builder;
            let w_row = k.em.mul_add(kk, k.int(f), w_base)?;
            let mut wv = Vec::with_capacity(t.vectors);
            for v in 0..t.vectors {
                let at = b.build_int_add(w_row, k.int((v * t.lanes) as i64), "wv")?;
                wv.push(k.load(Elem::F32, lanes, k.element(k.buffers[2], f32t.into(), at)?)?);
                // The same row of the next K block (or panel) into L2:
                // the weights of deep layers come from memory (4 MB for a
                // 512 → 2048 layer), and the block's first tile waited
                // for every line.
                let ahead = b.build_int_add(at, k.int(w_ahead), "ahead")?;
                k.em.prefetch(f32t.into(), k.buffers[2], ahead, false, 2)?;
            }
            let tap = offset(kk)?;
            for (r, &base) in row_base.iter().enumerate() {
                let at = k.em.builder.build_int_add(base, tap, "bx")?;
                let x =
                    k.load_splat(Elem::F32, lanes, k.element(k.buffers[1], f32t.into(), at)?)?;
                for (v, &w) in wv.iter().enumerate() {
                    let slot = accs[r * t.vectors + v];
                    let acc = b.build_load(vf, slot, "acc")?.into_vector_value();
                    let sum = k
                        .em
                        .call_value("llvm.fma", &[vf.into()], &[x.into(), w.into(), acc.into()])?
                        .into_vector_value();
                    b.build_store(slot, sum)?;
                }
            }
            Ok(())
        })?;
        // Partial sums go back to the scratch; after the last block,
        // y[n, m0 + j, p0 + r]: each accumulator's lanes are F filters of
        // one pixel, `P` apart in the output.
        if !single {
            let more = b.build_not(blk.last, "more")?;
            k.em.if_then(more, || {
                for r in 0..rows {
                    for v in 0..t.vectors {
                        let value =
                            k.em.builder
                                .build_load(vf, accs[r * t.vectors + v], "acc")?;
                        k.store(Elem::F32, saved(r, v)?, value.into_vector_value())?;
                    }
                }
                Ok(())
            })?;
        }
        k.em.if_then(blk.last, || {
            self.store(k, t, (batch, m0), (p0, rows), &accs)
        })?;
        Ok(())
    }
}

impl ConvGemmT {
    /// After the last K block, `y[n, m0 + j, p0 + r]` for the tile's
    /// `rows` pixels: each block of up to `lanes` accumulators (pixels ×
    /// one vector of filters) is transposed in registers into one vector
    /// per filter of consecutive pixels, so the epilogue reads its
    /// residual and the tile writes the output a run of pixels at a time
    /// (a masked vector) instead of lane by lane, a plane apart (on ResNet's
    /// 1×1 layers at 7×7 and 14×14 the lane-by-lane store and residual
    /// took 10–15 % of the kernel).
    fn store<'ctx>(
        &self,
        k: &Kernel<'_, 'ctx>,
        t: Tiling,
        (batch, m0): (IntValue<'ctx>, IntValue<'ctx>),
        (p0, rows): (IntValue<'ctx>, usize),
        accs: &[inkwell::values::PointerValue<'ctx>],
    ) -> Result<(), CodegenError> {
        let f32t = k.cx.context.f32_type();
        let vf = f32t.vec_type(t.lanes as u32);
        let p = self.conv.pixels() as i64;
        let y_base = k.em.mul_add(batch, k.int(self.conv.filters as i64), m0)?;
        let extra_start = 4 + usize::from(self.conv.bias);
        for v in 0..t.vectors {
            for r0 in (0..rows).step_by(t.lanes) {
                let count = (rows - r0).min(t.lanes);
                let block = (0..t.lanes)
                    .map(|i| {
                        if i >= count {
                            return Ok(vf.const_zero());
                        }
                        let slot = accs[(r0 + i) * t.vectors + v];
                        Ok(k.em
                            .builder
                            .build_load(vf, slot, "acc")?
                            .into_vector_value())
                    })
                    .collect::<Result<Vec<_>, CodegenError>>()?;
                let mask = (count < t.lanes).then(|| k.prefix_mask(t.lanes as u32, count));
                let b = &k.em.builder;
                let pixel = b.build_int_add(p0, k.int(r0 as i64), "px")?;
                for (j, value) in k.transpose(&block)?.into_iter().enumerate() {
                    let filter = (v * t.lanes + j) as i64;
                    let channel = b.build_int_add(m0, k.int(filter), "ch")?;
                    let put = || {
                        let value = match &self.conv.epilogue {
                            Some(e) => {
                                let operands = &k.buffers[extra_start..];
                                e.apply(k, operands, value, batch, channel, pixel, mask)?
                            }
                            None => value,
                        };
                        let plane = b.build_int_add(y_base, k.int(filter), "m")?;
                        let at = k.em.mul_add(plane, k.int(p), pixel)?;
                        k.store_f32(k.element(k.buffers[0], f32t.into(), at)?, value, mask)
                    };
                    if self.partial(t) {
                        let m = k.int(self.conv.filters as i64);
                        let real = b.build_int_compare(IntPredicate::ULT, channel, m, "real")?;
                        k.em.if_then(real, put)?;
                    } else {
                        put()?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiling(target: &str, filters: usize, hw: usize, taps: usize) -> Tiling {
        let mut conv = GemmConv::pointwise(filters, 64, &[hw, hw]);
        if taps > 1 {
            // A padded window: its input is the padded copy.
            conv.window.kernel = vec![taps; 2];
            conv.window.input = vec![hw + taps - 1; 2];
        }
        ConvGemmT { conv }.tiling(&Target::parse(Some(target), None).unwrap())
    }

    /// A tile's accumulators, panel row and broadcast fit the vector
    /// registers, and, where each row reads through its own address, those
    /// addresses the general ones (on AVX-512 the vector registers alone
    /// would allow 14 rows of two vectors, which a 1×1 layer reading its
    /// input in place takes).
    #[test]
    fn tiles_fit_both_register_files() {
        for target in ["x86_64-avx512", "x86_64-avx2", "aarch64"] {
            let isa = Target::parse(Some(target), None).unwrap().isa;
            for filters in [16, 32, 48, 64, 512] {
                for hw in [1, 3, 7, 14] {
                    for taps in [1, 3] {
                        let t = tiling(target, filters, hw, taps);
                        assert!(t.rows * t.vectors + t.vectors < isa.vector_registers());
                        if taps > 1 {
                            assert!(t.rows + LOOP_REGISTERS <= isa.general_registers());
                        }
                        assert!(t.tiles * t.rows - (t.tiles - t.tall_tiles) == hw * hw);
                    }
                }
            }
        }
        let t = tiling("x86_64-avx512", 64, 7, 3);
        assert_eq!((t.vectors, t.rows, t.tiles), (2, 10, 5));
        let t = tiling("x86_64-avx512", 64, 7, 1);
        assert_eq!((t.vectors, t.rows, t.tiles), (2, 13, 4));
    }

    /// Tall AVX-512 tiles run a 3×3 layer of 256 channels (K = 2304) in
    /// two K blocks (half of a 1 MiB L2); AVX2's, short and narrow, in
    /// blocks that fit the L1.
    #[test]
    fn tall_wide_tiles_block_k_for_the_l2() {
        let blocks = |target: &str| {
            let mut target = Target::parse(Some(target), None).unwrap();
            target.l2_bytes = 1 << 20;
            let mut conv = GemmConv::pointwise(256, 256, &[14, 14]);
            conv.window.kernel = vec![3; 2];
            conv.window.input = vec![16; 2];
            let gemm = ConvGemmT { conv };
            let t = gemm.tiling(&target);
            (t.rows, gemm.conv.depth().div_ceil(gemm.k_block(t, &target)))
        };
        assert_eq!(blocks("x86_64-avx512"), (10, 2));
        let (rows, avx2) = blocks("x86_64-avx2");
        assert!(rows < TALL_ROWS && avx2 > 20, "{rows} {avx2}");
    }
}
