//! The tiled int8 matmul pipeline shared by GEMM and convolution:
//! DMA-in loads operand panels into double buffers, the matrix unit runs one
//! systolic fold per (output tile, K chunk), the vector unit requantises each
//! finished accumulator tile and DMA-out stores it. Semaphores order the four
//! engines so that loads of step s+2 overlap the matmul of step s.

use super::{align, KernelError, ProgramBuilder};
use crate::config::{Dataflow, MachineConfig};
use crate::isa::Instr;
use crate::quant::{Requant, SHIFT_RANGE};
use std::ops::Range;

const OPND_READY: i64 = 0;
const OPND_FREE: i64 = 1;
const ACC_READY: i64 = 2;
const ACC_FREE: i64 = 3;
const OUT_READY: i64 = 4;
const OUT_FREE: i64 = 5;
const BIAS_READY: i64 = 6;
const TABLE_READY: i64 = 7;
/// Bytes of an output-stage lookup table.
const TABLE_BYTES: usize = 256;
const LD: i64 = 0;
const MX: i64 = 1;
const VX: i64 = 2;
const ST: i64 = 3;

/// How a matmul of shape M x K x N is cut into systolic folds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TilePlan {
    /// Rows of A per tile.
    pub m_tile: usize,
    /// Depth of one K chunk (one matmul instruction).
    pub k_tile: usize,
    /// Output columns per tile.
    pub n_tile: usize,
    /// Accumulator/output buffers (2 overlaps requantisation with the next tile).
    pub acc_buffers: usize,
}

impl TilePlan {
    /// Chooses tiles for `config`. The array bounds one side of each fold
    /// (WS: K x N, OS: M x N); the streamed dimension (WS: M, OS: K) is kept
    /// whole when the memories allow, as SCALE-Sim does, and otherwise split
    /// evenly. With `unsplit` a split is an error instead.
    pub fn choose(
        config: &MachineConfig,
        mkn: (usize, usize, usize),
        param_bytes: usize,
        unsplit: bool,
    ) -> Result<TilePlan, KernelError> {
        TilePlan::choose_reserving(config, mkn, param_bytes, 0, unsplit)
    }

    /// [`TilePlan::choose`] with `reserved` more bytes of activation SRAM
    /// kept for the output stage (a lookup table).
    pub fn choose_reserving(
        config: &MachineConfig,
        (m, k, n): (usize, usize, usize),
        param_bytes: usize,
        reserved: usize,
        unsplit: bool,
    ) -> Result<TilePlan, KernelError> {
        let (rows, cols) = (config.array_rows as usize, config.array_cols as usize);
        let n_tile = n.min(cols);
        let fits = |p: &TilePlan| {
            let act = align(param_bytes * n)
                + align(reserved)
                + 2 * align(p.m_tile * p.k_tile)
                + p.acc_buffers * align(p.m_tile * p.n_tile);
            act <= config.act_sram_bytes as usize
                && 2 * align(p.k_tile * p.n_tile) <= config.weight_sram_bytes as usize
                && p.acc_buffers * p.m_tile * p.n_tile <= config.acc_entries()
                && p.m_tile.max(p.k_tile) <= u16::MAX as usize
        };
        let streamed = if config.dataflow == Dataflow::Ws {
            m
        } else {
            k
        };
        let make = |len: usize, acc_buffers: usize| match config.dataflow {
            Dataflow::Ws => TilePlan {
                m_tile: len,
                k_tile: k.min(rows),
                n_tile,
                acc_buffers,
            },
            Dataflow::Os => TilePlan {
                m_tile: m.min(rows),
                k_tile: len,
                n_tile,
                acc_buffers,
            },
        };
        for buffers in [2, 1] {
            let plan = make(streamed, buffers);
            if fits(&plan) {
                return Ok(plan);
            }
        }
        if unsplit {
            let what = if config.dataflow == Dataflow::Ws {
                "M"
            } else {
                "K"
            };
            return Err(KernelError::DoesNotFit(format!(
                "the streamed dimension {what}={streamed} does not fit the {} memories unsplit, which SCALE-Sim-compatible timing needs",
                config.name
            )));
        }
        for chunks in 2..=streamed {
            for buffers in [2, 1] {
                let plan = make(streamed.div_ceil(chunks), buffers);
                if fits(&plan) {
                    return Ok(plan);
                }
            }
        }
        Err(KernelError::DoesNotFit(format!(
            "no tiling of {m}x{k}x{n} fits {}",
            config.name
        )))
    }
}

