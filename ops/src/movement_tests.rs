use super::*;
use ndarray::{arr1, arr2, Array};
use proptest::prelude::*;

fn iv(shape: &[usize], v: Vec<i64>) -> Value {
    Value::I64(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
}
fn seq(shape: &[usize]) -> Value {
    let n = shape.iter().product::<usize>() as i64;
    iv(shape, (0..n).collect())
}

#[test]
fn reshape_and_transpose() {
    assert_eq!(reshape(&seq(&[2, 3]), &[3, 2]).unwrap(), seq(&[3, 2]));
    assert!(reshape(&seq(&[2, 3]), &[4])
        .unwrap_err()
        .to_string()
        .contains("cannot reshape [2, 3] to [4]"));
    assert_eq!(
        transpose(&seq(&[2, 3]), &[1, 0]).unwrap(),
        iv(&[3, 2], vec![0, 3, 1, 4, 2, 5])
    );
    assert!(transpose(&seq(&[2, 3]), &[0, 0]).is_err());
}

#[test]
fn slice_forward_backward_and_empty() {
    let x = seq(&[6]);
    let w = |start, step, len| SliceAxis { start, step, len };
    assert_eq!(slice(&x, &[w(1, 2, 3)]).unwrap(), iv(&[3], vec![1, 3, 5]));
    assert_eq!(slice(&x, &[w(4, -2, 3)]).unwrap(), iv(&[3], vec![4, 2, 0]));
    assert_eq!(slice(&x, &[w(0, 1, 0)]).unwrap(), iv(&[0], vec![]));
    assert!(slice(&x, &[w(4, 1, 3)])
        .unwrap_err()
        .to_string()
        .contains("outside axis of 6"));
}

#[test]
fn concat_and_errors() {
    let a = Value::F32(arr2(&[[1.0, 2.0]]).into_dyn());
    let b = Value::F32(arr2(&[[3.0, 4.0], [5.0, 6.0]]).into_dyn());
    assert_eq!(
        concat(&[&a, &b], 0).unwrap(),
        Value::F32(arr2(&[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]).into_dyn())
    );
    assert!(concat(&[&a, &b], 1)
        .unwrap_err()
        .to_string()
        .contains("do not concatenate"));
    assert!(concat(&[&a, &seq(&[1, 2])], 0)
        .unwrap_err()
        .to_string()
        .contains("mixed element types"));
}

#[test]
fn gather_wraps_negative_and_rejects_out_of_range() {
    let data = seq(&[3, 2]);
    let idx = Value::I32(arr2(&[[-1, 0]]).into_dyn());
    assert_eq!(
        gather(&data, &idx, 0).unwrap(),
        iv(&[1, 2, 2], vec![4, 5, 0, 1])
    );
    let scalar = Value::I64(ndarray::arr0(1).into_dyn());
    assert_eq!(gather(&data, &scalar, 1).unwrap(), iv(&[3], vec![1, 3, 5]));
    let e = gather(&data, &Value::I64(arr1(&[3]).into_dyn()), 0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Gather: index 3 out of range for axis 0 of size 3"
    );
    assert!(gather(&data, &Value::I64(arr1(&[-4]).into_dyn()), 0).is_err());
    assert!(gather(&data, &Value::F32(arr1(&[0.0]).into_dyn()), 0).is_err());
    let none = Value::I64(ArrayD::zeros(IxDyn(&[0])));
    assert_eq!(gather(&data, &none, 1).unwrap(), iv(&[3, 0], vec![]));
}

#[test]
fn expand_broadcasts() {
    assert_eq!(
        expand(&seq(&[2, 1]), &[2, 3]).unwrap(),
        iv(&[2, 3], vec![0, 0, 0, 1, 1, 1])
    );
    assert!(expand(&seq(&[2, 3]), &[3]).is_err());
}

#[test]
fn pad_modes() {
    let x = iv(&[3], vec![1, 2, 3]);
    assert_eq!(
        pad(&x, &[2, 1], PadMode::Constant(-1.9)).unwrap(),
        iv(&[6], vec![-1, -1, 1, 2, 3, -1])
    );
    assert_eq!(
        pad(&x, &[2, 2], PadMode::Reflect).unwrap(),
        iv(&[7], vec![3, 2, 1, 2, 3, 2, 1])
    );
    assert_eq!(
        pad(&x, &[2, 1], PadMode::Edge).unwrap(),
        iv(&[6], vec![1, 1, 1, 2, 3, 3])
    );
    assert!(pad(&x, &[3, 0], PadMode::Reflect).is_err());
    let m = seq(&[2, 2]);
    assert_eq!(
        pad(&m, &[1, 0, 0, 1], PadMode::Edge).unwrap(),
        iv(&[3, 3], vec![0, 1, 1, 0, 1, 1, 2, 3, 3])
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Transposing by a permutation and then by its inverse is the identity.
    #[test]
    fn transpose_inverse_is_identity(dims in proptest::collection::vec(1usize..4, 1..5), rot in 0usize..4) {
        let x = seq(&dims);
        let mut perm: Vec<usize> = (0..dims.len()).collect();
        perm.rotate_left(rot % dims.len());
        let mut inv = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i;
        }
        prop_assert_eq!(transpose(&transpose(&x, &perm).unwrap(), &inv).unwrap(), x);
    }

    /// Slice equals picking `start + i*step` by hand on a 2-D array.
    #[test]
    fn slice_matches_manual_indexing(r in 1usize..6, c in 1usize..6, s0 in 0usize..6, s1 in 0usize..6,
                                     st0 in -3i64..4, st1 in -3i64..4, l0 in 0usize..4, l1 in 0usize..4) {
        prop_assume!(st0 != 0 && st1 != 0);
        let fits = |s: usize, st: i64, l: usize, n: usize| l == 0 || (s < n && (0..n as i64).contains(&(s as i64 + st * (l as i64 - 1))));
        prop_assume!(fits(s0, st0, l0, r) && fits(s1, st1, l1, c));
        let x = Array::from_shape_fn((r, c), |(i, j)| (i * 10 + j) as i64);
        let want = Array::from_shape_fn((l0, l1), |(i, j)| x[[(s0 as i64 + st0 * i as i64) as usize, (s1 as i64 + st1 * j as i64) as usize]]);
        let axes = [SliceAxis { start: s0, step: st0, len: l0 }, SliceAxis { start: s1, step: st1, len: l1 }];
        prop_assert_eq!(slice(&Value::I64(x.into_dyn()), &axes).unwrap(), Value::I64(want.into_dyn()));
    }
}

#[test]
fn oversized_outputs_are_errors_not_aborts() {
    let x = seq(&[4]);
    let e = pad(&x, &[usize::MAX, 1], PadMode::Constant(0.0)).unwrap_err();
    assert!(e.to_string().contains("overflows"), "{e}");
    let e = pad(&x, &[1 << 40, 0], PadMode::Edge).unwrap_err();
    assert!(e.to_string().contains("memory budget"), "{e}");
    let e = expand(&seq(&[1]), &[1 << 20, 1 << 20, 1 << 20]).unwrap_err();
    assert!(e.to_string().starts_with("Expand: "), "{e}");
    let e = gather(&seq(&[4]), &iv(&[1], vec![4]), 0).unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
}
