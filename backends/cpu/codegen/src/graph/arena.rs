//! Activation-arena planning: every intermediate buffer gets a fixed
//! offset such that buffers alive at the same time never overlap.

/// A buffer to place: its size and the first and last step that touch it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lifetime {
    pub bytes: usize,
    pub first: usize,
    pub last: usize,
}

/// Buffers start on cache lines.
const ALIGN: usize = 64;

/// Offsets for `buffers` (same order) and the arena size they need.
///
/// Greedy by decreasing size: each buffer goes to the lowest 64-byte
/// aligned offset that overlaps no already placed buffer whose lifetime
/// intersects its own. Not optimal in general (that is NP-hard), but
/// close on the chain-like lifetimes of inference graphs.
pub(crate) fn plan(buffers: &[Lifetime]) -> (Vec<usize>, usize) {
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(buffers[i].bytes), buffers[i].first));
    let mut offsets = vec![0usize; buffers.len()];
    let mut placed: Vec<usize> = Vec::with_capacity(buffers.len());
    let mut peak = 0;
    for i in order {
        let b = buffers[i];
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| buffers[j].first <= b.last && b.first <= buffers[j].last)
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
        peak = peak.max(at + b.bytes);
        placed.push(i);
    }
    (offsets, peak)
}

/// The arena size without reuse: every buffer at its own aligned offset.
pub(crate) fn naive_size(buffers: &[Lifetime]) -> usize {
    buffers
        .iter()
        .map(|b| b.bytes.next_multiple_of(ALIGN))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_chain_reuses_two_slots() {
        let chain: Vec<Lifetime> = (0..6)
            .map(|i| Lifetime {
                bytes: 256,
                first: i,
                last: i + 1,
            })
            .collect();
        let (_, peak) = plan(&chain);
        assert_eq!(peak, 512);
        assert_eq!(naive_size(&chain), 6 * 256);
    }

    proptest! {
        #[test]
        fn overlapping_lifetimes_never_share_bytes(
            spec in prop::collection::vec((1usize..5000, 0usize..20, 0usize..6), 1..40)
        ) {
            let buffers: Vec<Lifetime> = spec
                .iter()
                .map(|&(bytes, first, len)| Lifetime { bytes, first, last: first + len })
                .collect();
            let (offsets, peak) = plan(&buffers);
            for i in 0..buffers.len() {
                prop_assert_eq!(offsets[i] % ALIGN, 0);
                prop_assert!(offsets[i] + buffers[i].bytes <= peak);
                for j in 0..i {
                    let (a, b) = (buffers[i], buffers[j]);
                    if a.first <= b.last && b.first <= a.last {
                        let disjoint = offsets[i] + a.bytes <= offsets[j]
                            || offsets[j] + b.bytes <= offsets[i];
                        prop_assert!(disjoint, "{i} and {j} overlap");
                    }
                }
            }
            prop_assert!(peak <= naive_size(&buffers));
        }
    }
}
