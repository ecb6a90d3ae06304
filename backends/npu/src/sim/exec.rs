//! Functional execution of one instruction against the machine state,
//! returning the regions it touched and the work it did.

mod vector;

pub use vector::BinOp;

use super::memory::{Mem, Region};
use crate::config::{Dataflow, MachineConfig, FMAP_BASE};
use crate::fixed::Prescale;
use crate::isa::{Instr, Space};
use crate::quant::{Requant, SHIFT_RANGE};

/// Memories and per-engine configuration registers.
pub struct MachineState {
    /// DRAM image.
    pub dram: Vec<u8>,
    /// Feature-map SRAM (the DMA window at [`FMAP_BASE`]).
    pub fmap: Vec<u8>,
    /// Weight SRAM.
    pub weight: Vec<u8>,
    /// Activation SRAM.
    pub act: Vec<u8>,
    /// Accumulator.
    pub acc: Vec<i32>,
    ld: [u64; 6],
    st: [u64; 2],
    mm: [u64; 3],
    vec: [u64; 3],
    rq: Requant,
    prescale: [Prescale; 2],
}

/// What one instruction did: regions read and written, and work counts
/// that the timing and energy models turn into cycles and picojoules.
#[derive(Default, Debug)]
pub struct Effect {
    /// Regions read.
    pub reads: Vec<Region>,
    /// Regions written.
    pub writes: Vec<Region>,
    /// Multiply-accumulates.
    pub macs: u64,
    /// Vector-lane element operations.
    pub vector_ops: u64,
    /// Special-function-unit element operations.
    pub sfu_ops: u64,
    /// Multiplies done by vector lanes (`vbin mul`/`mulq`/`mac`).
    pub vector_macs: u64,
    /// Matmul shape (m, k, n), for the matrix timing model.
    pub matmul: Option<(u64, u64, u64)>,
}

/// The state of a fresh machine running a program with this DRAM image.
impl MachineState {
    /// Zeroed SRAMs sized by `config`, DRAM from the program. (Zeroed
    /// vectors are allocated zeroed by the OS: the pages of an fmap a
    /// program never touches cost nothing.)
    pub fn new(config: &MachineConfig, dram: Vec<u8>) -> MachineState {
        MachineState {
            dram,
            fmap: vec![0; config.fmap_sram_bytes as usize],
            weight: vec![0; config.weight_sram_bytes as usize],
            act: vec![0; config.act_sram_bytes as usize],
            acc: vec![0; config.acc_entries()],
            ld: [0; 6],
            st: [0; 2],
            mm: [0; 3],
            vec: [0; 3],
            rq: Requant {
                multiplier: 1 << 30,
                shift: 1,
                zero_point: 0,
                clamp_min: -128,
                clamp_max: 127,
            },
            prescale: [Prescale::IDENTITY; 2],
        }
    }

    fn sram(&self, mem: Mem) -> &[u8] {
        if mem == Mem::Weight {
            &self.weight
        } else {
            &self.act
        }
    }

    fn sram_mut(&mut self, mem: Mem) -> &mut [u8] {
        if mem == Mem::Weight {
            &mut self.weight
        } else {
            &mut self.act
        }
    }

    fn len(&self, mem: Mem) -> usize {
        match mem {
            Mem::Weight => self.weight.len(),
            Mem::Act => self.act.len(),
            Mem::Acc => self.acc.len(),
            Mem::Dram => self.dram.len(),
            Mem::Fmap => self.fmap.len(),
        }
    }

    fn checked(&self, r: Region) -> Result<Region, String> {
        r.check(self.len(r.mem)).map(|_| r)
    }

