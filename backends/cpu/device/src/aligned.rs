//! A heap buffer of `f32` whose start is aligned to a cache line.

/// One cache line of floats; a `Vec` of these is 64-byte aligned.
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A zero-initialised `f32` buffer whose first element sits on a 64-byte
/// boundary, so generated kernels can use aligned full-width vector loads on
/// packed weights and scratch space.
#[derive(Clone, Default)]
pub struct AlignedBuffer {
    lines: Vec<Line>,
    len: usize,
}

impl std::fmt::Debug for AlignedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuffer({} floats)", self.len)
    }
}

impl AlignedBuffer {
    /// A buffer of `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        Self {
            lines: vec![Line::default(); len.div_ceil(16)],
            len,
        }
    }

    /// A buffer holding a copy of `values`.
    pub fn from_slice(values: &[f32]) -> Self {
        let mut buffer = Self::zeroed(values.len());
        buffer.as_mut_slice().copy_from_slice(values);
        buffer
    }

    /// The number of floats.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no floats.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The floats, read-only.
    pub fn as_slice(&self) -> &[f32] {
        &bytemuck::cast_slice(&self.lines)[..self.len]
    }

    /// The floats, writable.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        let len = self.len;
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_is_cache_line_aligned_and_zeroed() {
        for len in [1, 15, 16, 17, 1000] {
            let buffer = AlignedBuffer::zeroed(len);
            assert_eq!(buffer.as_slice().as_ptr() as usize % 64, 0);
            assert_eq!(buffer.len(), len);
            assert!(buffer.as_slice().iter().all(|&x| x == 0.0));
        }
    }

    #[test]
    fn from_slice_copies() {
        let values: Vec<f32> = (0..37).map(|i| i as f32).collect();
        assert_eq!(AlignedBuffer::from_slice(&values).as_slice(), &values[..]);
    }
}
