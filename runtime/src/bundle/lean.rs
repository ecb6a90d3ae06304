//! Weights stored once: the IR constants a module's CPU code already holds
//! in its `code-weights` section ([`super::format::CodeWeight`]). The
//! compiler finds them ([`find_code_weights`], each match verified byte for
//! byte); the reader checks each entry ([`resolve`]) and the interpreter
//! gets the tensor in place (layout `bytes`) or unpacked from the GEMM
//! panels when it first needs the module ([`unpack`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;

use m4c_cpu_device::{Manifest as CodePlan, PackedPanels, Region, Step};
use m4c_ir::{DType, Graph, Storage, Tensor, ValueDef};
use memmap2::Mmap;

use super::format::{CodeWeight, CodeWeightLayout, ALIGN};

/// The backend whose code's weights a bundle may read IR weights from.
pub const CPU_BACKEND: &str = "cpu";

/// The weights among `candidates` (IR constant name → tensor) that the CPU
/// code with plan `plan` (its `code-plan` section) stores in `weights`
/// (its `code-weights` section, named `section`): constants the kernels
/// read as they are, and GEMM operands packed in panels whose unpacking
/// gives the constant's exact bytes. Constants found nowhere are left out.
/// A found constant's mapped pages are given back once compared
/// ([`Tensor::release_pages`]), so that a bundle writer does not hold the
/// model's weights beside the code's.
pub fn find_code_weights(
    plan: &[u8],
    weights: &[u8],
    section: &str,
    candidates: &BTreeMap<String, &Tensor>,
) -> Result<BTreeMap<String, CodeWeight>, String> {
    let plan: CodePlan = serde_json::from_slice(plan).map_err(|e| format!("code-plan: {e}"))?;
    // Candidates by byte length: (name, tensor, bytes).
    type Candidate<'a> = (&'a str, &'a Tensor, &'a [u8]);
    let mut by_len: BTreeMap<usize, Vec<Candidate>> = BTreeMap::new();
    for (name, t) in candidates {
        if let Ok(bytes) = t.bytes() {
            if !bytes.is_empty() {
                by_len
                    .entry(bytes.len())
                    .or_default()
                    .push((name, t, bytes));
            }
        }
    }
    let entry = |t: &Tensor, offset: usize, layout| CodeWeight {
        dtype: t.dtype.to_string(),
        layout,
        offset: offset as u64,
        section: section.to_string(),
        shape: t.shape.clone(),
    };
    let mut found = BTreeMap::new();
    // Constants the kernels read in place start where a kernel buffer of
    // the weights region starts and end within the cache line before the
    // next thing in the weights (or their end).
    let starts: BTreeSet<usize> = plan
        .graph
        .iter()
        .flat_map(|g| &g.steps)
        .flat_map(|s| match s {
            Step::Kernel { buffers, .. } => buffers.as_slice(),
            Step::Gemm { .. } => &[],
        })
        .filter(|b| {
            b.region == Region::Weights
                && b.offset.is_multiple_of(ALIGN)
                && b.offset < weights.len()
        })
        .map(|b| b.offset)
        .collect();
    // Where anything placed in the weights starts (packed GEMM operands
    // too), and their end.
    let bounds: BTreeSet<usize> = starts
        .iter()
        .copied()
        .chain(
            plan.gemms
                .iter()
                .filter_map(|g| g.weights_offset.checked_mul(4)),
        )
        .chain([weights.len()])
        .collect();
    for &start in &starts {
        let Some(&end) = bounds.range(start + 1..).next() else {
            continue;
        };
        let span = end - start;
        for (_, list) in by_len.range(span.saturating_sub(ALIGN - 1)..=span) {
            for &(name, t, bytes) in list {
                if !found.contains_key(name)
                    && weights.get(start..start + bytes.len()) == Some(bytes)
                {
                    found.insert(name.to_string(), entry(t, start, CodeWeightLayout::Bytes));
                    // Compared in full: a compiler's build need not keep
                    // the model's pages of it.
                    t.release_pages();
                }
            }
        }
    }
    for g in &plan.gemms {
        let p = g.packed_b;
        let at = g.weights_offset.checked_mul(4);
        let len = p.len().checked_mul(4);
        let Some(packed) = at
            .filter(|a| a.is_multiple_of(ALIGN))
            .zip(len)
            .and_then(|(a, l)| weights.get(a..a.checked_add(l)?))
        else {
            continue;
        };
        let bytes = p.k.checked_mul(p.n).and_then(|e| e.checked_mul(4));
        let Some(list) = bytes.and_then(|len| by_len.get(&len)) else {
            continue;
        };
        for &(name, t, bytes) in list {
            if found.contains_key(name) || t.dtype != DType::F32 {
                continue;
            }
            let matched = [false, true].into_iter().find(|&transposed| {
                panels_shape_ok(&t.shape, &p, transposed) && p.holds(packed, bytes, transposed)
            });
            if let Some(transposed) = matched {
                let layout = CodeWeightLayout::Panels {
                    packed: p,
                    transposed,
                };
                found.insert(name.to_string(), entry(t, g.weights_offset * 4, layout));
                t.release_pages();
                break;
            }
        }
    }
    Ok(found)
}

