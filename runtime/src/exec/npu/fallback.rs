//! The CPU-fallback parts of an NPU module: each part's IR (checked
//! against its constants) and the CPU backend's code for it, checked by
//! the CPU device against that IR when the module is checked and loaded
//! through it ([`CompiledModule`]); a part without code, or whose code does
//! not load on this host, runs on the reference interpreter with the
//! reason. Also the constants' encoding ([`encode_constants`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use m4c_ir::{DType, Graph, Tensor};
use m4c_npu::module::{CpuCode, ModulePart};
use m4c_ops::Value;

use super::super::compiled::CpuDevice;
use super::super::device::Device;
use super::super::{CompiledModule, Interpreter, ModuleExecutor, Signature};
use super::{PartEngine, PartFigures};
use crate::bundle::format::{CodeEntry, SectionKind};
use crate::bundle::ModuleCode;

/// A fallback part, decoded and checked: its IR and, if compiled, the CPU
/// backend's code for it (checked against that IR by the CPU device).
pub(super) struct FallbackCode {
    graph: Graph,
    cpu: Option<ModuleCode>,
    not_compiled: Option<String>,
}

/// Decodes fallback part `k` (`part`) of `code` from the `code-weights`
/// bytes `store`: its constants, its IR, its CPU code (checked).
pub(super) fn parse(
    code: &ModuleCode,
    k: usize,
    part: &ModulePart,
    store: &[u8],
) -> Result<FallbackCode, String> {
    let ModulePart::Fallback {
        ir,
        constants,
        cpu,
        not_compiled,
        ..
    } = part
    else {
        return Err("not a fallback part".into());
    };
    let constants = decode_constants(constants.of(store)?)?;
    let graph = m4c_ir::text::parse(ir, &constants).map_err(|e| e.to_string())?;
    let cpu = match cpu {
        Some(c) => Some(cpu_code(code, k, c, store, &graph)?),
        None => None,
    };
    Ok(FallbackCode {
        graph,
        cpu,
        not_compiled: not_compiled.clone(),
    })
}

/// The CPU code of fallback part `k` as the CPU device loads it, its
/// library checksum and its plan checked against the part's `graph`.
fn cpu_code(
    code: &ModuleCode,
    k: usize,
    c: &CpuCode,
    store: &[u8],
    graph: &Graph,
) -> Result<ModuleCode, String> {
    let library = c.library.of(store)?;
    if blake3::hash(library).to_hex().as_str() != c.library_blake3 {
        return Err("the CPU library's bytes do not match their checksum".into());
    }
    let entry = CodeEntry {
        cpu: c.tuning.clone(),
        section: format!("{}.fallback{k}", code.entry().section),
        target: c.target.clone(),
    };
    let files = [
        (SectionKind::Code, library),
        (SectionKind::CodePlan, c.plan.of(store)?),
        (SectionKind::CodeWeights, c.weights.of(store)?),
    ];
    let cpu = ModuleCode::from_memory(CpuDevice.name(), entry, &files)?;
    CpuDevice.check(&cpu, graph)?;
    Ok(cpu)
}

/// A fallback part ready to run: compiled CPU code, or the interpreter
/// and why.
pub(super) struct Fallback {
    pub(super) executor: Arc<dyn ModuleExecutor>,
    pub(super) note: Option<String>,
}

impl FallbackCode {
    /// Whether the part has native (CPU) code.
    pub(super) fn is_native(&self) -> bool {
        self.cpu.is_some()
    }
}

/// The engine of fallback part `k` of module `name`: its CPU code loaded
/// through the CPU device (on `threads` threads), else the interpreter
/// with the reason; `refused` (why native code may not be loaded) sends a
/// part with CPU code to the interpreter without loading it.
pub(super) fn load(
    name: &str,
    k: usize,
    f: FallbackCode,
    threads: usize,
    refused: Option<&str>,
) -> Fallback {
    let part = format!("{name}/fallback{k}");
    let signature = Signature::of(&f.graph);
    let note = match (f.cpu, refused) {
        (Some(_), Some(why)) => why.to_string(),
        (Some(code), None) => match CompiledModule::load(&part, &code, signature, threads) {
            Ok(module) => {
                return Fallback {
                    executor: Arc::new(module),
                    note: None,
                }
            }
            Err(e) => format!("its CPU code did not load: {e}"),
        },
        (None, _) => f.not_compiled.unwrap_or_else(|| "no CPU code".into()),
    };
    Fallback {
        executor: Arc::new(Interpreter::new(&part, f.graph)),
        note: Some(note),
    }
}

