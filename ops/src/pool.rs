//! MaxPool and AvgPool over the spatial axes of `[N, C, spatial..]`.

use m4c_ir::op::PoolAttrs;
use ndarray::{ArrayD, IxDyn, Zip};

use crate::elem::{Elem, Scalar};
use crate::error::{OpsError, Result};
use crate::value::{map_array, map_float, Value};
use crate::window::Window;

fn window(op: &'static str, shape: &[usize], p: &PoolAttrs) -> Result<Window> {
    if shape.len() < 3 {
        return Err(OpsError::invalid(
            op,
            format!("input rank {} < 3", shape.len()),
        ));
    }
    Window::new(
        op,
        &shape[2..],
        &p.kernel,
        &p.strides,
        &p.pads,
        &p.dilations,
    )
}

/// Maximum over each window; padding never wins (it is the type's lowest
/// value: -inf for floats). NaN inputs are skipped unless first, as in
/// onnxruntime.
pub(crate) fn max_pool(x: &Value, p: &PoolAttrs) -> Result<Value> {
    fn pool<T: Elem>(a: &ArrayD<T>, p: &PoolAttrs) -> Result<ArrayD<T>> {
        let win = window("MaxPool", a.shape(), p)?;
        let lowest = T::from_scalar(Scalar::Float(f64::NEG_INFINITY));
        let padded = win.pad("MaxPool", a.view(), lowest)?;
        let shape = win.out_shape("MaxPool", &a.shape()[..2], std::mem::size_of::<T>())?;
        let mut out = ArrayD::from_elem(IxDyn(&shape), lowest);
        for view in win.tap_views(&padded) {
            Zip::from(&mut out).and(&view).for_each(|o, &v| {
                if v > *o {
                    *o = v;
                }
            });
        }
        Ok(out)
    }
    if x.dtype() == m4c_ir::DType::Bool {
        return Err(OpsError::dtype("MaxPool", x.dtype()));
    }
    Ok(map_array!(x, a => pool(a, p)))
}

/// Mean over each window, in f32. With `count_include_pad` padded positions
/// count as zeros; without, the divisor is the number of real elements.
pub(crate) fn avg_pool(x: &Value, p: &PoolAttrs, count_include_pad: bool) -> Result<Value> {
    map_float("AvgPool", x, |a| {
        let win = window("AvgPool", a.shape(), p)?;
        let padded = win.pad("AvgPool", a.view(), 0.0f32)?;
        let shape = win.out_shape("AvgPool", &a.shape()[..2], 4)?;
        let mut sum = ArrayD::<f32>::zeros(IxDyn(&shape));
        for view in win.tap_views(&padded) {
            sum += &view;
        }
        if count_include_pad {
            return Ok(sum / win.taps() as f32);
        }
        // How many real (unpadded) elements each window covers.
        let ones = ArrayD::<f32>::ones(IxDyn(&a.shape()[2..]));
        let mask = win.pad("AvgPool", ones.view(), 0.0)?;
        let mut count = ArrayD::<f32>::zeros(IxDyn(&win.out));
        for view in win.tap_views(&mask) {
            count += &view;
        }
        Ok(sum / &count)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(shape: &[usize], v: Vec<f32>) -> Value {
        Value::F32(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
    }
    fn attrs(kernel: usize, stride: usize, pads: [usize; 2]) -> PoolAttrs {
        PoolAttrs {
            kernel: vec![kernel],
            strides: vec![stride],
            pads: pads.to_vec(),
            dilations: vec![1],
        }
    }

    #[test]
    fn max_pool_pads_with_minus_infinity() {
        let x = f(&[1, 1, 3], vec![-5.0, -1.0, -3.0]);
        let y = max_pool(&x, &attrs(2, 1, [1, 1])).unwrap();
        assert_eq!(y, f(&[1, 1, 4], vec![-5.0, -1.0, -1.0, -3.0]));
        let xi = Value::I32(ArrayD::from_shape_vec(IxDyn(&[1, 1, 2]), vec![-7, -9]).unwrap());
        let yi = max_pool(&xi, &attrs(2, 1, [1, 0])).unwrap();
        assert_eq!(
            yi,
            Value::I32(ArrayD::from_shape_vec(IxDyn(&[1, 1, 2]), vec![-7, -7]).unwrap())
        );
    }

    #[test]
    fn avg_pool_counts_pads_or_not() {
        let x = f(&[1, 1, 3], vec![2.0, 4.0, 6.0]);
        let a = attrs(2, 2, [1, 1]);
        // windows: [pad, 2], [4, 6]
        assert_eq!(
            avg_pool(&x, &a, true).unwrap(),
            f(&[1, 1, 2], vec![1.0, 5.0])
        );
        assert_eq!(
            avg_pool(&x, &a, false).unwrap(),
            f(&[1, 1, 2], vec![2.0, 5.0])
        );
    }

    #[test]
    fn two_d_with_stride() {
        let x = f(&[1, 1, 2, 4], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        let p = PoolAttrs {
            kernel: vec![2, 2],
            strides: vec![2, 2],
            pads: vec![0; 4],
            dilations: vec![1, 1],
        };
        assert_eq!(max_pool(&x, &p).unwrap(), f(&[1, 1, 1, 2], vec![6.0, 8.0]));
        assert_eq!(
            avg_pool(&x, &p, false).unwrap(),
            f(&[1, 1, 1, 2], vec![3.5, 5.5])
        );
    }

    #[test]
    fn window_larger_than_input_is_an_error() {
        let x = f(&[1, 1, 2], vec![0.0; 2]);
        assert!(max_pool(&x, &attrs(3, 1, [0, 0]))
            .unwrap_err()
            .to_string()
            .contains("does not fit"));
    }
}
