//! Plain Rust reference kernels: the truth the generated programs are
//! checked against bit for bit. Deliberately naive.

use crate::quant::Requant;

/// `q` with column `c`'s multiplier and shift when per-channel scales are given.
pub fn channel_quant(q: &Requant, scales: Option<&[(i32, i32)]>, c: usize) -> Requant {
    match scales {
        Some(s) => Requant {
            multiplier: s[c].0,
            shift: s[c].1,
            ..*q
        },
        None => *q,
    }
}

/// out[i][j] = requant_j(sum_k a[i][k] * w[k][j] + bias[j]); row-major int8;
/// `requant_j` per column when `scales` is given.
pub fn gemm(
    a: &[i8],
    w: &[i8],
    bias: Option<&[i32]>,
    (m, k, n): (usize, usize, usize),
    (q, scales): (&Requant, Option<&[(i32, i32)]>),
) -> Vec<i8> {
    let mut out = vec![0i8; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = bias.map_or(0, |b| b[j]);
            for kk in 0..k {
                acc = acc.wrapping_add(a[i * k + kk] as i32 * w[kk * n + j] as i32);
            }
            out[i * n + j] = channel_quant(q, scales, j).apply(acc);
        }
    }
    out
}

/// Shape of a 2-D convolution over an NHWC image (batch 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (both directions).
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
}

impl ConvShape {
    /// Output height.
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad).saturating_sub(self.kh) / self.stride + 1
    }

    /// Output width.
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad).saturating_sub(self.kw) / self.stride + 1
    }
}

/// NHWC convolution; weights `[kh][kw][c_in][c_out]`; output NHWC int8,
/// requantised per output channel when `scales` is given.
pub fn conv2d(
    input: &[i8],
    weights: &[i8],
    bias: Option<&[i32]>,
    s: &ConvShape,
    (q, scales): (&Requant, Option<&[(i32, i32)]>),
) -> Vec<i8> {
    let (oh, ow) = (s.out_h(), s.out_w());
    let mut out = vec![0i8; oh * ow * s.c_out];
    for oy in 0..oh {
        for ox in 0..ow {
            for co in 0..s.c_out {
                let mut acc = bias.map_or(0, |b| b[co]);
                for ky in 0..s.kh {
                    for kx in 0..s.kw {
                        let y = (oy * s.stride + ky) as isize - s.pad as isize;
                        let x = (ox * s.stride + kx) as isize - s.pad as isize;
                        if y < 0 || x < 0 || y >= s.h as isize || x >= s.w as isize {
                            continue;
                        }
                        for ci in 0..s.c_in {
                            let iv = input[(y as usize * s.w + x as usize) * s.c_in + ci] as i32;
                            let wv =
                                weights[((ky * s.kw + kx) * s.c_in + ci) * s.c_out + co] as i32;
                            acc = acc.wrapping_add(iv * wv);
                        }
                    }
                }
                out[(oy * ow + ox) * s.c_out + co] = channel_quant(q, scales, co).apply(acc);
            }
        }
    }
    out
}
