//! Writing a file so that readers see the old file or the whole new one.

use std::io::Write;
use std::path::Path;

use super::BuildError;

/// Writes `bytes` to a temporary file next to `path`, flushes it to disk
/// and renames it over `path`. On any error nothing is left behind (the
/// temporary file is removed) and an existing `path` is untouched.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    let io = |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".m4c-bundle-");
    // A temporary file is private (0600); the bundle is an ordinary file,
    // readable as the umask allows.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut tmp = builder.tempfile_in(dir).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.fw");
        std::fs::write(&path, b"old").unwrap();
        write_atomically(&path, b"new contents").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn the_bundle_gets_an_ordinary_files_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let (plain, bundle) = (dir.path().join("plain"), dir.path().join("x.fw"));
        std::fs::write(&plain, b"x").unwrap();
        write_atomically(&bundle, b"x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions();
        assert_eq!(mode(&bundle), mode(&plain));
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_path() {
        let e = write_atomically(Path::new("/nonexistent-dir/x.fw"), b"x").unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir/x.fw"), "{e}");
    }
}
