//! The preallocated key/value cache of one sequence.

use ndarray::{s, ArrayD, Axis, IxDyn, Slice};

use super::KvLayout;

/// Key/value buffers for one sequence, allocated once: `[1, kv_heads,
/// slots, head_dim]` per past input, `slots` being the context minus the
/// last token (whose key and value no later step reads).
pub struct KvCache {
    pub(crate) buffers: Vec<ArrayD<f32>>,
    /// Tokens cached so far (the next step's position).
    pub(crate) len: usize,
}

impl KvCache {
    /// Zeroed buffers of `slots` positions for `layout`'s past inputs.
    pub fn new(layout: &KvLayout, slots: usize) -> KvCache {
        let mut shape = layout.past_shape.clone();
        shape[2] = slots;
        KvCache {
            buffers: layout
                .pairs
                .iter()
                .map(|_| ArrayD::zeros(IxDyn(&shape)))
                .collect(),
            len: 0,
        }
    }

    /// Positions the buffers hold.
    pub fn slots(&self) -> usize {
        self.buffers.first().map_or(0, |b| b.shape()[2])
    }

    /// Tokens cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first step.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held by the buffers.
    pub fn bytes(&self) -> usize {
        self.buffers.iter().map(|b| b.len() * 4).sum()
    }

    /// Copies `count` new positions of `present` (from position `from`)
    /// into buffer `i` at slots `len..len + count` (only those that fit).
    pub(crate) fn store(&mut self, i: usize, present: &ArrayD<f32>, from: usize, count: usize) {
        let count = count.min(self.slots().saturating_sub(self.len));
        let new = present.slice_axis(Axis(2), Slice::from(from..from + count));
        self.buffers[i]
            .slice_axis_mut(Axis(2), Slice::from(self.len..self.len + count))
            .assign(&new);
    }

    /// The first `n` positions of buffer `i` (a copy: for decoders that
    /// take exactly the cached past, without a mask).
    pub(crate) fn prefix(&self, i: usize, n: usize) -> ArrayD<f32> {
        self.buffers[i]
            .slice(s![.., .., ..n, ..])
            .into_dyn()
            .to_owned()
    }
}
