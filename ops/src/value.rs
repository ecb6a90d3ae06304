//! Runtime tensors of the interpreter and their conversion to and from IR
//! constants.

use std::borrow::Cow;

use half::{bf16, f16};
use m4c_ir::{DType, Tensor};
use ndarray::{ArrayD, IxDyn};

use crate::elem::{with_elem, Elem, Scalar};
use crate::error::{OpsError, Result};

/// A runtime tensor: an n-dimensional array of one of the element types the
/// interpreter computes with.
///
/// There are no int4 variants: packed int4/uint4 constants are widened to
/// [`Value::I8`]/[`Value::U8`] when decoded (every int4 value is an int8
/// value).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    F32(ArrayD<f32>),
    F16(ArrayD<f16>),
    BF16(ArrayD<bf16>),
    I8(ArrayD<i8>),
    U8(ArrayD<u8>),
    I32(ArrayD<i32>),
    I64(ArrayD<i64>),
    Bool(ArrayD<bool>),
}

/// Applies `$body` to the array inside a value, whatever its element type.
macro_rules! each_array {
    ($v:expr, $a:ident => $body:expr) => {
        match $v {
            Value::F32($a) => $body,
            Value::F16($a) => $body,
            Value::BF16($a) => $body,
            Value::I8($a) => $body,
            Value::U8($a) => $body,
            Value::I32($a) => $body,
            Value::I64($a) => $body,
            Value::Bool($a) => $body,
        }
    };
}

/// Applies `$body` (a `Result<ArrayD<T>>` computed from the array `$a`) to
/// a value of any element type, keeping the element type.
macro_rules! map_array {
    ($v:expr, $a:ident => $body:expr) => {
        match $v {
            Value::F32($a) => Value::F32($body?),
            Value::F16($a) => Value::F16($body?),
            Value::BF16($a) => Value::BF16($body?),
            Value::I8($a) => Value::I8($body?),
            Value::U8($a) => Value::U8($body?),
            Value::I32($a) => Value::I32($body?),
            Value::I64($a) => Value::I64($body?),
            Value::Bool($a) => Value::Bool($body?),
        }
    };
}
pub(crate) use map_array;

impl Value {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            Value::F32(_) => DType::F32,
            Value::F16(_) => DType::F16,
            Value::BF16(_) => DType::BF16,
            Value::I8(_) => DType::I8,
            Value::U8(_) => DType::U8,
            Value::I32(_) => DType::I32,
            Value::I64(_) => DType::I64,
            Value::Bool(_) => DType::Bool,
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        each_array!(self, a => a.shape())
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape().iter().product()
    }

    /// True when the value has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decodes an IR constant (little-endian bytes, possibly an unaligned
    /// window of a memory map). Int4/uint4 are unpacked (low nibble first)
    /// to i8/u8.
    pub fn from_tensor(t: &Tensor) -> Result<Value> {
        t.check_len()?;
        let bytes = t.bytes()?;
        let shape = IxDyn(&t.shape);
        let bad =
            |e: ndarray::ShapeError| OpsError::invalid("constant", format!("{:?}: {e}", t.shape));
        with_elem!(t.dtype, T => {
            let data: Vec<T> = bytes.chunks_exact(T::WIDTH).map(T::read_le).collect();
            Ok(T::wrap(ArrayD::from_shape_vec(shape, data).map_err(bad)?))
        }, i4 => {
            let nibbles = bytes.iter().flat_map(|&b| [b & 0xF, b >> 4]).take(t.len());
            if t.dtype == DType::U4 {
                let data: Vec<u8> = nibbles.collect();
                Ok(Value::U8(ArrayD::from_shape_vec(shape, data).map_err(bad)?))
            } else {
                // Sign-extend the low four bits.
                let data: Vec<i8> = nibbles.map(|n| ((n << 4) as i8) >> 4).collect();
                Ok(Value::I8(ArrayD::from_shape_vec(shape, data).map_err(bad)?))
            }
        })
    }

    /// Encodes the value as an owned IR constant (logical row-major order).
    pub fn to_tensor(&self) -> Tensor {
        fn encode<T: Elem>(a: &ArrayD<T>) -> Tensor {
            let mut bytes = Vec::with_capacity(a.len() * T::WIDTH);
            a.iter().for_each(|x| x.write_le(&mut bytes));
            Tensor::from_bytes(T::DTYPE, a.shape(), bytes)
        }
        each_array!(self, a => encode(a))
    }

    /// Encodes the value as a constant of type `dtype`: packs int4/uint4
    /// values (held widened, in range: Quantize made them) two per byte,
    /// low nibble first; any other type is [`Value::to_tensor`].
    pub fn to_tensor_as(&self, dtype: DType) -> Tensor {
        let nibbles: Vec<u8> = match (dtype, self) {
            (DType::I4, Value::I8(a)) => a.iter().map(|&v| v as u8 & 0xF).collect(),
            (DType::U4, Value::U8(a)) => a.iter().map(|&v| v & 0xF).collect(),
            _ => return self.to_tensor(),
        };
        let bytes = nibbles
            .chunks(2)
            .map(|p| p[0] | p.get(1).map_or(0, |h| h << 4))
            .collect();
        Tensor::from_bytes(dtype, self.shape(), bytes)
    }

    /// The elements as f32 (exact for every float type), for kernels that
    /// compute in f32. Fails for non-float values.
    pub(crate) fn float32(&self, op: &'static str) -> Result<Cow<'_, ArrayD<f32>>> {
        match self {
            Value::F32(a) => Ok(Cow::Borrowed(a)),
            Value::F16(a) => Ok(Cow::Owned(a.mapv(f32::from))),
            Value::BF16(a) => Ok(Cow::Owned(a.mapv(f32::from))),
            other => Err(OpsError::invalid(
                op,
                format!("needs a float input, got {}", other.dtype()),
            )),
        }
    }

    /// The elements widened to f64 (bool as 0/1), for comparisons of results.
    pub(crate) fn float64(&self) -> ArrayD<f64> {
        fn widen<T: Elem>(a: &ArrayD<T>) -> ArrayD<f64> {
            a.mapv(|x| match x.to_scalar() {
                Scalar::Float(f) => f,
                Scalar::Int(i) => i as f64,
                Scalar::Bool(b) => f64::from(u8::from(b)),
            })
        }
        each_array!(self, a => widen(a))
    }

    /// The array when the value has element type `T`, else an error of `op`.
    pub(crate) fn array<T: Elem>(&self, op: &'static str) -> Result<&ArrayD<T>> {
        T::get(self).ok_or_else(|| {
            OpsError::invalid(
                op,
                format!("expected element type {}, got {}", T::DTYPE, self.dtype()),
            )
        })
    }
}

