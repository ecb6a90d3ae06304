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
        /// The map is of a file, not of anonymous memory: its pages can
        /// be given back and read again ([`Tensor::release_pages`]).
        file: bool,
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

    /// Tells the OS that this process no longer needs the tensor's bytes
    /// resident: called once a weight has been copied or packed into the
    /// compiled code, so that a build holds the model's pages or the
    /// packed copy of a weight, not both. Only a mapped tensor has pages to
    /// give back (whole 64 KiB blocks inside its range, aligned for every
    /// page size Linux uses); its bytes stay in the file and a later read
    /// brings them back unchanged. Advice only: where it is refused,
    /// nothing changes.
    pub fn release_pages(&self) {
        const BLOCK: usize = 64 << 10;
        #[cfg(unix)]
        if let Storage::Mapped {
            map,
            offset,
            len,
            file: true,
        } = &self.storage
        {
            let start = offset.next_multiple_of(BLOCK);
            let end = (offset + len) / BLOCK * BLOCK;
            if end > start {
                // SAFETY: `map` is a read-only `Mmap` of a file (`file`), whose
                // start is page aligned, so `start..end` covers whole pages
                // of it. MADV_DONTNEED on such a mapping only drops this
                // process's page-table entries for them; the next read of
                // any byte there faults the same file contents back in, so
                // every slice of the map (held anywhere) keeps reading the
                // same values. (Writable or anonymous maps, where the advice
                // would discard data, never reach here.)
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
            }
        }
    }

    /// Whether both tensors' bytes are one storage (the same owned buffer,
    /// or the same range of the same map), so that they are equal without
    /// reading them: checks of large models compare this first.
    pub fn shares_storage(&self, other: &Tensor) -> bool {
        match (&self.storage, &other.storage) {
            (Storage::Owned(a), Storage::Owned(b)) => Arc::ptr_eq(a, b),
            (
                Storage::Mapped {
                    map: a,
                    offset: oa,
                    len: la,
                    ..
                },
                Storage::Mapped {
                    map: b,
                    offset: ob,
                    len: lb,
                    ..
                },
            ) => Arc::ptr_eq(a, b) && (oa, la) == (ob, lb),
            _ => false,
        }
    }

    /// The raw little-endian bytes.
    pub fn bytes(&self) -> Result<&[u8], IrError> {
        match &self.storage {
            Storage::Owned(b) => Ok(b),
            Storage::Mapped {
                map, offset, len, ..
            } => Ok(&map[*offset..*offset + *len]),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mapped(map: &Arc<memmap2::Mmap>, file: bool) -> Tensor {
        Tensor {
            dtype: DType::U8,
            shape: vec![map.len()],
            storage: Storage::Mapped {
                map: map.clone(),
                offset: 0,
                len: map.len(),
                file,
            },
        }
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[test]
    fn a_released_file_weight_reads_back_unchanged() {
        let data = pattern(1 << 20);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        // SAFETY: a private temporary nobody else writes.
        let map = Arc::new(unsafe { memmap2::Mmap::map(f.as_file()) }.unwrap());
        let t = mapped(&map, true);
        assert_eq!(t.bytes().unwrap(), &data[..]);
        t.release_pages();
        assert_eq!(t.bytes().unwrap(), &data[..]);
    }

    #[test]
    fn anonymous_maps_are_never_released() {
        // MADV_DONTNEED would zero these pages: `file: false` must keep
        // them, as bundles read from memory use such maps.
        let data = pattern(1 << 20);
        let mut m = memmap2::MmapMut::map_anon(data.len()).unwrap();
        m.copy_from_slice(&data);
        let map = Arc::new(m.make_read_only().unwrap());
        let t = mapped(&map, false);
        t.release_pages();
        assert_eq!(t.bytes().unwrap(), &data[..]);
    }

    #[test]
    fn shared_storage_is_seen_without_reading() {
        let a = Tensor::from_bytes(DType::U8, &[3], vec![1, 2, 3]);
        let b = a.clone();
        let c = Tensor::from_bytes(DType::U8, &[3], vec![1, 2, 3]);
        assert!(a.shares_storage(&b));
        assert!(!a.shares_storage(&c));
    }
}
