//! Cycle costs of instructions on each engine.

use super::exec::Effect;
use super::memory::Mem;
use crate::config::{Dataflow, MachineConfig, FMAP_BASE};
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

/// The data phase of a DMA engine's latest transfer.
#[derive(Clone, Copy, Debug, Default)]
struct Transfer {
    /// First cycle of the data phase.
    start: u64,
    /// Cycle after the last byte.
    end: u64,
    /// Average bytes per cycle it was granted.
    rate: f64,
}

/// Timing state carried between instructions.
#[derive(Clone, Copy, Debug, Default)]
pub struct History {
    /// The matrix unit's previous fold.
    pub matrix: MatrixHistory,
    /// DMA-in's and DMA-out's latest transfers.
    dma: [Transfer; 2],
}

impl History {
    /// Cycles of a DMA transfer of `bytes` on engine `which` (0 in, 1 out)
    /// issued at `start`. With a shared DRAM bandwidth, a transfer that
    /// overlaps the other engine's earlier one gets only the bandwidth that
    /// one leaves (first come, first served), then its own full rate.
    fn dma(&mut self, config: &MachineConfig, which: usize, start: u64, bytes: u64) -> u64 {
        let dma = [&config.dma_in, &config.dma_out][which];
        let own = dma.bytes_per_cycle as f64;
        let data_start = start + dma.latency_cycles as u64;
        let other = self.dma[1 - which];
        let mut data_cycles = match config.dram_bytes_per_cycle {
            Some(shared) => {
                let fast = own.min(shared as f64);
                let slow = (shared as f64 - other.rate).clamp(0.0, fast);
                // Rate phases from `data_start`: full until the other's data
                // phase, the leftover during it, full again after it.
                let phases = [(other.start, fast), (other.end, slow), (u64::MAX, fast)];
                let (mut t, mut left) = (data_start, bytes as f64);
                for (until, rate) in phases {
                    if until <= t || rate == 0.0 {
                        t = t.max(until);
                        continue;
                    }
                    let need = (left / rate).ceil() as u64;
                    if need <= until - t {
                        t += need;
                        left = 0.0;
                        break;
                    }
                    left -= rate * (until - t) as f64;
                    t = until;
                }
                debug_assert!(left <= 0.0);
                t - data_start
            }
            None => bytes.div_ceil(dma.bytes_per_cycle as u64),
        };
        data_cycles = data_cycles.max(u64::from(bytes > 0));
        self.dma[which] = Transfer {
            start: data_start,
            end: data_start + data_cycles,
            rate: bytes as f64 / data_cycles.max(1) as f64,
        };
        dma.latency_cycles as u64 + data_cycles
    }
}

/// Cycles of a DMA transfer of `bytes` between a local SRAM and the fmap
/// SRAM window: its own path, so it neither takes nor waits for DRAM
/// bandwidth (and leaves the DRAM transfer history alone).
fn window_dma(config: &MachineConfig, bytes: u64) -> u64 {
    let dma = &config.fmap_dma;
    u64::from(dma.latency_cycles) + bytes.div_ceil(u64::from(dma.bytes_per_cycle.max(1)))
}

/// The elements of a `rows × cols` block given by instruction fields
/// (negative fields count as empty; the product saturates).
fn area(rows: i64, cols: i64) -> u64 {
    (rows.max(0) as u64).saturating_mul(cols.max(0) as u64)
}

/// A lower bound of the cycles `instr` occupies its engine, from its fields
/// alone (before it runs): its data over the engine's widest path. The
/// cycle budget is checked against it so that one instruction with a huge
/// amount of work is refused instead of executed.
pub fn lower_bound(instr: &Instr, config: &MachineConfig) -> u64 {
    let per = |work: u64, lanes: u32| work.div_ceil(u64::from(lanes.max(1)));
    match *instr {
        Instr::Ld {
            dram,
            rows,
            row_bytes,
            ..
        }
        | Instr::St {
            dram,
            rows,
            row_bytes,
            ..
        } => {
            let path = if dram >= i64::from(FMAP_BASE) {
                &config.fmap_dma
            } else if matches!(instr, Instr::Ld { .. }) {
                &config.dma_in
            } else {
                &config.dma_out
            };
            per(area(rows, row_bytes), path.bytes_per_cycle)
        }
        Instr::Matmul { m, .. } => m.max(0) as u64,
        Instr::Requant { rows, cols, .. }
        | Instr::Vcopy { rows, cols, .. }
        | Instr::Vlut { rows, cols, .. }
        | Instr::Vbin { rows, cols, .. }
        | Instr::Vred { rows, cols, .. } => per(area(rows, cols), config.vector_lanes),
        Instr::Vsfu { rows, cols, .. } => per(area(rows, cols), config.sfu_lanes),
        _ => 0,
    }
}

/// The host work simulating `instr` takes, in units of roughly one
/// element operation, from its fields alone and independent of the machine
/// config: one unit per element a vector or special-function lane
/// computes, per 64 bytes a DMA or `vcopy` moves, per 64 multiply-
/// accumulates of the matrix unit (a vectorised step of the host). The
/// work budget is checked against it before the instruction runs, so a
/// config with a huge `vector_lanes` or `bytes_per_cycle` (which makes
/// the cycle budget meaningless) cannot make a short program run for hours.
pub fn work(instr: &Instr) -> u64 {
    match *instr {
        Instr::Ld {
            rows, row_bytes, ..
        }
        | Instr::St {
            rows, row_bytes, ..
        } => area(rows, row_bytes).div_ceil(64),
        Instr::Vcopy { rows, cols, .. } => area(rows, cols).div_ceil(64),
        Instr::Matmul { m, k, n, .. } => area(m, k).saturating_mul(n.max(0) as u64).div_ceil(64),
        Instr::Requant { rows, cols, .. }
        | Instr::Vlut { rows, cols, .. }
        | Instr::Vbin { rows, cols, .. }
        | Instr::Vred { rows, cols, .. }
        | Instr::Vsfu { rows, cols, .. } => area(rows, cols),
        // Configuration and synchronisation: bounded by the instruction budget.
        _ => 0,
    }
}