    /// The DRAM-side region of a DMA descriptor whose `dram` field is
    /// `addr`: the fmap SRAM (at `addr - FMAP_BASE`) from [`FMAP_BASE`] up,
    /// the DRAM image below; every row must lie in that one memory.
    fn dma_side(&self, addr: u64, rows: u64, row_len: u64, stride: u64) -> Result<Region, String> {
        let window = addr.checked_sub(u64::from(FMAP_BASE));
        let region = Region {
            mem: if window.is_some() {
                Mem::Fmap
            } else {
                Mem::Dram
            },
            base: window.unwrap_or(addr),
            rows,
            row_len,
            stride,
        };
        if window.is_some() && self.fmap.is_empty() && rows > 0 {
            return Err(format!(
                "DMA address 0x{addr:x} is in the fmap window (0x{FMAP_BASE:x}..), \
                 but this machine has no fmap SRAM (fmap_sram_bytes = 0)"
            ));
        }
        self.checked(region).map_err(|message| {
            let last_row = rows.saturating_sub(1).checked_mul(stride);
            let end = last_row.and_then(|l| l.checked_add(addr)?.checked_add(row_len));
            match window {
                Some(_) => format!("{message} (window address 0x{addr:x})"),
                None if end.is_none_or(|end| end > u64::from(FMAP_BASE)) => format!(
                    "{message}: it reaches the fmap window at 0x{FMAP_BASE:x}, but a DMA \
                     descriptor must lie wholly in the DRAM image or wholly in the window"
                ),
                None => message,
            }
        })
    }

    /// The bytes of the DRAM image or of the fmap SRAM.
    fn dma_memory(&mut self, mem: Mem) -> &mut Vec<u8> {
        if mem == Mem::Fmap {
            &mut self.fmap
        } else {
            &mut self.dram
        }
    }

    /// Executes `instr` (not `halt`/`barrier`/`wait`/`signal`); an error
    /// message for a trap.
    pub fn execute(&mut self, instr: &Instr, config: &MachineConfig) -> Result<Effect, String> {
        let u = |v: &i64| *v as u64;
        let mut fx = Effect::default();
        match instr {
            Instr::LdCfg {
                dram_stride,
                sram_stride,
                pad_top,
                pad_bottom,
                pad_left,
                pad_right,
            } => {
                self.ld = [
                    dram_stride,
                    sram_stride,
                    pad_top,
                    pad_bottom,
                    pad_left,
                    pad_right,
                ]
                .map(u);
            }
            Instr::StCfg {
                dram_stride,
                sram_stride,
            } => self.st = [u(dram_stride), u(sram_stride)],
            Instr::MmCfg {
                a_stride,
                w_stride,
                acc_stride,
            } => self.mm = [u(a_stride), u(w_stride), u(acc_stride)],
            Instr::VecCfg {
                dst_stride,
                src_stride,
                src2_stride,
            } => self.vec = [u(dst_stride), u(src_stride), u(src2_stride)],
            Instr::RqCfg {
                multiplier,
                shift,
                zero_point,
                clamp_min,
                clamp_max,
            } => {
                if !SHIFT_RANGE.contains(&(*shift as i32)) {
                    return Err(format!("shift={shift} outside {SHIFT_RANGE:?}"));
                }
                if clamp_min > clamp_max {
                    return Err(format!("clamp_min={clamp_min} > clamp_max={clamp_max}"));
                }
                self.rq = Requant {
                    multiplier: *multiplier as i32,
                    shift: *shift as i32,
                    zero_point: *zero_point as i32,
                    clamp_min: *clamp_min as i8,
                    clamp_max: *clamp_max as i8,
                };
            }
            Instr::Ld {
                space,
                sram,
                dram,
                rows,
                row_bytes,
            } => self.load(
                space_mem(*space),
                u(sram),
                u(dram),
                u(rows),
                u(row_bytes),
                &mut fx,
            )?,
            Instr::St {
                space,
                sram,
                dram,
                rows,
                row_bytes,
            } => {
                let [dram_stride, sram_stride] = self.st;
                let src = self.checked(Region {
                    mem: space_mem(*space),
                    base: u(sram),
                    rows: u(rows),
                    row_len: u(row_bytes),
                    stride: sram_stride,
                })?;
                let dst = self.dma_side(u(dram), u(rows), u(row_bytes), dram_stride)?;
                let n = u(row_bytes) as usize;
                let mut target = std::mem::take(self.dma_memory(dst.mem));
                let sram = self.sram(src.mem);
                for (s, d) in src.row_starts().zip(dst.row_starts()) {
                    target[d..d + n].copy_from_slice(&sram[s..s + n]);
                }
                *self.dma_memory(dst.mem) = target;
                fx.reads.push(src);
                fx.writes.push(dst);
            }
            Instr::Matmul {
                acc,
                a,
                w,
                m,
                k,
                n,
                accumulate,
            } => self.matmul(
                config,
                [u(acc), u(a), u(w)],
                [u(m), u(k), u(n)],
                *accumulate != 0,
                &mut fx,
            )?,
            Instr::Halt {} | Instr::Barrier {} | Instr::Wait { .. } | Instr::Signal { .. } => {}
            _ => return self.execute_vector(instr).unwrap_or(Ok(fx)),
        }
        Ok(fx)
    }

