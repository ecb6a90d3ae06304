//! Data movement as DMA address patterns: an int8 tensor rearranged from
//! one or more sources (transpose, slice, concat, broadcast). The output
//! is a row-major matrix of `row_len` columns; each output row is a list
//! of [`Piece`]s, each one strided DMA load (contiguous pieces are one
//! descriptor, strided ones one byte per row of the descriptor; the same
//! contiguous piece of a run of rows whose starts are evenly spaced is one
//! descriptor for the run, as an im2col panel), into the
//! streamed pipeline's input tile; the vector unit copies the tile to the
//! output buffer (`vcopy`) and DMA-out stores it. The cost is what a DMA
//! engine pays: descriptors and bytes.

use super::data::i8_bytes;
use super::stream::{self, StreamKernel, StreamShape, Tile};
use super::{KernelError, KernelProgram, ProgramBuilder};
use crate::config::MachineConfig;
use crate::isa::Instr;

/// A run of one output row read from a source: `len` bytes starting at
/// `start`, `stride` bytes apart (0 repeats one byte: a broadcast).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Which source.
    pub source: usize,
    /// First byte in the source.
    pub start: usize,
    /// Bytes between consecutive elements in the source.
    pub stride: usize,
    /// Elements.
    pub len: usize,
}

/// Operands of one data-movement layer.
#[derive(Clone, Debug)]
pub struct GatherOperands {
    /// The sources (row-major int8 tensors).
    pub sources: Vec<Vec<i8>>,
    /// Bytes per output row.
    pub row_len: usize,
    /// Each output row's pieces, in order; their lengths sum to `row_len`.
    pub rows: Vec<Vec<Piece>>,
}

impl GatherOperands {
    /// Checks every piece lies in its source and every row is full.
    fn check(&self) -> Result<(), KernelError> {
        if self.row_len == 0 || self.rows.is_empty() {
            return Err(KernelError::BadShape("empty gather".into()));
        }
        for (r, pieces) in self.rows.iter().enumerate() {
            let mut total = 0;
            for p in pieces {
                let src = self.sources.get(p.source).ok_or_else(|| {
                    KernelError::BadShape(format!("row {r}: source {} does not exist", p.source))
                })?;
                let last = p.start + p.stride * p.len.saturating_sub(1);
                if p.len == 0 || last >= src.len() {
                    return Err(KernelError::BadShape(format!(
                        "row {r}: piece {p:?} outside its {}-byte source",
                        src.len()
                    )));
                }
                total += p.len;
            }
            if total != self.row_len {
                return Err(KernelError::BadShape(format!(
                    "row {r} has {total} bytes, not {}",
                    self.row_len
                )));
            }
        }
        Ok(())
    }

    /// The reference result.
    pub fn reference(&self) -> Vec<i8> {
        self.rows
            .iter()
            .flat_map(|pieces| {
                pieces.iter().flat_map(|p| {
                    (0..p.len).map(move |i| self.sources[p.source][p.start + i * p.stride])
                })
            })
            .collect()
    }
}

/// Generates the data-movement program for `config`; its
/// [`KernelProgram::inputs`] are the sources' segments, in order.
pub fn generate(
    ops: &GatherOperands,
    config: &MachineConfig,
) -> Result<KernelProgram, KernelError> {
    generate_with(ops, config, true)
}

/// [`generate`] with one `ld` per output row, never merged with its
/// neighbours, for rows of one contiguous piece each: the rows of an
/// embedding lookup, whose sources the device chooses at run time by
/// moving each row's load ([`crate::module::RowIndex`]). Also returns
/// the index of each row's `ld` in the program.
pub fn generate_rows(
    ops: &GatherOperands,
    config: &MachineConfig,
) -> Result<(KernelProgram, Vec<usize>), KernelError> {
    if ops.rows.iter().any(|r| r.len() != 1 || r[0].stride != 1) {
        return Err(KernelError::BadShape(
            "rows chosen at run time are one contiguous piece each".into(),
        ));
    }
    let k = generate_with(ops, config, false)?;
    let lds: Vec<usize> = (k.program.instrs.iter().enumerate())
        .filter(|(_, i)| matches!(i, Instr::Ld { .. }))
        .map(|(at, _)| at)
        .collect();
    if lds.len() != ops.rows.len() {
        return Err(KernelError::BadShape(format!(
            "{} loads for {} rows",
            lds.len(),
            ops.rows.len()
        )));
    }
    Ok((k, lds))
}

