//! Arbitrary bytes as a bundle whose header, content hash and section
//! checksums are then made valid, so that the fuzzer reaches what lies
//! behind them: the manifest schema, the layout, weight tables and the IR
//! parser. Input: the manifest JSON, a 0 byte, then the file's body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use m4c_runtime::bundle::container::seal;
use m4c_runtime::bundle::format::{align_up, Manifest, FORMAT_VERSION, HEADER_LEN};
use m4c_runtime::bundle::Bundle;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (json, body) = (&data[..split], data.get(split + 1..).unwrap_or(&[]));
    let Ok(mut manifest) = serde_json::from_slice::<Manifest>(json) else {
        let _ = Bundle::from_bytes(&seal(FORMAT_VERSION, json, &[]));
        return;
    };
    // The body goes right after the manifest (as the writer puts it), with
    // room for the checksums, recomputed over whatever each section covers.
    let probe = serde_json::to_vec(&manifest).expect("serializes");
    let Some(start) = align_up(HEADER_LEN + probe.len() + 64 * manifest.sections.len()) else {
        return;
    };
    let file_len = start + body.len();
    for s in &mut manifest.sections {
        let range = (s.offset as usize).checked_sub(start).and_then(|from| {
            let to = from.checked_add(s.len as usize)?;
            (to <= body.len() && s.offset as usize + (s.len as usize) <= file_len)
                .then_some(from..to)
        });
        if let Some(r) = range {
            s.blake3 = blake3::hash(&body[r]).to_hex().to_string();
        }
    }
    let json = serde_json::to_vec(&manifest).expect("serializes");
    if HEADER_LEN + json.len() > start {
        return;
    }
    let _ = Bundle::from_bytes(&seal(FORMAT_VERSION, &json, &[(start as u64, body)]));
});