    #[allow(clippy::too_many_arguments)]
    fn load(
        &mut self,
        mem: Mem,
        sram: u64,
        dram: u64,
        rows: u64,
        row_bytes: u64,
        fx: &mut Effect,
    ) -> Result<(), String> {
        let [dram_stride, sram_stride, top, bottom, left, right] = self.ld;
        let src = self.dma_side(dram, rows, row_bytes, dram_stride)?;
        let dst = self.checked(Region {
            mem,
            base: sram,
            rows: top + rows + bottom,
            row_len: left + row_bytes + right,
            stride: sram_stride,
        })?;
        if sram_stride < dst.row_len && dst.rows > 1 {
            return Err(format!(
                "sram_stride={sram_stride} is shorter than the padded row ({} bytes)",
                dst.row_len
            ));
        }
        let image = std::mem::take(self.dma_memory(src.mem));
        let sram_mem = self.sram_mut(mem);
        let (left, n) = (left as usize, row_bytes as usize);
        for (r, d) in dst.row_starts().enumerate() {
            let row = &mut sram_mem[d..d + dst.row_len as usize];
            row.fill(0);
            if let Some(data_row) = (r as u64).checked_sub(top).filter(|&i| i < rows) {
                let s = (src.base + data_row * dram_stride) as usize;
                row[left..left + n].copy_from_slice(&image[s..s + n]);
            }
        }
        *self.dma_memory(src.mem) = image;
        fx.reads.push(src);
        fx.writes.push(dst);
        Ok(())
    }

    fn matmul(
        &mut self,
        config: &MachineConfig,
        [acc, a, w]: [u64; 3],
        [m, k, n]: [u64; 3],
        accumulate: bool,
        fx: &mut Effect,
    ) -> Result<(), String> {
        let (rows, cols) = (config.array_rows as u64, config.array_cols as u64);
        let (dim, name, limit) = match config.dataflow {
            Dataflow::Ws if k > rows => (k, "k", rows),
            Dataflow::Os if m > rows => (m, "m", rows),
            _ if n > cols => (n, "n", cols),
            _ => (0, "", 0),
        };
        if !name.is_empty() {
            return Err(format!(
                "{name}={dim} exceeds the array's {limit} {}",
                if name == "n" { "columns" } else { "rows" }
            ));
        }
        let [a_stride, w_stride, acc_stride] = self.mm;
        let ra = self.checked(Region {
            mem: Mem::Act,
            base: a,
            rows: m,
            row_len: k,
            stride: a_stride,
        })?;
        let rw = self.checked(Region {
            mem: Mem::Weight,
            base: w,
            rows: k,
            row_len: n,
            stride: w_stride,
        })?;
        let racc = self.checked(Region {
            mem: Mem::Acc,
            base: acc,
            rows: m,
            row_len: n,
            stride: acc_stride,
        })?;
        let (k, n) = (k as usize, n as usize);
        for (a_start, acc_start) in ra.row_starts().zip(racc.row_starts()) {
            let out = &mut self.acc[acc_start..acc_start + n];
            if !accumulate {
                out.fill(0);
            }
            let a_row = &self.act[a_start..a_start + k];
            for (kk, w_start) in rw.row_starts().enumerate() {
                let av = a_row[kk] as i8 as i32;
                if av == 0 {
                    continue;
                }
                let w_row = &self.weight[w_start..w_start + n];
                for (o, &wv) in out.iter_mut().zip(w_row) {
                    *o = o.wrapping_add(av * (wv as i8 as i32));
                }
            }
        }
        fx.macs = m * k as u64 * n as u64;
        fx.matmul = Some((m, k as u64, n as u64));
        fx.reads.extend([ra, rw]);
        if accumulate {
            fx.reads.push(racc);
        }
        fx.writes.push(racc);
        Ok(())
    }
}

fn space_mem(code: i64) -> Mem {
    match Space::from_code(code) {
        Some(Space::Weight) => Mem::Weight,
        _ => Mem::Act,
    }
}
