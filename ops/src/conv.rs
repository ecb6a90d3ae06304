//! N-dimensional grouped convolution (im2col + matrix product).

use m4c_ir::op::ConvAttrs;
use m4c_ir::DType;
use ndarray::{s, Array2, ArrayD, ArrayView2, Axis, Ix2, IxDyn};

use crate::elem::same_dtype;
use crate::error::{OpsError, Result};
use crate::value::{round_to, Value};
use crate::window::Window;

const OP: &str = "Conv";

/// ONNX Conv: `x [N, C, spatial..]`, `w [M, C/group, kernel..]`, optional
/// `bias [M]`; floats computed in f32, i32 (the accumulators of ConvInteger
/// and QLinearConv) with wrapping arithmetic.
pub(crate) fn conv(x: &Value, w: &Value, bias: Option<&Value>, c: &ConvAttrs) -> Result<Value> {
    let mut all = vec![x, w];
    all.extend(bias);
    let dtype = same_dtype(OP, &all)?;
    if dtype == DType::I32 {
        let arr = |v: &Value| v.array::<i32>(OP).cloned();
        let bias = bias.map(arr).transpose()?;
        let out = conv_typed(
            &arr(x)?,
            &arr(w)?,
            bias.as_ref(),
            c,
            |a, b| crate::matmul::wrapping_product(a, b),
            i32::wrapping_add,
        )?;
        return Ok(Value::I32(out));
    }
    let (x, w) = (x.float32(OP)?, w.float32(OP)?);
    let bias = bias.map(|b| b.float32(OP)).transpose()?;
    let out = conv_typed(&x, &w, bias.as_deref(), c, |a, b| a.dot(&b), |a, b| a + b)?;
    Ok(round_to(dtype, out))
}

