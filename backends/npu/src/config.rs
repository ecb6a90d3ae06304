//! The machine description: array shape and dataflow, memories, engines,
//! clock and energy per action. Loaded from TOML or JSON, or a preset.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// The first DMA address of the on-chip feature-map SRAM's window: an `ld`
/// or `st` whose `dram` field is at or above it reads or writes the fmap
/// SRAM (offset `dram - FMAP_BASE`) instead of the DRAM image, whose
/// addresses (at most 1 GiB) all lie below it.
pub const FMAP_BASE: u32 = 0xC000_0000;

/// The size of the address window from [`FMAP_BASE`] to the end of the
/// 32-bit DMA address space (1 GiB): the largest fmap SRAM a machine may
/// have, and the addresses a program may name before the machine is known.
pub const FMAP_WINDOW_BYTES: u64 = (1 << 32) - FMAP_BASE as u64;

/// Energy of one fmap SRAM byte when a description omits it: twice the
/// edge table's local SRAM read, for a larger array with longer wires
/// (Horowitz's ISSCC 2014 table puts a 1 MB SRAM access at ~5x a 32 KB one).
pub const DEFAULT_FMAP_PJ_PER_BYTE: f64 = 2.4;

/// How the systolic array maps a GEMM (SCALE-Sim's terms).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dataflow {
    /// Output-stationary: M on rows, N on columns, K streams through.
    Os,
    /// Weight-stationary: K on rows, N on columns, M streams through.
    Ws,
}

impl std::str::FromStr for Dataflow {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "os" => Ok(Dataflow::Os),
            "ws" => Ok(Dataflow::Ws),
            _ => Err(format!("unknown dataflow `{s}` (expected `os` or `ws`)")),
        }
    }
}

/// One DMA engine's throughput and fixed latency.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DmaConfig {
    /// Sustained DRAM bytes per cycle.
    pub bytes_per_cycle: u32,
    /// Cycles from issue to the first byte (DRAM latency + descriptor setup).
    pub latency_cycles: u32,
}

/// Energy per action in picojoules (Horowitz/Accelergy-style table).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnergyTable {
    /// One int8 multiply-accumulate in the array.
    pub mac_pj: f64,
    /// Reading one byte of weight/activation SRAM.
    pub sram_read_pj_per_byte: f64,
    /// Writing one byte of weight/activation SRAM.
    pub sram_write_pj_per_byte: f64,
    /// Reading or writing one byte of the accumulator.
    pub acc_pj_per_byte: f64,
    /// Moving one byte to or from DRAM.
    pub dram_pj_per_byte: f64,
    /// One vector-lane operation (requantise, copy, lookup of one element).
    pub vector_op_pj: f64,
    /// One special-function evaluation (reciprocal, rsqrt, exp2).
    #[serde(default = "default_sfu_op_pj")]
    pub sfu_op_pj: f64,
    /// Moving one byte to or from the feature-map SRAM (its DMA window).
    #[serde(default = "default_fmap_pj")]
    pub fmap_pj_per_byte: f64,
}

fn default_sfu_lanes() -> u32 {
    4
}

fn default_sfu_latency() -> u32 {
    12
}

fn default_sfu_op_pj() -> f64 {
    3.0
}

fn default_fmap_pj() -> f64 {
    DEFAULT_FMAP_PJ_PER_BYTE
}

/// edge-small's fmap window path, also the default of a description that
/// omits it: on-chip, twice the DRAM rate, a tenth of its latency.
const EDGE_FMAP_DMA: DmaConfig = DmaConfig {
    bytes_per_cycle: 64,
    latency_cycles: 10,
};

fn default_fmap_dma() -> DmaConfig {
    EDGE_FMAP_DMA
}

