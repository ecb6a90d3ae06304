//! Arbitrary bytes as an `.npz` (zip of `.npy`, stored or deflated):
//! `read_npz` returns arrays or an error naming the file, and never
//! allocates what the headers claim before checking it.
#![no_main]

#[path = "scratch.rs"]
mod scratch;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = scratch::file("arrays.npz", data);
    let _ = m4c_runtime::read_npz(&path);
});
