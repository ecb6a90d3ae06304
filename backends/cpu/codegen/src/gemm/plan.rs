//! Tile and cache-block sizes of a GEMM, derived from the target.

use crate::{Isa, Target};

/// L1 data cache the blocking is tuned for (per core): every core this
/// targets has at least this; the L2 is the target's
/// ([`Target::l2_bytes`]).
const L1_BYTES: usize = 32 * 1024;

/// How a GEMM is cut up for the target.
///
/// The micro-kernel keeps a `tile_rows × tile_cols` block of C in vector
/// registers: `tile_rows × vectors` accumulators, plus `vectors` registers for
/// the current row of B and one for the broadcast element of A, must fit the
/// register file. A `k_block × tile_cols` slice of packed B stays in half of
/// L1 while the micro-kernel sweeps a packed `m_block × k_block` block of A
/// that stays in half of L2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmPlan {
    /// f32 lanes per vector register.
    pub lanes: usize,
    /// Vectors per micro-tile row (the tile is `vectors × lanes` wide).
    pub vectors: usize,
    /// Rows of the micro-tile (MR).
    pub tile_rows: usize,
    /// Reduction-dimension block (KC).
    pub k_block: usize,
    /// Row block (MC), a multiple of `tile_rows`.
    pub m_block: usize,
    /// Per-core L2 bytes the blocks are sized for.
    pub l2_bytes: usize,
}

impl GemmPlan {
    /// The plan for `target`.
    pub fn for_target(target: &Target) -> Self {
        let lanes = target.isa.f32_lanes();
        let vectors = match target.isa {
            Isa::Avx512 | Isa::Avx2 => 2,
            Isa::Neon => 3,
        };
        let tile_rows = (target.isa.vector_registers() - vectors - 1) / vectors;
        let tile_cols = vectors * lanes;
        let k_block = (L1_BYTES / 2 / (tile_cols * 4) / 8 * 8).max(8);
        // A is read in place (no packing): an `m_block × k_block` block of
        // it takes an eighth of L2, leaving room for the group's C block.
        let l2_bytes = target.l2_bytes;
        let m_block = (l2_bytes / 8 / (k_block * 4)) / tile_rows * tile_rows;
        Self {
            lanes,
            vectors,
            tile_rows,
            k_block,
            m_block: m_block.max(tile_rows),
            l2_bytes,
        }
    }

    /// Columns of the micro-tile (NR), the packed-B panel width.
    pub fn tile_cols(&self) -> usize {
        self.vectors * self.lanes
    }

    /// B panels per column group, each group finished over all of K before
    /// the next. When all of A (`m × k`) fits in half of L2 a group is one
    /// panel: B then streams strictly in order and a panel's column of C
    /// stays in L1/L2. Otherwise the group's `min(m, m_block)` rows of C
    /// take at most half of L2, so they stay there while every K block adds
    /// into them and each block of A is reused across the group.
    pub fn group_panels(&self, m: usize, k: usize) -> usize {
        if m * k * 4 <= self.l2_bytes / 2 {
            return 1;
        }
        let rows = m.min(self.m_block);
        (self.l2_bytes / 2 / (rows * self.tile_cols() * 4)).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(target: &str) -> GemmPlan {
        GemmPlan::for_target(&Target::parse(Some(target), None).unwrap())
    }

    #[test]
    fn tiles_fill_the_register_file() {
        let p = plan("x86_64-avx512");
        assert_eq!((p.tile_rows, p.tile_cols()), (14, 32));
        let p = plan("x86_64-avx2");
        assert_eq!((p.tile_rows, p.tile_cols()), (6, 16));
        let p = plan("aarch64");
        assert_eq!((p.tile_rows, p.tile_cols()), (9, 12));
        for p in [plan("x86_64-avx512"), plan("x86_64-avx2"), plan("aarch64")] {
            assert!(p.m_block % p.tile_rows == 0 && p.m_block > 0);
            assert!(p.k_block * p.tile_cols() * 4 <= L1_BYTES / 2);
            // A's block takes an eighth of the target's L2.
            assert!(p.m_block * p.k_block * 4 <= p.l2_bytes / 8);
        }
    }

    /// A smaller L2 means fewer rows per block of A, and a column group's
    /// block of C still fits in half of it.
    #[test]
    fn blocks_follow_the_l2() {
        let big = plan("x86_64-avx512");
        let small = GemmPlan::for_target(&Target {
            l2_bytes: 512 << 10,
            ..Target::parse(Some("x86_64-avx512"), None).unwrap()
        });
        assert_eq!(big.l2_bytes, 1 << 20);
        assert!(small.m_block < big.m_block);
        let (m, k) = (1500, 384);
        for p in [big, small] {
            let rows = m.min(p.m_block);
            assert!(p.group_panels(m, k) * rows * p.tile_cols() * 4 <= p.l2_bytes / 2);
        }
    }
}
