//! Resize: nearest and N-linear interpolation to a static shape, following
//! the ONNX reference (`onnx/reference/ops/op_resize.py`).

use m4c_ir::op::{CoordMode, ResizeMode};
use ndarray::{ArrayD, Axis, IxDyn};

use crate::error::{OpsError, Result};
use crate::value::{map_array, map_float, Value};

const OP: &str = "Resize";

/// Resizes every axis whose size or scale changes; axes are independent
/// (nearest and N-linear are both separable), so they are done one by one.
pub(crate) fn resize(
    x: &Value,
    mode: ResizeMode,
    coord: CoordMode,
    scales: &[f32],
    sizes: &[usize],
) -> Result<Value> {
    let shape = x.shape().to_vec();
    if scales.len() != shape.len() || sizes.len() != shape.len() {
        return Err(OpsError::invalid(
            OP,
            format!("needs a scale and a size per axis of {shape:?}"),
        ));
    }
    let axes: Vec<usize> = (0..shape.len())
        .filter(|&d| sizes[d] != shape[d] || scales[d] != 1.0)
        .collect();
    for &d in &axes {
        if !(scales[d] > 0.0 && scales[d].is_finite()) || (shape[d] == 0 && sizes[d] > 0) {
            return Err(OpsError::invalid(
                OP,
                format!(
                    "cannot resize axis {d} of {} with scale {} to {}",
                    shape[d], scales[d], sizes[d]
                ),
            ));
        }
    }
    crate::budget::check(OP, sizes, x.dtype().storage_bytes(1).max(1))?;
    let sources = |d: usize| -> Vec<f64> {
        (0..sizes[d])
            .map(|o| coord.source(o, scales[d], shape[d], sizes[d]))
            .collect()
    };
    match mode {
        ResizeMode::Nearest(rounding) => {
            let maps: Vec<(usize, Vec<usize>)> = axes
                .iter()
                .map(|&d| {
                    (
                        d,
                        sources(d)
                            .into_iter()
                            .map(|s| rounding.index(s, shape[d]))
                            .collect(),
                    )
                })
                .collect();
            Ok(
                map_array!(x, a => Ok::<_, OpsError>(maps.iter().fold(a.clone(), |acc, (d, m)| acc.select(Axis(*d), m)))),
            )
        }
        ResizeMode::Linear => map_float(OP, x, |a| {
            Ok(axes
                .iter()
                .fold(a.clone(), |acc, &d| linear_axis(&acc, d, sources(d))))
        }),
    }
}

/// 1-D linear interpolation along axis `d` at source coordinates `xs`, each
/// clamped into `[0, len - 1]`.
fn linear_axis(a: &ArrayD<f32>, d: usize, xs: Vec<f64>) -> ArrayD<f32> {
    let last = a.shape()[d] as f64 - 1.0;
    let mut lo = Vec::with_capacity(xs.len());
    let mut hi = Vec::with_capacity(xs.len());
    let mut w = Vec::with_capacity(xs.len());
    for x in xs {
        let x = x.clamp(0.0, last.max(0.0));
        let i0 = x.floor();
        lo.push(i0 as usize);
        hi.push((i0 + 1.0).min(last.max(0.0)) as usize);
        w.push((x - i0) as f32);
    }
    let mut wshape = vec![1; a.ndim()];
    wshape[d] = w.len();
    #[allow(clippy::expect_used, reason = "wshape holds w.len() elements")]
    let w = ArrayD::from_shape_vec(IxDyn(&wshape), w).expect("weights match their shape");
    let (a0, a1) = (a.select(Axis(d), &lo), a.select(Axis(d), &hi));
    &a0 + &((&a1 - &a0) * &w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use m4c_ir::op::NearestRounding;

    fn f(shape: &[usize], v: Vec<f32>) -> Value {
        Value::F32(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
    }
    fn lin(x: &Value, coord: CoordMode, scale: f32, size: usize) -> Value {
        resize(x, ResizeMode::Linear, coord, &[scale], &[size]).unwrap()
    }

    #[test]
    fn linear_upsample_half_pixel() {
        // src = (o + 0.5)/2 - 0.5 = -0.25, 0.25, 0.75, 1.25 → clamped 0, .25, .75, 1
        let x = f(&[2], vec![1.0, 3.0]);
        assert_eq!(
            lin(&x, CoordMode::HalfPixel, 2.0, 4),
            f(&[4], vec![1.0, 1.5, 2.5, 3.0])
        );
        assert_eq!(
            lin(&x, CoordMode::AlignCorners, 2.0, 4),
            f(&[4], vec![1.0, 1.0 + 2.0 / 3.0, 1.0 + 4.0 / 3.0, 3.0])
        );
        assert_eq!(
            lin(&x, CoordMode::Asymmetric, 2.0, 4),
            f(&[4], vec![1.0, 2.0, 3.0, 3.0])
        );
        assert_eq!(
            lin(&x, CoordMode::PytorchHalfPixel, 0.5, 1),
            f(&[1], vec![1.0])
        );
    }

    #[test]
    fn nearest_roundings() {
        let x = f(&[1, 4], vec![1.0, 2.0, 3.0, 4.0]);
        let near = |r, size| {
            resize(
                &x,
                ResizeMode::Nearest(r),
                CoordMode::HalfPixel,
                &[1.0, size as f32 / 4.0],
                &[1, size],
            )
            .unwrap()
        };
        // Downsample ×0.5: src = (o+0.5)*2-0.5 = 0.5, 2.5.
        assert_eq!(
            near(NearestRounding::RoundPreferFloor, 2),
            f(&[1, 2], vec![1.0, 3.0])
        );
        assert_eq!(
            near(NearestRounding::RoundPreferCeil, 2),
            f(&[1, 2], vec![2.0, 4.0])
        );
        assert_eq!(near(NearestRounding::Floor, 2), f(&[1, 2], vec![1.0, 3.0]));
        assert_eq!(near(NearestRounding::Ceil, 2), f(&[1, 2], vec![2.0, 4.0]));
        // Upsample ×2 asymmetric floor repeats each element.
        let up = resize(
            &x,
            ResizeMode::Nearest(NearestRounding::Floor),
            CoordMode::Asymmetric,
            &[1.0, 2.0],
            &[1, 8],
        )
        .unwrap();
        assert_eq!(up, f(&[1, 8], vec![1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0]));
    }

    #[test]
    fn bilinear_is_separable() {
        let x = f(&[2, 2], vec![0.0, 1.0, 2.0, 3.0]);
        let y = resize(
            &x,
            ResizeMode::Linear,
            CoordMode::AlignCorners,
            &[1.5, 1.5],
            &[3, 3],
        )
        .unwrap();
        assert_eq!(
            y,
            f(&[3, 3], vec![0.0, 0.5, 1.0, 1.0, 1.5, 2.0, 2.0, 2.5, 3.0])
        );
    }

    #[test]
    fn bad_scale_is_an_error() {
        let x = f(&[2], vec![1.0, 3.0]);
        assert!(resize(&x, ResizeMode::Linear, CoordMode::HalfPixel, &[0.0], &[4]).is_err());
        assert!(resize(&x, ResizeMode::Linear, CoordMode::HalfPixel, &[1.0], &[]).is_err());
    }
}
