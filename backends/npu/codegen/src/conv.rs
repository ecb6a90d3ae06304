//! The address patterns of a 2-D convolution on NCHW tensors: the im2col
//! matrix of an explicit im2col + GEMM (pieces of the image and of a zero
//! source where the window lies in the padding, any stride, padding and
//! dilation), and the layout changes around the NHWC kernels (NCHW →
//! NHWC before the direct and depthwise conv kernels, the `[pixels,
//! channels]` result back to NCHW).

use m4c_ir::op::ConvAttrs;
use m4c_npu::kernels::gather::Piece;
use m4c_npu::kernels::reference::ConvShape;

/// The window of a 2-D convolution over an `[n, c, h, w]` input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Input `[n, c, h, w]`.
    pub x: [usize; 4],
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Strides (height, width).
    pub strides: [usize; 2],
    /// Dilations (height, width).
    pub dilations: [usize; 2],
    /// Pads: top, left, bottom, right.
    pub pads: [usize; 4],
}

impl Geometry {
    /// The geometry of `attrs` over input shape `x` with a kernel of
    /// `kernel` (height, width), or why it is not a 2-D convolution. A 1-D
    /// convolution (`[n, c, l]`, one kernel length) is the 2-D one of
    /// height 1.
    pub fn new(attrs: &ConvAttrs, x: &[usize], kernel: &[usize]) -> Result<Geometry, String> {
        if let ([n, c, l], [k]) = (x, kernel) {
            let lift = |v: &[usize], one: usize| -> Vec<usize> {
                let half = v.len() / 2;
                match v.len() {
                    1 => vec![one, v[0]],
                    2 => vec![0, v[0], 0, v[half]],
                    _ => v.to_vec(),
                }
            };
            let attrs = ConvAttrs {
                strides: lift(&attrs.strides, 1),
                pads: lift(&attrs.pads, 0),
                dilations: lift(&attrs.dilations, 1),
                group: attrs.group,
            };
            return Geometry::new(&attrs, &[*n, *c, 1, *l], &[1, *k]);
        }
        let two = |v: &[usize], what: &str| -> Result<[usize; 2], String> {
            match *v {
                [a, b] => Ok([a, b]),
                _ => Err(format!("{}-D {what}", v.len())),
            }
        };
        let x: [usize; 4] = x
            .try_into()
            .map_err(|_| format!("a rank-{} input (not NCHW)", x.len()))?;
        let pads: [usize; 4] = attrs
            .pads
            .as_slice()
            .try_into()
            .map_err(|_| format!("{} pads", attrs.pads.len()))?;
        let g = Geometry {
            x,
            kernel: two(kernel, "kernel")?,
            strides: two(&attrs.strides, "strides")?,
            dilations: two(&attrs.dilations, "dilations")?,
            pads,
        };
        if g.strides.contains(&0) || g.dilations.contains(&0) || g.kernel.contains(&0) {
            return Err("a zero kernel, stride or dilation".into());
        }
        if g.out().contains(&0) {
            return Err("the window is larger than the padded input".into());
        }
        Ok(g)
    }

    /// Output height and width.
    pub fn out(&self) -> [usize; 2] {
        [0, 1].map(|a| {
            let span = self.dilations[a] * (self.kernel[a] - 1) + 1;
            let len = self.x[2 + a] + self.pads[a] + self.pads[2 + a];
            len.checked_sub(span).map_or(0, |d| d / self.strides[a] + 1)
        })
    }

    /// Whether the windows tile the image without overlap or padding
    /// (kernel = stride, no dilation): the im2col matrix is then a
    /// permutation of the input (`m4c_npu::layout::Layout::Patches`).
    pub fn is_patchify(&self) -> bool {
        let [kh, kw] = self.kernel;
        self.strides == self.kernel
            && self.pads == [0; 4]
            && self.dilations == [1, 1]
            && kh > 0
            && kw > 0
            && self.x[2].is_multiple_of(kh)
            && self.x[3].is_multiple_of(kw)
    }

