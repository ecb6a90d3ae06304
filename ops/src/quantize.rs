//! Quantize: ONNX QuantizeLinear's integer semantics, the one quantisation
//! operator of the IR (dequantisation is Cast/Sub/Mul).

use m4c_ir::DType;

use crate::broadcast::zip2;
use crate::error::{OpsError, Result};
use crate::value::{round_to, Value};

const OP: &str = "Quantize";

/// `saturate(round_half_even(x / scale) + zero_point)` into `to`, with `x`,
/// `scale` and `zero_point` broadcast. `x / scale` is computed in f32 and
/// rounded to x's float type first (so f16 inputs divide as f16 does:
/// f32 holds every f16 quotient's exact rounding, 24 ≥ 2·11 + 2 bits);
/// NaN quantises to the zero point. int4/uint4 results are held widened
/// in i8/u8, as int4 constants are.
pub(crate) fn quantize(x: &Value, scale: &Value, zero_point: &Value, to: DType) -> Result<Value> {
    let (lo, hi) = to
        .int_range()
        .filter(|_| to.is_quantised())
        .ok_or_else(|| OpsError::invalid(OP, format!("cannot quantise to {to}")))?;
    if x.dtype() != scale.dtype() {
        return Err(OpsError::invalid(
            OP,
            format!("x is {} but scale is {}", x.dtype(), scale.dtype()),
        ));
    }
    if !zero_point.dtype().is_quantised() && zero_point.dtype() != DType::I32 {
        return Err(OpsError::dtype(OP, zero_point.dtype()));
    }
    // The quotient, rounded to x's float type.
    let q = match round_to(
        x.dtype(),
        zip2(OP, &*x.float32(OP)?, &*scale.float32(OP)?, |a, b| a / b)?,
    ) {
        Value::F32(a) => a.mapv(f64::from),
        Value::F16(a) => a.mapv(f64::from),
        Value::BF16(a) => a.mapv(f64::from),
        other => return Err(OpsError::dtype(OP, other.dtype())),
    };
    let out = zip2(OP, &q, &zero_point.float64(), |q, zp| {
        let r = if q.is_nan() { 0.0 } else { q.round_ties_even() };
        (r + zp).clamp(lo as f64, hi as f64) as i64
    })?;
    Ok(match to {
        DType::I8 | DType::I4 => Value::I8(out.mapv(|v| v as i8)),
        _ => Value::U8(out.mapv(|v| v as u8)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;
    use ndarray::{arr1, ArrayD};

    fn f(v: &[f32]) -> Value {
        Value::F32(arr1(v).into_dyn())
    }

    #[test]
    fn rounds_half_to_even_and_saturates() {
        let x = f(&[0.5, 1.5, 2.5, -0.5, -1.5, 2.4999, 1000.0, -1000.0, f32::NAN]);
        let zp = Value::U8(arr1(&[0]).into_dyn());
        let q = quantize(&x, &f(&[1.0]), &zp, DType::I8).unwrap();
        assert_eq!(
            q,
            Value::I8(arr1(&[0, 2, 2, 0, -2, 2, 127, -128, 0]).into_dyn())
        );
        // With a zero point: the rounding happens before it is added.
        let zp = Value::U8(arr1(&[128]).into_dyn());
        let q = quantize(&f(&[0.5, 1.5, -200.0, 1e9]), &f(&[1.0]), &zp, DType::U8).unwrap();
        assert_eq!(q, Value::U8(arr1(&[128, 130, 0, 255]).into_dyn()));
    }

    #[test]
    fn divides_by_the_scale_not_by_its_reciprocal() {
        // 2.25 / 0.3 = 7.4999995 in f32 (→ 7) while 2.25 · (1 / 0.3) = 7.5
        // (→ 8); 0.195 / 0.03 = 6.5 (→ 6, half to even) while the product
        // is 6.5000005 (→ 7). ONNX's reference divides.
        let zp = Value::I8(arr1(&[0]).into_dyn());
        let q = quantize(&f(&[2.25, 0.195]), &f(&[0.3, 0.03]), &zp, DType::I8).unwrap();
        assert_eq!(q, Value::I8(arr1(&[7, 6]).into_dyn()));
    }

    #[test]
    fn int4_ranges_and_per_axis_broadcast() {
        let x = Value::F32(
            ArrayD::from_shape_vec(ndarray::IxDyn(&[2, 2]), vec![9.0, -9.0, 9.0, -9.0]).unwrap(),
        );
        let scale =
            Value::F32(ArrayD::from_shape_vec(ndarray::IxDyn(&[2, 1]), vec![1.0, 3.0]).unwrap());
        let zp = Value::I8(arr1(&[0]).into_dyn());
        let q = quantize(&x, &scale, &zp, DType::I4).unwrap();
        assert_eq!(q.shape(), &[2, 2]);
        assert_eq!(
            q.float64().iter().copied().collect::<Vec<_>>(),
            vec![7.0, -8.0, 3.0, -3.0]
        );
        let zp = Value::U8(arr1(&[8]).into_dyn());
        let q = quantize(&x, &scale, &zp, DType::U4).unwrap();
        assert_eq!(
            q.float64().iter().copied().collect::<Vec<_>>(),
            vec![15.0, 0.0, 11.0, 5.0]
        );
    }

    #[test]
    fn f16_divides_in_f16() {
        let h = |v: f32| Value::F16(arr1(&[f16::from_f32(v)]).into_dyn());
        let zp = Value::U8(arr1(&[0]).into_dyn());
        // 2.5 / 1.0 = 2.5 → 2 (half to even), exactly as in f32.
        assert_eq!(
            quantize(&h(2.5), &h(1.0), &zp, DType::U8).unwrap(),
            Value::U8(arr1(&[2]).into_dyn())
        );
        assert!(quantize(&h(1.0), &f(&[1.0]), &zp, DType::U8).is_err());
    }

    #[test]
    fn refuses_bad_types() {
        let zp = Value::U8(arr1(&[0]).into_dyn());
        assert!(quantize(&f(&[1.0]), &f(&[1.0]), &zp, DType::I32).is_err());
        assert!(quantize(&f(&[1.0]), &f(&[1.0]), &f(&[0.0]), DType::U8).is_err());
        let i = Value::I32(arr1(&[1]).into_dyn());
        assert!(quantize(&i, &i, &zp, DType::U8).is_err());
    }
}
