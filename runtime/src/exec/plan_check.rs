//! Validating the CPU backend's code plan against the module's IR and the
//! code's sections before any of it is loaded or called: everything the
//! device's executor (`m4c-cpu-device`) later trusts without checking —
//! buffer references, output extents, GEMM operands and packed weights,
//! kernel symbols, arena and scratch sizes, loop extents. A plan that
//! passes can still hold wrong numbers only where the generated code alone
//! knows them (how far each kernel reads past a buffer's start); that is
//! why native code is loaded only from signed bundles (`docs/SECURITY.md`).

use m4c_cpu_device::{
    BufRef, GemmManifest, GraphPlan, Manifest as CodePlan, Region, Step, TensorSpec,
};
use m4c_ir::{Graph, ValueId};

use crate::bundle::format::CodeEntry;

/// Largest activation arena a plan may ask for (64 GiB): the planner's
/// peak for any model this runtime hosts is far below.
const MAX_ARENA_BYTES: usize = 64 << 30;

/// Largest per-thread scratch a kernel may ask for (1 GiB).
const MAX_SCRATCH_BYTES: usize = 1 << 30;

/// Region sizes of one plan, in bytes.
struct Regions {
    arena: usize,
    weights: usize,
    inputs: Vec<usize>,
}

impl Regions {
    fn size(&self, region: Region) -> Result<usize, String> {
        match region {
            Region::Arena => Ok(self.arena),
            Region::Weights => Ok(self.weights),
            Region::Input(i) => self.inputs.get(i).copied().ok_or_else(|| {
                format!(
                    "the plan refers to input {i}, the graph has {} inputs",
                    self.inputs.len()
                )
            }),
        }
    }

    /// `bytes` bytes at `buf` lie inside its region.
    fn holds(&self, what: &str, buf: BufRef, bytes: usize) -> Result<(), String> {
        let size = self.size(buf.region)?;
        match buf.offset.checked_add(bytes) {
            Some(end) if end <= size => Ok(()),
            _ => Err(format!(
                "{what}: {bytes} bytes at offset {} of {:?} pass its end ({size} bytes)",
                buf.offset, buf.region
            )),
        }
    }
}

/// Bytes of a tensor spec, with its element size checked against its type.
fn spec_bytes(s: &TensorSpec) -> Result<usize, String> {
    let dtype: m4c_ir::DType = s.dtype.parse()?;
    if s.elem_bytes != dtype.size_bits().div_ceil(8) {
        return Err(format!(
            "`{}` is {} but has {}-byte elements",
            s.name, s.dtype, s.elem_bytes
        ));
    }
    s.shape
        .iter()
        .try_fold(s.elem_bytes, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("`{}`: size overflows", s.name))
}

