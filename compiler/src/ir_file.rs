//! IR files: what `m4c opt -o OUT.ir` writes and every command that takes
//! a model reads. `OUT.ir` is the textual IR (`m4c_ir::text`); constants
//! too large to print inline are `weight`s whose bytes go to a sidecar
//! file `OUT.ir.weights`:
//!
//! ```text
//! magic "M4CIRW01" | u64 LE index length | JSON index | data
//! index: [{"name": …, "offset": …, "len": …}, …]   (offsets into data, 64-byte aligned)
//! ```
//!
//! The sidecar is memory-mapped on load; every entry is checked against
//! the file's length and the constant's declared type before use.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use m4c_ir::{Graph, Storage, ValueDef};

use crate::bundle::write_atomically;

const MAGIC: &[u8; 8] = b"M4CIRW01";
const ALIGN: usize = 64;

/// Why an IR file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IrFileError {
    #[error("{path}: {msg}")]
    Bad { path: PathBuf, msg: String },
    #[error(transparent)]
    Write(#[from] crate::bundle::BuildError),
}

fn bad(path: &Path, msg: impl Into<String>) -> IrFileError {
    IrFileError::Bad {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    offset: u64,
    len: u64,
}

/// True for paths `load` reads: the `.ir` extension.
pub fn is_ir_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "ir")
}

/// The sidecar holding `ir`'s weights.
pub fn weights_path(ir: &Path) -> PathBuf {
    let mut name = ir.as_os_str().to_owned();
    name.push(".weights");
    PathBuf::from(name)
}

/// Writes `graph` to `path` (text) and, when it has weights that are not
/// printed inline, their bytes to the sidecar; both atomically, neither
/// over one of `inputs` (the command's input files).
pub fn save(path: &Path, inputs: &[&Path], graph: &Graph) -> Result<(), IrFileError> {
    let text = m4c_ir::text::print(graph);
    let printed = m4c_ir::text::parse(&text, &HashMap::new())
        .map_err(|e| bad(path, format!("the printed IR does not parse: {e}")))?;
    // The printer orders values its own way (inputs, constants, nodes):
    // weights are matched by name, not position.
    let referenced: HashSet<&str> = printed
        .values
        .iter()
        .filter(|p| matches!(&p.def, ValueDef::Const(t) if matches!(t.storage, Storage::Absent)))
        .map(|p| p.name.as_str())
        .collect();
    let mut index = vec![];
    let mut data: Vec<u8> = vec![];
    for v in &graph.values {
        let ValueDef::Const(t) = &v.def else {
            continue;
        };
        if !referenced.contains(v.name.as_str()) {
            continue;
        }
        let bytes = t
            .bytes()
            .map_err(|e| bad(path, format!("weight `{}`: {e}", v.name)))?;
        data.resize(data.len().next_multiple_of(ALIGN), 0);
        index.push(Entry {
            name: v.name.clone(),
            offset: data.len() as u64,
            len: bytes.len() as u64,
        });
        data.extend_from_slice(bytes);
    }
    let sidecar = weights_path(path);
    m4c_runtime::outfile::check(path, inputs, false).map_err(crate::bundle::BuildError::from)?;
    m4c_runtime::outfile::check(&sidecar, inputs, false)
        .map_err(crate::bundle::BuildError::from)?;
    if !index.is_empty() {
        let json = serde_json::to_vec(&index).map_err(|e| bad(path, e.to_string()))?;
        let mut file = Vec::with_capacity(16 + json.len() + data.len());
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&(json.len() as u64).to_le_bytes());
        file.extend_from_slice(&json);
        file.resize(file.len().next_multiple_of(ALIGN), 0);
        file.extend_from_slice(&data);
        write_atomically(&sidecar, inputs, &file)?;
    }
    write_atomically(path, inputs, text.as_bytes())?;
    Ok(())
}

/// Reads an IR file (and its sidecar, when its text has `weight`s) and
/// verifies the graph.
pub fn load(path: &Path) -> Result<Graph, IrFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| bad(path, e.to_string()))?;
    let mut graph =
        m4c_ir::text::parse(&text, &HashMap::new()).map_err(|e| bad(path, e.to_string()))?;
    let absent: Vec<usize> = graph
        .values
        .iter()
        .enumerate()
        .filter(
            |(_, v)| matches!(&v.def, ValueDef::Const(t) if matches!(t.storage, Storage::Absent)),
        )
        .map(|(i, _)| i)
        .collect();
    if !absent.is_empty() {
        let sidecar = weights_path(path);
        let (map, ranges) = read_sidecar(&sidecar)?;
        for i in absent {
            let v = &mut graph.values[i];
            let ValueDef::Const(t) = &mut v.def else {
                continue;
            };
            let range = ranges
                .get(&v.name)
                .ok_or_else(|| bad(&sidecar, format!("no bytes for weight `{}`", v.name)))?;
            // The shape comes from the text: its size is computed checked,
            // and only when it can fit the bytes at all.
            let len = range.len();
            let want = t
                .shape
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .filter(|&n| n <= len.saturating_mul(2).saturating_add(1))
                .map(|n| t.dtype.storage_bytes(n));
            if want != Some(len) {
                return Err(bad(
                    &sidecar,
                    format!(
                        "weight `{}` has {len} bytes, not what {}{:?} needs",
                        v.name, t.dtype, t.shape
                    ),
                ));
            }
            t.storage = Storage::Mapped {
                map: Arc::clone(&map),
                offset: range.start,
                len,
                file: true,
            };
        }
    }
    graph.verify().map_err(|e| bad(path, e.to_string()))?;
    Ok(graph)
}

