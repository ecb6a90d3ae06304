//! Elementwise operators: float unary functions, arithmetic, comparisons,
//! Where and Cast, each written once over the element types it accepts.

use m4c_ir::{DType, Op};

use crate::broadcast::{zip2, zip3};
use crate::elem::{same_dtype, with_elem, Elem, IntElem};
use crate::error::{OpsError, Result};
use crate::value::{map_float, round_to, Value};

/// Exp, Log, Sqrt, Erf, Tanh, Sigmoid, Sin, Cos, Floor on a float tensor.
pub(crate) fn unary(op: &Op, x: &Value) -> Result<Value> {
    let f: fn(f32) -> f32 = match op {
        Op::Exp => f32::exp,
        Op::Log => f32::ln,
        Op::Sqrt => f32::sqrt,
        Op::Erf => erf,
        Op::Tanh => f32::tanh,
        Op::Sigmoid => sigmoid,
        Op::Sin => f32::sin,
        Op::Cos => f32::cos,
        Op::Floor => f32::floor,
        other => {
            return Err(OpsError::invalid(
                other.name(),
                "is not a unary float operator",
            ))
        }
    };
    map_float(op.name(), x, |a| Ok(a.mapv(f)))
}

/// The error function, evaluated in f64 and rounded (accurate to the last
/// bit of f32).
fn erf(x: f32) -> f32 {
    libm::erf(f64::from(x)) as f32
}

/// Logistic function without overflow for large |x|.
fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Add, Sub, Mul, Div, Pow, Max, Min with broadcasting. Floats compute in
/// f32; integers wrap on overflow, Div truncates toward zero.
pub(crate) fn arithmetic(op: &Op, a: &Value, b: &Value) -> Result<Value> {
    let name = op.name();
    match same_dtype(name, &[a, b])? {
        d if d.is_float() => {
            let f: fn(f32, f32) -> f32 = match op {
                Op::Add => |p, q| p + q,
                Op::Sub => |p, q| p - q,
                Op::Mul => |p, q| p * q,
                Op::Div => |p, q| p / q,
                Op::Pow => f32::powf,
                // numpy maximum/minimum: NaN in either operand wins.
                Op::Max => |p, q| {
                    if p.is_nan() || q.is_nan() {
                        f32::NAN
                    } else {
                        p.max(q)
                    }
                },
                Op::Min => |p, q| {
                    if p.is_nan() || q.is_nan() {
                        f32::NAN
                    } else {
                        p.min(q)
                    }
                },
                _ => return Err(OpsError::invalid(name, "is not an arithmetic operator")),
            };
            Ok(round_to(
                d,
                zip2(name, &*a.float32(name)?, &*b.float32(name)?, f)?,
            ))
        }
        DType::I8 => int_arithmetic::<i8>(op, a, b),
        DType::U8 => int_arithmetic::<u8>(op, a, b),
        DType::I32 => int_arithmetic::<i32>(op, a, b),
        DType::I64 => int_arithmetic::<i64>(op, a, b),
        // On masks Max is logical or and Min logical and; the frontend
        // lowers ONNX Or/And onto them.
        DType::Bool if matches!(op, Op::Max | Op::Min) => {
            let f: fn(bool, bool) -> bool = if *op == Op::Max {
                |p, q| p | q
            } else {
                |p, q| p & q
            };
            Ok(Value::Bool(zip2(
                name,
                a.array::<bool>(name)?,
                b.array::<bool>(name)?,
                f,
            )?))
        }
        d => Err(OpsError::dtype(name, d)),
    }
}

fn int_arithmetic<T: IntElem>(op: &Op, a: &Value, b: &Value) -> Result<Value> {
    let name = op.name();
    let (x, y) = (a.array::<T>(name)?, b.array::<T>(name)?);
    let f: fn(T, T) -> T = match op {
        Op::Add => |p, q| p.wrapping_add(&q),
        Op::Sub => |p, q| p.wrapping_sub(&q),
        Op::Mul => |p, q| p.wrapping_mul(&q),
        Op::Div => {
            if y.iter().any(|q| q.is_zero()) {
                return Err(OpsError::invalid(name, "integer division by zero"));
            }
            // checked_div only fails on MIN / -1 here, which wraps to MIN.
            |p, q| p.checked_div(&q).unwrap_or_else(|| p.wrapping_neg())
        }
        Op::Pow => {
            if y.iter().any(|&q| q < T::zero()) && x.iter().any(|p| p.is_zero()) {
                return Err(OpsError::invalid(
                    name,
                    "zero raised to a negative integer power",
                ));
            }
            int_pow
        }
        Op::Max => |p, q| p.max(q),
        Op::Min => |p, q| p.min(q),
        _ => return Err(OpsError::invalid(name, "is not an arithmetic operator")),
    };
    Ok(T::wrap(zip2(name, x, y, f)?))
}

