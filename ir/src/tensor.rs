//! Constant tensors: small literals and weights referenced in place.

use std::fmt;
use std::sync::Arc;

use crate::{DType, IrError};

/// Where a constant's bytes live.
///
/// Weights are never copied out of the model file: a [`Storage::Mapped`]
/// tensor points into a memory map of the ONNX file or of its external-data
/// file. Values computed by the compiler (folded shapes, pre-transposed
/// weights) are [`Storage::Owned`].
#[derive(Clone)]
pub enum Storage {
    /// Bytes owned by the compiler.
    Owned(Arc<[u8]>),
    /// A byte range of a memory-mapped file.
    Mapped {
        map: Arc<memmap2::Mmap>,
        offset: usize,
        len: usize,
    },
    /// A weight whose bytes are not available (an IR text parsed without
    /// its weight file). Printing and verifying work; evaluating fails.
    Absent,
}

/// A constant tensor: element type, static shape, little-endian bytes.
///
/// ```
/// use m4c_ir::{DType, Tensor};
/// let t = Tensor::from_i64(&[3], &[1, -2, 3]);
/// assert_eq!(t.to_i64_vec().unwrap(), vec![1, -2, 3]);
/// assert_eq!(t.dtype, DType::I64);
/// ```
#[derive(Clone)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub storage: Storage,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({}{:?})", self.dtype, self.shape)
    }
}

macro_rules! from_slice {
    ($name:ident, $t:ty, $dtype:expr) => {
        #[doc = concat!("Builds an owned tensor from `", stringify!($t), "` values.")]
        pub fn $name(shape: &[usize], values: &[$t]) -> Tensor {
            assert_eq!(
                shape.iter().product::<usize>(),
                values.len(),
                "shape/data length mismatch"
            );
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            Tensor::from_bytes($dtype, shape, bytes)
        }
    };
}

macro_rules! to_vec {
    ($name:ident, $t:ty, $dtype:expr) => {
        #[doc = concat!("Decodes the elements as `", stringify!($t), "`; fails for another element type.")]
        pub fn $name(&self) -> Result<Vec<$t>, IrError> {
            self.expect_dtype($dtype)?;
            const W: usize = std::mem::size_of::<$t>();
            Ok(self
                .bytes()?
                .chunks_exact(W)
                .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk width")))
                .collect())
        }
    };
}

impl Tensor {
    /// An owned tensor from raw little-endian bytes.
    pub fn from_bytes(dtype: DType, shape: &[usize], bytes: Vec<u8>) -> Tensor {
        Tensor {
            dtype,
            shape: shape.to_vec(),
            storage: Storage::Owned(bytes.into()),
        }
    }

    from_slice!(from_f32, f32, DType::F32);
    from_slice!(from_i64, i64, DType::I64);
    from_slice!(from_i32, i32, DType::I32);
    from_slice!(from_i8, i8, DType::I8);
    from_slice!(from_u8, u8, DType::U8);
    to_vec!(to_f32_vec, f32, DType::F32);
    to_vec!(to_i64_vec, i64, DType::I64);
    to_vec!(to_i32_vec, i32, DType::I32);
    to_vec!(to_i8_vec, i8, DType::I8);
    to_vec!(to_u8_vec, u8, DType::U8);

    /// A boolean tensor.
    pub fn from_bool(shape: &[usize], values: &[bool]) -> Tensor {
        Tensor::from_bytes(
            DType::Bool,
            shape,
            values.iter().map(|&b| b as u8).collect(),
        )
    }

    /// Decodes a boolean tensor.
    pub fn to_bool_vec(&self) -> Result<Vec<bool>, IrError> {
        self.expect_dtype(DType::Bool)?;
        Ok(self.bytes()?.iter().map(|&b| b != 0).collect())
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when the bytes come from a memory-mapped file.
    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped { .. })
    }

    /// The raw little-endian bytes.
    pub fn bytes(&self) -> Result<&[u8], IrError> {
        match &self.storage {
            Storage::Owned(b) => Ok(b),
            Storage::Mapped { map, offset, len } => Ok(&map[*offset..*offset + *len]),
            Storage::Absent => Err(IrError::MissingData),
        }
    }

    /// Integer view of an index/shape-like tensor (i64, i32, i8 or u8), used by
    /// the frontend when folding shape computations.
    pub fn to_index_vec(&self) -> Result<Vec<i64>, IrError> {
        match self.dtype {
            DType::I64 => self.to_i64_vec(),
            DType::I32 => Ok(self.to_i32_vec()?.into_iter().map(i64::from).collect()),
            DType::I8 => Ok(self.to_i8_vec()?.into_iter().map(i64::from).collect()),
            DType::U8 => Ok(self.to_u8_vec()?.into_iter().map(i64::from).collect()),
            DType::Bool => Ok(self.to_bool_vec()?.into_iter().map(i64::from).collect()),
            other => Err(IrError::DTypeMismatch {
                expected: DType::I64,
                found: other,
            }),
        }
    }

    /// Checks that the byte count matches element type and shape.
    pub fn check_len(&self) -> Result<(), IrError> {
        let want = self.dtype.storage_bytes(self.len());
        let have = match &self.storage {
            Storage::Owned(b) => b.len(),
            Storage::Mapped { len, .. } => *len,
            Storage::Absent => return Ok(()),
        };
        if want == have {
            Ok(())
        } else {
            Err(IrError::BadConstant(format!(
                "{}{:?} needs {want} bytes, has {have}",
                self.dtype, self.shape
            )))
        }
    }

    fn expect_dtype(&self, dtype: DType) -> Result<(), IrError> {
        if self.dtype == dtype {
            Ok(())
        } else {
            Err(IrError::DTypeMismatch {
                expected: dtype,
                found: self.dtype,
            })
        }
    }
}
