//! `.npz` input/output files: arrays keyed by ONNX value names.

use std::collections::BTreeMap;

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use m4c_ops::Value;
use ndarray::{ArrayD, IxDyn, ShapeBuilder};
use ndarray_npy::NpzWriter;

use crate::input_file::{memory_budget, open_regular};

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

/// All arrays of an `.npz` file by name (f32, i64, i32, i8, bool), plain
/// or compressed (`np.savez_compressed`), within the default memory budget
/// ([`crate::input_file::memory_budget`]).
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, Value>, NpzError> {
    read_npz_within(path, memory_budget())
}

/// [`read_npz`] with an explicit budget: the arrays together may hold at
/// most `budget` bytes. Each header is checked against its entry's size and
/// the budget before its data is read or allocated.
pub fn read_npz_within(path: &Path, budget: u64) -> Result<BTreeMap<String, Value>, NpzError> {
    let file_err = |msg: String| NpzError::File {
        path: path.to_path_buf(),
        msg,
    };
    let file = open_regular(path).map_err(|e| file_err(e.to_string()))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| file_err(format!("not a valid .npz ({e})")))?;
    let mut out = BTreeMap::new();
    let mut left = budget;
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| file_err(format!("entry #{i}: {e}")))?;
        let raw_name = entry.name().to_string();
        let name = raw_name
            .strip_suffix(".npy")
            .unwrap_or(&raw_name)
            .to_string();
        let arr_err = |msg: String| NpzError::Array {
            path: path.to_path_buf(),
            name: name.clone(),
            msg,
        };
        let size = entry.size();
        let (value, bytes) = read_npy_from(&mut entry, size, left).map_err(arr_err)?;
        left -= bytes;
        out.insert(name, value);
    }
    Ok(out)
}

/// The single array of a `.npy` file, within the default memory budget.
pub fn read_npy(path: &Path) -> Result<Value, NpzError> {
    let file_err = |msg: String| NpzError::File {
        path: path.to_path_buf(),
        msg,
    };
    let file = open_regular(path).map_err(|e| file_err(e.to_string()))?;
    let len = file.metadata().map_err(|e| file_err(e.to_string()))?.len();
    read_npy_from(&mut BufReader::new(file), len, memory_budget())
        .map(|(v, _)| v)
        .map_err(file_err)
}

/// Element types `.npy` data may hold.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Elem {
    F32,
    I64,
    I32,
    I8,
    U8,
    Bool,
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::F32 | Elem::I32 => 4,
            Elem::I64 => 8,
            Elem::I8 | Elem::U8 | Elem::Bool => 1,
        }
    }
}

