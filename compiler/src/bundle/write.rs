//! Writing a bundle so that readers see the old file or the whole new one:
//! the runtime's output helper (`m4c_runtime::outfile`), which every m4c
//! command writes its files through.

use std::path::Path;

use super::BuildError;

/// Writes `bytes` to `path` through [`m4c_runtime::outfile::write`]: a
/// private temporary in the same directory, synced and renamed into place;
/// `path` may not be one of `inputs`, a symbolic link or a non-regular
/// file. On any error nothing is left behind.
pub fn write_atomically(path: &Path, inputs: &[&Path], bytes: &[u8]) -> Result<(), BuildError> {
    Ok(m4c_runtime::outfile::write(path, inputs, bytes)?)
}
