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

    /// The bytes (little-endian `f32`) of the matrix whose packed form is
    /// `packed`: row-major `k × n`, or with `transposed` its transpose
    /// (`n × k`, a MatMul's B given as Bᵀ). The inverse of [`Self::pack`],
    /// so that a bundle needs to store a packed weight only once and can
    /// still give the interpreter the tensor of the graph.
    pub fn unpack(&self, packed: &[u8], transposed: bool) -> Result<Vec<u8>, DeviceError> {
        self.check_packed(packed)?;
        let mut out = vec![0u8; self.k * self.n * 4];
        if !transposed {
            // Each panel row is a contiguous run of a row of B.
            for panel in 0..self.panels() {
                let col = panel * self.panel_width;
                let width = 4 * self.panel_width.min(self.n - col);
                for row in 0..self.k {
                    let from = 4 * self.index(row, col);
                    let to = 4 * (row * self.n + col);
                    out[to..to + width].copy_from_slice(&packed[from..from + width]);
                }
            }
            return Ok(out);
        }
        for (row, col, at) in self.elements(transposed) {
            let from = self.index(row, col) * 4;
            out[at * 4..at * 4 + 4].copy_from_slice(&packed[from..from + 4]);
        }
        Ok(out)
    }

    /// Whether `packed` is exactly [`Self::pack`] of the matrix with bytes
    /// `b` (as [`Self::unpack`] reads them), compared bit for bit without
    /// unpacking; the padding is not compared (unpacking never reads it).
    pub fn holds(&self, packed: &[u8], b: &[u8], transposed: bool) -> bool {
        self.check_packed(packed).is_ok()
            && b.len() == self.k * self.n * 4
            && self.elements(transposed).all(|(row, col, at)| {
                let from = self.index(row, col) * 4;
                packed[from..from + 4] == b[at * 4..at * 4 + 4]
            })
    }

    /// Every element `(row, col)` of B with its index in the unpacked
    /// matrix, in the unpacked matrix's order.
    fn elements(&self, transposed: bool) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let (k, n) = (self.k, self.n);
        (0..k * n).map(move |at| {
            if transposed {
                (at % k, at / k, at)
            } else {
                (at / n.max(1), at % n.max(1), at)
            }
        })
    }

    fn check_packed(&self, packed: &[u8]) -> Result<(), DeviceError> {
        let floats = self
            .panels()
            .checked_mul(self.k)
            .and_then(|x| x.checked_mul(self.panel_width))
            .filter(|_| self.panel_width > 0 || self.n == 0);
        match floats {
            Some(f) if f.checked_mul(4) == Some(packed.len()) => Ok(()),
            _ => Err(DeviceError::Shape {
                context: format!(
                    "unpacking a {}x{} matrix in panels of {}",
                    self.k, self.n, self.panel_width
                ),
                operand: "packed B (bytes)",
                expected: floats.and_then(|f| f.checked_mul(4)).unwrap_or(usize::MAX),
                actual: packed.len(),
            }),
        }
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
    fn unpack_inverts_pack_plain_and_transposed() {
        let layout = PackedPanels {
            k: 3,
            n: 5,
            panel_width: 4,
        };
        let b: Vec<f32> = (0..15).map(|i| i as f32 - 7.5).collect();
        let le = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let packed = le(layout.pack(&b).unwrap().as_slice());
        assert_eq!(layout.unpack(&packed, false).unwrap(), le(&b));
        assert!(layout.holds(&packed, &le(&b), false));
        // Bᵀ stored n × k: element (r, c) of B is at c·k + r.
        let bt: Vec<f32> = (0..15).map(|i| b[(i % 3) * 5 + i / 3]).collect();
        assert_eq!(layout.unpack(&packed, true).unwrap(), le(&bt));
        assert!(layout.holds(&packed, &le(&bt), true));
        assert!(!layout.holds(&packed, &le(&b), true));
        let err = layout.unpack(&packed[4..], false).unwrap_err().to_string();
        assert!(err.contains("unpacking a 3x5 matrix"), "{err}");
        let huge = PackedPanels {
            k: usize::MAX,
            n: 3,
            panel_width: 2,
        };
        assert!(huge.unpack(&packed, false).is_err());
        assert!(!huge.holds(&packed, &packed, false));
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
