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
//! heights (49 = 4 × 6 + 5 × 5).
//!
//! W is a constant repacked at compile time into panels of `F =
//! vectors·lanes` filters, `[K][F]` each; the tile (`rows` pixels × F
//! filters) broadcasts B's values (`B[k, p]`, read in place: the input for
//! a 1×1 convolution, im2col's matrix otherwise) against one panel row
//! per k. K is cut into blocks whose rows of the panel and of B fit the
//! L1 together, and every pixel tile runs through a block before the next
//! (the partial sums wait in the scratch): without the blocking each tile
//! streamed the whole panel from the L2 again and the kernel was slower
//! than the pixel-lane one. After the last block come the bias, an
//! activation-only epilogue and a scatter of each accumulator's lanes
//! into the NCHW output. Iterations are (batch, filter panel) pairs.

use inkwell::values::IntValue;
use inkwell::IntPredicate;

use super::conv_epilogue::Epilogue;
use super::conv_gemm::KBlock;
use super::{Cx, Elem, Kernel};
use crate::{CodegenError, Target};

/// The most pixels a map may have for this kernel.
const MAX_PIXELS: usize = 64;

/// Bytes of W's panel and B that one K block may take (most of a 32 KiB
/// L1).
const L1_BLOCK_BYTES: usize = 24 * 1024;

/// A convolution computed as `Bᵀ · Wᵀ` with filters in the lanes.
#[derive(Clone, Debug)]
pub(crate) struct ConvGemmT {
    pub batch: usize,
    /// Filters (M), a multiple of the target's lanes.
    pub filters: usize,
    /// Reduction length (K = channels · taps).
    pub depth: usize,
    /// Output pixels per plane (P).
    pub pixels: usize,
    pub bias: bool,
    /// An epilogue that reads nothing but the convolution's result.
    pub epilogue: Option<Epilogue>,
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
}

impl ConvGemmT {
    /// Whether this kernel should compute a convolution of these sizes:
    /// a map of at most [`MAX_PIXELS`] pixels that leaves a partial
    /// vector in the pixel-lane kernel, filters a multiple of the lanes,
    /// B within the L2 (every filter panel reads all of it), and an
    /// epilogue (if any) that reads no operand.
    pub fn applies(
        target: &Target,
        filters: usize,
        depth: usize,
        pixels: usize,
        epilogue: Option<&Epilogue>,
    ) -> bool {
        let lanes = target.isa.f32_lanes();
        pixels <= MAX_PIXELS
            && !pixels.is_multiple_of(lanes)
            && filters.is_multiple_of(lanes)
            && depth * pixels * 4 <= target.l2_bytes
            && epilogue.is_none_or(|e| e.buffers() == 0)
    }

    fn tiling(&self, target: &Target) -> Tiling {
        let lanes = target.isa.f32_lanes();
        let vectors = if self.filters.is_multiple_of(2 * lanes) {
            2
        } else {
            1
        };
        // Accumulators, the panel row's vectors and one broadcast.
        let max_rows = (target.isa.vector_registers() - vectors - 1) / vectors;
        let tiles = self.pixels.div_ceil(max_rows);
        let rows = self.pixels.div_ceil(tiles);
        // `tiles` tiles of `rows` or `rows − 1` pixels summing to P.
        let tall_tiles = self.pixels - tiles * (rows - 1);
        Tiling {
            lanes,
            vectors,
            rows,
            tall_tiles,
            tiles,
        }
    }

    fn panel_filters(&self, target: &Target) -> usize {
        let t = self.tiling(target);
        t.vectors * t.lanes
    }

    /// The range of the kernel's parallel axis (batch × filter panels).
    pub fn extent(&self, target: &Target) -> usize {
        self.batch * self.filters / self.panel_filters(target)
    }

    /// W (`[M, K]` row-major, f32) repacked as the kernel reads it: per
    /// panel of F filters, `[K][F]`.
    pub fn pack(&self, target: &Target, w: &[f32]) -> Result<Vec<u8>, CodegenError> {
        if w.len() != self.filters * self.depth {
            return Err(CodegenError::Internal(
                "a convolution's weights match its shape",
            ));
        }
        let f = self.panel_filters(target);
        let mut bytes = Vec::with_capacity(w.len() * 4);
        for panel in 0..self.filters / f {
            for k in 0..self.depth {
                for j in 0..f {
                    bytes.extend(w[(panel * f + j) * self.depth + k].to_le_bytes());
                }
            }
        }
        Ok(bytes)
    }

    /// K per block: the block's rows of the W panel and of B stay in the
    /// L1 while every pixel tile goes by.
    fn k_block(&self, t: Tiling) -> usize {
        let per_k = (t.vectors * t.lanes + self.pixels) * 4;
        (L1_BLOCK_BYTES / per_k).max(8).min(self.depth)
    }

    /// Scratch bytes per thread: the accumulators of every tile between K
    /// blocks.
    pub fn scratch_bytes(&self, target: &Target) -> usize {
        self.pixels * self.panel_filters(target) * 4
    }

