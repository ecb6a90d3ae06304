//! Decoding ONNX `TensorProto`s into IR tensors.

use std::sync::Arc;

use m4c_ir::{DType, Storage, Tensor};
use tract_onnx::pb::TensorProto;

/// ONNX `TensorProto.DataType` codes m4c understands.
pub fn dtype_from_onnx(code: i32) -> Result<DType, String> {
    Ok(match code {
        1 => DType::F32,
        2 => DType::U8,
        3 => DType::I8,
        6 => DType::I32,
        7 => DType::I64,
        9 => DType::Bool,
        10 => DType::F16,
        16 => DType::BF16,
        21 => DType::U4,
        22 => DType::I4,
        other => {
            return Err(format!(
                "element type {} is not supported",
                onnx_type_name(other)
            ))
        }
    })
}

/// The ONNX name of a data type code, for messages.
pub fn onnx_type_name(code: i32) -> String {
    let name = match code {
        0 => "UNDEFINED",
        1 => "FLOAT",
        2 => "UINT8",
        3 => "INT8",
        4 => "UINT16",
        5 => "INT16",
        6 => "INT32",
        7 => "INT64",
        8 => "STRING",
        9 => "BOOL",
        10 => "FLOAT16",
        11 => "DOUBLE",
        12 => "UINT32",
        13 => "UINT64",
        14 => "COMPLEX64",
        15 => "COMPLEX128",
        16 => "BFLOAT16",
        21 => "UINT4",
        22 => "INT4",
        _ => return format!("code {code}"),
    };
    name.to_string()
}

/// The static shape of a tensor proto.
pub fn dims(t: &TensorProto) -> Result<Vec<usize>, String> {
    t.dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d}")))
        .collect()
}

/// The element count of `shape`; an error when it (or its size in bits,
/// which [`DType::storage_bytes`] computes) overflows.
pub fn elements(shape: &[usize]) -> Result<usize, String> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|n| n.checked_mul(64).is_some())
        .ok_or_else(|| format!("shape {shape:?} has more elements than memory can address"))
}

/// Decodes a tensor held inline in the protobuf (raw or typed fields).
/// `raw` overrides `t.raw_data` when the payload is referenced in place.
pub fn decode(t: &TensorProto, raw: Option<Storage>) -> Result<Tensor, String> {
    let dtype = dtype_from_onnx(t.data_type)?;
    let shape = dims(t)?;
    let n = elements(&shape)?;
    let tensor = if let Some(storage) = raw {
        Tensor {
            dtype,
            shape,
            storage,
        }
    } else if !t.raw_data.is_empty() || n == 0 {
        Tensor {
            dtype,
            shape,
            storage: Storage::Owned(Arc::from(t.raw_data.as_slice())),
        }
    } else {
        let bytes: Vec<u8> = match dtype {
            DType::F32 => t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::I64 => t.int64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::I32 => t.int32_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::I8 => t.int32_data.iter().map(|&v| v as i8 as u8).collect(),
            DType::U8 => t.int32_data.iter().map(|&v| v as u8).collect(),
            DType::Bool => t.int32_data.iter().map(|&v| u8::from(v != 0)).collect(),
            DType::F16 | DType::BF16 => t
                .int32_data
                .iter()
                .flat_map(|&v| (v as u16).to_le_bytes())
                .collect(),
            DType::I4 | DType::U4 => t.int32_data.iter().map(|&v| v as u8).collect(),
        };
        Tensor::from_bytes(dtype, &shape, bytes)
    };
    tensor.check_len().map_err(|e| e.to_string())?;
    Ok(tensor)
}
