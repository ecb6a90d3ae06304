//! The weights section under construction: distinct tensor contents, each
//! stored once at a 64-byte-aligned offset.

use std::collections::HashMap;

use m4c_runtime::bundle::format::{align_up, Blob};

/// Deduplicates weights by content (BLAKE3 of the bytes, then a byte
/// comparison) across every module of a bundle.
#[derive(Default)]
pub struct WeightPool {
    bytes: Vec<u8>,
    blobs: Vec<Blob>,
    by_hash: HashMap<[u8; 32], usize>,
}

impl WeightPool {
    /// The blob holding `data`, appending it if no blob has these bytes.
    pub fn intern(&mut self, data: &[u8]) -> usize {
        let key = *blake3::hash(data).as_bytes();
        if let Some(&i) = self.by_hash.get(&key) {
            let b = self.blobs[i];
            if &self.bytes[b.offset as usize..][..b.len as usize] == data {
                return i;
            }
        }
        #[allow(
            clippy::expect_used,
            reason = "a buffer held in memory is far below usize::MAX"
        )]
        let offset = align_up(self.bytes.len()).expect("weights fit in memory");
        self.bytes.resize(offset, 0);
        self.bytes.extend_from_slice(data);
        self.blobs.push(Blob {
            len: data.len() as u64,
            offset: offset as u64,
        });
        let i = self.blobs.len() - 1;
        self.by_hash.entry(key).or_insert(i);
        i
    }

    /// The section bytes and the blob table.
    pub fn finish(self) -> (Vec<u8>, Vec<Blob>) {
        (self.bytes, self.blobs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_contents_share_one_aligned_blob() {
        let mut p = WeightPool::default();
        let a = p.intern(&[1, 2, 3]);
        let b = p.intern(&[4; 70]);
        assert_eq!(p.intern(&[1, 2, 3]), a);
        assert_ne!(a, b);
        let (bytes, blobs) = p.finish();
        assert_eq!(blobs[b].offset, 64);
        assert_eq!(bytes.len(), 64 + 70);
        assert_eq!(&bytes[..3], &[1, 2, 3]);
        assert!(bytes[3..64].iter().all(|&x| x == 0));
    }
}