/// A parsed `.npy` header.
#[derive(Debug, PartialEq)]
struct NpyHeader {
    elem: Elem,
    big_endian: bool,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// The longest header accepted (numpy writes a few hundred bytes).
const MAX_HEADER_BYTES: usize = 1 << 16;

/// Reads one `.npy` stream whose total length (header and data) is `len`
/// bytes: the header, then checks its claimed size against `len` and
/// `budget` before allocating. Returns the array and its data size.
fn read_npy_from(r: &mut impl Read, len: u64, budget: u64) -> Result<(Value, u64), String> {
    let mut fixed = [0u8; 10];
    r.read_exact(&mut fixed[..8])
        .map_err(|_| "not a .npy array (shorter than its header)".to_string())?;
    if &fixed[..6] != b"\x93NUMPY" {
        return Err("not a .npy array (bad magic)".into());
    }
    let (header_len, prefix) = match fixed[6] {
        1 => {
            r.read_exact(&mut fixed[8..10])
                .map_err(|_| "truncated .npy header")?;
            (usize::from(u16::from_le_bytes([fixed[8], fixed[9]])), 10)
        }
        2 | 3 => {
            let mut n = [0u8; 4];
            r.read_exact(&mut n).map_err(|_| "truncated .npy header")?;
            (u32::from_le_bytes(n) as usize, 12)
        }
        v => return Err(format!(".npy format version {v} is not supported")),
    };
    if header_len > MAX_HEADER_BYTES {
        return Err(format!(
            ".npy header of {header_len} bytes (at most {MAX_HEADER_BYTES})"
        ));
    }
    let mut text = vec![0u8; header_len];
    r.read_exact(&mut text)
        .map_err(|_| "truncated .npy header")?;
    let text = std::str::from_utf8(&text).map_err(|_| ".npy header is not text")?;
    let h = parse_header(text)?;
    let n = h
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("shape {:?} overflows", h.shape))?;
    let bytes = n
        .checked_mul(h.elem.size())
        .ok_or_else(|| format!("shape {:?} overflows", h.shape))? as u64;
    let held = len.saturating_sub((prefix + header_len) as u64);
    if bytes != held {
        return Err(format!(
            "header claims shape {:?} ({bytes} bytes of data) but the array holds {held} bytes",
            h.shape
        ));
    }
    if bytes > budget {
        return Err(format!(
            "{bytes} bytes of data exceed the memory budget ({budget} bytes left)"
        ));
    }
    // The entry's declared size may lie (deflated data is only known once
    // inflated): reserve at most 64 MiB up front and grow with what is read.
    let mut data = Vec::with_capacity(bytes.min(1 << 26) as usize);
    r.take(bytes)
        .read_to_end(&mut data)
        .map_err(|e| e.to_string())?;
    if data.len() as u64 != bytes {
        return Err(format!(
            "truncated: {} of {bytes} bytes of data",
            data.len()
        ));
    }
    Ok((to_value(&h, &data)?, bytes))
}

