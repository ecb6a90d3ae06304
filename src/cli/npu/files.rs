//! Reading programs and writing outputs of `m4c npu` (atomically: a
//! temporary file renamed into place, so errors leave nothing half-written).

use std::path::Path;

use m4c_npu::asm::assemble;
use m4c_npu::program::Program;

use crate::cli::CliResult;

pub(super) fn read_text(path: &Path) -> CliResult<String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()).into())
}

/// A binary program, or assembly text when the file lacks the binary magic.
pub(super) fn load_program(path: &Path) -> CliResult<Program> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.starts_with(b"M4NPU") {
        return Program::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()).into());
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        format!(
            "{}: neither an NPU binary nor assembly text",
            path.display()
        )
    })?;
    assemble(&text).map_err(|e| format!("{}: {e}", path.display()).into())
}

/// Writes through the runtime's output helper (a private temporary renamed
/// into place; never over one of `inputs`), so a failure never leaves a
/// partial output.
pub(super) fn write_output(path: &Path, inputs: &[&Path], bytes: &[u8]) -> CliResult<()> {
    Ok(m4c_runtime::outfile::write(path, inputs, bytes)?)
}

/// [`write_output`] for outputs made from no input file (generated layers,
/// traces).
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> CliResult<()> {
    write_output(path, &[], bytes)
}