    /// Emits the kernel (buffers: y, B, packed W, bias?).
    pub fn emit<'ctx>(&self, cx: Cx<'_, 'ctx>, symbol: &str) -> Result<(), CodegenError> {
        let t = self.tiling(cx.target);
        let k = Kernel::define(cx, symbol, 3 + usize::from(self.bias))?;
        let panels = self.filters / (t.vectors * t.lanes);
        let k_block = self.k_block(t);
        let k_blocks = self.depth.div_ceil(k_block);
        let end = k.em.umin(k.end, k.int((self.batch * panels) as i64))?;
        k.em.counted_loop(k.begin, end, |i| {
            let b = &k.em.builder;
            let batch = b.build_int_unsigned_div(i, k.int(panels as i64), "n")?;
            let panel = b.build_int_unsigned_rem(i, k.int(panels as i64), "panel")?;
            k.em.counted_loop(k.int(0), k.int(k_blocks as i64), |kb| {
                let b = &k.em.builder;
                let k0 = b.build_int_mul(kb, k.int(k_block as i64), "k0")?;
                let left = b.build_int_sub(k.int(self.depth as i64), k0, "left")?;
                let blk = KBlock {
                    k0,
                    kc: k.em.umin(left, k.int(k_block as i64))?,
                    first: b.build_int_compare(IntPredicate::EQ, kb, k.int(0), "first")?,
                    last: b.build_int_compare(
                        IntPredicate::EQ,
                        kb,
                        k.int(k_blocks as i64 - 1),
                        "last",
                    )?,
                };
                let tall = t.tall_tiles * t.rows;
                for (first, count, rows) in [
                    (0, t.tall_tiles, t.rows),
                    (tall, t.tiles - t.tall_tiles, t.rows - 1),
                ] {
                    if count == 0 || rows == 0 {
                        continue;
                    }
                    k.em.counted_loop(k.int(0), k.int(count as i64), |tile| {
                        let p0 =
                            k.em.mul_add(tile, k.int(rows as i64), k.int(first as i64))?;
                        self.tile(&k, t, (batch, panel), (p0, rows), &blk)
                    })?;
                }
                Ok(())
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
        let (kd, p, m) = (self.depth as i64, self.pixels as i64, self.filters as i64);
        let b = &k.em.builder;
        let m0 = b.build_int_mul(panel, k.int(f), "m0")?;
        let accs = (0..rows * t.vectors)
            .map(|_| k.slot(vf.into()))
            .collect::<Result<Vec<_>, _>>()?;
        // The tile's accumulators in the scratch between K blocks:
        // pixel-major, F each (unused when K is one block).
        let single = self.k_block(t) >= self.depth;
        let saved = |r: usize, v: usize| -> Result<_, CodegenError> {
            let at = k.em.mul_add(
                p0,
                k.int(f),
                k.int((r * t.vectors * t.lanes + v * t.lanes) as i64),
            )?;
            k.element(k.scratch, f32t.into(), at)
        };
        for v in 0..t.vectors {
            let start = if self.bias {
                let at = b.build_int_add(m0, k.int((v * t.lanes) as i64), "bias")?;
                k.load(Elem::F32, lanes, k.element(k.buffers[3], f32t.into(), at)?)?
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
        let b_base = k.em.mul_add(batch, k.int(kd * p), p0)?;
        let w_base = b.build_int_mul(panel, k.int(kd * f), "w")?;
        k.em.counted_loop(blk.k0, b.build_int_add(blk.k0, blk.kc, "k1")?, |kk| {
            let b = &k.em.builder;
            let w_row = k.em.mul_add(kk, k.int(f), w_base)?;
            let mut wv = Vec::with_capacity(t.vectors);
            for v in 0..t.vectors {
                let at = b.build_int_add(w_row, k.int((v * t.lanes) as i64), "wv")?;
                wv.push(k.load(Elem::F32, lanes, k.element(k.buffers[2], f32t.into(), at)?)?);
            }
            let b_row = k.em.mul_add(kk, k.int(p), b_base)?;
            for r in 0..rows {
                let at = b.build_int_add(b_row, k.int(r as i64), "bx")?;
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
            let b = &k.em.builder;
            let y_base = k.em.mul_add(batch, k.int(m), m0)?;
            for r in 0..rows {
                for v in 0..t.vectors {
                    let value = b
                        .build_load(vf, accs[r * t.vectors + v], "acc")?
                        .into_vector_value();
                    let value = match &self.epilogue {
                        // Reads no operand: batch, channel and pixel are unused.
                        Some(e) => e.apply(k, &[], value, batch, m0, p0, None)?,
                        None => value,
                    };
                    let pixel = b.build_int_add(p0, k.int(r as i64), "px")?;
                    for j in 0..t.lanes {
                        let filter =
                            b.build_int_add(y_base, k.int((v * t.lanes + j) as i64), "m")?;
                        let at = k.em.mul_add(filter, k.int(p), pixel)?;
                        let lane = b.build_extract_element(
                            value,
                            k.cx.context.i32_type().const_int(j as u64, false),
                            "lane",
                        )?;
                        b.build_store(k.element(k.buffers[0], f32t.into(), at)?, lane)?;
                    }
                }
            }
            Ok(())
        })?;
        Ok(())
    }
}