/// Parses the Python-literal dictionary of a `.npy` header.
fn parse_header(text: &str) -> Result<NpyHeader, String> {
    let after = |key: &str| -> Result<&str, String> {
        let at = text
            .find(&format!("'{key}'"))
            .ok_or_else(|| format!(".npy header has no '{key}'"))?;
        let rest = text[at + key.len() + 2..].trim_start();
        Ok(rest.strip_prefix(':').unwrap_or(rest).trim_start())
    };
    let descr = after("descr")?;
    let quote = descr.chars().next().filter(|c| *c == '\'' || *c == '"');
    let descr = quote
        .and_then(|q| descr[1..].split(q).next())
        .ok_or(".npy header: 'descr' is not a string")?;
    // The byte-order marks are ASCII, so slicing past one is on a char
    // boundary (a header's text is arbitrary UTF-8).
    let (big_endian, code) = match descr.chars().next() {
        Some('>') => (true, &descr[1..]),
        Some('<' | '|' | '=') => (false, &descr[1..]),
        _ => (false, descr),
    };
    let elem = match code {
        "f4" => Elem::F32,
        "i8" => Elem::I64,
        "i4" => Elem::I32,
        "i1" => Elem::I8,
        "u1" => Elem::U8,
        "b1" => Elem::Bool,
        _ => {
            return Err(format!(
            "element type '{descr}' not supported (use float32, int64, int32, int8, uint8 or bool)"
        ))
        }
    };
    let fortran_order = match after("fortran_order")? {
        s if s.starts_with("True") => true,
        s if s.starts_with("False") => false,
        _ => return Err(".npy header: 'fortran_order' is not True or False".into()),
    };
    let shape = after("shape")?;
    let inner = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or(".npy header: 'shape' is not a tuple")?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|d| {
            d.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| format!(".npy header: bad dimension '{d}'"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NpyHeader {
        elem,
        big_endian,
        fortran_order,
        shape,
    })
}

/// The array of `data` laid out as the header says.
fn to_value(h: &NpyHeader, data: &[u8]) -> Result<Value, String> {
    fn array<T, const N: usize>(
        h: &NpyHeader,
        data: &[u8],
        le: fn([u8; N]) -> T,
        be: fn([u8; N]) -> T,
    ) -> Result<ArrayD<T>, String>
    where
        T: Clone,
    {
        let decode = if h.big_endian { be } else { le };
        let v: Vec<T> = data
            .chunks_exact(N)
            .map(|c| {
                let mut b = [0u8; N];
                b.copy_from_slice(c); // chunks_exact(N): c.len() == N
                decode(b)
            })
            .collect();
        let shape = IxDyn(&h.shape);
        let a = if h.fortran_order {
            ArrayD::from_shape_vec(shape.f(), v)
        } else {
            ArrayD::from_shape_vec(shape, v)
        };
        a.map(|a| a.as_standard_layout().into_owned())
            .map_err(|e| format!("data does not fill shape {:?}: {e}", h.shape))
    }
    Ok(match h.elem {
        Elem::F32 => Value::F32(array(h, data, f32::from_le_bytes, f32::from_be_bytes)?),
        Elem::I64 => Value::I64(array(h, data, i64::from_le_bytes, i64::from_be_bytes)?),
        Elem::I32 => Value::I32(array(h, data, i32::from_le_bytes, i32::from_be_bytes)?),
        Elem::I8 => Value::I8(array(h, data, i8::from_le_bytes, i8::from_be_bytes)?),
        Elem::U8 => Value::U8(array(h, data, u8::from_le_bytes, u8::from_be_bytes)?),
        Elem::Bool => {
            if let Some(b) = data.iter().find(|&&b| b > 1) {
                return Err(format!("bool array holds the byte {b}"));
            }
            let bytes = array(h, data, u8::from_le_bytes, u8::from_be_bytes)?;
            Value::Bool(bytes.mapv(|b| b == 1))
        }
    })
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
                Value::U8(a) => npz.add_array(name.as_str(), a),
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
            (
                "q".to_string(),
                Value::U8(ArrayD::from_shape_vec(vec![2], vec![0, 255]).unwrap()),
            ),
        ];
        write_npz(&path, &[], &arrays).unwrap();
        let back = read_npz(&path).unwrap();
        assert_eq!(back.len(), 4);
        assert!(matches!(&back["q"], Value::U8(a) if a.as_slice().unwrap() == [0, 255]));
        assert!(matches!(&back["ids"], Value::I64(a) if a.as_slice().unwrap() == [3, 4]));
        assert!(matches!(&back["mask"], Value::Bool(a) if a.as_slice().unwrap() == [true, false]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Found by the `npz` fuzz target: a type string starting with a
    /// multi-byte character was split inside it (a panic).
    #[test]
    fn non_ascii_type_string_is_an_error() {
        let header = "{'descr': '\u{359}f4', 'fortran_order': False, 'shape': (1,), }";
        let err = parse_header(header).unwrap_err();
        assert!(err.contains("not supported"), "{err}");
        let header = "{'descr': '>\u{359}', 'fortran_order': False, 'shape': (1,), }";
        assert!(parse_header(header).is_err());
    }

    #[test]
    fn garbage_file_is_a_clear_error() {
        let path = std::env::temp_dir().join(format!("m4c-bad-{}.npz", std::process::id()));
        std::fs::write(&path, b"not a zip").unwrap();
        let err = read_npz(&path).unwrap_err().to_string();
        assert!(err.contains("not a valid .npz"), "{err}");
        std::fs::remove_file(&path).unwrap();
    }

    /// An `.npy` stream: header dict `dict`, then `data`.
    fn npy(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut header = dict.to_string();
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    /// An `.npz` with the given entries, deflated or stored.
    fn npz(path: &Path, entries: &[(&str, Vec<u8>)], deflate: bool) {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        let method = if deflate {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let options = zip::write::SimpleFileOptions::default().compression_method(method);
        for (name, bytes) in entries {
            zip.start_file(*name, options).unwrap();
            std::io::Write::write_all(&mut zip, bytes).unwrap();
        }
        zip.finish().unwrap();
    }

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("m4c-npz-{}-{name}", std::process::id()))
    }

    #[test]
    fn reads_compressed_fortran_and_big_endian_arrays() {
        let path = temp("compressed.npz");
        let f32s: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let be: Vec<u8> = [7i32, -8].iter().flat_map(|v| v.to_be_bytes()).collect();
        let entries = [
            (
                "x.npy",
                npy(
                    "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }",
                    &f32s,
                ),
            ),
            (
                "y.npy",
                npy(
                    "{'descr': '>i4', 'fortran_order': False, 'shape': (2,), }",
                    &be,
                ),
            ),
            (
                "s.npy",
                npy(
                    "{'descr': '|i1', 'fortran_order': False, 'shape': (), }",
                    &[251],
                ),
            ),
        ];
        npz(&path, &entries, true);
        let back = read_npz(&path).unwrap();
        // Column-major [[1, 3, 5], [2, 4, 6]].
        let Value::F32(x) = &back["x"] else { panic!() };
        assert_eq!(x.shape(), &[2, 3]);
        assert_eq!(
            x.iter().copied().collect::<Vec<_>>(),
            [1., 3., 5., 2., 4., 6.]
        );
        assert!(matches!(&back["y"], Value::I32(a) if a.as_slice().unwrap() == [7, -8]));
        assert!(matches!(&back["s"], Value::I8(a) if a.ndim() == 0 && a[[]] == -5));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn huge_claims_are_refused_before_allocating() {
        let path = temp("huge.npz");
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }";
        for deflate in [false, true] {
            npz(&path, &[("x.npy", npy(header, &[0; 16]))], deflate);
            let e = read_npz(&path).unwrap_err().to_string();
            assert!(
                e.contains("array 'x': header claims shape [1099511627776]"),
                "{e}"
            );
            assert!(e.contains("but the array holds 16 bytes"), "{e}");
        }
        let header =
            "{'descr': '<i8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }";
        npz(&path, &[("x.npy", npy(header, &[]))], false);
        let e = read_npz(&path).unwrap_err().to_string();
        assert!(e.contains("overflows"), "{e}");
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }";
        npz(&path, &[("x.npy", npy(header, &[0; 16]))], false);
        let e = read_npz_within(&path, 15).unwrap_err().to_string();
        assert!(e.contains("exceed the memory budget"), "{e}");
        assert!(read_npz_within(&path, 16).is_ok());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn bad_headers_name_the_array() {
        let path = temp("headers.npz");
        for (dict, data, want) in [
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }",
                &[0u8; 8][..],
                "'<f8' not supported",
            ),
            (
                "{'descr': '|b1', 'fortran_order': False, 'shape': (1,), }",
                &[7u8][..],
                "bool array holds the byte 7",
            ),
            (
                "{'fortran_order': False, 'shape': (1,), }",
                &[0u8][..],
                "no 'descr'",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }",
                &[0u8; 4][..],
                "bad dimension '-1'",
            ),
        ] {
            npz(&path, &[("a.npy", npy(dict, data))], false);
            let e = read_npz(&path).unwrap_err().to_string();
            assert!(e.contains("array 'a': ") && e.contains(want), "{e}");
        }
        npz(
            &path,
            &[("a.npy", b"\x93NUMPY\x01\x00\xff".to_vec())],
            false,
        );
        let e = read_npz(&path).unwrap_err().to_string();
        assert!(e.contains("truncated .npy header"), "{e}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn reads_a_single_npy_file() {
        let path = temp("one.npy");
        let data: Vec<u8> = [1i64, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(
            &path,
            npy(
                "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }",
                &data,
            ),
        )
        .unwrap();
        assert!(
            matches!(read_npy(&path).unwrap(), Value::I64(a) if a.as_slice().unwrap() == [1, 2])
        );
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