/// Where a matmul's operands and result live in DRAM.
pub struct MatmulIo {
    /// Rows of A (and of the output).
    pub m: usize,
    /// Reduction depth.
    pub k: usize,
    /// Output columns.
    pub n: usize,
    /// Weights, K x N row-major int8.
    pub w_dram: u32,
    /// Per-column requantisation parameters (optional).
    pub params: Option<ColumnParams>,
    /// Output, M x N row-major int8.
    pub out_dram: u32,
    /// Requantisation of the int32 accumulators to the int8 output.
    pub quant: Requant,
    /// A 256-entry table the output stage applies after requantising
    /// (a function fused into the layer): its DRAM address.
    pub table: Option<u32>,
}

impl MatmulIo {
    /// Places a matmul's weights, per-column parameters, output and
    /// output-stage table (when given) in DRAM, in that order: the part
    /// every matrix-unit kernel shares (the caller places its A operand
    /// first, and reserves the table's SRAM when choosing its tiling,
    /// [`TilePlan::choose_reserving`]).
    pub fn alloc(
        b: &mut ProgramBuilder,
        (m, k, n): (usize, usize, usize),
        weights: &[i8],
        bias: Option<&[i32]>,
        scales: Option<&[(i32, i32)]>,
        (quant, table): (Requant, Option<&[i8; 256]>),
    ) -> Result<MatmulIo, KernelError> {
        let w_dram = b.alloc_data(super::data::i8_bytes(weights))?;
        let params = column_params(b, bias, scales, n)?;
        let out_dram = b.alloc(m * n)?;
        let table = table
            .map(|t| b.alloc_data(super::data::i8_bytes(t)))
            .transpose()?;
        Ok(MatmulIo {
            m,
            k,
            n,
            w_dram,
            params,
            out_dram,
            quant,
            table,
        })
    }
}

/// Per-column parameters of the requantisation in DRAM.
#[derive(Clone, Copy, Debug)]
pub struct ColumnParams {
    /// DRAM address.
    pub dram: u32,
    /// int32 words per column: 1 (bias) or 3 (bias, multiplier, shift).
    pub words: usize,
}

/// Bytes per output column the requantisation parameters take in SRAM
/// (the planner reserves 4 even without bias).
pub fn param_bytes(per_channel: bool) -> usize {
    if per_channel {
        12
    } else {
        4
    }
}

/// Places `bias` and/or per-channel `scales` of `n` columns in DRAM: int32
/// biases, or (bias, multiplier, shift) records for `requant mode=channel`.
pub fn column_params(
    b: &mut ProgramBuilder,
    bias: Option<&[i32]>,
    scales: Option<&[(i32, i32)]>,
    n: usize,
) -> Result<Option<ColumnParams>, KernelError> {
    let words: Vec<i32> = match (bias, scales) {
        (None, None) => return Ok(None),
        (Some(bias), None) => bias.to_vec(),
        (bias, Some(scales)) => {
            if scales.len() != n || scales.iter().any(|s| !SHIFT_RANGE.contains(&s.1)) {
                return Err(KernelError::BadShape(format!(
                    "need {n} per-channel scales with shifts in {SHIFT_RANGE:?}"
                )));
            }
            (0..n)
                .flat_map(|c| [bias.map_or(0, |b| b[c]), scales[c].0, scales[c].1])
                .collect()
        }
    };
    let words_per_col = words.len() / n;
    let dram = b.alloc_data(super::data::i32_bytes(&words))?;
    Ok(Some(ColumnParams {
        dram,
        words: words_per_col,
    }))
}

