//! `m4c bench --backend npu --trace T.json`: one run as a Chrome/Perfetto
//! trace (a JSON array of events, times in µs). Parts and layers are laid
//! end to end in execution order on one timeline: NPU layers on the
//! "NPU" track (simulated cycles at the config's clock), the conversions
//! into and out of NPU parts on the "boundary" track (estimated), the
//! CPU-fallback parts on the "CPU" track (measured host time).

use serde_json::{json, Value as Json};

use super::figures::NpuReport;
use m4c_runtime::exec::npu::PartEngine;

/// Thread ids of the tracks.
const NPU: u32 = 1;
const BOUNDARY: u32 = 2;
const CPU: u32 = 3;

/// The trace events of report `r`: track names (`"ph":"M"`), then one
/// complete event (`"ph":"X"`) per layer, conversion and fallback part.
pub fn events(r: &NpuReport) -> Vec<Json> {
    let mut events: Vec<Json> = [(NPU, "NPU"), (BOUNDARY, "boundary"), (CPU, "CPU")]
        .into_iter()
        .map(|(tid, name)| {
            json!({"ph": "M", "name": "thread_name", "pid": 1, "tid": tid, "args": {"name": name}})
        })
        .collect();
    let us = |cycles: u64| cycles as f64 / r.clock_mhz;
    let mut now = 0.0f64;
    let mut push = |tid: u32, name: &str, cat: &str, dur: f64, args: Json| {
        events.push(json!({
            "ph": "X", "name": name, "cat": cat, "pid": 1, "tid": tid,
            "ts": now, "dur": dur, "args": args,
        }));
        now += dur;
    };
    for p in &r.parts {
        if p.engine != PartEngine::Npu {
            let Some(f) = r.fallback.iter().find(|f| f.part == p.part) else {
                continue;
            };
            let args = json!({"part": p.part, "engine": p.engine, "onnx_nodes": f.onnx_nodes, "reasons": f.reasons});
            push(
                CPU,
                &f.values.join(" "),
                "cpu-fallback",
                p.seconds * 1e6,
                args,
            );
            continue;
        }
        if p.quantize_cycles > 0 {
            let args = json!({"part": p.part, "cycles": p.quantize_cycles});
            push(
                BOUNDARY,
                "quantize",
                "boundary",
                us(p.quantize_cycles),
                args,
            );
        }
        for row in r.layers.iter().filter(|l| l.figures.part == p.part) {
            let l = &row.figures;
            let args = json!({
                "part": l.part, "kernel": l.kernel, "cycles": l.cycles, "macs": l.macs,
                "onnx_node": row.onnx_node, "sqnr_db": row.sqnr_db.filter(|x| x.is_finite()),
            });
            push(NPU, &l.name, &l.kernel, us(l.cycles), args);
        }
        if p.dequantize_cycles > 0 {
            let args = json!({"part": p.part, "cycles": p.dequantize_cycles});
            push(
                BOUNDARY,
                "dequantize",
                "boundary",
                us(p.dequantize_cycles),
                args,
            );
        }
    }
    events
}