/// A complete machine description.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// A name for reports.
    pub name: String,
    /// Systolic array rows.
    pub array_rows: u32,
    /// Systolic array columns.
    pub array_cols: u32,
    /// The array's dataflow.
    pub dataflow: Dataflow,
    /// Weight SRAM size in bytes.
    pub weight_sram_bytes: u32,
    /// Activation SRAM size in bytes.
    pub act_sram_bytes: u32,
    /// SRAM banks (informational for now: the timing model assumes no bank conflicts).
    pub sram_banks: u32,
    /// Accumulator size in bytes (int32 entries).
    pub acc_bytes: u32,
    /// On-chip feature-map SRAM in bytes, reached by DMA through the
    /// window at [`FMAP_BASE`]; 0 = none.
    #[serde(default)]
    pub fmap_sram_bytes: u32,
    /// Vector unit lanes (elements per cycle).
    pub vector_lanes: u32,
    /// Vector unit pipeline latency in cycles.
    pub vector_latency_cycles: u32,
    /// LUT entries of the lookup unit (the ISA's `vlut` uses 256).
    pub lut_entries: u32,
    /// Special-function-unit lanes (reciprocal / rsqrt / exp2 results per cycle).
    #[serde(default = "default_sfu_lanes")]
    pub sfu_lanes: u32,
    /// Special-function-unit pipeline latency in cycles.
    #[serde(default = "default_sfu_latency")]
    pub sfu_latency_cycles: u32,
    /// DMA-in engine.
    pub dma_in: DmaConfig,
    /// DMA-out engine.
    pub dma_out: DmaConfig,
    /// Either DMA engine's rate and latency when its `dram` side is the
    /// fmap window (not sharing `dram_bytes_per_cycle`).
    #[serde(default = "default_fmap_dma")]
    pub fmap_dma: DmaConfig,
    /// DRAM bandwidth the two DMA engines share, bytes per cycle; absent =
    /// each engine has its own full rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dram_bytes_per_cycle: Option<u32>,
    /// Clock in MHz (converts cycles to time).
    pub clock_mhz: f64,
    /// Energy per action.
    pub energy: EnergyTable,
}

/// Why a machine description could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a valid description.
    #[error("bad config {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said.
        message: String,
    },
    /// A parameter is out of its meaningful range.
    #[error("bad config {name}: {message}")]
    Invalid {
        /// The config's name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// No preset has this name.
    #[error("unknown preset `{0}` (presets: edge-small, phone-flagship)")]
    UnknownPreset(String),
}

const EDGE_ENERGY: EnergyTable = EnergyTable {
    mac_pj: 0.2,
    sram_read_pj_per_byte: 1.2,
    sram_write_pj_per_byte: 1.4,
    acc_pj_per_byte: 0.6,
    dram_pj_per_byte: 80.0,
    vector_op_pj: 0.4,
    sfu_op_pj: 3.0,
    fmap_pj_per_byte: DEFAULT_FMAP_PJ_PER_BYTE,
};

/// What each field of a description means, its unit and the range
/// [`MachineConfig::validate`] accepts (the comments of
/// [`MachineConfig::to_commented_toml`]), by `table.key`.
const FIELD_NOTES: &[(&str, &str)] = &[
    ("name", "A name for reports."),
    ("array_rows", "Systolic array rows (1..=4096)."),
    ("array_cols", "Systolic array columns (1..=4096)."),
    ("dataflow", "\"ws\" (weight-stationary: K on rows, N on columns) or \"os\" (output-stationary: M on rows)."),
    ("weight_sram_bytes", "Weight SRAM bytes (at most 16 MiB: 24-bit addresses)."),
    ("act_sram_bytes", "Activation SRAM bytes (at most 16 MiB: 24-bit addresses)."),
    ("sram_banks", "SRAM banks (informational: the timing model assumes no bank conflicts)."),
    ("acc_bytes", "Accumulator bytes, int32 entries (a multiple of 4, at most 4 MiB)."),
    ("fmap_sram_bytes", "On-chip feature-map SRAM bytes, DMA addresses from 0xC0000000 (at most 1 GiB; default 0: none)."),
    ("vector_lanes", "Vector unit lanes: elements per cycle (> 0)."),
    ("vector_latency_cycles", "Vector unit pipeline latency, cycles."),
    ("lut_entries", "Lookup-table entries of `vlut` (must be 256: int8 tables)."),
    ("sfu_lanes", "Special-function lanes: reciprocal/rsqrt/exp2 results per cycle (> 0; default 4)."),
    ("sfu_latency_cycles", "Special-function pipeline latency, cycles (default 12)."),
    ("dram_bytes_per_cycle", "DRAM bytes per cycle shared by both DMA engines (> 0; omit: each engine has its full rate)."),
    ("clock_mhz", "Clock in MHz: converts cycles to time (> 0)."),
    ("dma_in", "The DMA engine that loads DRAM into the SRAMs."),
    ("dma_out", "The DMA engine that stores SRAM to DRAM."),
    ("dma_in.bytes_per_cycle", "Sustained DRAM bytes per cycle (> 0)."),
    ("dma_in.latency_cycles", "Cycles from issue to the first byte (DRAM latency + descriptor setup)."),
    ("dma_out.bytes_per_cycle", "Sustained DRAM bytes per cycle (> 0)."),
    ("dma_out.latency_cycles", "Cycles from issue to the first byte (DRAM latency + descriptor setup)."),
    ("fmap_dma", "Either DMA engine moving to or from the fmap SRAM window (own path: not sharing dram_bytes_per_cycle; default 64 B/cycle, 10 cycles)."),
    ("fmap_dma.bytes_per_cycle", "Sustained fmap SRAM bytes per cycle (> 0 when fmap_sram_bytes > 0)."),
    ("fmap_dma.latency_cycles", "Cycles from issue to the first byte."),
    ("energy", "Energy per action in picojoules (Horowitz/Accelergy-style)."),
    ("energy.mac_pj", "One int8 multiply-accumulate in the array."),
    ("energy.sram_read_pj_per_byte", "Reading one byte of weight or activation SRAM."),
    ("energy.sram_write_pj_per_byte", "Writing one byte of weight or activation SRAM."),
    ("energy.acc_pj_per_byte", "Reading or writing one byte of the accumulator."),
    ("energy.dram_pj_per_byte", "Moving one byte to or from DRAM."),
    ("energy.vector_op_pj", "One vector-lane operation (requantise, copy, lookup of one element)."),
    ("energy.sfu_op_pj", "One special-function evaluation (default 3.0)."),
    ("energy.fmap_pj_per_byte", "Moving one byte to or from the fmap SRAM (default 2.4)."),
];