fn generate_with(
    ops: &GatherOperands,
    config: &MachineConfig,
    merge: bool,
) -> Result<KernelProgram, KernelError> {
    ops.check()?;
    let (rows, cols) = (ops.rows.len(), ops.row_len);
    let shape = StreamShape {
        rows,
        in_row_bytes: cols,
        out_row_bytes: cols,
        acc_per_row: 0,
        const_bytes: 0,
    };
    let tile_rows = stream::tile_rows(config, &shape)?;
    let mut b = ProgramBuilder::default();
    let sources = ops
        .sources
        .iter()
        .map(|s| b.alloc_data(i8_bytes(s)))
        .collect::<Result<Vec<u32>, _>>()?;
    let out_dram = b.alloc(rows * cols)?;
    let load = |b: &mut ProgramBuilder, t: &Tile| {
        let mut r = t.rows.start;
        while r < t.rows.end {
            let sram = t.input + ((r - t.rows.start) * cols) as u64;
            let spacing = ops.rows.get(r + 1).filter(|_| merge && r + 1 < t.rows.end);
            let spacing = spacing.and_then(|next| step(&ops.rows[r], next));
            let Some(spacing) = spacing else {
                load_row(b, &ops.rows[r], &sources, sram)?;
                r += 1;
                continue;
            };
            let mut end = r + 2;
            while end < t.rows.end
                && step(&ops.rows[end - 1], &ops.rows[end]) == Some(spacing.clone())
            {
                end += 1;
            }
            let mut at = sram;
            for (p, &d) in ops.rows[r].iter().zip(&spacing) {
                b.emit(Instr::LdCfg {
                    dram_stride: d as i64,
                    sram_stride: cols as i64,
                    pad_top: 0,
                    pad_bottom: 0,
                    pad_left: 0,
                    pad_right: 0,
                })?;
                b.emit(Instr::Ld {
                    space: 1,
                    sram: at as i64,
                    dram: (sources[p.source] as usize + p.start) as i64,
                    rows: (end - r) as i64,
                    row_bytes: p.len as i64,
                })?;
                at += p.len as u64;
            }
            r = end;
        }
        Ok(())
    };
    let compute = |b: &mut ProgramBuilder, t: &Tile| {
        super::vector::strides(b, cols, cols, 0)?;
        b.emit(Instr::Vcopy {
            dst_space: 1,
            dst: t.output as i64,
            src_space: 1,
            src: t.input as i64,
            rows: t.rows.len() as i64,
            cols: cols as i64,
        })
    };
    let kernel = StreamKernel {
        load_consts: &|_| Ok(()),
        load: &load,
        compute: &compute,
        store: &|b, t| stream::store_rows(b, out_dram, cols, t),
    };
    stream::emit(&mut b, &shape, tile_rows, &kernel)?;
    Ok(KernelProgram {
        program: b.finish()?,
        out_addr: out_dram,
        out_len: rows * cols,
        tile_rows,
        inputs: sources,
    })
}

/// The DRAM spacing of each piece from row `a` to row `b`, when both
/// have the same contiguous pieces at later starts (a run of such rows
/// loads each piece as one 2-D descriptor, as an im2col panel).
fn step(a: &[Piece], b: &[Piece]) -> Option<Vec<usize>> {
    let alike = a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.source == y.source && x.len == y.len && (x.stride == 1 || x.len == 1));
    if !alike {
        return None;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| y.start.checked_sub(x.start))
        .collect()
}

/// Loads one output row's pieces to SRAM `sram`.
fn load_row(
    b: &mut ProgramBuilder,
    pieces: &[Piece],
    sources: &[u32],
    sram: u64,
) -> Result<(), KernelError> {
    let mut at = sram;
    for p in pieces {
        let dram = (sources[p.source] as usize + p.start) as i64;
        let contiguous = p.stride == 1 || p.len == 1;
        b.emit(Instr::LdCfg {
            dram_stride: if contiguous { p.len } else { p.stride } as i64,
            sram_stride: if contiguous { p.len } else { 1 } as i64,
            pad_top: 0,
            pad_bottom: 0,
            pad_left: 0,
            pad_right: 0,
        })?;
        let (n, bytes) = if contiguous { (1, p.len) } else { (p.len, 1) };
        b.emit(Instr::Ld {
            space: 1,
            sram: at as i64,
            dram,
            rows: n as i64,
            row_bytes: bytes as i64,
        })?;
        at += p.len as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{simulate, SimOptions};

    /// A transpose (strided pieces), a concat (two sources) and a
    /// broadcast (stride 0) give the reference bytes on the simulator.
    #[test]
    fn gathers_match_the_reference() {
        let config = MachineConfig::edge_small();
        let a: Vec<i8> = (0..24).map(|i| i as i8 - 12).collect();
        let b: Vec<i8> = (0..8).map(|i| 100 - i as i8).collect();
        // out[6][6]: row j = column j of a (4 x 6) then b[j % 8], b[0] twice.
        let rows = (0..6)
            .map(|j| {
                vec![
                    Piece {
                        source: 0,
                        start: j,
                        stride: 6,
                        len: 4,
                    },
                    Piece {
                        source: 1,
                        start: j,
                        stride: 1,
                        len: 1,
                    },
                    Piece {
                        source: 1,
                        start: 0,
                        stride: 0,
                        len: 1,
                    },
                ]
            })
            .collect();
        let ops = GatherOperands {
            sources: vec![a, b],
            row_len: 6,
            rows,
        };
        let k = generate(&ops, &config).unwrap();
        let r = simulate(&k.program, &config, SimOptions::default()).unwrap();
        assert_eq!(k.output(&r.dram), ops.reference());
        assert_eq!(&ops.reference()[..6], &[-12, -6, 0, 6, 100, 100]);
        // Evenly spaced contiguous pieces: one descriptor per piece per tile.
        let panel = GatherOperands {
            sources: vec![(0..64).map(|i| i as i8).collect()],
            row_len: 4,
            rows: (0..8)
                .map(|r| {
                    vec![
                        Piece {
                            source: 0,
                            start: 2 * r,
                            stride: 1,
                            len: 2,
                        },
                        Piece {
                            source: 0,
                            start: 32 + 2 * r,
                            stride: 1,
                            len: 2,
                        },
                    ]
                })
                .collect(),
        };
        let k = generate(&panel, &config).unwrap();
        let loads = k
            .program
            .instrs
            .iter()
            .filter(|i| matches!(i, Instr::Ld { .. }))
            .count();
        assert_eq!(loads, 2);
        let r = simulate(&k.program, &config, SimOptions::default()).unwrap();
        assert_eq!(k.output(&r.dram), panel.reference());
        let bad = GatherOperands { row_len: 5, ..ops };
        assert!(generate(&bad, &config).is_err());
    }
}
