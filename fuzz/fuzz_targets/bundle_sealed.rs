//! Arbitrary bytes as a bundle whose header, content hash and section
//! checksums are then made valid, so that the fuzzer reaches what lies
//! behind them: the manifest schema, the layout, weight tables (lean
//! bundles' weights read back from the compiled code included) and the IR
//! parser. Input: the manifest JSON, a 0 byte, then the file's body, which
//! is placed at the lowest section offset the manifest names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use m4c_runtime::bundle::container::seal;
use m4c_runtime::bundle::format::{Manifest, FORMAT_VERSION};
use m4c_runtime::bundle::Bundle;

/// Bodies placed further out than this would only test allocation.
const MAX_START: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (json, body) = (&data[..split], data.get(split + 1..).unwrap_or(&[]));
    let Ok(mut manifest) = serde_json::from_slice::<Manifest>(json) else {
        let _ = Bundle::from_bytes(&seal(FORMAT_VERSION, json, &[]));
        return;
    };
    let start = manifest
        .sections
        .iter()
        .map(|s| s.offset)
        .min()
        .unwrap_or(0);
    if start > MAX_START {
        return;
    }
    for s in &mut manifest.sections {
        let from = (s.offset - start) as usize;
        if let Some(bytes) = body.get(from..from.saturating_add(s.len as usize)) {
            s.blake3 = blake3::hash(bytes).to_hex().to_string();
        }
    }
    let json = serde_json::to_vec(&manifest).expect("serializes");
    let Ok(fw) = Bundle::from_bytes(&seal(FORMAT_VERSION, &json, &[(start, body)])) else {
        return;
    };
    // A module's graph, with weights read back from the compiled code
    // (lean bundles: packed panels unpacked), and its interface.
    for m in &fw.manifest().modules {
        let _ = fw.module(&m.name);
        let _ = fw.module_interface(&m.name);
    }
});
