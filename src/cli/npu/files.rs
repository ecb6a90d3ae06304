//! Reading programs and writing outputs of `m4c npu` (atomically: a
//! temporary file renamed into place, so errors leave nothing half-written).

use std::path::Path;

use m4c_npu::asm::assemble;
use m4c_npu::program::Program;
use m4c_runtime::input_file::{memory_budget, read_regular};

use crate::cli::CliResult;

/// The bytes of an input file (a regular file, within the memory budget).
fn read_input(path: &Path) -> CliResult<Vec<u8>> {
    read_regular(path, memory_budget())
        .map_err(|e| format!("cannot read {}: {e}", path.display()).into())
}

pub(super) fn read_text(path: &Path) -> CliResult<String> {
    String::from_utf8(read_input(path)?)
        .map_err(|_| format!("{}: not UTF-8 text", path.display()).into())
}

/// A binary program, or assembly text when the file lacks the binary magic.
pub(super) fn load_program(path: &Path) -> CliResult<Program> {
    let bytes = read_input(path)?;
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
