//! The row-tiled, double-buffered pipeline shared by the vector-unit
//! kernels (elementwise, lookup tables, softmax, norms, depthwise conv):
//! DMA-in loads row tile t into input buffer t % 2 while the vector unit
//! computes tile t-1 and DMA-out stores tile t-2. Semaphores order the
//! engines; constants (tables, weights, parameters) are loaded once first.

use super::{align, KernelError, ProgramBuilder};
use crate::config::MachineConfig;
use crate::isa::Instr;
use std::ops::Range;

const IN_READY: i64 = 0;
const IN_FREE: i64 = 1;
const OUT_READY: i64 = 2;
const OUT_FREE: i64 = 3;
const CONST_READY: i64 = 4;
const LD: i64 = 0;
/// Fewest tiles a streamed kernel is cut into (when it has that many rows).
const MIN_TILES: usize = 4;
/// Input bytes below which a tile is not split further for overlap.
const MIN_TILE_BYTES: usize = 4096;
const VX: i64 = 2;
const ST: i64 = 3;

/// Per-row resource needs of a streamed kernel.
#[derive(Clone, Copy, Debug)]
pub struct StreamShape {
    /// Rows to process.
    pub rows: usize,
    /// Activation SRAM bytes one row occupies in an input buffer.
    pub in_row_bytes: usize,
    /// Activation SRAM bytes one row occupies in an output buffer.
    pub out_row_bytes: usize,
    /// Accumulator entries one row needs as int32 scratch.
    pub acc_per_row: usize,
    /// Activation SRAM bytes of constants, at address 0.
    pub const_bytes: usize,
}

/// Where one row tile lives.
#[derive(Clone, Debug)]
pub struct Tile {
    /// Rows of this tile.
    pub rows: Range<usize>,
    /// Activation SRAM address of its input buffer.
    pub input: u64,
    /// Activation SRAM address of its output buffer.
    pub output: u64,
}

/// Emits the instructions of one part of a tile.
pub type TileEmitter<'a> = dyn Fn(&mut ProgramBuilder, &Tile) -> Result<(), KernelError> + 'a;

/// The three per-tile parts of a streamed kernel plus its constants.
pub struct StreamKernel<'a> {
    /// DMA-in of the constants (at SRAM 0); run once before any tile.
    pub load_consts: &'a dyn Fn(&mut ProgramBuilder) -> Result<(), KernelError>,
    /// DMA-in of a tile's inputs.
    pub load: &'a TileEmitter<'a>,
    /// Vector-unit work of a tile.
    pub compute: &'a TileEmitter<'a>,
    /// DMA-out of a tile's outputs.
    pub store: &'a TileEmitter<'a>,
}

/// The most rows per tile that fit `config` (double-buffered input and
/// output), an error naming the shortage otherwise.
pub fn tile_rows(config: &MachineConfig, s: &StreamShape) -> Result<usize, KernelError> {
    let fits = |r: usize| {
        align(s.const_bytes) + 2 * align(r * s.in_row_bytes) + 2 * align(r * s.out_row_bytes)
            <= config.act_sram_bytes as usize
            && r * s.acc_per_row <= config.acc_entries()
    };
    if s.rows == 0 {
        return Err(KernelError::BadShape("zero rows".into()));
    }
    if !fits(1) {
        return Err(KernelError::DoesNotFit(format!(
            "one row ({} input bytes, {} output bytes, {} accumulator entries) with {} constant bytes on {}",
            s.in_row_bytes, s.out_row_bytes, s.acc_per_row, s.const_bytes, config.name
        )));
    }
    let (mut lo, mut hi) = (1, s.rows.min(u16::MAX as usize));
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    // At least MIN_TILES tiles so that loads, compute and stores overlap,
    // unless tiles would get so small that DMA latency dominates; the rows
    // spread evenly over the tiles.
    let worth = (s.rows * s.in_row_bytes / MIN_TILE_BYTES).clamp(1, MIN_TILES);
    let tiles = s.rows.div_ceil(lo).max(worth.min(s.rows));
    Ok(s.rows.div_ceil(tiles))
}

