//! Where a part's tensors live while its linked program runs: the
//! whole-part memory plan. Each tensor is live from the first layer that
//! writes it (a part input: from the start) to the last layer that reads
//! it (a part output: to the end); tensors whose lives overlap never share
//! bytes. Intermediates go to the on-chip feature-map SRAM while it has
//! room, the rest to a DRAM arena; part inputs and outputs stay in DRAM,
//! where the host's boundary conversions read and write them.
//!
//! Placement is greedy by size, largest first, each tensor at the lowest
//! 64-byte-aligned offset free for its whole life (the arena planners of
//! TFLite and onnxruntime work the same way).

use crate::module::PartPlan;

/// One tensor's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Home {
    /// Byte offset in the DRAM arena.
    Dram(u64),
    /// Byte offset in the feature-map SRAM.
    Fmap(u64),
}

/// The part's memory plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Per tensor of the plan.
    pub homes: Vec<Home>,
    /// Bytes of the DRAM arena (its high-water mark).
    pub dram_bytes: u64,
    /// Bytes of feature-map SRAM used (its high-water mark).
    pub fmap_bytes: u64,
}

/// Layer interval `[first, last]` during which each tensor holds a value.
fn lives(plan: &PartPlan, pinned: &[bool]) -> Vec<(usize, usize)> {
    let end = plan.layers.len().saturating_sub(1);
    let mut life: Vec<Option<(usize, usize)>> = vec![None; plan.tensors.len()];
    for (l, layer) in plan.layers.iter().enumerate() {
        for b in layer.inputs.iter().chain(std::iter::once(&layer.output)) {
            if let Some(slot) = life.get_mut(b.tensor) {
                let (first, last) = slot.get_or_insert((l, l));
                *first = (*first).min(l);
                *last = (*last).max(l);
            }
        }
    }
    life.iter()
        .zip(pinned)
        .map(|(life, &pinned)| match (life, pinned) {
            // Boundary values are written before the first layer and
            // read after the last.
            (_, true) => (0, end),
            (Some(l), false) => *l,
            (None, false) => (0, 0),
        })
        .collect()
}

/// Plans every tensor of `plan`. `pinned` marks the part's inputs and
/// outputs (kept in DRAM for the host); `fmap_capacity` is the feature-map
/// SRAM's size in bytes (0: none).
pub fn plan_memory(plan: &PartPlan, pinned: &[bool], fmap_capacity: u64) -> MemoryPlan {
    let lives = lives(plan, pinned);
    let mut order: Vec<usize> = (0..plan.tensors.len()).collect();
    order.sort_by_key(|&t| (std::cmp::Reverse(plan.tensors[t].bytes), t));
    let mut placed: Vec<(usize, Home)> = Vec::new();
    let mut homes = vec![Home::Dram(0); plan.tensors.len()];
    let (mut dram_bytes, mut fmap_bytes) = (0u64, 0u64);
    for t in order {
        let size = align(plan.tensors[t].bytes as u64);
        let (first, last) = lives[t];
        // Byte ranges taken in `on_chip` memory by tensors live with `t`.
        let taken = |on_chip: bool| {
            let mut ranges: Vec<(u64, u64)> = placed
                .iter()
                .filter(|(u, _)| lives[*u].0 <= last && first <= lives[*u].1)
                .filter_map(|(u, home)| match (*home, on_chip) {
                    (Home::Fmap(at), true) | (Home::Dram(at), false) => {
                        Some((at, at + align(plan.tensors[*u].bytes as u64)))
                    }
                    _ => None,
                })
                .collect();
            ranges.sort_unstable();
            ranges
        };
        let lowest_free = |ranges: Vec<(u64, u64)>| {
            let mut at = 0;
            for (lo, hi) in ranges {
                if at + size <= lo {
                    break;
                }
                at = at.max(hi);
            }
            at
        };
        let fmap_at = lowest_free(taken(true));
        let home = if !pinned[t] && fmap_at + size <= fmap_capacity {
            fmap_bytes = fmap_bytes.max(fmap_at + size);
            Home::Fmap(fmap_at)
        } else {
            let at = lowest_free(taken(false));
            dram_bytes = dram_bytes.max(at + size);
            Home::Dram(at)
        };
        homes[t] = home;
        placed.push((t, home));
    }
    MemoryPlan {
        homes,
        dram_bytes,
        fmap_bytes,
    }
}

/// `bytes` rounded up to 64.
pub(super) fn align(bytes: u64) -> u64 {
    bytes.div_ceil(64) * 64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::module::{Binding, LayerSpec, TensorSpec};

    fn chain(sizes: &[usize]) -> PartPlan {
        let tensors = sizes
            .iter()
            .enumerate()
            .map(|(i, &bytes)| TensorSpec {
                name: format!("t{i}"),
                bytes,
                scale: 1.0,
                zero_point: 0,
            })
            .collect();
        let bind = |tensor: usize| Binding {
            tensor,
            offset: 0,
            len: sizes[tensor],
            addr: 0,
        };
        let layers = (1..sizes.len())
            .map(|l| LayerSpec {
                name: format!("t{l}"),
                kernel: "copy".into(),
                program: 0,
                inputs: vec![bind(l - 1)],
                output: bind(l),
                rows_by_index: None,
                tile_rows: 1,
            })
            .collect();
        PartPlan { tensors, layers }
    }

    /// In a chain a → b → c → d only neighbours are live together, so the
    /// intermediates b and c never share bytes, while d reuses b's.
    #[test]
    fn tensors_live_together_never_overlap_and_dead_ones_are_reused() {
        let plan = chain(&[100, 200, 300, 200]);
        let pinned = [true, false, false, true];
        let m = plan_memory(&plan, &pinned, 0);
        assert!(m.homes.iter().all(|h| matches!(h, Home::Dram(_))));
        let Home::Dram(b) = m.homes[1] else { panic!() };
        let Home::Dram(c) = m.homes[2] else { panic!() };
        assert!(b + 256 <= c || c + 320 <= b, "{m:?}");
        // Here every pair of tensors is live together somewhere.
        assert_eq!(m.dram_bytes, 128 + 256 + 320 + 256);
        // A longer chain reuses: t1 and t3 are never live together.
        let plan = chain(&[64, 64, 64, 64, 64]);
        let m = plan_memory(&plan, &[true, false, false, false, true], 0);
        assert_eq!(m.dram_bytes, 4 * 64, "{m:?}");
    }

    /// Intermediates go on chip while they fit; part inputs and outputs
    /// never do.
    #[test]
    fn intermediates_fill_the_feature_map_sram_first() {
        let plan = chain(&[64, 1000, 64, 64]);
        let pinned = [true, false, false, true];
        let m = plan_memory(&plan, &pinned, 1024);
        assert_eq!(m.homes[1], Home::Fmap(0));
        // t2 is live with t1 (layer 2 reads t1 while writing t2): no room.
        assert!(matches!(m.homes[2], Home::Dram(_)), "{m:?}");
        assert!(matches!(m.homes[0], Home::Dram(_)));
        assert!(matches!(m.homes[3], Home::Dram(_)));
        assert_eq!(m.fmap_bytes, 1024);
    }
}
