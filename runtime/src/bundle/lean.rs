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
    // next one (or the end of the weights).
    let starts: BTreeSet<usize> = plan
        .graph
        .iter()
        .flat_map(|g| &g.steps)
        .flat_map(|s| match s {
            Step::Kernel { buffers, .. } => buffers.as_slice(),
            Step::Gemm { .. } => &[],
        })
        .filter(|b| b.region == Region::Weights && b.offset.is_multiple_of(ALIGN))
        .map(|b| b.offset)
        .collect();
    let ends = starts.iter().skip(1).copied().chain([weights.len()]);
    for (&start, end) in starts.iter().zip(ends) {
        let Some(span) = end.checked_sub(start) else {
            continue;
        };
        for (_, list) in by_len.range(span.saturating_sub(ALIGN - 1)..=span) {
            for &(name, t, bytes) in list {
                if !found.contains_key(name) && weights[start..start + bytes.len()] == *bytes {
                    found.insert(name.to_string(), entry(t, start, CodeWeightLayout::Bytes));
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
        let Some(list) = p.k.checked_mul(p.n).and_then(|e| by_len.get(&(e * 4))) else {
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