/// Rounds an f32 result back to the float type `dtype` of the operator's
/// input (f16/bf16 round to nearest even); any other `dtype` keeps f32.
pub(crate) fn round_to(dtype: DType, a: ArrayD<f32>) -> Value {
    match dtype {
        DType::F16 => Value::F16(a.mapv(f16::from_f32)),
        DType::BF16 => Value::BF16(a.mapv(bf16::from_f32)),
        _ => Value::F32(a),
    }
}

/// Computes a float operator in f32 and rounds the result back to the input's
/// element type.
pub(crate) fn map_float(
    op: &'static str,
    x: &Value,
    f: impl FnOnce(&ArrayD<f32>) -> Result<ArrayD<f32>>,
) -> Result<Value> {
    let a = x.float32(op)?;
    Ok(round_to(x.dtype(), f(&a)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use m4c_ir::Storage;
    use std::sync::Arc;

    #[test]
    fn tensor_round_trip_every_dtype() {
        let values = [
            Value::F32(ArrayD::from_shape_vec(IxDyn(&[2]), vec![1.5, -2.0]).unwrap()),
            Value::F16(ArrayD::from_shape_vec(IxDyn(&[1]), vec![f16::from_f32(0.1)]).unwrap()),
            Value::BF16(ArrayD::from_shape_vec(IxDyn(&[1]), vec![bf16::from_f32(-3.0)]).unwrap()),
            Value::I8(ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![-128, 127]).unwrap()),
            Value::U8(ArrayD::from_shape_vec(IxDyn(&[3]), vec![0, 128, 255]).unwrap()),
            Value::I32(ArrayD::from_shape_vec(IxDyn(&[]), vec![7]).unwrap()),
            Value::I64(ArrayD::from_shape_vec(IxDyn(&[0, 3]), vec![]).unwrap()),
            Value::Bool(ArrayD::from_shape_vec(IxDyn(&[3]), vec![true, false, true]).unwrap()),
        ];
        for v in values {
            assert_eq!(Value::from_tensor(&v.to_tensor()).unwrap(), v);
        }
    }

    #[test]
    fn int4_unpacks_low_nibble_first_with_sign() {
        // 0x7F: low nibble 15 (-1), high nibble 7; 0x08: low nibble -8.
        let t = Tensor::from_bytes(DType::I4, &[3], vec![0x7F, 0x08]);
        assert_eq!(
            Value::from_tensor(&t).unwrap(),
            Value::I8(ndarray::arr1(&[-1, 7, -8]).into_dyn())
        );
        let t = Tensor::from_bytes(DType::U4, &[3], vec![0x7F, 0x08]);
        assert_eq!(
            Value::from_tensor(&t).unwrap(),
            Value::U8(ndarray::arr1(&[15, 7, 8]).into_dyn())
        );
    }

    #[test]
    fn int4_packs_back_to_what_it_unpacks() {
        for (dtype, bytes) in [(DType::I4, vec![0x7F, 0x08]), (DType::U4, vec![0x3C, 0x0F])] {
            let t = Tensor::from_bytes(dtype, &[3], bytes.clone());
            let v = Value::from_tensor(&t).unwrap();
            let back = v.to_tensor_as(dtype);
            assert_eq!((back.dtype, back.bytes().unwrap()), (dtype, &bytes[..]));
        }
        let v = Value::F32(ndarray::arr1(&[1.0]).into_dyn());
        assert_eq!(v.to_tensor_as(DType::I4).dtype, DType::F32);
    }

    #[test]
    fn wrong_length_and_absent_data_are_errors() {
        let t = Tensor::from_bytes(DType::F32, &[2], vec![0; 7]);
        assert!(Value::from_tensor(&t)
            .unwrap_err()
            .to_string()
            .contains("needs 8 bytes"));
        let t = Tensor {
            dtype: DType::F32,
            shape: vec![1],
            storage: Storage::Absent,
        };
        assert!(Value::from_tensor(&t).is_err());
        let t = Tensor {
            dtype: DType::I8,
            shape: vec![1],
            storage: Storage::Owned(Arc::from(vec![5u8])),
        };
        assert_eq!(Value::from_tensor(&t).unwrap().shape(), &[1]);
    }
}
