//! Reductions: ReduceSum, ReduceMax and ArgMax.

use m4c_ir::DType;
use ndarray::{ArrayD, ArrayViewD, Axis, Dimension, IxDyn};

use crate::elem::{Elem, IntElem};
use crate::error::{OpsError, Result};
use crate::value::{map_array, round_to, Value};

/// Checks `axes` against `rank` and returns them sorted, deduplicated.
fn check_axes(op: &'static str, axes: &[usize], rank: usize) -> Result<Vec<usize>> {
    if let Some(a) = axes.iter().find(|&&a| a >= rank) {
        return Err(OpsError::invalid(
            op,
            format!("axis {a} out of range for rank {rank}"),
        ));
    }
    let mut sorted = axes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    Ok(sorted)
}

/// Reduces `axes` (highest first) with `lane_fn`, then restores them as
/// size-1 axes when `keep_dims`.
fn reduce_with<T, U>(
    op: &'static str,
    a: &ArrayD<T>,
    axes: &[usize],
    keep_dims: bool,
    lane_fn: impl Fn(ArrayViewD<T>) -> U,
) -> Result<ArrayD<U>>
where
    T: Clone,
{
    let axes = check_axes(op, axes, a.ndim())?;
    // Reduce all requested axes in one pass per output element: move them last.
    let kept: Vec<usize> = (0..a.ndim()).filter(|i| !axes.contains(i)).collect();
    let perm: Vec<usize> = kept.iter().chain(&axes).copied().collect();
    let moved = a.view().permuted_axes(IxDyn(&perm));
    let kept_shape: Vec<usize> = kept.iter().map(|&i| a.shape()[i]).collect();
    let reduced_shape: Vec<usize> = axes.iter().map(|&i| a.shape()[i]).collect();
    let mut data = Vec::with_capacity(kept_shape.iter().product());
    for idx in ndarray::indices(IxDyn(&kept_shape)) {
        let mut v = moved.view();
        for &i in idx.slice() {
            v = v.index_axis_move(Axis(0), i);
        }
        debug_assert_eq!(v.shape(), &reduced_shape[..]);
        data.push(lane_fn(v));
    }
    let shape: Vec<usize> = if keep_dims {
        (0..a.ndim())
            .map(|i| if axes.contains(&i) { 1 } else { a.shape()[i] })
            .collect()
    } else {
        kept_shape
    };
    ArrayD::from_shape_vec(IxDyn(&shape), data).map_err(|e| OpsError::invalid(op, e.to_string()))
}

/// Sum over `axes`: floats accumulate in f64 and round once; integers wrap in
/// their own type. An empty axis sums to zero.
pub(crate) fn reduce_sum(x: &Value, axes: &[usize], keep_dims: bool) -> Result<Value> {
    const OP: &str = "ReduceSum";
    fn int_sum<T: IntElem>(a: &ArrayD<T>, axes: &[usize], keep: bool) -> Result<Value> {
        let s = reduce_with(OP, a, axes, keep, |v| {
            v.iter().fold(T::zero(), |acc, &x| acc.wrapping_add(&x))
        })?;
        Ok(T::wrap(s))
    }
    match x {
        Value::I8(a) => int_sum(a, axes, keep_dims),
        Value::I32(a) => int_sum(a, axes, keep_dims),
        Value::I64(a) => int_sum(a, axes, keep_dims),
        Value::Bool(_) => Err(OpsError::dtype(OP, DType::Bool)),
        _ => {
            let a = x.float32(OP)?;
            let s = reduce_with(OP, &a, axes, keep_dims, |v| {
                v.iter().map(|&x| f64::from(x)).sum::<f64>() as f32
            })?;
            Ok(round_to(x.dtype(), s))
        }
    }
}

/// Maximum over `axes` (NaN propagates, as numpy's `maximum.reduce`);
/// reducing an empty axis is an error.
pub(crate) fn reduce_max(x: &Value, axes: &[usize], keep_dims: bool) -> Result<Value> {
    const OP: &str = "ReduceMax";
    fn max<T: Elem>(a: &ArrayD<T>, axes: &[usize], keep: bool) -> Result<ArrayD<T>> {
        if let Some(&ax) = axes.iter().find(|&&ax| a.shape().get(ax) == Some(&0)) {
            return Err(OpsError::invalid(
                OP,
                format!("axis {ax} is empty: the maximum is undefined"),
            ));
        }
        #[allow(clippy::eq_op)] // x != x is the generic NaN test
        let is_nan = |x: T| x != x;
        reduce_with(OP, a, axes, keep, |v| {
            let mut it = v.iter().copied();
            let first = it.next().unwrap_or_default();
            it.fold(first, |acc, x| {
                if is_nan(acc) || (!is_nan(x) && x <= acc) {
                    acc
                } else {
                    x
                }
            })
        })
    }
    Ok(map_array!(x, a => max(a, axes, keep_dims)))
}

