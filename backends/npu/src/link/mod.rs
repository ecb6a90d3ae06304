//! One program per NPU part. The compiler generates one program per layer,
//! each with its own DRAM image (its constants, a placeholder segment per
//! run-time operand, a result region). Linking places the part's tensors
//! by [`arena::plan_memory`] — intermediates in the feature-map SRAM where
//! they fit, the rest in a DRAM arena — relocates every DMA descriptor
//! that touches an operand or the result onto that tensor's home and
//! every other one onto the layer's own region of the linked image, and
//! joins the layers in order, each behind a `barrier` and the
//! configuration resets it may rely on.
//!
//! So data passes between layers through memory the program itself
//! addresses (no host copy), feature maps stay on chip where they fit,
//! and the linked program computes byte for byte what the layers run one
//! by one compute (tested on every fixture in `tests/npu_link.rs`).

pub mod arena;

use crate::config::FMAP_BASE;
use crate::isa::Instr;
use crate::module::{Binding, PartPlan};
use crate::program::{Program, Segment, MAX_DRAM_BYTES};
use arena::{align, plan_memory, Home, MemoryPlan};
use std::ops::Range;

/// A part linked into one program.
#[derive(Clone, Debug)]
pub struct LinkedPart {
    /// The program.
    pub program: Program,
    /// Each tensor's DMA address (DRAM, or [`FMAP_BASE`] + offset).
    pub tensor_addr: Vec<u32>,
    /// Each layer's instructions in [`LinkedPart::program`].
    pub spans: Vec<Range<usize>>,
    /// Where each layer's own program starts in it: its instruction `k`
    /// is instruction `first_instr + k` of the linked program.
    pub first_instr: Vec<usize>,
    /// Where the tensors went.
    pub memory: MemoryPlan,
}

/// Why a part could not be linked (it then runs layer by layer).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// A DMA descriptor covers part of an operand and something else.
    #[error("layer `{layer}`: instruction #{index} reaches across operand 0x{addr:x}+{len}")]
    Straddles {
        /// The layer.
        layer: String,
        /// Instruction index in the layer's program.
        index: usize,
        /// The operand's segment.
        addr: u32,
        /// Its bytes.
        len: usize,
    },
    /// A descriptor reaches past its layer's DRAM image.
    #[error("layer `{layer}`: instruction #{index} reaches past its DRAM image")]
    Outside {
        /// The layer.
        layer: String,
        /// Instruction index in the layer's program.
        index: usize,
    },
    /// A layer reads the tensor bytes it writes.
    #[error("layer `{0}` reads bytes of the tensor it writes")]
    InPlace(String),
    /// The linked image is too large.
    #[error("the linked DRAM image needs {0} bytes, more than the container's limit")]
    TooLarge(u64),
    /// The plan does not match its programs.
    #[error("{0}")]
    Plan(String),
}