/// Whether `shape` is B (`k × n`) or, `transposed`, Bᵀ (`n × k`) of `p`,
/// after leading 1s.
fn panels_shape_ok(shape: &[usize], p: &PackedPanels, transposed: bool) -> bool {
    let want = if transposed { [p.n, p.k] } else { [p.k, p.n] };
    shape.len() >= 2
        && shape[shape.len() - 2..] == want
        && shape[..shape.len() - 2].iter().all(|&d| d == 1)
}

/// A code weight the reader accepted: either a mapped tensor, or a range
/// of the map to unpack when the interpreter needs the module.
pub(crate) enum Resolved {
    Mapped(Tensor),
    Packed {
        range: Range<usize>,
        packed: PackedPanels,
        transposed: bool,
    },
}

/// Checks `w` against its section (`section`: the section's byte range in
/// the map) and gives where its bytes are; every error is one line.
pub(crate) fn resolve(
    map: &Arc<Mmap>,
    section: Range<usize>,
    w: &CodeWeight,
) -> Result<Resolved, String> {
    let dtype: DType = w.dtype.parse()?;
    let offset = usize::try_from(w.offset).map_err(|_| "offset too large".to_string())?;
    if !offset.is_multiple_of(ALIGN) {
        return Err(format!("offset {offset} is not a multiple of {ALIGN}"));
    }
    let elements = w.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let (len, tail) = match w.layout {
        CodeWeightLayout::Bytes => (
            elements
                .and_then(|n| n.checked_mul(dtype.size_bits()))
                .map(|bits| bits.div_ceil(8)),
            None,
        ),
        CodeWeightLayout::Panels { packed, transposed } => {
            if dtype != DType::F32 {
                return Err(format!("packed panels hold f32, not {dtype}"));
            }
            if !panels_shape_ok(&w.shape, &packed, transposed) || packed.panel_width == 0 {
                return Err(format!(
                    "shape {:?} is not that of panels {}x{} (width {}, transposed: {transposed})",
                    w.shape, packed.k, packed.n, packed.panel_width
                ));
            }
            let floats = packed
                .k
                .checked_mul(packed.panel_width)
                .and_then(|x| x.checked_mul(packed.panels()));
            (
                floats.and_then(|f| f.checked_mul(4)),
                Some((packed, transposed)),
            )
        }
    };
    let end = len.and_then(|l| offset.checked_add(l));
    let Some(end) = end.filter(|&e| e <= section.len()) else {
        return Err(format!(
            "{} bytes at offset {offset} extend past its section ({} bytes)",
            len.map_or("too many".to_string(), |l| l.to_string()),
            section.len()
        ));
    };
    let range = section.start + offset..section.start + end;
    Ok(match tail {
        None => Resolved::Mapped(Tensor {
            dtype,
            shape: w.shape.clone(),
            storage: Storage::Mapped {
                map: Arc::clone(map),
                offset: range.start,
                len: range.len(),
                // A bundle's map may be anonymous memory (`Bundle::from_bytes`).
                file: false,
            },
        }),
        Some((packed, transposed)) => Resolved::Packed {
            range,
            packed,
            transposed,
        },
    })
}

/// `graph` with its packed constants replaced by their unpacked tensors
/// (copies); the shapes are the graph's, checked against the panels by
/// [`resolve`] when the bundle was opened.
pub(crate) fn materialize(
    graph: &Graph,
    map: &Mmap,
    packed: &[PackedConstant],
) -> Result<Graph, String> {
    let mut g = graph.clone();
    for p in packed {
        let value = &mut g.values[p.value];
        let bytes = p
            .packed
            .unpack(&map[p.range.clone()], p.transposed)
            .map_err(|e| format!("weight %{}: {e}", value.name))?;
        let ValueDef::Const(t) = &mut value.def else {
            return Err(format!("weight %{} is not a constant", value.name));
        };
        t.storage = Storage::Owned(Arc::from(bytes));
    }
    Ok(g)
}

