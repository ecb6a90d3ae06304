//! A program: instructions plus the initial DRAM image, and its binary
//! container format (`.npub`).
//!
//! Layout (little-endian): magic `M4NPU\0`, version `u16` = 1, instruction
//! count `u32`, DRAM size `u32`, segment count `u32`; then 16 bytes per
//! instruction; then per segment its DRAM address `u32`, length `u32` and bytes.

use crate::isa::{decode_word, encode_word, Instr};

const MAGIC: &[u8; 6] = b"M4NPU\0";
const VERSION: u16 = 1;
/// The largest DRAM image a program may declare (4 GiB address space, capped at 1 GiB).
pub const MAX_DRAM_BYTES: u64 = 1 << 30;

/// Initial contents of a DRAM range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// First DRAM byte address.
    pub addr: u32,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// An NPU program with its DRAM image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Program {
    /// Instructions in dispatch order; the last one is `halt`.
    pub instrs: Vec<Instr>,
    /// Size of the DRAM image in bytes.
    pub dram_size: u32,
    /// Initialised DRAM ranges (the rest is zero).
    pub segments: Vec<Segment>,
}

/// Why a program is malformed. Instruction indices are 0-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgramError {
    /// The file does not start with the container magic.
    #[error("not an NPU program (bad magic)")]
    BadMagic,
    /// Unsupported container version.
    #[error("unsupported program version {0} (expected {VERSION})")]
    BadVersion(u16),
    /// The file ends early.
    #[error("program truncated while reading {0}")]
    Truncated(&'static str),
    /// Bytes after the last segment.
    #[error("{0} trailing bytes after the last segment")]
    TrailingBytes(usize),
    /// An instruction word does not decode.
    #[error("instruction #{index}: {source}")]
    BadWord {
        /// Instruction index.
        index: usize,
        /// What is wrong with it.
        source: crate::isa::encoding::WordError,
    },
    /// A field value does not fit its width.
    #[error("instruction #{index} `{mnemonic}`: {field}={value} out of range")]
    FieldRange {
        /// Instruction index.
        index: usize,
        /// Mnemonic.
        mnemonic: &'static str,
        /// Field name.
        field: &'static str,
        /// The value.
        value: i64,
    },
    /// The DRAM image is too large.
    #[error("DRAM size {0} exceeds the {MAX_DRAM_BYTES}-byte limit")]
    DramTooLarge(u64),
    /// A data segment lies outside the DRAM image.
    #[error(
        "data segment at 0x{addr:x} (+{len} bytes) lies outside the {dram_size}-byte DRAM image"
    )]
    SegmentOutside {
        /// Segment address.
        addr: u32,
        /// Segment length.
        len: usize,
        /// DRAM size.
        dram_size: u32,
    },
    /// The last instruction is not `halt`, or `halt` appears earlier.
    #[error("{0}")]
    Halt(String),
    /// A semaphore is waited on a different number of times than it is signalled.
    #[error("unbalanced semaphore s{sem}: {signals} signals but {waits} waits (first use at instruction #{first})")]
    UnbalancedSemaphore {
        /// Semaphore id.
        sem: i64,
        /// Number of `signal`s.
        signals: usize,
        /// Number of `wait`s.
        waits: usize,
        /// First instruction using it.
        first: usize,
    },
}

impl Program {
    /// Serialises to the binary container.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(26 + 16 * self.instrs.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.instrs.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.dram_size.to_le_bytes());
        out.extend_from_slice(&(self.segments.len() as u32).to_le_bytes());
        for instr in &self.instrs {
            out.extend_from_slice(&encode_word(instr).to_le_bytes());
        }
        for seg in &self.segments {
            out.extend_from_slice(&seg.addr.to_le_bytes());
            out.extend_from_slice(&(seg.bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&seg.bytes);
        }
        out
    }

