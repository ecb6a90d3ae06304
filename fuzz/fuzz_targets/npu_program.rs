//! Arbitrary bytes as an NPU program (the binary the assembler writes and
//! `m4c npu sim` reads), decoded, validated and simulated on the smallest
//! machine config; and as assembly text. Decoding, validation and the
//! simulator return errors (bounds, budgets), never panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use m4c_npu::config::MachineConfig;
use m4c_npu::program::Program;
use m4c_npu::sim::{simulate, SimOptions};

/// Budgets ten thousand times below the defaults (cycles and work;
/// instructions a thousand): the coverage-instrumented simulator is ~10×
/// slower than a plain build, and an input that runs to the default budget would
/// outlast libFuzzer's timeout without telling anything new (the budget
/// check itself is the same code either way). A thousandth was not
/// enough: a 684-byte program of `requant`s over overlapping rows (10^8
/// element operations each, 6.3 million cycles) ran past the 10 s timeout.
fn options() -> SimOptions {
    SimOptions {
        max_cycles: m4c_npu::sim::DEFAULT_MAX_CYCLES / 10_000,
        max_instructions: m4c_npu::sim::DEFAULT_MAX_INSTRUCTIONS / 1000,
        max_work: m4c_npu::sim::DEFAULT_MAX_WORK / 10_000,
        ..SimOptions::default()
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = m4c_npu::asm::assemble(text);
    }
    let Ok(program) = Program::from_bytes(data) else {
        return;
    };
    let _ = simulate(&program, &MachineConfig::edge_small(), options());
});