/// Emits instructions that load A[rows, cols] into activation SRAM at
/// `sram` with row stride `stride`.
pub type PanelLoader<'a> = dyn Fn(&mut ProgramBuilder, Range<usize>, Range<usize>, u64, u64) -> Result<(), KernelError>
    + 'a;

/// Loads `bytes` from DRAM `dram` into activation SRAM at `sram` (one
/// row, the load strides zeroed) and has the vector unit wait for them
/// on semaphore `sem`: the output stage's constants.
fn load_for_vector_unit(
    b: &mut ProgramBuilder,
    (dram, sram): (u32, u64),
    bytes: usize,
    sem: i64,
) -> Result<(), KernelError> {
    b.emit(Instr::LdCfg {
        dram_stride: 0,
        sram_stride: 0,
        pad_top: 0,
        pad_bottom: 0,
        pad_left: 0,
        pad_right: 0,
    })?;
    b.emit(Instr::Ld {
        space: 1,
        sram: sram as i64,
        dram: i64::from(dram),
        rows: 1,
        row_bytes: bytes as i64,
    })?;
    b.emit(Instr::Signal { engine: LD, sem })?;
    b.emit(Instr::Wait { engine: VX, sem })
}

/// Emits the whole pipelined matmul.
pub fn emit(
    b: &mut ProgramBuilder,
    io: &MatmulIo,
    plan: TilePlan,
    load_a: &PanelLoader,
) -> Result<(), KernelError> {
    let TilePlan {
        m_tile,
        k_tile,
        n_tile,
        acc_buffers,
    } = plan;
    let words = io.params.map_or(1, |p| p.words);
    let bias_bytes = align(4 * words * io.n) as u64;
    let fixed = bias_bytes + io.table.map_or(0, |_| align(TABLE_BYTES)) as u64;
    let a_buf = |s: usize| fixed + (s % 2 * align(m_tile * k_tile)) as u64;
    let out_buf = |t: usize| {
        fixed
            + 2 * align(m_tile * k_tile) as u64
            + (t % acc_buffers * align(m_tile * n_tile)) as u64
    };
    let w_buf = |s: usize| (s % 2 * align(k_tile * n_tile)) as u64;
    let acc_buf = |t: usize| (t % acc_buffers * m_tile * n_tile) as u64;
    let q = io.quant;

    b.emit(Instr::MmCfg {
        a_stride: k_tile as i64,
        w_stride: n_tile as i64,
        acc_stride: n_tile as i64,
    })?;
    b.emit(Instr::VecCfg {
        dst_stride: n_tile as i64,
        src_stride: n_tile as i64,
        src2_stride: 0,
    })?;
    b.emit(Instr::RqCfg {
        multiplier: q.multiplier as i64,
        shift: q.shift as i64,
        zero_point: q.zero_point as i64,
        clamp_min: q.clamp_min as i64,
        clamp_max: q.clamp_max as i64,
    })?;
    b.emit(Instr::StCfg {
        dram_stride: io.n as i64,
        sram_stride: n_tile as i64,
    })?;
    if let Some(params) = io.params {
        load_for_vector_unit(b, (params.dram, 0), 4 * words * io.n, BIAS_READY)?;
    }
    if let Some(table) = io.table {
        load_for_vector_unit(b, (table, bias_bytes), TABLE_BYTES, TABLE_READY)?;
    }

    let tiles: Vec<(Range<usize>, Range<usize>)> = (0..io.n)
        .step_by(n_tile)
        .flat_map(|n0| {
            (0..io.m)
                .step_by(m_tile)
                .map(move |m0| (m0..(m0 + m_tile).min(io.m), n0..(n0 + n_tile).min(io.n)))
        })
        .collect();
    let k_chunks: Vec<Range<usize>> = (0..io.k)
        .step_by(k_tile)
        .map(|k0| k0..(k0 + k_tile).min(io.k))
        .collect();
    let steps = tiles.len() * k_chunks.len();
    let mut s = 0;
    for (t, (rows, cols)) in tiles.iter().enumerate() {
        let (m, n) = (rows.len() as i64, cols.len() as i64);
        for (j, ks) in k_chunks.iter().enumerate() {
            // DMA-in: operands of step s into buffer s % 2.
            if s >= 2 {
                b.emit(Instr::Wait {
                    engine: LD,
                    sem: OPND_FREE,
                })?;
            }
            load_a(b, rows.clone(), ks.clone(), a_buf(s), k_tile as u64)?;
            b.emit(Instr::LdCfg {
                dram_stride: io.n as i64,
                sram_stride: n_tile as i64,
                pad_top: 0,
                pad_bottom: 0,
                pad_left: 0,
                pad_right: 0,
            })?;
            let w_addr = io.w_dram as i64 + (ks.start * io.n + cols.start) as i64;
            b.emit(Instr::Ld {
                space: 0,
                sram: w_buf(s) as i64,
                dram: w_addr,
                rows: ks.len() as i64,
                row_bytes: n,
            })?;
            b.emit(Instr::Signal {
                engine: LD,
                sem: OPND_READY,
            })?;
            // Matrix unit: one fold.
            if j == 0 && t >= acc_buffers {
                b.emit(Instr::Wait {
                    engine: MX,
                    sem: ACC_FREE,
                })?;
            }
            b.emit(Instr::Wait {
                engine: MX,
                sem: OPND_READY,
            })?;
            b.emit(Instr::Matmul {
                acc: acc_buf(t) as i64,
                a: a_buf(s) as i64,
                w: w_buf(s) as i64,
                m,
                k: ks.len() as i64,
                n,
                accumulate: i64::from(j > 0),
            })?;
            if s + 2 < steps {
                b.emit(Instr::Signal {
                    engine: MX,
                    sem: OPND_FREE,
                })?;
            }
            s += 1;
        }
        b.emit(Instr::Signal {
            engine: MX,
            sem: ACC_READY,
        })?;
        // Vector unit: requantise the finished tile.
        b.emit(Instr::Wait {
            engine: VX,
            sem: ACC_READY,
        })?;
        if t >= acc_buffers {
            b.emit(Instr::Wait {
                engine: VX,
                sem: OUT_FREE,
            })?;
        }
        b.emit(Instr::Requant {
            dst: out_buf(t) as i64,
            acc: acc_buf(t) as i64,
            bias: (4 * words * cols.start) as i64,
            rows: m,
            cols: n,
            mode: io.params.map_or(0, |p| if p.words == 3 { 2 } else { 1 }),
        })?;
        if io.table.is_some() {
            b.emit(Instr::Vlut {
                dst: out_buf(t) as i64,
                src: out_buf(t) as i64,
                table: bias_bytes as i64,
                rows: m,
                cols: n,
            })?;
        }
        if t + acc_buffers < tiles.len() {
            b.emit(Instr::Signal {
                engine: VX,
                sem: ACC_FREE,
            })?;
        }
        b.emit(Instr::Signal {
            engine: VX,
            sem: OUT_READY,
        })?;
        // DMA-out: store it.
        b.emit(Instr::Wait {
            engine: ST,
            sem: OUT_READY,
        })?;
        let out_addr = io.out_dram as i64 + (rows.start * io.n + cols.start) as i64;
        b.emit(Instr::St {
            space: 1,
            sram: out_buf(t) as i64,
            dram: out_addr,
            rows: m,
            row_bytes: n,
        })?;
        if t + acc_buffers < tiles.len() {
            b.emit(Instr::Signal {
                engine: ST,
                sem: OUT_FREE,
            })?;
        }
    }
    Ok(())
}
