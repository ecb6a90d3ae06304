//! LoRA adapters: PEFT adapter directories attached to a backbone graph by
//! module name ([`peft`], [`attach`]), and LoRA branches already inside an
//! exported graph found by structure ([`detect`]). Both yield
//! [`LoraSite`]s, which the optimiser's LoRA policy folds or keeps.
//! [`slots`] compiles firmware modules for adapters bound at load.

pub mod attach;
pub mod detect;
pub mod peft;
pub mod slots;

pub use attach::attach;
pub use detect::detect;
pub use peft::PeftAdapter;
pub use slots::{add_slots, SlotSpec};

/// One adapted linear layer: `y = x·W + scale·(x·A)·B`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LoraSite {
    /// Module path (`model.layers.0.self_attn.q_proj`).
    pub module: String,
    /// Graph value names of the base weight and the two factors.
    pub weight: String,
    pub a: String,
    pub b: String,
    pub rank: usize,
    pub in_features: usize,
    pub out_features: usize,
    pub scale: f64,
}

/// Why an adapter could not be read or attached.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    #[error("{path}: bad adapter_config.json: {reason}")]
    Config { path: String, reason: String },
    #[error("{path}: bad safetensors file: {reason}")]
    Tensors { path: String, reason: String },
    #[error("{path}: unsupported adapter: {reason}")]
    Unsupported { path: String, reason: String },
    /// Modules, ranks or shapes that do not fit the backbone, all listed.
    #[error("adapter {adapter} does not fit the model: {}", .problems.join("; "))]
    Mismatch {
        adapter: String,
        problems: Vec<String>,
    },
}

/// Module paths carried by value names: the runtime's definitions, so the
/// compiler and the device attach adapters to the same MatMuls.
pub use m4c_runtime::adapter::lora::{module_scope, scope_ends_with};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_of_torchscript_names() {
        let s = module_scope("/model/model/layers.0/self_attn/q_proj/MatMul_output_0").unwrap();
        assert_eq!(s, "model.model.layers.0.self_attn.q_proj");
        assert!(scope_ends_with(&s, "model.layers.0.self_attn.q_proj"));
        assert!(!scope_ends_with(&s, "layers.0.self_attn.proj"));
        assert_eq!(module_scope("linear"), None);
    }
}
