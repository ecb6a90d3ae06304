//! m4c's simulated NPU: a machine description, a 128-bit ISA with an
//! assembler and disassembler, a validating decoder, a bit-exact functional
//! and cycle-level simulator, and int8 kernel generators.
//!
//! The crate has no LLVM or other m4c dependency so that the on-device
//! runtime can host the simulator.

// No unwrap/expect on input: each remaining `expect` names its invariant
// (`#[allow(..., reason = ...)]`; see docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod asm;
pub mod config;
pub mod disasm;
pub mod fixed;
pub mod isa;
pub mod kernels;
pub mod layout;
pub mod link;
pub mod module;
pub mod program;
pub mod quant;
pub mod report;
pub mod sim;