/// Links `plan`'s layers (`programs` = the part's programs) into one
/// program. `pinned` marks the tensors the host writes before or reads
/// after the run (the part's boundary values); `fmap_bytes` is the
/// feature-map SRAM available (0: none).
pub fn link(
    plan: &PartPlan,
    programs: &[Program],
    pinned: &[bool],
    fmap_bytes: u32,
) -> Result<LinkedPart, LinkError> {
    plan.check(programs.len()).map_err(LinkError::Plan)?;
    if pinned.len() != plan.tensors.len() {
        return Err(LinkError::Plan(
            "one pinned flag per tensor expected".into(),
        ));
    }
    let memory = plan_memory(plan, pinned, u64::from(fmap_bytes));
    let mut image_end = align(memory.dram_bytes);
    let tensor_addr = memory
        .homes
        .iter()
        .map(|home| match *home {
            Home::Dram(at) => at as u32,
            Home::Fmap(at) => FMAP_BASE + at as u32,
        })
        .collect::<Vec<u32>>();
    let mut instrs = Vec::new();
    let mut segments: Vec<Segment> = plan
        .tensors
        .iter()
        .zip(&memory.homes)
        .zip(pinned)
        .filter(|(_, &pinned)| pinned)
        .filter_map(|((t, home), _)| match *home {
            Home::Dram(at) => Some(Segment {
                addr: at as u32,
                bytes: vec![0; t.bytes],
            }),
            Home::Fmap(_) => None,
        })
        .collect();
    let mut spans = Vec::with_capacity(plan.layers.len());
    let mut first_instr = Vec::with_capacity(plan.layers.len());
    let mut dirty = Dirty::default();
    for layer in &plan.layers {
        let program = &programs[layer.program];
        let base = image_end;
        image_end = align(base + u64::from(program.dram_size));
        if image_end > MAX_DRAM_BYTES || image_end > u64::from(FMAP_BASE) {
            return Err(LinkError::TooLarge(image_end));
        }
        let bindings: Vec<&Binding> = layer
            .inputs
            .iter()
            .chain(std::iter::once(&layer.output))
            .collect();
        if layer.inputs.iter().any(|i| {
            i.tensor == layer.output.tensor
                && i.offset < layer.output.offset + layer.output.len
                && layer.output.offset < i.offset + i.len
        }) {
            return Err(LinkError::InPlace(layer.name.clone()));
        }
        let start = instrs.len();
        if !instrs.is_empty() {
            instrs.push(Instr::Barrier {});
            dirty.reset(&mut instrs);
        }
        let relocate = |index: usize, lo: u64, hi: u64| -> Result<i64, LinkError> {
            for b in &bindings {
                let (addr, end) = (u64::from(b.addr), u64::from(b.addr) + b.len as u64);
                if addr <= lo && hi <= end {
                    let to = u64::from(tensor_addr[b.tensor]) + b.offset as u64 + (lo - addr);
                    return Ok(to as i64);
                }
                if lo < end && addr < hi {
                    return Err(LinkError::Straddles {
                        layer: layer.name.clone(),
                        index,
                        addr: b.addr,
                        len: b.len,
                    });
                }
            }
            if hi > u64::from(program.dram_size) {
                return Err(LinkError::Outside {
                    layer: layer.name.clone(),
                    index,
                });
            }
            Ok((base + lo) as i64)
        };
        let (mut ld_stride, mut st_stride) = (0i64, 0i64);
        first_instr.push(instrs.len());
        for (index, instr) in program.instrs.iter().enumerate() {
            dirty.note(instr);
            let mut instr = instr.clone();
            match &mut instr {
                Instr::Halt {} => continue,
                Instr::LdCfg { dram_stride, .. } => ld_stride = *dram_stride,
                Instr::StCfg { dram_stride, .. } => st_stride = *dram_stride,
                Instr::Ld {
                    dram,
                    rows,
                    row_bytes,
                    ..
                } => {
                    let (lo, hi) = footprint(*dram, *rows, *row_bytes, ld_stride);
                    *dram = relocate(index, lo, hi)?;
                }
                Instr::St {
                    dram,
                    rows,
                    row_bytes,
                    ..
                } => {
                    let (lo, hi) = footprint(*dram, *rows, *row_bytes, st_stride);
                    *dram = relocate(index, lo, hi)?;
                }
                _ => {}
            }
            instrs.push(instr);
        }
        for seg in &program.segments {
            let (lo, hi) = (
                u64::from(seg.addr),
                u64::from(seg.addr) + seg.bytes.len() as u64,
            );
            let operand = bindings
                .iter()
                .any(|b| lo < u64::from(b.addr) + b.len as u64 && u64::from(b.addr) < hi);
            if !operand && !seg.bytes.is_empty() {
                segments.push(Segment {
                    addr: (base + lo) as u32,
                    bytes: seg.bytes.clone(),
                });
            }
        }
        spans.push(start..instrs.len());
    }
    instrs.push(Instr::Halt {});
    let program = Program {
        instrs,
        dram_size: image_end as u32,
        segments,
    };
    program
        .validate()
        .map_err(|e| LinkError::Plan(format!("linked program: {e}")))?;
    Ok(LinkedPart {
        program,
        tensor_addr,
        spans,
        first_instr,
        memory,
    })
}

/// The DRAM byte range `[lo, hi)` a descriptor covers (`[dram, dram)` when
/// it moves nothing).
fn footprint(dram: i64, rows: i64, row_bytes: i64, stride: i64) -> (u64, u64) {
    let lo = dram.max(0) as u64;
    if rows <= 0 || row_bytes <= 0 {
        return (lo, lo);
    }
    let extent = (rows as u64 - 1) * stride.max(0) as u64 + row_bytes as u64;
    (lo, lo + extent)
}

/// Which configuration registers a layer changed: the next layer gets them
/// back in their reset state, as it had when it ran alone.
#[derive(Default)]
struct Dirty {
    ld: bool,
    st: bool,
    mm: bool,
    rq: bool,
    vec: bool,
    vbin: bool,
}

impl Dirty {
    fn note(&mut self, instr: &Instr) {
        match instr {
            Instr::LdCfg { .. } => self.ld = true,
            Instr::StCfg { .. } => self.st = true,
            Instr::MmCfg { .. } => self.mm = true,
            Instr::RqCfg { .. } => self.rq = true,
            Instr::VecCfg { .. } => self.vec = true,
            Instr::VbinCfg { .. } => self.vbin = true,
            _ => {}
        }
    }

    /// Appends the resets of the changed registers (the simulator's
    /// power-on values) and forgets them.
    fn reset(&mut self, out: &mut Vec<Instr>) {
        let resets = [
            (
                self.ld,
                Instr::LdCfg {
                    dram_stride: 0,
                    sram_stride: 0,
                    pad_top: 0,
                    pad_bottom: 0,
                    pad_left: 0,
                    pad_right: 0,
                },
            ),
            (
                self.st,
                Instr::StCfg {
                    dram_stride: 0,
                    sram_stride: 0,
                },
            ),
            (
                self.mm,
                Instr::MmCfg {
                    a_stride: 0,
                    w_stride: 0,
                    acc_stride: 0,
                },
            ),
            (
                self.rq,
                Instr::RqCfg {
                    multiplier: 1 << 30,
                    shift: 1,
                    zero_point: 0,
                    clamp_min: -128,
                    clamp_max: 127,
                },
            ),
            (
                self.vec,
                Instr::VecCfg {
                    dst_stride: 0,
                    src_stride: 0,
                    src2_stride: 0,
                },
            ),
            (
                self.vbin,
                Instr::VbinCfg {
                    a_offset: 0,
                    a_multiplier: 0,
                    a_shift: 0,
                    b_offset: 0,
                    b_multiplier: 0,
                    b_shift: 0,
                },
            ),
        ];
        out.extend(resets.into_iter().filter(|(d, _)| *d).map(|(_, i)| i));
        *self = Dirty::default();
    }
}
