//! Arena placement on buffer lifetimes: every buffer gets a fixed offset
//! such that buffers alive at the same time never overlap.

/// A buffer to place: its size and the first and last step that touch it
/// (inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Lifetime {
    pub bytes: usize,
    pub first: usize,
    pub last: usize,
}

impl Lifetime {
    /// Whether the two buffers are alive at a common step.
    pub fn overlaps(&self, other: &Lifetime) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

/// Every buffer starts on a cache line.
pub const ALIGN: usize = 64;

/// The offsets of a set of buffers (in their order) and the arena size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub offsets: Vec<usize>,
    /// The end of the highest placed buffer.
    pub arena_bytes: usize,
}

/// Places `buffers`.
///
/// Greedy by decreasing size (ties: earlier first step, then earlier in
/// `buffers`): each buffer goes to the lowest 64-byte aligned offset that
/// overlaps no already placed buffer whose lifetime intersects its own.
/// Not optimal in general (that is NP-hard), but close on the chain-like
/// lifetimes of inference graphs.
pub fn place(buffers: &[Lifetime]) -> Placement {
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(buffers[i].bytes), buffers[i].first));
    let mut offsets = vec![0usize; buffers.len()];
    let mut placed: Vec<usize> = Vec::with_capacity(buffers.len());
    let mut arena_bytes = 0;
    for i in order {
        let b = buffers[i];
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| buffers[j].overlaps(&b))
            .map(|&j| (offsets[j], offsets[j] + buffers[j].bytes))
            .collect();
        busy.sort_unstable();
        let mut at = 0;
        for (start, end) in busy {
            if at + b.bytes <= start {
                break;
            }
            at = at.max(end.next_multiple_of(ALIGN));
        }
        offsets[i] = at;
        arena_bytes = arena_bytes.max(at + b.bytes);
        placed.push(i);
    }
    Placement {
        offsets,
        arena_bytes,
    }
}

/// The arena size without reuse: every buffer at its own aligned offset.
pub fn naive_bytes(buffers: &[Lifetime]) -> usize {
    buffers
        .iter()
        .map(|b| b.bytes.next_multiple_of(ALIGN))
        .sum()
}

/// The largest sum of the sizes of buffers alive at one step: a lower
/// bound of any arena.
pub fn peak_live_bytes(buffers: &[Lifetime]) -> usize {
    // (step, +bytes at first, -bytes after last); ends sort before starts
    // of the same step.
    let mut events: Vec<(usize, bool, usize)> = buffers
        .iter()
        .flat_map(|b| [(b.first, true, b.bytes), (b.last + 1, false, b.bytes)])
        .collect();
    events.sort_unstable();
    let (mut live, mut peak) = (0usize, 0usize);
    for (_, starts, bytes) in events {
        if starts {
            live += bytes;
            peak = peak.max(live);
        } else {
            live -= bytes;
        }
    }
    peak
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lifetime(bytes: usize, first: usize, last: usize) -> Lifetime {
        Lifetime { bytes, first, last }
    }

    #[test]
    fn a_chain_reuses_two_slots() {
        let chain: Vec<Lifetime> = (0..6).map(|i| lifetime(256, i, i + 1)).collect();
        let p = place(&chain);
        assert_eq!(p.arena_bytes, 512);
        assert_eq!(naive_bytes(&chain), 6 * 256);
        assert_eq!(peak_live_bytes(&chain), 512);
        // Neighbours differ, every other one shares.
        assert_ne!(p.offsets[0], p.offsets[1]);
        assert_eq!(p.offsets[0], p.offsets[2]);
    }

    #[test]
    fn offsets_are_aligned_after_odd_sizes() {
        let buffers = [lifetime(100, 0, 2), lifetime(3, 1, 1), lifetime(70, 2, 3)];
        let p = place(&buffers);
        // 70 B cannot share with 100 B (both live at step 2): next line
        // boundary; 3 B lives only beside 100 B, so it shares with 70 B.
        assert_eq!(p.offsets, vec![0, 128, 128]);
        assert_eq!(p.arena_bytes, 198);
        assert_eq!(naive_bytes(&buffers), 128 + 64 + 128);
        assert_eq!(peak_live_bytes(&buffers), 170);
    }

    #[test]
    fn disjoint_lifetimes_share_offset_zero() {
        let buffers = [lifetime(64, 0, 0), lifetime(640, 1, 1), lifetime(32, 2, 5)];
        let p = place(&buffers);
        assert_eq!(p.offsets, vec![0, 0, 0]);
        assert_eq!(p.arena_bytes, 640);
    }

    proptest! {
        #[test]
        fn simultaneously_live_buffers_never_share_bytes(
            spec in prop::collection::vec((1usize..5000, 0usize..20, 0usize..6), 1..40)
        ) {
            let buffers: Vec<Lifetime> = spec
                .iter()
                .map(|&(bytes, first, len)| lifetime(bytes, first, first + len))
                .collect();
            let p = place(&buffers);
            for i in 0..buffers.len() {
                prop_assert_eq!(p.offsets[i] % ALIGN, 0);
                prop_assert!(p.offsets[i] + buffers[i].bytes <= p.arena_bytes);
                for j in 0..i {
                    if buffers[i].overlaps(&buffers[j]) {
                        let disjoint = p.offsets[i] + buffers[i].bytes <= p.offsets[j]
                            || p.offsets[j] + buffers[j].bytes <= p.offsets[i];
                        prop_assert!(disjoint, "{} and {} overlap", i, j);
                    }
                }
            }
            prop_assert!(peak_live_bytes(&buffers) <= p.arena_bytes);
            prop_assert!(p.arena_bytes <= naive_bytes(&buffers));
        }
    }
}
