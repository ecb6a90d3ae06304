//! Comparing results against a reference: the one implementation behind
//! `m4c run --expect`, the fixture tests and every backend test.
//!
//! Semantics are numpy's `allclose(got, want, rtol, atol, equal_nan=True)`:
//! an element passes when `|got - want| <= atol + rtol * |want|`, when both
//! are NaN, or when both are the same infinity. Non-finite outputs are
//! counted on their own, so a NaN result is reported as NaN, never as an
//! error of 0 next to a failure.
//!
//! Quantised and NPU results are judged as a whole rather than element by
//! element: [`Comparison::cosine`] (cosine similarity) and
//! [`Comparison::sqnr_db`] (signal-to-quantisation-noise ratio) come with
//! every comparison.

use crate::error::{OpsError, Result};
use crate::Value;

/// Every element of `v` widened to f64 (bool as 0/1), in logical order.
pub fn as_f64(v: &Value) -> Vec<f64> {
    v.float64().iter().copied().collect()
}

/// The outcome of comparing a result with its reference.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// Elements compared.
    pub len: usize,
    /// Largest `|got - want|` over elements where both are finite.
    pub max_abs: f64,
    /// Largest `|got - want| / |want|` over elements where both are finite
    /// and the reference is non-zero (zero-reference elements count in
    /// `max_abs` only; a relative error to 0 means nothing).
    pub max_rel: f64,
    /// Elements outside the tolerance (NaN matches NaN).
    pub mismatches: usize,
    /// Mismatches where either side is NaN or infinite (they have no
    /// finite error, so they are not in `max_abs`).
    pub nonfinite: usize,
    /// Elements where `got` is NaN and the reference is not.
    pub nan: usize,
    /// Elements where `got` is ±infinity and the reference is not that
    /// same infinity.
    pub inf: usize,
    /// Cosine similarity of `got` and the reference as vectors (1 when
    /// both are zero, 0 when only one is); NaN when either side has a
    /// non-finite element the other does not match, or the shapes differ.
    pub cosine: f64,
    /// Signal-to-quantisation-noise ratio in dB: `10·log10(Σwant² /
    /// Σ(got−want)²)`; infinite when equal, NaN like `cosine`.
    pub sqnr_db: f64,
    /// Set when the shapes differ (nothing else was compared).
    pub shape_error: Option<String>,
}

impl Comparison {
    /// True when the shapes agree and every element is within tolerance.
    pub fn passed(&self) -> bool {
        self.shape_error.is_none() && self.mismatches == 0
    }

    /// A one-line summary for reports: the errors, then how many elements
    /// failed and how many of those are NaN or infinite.
    pub fn summary(&self) -> String {
        if let Some(e) = &self.shape_error {
            return e.clone();
        }
        let mut s = format!("max_abs {:.3e}, max_rel {:.3e}", self.max_abs, self.max_rel);
        if self.mismatches > 0 {
            s += &format!(", {} of {} out of tolerance", self.mismatches, self.len);
        }
        for (n, what) in [(self.nan, "NaN"), (self.inf, "infinite")] {
            if n > 0 {
                s += &format!(", {n} {what}");
            }
        }
        s
    }
}