    /// Whether the window is one pixel (1×1, stride 1, no padding): its
    /// im2col matrix is the NHWC input itself.
    pub fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.strides == [1, 1] && self.pads == [0; 4]
    }

    /// The shape of the NHWC direct kernels (`kernels::conv`,
    /// `kernels::depthwise`) when they compute this window: one image,
    /// equal strides, the same padding on every side, no dilation.
    pub fn direct(&self, c_out: usize) -> Option<ConvShape> {
        let [n, c, h, w] = self.x;
        let uniform = self.pads.iter().all(|&p| p == self.pads[0]);
        let plain = n == 1 && uniform && self.strides[0] == self.strides[1];
        (plain && self.dilations == [1, 1]).then_some(ConvShape {
            h,
            w,
            c_in: c,
            c_out,
            kh: self.kernel[0],
            kw: self.kernel[1],
            stride: self.strides[0],
            pad: self.pads[0],
        })
    }

    /// Bytes of the zero source [`Geometry::im2col`]'s padding pieces read.
    pub fn zeros(&self) -> usize {
        self.kernel[1]
    }

    /// The im2col rows: one per output pixel (`n, oy, ox`), pieces per
    /// `(channel, kernel row)` in the order of the ONNX weights
    /// `[m, c, kh, kw]`; a window position in the padding reads source 1,
    /// [`Geometry::zeros`] zero bytes.
    pub fn im2col(&self) -> Vec<Vec<Piece>> {
        let [n, c, h, w] = self.x;
        let ([oh, ow], [kh, kw]) = (self.out(), self.kernel);
        let ([sh, sw], [dh, dw]) = (self.strides, self.dilations);
        let (top, left) = (self.pads[0], self.pads[1]);
        let zeros = |len| Piece {
            source: 1,
            start: 0,
            stride: 1,
            len,
        };
        let mut rows = Vec::with_capacity(n * oh * ow);
        for b in 0..n {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut row = vec![];
                    for ch in 0..c {
                        for ky in 0..kh {
                            let y = (oy * sh + ky * dh).checked_sub(top).filter(|&y| y < h);
                            let Some(y) = y else {
                                row.push(zeros(kw));
                                continue;
                            };
                            let x = |kx: usize| (ox * sw + kx * dw).checked_sub(left);
                            let inside = |kx: &usize| x(*kx).is_some_and(|x| x < w);
                            let lo = (0..kw).find(inside).unwrap_or(kw);
                            let hi = (lo..kw).take_while(inside).last().map_or(lo, |k| k + 1);
                            if lo > 0 {
                                row.push(zeros(lo));
                            }
                            if let Some(x0) = x(lo).filter(|_| hi > lo) {
                                row.push(Piece {
                                    source: 0,
                                    start: ((b * c + ch) * h + y) * w + x0,
                                    stride: if hi - lo == 1 { 1 } else { dw },
                                    len: hi - lo,
                                });
                            }
                            if hi < kw {
                                row.push(zeros(kw - hi));
                            }
                        }
                    }
                    rows.push(row);
                }
            }
        }
        rows
    }
}

impl Geometry {
    /// The window rows over the NHWC image `[n, h, w, c]` of this
    /// geometry's input: one row per output pixel (`n, oy, ox`), the
    /// channels of each tap in turn (taps row-major); a tap in the
    /// padding reads source 1, [`Geometry::nhwc_pad`] bytes. Taps that are
    /// adjacent in the image (and in the padding source) are one piece.
    pub fn nhwc_windows(&self) -> Vec<Vec<Piece>> {
        let [n, c, h, w] = self.x;
        let ([oh, ow], [kh, kw]) = (self.out(), self.kernel);
        let ([sh, sw], [dh, dw]) = (self.strides, self.dilations);
        let (top, left) = (self.pads[0], self.pads[1]);
        let mut rows = Vec::with_capacity(n * oh * ow);
        for b in 0..n {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut row: Vec<Piece> = vec![];
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let y = (oy * sh + ky * dh).checked_sub(top).filter(|&y| y < h);
                            let x = (ox * sw + kx * dw).checked_sub(left).filter(|&x| x < w);
                            let (source, start) = match (y, x) {
                                (Some(y), Some(x)) => (0, ((b * h + y) * w + x) * c),
                                _ => (1, kx * c),
                            };
                            match row.last_mut() {
                                Some(p) if p.source == source && p.start + p.len == start => {
                                    p.len += c
                                }
                                _ => row.push(Piece {
                                    source,
                                    start,
                                    stride: 1,
                                    len: c,
                                }),
                            }
                        }
                    }
                    rows.push(row);
                }
            }
        }
        rows
    }

    /// Bytes of the padding source [`Geometry::nhwc_windows`] reads.
    pub fn nhwc_pad(&self) -> usize {
        self.kernel[1] * self.x[1]
    }
}

/// The rows of NHWC `[n, h, w, c]` from NCHW `[n, c, h, w]`: one row per
/// pixel, one byte per channel (a run of pixels loads each channel with
/// one 2-D descriptor).
pub fn to_nhwc([n, c, h, w]: [usize; 4]) -> Vec<Vec<Piece>> {
    let plane = h * w;
    (0..n * plane)
        .map(|p| {
            let (b, at) = (p / plane, p % plane);
            (0..c)
                .map(|ch| Piece {
                    source: 0,
                    start: (b * c + ch) * plane + at,
                    stride: 1,
                    len: 1,
                })
                .collect()
        })
        .collect()
}

