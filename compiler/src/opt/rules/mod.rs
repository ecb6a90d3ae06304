//! The rewrite rules of the optimiser, grouped by what they do.

pub mod fusion;
pub mod layout;
pub mod lora;
pub mod recognise;
