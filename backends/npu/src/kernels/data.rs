//! Deterministic pseudo-random operands for generated layers (SplitMix64),
//! so that a layer and its reference can be regenerated from a seed.

/// A SplitMix64 generator.
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `len` random int8 values.
    pub fn i8s(&mut self, len: usize) -> Vec<i8> {
        (0..len).map(|_| self.next_u64() as i8).collect()
    }

    /// `len` per-channel (multiplier, shift) pairs for real scales spread
    /// over `base..4 * base`, as per-channel quantised weights give.
    pub fn channel_scales(&mut self, len: usize, base: f64) -> Vec<(i32, i32)> {
        (0..len)
            .map(|_| {
                let s = base * (1.0 + (self.next_u64() % 300) as f64 / 100.0);
                crate::quant::Requant::quantize_scale(s).unwrap_or((1 << 30, -31))
            })
            .collect()
    }

    /// `len` random int32 values in `-bound..bound`.
    pub fn i32s(&mut self, len: usize, bound: i32) -> Vec<i32> {
        (0..len)
            .map(|_| (self.next_u64() % (2 * bound as u64)) as i32 - bound)
            .collect()
    }
}

/// Reinterprets int8 values as bytes.
pub fn i8_bytes(v: &[i8]) -> Vec<u8> {
    v.iter().map(|&x| x as u8).collect()
}

/// Little-endian bytes of int32 values.
pub fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
