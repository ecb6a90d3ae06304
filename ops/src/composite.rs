//! The composite operators: Softmax, Norm (LayerNorm / RMSNorm) and Gelu,
//! evaluated directly (their decompositions live in the compiler).

use m4c_ir::op::NormKind;
use ndarray::{Axis, IxDyn};

use crate::broadcast::broadcast_shape;
use crate::elem::same_dtype;
use crate::error::{OpsError, Result};
use crate::value::{map_float, Value};

/// `exp(x - max) / sum(exp(x - max))` along `axis` (sum in f64).
pub(crate) fn softmax(x: &Value, axis: usize) -> Result<Value> {
    map_float("Softmax", x, |a| {
        if axis >= a.ndim() {
            return Err(OpsError::invalid(
                "Softmax",
                format!("axis {axis} out of range for rank {}", a.ndim()),
            ));
        }
        let mut out = a.clone();
        for mut lane in out.lanes_mut(Axis(axis)) {
            let max = lane.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            lane.mapv_inplace(|v| (v - max).exp());
            let sum: f64 = lane.iter().map(|&v| f64::from(v)).sum();
            lane.mapv_inplace(|v| (f64::from(v) / sum) as f32);
        }
        Ok(out)
    })
}

/// Normalisation over the axes `axis..rank`, statistics in f64. `scale` (and
/// `bias`, LayerNorm only) broadcast against the normalised trailing shape.
pub(crate) fn norm(kind: NormKind, axis: usize, epsilon: f32, inputs: &[&Value]) -> Result<Value> {
    const OP: &str = "Norm";
    same_dtype(OP, inputs)?;
    let (x, scale, bias) = match (kind, inputs) {
        (_, [x, s]) => (*x, *s, None),
        (NormKind::Layer, [x, s, b]) => (*x, *s, Some(*b)),
        _ => {
            return Err(OpsError::invalid(
                OP,
                format!(
                    "{kind:?} takes x, scale{}",
                    if kind == NormKind::Layer {
                        " and an optional bias"
                    } else {
                        ""
                    }
                ),
            ))
        }
    };
    if axis >= x.shape().len() {
        return Err(OpsError::invalid(
            OP,
            format!("axis {axis} out of range for rank {}", x.shape().len()),
        ));
    }
    let trailing = x.shape()[axis..].to_vec();
    let inner: usize = trailing.iter().product();
    // Flattens a parameter broadcast to the trailing shape.
    let param = |v: &Value, what: &str| -> Result<Vec<f32>> {
        let a = v.float32(OP)?;
        let fits = broadcast_shape(OP, &[a.shape(), &trailing]).is_ok_and(|s| s == trailing);
        match a.broadcast(IxDyn(&trailing)) {
            Some(b) if fits => Ok(b.iter().copied().collect()),
            _ => Err(OpsError::invalid(
                OP,
                format!(
                    "{what} {:?} does not broadcast to the normalised shape {trailing:?}",
                    a.shape()
                ),
            )),
        }
    };
    let scale = param(scale, "scale")?;
    let bias = bias.map(|b| param(b, "bias")).transpose()?;
    map_float(OP, x, |a| {
        let mut out = a.as_standard_layout().into_owned();
        let flat = out
            .as_slice_mut()
            .ok_or_else(|| OpsError::invalid(OP, "non-contiguous buffer"))?;
        for row in flat.chunks_mut(inner.max(1)) {
            let n = row.len() as f64;
            let mean = match kind {
                NormKind::Layer => row.iter().map(|&v| f64::from(v)).sum::<f64>() / n,
                NormKind::Rms => 0.0,
            };
            let var = row
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / n;
            let inv = 1.0 / (var + f64::from(epsilon)).sqrt();
            for (i, v) in row.iter_mut().enumerate() {
                let y = ((f64::from(*v) - mean) * inv) as f32 * scale[i];
                *v = bias.as_ref().map_or(y, |b| y + b[i]);
            }
        }
        Ok(out)
    })
}