/// Compares `got` with the reference `want` like numpy's `allclose` (see
/// the module documentation). Element types may differ (values compare as
/// f64); shapes must agree.
pub fn compare(got: &Value, want: &Value, rtol: f64, atol: f64) -> Comparison {
    let mut c = Comparison {
        len: 0,
        max_abs: 0.0,
        max_rel: 0.0,
        mismatches: 0,
        nonfinite: 0,
        nan: 0,
        inf: 0,
        cosine: f64::NAN,
        sqnr_db: f64::NAN,
        shape_error: None,
    };
    if got.shape() != want.shape() {
        c.shape_error = Some(format!(
            "shape {:?}, reference {:?}",
            got.shape(),
            want.shape()
        ));
        return c;
    }
    let (g, w) = (got.float64(), want.float64());
    c.len = g.len();
    // Σgot·want, Σgot², Σwant², Σ(got−want)² over finite pairs.
    let (mut dot, mut gg, mut ww, mut noise) = (0.0, 0.0, 0.0, 0.0);
    for (&a, &b) in g.iter().zip(w.iter()) {
        if a.is_finite() && b.is_finite() {
            dot += a * b;
            gg += a * a;
            ww += b * b;
            noise += (a - b) * (a - b);
        }
        if a == b || (a.is_nan() && b.is_nan()) {
            continue;
        }
        if a.is_finite() && b.is_finite() {
            let d = (a - b).abs();
            c.max_abs = c.max_abs.max(d);
            if b != 0.0 {
                c.max_rel = c.max_rel.max(d / b.abs());
            }
            if d <= atol + rtol * b.abs() {
                continue;
            }
        } else {
            c.nonfinite += 1;
            if a.is_nan() {
                c.nan += 1;
            } else if a.is_infinite() {
                c.inf += 1;
            }
        }
        c.mismatches += 1;
    }
    if c.nonfinite == 0 {
        c.cosine = match (gg > 0.0, ww > 0.0) {
            (true, true) => (dot / (gg.sqrt() * ww.sqrt())).clamp(-1.0, 1.0),
            (false, false) => 1.0,
            _ => 0.0,
        };
        c.sqnr_db = 10.0 * (ww / noise).log10();
    }
    c
}