/// `base^exp` with wrapping multiplication. Negative exponents give the
/// truncated real result (0 unless |base| = 1), as a C `(T)pow(b, e)` does.
fn int_pow<T: IntElem>(base: T, exp: T) -> T {
    let one = T::one();
    if exp < T::zero() {
        return if base == one {
            one
        } else if base == one.wrapping_neg() {
            if (exp & one).is_zero() {
                one
            } else {
                base
            }
        } else {
            T::zero()
        };
    }
    let (mut result, mut sq, mut e) = (one, base, exp.to_u64().unwrap_or(0));
    while e > 0 {
        if e & 1 == 1 {
            result = result.wrapping_mul(&sq);
        }
        sq = sq.wrapping_mul(&sq);
        e >>= 1;
    }
    result
}

/// Equal and Less on any element type (NaN compares false).
pub(crate) fn compare(op: &Op, a: &Value, b: &Value) -> Result<Value> {
    fn cmp<T: Elem>(op: &Op, a: &Value, b: &Value) -> Result<Value> {
        let name = op.name();
        let f: fn(T, T) -> bool = match op {
            Op::Equal => |p, q| p == q,
            Op::Less => |p, q| p < q,
            _ => return Err(OpsError::invalid(name, "is not a comparison")),
        };
        Ok(Value::Bool(zip2(
            name,
            a.array::<T>(name)?,
            b.array::<T>(name)?,
            f,
        )?))
    }
    let d = same_dtype(op.name(), &[a, b])?;
    with_elem!(d, T => cmp::<T>(op, a, b), i4 => Err(OpsError::dtype(op.name(), d)))
}

/// `cond ? a : b` with all three broadcast.
pub(crate) fn select(cond: &Value, a: &Value, b: &Value) -> Result<Value> {
    fn pick<T: Elem>(c: &Value, a: &Value, b: &Value) -> Result<Value> {
        let (c, a, b) = (
            c.array::<bool>("Where")?,
            a.array::<T>("Where")?,
            b.array::<T>("Where")?,
        );
        Ok(T::wrap(zip3(
            "Where",
            c,
            a,
            b,
            |c, x, y| if c { x } else { y },
        )?))
    }
    let d = same_dtype("Where", &[a, b])?;
    with_elem!(d, T => pick::<T>(cond, a, b), i4 => Err(OpsError::dtype("Where", d)))
}