/// GELU: exact `0.5x(1 + erf(x/√2))` or the tanh approximation
/// `0.5x(1 + tanh(√(2/π)(x + 0.044715x³)))`, evaluated in f64 and rounded
/// once.
pub(crate) fn gelu(x: &Value, tanh_approx: bool) -> Result<Value> {
    let f: fn(f64) -> f64 = if tanh_approx {
        |v| {
            0.5 * v
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh())
        }
    } else {
        |v| 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2))
    };
    map_float("Gelu", x, |a| Ok(a.mapv(|v| f(f64::from(v)) as f32)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::ArrayD;
    use proptest::prelude::*;

    fn f(shape: &[usize], v: Vec<f32>) -> Value {
        Value::F32(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
    }

    #[test]
    fn softmax_of_equal_logits_is_uniform_and_large_logits_do_not_overflow() {
        let y = softmax(&f(&[1, 4], vec![1000.0; 4]), 1).unwrap();
        assert_eq!(y, f(&[1, 4], vec![0.25; 4]));
        let y = softmax(&f(&[2, 1], vec![3.0, -3.0]), 0).unwrap();
        let Value::F32(y) = y else { panic!() };
        assert!((y[[0, 0]] - 1.0 / (1.0 + (-6f32).exp())).abs() < 1e-7);
    }

    #[test]
    fn layer_norm_by_hand() {
        // mean 2, var 2/3 → (x-2)/sqrt(2/3)
        let x = f(&[1, 3], vec![1.0, 2.0, 3.0]);
        let s = f(&[3], vec![1.0, 1.0, 2.0]);
        let b = f(&[1], vec![0.5]);
        let y = norm(NormKind::Layer, 1, 0.0, &[&x, &s, &b]).unwrap();
        let k = (1.5f64).sqrt() as f32;
        assert_eq!(y, f(&[1, 3], vec![0.5 - k, 0.5, 0.5 + 2.0 * k]));
    }

    #[test]
    fn rms_norm_by_hand() {
        // mean(x²) = 12.5 → x / sqrt(12.5)
        let x = f(&[2], vec![3.0, 4.0]);
        let y = norm(NormKind::Rms, 0, 0.0, &[&x, &f(&[2], vec![1.0, 2.0])]).unwrap();
        let r = (12.5f64).sqrt();
        assert_eq!(y, f(&[2], vec![(3.0 / r) as f32, (4.0 / r) as f32 * 2.0]));
        assert!(norm(NormKind::Rms, 0, 0.0, &[&x, &x, &x]).is_err());
        assert!(norm(NormKind::Layer, 0, 0.0, &[&x, &f(&[3], vec![1.0; 3])])
            .unwrap_err()
            .to_string()
            .contains("does not broadcast"));
    }

    #[test]
    fn gelu_values() {
        // gelu(1) = 0.8413447460685429, tanh form 0.8411919906082768.
        let Value::F32(y) = gelu(&f(&[2], vec![1.0, 0.0]), false).unwrap() else {
            panic!()
        };
        assert_eq!(
            y.iter().copied().collect::<Vec<_>>(),
            vec![0.841_344_746_068_542_9_f64 as f32, 0.0]
        );
        let Value::F32(y) = gelu(&f(&[1], vec![1.0]), true).unwrap() else {
            panic!()
        };
        assert!((y[0] - 0.841_192).abs() < 1e-6);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Softmax rows are positive and sum to one.
        #[test]
        fn softmax_rows_sum_to_one(v in proptest::collection::vec(-50.0f32..50.0, 12)) {
            let Value::F32(y) = softmax(&f(&[3, 4], v), 1).unwrap() else { unreachable!() };
            for row in y.rows() {
                prop_assert!(row.iter().all(|&p| p >= 0.0));
                prop_assert!((row.sum() - 1.0).abs() < 1e-5);
            }
        }

        /// LayerNorm with unit scale and no bias leaves each row with zero mean
        /// and unit variance.
        #[test]
        fn layer_norm_standardises(v in proptest::collection::vec(-10.0f32..10.0, 8)) {
            let spread = v.iter().fold(f32::MIN, |a, &b| a.max(b)) - v.iter().fold(f32::MAX, |a, &b| a.min(b));
            prop_assume!(spread > 0.1);
            let Value::F32(y) = norm(NormKind::Layer, 1, 0.0, &[&f(&[1, 8], v), &f(&[8], vec![1.0; 8])]).unwrap() else { unreachable!() };
            for row in y.rows() {
                let mean = row.iter().map(|&x| f64::from(x)).sum::<f64>() / 8.0;
                let var = row.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / 8.0;
                prop_assert!(mean.abs() < 1e-5, "mean {}", mean);
                prop_assert!((var - 1.0).abs() < 1e-4, "var {}", var);
            }
        }
    }
}