/// The largest absolute and relative errors of `a` against the reference
/// `b` (as [`compare`] computes them), with non-finite disagreements (NaN
/// against a number, differing infinities) as an infinite absolute error.
/// Shapes and element types must match.
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
    let c = compare(a, b, 0.0, 0.0);
    let abs = if c.nonfinite > 0 {
        f64::INFINITY
    } else {
        c.max_abs
    };
    Ok((abs, c.max_rel))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr1;

    fn f(v: &[f32]) -> Value {
        Value::F32(arr1(v).into_dyn())
    }

    #[test]
    fn allclose_semantics() {
        let c = compare(&f(&[1.0, 2.5, 3.0]), &f(&[1.0, 2.0, 3.0001]), 1e-4, 1e-5);
        assert_eq!((c.len, c.mismatches, c.nan, c.inf), (3, 1, 0, 0));
        assert_eq!((c.max_abs, c.max_rel), (0.5, 0.25));
        assert!(!c.passed());
        // |d| <= atol + rtol·|want| passes, exactly at the boundary too.
        let c = compare(&f(&[1.5]), &f(&[1.0]), 0.25, 0.25);
        assert!(c.passed(), "{c:?}");
        let c = compare(&f(&[1.5]), &f(&[1.0]), 0.25, 0.2);
        assert!(!c.passed(), "{c:?}");
    }

    #[test]
    fn nan_matches_nan_and_is_counted_otherwise() {
        let c = compare(&f(&[f32::NAN, 1.0]), &f(&[f32::NAN, 1.0]), 0.0, 0.0);
        assert!(c.passed(), "{c:?}");
        let c = compare(
            &f(&[f32::NAN, f32::NAN, 1.0]),
            &f(&[0.0, 1.0, 1.0]),
            1e-4,
            1e-5,
        );
        assert_eq!((c.mismatches, c.nan, c.inf), (2, 2, 0));
        assert_eq!(c.max_abs, 0.0);
        assert_eq!(
            c.summary(),
            "max_abs 0.000e0, max_rel 0.000e0, 2 of 3 out of tolerance, 2 NaN"
        );
        // A finite output against a NaN reference fails but is not NaN.
        let c = compare(&f(&[1.0]), &f(&[f32::NAN]), 1.0, 1.0);
        assert_eq!((c.mismatches, c.nonfinite, c.nan), (1, 1, 0));
    }

    #[test]
    fn infinities_match_only_the_same_infinity() {
        let inf = f32::INFINITY;
        let c = compare(&f(&[inf, -inf]), &f(&[inf, -inf]), 0.0, 0.0);
        assert!(c.passed());
        let c = compare(&f(&[inf, -inf, 5.0]), &f(&[-inf, 3.0, inf]), 1e9, 1e9);
        assert_eq!((c.mismatches, c.nonfinite, c.inf, c.nan), (3, 3, 2, 0));
        assert_eq!(c.max_abs, 0.0);
    }

    #[test]
    fn relative_error_ignores_zero_references() {
        let c = compare(&f(&[1e-3, 2.0]), &f(&[0.0, 1.0]), 0.0, 1e-2);
        assert_eq!(c.max_abs, 1.0);
        assert_eq!(c.max_rel, 1.0);
        let c = compare(&f(&[1e-3]), &f(&[0.0]), 0.0, 1e-2);
        assert_eq!((c.max_abs, c.max_rel), (1e-3f32 as f64, 0.0));
        assert!(c.passed());
    }

    #[test]
    fn integers_and_mixed_types_compare_as_values() {
        let i = Value::I64(arr1(&[1, 2, 3]).into_dyn());
        let c = compare(&i, &f(&[1.0, 2.0, 4.0]), 0.0, 0.0);
        assert_eq!((c.mismatches, c.max_abs), (1, 1.0));
        let b = Value::Bool(arr1(&[true, false]).into_dyn());
        assert_eq!(as_f64(&b), [1.0, 0.0]);
    }

    #[test]
    fn cosine_and_sqnr_by_hand() {
        // got = (1, 1), want = (1, 0): cos 45° = 1/√2; noise 1, signal 1.
        let c = compare(&f(&[1.0, 1.0]), &f(&[1.0, 0.0]), 0.0, 0.0);
        assert!((c.cosine - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
        assert_eq!(c.sqnr_db, 0.0);
        // Noise 0.01 against signal 1: 20 dB; the direction is unchanged.
        let c = compare(&f(&[2.2]), &f(&[2.0]), 0.0, 0.0);
        assert!((c.cosine - 1.0).abs() < 1e-12);
        assert!((c.sqnr_db - 20.0).abs() < 1e-4, "{}", c.sqnr_db);
        // Opposite vectors, equal vectors, zero vectors.
        assert_eq!(compare(&f(&[-1.0]), &f(&[1.0]), 0.0, 0.0).cosine, -1.0);
        let same = compare(&f(&[3.0, 4.0]), &f(&[3.0, 4.0]), 0.0, 0.0);
        assert_eq!((same.cosine, same.sqnr_db), (1.0, f64::INFINITY));
        assert_eq!(compare(&f(&[0.0]), &f(&[0.0]), 0.0, 0.0).cosine, 1.0);
        assert_eq!(compare(&f(&[1.0]), &f(&[0.0]), 0.0, 0.0).cosine, 0.0);
        // A NaN the reference does not have makes both NaN.
        let c = compare(&f(&[f32::NAN, 1.0]), &f(&[1.0, 1.0]), 0.0, 0.0);
        assert!(c.cosine.is_nan() && c.sqnr_db.is_nan());
        assert!(compare(&f(&[1.0]), &f(&[1.0, 2.0]), 0.0, 0.0)
            .cosine
            .is_nan());
    }

    #[test]
    fn shapes_must_agree() {
        let c = compare(&f(&[1.0]), &f(&[1.0, 2.0]), 0.0, 0.0);
        assert_eq!(c.shape_error.as_deref(), Some("shape [1], reference [2]"));
        assert!(!c.passed());
    }

    #[test]
    fn max_errors_by_hand() {
        let (abs, rel) =
            max_abs_rel_error(&f(&[1.0, 2.5, f32::NAN]), &f(&[1.0, 2.0, f32::NAN])).unwrap();
        assert_eq!((abs, rel), (0.5, 0.25));
        let (abs, _) = max_abs_rel_error(&f(&[f32::NAN]), &f(&[0.0])).unwrap();
        assert!(abs.is_infinite());
        let (abs, _) = max_abs_rel_error(&f(&[1.0]), &f(&[f32::INFINITY])).unwrap();
        assert!(abs.is_infinite());
        let (abs, rel) = max_abs_rel_error(&f(&[f32::INFINITY]), &f(&[f32::INFINITY])).unwrap();
        assert_eq!((abs, rel), (0.0, 0.0));
        assert!(max_abs_rel_error(&f(&[1.0]), &f(&[1.0, 2.0])).is_err());
    }
}