fn field_note(key: &str) -> Option<&'static str> {
    FIELD_NOTES.iter().find(|(k, _)| *k == key).map(|(_, n)| *n)
}

impl MachineConfig {
    /// `edge-small`: 32x32 int8 WS array, 256 KiB weight + 256 KiB activation
    /// SRAM, 64 KiB accumulator, 512 KiB feature-map SRAM, 32 B/cycle DMA.
    pub fn edge_small() -> MachineConfig {
        MachineConfig {
            name: "edge-small".into(),
            array_rows: 32,
            array_cols: 32,
            dataflow: Dataflow::Ws,
            weight_sram_bytes: 256 << 10,
            act_sram_bytes: 256 << 10,
            sram_banks: 8,
            acc_bytes: 64 << 10,
            fmap_sram_bytes: 512 << 10,
            vector_lanes: 16,
            vector_latency_cycles: 4,
            lut_entries: 256,
            sfu_lanes: 4,
            sfu_latency_cycles: 12,
            dma_in: DmaConfig {
                bytes_per_cycle: 32,
                latency_cycles: 100,
            },
            dma_out: DmaConfig {
                bytes_per_cycle: 32,
                latency_cycles: 100,
            },
            fmap_dma: EDGE_FMAP_DMA,
            dram_bytes_per_cycle: Some(32),
            clock_mhz: 800.0,
            energy: EDGE_ENERGY,
        }
    }

    /// `phone-flagship`: 128x128 WS array, 4 MiB weight + 4 MiB activation
    /// SRAM, 1 MiB accumulator, 8 MiB feature-map SRAM, LPDDR5-class
    /// 64 B/cycle at 1 GHz.
    pub fn phone_flagship() -> MachineConfig {
        MachineConfig {
            name: "phone-flagship".into(),
            array_rows: 128,
            array_cols: 128,
            dataflow: Dataflow::Ws,
            weight_sram_bytes: 4 << 20,
            act_sram_bytes: 4 << 20,
            sram_banks: 16,
            acc_bytes: 1 << 20,
            fmap_sram_bytes: 8 << 20,
            vector_lanes: 64,
            vector_latency_cycles: 4,
            lut_entries: 256,
            sfu_lanes: 16,
            sfu_latency_cycles: 12,
            dma_in: DmaConfig {
                bytes_per_cycle: 64,
                latency_cycles: 150,
            },
            dma_out: DmaConfig {
                bytes_per_cycle: 64,
                latency_cycles: 150,
            },
            fmap_dma: DmaConfig {
                bytes_per_cycle: 128,
                latency_cycles: 20,
            },
            dram_bytes_per_cycle: Some(64),
            clock_mhz: 1000.0,
            energy: EnergyTable {
                mac_pj: 0.15,
                dram_pj_per_byte: 60.0,
                ..EDGE_ENERGY
            },
        }
    }

