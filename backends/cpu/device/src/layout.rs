//! The layout of a GEMM's right-hand operand after compile-time packing.

use serde::{Deserialize, Serialize};

use crate::{AlignedBuffer, DeviceError};

/// How a row-major `k × n` matrix B is stored for the micro-kernel: cut
/// into column panels of `panel_width` columns (the micro-kernel's NR), each
/// panel stored row after row (`k` rows of `panel_width` contiguous floats),
/// the last panel padded with zeros. The micro-kernel then reads one
/// contiguous vector row of B per step of the reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedPanels {
    /// Rows of B (the reduction dimension).
    pub k: usize,
    /// Columns of B.
    pub n: usize,
    /// Columns per panel.
    pub panel_width: usize,
}

impl PackedPanels {
    /// The number of panels, the last one possibly partial.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(self.panel_width)
    }

    /// Floats in the packed buffer, padding included.
    pub fn len(&self) -> usize {
        self.panels() * self.k * self.panel_width
    }

    /// Whether the packed buffer is empty (a zero-sized B).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where B's element `(row, col)` lives in the packed buffer.
    pub fn index(&self, row: usize, col: usize) -> usize {
        let panel = col / self.panel_width;
        (panel * self.k + row) * self.panel_width + col % self.panel_width
    }

    /// Packs a row-major `k × n` matrix.
    pub fn pack(&self, b: &[f32]) -> Result<AlignedBuffer, DeviceError> {
        if b.len() != self.k * self.n {
            return Err(DeviceError::Shape {
                context: format!("packing a {}x{} matrix", self.k, self.n),
                operand: "B",
                expected: self.k * self.n,
                actual: b.len(),
            });
        }
        let mut packed = AlignedBuffer::zeroed(self.len());
        let out = packed.as_mut_slice();
        for (row, values) in b.chunks_exact(self.n.max(1)).enumerate() {
            for (col, &value) in values.iter().enumerate() {
                out[self.index(row, col)] = value;
            }
        }
        Ok(packed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_last_panel_with_zeros() {
        let layout = PackedPanels {
            k: 2,
            n: 3,
            panel_width: 2,
        };
        let packed = layout.pack(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        assert_eq!(packed.as_slice(), &[1.0, 2.0, 4.0, 5.0, 3.0, 0.0, 6.0, 0.0]);
    }

    #[test]
    fn wrong_length_is_an_error() {
        let layout = PackedPanels {
            k: 2,
            n: 3,
            panel_width: 2,
        };
        let err = layout.pack(&[1.0; 5]).unwrap_err().to_string();
        assert_eq!(
            err,
            "packing a 2x3 matrix: operand B has 5 elements, expected 6"
        );
    }

    #[test]
    fn every_element_has_its_own_slot() {
        let layout = PackedPanels {
            k: 5,
            n: 7,
            panel_width: 4,
        };
        let mut seen = vec![false; layout.len()];
        for row in 0..5 {
            for col in 0..7 {
                let at = layout.index(row, col);
                assert!(!seen[at]);
                seen[at] = true;
            }
        }
    }
}
