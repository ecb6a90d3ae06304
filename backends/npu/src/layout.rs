//! How the boundary's quantiser lays a part input's elements into its
//! int8 tensor. It writes every byte once whatever the order, so a
//! layout the first layer wants costs the boundary nothing extra and
//! spares the NPU a DMA pass: NHWC for a direct conv or a chain of convs,
//! the patch matrix for a conv whose kernel equals its stride (a ViT's
//! patch embedding: then the conv is the GEMM alone).

use serde::{Deserialize, Serialize};

/// The order of a part input's bytes, for a float value of shape
/// `[n, c, h, w]` (any shape for [`Layout::AsIs`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Layout {
    /// Row-major, as the value is.
    #[default]
    AsIs,
    /// `[n*h*w, c]`.
    Nhwc,
    /// The im2col matrix of non-overlapping `kh × kw` windows (stride =
    /// kernel, no padding): rows `(n, y/kh, x/kw)`, columns `(c, ky, kx)`.
    Patches {
        /// Window height.
        kh: usize,
        /// Window width.
        kw: usize,
    },
}

impl Layout {
    /// Checks the layout against the value's shape (4-D, windows that
    /// tile the image, no overflow).
    pub fn check(&self, shape: &[usize]) -> Result<(), String> {
        if *self == Layout::AsIs {
            return Ok(());
        }
        let &[n, c, h, w] = shape else {
            return Err(format!("{self:?} layout of a value of shape {shape:?}"));
        };
        [n, c, h, w]
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("shape {shape:?} overflows"))?;
        if let Layout::Patches { kh, kw } = *self {
            if kh == 0 || kw == 0 || !h.is_multiple_of(kh) || !w.is_multiple_of(kw) {
                return Err(format!("{kh}×{kw} patches do not tile a {h}×{w} image"));
            }
        }
        Ok(())
    }

    /// `data` (row-major, of `shape`) in this layout (as it is, without a
    /// copy, for [`Layout::AsIs`]).
    pub fn arrange<T: Copy>(&self, data: Vec<T>, shape: &[usize]) -> Result<Vec<T>, String> {
        self.check(shape)?;
        let &[n, c, h, w] = shape else {
            return Ok(data);
        };
        if data.len() != n * c * h * w {
            return Err(format!("{} elements for shape {shape:?}", data.len()));
        }
        let (kh, kw) = match *self {
            Layout::AsIs => return Ok(data),
            Layout::Nhwc => (1, 1),
            Layout::Patches { kh, kw } => (kh, kw),
        };
        // Destination order: (b, py, px) rows of (ch, ky, kx) columns; NHWC
        // is the 1×1 case.
        let (ph, pw) = (h / kh, w / kw);
        let mut out = Vec::with_capacity(data.len());
        for b in 0..n {
            for py in 0..ph {
                for px in 0..pw {
                    for ch in 0..c {
                        for ky in 0..kh {
                            let row = ((b * c + ch) * h + py * kh + ky) * w + px * kw;
                            out.extend_from_slice(&data[row..row + kw]);
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nhwc_and_patches_permute_the_value() {
        let shape = [1, 2, 2, 4];
        let x: Vec<u8> = (0..16).collect();
        assert_eq!(Layout::AsIs.arrange(x.clone(), &shape).unwrap(), x);
        assert_eq!(
            Layout::Nhwc.arrange(x.clone(), &shape).unwrap(),
            [0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15]
        );
        // Two 2×2 patches: (ch, ky, kx) per patch.
        assert_eq!(
            Layout::Patches { kh: 2, kw: 2 }
                .arrange(x.clone(), &shape)
                .unwrap(),
            [0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15]
        );
    }

    #[test]
    fn bad_layouts_are_errors() {
        let p = Layout::Patches { kh: 3, kw: 2 };
        assert!(p.check(&[1, 2, 4, 4]).is_err());
        assert!(Layout::Patches { kh: 0, kw: 1 }
            .check(&[1, 1, 1, 1])
            .is_err());
        assert!(Layout::Nhwc.check(&[4, 4]).is_err());
        assert!(Layout::Nhwc.check(&[usize::MAX, 2, 1, 1]).is_err());
        assert!(Layout::Nhwc.arrange(vec![0u8; 3], &[1, 1, 2, 2]).is_err());
    }
}
