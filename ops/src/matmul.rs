//! Batched matrix product with ONNX (numpy `matmul`) semantics.

use m4c_ir::DType;
use ndarray::{Array2, ArrayD, ArrayView2, ArrayViewD, Axis, Dimension, Ix2, IxDyn};

use crate::broadcast::broadcast_shape;
use crate::elem::{same_dtype, IntElem};
use crate::error::{OpsError, Result};
use crate::value::{round_to, Value};

const OP: &str = "MatMul";

/// `a @ b` with rank-1 promotion, batch broadcasting and optional transposes
/// of the last two axes. Floats compute in f32; integers wrap in their type.
pub(crate) fn matmul(a: &Value, b: &Value, trans_a: bool, trans_b: bool) -> Result<Value> {
    match same_dtype(OP, &[a, b])? {
        d if d.is_float() => {
            let (x, y) = (a.float32(OP)?, b.float32(OP)?);
            let out = batched(x.view(), y.view(), trans_a, trans_b, |p, q| p.dot(&q))?;
            Ok(round_to(d, out))
        }
        DType::I8 => int_matmul::<i8>(a, b, trans_a, trans_b),
        DType::I32 => int_matmul::<i32>(a, b, trans_a, trans_b),
        DType::I64 => int_matmul::<i64>(a, b, trans_a, trans_b),
        d => Err(OpsError::dtype(OP, d)),
    }
}

fn int_matmul<T: IntElem>(a: &Value, b: &Value, ta: bool, tb: bool) -> Result<Value> {
    let out = batched(
        a.array::<T>(OP)?.view(),
        b.array::<T>(OP)?.view(),
        ta,
        tb,
        wrapping_product,
    )?;
    Ok(T::wrap(out))
}

/// A 2-D product with wrapping integer arithmetic.
pub(crate) fn wrapping_product<T: IntElem>(a: ArrayView2<T>, b: ArrayView2<T>) -> Array2<T> {
    let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
    let mut out = Array2::<T>::zeros((m, n));
    for i in 0..m {
        for p in 0..k {
            let x = a[(i, p)];
            for j in 0..n {
                out[(i, j)] = out[(i, j)].wrapping_add(&x.wrapping_mul(&b[(p, j)]));
            }
        }
    }
    out
}

/// Applies a 2-D product `mm` over the broadcast batch axes.
fn batched<T: Copy + num_traits::Zero>(
    mut a: ArrayViewD<T>,
    mut b: ArrayViewD<T>,
    trans_a: bool,
    trans_b: bool,
    mm: impl Fn(ArrayView2<T>, ArrayView2<T>) -> Array2<T>,
) -> Result<ArrayD<T>> {
    if a.ndim() == 0 || b.ndim() == 0 {
        return Err(OpsError::invalid(OP, "operands must have rank >= 1"));
    }
    let (a_vec, b_vec) = (a.ndim() == 1, b.ndim() == 1);
    if a_vec {
        a.insert_axis_inplace(Axis(0));
    }
    if b_vec {
        b.insert_axis_inplace(Axis(1));
    }
    let (ra, rb) = (a.ndim(), b.ndim());
    if trans_a {
        a.swap_axes(ra - 1, ra - 2);
    }
    if trans_b {
        b.swap_axes(rb - 1, rb - 2);
    }
    let (m, k, n) = (a.shape()[ra - 2], a.shape()[ra - 1], b.shape()[rb - 1]);
    if b.shape()[rb - 2] != k {
        return Err(OpsError::invalid(
            OP,
            format!("inner dimensions differ: {:?} x {:?}", a.shape(), b.shape()),
        ));
    }
    let batch = broadcast_shape(OP, &[&a.shape()[..ra - 2], &b.shape()[..rb - 2]])?;
    crate::budget::check(
        OP,
        &[&batch[..], &[m, n]].concat(),
        std::mem::size_of::<T>(),
    )?;
    let with = |tail: [usize; 2]| IxDyn(&[&batch[..], &tail[..]].concat());
    let (Some(ab), Some(bb)) = (a.broadcast(with([m, k])), b.broadcast(with([k, n]))) else {
        return Err(OpsError::invalid(OP, "batch broadcast failed"));
    };
    let mut data = Vec::with_capacity(batch.iter().product::<usize>() * m * n);
    for idx in ndarray::indices(IxDyn(&batch)) {
        let (mut x, mut y) = (ab.view(), bb.view());
        for &i in idx.slice() {
            x = x.index_axis_move(Axis(0), i);
            y = y.index_axis_move(Axis(0), i);
        }
        data.extend(mm(to_2d(x)?, to_2d(y)?).iter().copied());
    }
    let mut shape = batch.clone();
    if !a_vec {
        shape.push(m);
    }
    if !b_vec {
        shape.push(n);
    }
    ArrayD::from_shape_vec(IxDyn(&shape), data).map_err(|e| OpsError::invalid(OP, e.to_string()))
}

