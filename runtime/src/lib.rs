//! The m4c runtime: what ships to a device. It runs IR graphs (the
//! reference interpreter now; compiled kernels as backends land) and reads
//! and writes tensors. It never depends on the compiler or on LLVM.

// Input-derived data is checked, never unwrapped: each remaining `expect` states
// the invariant that makes it unreachable (`#[allow(..., reason = ...)]`).
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod adapter;
pub mod bundle;
pub mod exec;
pub mod generate;
pub mod input_file;
mod npz;
pub mod outfile;
pub mod task;

pub use npz::{read_npy, read_npz, read_npz_within, sanitized_key, write_npz, NpzError};
