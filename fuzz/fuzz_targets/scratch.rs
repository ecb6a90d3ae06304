//! A per-process scratch directory for targets whose loader takes a path:
//! the fuzzer's bytes are written to a file there first.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// `name` inside this process's scratch directory (on /dev/shm when it
/// exists), holding `bytes`.
pub fn file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir().join(name);
    std::fs::write(&path, bytes).expect("scratch file");
    path
}

/// The scratch directory, created on first use.
pub fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("m4c-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    })
}