/// A C identifier a plan may name as a kernel.
fn is_symbol(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The plan must be a graph plan for the entry's target whose inputs and
/// outputs are the graph's (names, element types, shapes, places), whose
/// every buffer reference lies in its region, whose kernels are named by C
/// identifiers and GEMMs by the plan's GEMM table, whose GEMM operands fit
/// their regions and packed weights the `code-weights` section, and whose
/// arena, scratch and loop extents are bounded.
pub(super) fn check_plan(
    plan: &CodePlan,
    entry: &CodeEntry,
    graph: &Graph,
    weights_len: usize,
) -> Result<(), String> {
    if plan.target != entry.target || plan.cpu != entry.cpu {
        return Err(format!(
            "the plan is for {} ({}), the manifest says {} ({})",
            plan.target, plan.cpu, entry.target, entry.cpu
        ));
    }
    let g = plan.graph.as_ref().ok_or("the plan holds no graph")?;
    check_interface("input", &g.inputs, &graph.inputs, graph)?;
    check_interface("output", &g.outputs, &graph.outputs, graph)?;
    if g.arena_bytes > MAX_ARENA_BYTES {
        return Err(format!(
            "the plan asks for a {} byte arena (at most {MAX_ARENA_BYTES})",
            g.arena_bytes
        ));
    }
    if !weights_len.is_multiple_of(4) {
        return Err(format!(
            "code-weights has {weights_len} bytes, not a whole number of f32"
        ));
    }
    let regions = Regions {
        arena: g.arena_bytes,
        weights: weights_len,
        inputs: g.inputs.iter().map(spec_bytes).collect::<Result<_, _>>()?,
    };
    for (i, s) in g.inputs.iter().enumerate() {
        if s.buf.region != Region::Input(i) || s.buf.offset != 0 {
            return Err(format!(
                "input `{}` is expected at {:?}+{}, not where the caller puts it",
                s.name, s.buf.region, s.buf.offset
            ));
        }
    }
    for s in &g.outputs {
        regions.holds(&format!("output `{}`", s.name), s.buf, spec_bytes(s)?)?;
    }
    for gemm in &plan.gemms {
        check_gemm(gemm, weights_len)?;
    }
    let max_extent = max_elements(graph).max(1);
    for (n, step) in g.steps.iter().enumerate() {
        check_step(n, step, plan, g, &regions, max_extent)?;
    }
    Ok(())
}

/// The plan's inputs or outputs are the graph's, in order.
fn check_interface(
    what: &str,
    specs: &[TensorSpec],
    ids: &[ValueId],
    graph: &Graph,
) -> Result<(), String> {
    if specs.len() != ids.len() {
        return Err(format!(
            "the code has {} {what}s, the IR {}",
            specs.len(),
            ids.len()
        ));
    }
    for (s, &id) in specs.iter().zip(ids) {
        let v = graph.value(id);
        let same = s.name == v.name
            && s.dtype == v.ty.dtype.name()
            && v.ty.static_shape().as_deref() == Some(&s.shape[..]);
        if !same {
            return Err(format!(
                "{what} `{}` is {}{:?} in the code but {} `{}` in the IR",
                s.name, s.dtype, s.shape, v.ty, v.name
            ));
        }
    }
    Ok(())
}

/// A GEMM's packed B matches its shape and lies in `code-weights`.
fn check_gemm(g: &GemmManifest, weights_len: usize) -> Result<(), String> {
    let err = |msg: String| Err(format!("kernel `{}`: {msg}", g.symbol));
    if !is_symbol(&g.symbol) || !is_symbol(g.function()) {
        return err("its symbol is not a C identifier".into());
    }
    let p = &g.packed_b;
    if p.k != g.k || p.n != g.n || p.panel_width == 0 {
        return err(format!(
            "B is packed as {}x{} in panels of {}, the GEMM is {}x{}x{}",
            p.k, p.n, p.panel_width, g.m, g.k, g.n
        ));
    }
    if g.scratch_floats
        .checked_mul(4)
        .is_none_or(|b| b > MAX_SCRATCH_BYTES)
    {
        return err(format!("{} floats of scratch", g.scratch_floats));
    }
    let end =
        p.n.div_ceil(p.panel_width)
            .checked_mul(p.k)
            .and_then(|f| f.checked_mul(p.panel_width))
            .and_then(|len| len.checked_add(g.weights_offset))
            .and_then(|floats| floats.checked_mul(4));
    match end {
        Some(end) if end <= weights_len => Ok(()),
        _ => err(format!(
            "its packed B (from float {}) passes the end of code-weights ({weights_len} bytes)",
            g.weights_offset
        )),
    }
}

/// One step: symbols, buffers, extents, scratch; GEMM operands in bounds
/// and C, which it writes, in the arena apart from A.
fn check_step(
    n: usize,
    step: &Step,
    plan: &CodePlan,
    g: &GraphPlan,
    regions: &Regions,
    max_extent: usize,
) -> Result<(), String> {
    let at = |msg: String| format!("step {n} of {}: {msg}", g.steps.len());
    match step {
        Step::Kernel {
            symbol,
            buffers,
            extent,
            scratch_bytes,
            ..
        } => {
            if !is_symbol(symbol) {
                return Err(at(format!(
                    "kernel symbol {symbol:?} is not a C identifier"
                )));
            }
            if *extent > max_extent {
                return Err(at(format!(
                    "kernel `{symbol}` loops {extent} times, more than the largest tensor has elements ({max_extent})"
                )));
            }
            if *scratch_bytes > MAX_SCRATCH_BYTES {
                return Err(at(format!(
                    "kernel `{symbol}` asks for {scratch_bytes} bytes of scratch"
                )));
            }
            for (i, &b) in buffers.iter().enumerate() {
                regions
                    .holds(&format!("kernel `{symbol}` buffer {i}"), b, 0)
                    .map_err(at)?;
            }
            Ok(())
        }
        Step::Gemm { symbol, a, c } => {
            let gemm = plan
                .gemms
                .iter()
                .find(|x| &x.symbol == symbol)
                .ok_or_else(|| at(format!("GEMM `{symbol}` is not in the plan's GEMM table")))?;
            let floats = |rows: usize, cols: usize| {
                rows.checked_mul(cols)
                    .and_then(|f| f.checked_mul(4))
                    .ok_or_else(|| at(format!("GEMM `{symbol}`: size overflows")))
            };
            let (a_bytes, c_bytes) = (floats(gemm.m, gemm.k)?, floats(gemm.m, gemm.n)?);
            regions
                .holds(&format!("GEMM `{symbol}` A"), *a, a_bytes)
                .map_err(at)?;
            regions
                .holds(&format!("GEMM `{symbol}` C"), *c, c_bytes)
                .map_err(at)?;
            if c.region != Region::Arena {
                return Err(at(format!(
                    "GEMM `{symbol}` writes C into {:?}, not the arena",
                    c.region
                )));
            }
            let apart = a.region != Region::Arena
                || a.offset + a_bytes <= c.offset
                || c.offset + c_bytes <= a.offset;
            if !apart {
                return Err(at(format!("GEMM `{symbol}`: C overlaps A")));
            }
            Ok(())
        }
    }
}

/// Elements of the graph's largest statically shaped value: no loop of a
/// kernel of it runs longer.
fn max_elements(graph: &Graph) -> usize {
    graph
        .values
        .iter()
        .filter_map(|v| v.ty.static_shape())
        .map(|s| s.iter().try_fold(1usize, |n, &d| n.checked_mul(d)))
        .map(|n| n.unwrap_or(usize::MAX))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_c_identifiers() {
        assert!(is_symbol("k_3_softmax") && is_symbol("_x9"));
        for bad in ["", "9k", "a-b", "a b", "system;", &"a".repeat(300)] {
            assert!(!is_symbol(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_buffer_past_its_region_is_refused() {
        let r = Regions {
            arena: 64,
            weights: 0,
            inputs: vec![16],
        };
        let at = |region, offset| BufRef { region, offset };
        assert!(r.holds("x", at(Region::Arena, 32), 32).is_ok());
        assert!(r.holds("x", at(Region::Arena, 33), 32).is_err());
        assert!(r.holds("x", at(Region::Arena, usize::MAX), 2).is_err());
        assert!(r.holds("x", at(Region::Input(1), 0), 0).is_err());
        assert!(r.holds("x", at(Region::Weights, 1), 0).is_err());
    }
}
