//! Element types of IR tensors.

use std::fmt;
use std::str::FromStr;

/// The element type of a tensor.
///
/// The set is what NPU-class hardware stores natively: float formats for the
/// reference path, int8/int4 for quantised weights and activations, int32 for
/// accumulators, int64 for indices and shapes, bool for masks. The
/// unsigned uint8/uint4 are the activation and weight types of asymmetric
/// quantisation (ONNX QuantizeLinear's default output is uint8).
///
/// ```
/// use m4c_ir::DType;
/// assert_eq!("bf16".parse::<DType>().unwrap(), DType::BF16);
/// assert_eq!(DType::I4.size_bits(), 4);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F16,
    BF16,
    I8,
    /// Signed 4-bit integers, two per byte, low nibble first.
    I4,
    /// Unsigned 8-bit integers.
    U8,
    /// Unsigned 4-bit integers, two per byte, low nibble first.
    U4,
    I32,
    I64,
    Bool,
}

impl DType {
    /// Every element type, in a stable order.
    pub const ALL: [DType; 10] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I8,
        DType::I4,
        DType::U8,
        DType::U4,
        DType::I32,
        DType::I64,
        DType::Bool,
    ];

    /// Bits per element in memory.
    pub fn size_bits(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 32,
            DType::F16 | DType::BF16 => 16,
            DType::I8 | DType::U8 | DType::Bool => 8,
            DType::I4 | DType::U4 => 4,
            DType::I64 => 64,
        }
    }

    /// Bytes needed to store `count` elements (int4 rounds up to whole bytes).
    pub fn storage_bytes(self, count: usize) -> usize {
        (count * self.size_bits()).div_ceil(8)
    }

    /// True for the floating-point types.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// True for the signed integer types.
    pub fn is_int(self) -> bool {
        matches!(self, DType::I8 | DType::I4 | DType::I32 | DType::I64)
    }

    /// True for the types a quantised tensor is stored in (QuantizeLinear's
    /// outputs, DequantizeLinear's inputs): int8, uint8, int4, uint4.
    pub fn is_quantised(self) -> bool {
        matches!(self, DType::I8 | DType::U8 | DType::I4 | DType::U4)
    }

    /// The smallest and largest value of an integer type (what quantisation
    /// saturates to); `None` for floats and bool.
    ///
    /// ```
    /// use m4c_ir::DType;
    /// assert_eq!(DType::U4.int_range(), Some((0, 15)));
    /// assert_eq!(DType::I8.int_range(), Some((-128, 127)));
    /// ```
    pub fn int_range(self) -> Option<(i64, i64)> {
        Some(match self {
            DType::I8 => (-128, 127),
            DType::U8 => (0, 255),
            DType::I4 => (-8, 7),
            DType::U4 => (0, 15),
            DType::I32 => (i32::MIN.into(), i32::MAX.into()),
            DType::I64 => (i64::MIN, i64::MAX),
            _ => return None,
        })
    }

    /// The element type a value of this type is held in while computing:
    /// packed int4/uint4 widen to int8/uint8, every other type is itself.
    pub fn unpacked(self) -> DType {
        match self {
            DType::I4 => DType::I8,
            DType::U4 => DType::U8,
            d => d,
        }
    }

    /// The name used in the textual IR.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I8 => "i8",
            DType::I4 => "i4",
            DType::U8 => "u8",
            DType::U4 => "u4",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::Bool => "bool",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DType::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| format!("unknown element type `{s}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in DType::ALL {
            assert_eq!(d.name().parse::<DType>().unwrap(), d);
        }
        assert!("f64".parse::<DType>().is_err());
    }

    #[test]
    fn int4_packs_two_per_byte() {
        assert_eq!(DType::I4.storage_bytes(5), 3);
        assert_eq!(DType::U4.storage_bytes(4), 2);
        assert_eq!(DType::U8.storage_bytes(3), 3);
        assert_eq!(DType::F32.storage_bytes(5), 20);
    }
}
