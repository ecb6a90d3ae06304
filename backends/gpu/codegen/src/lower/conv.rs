//! Ungrouped convolution as an implicit GEMM: for each image `n`,
//! `Y[n] = W · im2col(X[n])`, `W` viewed as `Cout × (Cin·k…)` and the
//! im2col matrix never stored — the GEMM's `B` tile loads compute its
//! addresses on the fly (`Gemm::b_view`), so the convolution runs on the
//! shared tiled GEMM of both emitters. Grouped and depthwise convolutions
//! keep the direct per-element kernel.

use m4c_ir::op::ConvAttrs;
use m4c_ir::ValueId;

use super::{linear, lit, window, Lowering};
use crate::kernel::{Bin, Body, Expr, Gemm, Operand};

impl Lowering<'_> {
    /// The implicit GEMM of an ungrouped Conv (`inputs`: X, W, optional
    /// bias) writing `c` of shape `out` (`[N, Cout, spatial..]`): one
    /// batch entry per image, `m = Cout`, `n` the output's spatial
    /// positions, `k = Cin · kernel`; row `m`, column `j` of batch `z` is
    /// exactly NCHW element `(z, m, j)`, and the bias is added per row.
    pub(super) fn conv_gemm(
        &mut self,
        inputs: &[ValueId],
        a: &ConvAttrs,
        c: Operand,
        out: &[usize],
    ) -> Result<Body, String> {
        let (x, w) = (inputs[0], inputs[1]);
        let (xs, ws) = (self.shape(x)?, self.shape(w)?);
        let k_dims = &ws[1..];
        let k: usize = k_dims.iter().product();
        let n: usize = out[2..].iter().product();
        let mut taps = split(Expr::Coord(1), k_dims);
        let channel = taps.remove(0);
        let (valid, coords) = window(
            &xs,
            (&a.strides, &a.pads, &a.dilations),
            split(Expr::Coord(2), &out[2..]),
            taps,
            (Expr::Coord(0), channel),
        );
        let x_op = self.operand(x)?;
        let view = Expr::select(valid, Expr::load(x_op, linear(coords, &xs)), Expr::F(0.0));
        let bias = match inputs.get(2) {
            Some(&b) => Some(self.operand(b)?),
            None => None,
        };
        Ok(Body::Gemm(Gemm {
            a: self.operand(w)?,
            b: x_op,
            c,
            m: ws[0],
            n,
            k,
            a_strides: [k, 1],
            b_strides: [0, 0],
            batch: vec![out[0]],
            a_batch: vec![0],
            b_batch: vec![0],
            b_view: Some(view),
            bias,
        }))
    }
}

/// The row-major coordinates in `dims` of the flat index `e` (an i32
/// expression below their product; past it, the first coordinate runs
/// over).
fn split(e: Expr, dims: &[usize]) -> Vec<Expr> {
    let mut stride: usize = dims.iter().product();
    dims.iter()
        .enumerate()
        .map(|(d, &extent)| {
            stride /= extent.max(1);
            let q = match stride {
                1 => e.clone(),
                s => Expr::bin(Bin::Div, e.clone(), lit(s)),
            };
            if d == 0 {
                q
            } else {
                Expr::bin(Bin::Rem, q, lit(extent.max(1)))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_divides_a_flat_index_row_major() {
        let e = Expr::Coord(1);
        let got = split(e.clone(), &[3, 2, 5]);
        let div = |s: i32| Expr::bin(Bin::Div, e.clone(), Expr::I(s));
        assert_eq!(
            got,
            vec![
                div(10),
                Expr::bin(Bin::Rem, div(5), Expr::I(2)),
                Expr::bin(Bin::Rem, e.clone(), Expr::I(5)),
            ]
        );
    }
}
