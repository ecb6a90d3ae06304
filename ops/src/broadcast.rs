//! Numpy/ONNX multidirectional broadcasting shared by the elementwise
//! operators.

use ndarray::{ArrayD, IxDyn, Zip};

use crate::error::{OpsError, Result};

/// The broadcast shape of all `shapes`, or an error of `op` naming them.
pub(crate) fn broadcast_shape(op: &'static str, shapes: &[&[usize]]) -> Result<Vec<usize>> {
    let mut out: Vec<usize> = Vec::new();
    for s in shapes {
        out = m4c_ir::broadcast_shapes(&out, s).ok_or_else(|| {
            let all: Vec<String> = shapes.iter().map(|s| format!("{s:?}")).collect();
            OpsError::invalid(op, format!("cannot broadcast {}", all.join(" with ")))
        })?;
    }
    Ok(out)
}

/// `f` applied elementwise to `a` and `b` broadcast against each other.
pub(crate) fn zip2<A: Copy, B: Copy, C>(
    op: &'static str,
    a: &ArrayD<A>,
    b: &ArrayD<B>,
    f: impl Fn(A, B) -> C,
) -> Result<ArrayD<C>> {
    let shape = broadcast_shape(op, &[a.shape(), b.shape()])?;
    crate::budget::check(op, &shape, std::mem::size_of::<C>())?;
    let shape = IxDyn(&shape);
    let (va, vb) = (a.broadcast(shape.clone()), b.broadcast(shape));
    match (va, vb) {
        (Some(va), Some(vb)) => Ok(Zip::from(&va).and(&vb).map_collect(|&x, &y| f(x, y))),
        _ => Err(OpsError::invalid(op, "broadcast failed")),
    }
}

/// `f` applied elementwise to three arrays broadcast against each other.
pub(crate) fn zip3<A: Copy, B: Copy, C: Copy, D>(
    op: &'static str,
    a: &ArrayD<A>,
    b: &ArrayD<B>,
    c: &ArrayD<C>,
    f: impl Fn(A, B, C) -> D,
) -> Result<ArrayD<D>> {
    let shape = broadcast_shape(op, &[a.shape(), b.shape(), c.shape()])?;
    crate::budget::check(op, &shape, std::mem::size_of::<D>())?;
    let shape = IxDyn(&shape);
    match (
        a.broadcast(shape.clone()),
        b.broadcast(shape.clone()),
        c.broadcast(shape),
    ) {
        (Some(va), Some(vb), Some(vc)) => Ok(Zip::from(&va)
            .and(&vb)
            .and(&vc)
            .map_collect(|&x, &y, &z| f(x, y, z))),
        _ => Err(OpsError::invalid(op, "broadcast failed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr1, arr2};

    #[test]
    fn row_plus_column() {
        let a = arr2(&[[1], [2]]).into_dyn();
        let b = arr1(&[10, 20, 30]).into_dyn();
        let c = zip2("Add", &a, &b, |x, y| x + y).unwrap();
        assert_eq!(c, arr2(&[[11, 21, 31], [12, 22, 32]]).into_dyn());
    }

    #[test]
    fn incompatible_shapes_name_both() {
        let a = arr1(&[1, 2]).into_dyn();
        let b = arr1(&[1, 2, 3]).into_dyn();
        let e = zip2("Add", &a, &b, |x, y| x + y).unwrap_err().to_string();
        assert_eq!(e, "Add: cannot broadcast [2] with [3]");
    }

    #[test]
    fn three_way() {
        let c = arr1(&[true, false]).into_dyn();
        let a = arr2(&[[1], [2]]).into_dyn();
        let b = ndarray::arr0(0).into_dyn();
        let r = zip3("Where", &c, &a, &b, |c, a, b| if c { a } else { b }).unwrap();
        assert_eq!(r, arr2(&[[1, 0], [2, 0]]).into_dyn());
    }
}