/// The rows of NCHW `[n, m, oh, ow]` from a `[n*oh*ow, m]` result: one
/// row per channel plane (`oh*ow` bytes, `m` apart: one descriptor); with
/// `per_row`, one row per output row (`ow` bytes) for planes that do not
/// fit the SRAM.
pub fn to_nchw(n: usize, m: usize, (oh, ow): (usize, usize), per_row: bool) -> Vec<Vec<Piece>> {
    let (rows, len) = if per_row { (oh, ow) } else { (1, oh * ow) };
    (0..n * m * rows)
        .map(|r| {
            let (plane, i) = (r / rows, r % rows);
            let (b, ch) = (plane / m, plane % m);
            vec![Piece {
                source: 0,
                start: ((b * oh * ow) + i * len) * m + ch,
                stride: m,
                len,
            }]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(strides: [usize; 2], pads: [usize; 4]) -> ConvAttrs {
        ConvAttrs {
            strides: strides.to_vec(),
            pads: pads.to_vec(),
            dilations: vec![1, 1],
            group: 1,
        }
    }

    /// The rows read what a direct NCHW convolution loop reads, zeros
    /// where the window lies in the padding.
    #[test]
    fn im2col_rows_read_the_window() {
        let g = Geometry::new(&attrs([2, 1], [1, 1, 0, 2]), &[2, 2, 5, 4], &[3, 3]).unwrap();
        let [oh, ow] = g.out();
        assert_eq!([oh, ow], [2, 5]);
        let x: Vec<i32> = (0..2 * 2 * 5 * 4).map(|i| i + 1).collect();
        let rows = g.im2col();
        assert_eq!(rows.len(), 2 * oh * ow);
        for (r, pieces) in rows.iter().enumerate() {
            let got: Vec<i32> = pieces
                .iter()
                .flat_map(|p| (0..p.len).map(move |i| (p.source, p.start + i * p.stride)))
                .map(|(s, i)| if s == 1 { 0 } else { x[i] })
                .collect();
            let (b, oy, ox) = (r / (oh * ow), r / ow % oh, r % ow);
            let mut want = vec![];
            for ch in 0..2 {
                for ky in 0..3 {
                    for kx in 0..3 {
                        let (y, xx) = ((oy * 2 + ky) as isize - 1, (ox + kx) as isize - 1);
                        let inside = (0..5).contains(&y) && (0..4).contains(&xx);
                        let at = (((b * 2 + ch) * 5) as isize + y) * 4 + xx;
                        want.push(if inside { x[at as usize] } else { 0 });
                    }
                }
            }
            assert_eq!(got, want, "row {r}");
            assert!(pieces.iter().all(|p| p.source == 0 || p.len <= g.zeros()));
        }
        assert!(g.direct(3).is_none(), "two images, uneven pads");
    }

    /// The NHWC windows read what a pooling loop reads, the padding from
    /// source 1.
    #[test]
    fn nhwc_windows_read_the_window() {
        let g = Geometry::new(&attrs([2, 2], [1; 4]), &[1, 3, 5, 5], &[3, 3]).unwrap();
        let [oh, ow] = g.out();
        let rows = g.nhwc_windows();
        for (r, pieces) in rows.iter().enumerate() {
            let got: Vec<Option<usize>> = pieces
                .iter()
                .flat_map(|p| (0..p.len).map(move |i| (p.source == 0).then_some(p.start + i)))
                .collect();
            let (oy, ox) = (r / ow, r % ow);
            let mut want = vec![];
            for ky in 0..3 {
                for kx in 0..3 {
                    for ch in 0..3 {
                        let (y, x) = ((oy * 2 + ky) as isize - 1, (ox * 2 + kx) as isize - 1);
                        let inside = (0..5).contains(&y) && (0..5).contains(&x);
                        want.push(inside.then(|| ((y * 5 + x) * 3) as usize + ch));
                    }
                }
            }
            assert_eq!(got, want, "row {r}");
            assert!(pieces
                .iter()
                .all(|p| p.source == 0 || p.start + p.len <= g.nhwc_pad()));
        }
        assert_eq!(rows.len(), oh * ow);
        assert_eq!(
            rows[4].len(),
            3,
            "an interior window: one piece per kernel row"
        );
    }

    #[test]
    fn layouts_and_refusals() {
        let back = to_nchw(1, 3, (2, 2), false);
        assert_eq!(
            back[1],
            vec![Piece {
                source: 0,
                start: 1,
                stride: 3,
                len: 4
            }]
        );
        assert_eq!(to_nchw(1, 3, (2, 2), true)[3][0].start, 2 * 3 + 1);
        assert_eq!(to_nhwc([1, 2, 2, 2])[1][1].start, 5);
        let g = Geometry::new(&attrs([2, 2], [1; 4]), &[1, 3, 8, 8], &[3, 3]).unwrap();
        assert_eq!(g.direct(4).map(|s| (s.out_h(), s.out_w())), Some((4, 4)));
        assert!(Geometry::new(&attrs([1, 1], [0; 4]), &[1, 3, 2, 2], &[3, 3]).is_err());
        assert!(Geometry::new(&attrs([1, 1], [0; 4]), &[1, 3, 8, 8, 8], &[3, 3, 3]).is_err());
        // 1-D: stride 2, pads (1, 2) over 9 samples -> 5 outputs.
        let one = ConvAttrs {
            strides: vec![2],
            pads: vec![1, 2],
            dilations: vec![1],
            group: 1,
        };
        let g = Geometry::new(&one, &[1, 3, 9], &[3]).unwrap();
        assert_eq!((g.x, g.pads, g.out()), ([1, 3, 1, 9], [0, 1, 0, 2], [1, 5]));
    }
}
