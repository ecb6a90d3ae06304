//! `.npz` input/output files: arrays keyed by ONNX value names.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use m4c_ops::Value;
use ndarray::ArrayD;
use ndarray_npy::{NpzReader, NpzWriter, ReadNpzError};

/// Errors reading or writing `.npz` files; each names the file and array.
#[derive(Debug, thiserror::Error)]
pub enum NpzError {
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("{path}: array '{name}': {msg}")]
    Array {
        path: PathBuf,
        name: String,
        msg: String,
    },
}

/// The key an ONNX value name may also be stored under: characters outside
/// `[A-Za-z0-9_.-]` replaced by `_` (what Python-side tools often write).
pub fn sanitized_key(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// All arrays of an `.npz` file by name (f32, i64, i32, i8, bool).
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, Value>, NpzError> {
    let file_err = |msg: String| NpzError::File {
        path: path.to_path_buf(),
        msg,
    };
    let file = File::open(path).map_err(|e| file_err(e.to_string()))?;
    let mut npz = NpzReader::new(BufReader::new(file))
        .map_err(|e| file_err(format!("not a valid .npz ({e})")))?;
    let names = npz.names().map_err(|e| file_err(e.to_string()))?;
    let mut out = BTreeMap::new();
    for name in names {
        let arr_err = |msg: String| NpzError::Array {
            path: path.to_path_buf(),
            name: name.clone(),
            msg,
        };
        let value = read_any(&mut npz, &name).map_err(arr_err)?;
        out.insert(name, value);
    }
    Ok(out)
}

fn read_any(npz: &mut NpzReader<BufReader<File>>, name: &str) -> Result<Value, String> {
    fn attempt<T: ndarray_npy::ReadableElement>(
        npz: &mut NpzReader<BufReader<File>>,
        name: &str,
    ) -> Result<Option<ArrayD<T>>, String> {
        match npz.by_name::<ndarray::OwnedRepr<T>, ndarray::IxDyn>(name) {
            Ok(a) => Ok(Some(a)),
            Err(ReadNpzError::Npy(ndarray_npy::ReadNpyError::WrongDescriptor(_))) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
    if let Some(a) = attempt::<f32>(npz, name)? {
        return Ok(Value::F32(a));
    }
    if let Some(a) = attempt::<i64>(npz, name)? {
        return Ok(Value::I64(a));
    }
    if let Some(a) = attempt::<i32>(npz, name)? {
        return Ok(Value::I32(a));
    }
    if let Some(a) = attempt::<i8>(npz, name)? {
        return Ok(Value::I8(a));
    }
    if let Some(a) = attempt::<bool>(npz, name)? {
        return Ok(Value::Bool(a));
    }
    Err("element type not supported (use float32, int64, int32, int8 or bool)".into())
}

/// Writes arrays to `path` through [`crate::outfile`] (a private
/// temporary renamed into place; `inputs` may not be overwritten), so a
/// failure leaves no partial output.
pub fn write_npz(
    path: &Path,
    inputs: &[&Path],
    arrays: &[(String, Value)],
) -> Result<(), crate::outfile::OutputError> {
    crate::outfile::write_with(path, inputs, |file| {
        let mut npz = NpzWriter::new(file);
        for (name, v) in arrays {
            let r = match v {
                Value::F32(a) => npz.add_array(name.as_str(), a),
                Value::F16(a) => npz.add_array(name.as_str(), &a.mapv(f32::from)),
                Value::BF16(a) => npz.add_array(name.as_str(), &a.mapv(f32::from)),
                Value::I64(a) => npz.add_array(name.as_str(), a),
                Value::I32(a) => npz.add_array(name.as_str(), a),
                Value::I8(a) => npz.add_array(name.as_str(), a),
                Value::Bool(a) => npz.add_array(name.as_str(), a),
            };
            r.map_err(|e| std::io::Error::other(format!("array '{name}': {e}")))?;
        }
        npz.finish().map(drop).map_err(std::io::Error::other)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_supported_type() {
        let dir = std::env::temp_dir().join(format!("m4c-npz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.npz");
        let arrays = vec![
            (
                "x".to_string(),
                Value::F32(ArrayD::from_shape_vec(vec![2], vec![1.5, -2.0]).unwrap()),
            ),
            (
                "ids".to_string(),
                Value::I64(ArrayD::from_shape_vec(vec![1, 2], vec![3, 4]).unwrap()),
            ),
            (
                "mask".to_string(),
                Value::Bool(ArrayD::from_shape_vec(vec![2], vec![true, false]).unwrap()),
            ),
        ];
        write_npz(&path, &[], &arrays).unwrap();
        let back = read_npz(&path).unwrap();
        assert_eq!(back.len(), 3);
        assert!(matches!(&back["ids"], Value::I64(a) if a.as_slice().unwrap() == [3, 4]));
        assert!(matches!(&back["mask"], Value::Bool(a) if a.as_slice().unwrap() == [true, false]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_file_is_a_clear_error() {
        let path = std::env::temp_dir().join(format!("m4c-bad-{}.npz", std::process::id()));
        std::fs::write(&path, b"not a zip").unwrap();
        let err = read_npz(&path).unwrap_err().to_string();
        assert!(err.contains("not a valid .npz"), "{err}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn sanitizes_like_python_tools() {
        assert_eq!(sanitized_key("onnx::MatMul_12"), "onnx__MatMul_12");
        assert_eq!(
            sanitized_key("past_key_values.0.key"),
            "past_key_values.0.key"
        );
    }
}