/// Cycles `instr` occupies its engine, starting at `start`.
pub fn cost(
    instr: &Instr,
    fx: &Effect,
    config: &MachineConfig,
    mode: TimingMode,
    start: u64,
    state: &mut History,
) -> u64 {
    let history = &mut state.matrix;
    let (r, c) = (config.array_rows as u64, config.array_cols as u64);
    let vector =
        |ops: u64| config.vector_latency_cycles as u64 + ops.div_ceil(config.vector_lanes as u64);
    match instr {
        Instr::Ld {
            rows, row_bytes, ..
        }
        | Instr::St {
            rows, row_bytes, ..
        } => {
            let bytes = (*rows * *row_bytes) as u64;
            if fx
                .reads
                .iter()
                .chain(&fx.writes)
                .any(|r| r.mem == Mem::Fmap)
            {
                window_dma(config, bytes)
            } else {
                let engine = usize::from(matches!(instr, Instr::St { .. }));
                state.dma(config, engine, start, bytes)
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::memory::Region;

    #[test]
    fn dma_engines_share_dram_bandwidth_first_come_first_served() {
        let config = MachineConfig {
            dram_bytes_per_cycle: Some(48),
            ..MachineConfig::edge_small()
        };
        let mut h = History::default();
        // DMA-in: 100 latency + 3200 B at 32 B/cycle, data in [100, 200).
        assert_eq!(h.dma(&config, 0, 0, 3200), 200);
        // DMA-out issued at 50: data from 150; 16 B/cycle left until 200
        // (800 B), then 32 B/cycle for the remaining 2400 B (75 cycles).
        assert_eq!(h.dma(&config, 1, 50, 3200), 100 + 50 + 75);
        // Unshared DRAM: both at full rate.
        let config = MachineConfig {
            dram_bytes_per_cycle: None,
            ..config
        };
        let mut h = History::default();
        h.dma(&config, 0, 0, 3200);
        assert_eq!(h.dma(&config, 1, 50, 3200), 200);
    }

    /// The cycles of a `ld` (or `st`) of one `bytes`-byte row whose DRAM
    /// side is `mem`, issued at `start`; checks the budget's lower bound.
    fn transfer(h: &mut History, st: bool, mem: Mem, start: u64, bytes: u64) -> u64 {
        let config = MachineConfig::edge_small();
        let dram = if mem == Mem::Fmap {
            FMAP_BASE.into()
        } else {
            0
        };
        let (space, sram, rows, row_bytes) = (0, 0, 1, bytes as i64);
        let side = Region {
            mem,
            base: 0,
            rows: 1,
            row_len: bytes,
            stride: 0,
        };
        let (instr, fx) = if st {
            let fx = Effect {
                writes: vec![side],
                ..Effect::default()
            };
            (
                Instr::St {
                    space,
                    sram,
                    dram,
                    rows,
                    row_bytes,
                },
                fx,
            )
        } else {
            let fx = Effect {
                reads: vec![side],
                ..Effect::default()
            };
            (
                Instr::Ld {
                    space,
                    sram,
                    dram,
                    rows,
                    row_bytes,
                },
                fx,
            )
        };
        let cycles = cost(&instr, &fx, &config, TimingMode::Full, start, h);
        assert!(lower_bound(&instr, &config) <= cycles);
        cycles
    }

    #[test]
    fn window_transfers_neither_take_nor_wait_for_dram_bandwidth() {
        // edge-small: DRAM 32 B/cycle shared by both engines, 100-cycle
        // latency; fmap window 64 B/cycle, 10-cycle latency.
        let mut h = History::default();
        // DMA-out stores 64000 B to the window at 0: 10 + 1000 cycles.
        assert_eq!(transfer(&mut h, true, Mem::Fmap, 0, 64000), 1010);
        // DMA-in loads 3200 B from DRAM meanwhile at the full DRAM rate.
        assert_eq!(transfer(&mut h, false, Mem::Dram, 1, 3200), 100 + 100);
        // DMA-in then loads 64000 B from the window: data in [211, 1211).
        assert_eq!(transfer(&mut h, false, Mem::Fmap, 201, 64000), 1010);
        // DMA-out's DRAM store, data in [1110, 1210), is not slowed by it.
        assert_eq!(transfer(&mut h, true, Mem::Dram, 1010, 3200), 100 + 100);
        // Control: two DRAM transfers still share. DMA-out stores 6400 B
        // from 1210 (data in [1310, 1510) at all 32 B/cycle); DMA-in's load
        // at 1211 (data from 1311) gets nothing until 1510, then 100 cycles.
        assert_eq!(transfer(&mut h, true, Mem::Dram, 1210, 6400), 100 + 200);
        assert_eq!(
            transfer(&mut h, false, Mem::Dram, 1211, 3200),
            100 + 199 + 100
        );
    }
}
