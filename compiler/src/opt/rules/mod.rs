//! The rewrite rules of the optimiser, grouped by what they do.

pub mod activation;
pub mod fusion;
pub mod layout;
pub mod lora;
pub mod norm;
pub mod quant;
pub mod softmax;