/// Runs fallback part `index` `reps` times (at least once) on its inputs
/// from `env` and puts its outputs there; its time is the median.
pub(super) fn run(
    index: usize,
    f: &Fallback,
    env: &mut HashMap<String, Value>,
    reps: usize,
) -> Result<PartFigures, String> {
    let sig = f.executor.signature();
    let args = sig
        .inputs
        .iter()
        .map(|(n, _)| {
            env.get(n)
                .cloned()
                .ok_or_else(|| format!("fallback part {index}: `{n}` missing"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut times = vec![];
    let mut results = vec![];
    for _ in 0..reps.max(1) {
        let started = Instant::now();
        results = f
            .executor
            .run(&args)
            .map_err(|e| format!("fallback part {index}: {e}"))?;
        times.push(started.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    for ((name, _), v) in sig.outputs.iter().zip(results) {
        env.insert(name.clone(), v);
    }
    Ok(PartFigures {
        part: index,
        engine: if f.note.is_none() {
            PartEngine::CompiledCpu
        } else {
            PartEngine::Interpreter
        },
        cycles: 0,
        seconds: times[times.len() / 2],
        note: f.note.clone(),
        quantize_cycles: 0,
        dequantize_cycles: 0,
        schedule: None,
    })
}

/// Encodes named constants (a fallback part's weights): per constant
/// its name, element type, shape and bytes, lengths as little-endian
/// `u64`.
pub fn encode_constants(constants: &[(String, &Tensor)]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let put = |b: &[u8], out: &mut Vec<u8>| {
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(b);
    };
    for (name, t) in constants {
        put(name.as_bytes(), &mut out);
        put(t.dtype.name().as_bytes(), &mut out);
        let dims: Vec<u8> = t
            .shape
            .iter()
            .flat_map(|&d| (d as u64).to_le_bytes())
            .collect();
        put(&dims, &mut out);
        put(t.bytes().map_err(|e| format!("`{name}`: {e}"))?, &mut out);
    }
    Ok(out)
}

/// Decodes [`encode_constants`]' bytes, checking every length.
pub fn decode_constants(bytes: &[u8]) -> Result<HashMap<String, Tensor>, String> {
    let mut at = 0usize;
    let take = |at: &mut usize| -> Result<&[u8], String> {
        let len = bytes
            .get(*at..*at + 8)
            .ok_or("constants truncated")?
            .try_into()
            .map(u64::from_le_bytes)
            .map_err(|_| "constants truncated")?;
        let len = usize::try_from(len).map_err(|_| "constant too large")?;
        let start = *at + 8;
        let b = bytes
            .get(start..start.checked_add(len).ok_or("constant too large")?)
            .ok_or("constants truncated")?;
        *at = start + len;
        Ok(b)
    };
    let mut out = HashMap::new();
    while at < bytes.len() {
        let name = String::from_utf8(take(&mut at)?.to_vec()).map_err(|_| "constant name")?;
        let dtype: DType = std::str::from_utf8(take(&mut at)?)
            .map_err(|_| "constant type")?
            .parse()
            .map_err(|_| format!("`{name}`: unknown element type"))?;
        let shape: Vec<usize> = take(&mut at)?
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()) as usize)
            .collect();
        let data = take(&mut at)?.to_vec();
        let t = Tensor::from_bytes(dtype, &shape, data);
        t.check_len().map_err(|e| format!("`{name}`: {e}"))?;
        out.insert(name, t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_round_trip_and_truncations_are_errors() {
        let t = Tensor::from_f32(&[2, 2], &[1.0, -2.0, 3.5, 0.25]);
        let bytes = encode_constants(&[("w".into(), &t)]).unwrap();
        let back = decode_constants(&bytes).unwrap();
        assert_eq!(back["w"].to_f32_vec().unwrap(), [1.0, -2.0, 3.5, 0.25]);
        assert_eq!(back["w"].shape, [2, 2]);
        for cut in [1, 8, 20, bytes.len() - 1] {
            assert!(decode_constants(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = bytes.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_constants(&huge).is_err());
    }
}
