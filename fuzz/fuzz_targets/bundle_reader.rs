//! Arbitrary bytes as a bundle: `Bundle::from_bytes` and
//! `AdapterBundle::from_bytes` return, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use m4c_runtime::adapter::AdapterBundle;
use m4c_runtime::bundle::Bundle;

fuzz_target!(|data: &[u8]| {
    let _ = Bundle::from_bytes(data);
    let _ = AdapterBundle::from_bytes(data);
});
