//! Perfetto / Chrome trace JSON: one track per engine, one slice per instruction.

use crate::isa::Engine;
use serde_json::{json, Value};

/// One executed instruction on the timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// The engine that ran it.
    pub engine: Engine,
    /// Instruction index in the program.
    pub index: usize,
    /// Its mnemonic.
    pub name: &'static str,
    /// Start cycle.
    pub start: u64,
    /// Cycles.
    pub cycles: u64,
}

/// Renders events as a Chrome trace (`chrome://tracing`, ui.perfetto.dev);
/// timestamps are microseconds at `clock_mhz`.
pub fn chrome_trace(events: &[TraceEvent], clock_mhz: f64) -> Value {
    let mut out: Vec<Value> = Engine::ALL
        .iter()
        .map(|e| json!({"name": "thread_name", "ph": "M", "pid": 0, "tid": e.index(), "args": {"name": e.name()}}))
        .collect();
    out.extend(events.iter().map(|ev| {
        json!({
            "name": ev.name, "ph": "X", "pid": 0, "tid": ev.engine.index(),
            "ts": ev.start as f64 / clock_mhz, "dur": ev.cycles as f64 / clock_mhz,
            "args": {"index": ev.index, "start_cycle": ev.start, "cycles": ev.cycles},
        })
    }));
    json!({"traceEvents": out, "displayTimeUnit": "ns"})
}
