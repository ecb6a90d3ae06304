//! Simulation statistics: cycles, utilisation, traffic and energy.

use crate::config::MachineConfig;
use serde::Serialize;
use std::fmt::Write;

/// Busy cycles per engine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EngineCycles {
    /// DMA-in.
    pub ld: u64,
    /// Matrix unit.
    pub mx: u64,
    /// Vector unit.
    pub vx: u64,
    /// DMA-out.
    pub st: u64,
}

/// Everything a simulation measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Cycles from start until every engine finished.
    pub cycles: u64,
    /// Cycles the matrix unit spent in `matmul` instructions.
    pub compute_cycles: u64,
    /// SCALE-Sim's "compute cycles" (index of the last compute cycle, i.e.
    /// `compute_cycles - 1`); present only in SCALE-Sim-compatible mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scalesim_compute_cycles: Option<u64>,
    /// MACs performed / (array PEs x total cycles).
    pub utilization: f64,
    /// MACs performed / (array PEs x compute cycles).
    pub compute_utilization: f64,
    /// Multiply-accumulates of the matrix unit.
    pub macs: u64,
    /// Multiplies of the vector unit (elementwise mul, Q31 mul, depthwise MACs).
    pub vector_macs: u64,
    /// Weight + activation SRAM bytes read.
    pub sram_read_bytes: u64,
    /// Weight + activation SRAM bytes written.
    pub sram_write_bytes: u64,
    /// Accumulator bytes read.
    pub acc_read_bytes: u64,
    /// Accumulator bytes written.
    pub acc_write_bytes: u64,
    /// DRAM bytes read (DMA-in from the DRAM image; not the fmap window).
    pub dram_read_bytes: u64,
    /// DRAM bytes written (DMA-out to the DRAM image; not the fmap window).
    pub dram_write_bytes: u64,
    /// Feature-map SRAM bytes read (DMA-in through the fmap window).
    pub fmap_read_bytes: u64,
    /// Feature-map SRAM bytes written (DMA-out through the fmap window).
    pub fmap_write_bytes: u64,
    /// Vector-lane element operations.
    pub vector_ops: u64,
    /// Special-function-unit evaluations.
    pub sfu_ops: u64,
    /// Energy estimate.
    pub energy_pj: f64,
    /// Wall time at the configured clock.
    pub time_us: f64,
    /// Busy cycles per engine.
    pub engine_busy_cycles: EngineCycles,
    /// Instructions executed, not counting `wait`/`signal`.
    pub instructions: u64,
}

impl Stats {
    /// Fills the derived fields (utilisation, energy, time) from the counts.
    pub fn finish(&mut self, config: &MachineConfig) {
        let pes = config.array_rows as f64 * config.array_cols as f64;
        let ratio = |cycles: u64| {
            if cycles == 0 {
                0.0
            } else {
                self.macs as f64 / (pes * cycles as f64)
            }
        };
        self.utilization = ratio(self.cycles);
        self.compute_utilization = ratio(self.compute_cycles);
        let e = &config.energy;
        self.energy_pj = self.macs as f64 * e.mac_pj
            + self.sram_read_bytes as f64 * e.sram_read_pj_per_byte
            + self.sram_write_bytes as f64 * e.sram_write_pj_per_byte
            + (self.acc_read_bytes + self.acc_write_bytes) as f64 * e.acc_pj_per_byte
            + (self.dram_read_bytes + self.dram_write_bytes) as f64 * e.dram_pj_per_byte
            + (self.fmap_read_bytes + self.fmap_write_bytes) as f64 * e.fmap_pj_per_byte
            + self.vector_ops as f64 * e.vector_op_pj
            + self.sfu_ops as f64 * e.sfu_op_pj;
        self.time_us = self.cycles as f64 / config.clock_mhz;
    }

    /// A human-readable multi-line summary.
    pub fn to_text(&self, config: &MachineConfig) -> String {
        let mut s = String::new();
        let busy = &self.engine_busy_cycles;
        let pct = |c: u64| {
            if self.cycles == 0 {
                0.0
            } else {
                100.0 * c as f64 / self.cycles as f64
            }
        };
        let _ = writeln!(
            s,
            "machine        {} ({}x{} {:?}, {} MHz)",
            config.name, config.array_rows, config.array_cols, config.dataflow, config.clock_mhz
        );
        let _ = writeln!(s, "cycles         {} ({:.2} us)", self.cycles, self.time_us);
        let _ = writeln!(s, "compute cycles {}", self.compute_cycles);
        if let Some(c) = self.scalesim_compute_cycles {
            let _ = writeln!(s, "scalesim compute cycles {c}");
        }
        let _ = writeln!(
            s,
            "utilization    {:.2}% (of compute cycles: {:.2}%)",
            100.0 * self.utilization,
            100.0 * self.compute_utilization
        );
        let _ = writeln!(
            s,
            "MACs           {} (vector unit: {})",
            self.macs, self.vector_macs
        );
        let _ = writeln!(
            s,
            "engine busy    ld {} ({:.1}%), mx {} ({:.1}%), vx {} ({:.1}%), st {} ({:.1}%)",
            busy.ld,
            pct(busy.ld),
            busy.mx,
            pct(busy.mx),
            busy.vx,
            pct(busy.vx),
            busy.st,
            pct(busy.st)
        );
        let _ = writeln!(
            s,
            "SRAM bytes     read {}, written {}",
            self.sram_read_bytes, self.sram_write_bytes
        );
        let _ = writeln!(
            s,
            "acc bytes      read {}, written {}",
            self.acc_read_bytes, self.acc_write_bytes
        );
        let _ = writeln!(
            s,
            "DRAM bytes     read {}, written {}",
            self.dram_read_bytes, self.dram_write_bytes
        );
        // Only for programs that used the fmap window: the reports of all
        // others read as before.
        if self.fmap_read_bytes + self.fmap_write_bytes > 0 {
            let _ = writeln!(
                s,
                "fmap bytes     read {}, written {}",
                self.fmap_read_bytes, self.fmap_write_bytes
            );
        }
        let _ = writeln!(
            s,
            "vector ops     {} (special functions {})",
            self.vector_ops, self.sfu_ops
        );
        let _ = writeln!(s, "energy         {:.3} uJ", self.energy_pj / 1e6);
        let _ = writeln!(s, "instructions   {}", self.instructions);
        s
    }
}
