//! The sandbox of the firmware tests that sign and trust bundles: scratch
//! files in a folder of their own, an empty trust directory (so nothing
//! the developer trusts leaks in) and a test signing key, once per test
//! binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use m4c_runtime::bundle::container;
use m4c_runtime::bundle::format::SectionEntry;

/// Scratch file `name` in folder `dir` of the target's tmp directory,
/// unique to this process.
pub fn scratch(dir: &str, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{}-{name}", std::process::id()))
}

/// An empty trust directory in `dir` (made once per test binary).
pub fn empty_trust_dir(dir: &str) -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = scratch(dir, "no-trust");
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

/// Runs `m4c` with `trust_dir` as its trust directory.
pub fn m4c_trusting(args: &[&str], trust_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_m4c"))
        .args(args)
        .env("M4C_TRUST_DIR", trust_dir)
        .output()
        .unwrap()
}

/// The test signing key (`m4c keygen`, in `dir`): the secret key file and
/// the public one.
pub fn key(dir: &str) -> &'static (PathBuf, PathBuf) {
    static KEY: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    KEY.get_or_init(|| {
        let secret = scratch(dir, "test.key");
        let o = m4c_trusting(
            &["keygen", "-o", secret.to_str().unwrap()],
            empty_trust_dir(dir),
        );
        assert_eq!(o.status.code(), Some(0), "{}", super::text(&o));
        let public = PathBuf::from(format!("{}.pub", secret.display()));
        (secret, public)
    })
}

/// New bytes for a section (given its manifest entry and bytes), or none
/// to keep it.
pub type SectionEdit<'a> = dyn Fn(&SectionEntry, &[u8]) -> Option<Vec<u8>> + 'a;

/// Re-seals an unsigned firmware image with each section's bytes replaced
/// by `edit`'s where it returns some (every offset, checksum and the
/// content hash recomputed): what an attacker without the key can make.
/// Panics when `edit` changed nothing, so that a test cannot pass by
/// missing its section.
pub fn reseal(image: &[u8], edit: &SectionEdit<'_>) -> Vec<u8> {
    let decoded = container::decode(image).unwrap();
    let mut manifest = decoded.manifest;
    let mut edited = false;
    let bytes: Vec<Vec<u8>> = manifest
        .sections
        .iter()
        .map(|s| {
            let bytes = &image[s.offset as usize..(s.offset + s.len) as usize];
            let new = edit(s, bytes);
            edited |= new.is_some();
            new.unwrap_or_else(|| bytes.to_vec())
        })
        .collect();
    assert!(edited, "no section was edited");
    let sections: Vec<container::SectionData> = manifest
        .sections
        .iter()
        .zip(&bytes)
        .map(|(s, bytes)| container::SectionData {
            kind: s.kind,
            name: s.name.clone(),
            bytes,
        })
        .collect();
    manifest.sections.clear();
    container::encode(manifest, &sections)
}