/// Emits the whole pipeline with `rows_per_tile` rows per tile.
pub fn emit(
    b: &mut ProgramBuilder,
    s: &StreamShape,
    rows_per_tile: usize,
    k: &StreamKernel,
) -> Result<(), KernelError> {
    let base = align(s.const_bytes) as u64;
    let in_buf = align(rows_per_tile * s.in_row_bytes) as u64;
    let out_buf = align(rows_per_tile * s.out_row_bytes) as u64;
    if s.const_bytes > 0 {
        (k.load_consts)(b)?;
        b.emit(Instr::Signal {
            engine: LD,
            sem: CONST_READY,
        })?;
        b.emit(Instr::Wait {
            engine: VX,
            sem: CONST_READY,
        })?;
    }
    let starts: Vec<usize> = (0..s.rows).step_by(rows_per_tile).collect();
    let n = starts.len();
    for (t, &r0) in starts.iter().enumerate() {
        let tile = Tile {
            rows: r0..(r0 + rows_per_tile).min(s.rows),
            input: base + (t % 2) as u64 * in_buf,
            output: base + 2 * in_buf + (t % 2) as u64 * out_buf,
        };
        let more = t + 2 < n;
        if t >= 2 {
            b.emit(Instr::Wait {
                engine: LD,
                sem: IN_FREE,
            })?;
        }
        (k.load)(b, &tile)?;
        b.emit(Instr::Signal {
            engine: LD,
            sem: IN_READY,
        })?;
        b.emit(Instr::Wait {
            engine: VX,
            sem: IN_READY,
        })?;
        if t >= 2 {
            b.emit(Instr::Wait {
                engine: VX,
                sem: OUT_FREE,
            })?;
        }
        (k.compute)(b, &tile)?;
        for (engine, sem, when) in [(VX, IN_FREE, more), (VX, OUT_READY, true)] {
            if when {
                b.emit(Instr::Signal { engine, sem })?;
            }
        }
        b.emit(Instr::Wait {
            engine: ST,
            sem: OUT_READY,
        })?;
        (k.store)(b, &tile)?;
        if more {
            b.emit(Instr::Signal {
                engine: ST,
                sem: OUT_FREE,
            })?;
        }
    }
    Ok(())
}

/// Loads rows `rows` of a row-major DRAM matrix (`row_bytes` per row) into
/// SRAM at `sram`, rows `sram_stride` apart.
pub fn load_rows(
    b: &mut ProgramBuilder,
    dram: u32,
    row_bytes: usize,
    rows: &Range<usize>,
    sram: u64,
    sram_stride: usize,
) -> Result<(), KernelError> {
    b.emit(Instr::LdCfg {
        dram_stride: row_bytes as i64,
        sram_stride: sram_stride as i64,
        pad_top: 0,
        pad_bottom: 0,
        pad_left: 0,
        pad_right: 0,
    })?;
    b.emit(Instr::Ld {
        space: 1,
        sram: sram as i64,
        dram: dram as i64 + (rows.start * row_bytes) as i64,
        rows: rows.len() as i64,
        row_bytes: row_bytes as i64,
    })
}

/// Loads `bytes` contiguous DRAM bytes to SRAM `sram` (constants).
pub fn load_block(
    b: &mut ProgramBuilder,
    dram: u32,
    bytes: usize,
    sram: u64,
) -> Result<(), KernelError> {
    load_rows(b, dram, bytes, &(0..1), sram, bytes)
}

/// Stores a tile's rows (`row_bytes` each, contiguous in SRAM) to a
/// row-major DRAM matrix.
pub fn store_rows(
    b: &mut ProgramBuilder,
    dram: u32,
    row_bytes: usize,
    tile: &Tile,
) -> Result<(), KernelError> {
    b.emit(Instr::StCfg {
        dram_stride: row_bytes as i64,
        sram_stride: row_bytes as i64,
    })?;
    b.emit(Instr::St {
        space: 1,
        sram: tile.output as i64,
        dram: dram as i64 + (tile.rows.start * row_bytes) as i64,
        rows: tile.rows.len() as i64,
        row_bytes: row_bytes as i64,
    })
}