/// A constant of a module's graph left absent at open, unpacked from the
/// code's panels when the interpreter needs the module.
#[derive(Clone, Debug)]
pub(crate) struct PackedConstant {
    pub value: usize,
    pub range: Range<usize>,
    pub packed: PackedPanels,
    pub transposed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// A plan whose kernel reads a constant at weights offset 0 and whose
    /// GEMM (k = 2, n = 3, panels of 2) has B packed at byte 64.
    fn plan() -> Vec<u8> {
        let gemm = serde_json::json!({
            "symbol": "g", "m": 1, "k": 2, "n": 3, "accumulate": false,
            "packed_b": {"k": 2, "n": 3, "panel_width": 2},
            "weights_offset": 16, "scratch_floats": 0,
            "tile_rows": 1, "k_block": 2, "m_block": 1
        });
        let kernel = serde_json::json!({"Kernel": {
            "symbol": "k", "buffers": [{"region": "Weights", "offset": 0}],
            "extent": 1, "scratch_bytes": 0, "parallel": false
        }});
        serde_json::to_vec(&serde_json::json!({
            "target": "x86_64-avx2", "cpu": "", "object": "k.o", "library": null,
            "weights": "w.bin", "gemms": [gemm],
            "graph": {"arena_bytes": 0, "naive_arena_bytes": 0, "inputs": [],
                      "outputs": [], "steps": [kernel]}
        }))
        .unwrap()
    }

    #[test]
    fn finds_constants_in_place_and_packed_and_reads_them_back() {
        let bias = [1.0f32, 2.0, 3.0];
        // Bᵀ (3 × 2) of B = [[1, 2, 3], [4, 5, 6]].
        let bt = [1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0];
        let packed = PackedPanels {
            k: 2,
            n: 3,
            panel_width: 2,
        };
        let mut weights = le(&bias);
        weights.resize(64, 0);
        weights.extend(le(&[1.0, 2.0, 4.0, 5.0, 3.0, 0.0, 6.0, 0.0]));
        let t_bias = Tensor::from_f32(&[3], &bias);
        let t_bt = Tensor::from_f32(&[3, 2], &bt);
        let other = Tensor::from_f32(&[3], &[9.0, 9.0, 9.0]);
        let candidates = BTreeMap::from([
            ("bias".to_string(), &t_bias),
            ("bt".to_string(), &t_bt),
            ("other".to_string(), &other),
        ]);
        let found = find_code_weights(&plan(), &weights, "m.t", &candidates).unwrap();
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found["bias"].layout, CodeWeightLayout::Bytes);
        assert_eq!(
            found["bt"].layout,
            CodeWeightLayout::Panels {
                packed,
                transposed: true
            }
        );
        let mut map = memmap2::MmapMut::map_anon(weights.len()).unwrap();
        map.copy_from_slice(&weights);
        let map = Arc::new(map.make_read_only().unwrap());
        let Resolved::Mapped(t) = resolve(&map, 0..weights.len(), &found["bias"]).unwrap() else {
            panic!("bias is used in place")
        };
        assert_eq!(t.bytes().unwrap(), le(&bias));
        let Resolved::Packed { range, .. } = resolve(&map, 0..weights.len(), &found["bt"]).unwrap()
        else {
            panic!("Bᵀ is packed")
        };
        assert_eq!(packed.unpack(&map[range], true).unwrap(), le(&bt));
    }

    #[test]
    fn hostile_descriptors_are_errors() {
        let map = Arc::new(
            memmap2::MmapMut::map_anon(128)
                .unwrap()
                .make_read_only()
                .unwrap(),
        );
        let w = |layout, shape: Vec<usize>, offset| CodeWeight {
            dtype: "f32".into(),
            layout,
            offset,
            section: "s".into(),
            shape,
        };
        let huge = PackedPanels {
            k: usize::MAX / 2,
            n: 3,
            panel_width: usize::MAX / 2,
        };
        let cases = [
            (
                w(CodeWeightLayout::Bytes, vec![usize::MAX, 2], 0),
                "too many",
            ),
            (
                w(CodeWeightLayout::Bytes, vec![4], u64::MAX),
                "is not a multiple",
            ),
            (w(CodeWeightLayout::Bytes, vec![64], 0), "extend past"),
            (
                w(
                    CodeWeightLayout::Panels {
                        packed: huge,
                        transposed: false,
                    },
                    vec![huge.k, 3],
                    0,
                ),
                "extend past",
            ),
        ];
        for (cw, want) in cases {
            let err = resolve(&map, 0..128, &cw).err().unwrap();
            assert!(err.contains(want), "{err}");
        }
    }
}