fn to_2d<T>(v: ArrayViewD<'_, T>) -> Result<ArrayView2<'_, T>> {
    v.into_dimensionality::<Ix2>()
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
    fn two_by_two() {
        let a = f(&[2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let b = f(&[2, 2], vec![5.0, 6.0, 7.0, 8.0]);
        assert_eq!(
            matmul(&a, &b, false, false).unwrap(),
            f(&[2, 2], vec![19.0, 22.0, 43.0, 50.0])
        );
        // aᵀ b = [[1,3],[2,4]] @ b
        assert_eq!(
            matmul(&a, &b, true, false).unwrap(),
            f(&[2, 2], vec![26.0, 30.0, 38.0, 44.0])
        );
    }

    #[test]
    fn vectors_are_promoted_and_squeezed() {
        let v = f(&[2], vec![1.0, 2.0]);
        let m = f(&[2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(
            matmul(&v, &m, false, false).unwrap(),
            f(&[3], vec![9.0, 12.0, 15.0])
        );
        assert_eq!(matmul(&v, &v, false, false).unwrap(), f(&[], vec![5.0]));
    }

    #[test]
    fn integer_and_errors() {
        let a = Value::I64(ArrayD::from_shape_vec(IxDyn(&[1, 2]), vec![i64::MAX, 1]).unwrap());
        let b = Value::I64(ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![2, 3]).unwrap());
        assert_eq!(
            matmul(&a, &b, false, false).unwrap(),
            Value::I64(ArrayD::from_shape_vec(IxDyn(&[1, 1]), vec![1]).unwrap())
        );
        let e = matmul(
            &f(&[2, 3], vec![0.0; 6]),
            &f(&[2, 3], vec![0.0; 6]),
            false,
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("inner dimensions differ"));
    }

    fn naive(
        a: &[f32],
        b: &[f32],
        batch: usize,
        m: usize,
        k: usize,
        n: usize,
        b_batched: bool,
    ) -> Vec<f32> {
        let mut out = vec![0.0f32; batch * m * n];
        for z in 0..batch {
            let bz = if b_batched { z } else { 0 };
            for i in 0..m {
                for j in 0..n {
                    out[(z * m + i) * n + j] = (0..k)
                        .map(|p| a[(z * m + i) * k + p] * b[(bz * k + p) * n + j])
                        .sum();
                }
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Batched (and batch-broadcast, transposed) products equal a naive
        /// triple loop.
        #[test]
        fn matches_triple_loop(batch in 1usize..4, m in 1usize..6, k in 1usize..6, n in 1usize..6,
                               b_batched: bool, trans_b: bool, seed in any::<u32>()) {
            let gen = |len: usize, s: u32| (0..len).map(|i| (((i as u32).wrapping_mul(2654435761) ^ s) % 17) as f32 - 8.0).collect::<Vec<_>>();
            let av = gen(batch * m * k, seed);
            let bv = gen(if b_batched { batch } else { 1 } * k * n, seed.rotate_left(7));
            let want = naive(&av, &bv, batch, m, k, n, b_batched);
            let a = f(&[batch, m, k], av);
            let bshape: Vec<usize> = if b_batched { vec![batch, k, n] } else { vec![k, n] };
            let b = ArrayD::from_shape_vec(IxDyn(&bshape), bv).unwrap();
            // Feed b transposed (stored as [.., n, k]) when trans_b.
            let b = if trans_b {
                let r = b.ndim();
                let mut t = b.view();
                t.swap_axes(r - 1, r - 2);
                Value::F32(t.as_standard_layout().into_owned())
            } else {
                Value::F32(b)
            };
            let got = matmul(&a, &b, false, trans_b).unwrap();
            prop_assert_eq!(got, f(&[batch, m, n], want));
        }
    }
}
