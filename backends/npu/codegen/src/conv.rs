//! A patchify convolution (kernel = stride, no padding, dilation 1, one
//! group) as a GEMM: the DMA builds the im2col matrix (one contiguous
//! piece per input channel and kernel row: no overlap, no padding), the
//! matrix unit multiplies it by the flattened weights, and the DMA
//! transposes the `[pixels, channels]` result back to NCHW.

use m4c_ir::op::ConvAttrs;
use m4c_npu::kernels::gather::Piece;

/// Why `attrs` with weights of shape `w` is not a patchify convolution.
pub fn not_patchify(attrs: &ConvAttrs, w: &[usize]) -> Option<String> {
    let kernel = &w[2..];
    if kernel.len() != 2 || attrs.group != 1 {
        return Some(format!(
            "{}-D conv with {} groups",
            kernel.len(),
            attrs.group
        ));
    }
    if attrs.strides != kernel || attrs.pads.iter().any(|&p| p != 0) {
        return Some(format!(
            "kernel {kernel:?}, strides {:?}, pads {:?}: only patchify convs (kernel = stride, no padding) lower, as a GEMM",
            attrs.strides, attrs.pads
        ));
    }
    attrs
        .dilations
        .iter()
        .any(|&d| d != 1)
        .then(|| format!("dilations {:?}", attrs.dilations))
}

/// The im2col rows of input `[n, c, h, w]` for a `kh x kw` patchify
/// kernel: one row per output pixel, `(channel, kernel row)` pieces of
/// `kw` bytes.
pub fn im2col(x: &[usize], (kh, kw): (usize, usize)) -> Vec<Vec<Piece>> {
    let (n, c, h, w) = (x[0], x[1], x[2], x[3]);
    let (oh, ow) = (h / kh, w / kw);
    let mut rows = Vec::with_capacity(n * oh * ow);
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                rows.push(
                    (0..c)
                        .flat_map(|ch| {
                            (0..kh).map(move |i| Piece {
                                source: 0,
                                start: ((b * c + ch) * h + oy * kh + i) * w + ox * kw,
                                stride: 1,
                                len: kw,
                            })
                        })
                        .collect(),
                );
            }
        }
    }
    rows
}

/// The rows of `[n, m, oh, ow]` read from a `[n*oh*ow, m]` GEMM result.
pub fn to_nchw(n: usize, m: usize, (oh, ow): (usize, usize)) -> Vec<Vec<Piece>> {
    let mut rows = Vec::with_capacity(n * m * oh);
    for b in 0..n {
        for ch in 0..m {
            for oy in 0..oh {
                rows.push(vec![Piece {
                    source: 0,
                    start: ((b * oh + oy) * ow) * m + ch,
                    stride: m,
                    len: ow,
                }]);
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patchify_rows_cover_each_patch_once() {
        let rows = im2col(&[1, 2, 4, 4], (2, 2));
        assert_eq!(rows.len(), 4);
        assert_eq!(
            rows[3][0],
            Piece {
                source: 0,
                start: 10,
                stride: 1,
                len: 2
            }
        );
        assert_eq!(
            rows[3][3],
            Piece {
                source: 0,
                start: 30,
                stride: 1,
                len: 2
            }
        );
        let back = to_nchw(1, 3, (2, 2));
        assert_eq!(
            back[3][0],
            Piece {
                source: 0,
                start: 7,
                stride: 3,
                len: 2
            }
        );
        let a = ConvAttrs {
            strides: vec![2, 2],
            pads: vec![0; 4],
            dilations: vec![1, 1],
            group: 1,
        };
        assert!(not_patchify(&a, &[3, 2, 2, 2]).is_none());
        let b = ConvAttrs {
            strides: vec![1, 1],
            ..a
        };
        assert!(not_patchify(&b, &[3, 2, 2, 2])
            .unwrap()
            .contains("patchify"));
    }
}
