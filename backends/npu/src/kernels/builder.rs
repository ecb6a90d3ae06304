//! Emitting checked instructions and laying out the DRAM image.

use super::KernelError;
use crate::isa::Instr;
use crate::program::{Program, Segment};

/// DRAM allocations are aligned to this many bytes.
const DRAM_ALIGN: u64 = 64;

/// Builds a program: instructions (range-checked as they are emitted) and
/// DRAM regions; drops configuration instructions that would not change
/// the engine's registers.
#[derive(Default)]
pub struct ProgramBuilder {
    instrs: Vec<Instr>,
    dram_size: u64,
    segments: Vec<Segment>,
    /// The last configuration instruction of each opcode: each sets one
    /// engine's registers, which nothing else changes.
    last_config: std::collections::HashMap<u8, Option<Instr>>,
}

impl ProgramBuilder {
    /// Appends one instruction after checking its field ranges.
    pub fn emit(&mut self, instr: Instr) -> Result<(), KernelError> {
        instr
            .check_ranges()
            .map_err(|(field, value)| KernelError::FieldRange {
                mnemonic: instr.spec().mnemonic,
                field,
                value,
            })?;
        let is_config = matches!(
            instr,
            Instr::LdCfg { .. }
                | Instr::StCfg { .. }
                | Instr::MmCfg { .. }
                | Instr::VecCfg { .. }
                | Instr::RqCfg { .. }
                | Instr::VbinCfg { .. }
        );
        if is_config {
            let slot = self.last_config.entry(instr.opcode()).or_default();
            if slot.as_ref() == Some(&instr) {
                return Ok(());
            }
            *slot = Some(instr.clone());
        }
        self.instrs.push(instr);
        Ok(())
    }

    /// Reserves `len` zeroed DRAM bytes; their address.
    pub fn alloc(&mut self, len: usize) -> Result<u32, KernelError> {
        let addr = self.dram_size.div_ceil(DRAM_ALIGN) * DRAM_ALIGN;
        self.dram_size = addr + len as u64;
        if self.dram_size > crate::program::MAX_DRAM_BYTES {
            return Err(KernelError::DoesNotFit(format!(
                "DRAM image of {} bytes",
                self.dram_size
            )));
        }
        Ok(addr as u32)
    }

    /// Reserves DRAM initialised with `bytes`; their address.
    pub fn alloc_data(&mut self, bytes: Vec<u8>) -> Result<u32, KernelError> {
        let addr = self.alloc(bytes.len())?;
        self.segments.push(Segment { addr, bytes });
        Ok(addr)
    }

    /// Appends `halt` and returns the validated program.
    pub fn finish(mut self) -> Result<Program, KernelError> {
        self.emit(Instr::Halt {})?;
        let program = Program {
            instrs: self.instrs,
            dram_size: self.dram_size as u32,
            segments: self.segments,
        };
        program
            .validate()
            .map_err(|e| KernelError::Internal(e.to_string()))?;
        Ok(program)
    }
}
