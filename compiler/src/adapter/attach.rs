//! Attaching a PEFT adapter to a backbone graph: each adapted module's
//! MatMul `y = x·W` (found by the module path its value name carries, as a
//! TorchScript/transformers export writes it) becomes
//! `y + s·((x·Aᵀ)·Bᵀ)`, with `A`/`B` referenced in the adapter file
//! (`trans_b` MatMuls, no copy). Every module that does not fit is listed
//! in one error.

use m4c_ir::Graph;
use m4c_runtime::adapter::lora::{self, LoraFactors};
use m4c_runtime::bundle::format::LoraMode;

use super::peft::PeftAdapter;
use super::{AdapterError, LoraSite};

/// Returns `g` with the adapter's branches attached (keep form) and the
/// sites, in graph order. Matching and the rewrite are the runtime's own
/// (`m4c_runtime::adapter::lora`), so an adapter attaches identically at
/// compile time and when an `.m4a` is loaded on the device.
pub fn attach(g: &Graph, ad: &PeftAdapter) -> Result<(Graph, Vec<LoraSite>), AdapterError> {
    let factors: Vec<LoraFactors> = ad
        .modules
        .iter()
        .map(|(module, f)| LoraFactors {
            target: module.clone(),
            a: f.a.clone(),
            b: f.b.clone(),
            scale: f.scale,
        })
        .collect();
    let mismatch = |problems| AdapterError::Mismatch {
        adapter: ad.path.clone(),
        problems,
    };
    let mut resolved = lora::resolve(g, &factors).map_err(mismatch)?;
    resolved.sort_by_key(|s| s.node);
    let sites = resolved
        .iter()
        .map(|s| {
            let f = s.factors;
            LoraSite {
                module: f.target.clone(),
                weight: g.value(g.nodes[s.node].inputs[1]).name.clone(),
                a: format!("{}.{}.lora_A.weight", ad.name, f.target),
                b: format!("{}.{}.lora_B.weight", ad.name, f.target),
                rank: f.a.shape[0],
                in_features: f.a.shape[1],
                out_features: f.b.shape[0],
                scale: f.scale,
            }
        })
        .collect();
    let out = lora::attach(g, &factors, LoraMode::Keep, &ad.name).map_err(mismatch)?;
    Ok((out, sites))
}
