//! Planning that does not depend on a target, done once for everyone: the
//! optimiser's report, the runtime's interpreter and every code generator
//! call these functions, so the groups the report counts are the kernels
//! the CPU backend emits and the arena it reports is the arena the
//! executor allocates.
//!
//! - [`fusion`]: which elementwise nodes one kernel evaluates together;
//! - [`memory`]: which results get a buffer (fused intermediates do not,
//!   reshapes alias their input), each buffer's lifetime, and
//!   [`memory::plan`], the arena they need;
//! - [`arena`]: the placement algorithm on lifetimes;
//! - [`host`]: which code targets this machine runs.

// Input-derived data is checked, never unwrapped: each remaining `expect` states
// the invariant that makes it unreachable (`#[allow(..., reason = ...)]`).
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod arena;
pub mod fusion;
pub mod host;
pub mod memory;
