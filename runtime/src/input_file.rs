//! Opening the files a user hands m4c: only regular files are read (a FIFO,
//! device or directory is refused without blocking), files a model or a
//! manifest refers to must resolve inside its folder, and sizes claimed by a
//! file are checked against a memory budget before anything is allocated.
//!
//! Every loader of the runtime and the compiler (npz, ONNX models and their
//! external data, task manifests, adapters, projections) opens its input
//! here, so the rules hold in one place.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// What kind of non-regular file `t` is, for messages.
fn kind(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

fn not_regular(t: std::fs::FileType) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("not a regular file ({})", kind(t)),
    )
}

/// Opens `path` for reading when it is (after following symlinks) a regular
/// file. The file type is checked before opening and again on the open
/// handle; the open itself is non-blocking, so a FIFO swapped in between
/// cannot block the caller either.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let t = std::fs::metadata(path)?.file_type();
    if !t.is_file() {
        return Err(not_regular(t));
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let t = file.metadata()?.file_type();
    if !t.is_file() {
        return Err(not_regular(t));
    }
    // O_NONBLOCK has no effect on reads of a regular file.
    Ok(file)
}

/// Reads the whole regular file at `path`, refusing files larger than
/// `max_bytes` before reading them.
pub fn read_regular(path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let len = file.metadata()?.len();
    if len > max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{len} bytes, more than the {max_bytes}-byte limit"),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(max_bytes).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Resolves `path` (relative paths against `dir`) and checks that the file
/// it names, after following every symlink, lies inside `dir`, as
/// onnxruntime requires of external data. Returns the resolved path.
pub fn resolve_inside(dir: &Path, path: &Path) -> io::Result<PathBuf> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let root = dir.canonicalize()?;
    let target = dir.join(path).canonicalize()?;
    if !target.starts_with(&root) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("resolves outside its folder {}", dir.display()),
        ));
    }
    Ok(target)
}

/// The memory budget for allocations sized by an input file: the
/// process-wide budget (`m4c_ops::budget::max_memory`, which `--max-memory`
/// sets; by default half of physical memory, at most 8 GiB), and at most
/// half of the process's address-space limit when one is set (`ulimit -v`).
pub fn memory_budget() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: getrlimit writes only the struct it is given.
    let address_space = if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } == 0
        && limit.rlim_cur != libc::RLIM_INFINITY
    {
        limit.rlim_cur / 2
    } else {
        u64::MAX
    };
    (m4c_ops::budget::max_memory() as u64).min(address_space)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("m4c-input-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn regular_files_open_and_others_are_refused() {
        let dir = temp_dir("kinds");
        let file = dir.join("a.bin");
        std::fs::write(&file, b"abc").unwrap();
        assert_eq!(read_regular(&file, 3).unwrap(), b"abc");
        let e = read_regular(&file, 2).unwrap_err().to_string();
        assert!(e.contains("more than the 2-byte limit"), "{e}");
        let e = open_regular(&dir).unwrap_err().to_string();
        assert_eq!(e, "not a regular file (a directory)");
        let e = open_regular(Path::new("/dev/null"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "not a regular file (a character device)");
        let fifo = dir.join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let e = open_regular(&fifo).unwrap_err().to_string();
        assert_eq!(e, "not a regular file (a FIFO)");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn paths_must_resolve_inside_the_folder() {
        let dir = temp_dir("inside");
        let inner = dir.join("model");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::write(inner.join("w.bin"), b"w").unwrap();
        std::fs::write(dir.join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(dir.join("secret"), inner.join("link")).unwrap();
        std::os::unix::fs::symlink("w.bin", inner.join("ok-link")).unwrap();
        assert!(resolve_inside(&inner, Path::new("w.bin")).is_ok());
        assert!(resolve_inside(&inner, Path::new("ok-link")).is_ok());
        for escaping in ["link", "../secret"] {
            let e = resolve_inside(&inner, Path::new(escaping)).unwrap_err();
            assert!(e.to_string().contains("resolves outside its folder"), "{e}");
        }
        let abs = dir.join("secret");
        assert!(resolve_inside(&inner, &abs).is_err());
        assert!(resolve_inside(&inner, Path::new("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_budget_is_positive() {
        assert!(memory_budget() > 0);
    }
}
