//! The disassembler: [`Program`] to the text the assembler reads back.

use crate::config::FMAP_BASE;
use crate::isa::{FieldKind, Instr};
use crate::program::Program;
use std::fmt::Write;

const DATA_LINE_BYTES: usize = 32;

/// Formats one instruction as `mnemonic field=value ...`.
pub fn format_instr(instr: &Instr) -> String {
    let spec = instr.spec();
    let mut line = spec.mnemonic.to_string();
    for (field, value) in spec.fields.iter().zip(instr.field_values()) {
        let shown = match field.kind {
            FieldKind::Named(names) => names.get(value as usize).unwrap_or(&"?").to_string(),
            // A DMA address in the fmap window reads better as hex.
            FieldKind::Uint if field.name == "dram" && value >= i64::from(FMAP_BASE) => {
                format!("0x{value:x}")
            }
            FieldKind::Uint | FieldKind::Int => value.to_string(),
        };
        let _ = write!(line, " {}={}", field.name, shown);
    }
    line
}

/// Disassembles a whole program: directives for the DRAM image (each
/// segment opened by `.segment`, so the assembler rebuilds the same
/// segments), then one instruction per line with its index as a comment.
pub fn disassemble(program: &Program) -> String {
    let mut out = String::new();
    let _ = writeln!(out, ".dram {}", program.dram_size);
    for seg in &program.segments {
        let _ = writeln!(out, ".segment 0x{:x}", seg.addr);
        for (i, chunk) in seg.bytes.chunks(DATA_LINE_BYTES).enumerate() {
            let hex: String = chunk.iter().map(|b| format!("{b:02x}")).collect();
            let _ = writeln!(
                out,
                ".data 0x{:x} {hex}",
                seg.addr as usize + i * DATA_LINE_BYTES
            );
        }
    }
    for (index, instr) in program.instrs.iter().enumerate() {
        let _ = writeln!(out, "{:<72} ; #{index}", format_instr(instr));
    }
    out
}
