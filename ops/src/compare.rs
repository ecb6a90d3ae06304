//! Comparison of results against a reference, for `m4c run --expect` and
//! backend tests.

use crate::error::{OpsError, Result};
use crate::Value;

/// Magnitude below which the relative error divides by this floor instead.
const TINY: f64 = 1e-30;

/// Maximum absolute error `|a - b|` and maximum relative error
/// `|a - b| / max(|b|, tiny)` over all elements (`b` is the reference).
/// Equal values (including equal infinities and NaN against NaN) have zero
/// error; NaN against a number has infinite error. Shapes and element types
/// must match.
pub fn max_abs_rel_error(a: &Value, b: &Value) -> Result<(f64, f64)> {
    if a.dtype() != b.dtype() || a.shape() != b.shape() {
        return Err(OpsError::invalid(
            "compare",
            format!(
                "cannot compare {}{:?} with {}{:?}",
                a.dtype(),
                a.shape(),
                b.dtype(),
                b.shape()
            ),
        ));
    }
    let (x, y) = (a.float64(), b.float64());
    let mut worst = (0.0f64, 0.0f64);
    for (&p, &q) in x.iter().zip(y.iter()) {
        let abs = if p == q || (p.is_nan() && q.is_nan()) {
            0.0
        } else if p.is_nan() || q.is_nan() {
            f64::INFINITY
        } else {
            (p - q).abs()
        };
        let rel = if abs == 0.0 {
            0.0
        } else {
            abs / q.abs().max(TINY)
        };
        worst = (worst.0.max(abs), worst.1.max(rel));
    }
    Ok(worst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr1;

    fn f(v: &[f32]) -> Value {
        Value::F32(arr1(v).into_dyn())
    }

    #[test]
    fn errors_by_hand() {
        let (abs, rel) =
            max_abs_rel_error(&f(&[1.0, 2.5, f32::NAN]), &f(&[1.0, 2.0, f32::NAN])).unwrap();
        assert_eq!((abs, rel), (0.5, 0.25));
        let (abs, _) = max_abs_rel_error(&f(&[f32::NAN]), &f(&[0.0])).unwrap();
        assert!(abs.is_infinite());
        let (abs, rel) = max_abs_rel_error(&f(&[f32::INFINITY]), &f(&[f32::INFINITY])).unwrap();
        assert_eq!((abs, rel), (0.0, 0.0));
        assert!(max_abs_rel_error(&f(&[1.0]), &f(&[1.0, 2.0])).is_err());
    }
}
