//! Element types of runtime tensors: one trait so that kernels are written
//! once, generically, and dispatched on the runtime [`DType`].

use half::{bf16, f16};
use m4c_ir::DType;
use ndarray::ArrayD;

use crate::error::{OpsError, Result};
use crate::Value;

/// A scalar in the widest type of its family; the common currency of
/// element type conversions (Cast, Pad constants).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Scalar {
    Float(f64),
    Int(i64),
    Bool(bool),
}

/// An element type of [`Value`], so that kernels can be written once,
/// generically, and dispatched on the runtime [`DType`] by `with_elem!`.
pub(crate) trait Elem: Copy + PartialOrd + Default + std::fmt::Debug + 'static {
    const DTYPE: DType;
    /// Bytes per element in little-endian storage.
    const WIDTH: usize;
    fn wrap(a: ArrayD<Self>) -> Value;
    /// The array inside `v` when `v` holds this element type.
    fn get(v: &Value) -> Option<&ArrayD<Self>>;
    /// Decodes one element from exactly [`Elem::WIDTH`] bytes.
    fn read_le(b: &[u8]) -> Self;
    fn write_le(self, out: &mut Vec<u8>);
    fn to_scalar(self) -> Scalar;
    /// Conversion with ONNX Cast semantics: float→int truncates toward zero
    /// (saturating at the type's range, NaN → 0), int→int wraps, anything
    /// →bool is `!= 0`, float→f16/bf16 rounds to nearest even.
    fn from_scalar(s: Scalar) -> Self;
}

macro_rules! impl_elem {
    ($t:ty, $var:ident, $w:expr, to: |$s:ident| $to:expr, from: |$x:ident| $from:expr) => {
        impl Elem for $t {
            const DTYPE: DType = DType::$var;
            const WIDTH: usize = $w;
            fn wrap(a: ArrayD<Self>) -> Value {
                Value::$var(a)
            }
            fn get(v: &Value) -> Option<&ArrayD<Self>> {
                match v {
                    Value::$var(a) => Some(a),
                    _ => None,
                }
            }
            fn read_le(b: &[u8]) -> Self {
                let mut buf = [0u8; $w];
                buf.copy_from_slice(b);
                <$t>::from_le_bytes(buf)
            }
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn to_scalar(self) -> Scalar {
                let $s = self;
                $to
            }
            fn from_scalar($x: Scalar) -> Self {
                $from
            }
        }
    };
}

macro_rules! impl_float {
    ($t:ty, $var:ident, $w:expr, $from_f64:expr) => {
        impl_elem!($t, $var, $w, to: |s| Scalar::Float(f64::from(s)), from: |x| match x {
            Scalar::Float(f) => $from_f64(f),
            Scalar::Int(i) => $from_f64(i as f64),
            Scalar::Bool(b) => $from_f64(if b { 1.0 } else { 0.0 }),
        });
    };
}

macro_rules! impl_int {
    ($t:ty, $var:ident, $w:expr) => {
        impl_elem!($t, $var, $w, to: |s| Scalar::Int(i64::from(s)), from: |x| match x {
            Scalar::Float(f) => f as $t,
            Scalar::Int(i) => i as $t,
            Scalar::Bool(b) => <$t>::from(b),
        });
    };
}

impl_float!(f32, F32, 4, |f: f64| f as f32);
impl_float!(f16, F16, 2, f16::from_f64);
impl_float!(bf16, BF16, 2, bf16::from_f64);
impl_int!(i8, I8, 1);
impl_int!(u8, U8, 1);
impl_int!(i32, I32, 4);
impl_int!(i64, I64, 8);

impl Elem for bool {
    const DTYPE: DType = DType::Bool;
    const WIDTH: usize = 1;
    fn wrap(a: ArrayD<Self>) -> Value {
        Value::Bool(a)
    }
    fn get(v: &Value) -> Option<&ArrayD<Self>> {
        match v {
            Value::Bool(a) => Some(a),
            _ => None,
        }
    }
    fn read_le(b: &[u8]) -> Self {
        b[0] != 0
    }
    fn write_le(self, out: &mut Vec<u8>) {
        out.push(u8::from(self));
    }
    fn to_scalar(self) -> Scalar {
        Scalar::Bool(self)
    }
    fn from_scalar(s: Scalar) -> Self {
        match s {
            Scalar::Float(f) => f != 0.0,
            Scalar::Int(i) => i != 0,
            Scalar::Bool(b) => b,
        }
    }
}

/// The integer element types, with the wrapping arithmetic ONNX integer
/// operators use (two's complement overflow wraps, as in numpy).
pub(crate) trait IntElem:
    Elem
    + num_traits::PrimInt
    + num_traits::WrappingAdd
    + num_traits::WrappingSub
    + num_traits::WrappingMul
    + num_traits::WrappingNeg
{
}
impl IntElem for i8 {}
impl IntElem for u8 {}
impl IntElem for i32 {}
impl IntElem for i64 {}

/// The common element type of `values`, or an error of `op` naming the two
/// that differ.
pub(crate) fn same_dtype(op: &'static str, values: &[&Value]) -> Result<DType> {
    let first = values.first().map_or(DType::F32, |v| v.dtype());
    match values.iter().find(|v| v.dtype() != first) {
        None => Ok(first),
        Some(v) => Err(OpsError::invalid(
            op,
            format!("mixed element types {first} and {}", v.dtype()),
        )),
    }
}

/// Runs `$body` with the type alias `$T` bound to the element type of
/// `$dtype`; int4 and uint4 (which have no runtime representation)
/// evaluate `$i4`.
macro_rules! with_elem {
    ($dtype:expr, $T:ident => $body:expr, i4 => $i4:expr) => {
        match $dtype {
            m4c_ir::DType::F32 => {
                type $T = f32;
                $body
            }
            m4c_ir::DType::F16 => {
                type $T = half::f16;
                $body
            }
            m4c_ir::DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            m4c_ir::DType::I8 => {
                type $T = i8;
                $body
            }
            m4c_ir::DType::U8 => {
                type $T = u8;
                $body
            }
            m4c_ir::DType::I32 => {
                type $T = i32;
                $body
            }
            m4c_ir::DType::I64 => {
                type $T = i64;
                $body
            }
            m4c_ir::DType::Bool => {
                type $T = bool;
                $body
            }
            m4c_ir::DType::I4 | m4c_ir::DType::U4 => $i4,
        }
    };
}
pub(crate) use with_elem;
