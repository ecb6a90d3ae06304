//! Arbitrary text as a task manifest (`tasks.toml`), parsed relative to a
//! scratch folder: paths that leave it, unknown keys and bad values are
//! errors, never panics.
#![no_main]

#[path = "scratch.rs"]
mod scratch;

use libfuzzer_sys::fuzz_target;
use m4c_runtime::task::TaskManifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = TaskManifest::parse(text, scratch::dir());
    }
});
