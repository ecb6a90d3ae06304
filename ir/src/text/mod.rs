//! The textual form of the IR, used in tests, snapshots and `m4c opt -o`.
//!
//! ```text
//! graph "tiny" {
//!   input %x: f32[1,4]
//!   const %w: f32[4,2] = weight
//!   const %shape: i64[2] = [1, -1]
//!   %y: f32[1,2] = MatMul(%x, %w)
//!   %z: f32[1,2] = Softmax(%y) {axis=1}
//!   output %z
//! }
//! ```
//! Printing then parsing gives back a graph that prints identically.

mod attrs;
mod parse;
mod print;

pub use parse::parse;
pub use print::{print, INLINE_LIMIT};
