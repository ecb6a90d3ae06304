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

/// Writes via a temporary file in the same directory and a rename, so a
/// failure never leaves a partial output.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> CliResult<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| format!("{} is not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display()).into()
    })
}
