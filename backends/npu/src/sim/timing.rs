//! Cycle costs of instructions on each engine.

use super::exec::Effect;
use crate::config::{Dataflow, MachineConfig};
use crate::isa::Instr;

/// Which matrix-unit cycle model to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TimingMode {
    /// The full model: weight preload overlapped with the previous fold.
    #[default]
    Full,
    /// SCALE-Sim v3's per-fold formulas, unchanged (see `crate::scalesim`).
    ScaleSimCompat,
}

/// What the matrix unit did last, for overlapping a weight preload.
#[derive(Clone, Copy, Debug, Default)]
pub struct MatrixHistory {
    /// Cycle the previous matmul ended.
    pub last_end: u64,
    /// Rows streamed by the previous matmul (0 if none).
    pub last_streamed: u64,
}

/// Cycles `instr` occupies its engine, starting at `start`.
pub fn cost(
    instr: &Instr,
    fx: &Effect,
    config: &MachineConfig,
    mode: TimingMode,
    start: u64,
    history: &mut MatrixHistory,
) -> u64 {
    let (r, c) = (config.array_rows as u64, config.array_cols as u64);
    let vector =
        |ops: u64| config.vector_latency_cycles as u64 + ops.div_ceil(config.vector_lanes as u64);
    match instr {
        Instr::Ld {
            rows, row_bytes, ..
        } => {
            let bytes = (*rows * *row_bytes) as u64;
            config.dma_in.latency_cycles as u64
                + bytes.div_ceil(config.dma_in.bytes_per_cycle as u64)
        }
        Instr::St {
            rows, row_bytes, ..
        } => {
            let bytes = (*rows * *row_bytes) as u64;
            config.dma_out.latency_cycles as u64
                + bytes.div_ceil(config.dma_out.bytes_per_cycle as u64)
        }
        Instr::Matmul { .. } => {
            let (m, k, _) = fx.matmul.unwrap_or_default();
            let cycles = match (config.dataflow, mode) {
                // SCALE-Sim WS fold: R cycles of weight preload, M rows streamed,
                // R + C - 2 cycles of skew fill and drain.
                (Dataflow::Ws, TimingMode::ScaleSimCompat) => m + 2 * r + c - 2,
                // Double-buffered PE weight registers: the preload hides behind
                // the previous fold's streaming when the unit did not idle.
                (Dataflow::Ws, TimingMode::Full) => {
                    let back_to_back = history.last_streamed > 0 && start == history.last_end;
                    let exposed = if back_to_back {
                        r.saturating_sub(history.last_streamed)
                    } else {
                        r
                    };
                    history.last_streamed = m;
                    m + r + c - 2 + exposed
                }
                // SCALE-Sim OS fold: K operands streamed plus skew fill/drain.
                (Dataflow::Os, _) => k + r + c - 2,
            };
            history.last_end = start + cycles;
            cycles
        }
        Instr::Requant { .. } | Instr::Vcopy { .. } | Instr::Vbin { .. } => vector(fx.vector_ops),
        // The 256-entry table is first streamed into every lane's LUT.
        Instr::Vlut { .. } => {
            vector(fx.vector_ops) + (config.lut_entries as u64).div_ceil(config.vector_lanes as u64)
        }
        // Rows pipeline through the lanes; one adder/comparator tree drain at the end.
        Instr::Vred { rows, cols, .. } => {
            let per_row = (*cols as u64).div_ceil(config.vector_lanes as u64);
            vector(0) + *rows as u64 * per_row + (config.vector_lanes as u64).ilog2() as u64
        }
        Instr::Vsfu { .. } => {
            config.sfu_latency_cycles as u64 + fx.sfu_ops.div_ceil(config.sfu_lanes as u64)
        }
        Instr::LdCfg { .. }
        | Instr::VbinCfg { .. }
        | Instr::StCfg { .. }
        | Instr::MmCfg { .. }
        | Instr::VecCfg { .. }
        | Instr::RqCfg { .. } => 1,
        Instr::Halt {} | Instr::Barrier {} | Instr::Wait { .. } | Instr::Signal { .. } => 0,
    }
}