/// Index (i64) of the maximum along `axis`; ties resolve to the first index,
/// or the last with `select_last`. NaN never compares greater.
pub(crate) fn arg_max(x: &Value, axis: usize, keep_dims: bool, select_last: bool) -> Result<Value> {
    const OP: &str = "ArgMax";
    fn arg<T: Elem>(a: &ArrayD<T>, axis: usize, keep: bool, last: bool) -> Result<Value> {
        if a.shape().get(axis) == Some(&0) {
            return Err(OpsError::invalid(OP, format!("axis {axis} is empty")));
        }
        let idx = reduce_with(OP, a, &[axis], keep, |v| {
            let mut best = 0usize;
            for (i, &x) in v.iter().enumerate() {
                if x > v[best] || (last && x == v[best]) {
                    best = i;
                }
            }
            best as i64
        })?;
        Ok(Value::I64(idx))
    }
    crate::elem::with_elem!(x.dtype(), T => arg::<T>(x.array::<T>(OP)?, axis, keep_dims, select_last), i4 => Err(OpsError::dtype(OP, DType::I4)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr2;

    fn f2(v: [[f32; 3]; 2]) -> Value {
        Value::F32(arr2(&v).into_dyn())
    }

    #[test]
    fn sums() {
        let x = f2([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]);
        assert_eq!(
            reduce_sum(&x, &[1], false).unwrap(),
            Value::F32(ndarray::arr1(&[6.0, 15.0]).into_dyn())
        );
        assert_eq!(
            reduce_sum(&x, &[0, 1], true).unwrap(),
            Value::F32(arr2(&[[21.0]]).into_dyn())
        );
        assert_eq!(reduce_sum(&x, &[], false).unwrap(), x);
        let i = Value::I8(ndarray::arr1(&[100i8, 100]).into_dyn());
        assert_eq!(
            reduce_sum(&i, &[0], false).unwrap(),
            Value::I8(ndarray::arr0(-56i8).into_dyn())
        );
        let e = Value::F32(ArrayD::zeros(IxDyn(&[2, 0])));
        assert_eq!(
            reduce_sum(&e, &[1], false).unwrap(),
            Value::F32(ndarray::arr1(&[0.0, 0.0]).into_dyn())
        );
        assert!(reduce_sum(&x, &[2], false)
            .unwrap_err()
            .to_string()
            .contains("axis 2 out of range"));
    }

    #[test]
    fn maxima() {
        let x = f2([[1.0, f32::NAN, 3.0], [4.0, 5.0, -6.0]]);
        let Value::F32(m) = reduce_max(&x, &[1], false).unwrap() else {
            panic!()
        };
        assert!(m[0].is_nan());
        assert_eq!(m[1], 5.0);
        let Value::F32(m) = reduce_max(&x, &[0], true).unwrap() else {
            panic!()
        };
        assert_eq!(m.shape(), &[1, 3]);
        assert_eq!((m[[0, 0]], m[[0, 2]]), (4.0, 3.0));
        let e = Value::F32(ArrayD::zeros(IxDyn(&[2, 0])));
        assert!(reduce_max(&e, &[1], false)
            .unwrap_err()
            .to_string()
            .contains("axis 1 is empty"));
    }

    #[test]
    fn arg_max_ties() {
        let x = f2([[1.0, 3.0, 3.0], [7.0, 7.0, 2.0]]);
        assert_eq!(
            arg_max(&x, 1, false, false).unwrap(),
            Value::I64(ndarray::arr1(&[1, 0]).into_dyn())
        );
        assert_eq!(
            arg_max(&x, 1, true, true).unwrap(),
            Value::I64(arr2(&[[2], [1]]).into_dyn())
        );
        assert_eq!(
            arg_max(&x, 0, false, false).unwrap(),
            Value::I64(ndarray::arr1(&[1, 1, 0]).into_dyn())
        );
    }
}