/// Element type conversion with ONNX semantics (see `Elem::from_scalar`):
/// float→int truncates toward zero and saturates, int→int wraps.
pub(crate) fn cast(x: &Value, to: DType) -> Result<Value> {
    fn convert<S: Elem, T: Elem>(x: &Value) -> Result<Value> {
        Ok(T::wrap(
            x.array::<S>("Cast")?
                .mapv(|v| T::from_scalar(v.to_scalar())),
        ))
    }
    let unsupported = || {
        Err(OpsError::invalid(
            "Cast",
            "int4 has no runtime representation",
        ))
    };
    with_elem!(x.dtype(), S => with_elem!(to, T => convert::<S, T>(x), i4 => unsupported()), i4 => unsupported())
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;
    use ndarray::{arr1, ArrayD};

    fn f(v: &[f32]) -> Value {
        Value::F32(arr1(v).into_dyn())
    }
    fn i(v: &[i32]) -> Value {
        Value::I32(arr1(v).into_dyn())
    }

    #[test]
    fn integer_division_truncates_and_rejects_zero() {
        assert_eq!(
            arithmetic(&Op::Div, &i(&[7, -7, 7, i32::MIN]), &i(&[2, 2, -2, -1])).unwrap(),
            i(&[3, -3, -3, i32::MIN])
        );
        let e = arithmetic(&Op::Div, &i(&[1]), &i(&[0])).unwrap_err();
        assert_eq!(e.to_string(), "Div: integer division by zero");
    }

    #[test]
    fn integer_power() {
        assert_eq!(
            arithmetic(
                &Op::Pow,
                &i(&[3, -2, 2, -1, 1, 5]),
                &i(&[4, 3, -1, -3, -7, 0])
            )
            .unwrap(),
            i(&[81, -8, 0, -1, 1, 1])
        );
        assert!(arithmetic(&Op::Pow, &i(&[0]), &i(&[-1])).is_err());
    }

    #[test]
    fn max_min_propagate_nan() {
        let r = arithmetic(
            &Op::Max,
            &f(&[1.0, f32::NAN, 3.0]),
            &f(&[2.0, 0.0, f32::NAN]),
        )
        .unwrap();
        let Value::F32(r) = r else { panic!() };
        assert_eq!(r[0], 2.0);
        assert!(r[1].is_nan() && r[2].is_nan());
    }

    #[test]
    fn mixed_types_and_bools_are_rejected() {
        assert!(arithmetic(&Op::Add, &f(&[1.0]), &i(&[1]))
            .unwrap_err()
            .to_string()
            .contains("mixed element types f32 and i32"));
        let b = Value::Bool(arr1(&[true]).into_dyn());
        assert!(arithmetic(&Op::Add, &b, &b).is_err());
    }

    #[test]
    fn max_and_min_on_bools_are_or_and_and() {
        let p = Value::Bool(arr1(&[true, true, false, false]).into_dyn());
        let q = Value::Bool(arr1(&[true, false, true, false]).into_dyn());
        let or = arithmetic(&Op::Max, &p, &q).unwrap();
        let and = arithmetic(&Op::Min, &p, &q).unwrap();
        assert_eq!(or, Value::Bool(arr1(&[true, true, true, false]).into_dyn()));
        assert_eq!(
            and,
            Value::Bool(arr1(&[true, false, false, false]).into_dyn())
        );
    }

    #[test]
    fn f16_rounds_per_op() {
        let a = Value::F16(arr1(&[f16::from_f32(1.0)]).into_dyn());
        let b = Value::F16(arr1(&[f16::from_f32(0.0003)]).into_dyn());
        // 1 + 0.0003 is below half an f16 ulp of 1 (0.00049), so it rounds to 1.
        assert_eq!(arithmetic(&Op::Add, &a, &b).unwrap(), a);
    }

    #[test]
    fn unary_functions() {
        let Value::F32(r) = unary(&Op::Sigmoid, &f(&[-100.0, 0.0, 100.0])).unwrap() else {
            panic!()
        };
        assert_eq!(
            r.iter().copied().collect::<Vec<_>>(),
            vec![(-100f32).exp() / (1.0 + (-100f32).exp()), 0.5, 1.0]
        );
        let Value::F32(r) = unary(&Op::Erf, &f(&[0.0, 0.5, -3.0])).unwrap() else {
            panic!()
        };
        // erf(0.5) = 0.5204998778130465, erf(-3) = -0.9999779095030014.
        assert_eq!(
            r.iter().copied().collect::<Vec<_>>(),
            vec![0.0, 0.520_499_9, -0.999_977_9]
        );
        assert!(unary(&Op::Exp, &i(&[1]))
            .unwrap_err()
            .to_string()
            .contains("needs a float input"));
    }

    #[test]
    fn comparisons_on_every_type() {
        let r = compare(&Op::Less, &i(&[1, 2, 3]), &i(&[2])).unwrap();
        assert_eq!(r, Value::Bool(arr1(&[true, false, false]).into_dyn()));
        let r = compare(&Op::Equal, &f(&[0.0, f32::NAN]), &f(&[-0.0, f32::NAN])).unwrap();
        assert_eq!(r, Value::Bool(arr1(&[true, false]).into_dyn()));
        let b = |v: &[bool]| Value::Bool(arr1(v).into_dyn());
        assert_eq!(
            compare(&Op::Less, &b(&[false, true]), &b(&[true, true])).unwrap(),
            b(&[true, false])
        );
    }

    #[test]
    fn where_broadcasts() {
        let c = Value::Bool(arr1(&[true, false, true]).into_dyn());
        assert_eq!(select(&c, &i(&[1, 2, 3]), &i(&[0])).unwrap(), i(&[1, 0, 3]));
        assert!(select(&i(&[1]), &i(&[1]), &i(&[1])).is_err());
    }

    #[test]
    fn cast_semantics() {
        let x = f(&[2.7, -2.7, 1e20, f32::NAN, 0.0]);
        assert_eq!(cast(&x, DType::I32).unwrap(), i(&[2, -2, i32::MAX, 0, 0]));
        assert_eq!(
            cast(&x, DType::Bool).unwrap(),
            Value::Bool(arr1(&[true, true, true, true, false]).into_dyn())
        );
        assert_eq!(
            cast(&i(&[300, -129]), DType::I8).unwrap(),
            Value::I8(arr1(&[44, 127]).into_dyn())
        );
        let h = cast(&f(&[0.1]), DType::F16).unwrap();
        assert_eq!(h, Value::F16(arr1(&[f16::from_f32(0.1)]).into_dyn()));
        let big = Value::I64(ArrayD::from_elem(ndarray::IxDyn(&[1]), (1i64 << 53) + 1));
        assert_eq!(cast(&big, DType::F32).unwrap(), f(&[9007199254740992.0]));
        assert!(cast(&x, DType::I4).is_err());
    }
}