/// A mapped sidecar and each weight's byte range in it.
type Sidecar = (Arc<memmap2::Mmap>, HashMap<String, std::ops::Range<usize>>);

/// Maps the sidecar and checks its index: every entry inside the data,
/// names unique.
fn read_sidecar(path: &Path) -> Result<Sidecar, IrFileError> {
    let file = std::fs::File::open(path).map_err(|e| bad(path, e.to_string()))?;
    let meta = file.metadata().map_err(|e| bad(path, e.to_string()))?;
    if !meta.is_file() {
        return Err(bad(path, "not a regular file"));
    }
    // SAFETY: the map is read-only and only read through slices checked
    // against its length below; m4c writes sidecars by renaming a new file
    // into place, so a sidecar it wrote is never modified while mapped.
    let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| bad(path, e.to_string()))?);
    if map.len() < 16 || &map[..8] != MAGIC {
        return Err(bad(path, "not an m4c IR weights file (bad magic)"));
    }
    let mut le = [0u8; 8];
    le.copy_from_slice(&map[8..16]); // map.len() >= 16, checked above
    let json_len = u64::from_le_bytes(le);
    let json_end = 16u64
        .checked_add(json_len)
        .filter(|&e| e <= map.len() as u64)
        .ok_or_else(|| bad(path, "index runs past the end of the file"))?
        as usize;
    let index: Vec<Entry> =
        serde_json::from_slice(&map[16..json_end]).map_err(|e| bad(path, format!("index: {e}")))?;
    let data = json_end.next_multiple_of(ALIGN);
    let mut out = HashMap::with_capacity(index.len());
    for e in index {
        let start = (data as u64).checked_add(e.offset);
        let end = start.and_then(|s| s.checked_add(e.len));
        let (Some(start), Some(end)) = (start, end) else {
            return Err(bad(path, format!("weight `{}`: range overflows", e.name)));
        };
        if end > map.len() as u64 {
            return Err(bad(
                path,
                format!("weight `{}` runs past the end of the file", e.name),
            ));
        }
        if out
            .insert(e.name.clone(), start as usize..end as usize)
            .is_some()
        {
            return Err(bad(path, format!("weight `{}` is listed twice", e.name)));
        }
    }
    Ok((map, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use m4c_ir::{DType, Op, Tensor, TensorType};

    fn graph() -> Graph {
        let mut g = Graph::new("t");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[1, 64]));
        let w: Vec<f32> = (0..64 * 8).map(|i| i as f32 * 0.25).collect();
        let w = g.add_const("w", Tensor::from_f32(&[64, 8], &w));
        let y = g.add_node(
            Op::MatMul {
                trans_a: false,
                trans_b: false,
            },
            &[x, w],
            "y",
        );
        g.outputs.push(y.unwrap());
        g
    }

    #[test]
    fn round_trips_weights_through_the_sidecar() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.ir");
        let g = graph();
        save(&path, &[], &g).unwrap();
        assert!(weights_path(&path).exists());
        let back = load(&path).unwrap();
        assert_eq!(m4c_ir::text::print(&back), m4c_ir::text::print(&g));
        let (ValueDef::Const(a), ValueDef::Const(b)) = (&g.values[1].def, &back.values[1].def)
        else {
            panic!("not constants")
        };
        assert_eq!(a.bytes().unwrap(), b.bytes().unwrap());
    }

    /// A constant added after a node: the printer lists constants before
    /// nodes, so printed and in-memory value orders differ (found on a
    /// 5-layer ViT whose optimised IR lost 14 of 76 weights).
    #[test]
    fn weights_defined_after_nodes_are_saved() {
        let mut g = graph();
        let y = g.outputs.pop().unwrap();
        let w2: Vec<f32> = (0..8 * 16).map(|i| i as f32 - 3.0).collect();
        let w2 = g.add_const("w2", Tensor::from_f32(&[8, 16], &w2));
        let z = g
            .add_node(
                Op::MatMul {
                    trans_a: false,
                    trans_b: false,
                },
                &[y, w2],
                "z",
            )
            .unwrap();
        g.outputs.push(z);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.ir");
        save(&path, &[], &g).unwrap();
        let back = load(&path).unwrap();
        for name in ["w", "w2"] {
            let find = |g: &Graph| {
                let v = g.values.iter().find(|v| v.name == name).unwrap();
                let ValueDef::Const(t) = &v.def else {
                    panic!("{name}")
                };
                t.bytes().unwrap().to_vec()
            };
            assert_eq!(find(&g), find(&back), "{name}");
        }
    }

    #[test]
    fn refuses_a_missing_or_corrupt_sidecar() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.ir");
        save(&path, &[], &graph()).unwrap();
        let sidecar = weights_path(&path);
        let mut bytes = std::fs::read(&sidecar).unwrap();
        bytes.truncate(bytes.len() - 4);
        std::fs::write(&sidecar, &bytes).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("runs past the end"), "{err}");
        std::fs::write(&sidecar, b"garbage!").unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("bad magic"));
        std::fs::remove_file(&sidecar).unwrap();
        assert!(load(&path)
            .unwrap_err()
            .to_string()
            .contains("m.ir.weights"));
    }
}