/// The convolution on one element type, with `product` the 2-D matrix
/// product and `add` the addition (of the bias) of that type.
fn conv_typed<T>(
    x: &ArrayD<T>,
    w: &ArrayD<T>,
    bias: Option<&ArrayD<T>>,
    c: &ConvAttrs,
    product: impl Fn(ArrayView2<T>, ArrayView2<T>) -> Array2<T>,
    add: impl Fn(T, T) -> T,
) -> Result<ArrayD<T>>
where
    T: Copy + num_traits::Zero,
{
    let (xs, ws) = (x.shape(), w.shape());
    if xs.len() < 3 || ws.len() != xs.len() {
        return Err(OpsError::invalid(
            OP,
            format!("input {xs:?} and weight {ws:?} need equal rank >= 3"),
        ));
    }
    let (n, m, g) = (xs[0], ws[0], c.group);
    if g == 0 || xs[1] != ws[1] * g || m % g != 0 {
        return Err(OpsError::invalid(
            OP,
            format!("input {xs:?} and weight {ws:?} do not fit group {g}"),
        ));
    }
    if let Some(b) = &bias {
        if b.shape() != [m] {
            return Err(OpsError::invalid(
                OP,
                format!("bias must be [{m}], got {:?}", b.shape()),
            ));
        }
    }
    let win = Window::new(OP, &xs[2..], &ws[2..], &c.strides, &c.pads, &c.dilations)?;
    let (cg, mg, taps) = (ws[1], m / g, win.taps());
    let out_shape = win.out_shape(OP, &[n, m], 4)?;
    let positions: usize = win.out.iter().product();
    let padded = win.pad(OP, x.view(), T::zero())?;
    let w2 = w
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((m, cg * taps))
        .map_err(|e| OpsError::invalid(OP, e.to_string()))?;
    let mut out = ndarray::Array3::<T>::zeros((n, m, positions));
    for b in 0..n {
        for grp in 0..g {
            let xg = padded.index_axis(Axis(0), b);
            let xg = xg
                .slice_axis(Axis(0), (grp * cg..(grp + 1) * cg).into())
                .to_owned();
            // cols[c, tap, positions..] = input value read by (c, tap) at each output position.
            let cols_shape = win.out_shape(OP, &[cg, taps], 4)?;
            let mut cols = ArrayD::<T>::zeros(IxDyn(&cols_shape));
            for (t, view) in win.tap_views(&xg).enumerate() {
                cols.index_axis_mut(Axis(1), t).assign(&view);
            }
            let cols: Array2<T> = cols
                .into_shape_with_order((cg * taps, positions))
                .map_err(|e| OpsError::invalid(OP, e.to_string()))?
                .into_dimensionality::<Ix2>()
                .map_err(|e| OpsError::invalid(OP, e.to_string()))?;
            let prod = product(w2.slice(s![grp * mg..(grp + 1) * mg, ..]), cols.view());
            out.slice_mut(s![b, grp * mg..(grp + 1) * mg, ..])
                .assign(&prod);
        }
    }
    if let Some(bias) = &bias {
        for (mut plane, &bv) in out.axis_iter_mut(Axis(1)).zip(bias.iter()) {
            plane.mapv_inplace(|v| add(v, bv));
        }
    }
    out.into_dyn()
        .into_shape_with_order(IxDyn(&out_shape))
        .map_err(|e| OpsError::invalid(OP, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f(shape: &[usize], v: Vec<f32>) -> Value {
        Value::F32(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
    }
    #[test]
    fn huge_pads_are_an_error_not_an_abort() {
        let x = f(&[1, 1, 3], vec![1.0, 2.0, 3.0]);
        let w = f(&[1, 1, 2], vec![1.0, 1.0]);
        let p = 1usize << 40;
        let e = conv(&x, &w, None, &attrs(vec![1], vec![p, p], vec![1], 1)).unwrap_err();
        assert!(e.to_string().contains("memory budget"), "{e}");
        let e = conv(
            &x,
            &w,
            None,
            &attrs(vec![1], vec![usize::MAX, 1], vec![1], 1),
        )
        .unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
    }

    fn attrs(
        strides: Vec<usize>,
        pads: Vec<usize>,
        dilations: Vec<usize>,
        group: usize,
    ) -> ConvAttrs {
        ConvAttrs {
            strides,
            pads,
            dilations,
            group,
        }
    }

    #[test]
    fn one_d_with_padding_and_bias() {
        let x = f(&[1, 1, 3], vec![1.0, 2.0, 3.0]);
        let w = f(&[1, 1, 2], vec![1.0, 10.0]);
        let b = f(&[1], vec![0.5]);
        let y = conv(&x, &w, Some(&b), &attrs(vec![1], vec![1, 0], vec![1], 1)).unwrap();
        // windows: [0,1], [1,2], [2,3]
        assert_eq!(y, f(&[1, 1, 3], vec![10.5, 21.5, 32.5]));
    }

    #[test]
    fn i32_matches_f32_and_wraps() {
        let v = |s: &[usize], d: Vec<i32>| Value::I32(ArrayD::from_shape_vec(IxDyn(s), d).unwrap());
        let a = attrs(vec![1], vec![1, 0], vec![1], 1);
        let y = conv(
            &v(&[1, 1, 3], vec![1, 2, 3]),
            &v(&[1, 1, 2], vec![1, 10]),
            Some(&v(&[1], vec![-5])),
            &a,
        )
        .unwrap();
        assert_eq!(y, v(&[1, 1, 3], vec![5, 16, 27]));
        let a = attrs(vec![1], vec![0, 0], vec![1], 1);
        let y = conv(
            &v(&[1, 1, 2], vec![i32::MAX, 1]),
            &v(&[1, 1, 2], vec![1, 1]),
            None,
            &a,
        )
        .unwrap();
        assert_eq!(y, v(&[1, 1, 1], vec![i32::MIN]));
        let i8v = Value::I8(ArrayD::from_shape_vec(IxDyn(&[1, 1, 1]), vec![1]).unwrap());
        assert!(conv(&i8v, &i8v, None, &a).is_err());
    }

    #[test]
    fn depthwise() {
        let x = f(&[1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let w = f(&[2, 1, 1], vec![2.0, -1.0]);
        let y = conv(&x, &w, None, &attrs(vec![1], vec![0, 0], vec![1], 2)).unwrap();
        assert_eq!(y, f(&[1, 2, 2], vec![2.0, 4.0, -3.0, -4.0]));
    }

    #[test]
    fn three_d_kernel_of_ones_sums_the_cube() {
        let x = f(&[1, 1, 2, 2, 3], (1..=12).map(|v| v as f32).collect());
        let w = f(&[1, 1, 2, 2, 2], vec![1.0; 8]);
        let y = conv(&x, &w, None, &attrs(vec![1; 3], vec![0; 6], vec![1; 3], 1)).unwrap();
        // windows along the last axis: {1,2,4,5,7,8,10,11} and {2,3,5,6,8,9,11,12}
        assert_eq!(y, f(&[1, 1, 1, 1, 2], vec![48.0, 56.0]));
    }

    #[test]
    fn f16_computes_in_f32_and_rounds_back() {
        let h = |v: Vec<f32>, s: &[usize]| {
            Value::F16(
                ArrayD::from_shape_vec(IxDyn(s), v.into_iter().map(half::f16::from_f32).collect())
                    .unwrap(),
            )
        };
        let y = conv(
            &h(vec![1.0, 2.0], &[1, 1, 2]),
            &h(vec![0.5, 0.25], &[1, 1, 2]),
            None,
            &attrs(vec![1], vec![0, 0], vec![1], 1),
        )
        .unwrap();
        assert_eq!(y, h(vec![1.0], &[1, 1, 1]));
    }

    #[test]
    fn bad_group_is_an_error() {
        let x = f(&[1, 3, 2], vec![0.0; 6]);
        let w = f(&[2, 2, 1], vec![0.0; 4]);
        let e = conv(&x, &w, None, &attrs(vec![1], vec![0, 0], vec![1], 1)).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("Conv: input [1, 3, 2] and weight [2, 2, 1] do not fit group 1"));
    }

    /// Direct 2-D convolution with explicit bounds checks instead of padding.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        x: &ArrayD<f32>,
        w: &ArrayD<f32>,
        stride: usize,
        pad: (usize, usize),
        dil: usize,
        group: usize,
        oh: usize,
        ow: usize,
    ) -> ArrayD<f32> {
        let (n, h, wd) = (x.shape()[0], x.shape()[2], x.shape()[3]);
        let (m, cg, kh, kw) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
        let mg = m / group;
        let mut out = ArrayD::zeros(IxDyn(&[n, m, oh, ow]));
        for b in 0..n {
            for o in 0..m {
                let grp = o / mg;
                for i in 0..oh {
                    for j in 0..ow {
                        let mut acc = 0.0f32;
                        for ci in 0..cg {
                            for p in 0..kh {
                                for q in 0..kw {
                                    let y = (i * stride + p * dil) as isize - pad.0 as isize;
                                    let z = (j * stride + q * dil) as isize - pad.1 as isize;
                                    if y >= 0 && z >= 0 && (y as usize) < h && (z as usize) < wd {
                                        acc += x[[b, grp * cg + ci, y as usize, z as usize]]
                                            * w[[o, ci, p, q]];
                                    }
                                }
                            }
                        }
                        out[[b, o, i, j]] = acc;
                    }
                }
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        /// Strided, dilated, padded, grouped 2-D convolution equals the
        /// direct loop.
        #[test]
        fn matches_direct_loop(n in 1usize..3, group in 1usize..3, cg in 1usize..3, mg in 1usize..3,
                               h in 1usize..7, wd in 1usize..7, k in 1usize..4, stride in 1usize..3,
                               dil in 1usize..3, p0 in 0usize..2, p1 in 0usize..2, seed in any::<u32>()) {
            let span = dil * (k - 1) + 1;
            prop_assume!(h + 2 * p0 >= span && wd + 2 * p1 >= span);
            let gen = |len: usize, s: u32| (0..len).map(|i| (((i as u32).wrapping_mul(2246822519) ^ s) % 9) as f32 - 4.0).collect::<Vec<_>>();
            let c = cg * group;
            let m = mg * group;
            let x = ArrayD::from_shape_vec(IxDyn(&[n, c, h, wd]), gen(n * c * h * wd, seed)).unwrap();
            let w = ArrayD::from_shape_vec(IxDyn(&[m, cg, k, k]), gen(m * cg * k * k, seed ^ 0xABCD)).unwrap();
            let oh = (h + 2 * p0 - span) / stride + 1;
            let ow = (wd + 2 * p1 - span) / stride + 1;
            let want = naive(&x, &w, stride, (p0, p1), dil, group, oh, ow);
            let a = attrs(vec![stride, stride], vec![p0, p1, p0, p1], vec![dil, dil], group);
            let got = conv(&Value::F32(x), &Value::F32(w), None, &a).unwrap();
            prop_assert_eq!(got, Value::F32(want));
        }
    }
}