    /// A SCALE-Sim-like machine: an `rows` x `cols` array with the large
    /// SRAMs of the validation configs (6 MiB ifmap and filter, 2 MiB ofmap
    /// used as accumulator), so that single layers run unsplit.
    pub fn scalesim_like(rows: u32, cols: u32, dataflow: Dataflow) -> MachineConfig {
        MachineConfig {
            name: format!(
                "array-{rows}x{cols}-{}",
                if dataflow == Dataflow::Os { "os" } else { "ws" }
            ),
            array_rows: rows,
            array_cols: cols,
            dataflow,
            weight_sram_bytes: 6 << 20,
            act_sram_bytes: 6 << 20,
            acc_bytes: 2 << 20,
            ..MachineConfig::edge_small()
        }
    }

    /// The preset named `name`.
    pub fn preset(name: &str) -> Result<MachineConfig, ConfigError> {
        match name {
            "edge-small" => Ok(MachineConfig::edge_small()),
            "phone-flagship" => Ok(MachineConfig::phone_flagship()),
            _ => Err(ConfigError::UnknownPreset(name.into())),
        }
    }

    /// A preset name, or a `.toml` / `.json` file.
    pub fn load(spec: &str) -> Result<MachineConfig, ConfigError> {
        let path = Path::new(spec);
        let is_file = spec.ends_with(".toml") || spec.ends_with(".json") || path.exists();
        if !is_file {
            return MachineConfig::preset(spec);
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: spec.into(),
            source,
        })?;
        let parse_err = |message: String| ConfigError::Parse {
            path: spec.into(),
            message,
        };
        let config: MachineConfig = if spec.ends_with(".json") {
            serde_json::from_str(&text).map_err(|e| parse_err(e.to_string()))?
        } else {
            toml::from_str(&text).map_err(|e| parse_err(e.to_string().trim().replace('\n', " ")))?
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks that every size and rate is usable by the simulator.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |message: &str| {
            Err(ConfigError::Invalid {
                name: self.name.clone(),
                message: message.into(),
            })
        };
        if !(1..=4096).contains(&self.array_rows) || !(1..=4096).contains(&self.array_cols) {
            return bad("array_rows and array_cols must be in 1..=4096");
        }
        if self.weight_sram_bytes > 1 << 24 || self.act_sram_bytes > 1 << 24 {
            return bad("SRAMs are addressed with 24 bits: at most 16 MiB each");
        }
        if self.acc_bytes > 1 << 22 || !self.acc_bytes.is_multiple_of(4) {
            return bad(
                "acc_bytes must be a multiple of 4 and at most 4 MiB (20-bit int32 addresses)",
            );
        }
        if self.vector_lanes == 0
            || self.sfu_lanes == 0
            || self.dma_in.bytes_per_cycle == 0
            || self.dma_out.bytes_per_cycle == 0
        {
            return bad("vector_lanes, sfu_lanes and DMA bytes_per_cycle must be positive");
        }
        if u64::from(self.fmap_sram_bytes) > FMAP_WINDOW_BYTES {
            return bad("fmap_sram_bytes must be at most 1 GiB (the window from 0xC0000000 to the end of the 32-bit DMA addresses)");
        }
        if self.fmap_sram_bytes > 0 && self.fmap_dma.bytes_per_cycle == 0 {
            return bad("fmap_dma.bytes_per_cycle must be positive when fmap_sram_bytes > 0");
        }
        if self.dram_bytes_per_cycle == Some(0) {
            return bad("dram_bytes_per_cycle must be positive");
        }
        if self.lut_entries != 256 {
            return bad("lut_entries must be 256 (int8 lookup tables)");
        }
        if self.clock_mhz.is_nan() || self.clock_mhz <= 0.0 {
            return bad("clock_mhz must be positive");
        }
        Ok(())
    }

