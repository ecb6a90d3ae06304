//! Arbitrary bytes as a PEFT LoRA adapter directory: the input is
//! `adapter_config.json`, a 0 byte, then `adapter_model.safetensors`.
#![no_main]

#[path = "scratch.rs"]
mod scratch;

use libfuzzer_sys::fuzz_target;
use m4c_compiler::adapter::PeftAdapter;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (config, weights) = (&data[..split], data.get(split + 1..).unwrap_or(&[]));
    scratch::file("adapter_config.json", config);
    scratch::file("adapter_model.safetensors", weights);
    let _ = PeftAdapter::load(scratch::dir());
});