    /// Parses and validates a binary container (see [`Program::validate`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Program, ProgramError> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take(6, "magic")? != MAGIC {
            return Err(ProgramError::BadMagic);
        }
        let version = u16::from_le_bytes(r.array("version")?);
        if version != VERSION {
            return Err(ProgramError::BadVersion(version));
        }
        let n_instrs = r.u32("instruction count")? as usize;
        let dram_size = r.u32("DRAM size")?;
        let n_segments = r.u32("segment count")? as usize;
        let mut instrs = Vec::with_capacity(n_instrs.min(bytes.len() / 16));
        for index in 0..n_instrs {
            let word = u128::from_le_bytes(r.array("instructions")?);
            instrs
                .push(decode_word(word).map_err(|source| ProgramError::BadWord { index, source })?);
        }
        let mut segments = Vec::new();
        for _ in 0..n_segments {
            let addr = r.u32("segment address")?;
            let len = r.u32("segment length")? as usize;
            segments.push(Segment {
                addr,
                bytes: r.take(len, "segment data")?.to_vec(),
            });
        }
        if r.pos != bytes.len() {
            return Err(ProgramError::TrailingBytes(bytes.len() - r.pos));
        }
        let program = Program {
            instrs,
            dram_size,
            segments,
        };
        program.validate()?;
        Ok(program)
    }

    /// Machine-independent checks: field ranges, segments inside DRAM,
    /// exactly one `halt` at the end, every semaphore balanced.
    pub fn validate(&self) -> Result<(), ProgramError> {
        if self.dram_size as u64 > MAX_DRAM_BYTES {
            return Err(ProgramError::DramTooLarge(self.dram_size as u64));
        }
        for seg in &self.segments {
            if seg.addr as u64 + seg.bytes.len() as u64 > self.dram_size as u64 {
                return Err(ProgramError::SegmentOutside {
                    addr: seg.addr,
                    len: seg.bytes.len(),
                    dram_size: self.dram_size,
                });
            }
        }
        let mut sems: [(usize, usize, Option<usize>); 16] = [(0, 0, None); 16];
        for (index, instr) in self.instrs.iter().enumerate() {
            instr
                .check_ranges()
                .map_err(|(field, value)| ProgramError::FieldRange {
                    index,
                    mnemonic: instr.spec().mnemonic,
                    field,
                    value,
                })?;
            let is_last = index + 1 == self.instrs.len();
            match instr {
                Instr::Halt {} if !is_last => {
                    return Err(ProgramError::Halt(format!(
                        "instruction #{index}: `halt` before the end of the program"
                    )))
                }
                Instr::Signal { sem, .. } | Instr::Wait { sem, .. } => {
                    let entry = &mut sems[*sem as usize];
                    entry.2.get_or_insert(index);
                    if matches!(instr, Instr::Signal { .. }) {
                        entry.0 += 1;
                    } else {
                        entry.1 += 1;
                    }
                }
                _ => {}
            }
        }
        if !matches!(self.instrs.last(), Some(Instr::Halt {})) {
            return Err(ProgramError::Halt(
                "program does not end with `halt`".into(),
            ));
        }
        for (sem, (signals, waits, first)) in sems.iter().enumerate() {
            if signals != waits {
                return Err(ProgramError::UnbalancedSemaphore {
                    sem: sem as i64,
                    signals: *signals,
                    waits: *waits,
                    first: first.unwrap_or(0),
                });
            }
        }
        Ok(())
    }

    /// Replaces the bytes of the segment at `addr` with `bytes` of the same
    /// length: how a compiled layer is run on a run-time operand (the
    /// generator left a placeholder segment there). An empty segment at
    /// the same address (an absent optional operand) is not it.
    pub fn set_segment(&mut self, addr: u32, bytes: &[u8]) -> Result<(), String> {
        let seg = self
            .segments
            .iter_mut()
            .find(|s| s.addr == addr && !s.bytes.is_empty())
            .ok_or_else(|| format!("no data segment at 0x{addr:x}"))?;
        if seg.bytes.len() != bytes.len() {
            return Err(format!(
                "segment at 0x{addr:x} holds {} bytes, not {}",
                seg.bytes.len(),
                bytes.len()
            ));
        }
        seg.bytes.copy_from_slice(bytes);
        Ok(())
    }

    /// The initial DRAM image.
    pub fn dram_image(&self) -> Vec<u8> {
        let mut dram = vec![0u8; self.dram_size as usize];
        for seg in &self.segments {
            let start = seg.addr as usize;
            dram[start..start + seg.bytes.len()].copy_from_slice(&seg.bytes);
        }
        dram
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProgramError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(ProgramError::Truncated(what))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ProgramError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, ProgramError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Program {
        Program {
            instrs: vec![
                Instr::Signal { engine: 0, sem: 3 },
                Instr::Wait { engine: 1, sem: 3 },
                Instr::Halt {},
            ],
            dram_size: 64,
            segments: vec![Segment {
                addr: 8,
                bytes: vec![1, 2, 3],
            }],
        }
    }

    #[test]
    fn binary_round_trip() {
        let p = tiny();
        assert_eq!(Program::from_bytes(&p.to_bytes()).unwrap(), p);
        assert_eq!(p.dram_image()[8..11], [1, 2, 3]);
    }

    #[test]
    fn malformed_containers_are_errors() {
        let bytes = tiny().to_bytes();
        assert_eq!(
            Program::from_bytes(b"nope"),
            Err(ProgramError::Truncated("magic"))
        );
        assert_eq!(
            Program::from_bytes(b"XXXXXXXXXXXXXXXXXXXXXXXXXX"),
            Err(ProgramError::BadMagic)
        );
        for cut in [10, 30, bytes.len() - 1] {
            assert!(matches!(
                Program::from_bytes(&bytes[..cut]),
                Err(ProgramError::Truncated(_))
            ));
        }
        let mut bad_op = bytes.clone();
        bad_op[26 + 16] = 0x7f; // opcode of instruction #1
        assert!(matches!(
            Program::from_bytes(&bad_op),
            Err(ProgramError::BadWord { index: 1, .. })
        ));
    }

    #[test]
    fn semantic_errors_name_the_instruction() {
        let mut p = tiny();
        p.instrs.remove(1);
        assert!(matches!(
            p.validate(),
            Err(ProgramError::UnbalancedSemaphore {
                sem: 3,
                first: 0,
                ..
            })
        ));
        let mut p = tiny();
        p.instrs.pop();
        assert!(matches!(p.validate(), Err(ProgramError::Halt(_))));
        let mut p = tiny();
        p.segments[0].addr = 62;
        assert!(matches!(
            p.validate(),
            Err(ProgramError::SegmentOutside { .. })
        ));
        let mut p = tiny();
        p.instrs[0] = Instr::Signal { engine: 0, sem: 16 };
        assert!(matches!(
            p.validate(),
            Err(ProgramError::FieldRange { index: 0, .. })
        ));
    }
}