    /// The description as TOML that [`MachineConfig::load`] reads back, each
    /// field preceded by a comment giving its meaning, unit and the range
    /// [`MachineConfig::validate`] accepts: the starting point for
    /// describing a new NPU (`m4c npu config --preset NAME --dump`).
    pub fn to_commented_toml(&self) -> String {
        let plain = toml::to_string(self).unwrap_or_default();
        let mut out = format!(
            "# NPU machine description `{}` for m4c (docs/NPU_ISA.md).\n\
             # Load it with `--config FILE.toml`; every field below is required\n\
             # unless its comment says it has a default.\n",
            self.name
        );
        let mut table = String::new();
        for line in plain.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                table = format!("{name}.");
                out.push('\n');
                if let Some(note) = field_note(name) {
                    out.push_str(&format!("# {note}\n"));
                }
            } else if let Some((key, _)) = line.split_once(" = ") {
                if let Some(note) = field_note(&format!("{table}{key}")) {
                    out.push_str(&format!("# {note}\n"));
                }
            }
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// Accumulator capacity in int32 entries.
    pub fn acc_entries(&self) -> usize {
        self.acc_bytes as usize / 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commented_template_loads_back_with_every_field_explained() {
        for preset in ["edge-small", "phone-flagship"] {
            let config = MachineConfig::preset(preset).unwrap();
            let text = config.to_commented_toml();
            let back: MachineConfig = toml::from_str(&text).unwrap();
            assert_eq!(back, config, "{preset}");
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                let is_field =
                    !line.starts_with('#') && (line.contains(" = ") || line.starts_with('['));
                if is_field {
                    assert!(
                        i > 0 && lines[i - 1].starts_with("# "),
                        "{preset}: `{line}` has no comment"
                    );
                }
            }
        }
    }

    #[test]
    fn presets_are_valid_and_round_trip_through_toml_and_json() {
        for preset in [MachineConfig::edge_small(), MachineConfig::phone_flagship()] {
            preset.validate().unwrap();
            let toml_text = toml::to_string(&preset).unwrap();
            assert_eq!(toml::from_str::<MachineConfig>(&toml_text).unwrap(), preset);
            let json = serde_json::to_string(&preset).unwrap();
            assert_eq!(
                serde_json::from_str::<MachineConfig>(&json).unwrap(),
                preset
            );
        }
    }

    #[test]
    fn unknown_preset_and_bad_values_are_errors() {
        assert!(matches!(
            MachineConfig::load("tiny"),
            Err(ConfigError::UnknownPreset(_))
        ));
        let bad = MachineConfig {
            array_rows: 0,
            ..MachineConfig::edge_small()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn descriptions_without_an_fmap_load_with_none_and_bad_fmaps_are_refused() {
        // A description written before the fmap existed: no fmap fields.
        let mut old = toml::Value::try_from(MachineConfig::edge_small()).unwrap();
        let table = old.as_table_mut().unwrap();
        table.remove("fmap_sram_bytes");
        table.remove("fmap_dma");
        let energy = table["energy"].as_table_mut().unwrap();
        energy.remove("fmap_pj_per_byte");
        let back: MachineConfig = toml::from_str(&toml::to_string(&old).unwrap()).unwrap();
        assert_eq!(back.fmap_sram_bytes, 0);
        assert_eq!(back.fmap_dma, default_fmap_dma());
        assert_eq!(back.energy.fmap_pj_per_byte, DEFAULT_FMAP_PJ_PER_BYTE);
        back.validate().unwrap();

        let invalid = |config: MachineConfig| config.validate().unwrap_err().to_string();
        let too_big = MachineConfig {
            fmap_sram_bytes: (1 << 30) + 1,
            ..MachineConfig::edge_small()
        };
        assert!(invalid(too_big).contains("at most 1 GiB"));
        let whole_window = MachineConfig {
            fmap_sram_bytes: 1 << 30,
            ..MachineConfig::edge_small()
        };
        whole_window.validate().unwrap();
        let no_rate = MachineConfig {
            fmap_dma: DmaConfig {
                bytes_per_cycle: 0,
                latency_cycles: 10,
            },
            ..MachineConfig::edge_small()
        };
        assert!(invalid(no_rate.clone()).contains("fmap_dma.bytes_per_cycle"));
        MachineConfig {
            fmap_sram_bytes: 0,
            ..no_rate
        }
        .validate()
        .unwrap();
    }
}
