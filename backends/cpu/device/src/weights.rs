//! The packed weights a library's kernels read: either an aligned copy
//! (an artifact directory read from disk) or bytes borrowed from an owner
//! that keeps them in place, such as a memory-mapped bundle, used where
//! they lie without a copy.

use std::sync::Arc;

use crate::AlignedBuffer;

/// Bytes shared with a [`crate::KernelLibrary`] without a copy, kept alive
/// by the owner behind the `Arc` (e.g. the bundle's memory map).
///
/// `as_ref` must return the same bytes on every call and the owner must
/// never change them: the kernels hold pointers into them for as long as
/// the library lives. A memory map of an immutable file or a buffer the
/// owner never mutates satisfies this.
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Where shared weights must start: on a cache line, like
/// [`AlignedBuffer`]. The kernels read `f32` with 4-byte and `i64`
/// constants with 8-byte alignment, and every constant sits at a 64-byte
/// offset of the weights, so a 64-byte aligned start satisfies both; a
/// bundle's sections are 64-byte aligned within a page-aligned map.
pub const SHARED_WEIGHTS_ALIGN: usize = 64;

/// The weights of one loaded library.
pub(crate) enum PackedWeights {
    /// Decoded from a weight file into an aligned buffer of our own.
    Owned(AlignedBuffer),
    /// Borrowed from their owner, in place.
    Shared(SharedBytes),
}

impl PackedWeights {
    /// A copy of `bytes` (little-endian `f32`) in an aligned buffer.
    pub(crate) fn from_le_bytes(bytes: &[u8]) -> Result<Self, String> {
        check_len(bytes.len())?;
        let floats: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(Self::Owned(AlignedBuffer::from_slice(&floats)))
    }

    /// `owner`'s bytes used in place; they must be a whole number of `f32`
    /// starting on a [`SHARED_WEIGHTS_ALIGN`] boundary, and the host must be
    /// little-endian (the weights' byte order) for them to be read as is.
    pub(crate) fn shared(owner: SharedBytes) -> Result<Self, String> {
        let bytes = (*owner).as_ref();
        if cfg!(target_endian = "big") {
            return Err("the packed weights are little-endian and this host is not".into());
        }
        check_len(bytes.len())?;
        let misalignment = bytes.as_ptr() as usize % SHARED_WEIGHTS_ALIGN;
        if !bytes.is_empty() && misalignment != 0 {
            return Err(format!(
                "the shared weights start {misalignment} bytes past a \
                 {SHARED_WEIGHTS_ALIGN}-byte boundary"
            ));
        }
        Ok(Self::Shared(owner))
    }

    /// The weights as floats, where they lie.
    pub(crate) fn floats(&self) -> &[f32] {
        match self {
            Self::Owned(buffer) => buffer.as_slice(),
            Self::Shared(owner) => {
                let bytes = (**owner).as_ref();
                if bytes.is_empty() {
                    // An empty slice's pointer may be dangling (unaligned).
                    &[]
                } else {
                    // Length and alignment were checked in `shared`, and the
                    // owner returns the same bytes on every call.
                    bytemuck::cast_slice(bytes)
                }
            }
        }
    }
}

fn check_len(len: usize) -> Result<(), String> {
    if len.is_multiple_of(4) {
        Ok(())
    } else {
        Err(format!("{len} bytes of weights, not a whole number of f32"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Owns an aligned buffer and shows its bytes from `skip` on.
    struct Owner(AlignedBuffer, usize);
    impl AsRef<[u8]> for Owner {
        fn as_ref(&self) -> &[u8] {
            &bytemuck::cast_slice(self.0.as_slice())[self.1..]
        }
    }

    #[test]
    fn shared_weights_are_read_in_place() {
        let values: Vec<f32> = (0..40).map(|i| i as f32 * 0.5).collect();
        let owner = Arc::new(Owner(AlignedBuffer::from_slice(&values), 0));
        let at = (*owner).as_ref().as_ptr_range();
        let weights = PackedWeights::shared(owner).unwrap();
        assert_eq!(weights.floats(), &values[..]);
        assert_eq!(
            weights.floats().as_ptr_range(),
            at.start.cast()..at.end.cast()
        );
    }

    #[test]
    fn misaligned_or_ragged_shared_weights_are_refused() {
        let values = [1.0f32; 32];
        let owner = Arc::new(Owner(AlignedBuffer::from_slice(&values), 4));
        let err = PackedWeights::shared(owner).err().unwrap();
        assert_eq!(
            err,
            "the shared weights start 4 bytes past a 64-byte boundary"
        );
        let ragged: SharedBytes = Arc::new(vec![0u8; 6]);
        let err = PackedWeights::shared(ragged).err().unwrap();
        assert_eq!(err, "6 bytes of weights, not a whole number of f32");
    }

    #[test]
    fn empty_shared_weights_are_fine() {
        let weights = PackedWeights::shared(Arc::new(Vec::<u8>::new())).unwrap();
        assert!(weights.floats().is_empty());
    }

    #[test]
    fn owned_weights_decode_little_endian() {
        let values = [1.5f32, -2.0, 3.25];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let weights = PackedWeights::from_le_bytes(&bytes).unwrap();
        assert_eq!(weights.floats(), &values[..]);
        assert_eq!(weights.floats().as_ptr() as usize % 64, 0);
        assert!(PackedWeights::from_le_bytes(&bytes[..5]).is_err());
    }
}
