//! Adapter bundles (`.m4a`): a PEFT LoRA directory's factors, bound to one
//! firmware's content hash and checked against the firmware modules they
//! attach to, with the runtime's own attach code.

use std::path::Path;

use m4c_runtime::adapter::{hex, lora, AdapterBundle, LoraFactors};
use m4c_runtime::bundle::container::{encode, SectionData};
use m4c_runtime::bundle::format::{
    AdapterManifest, AdapterSite, BundleKind, LoraMode, Manifest, SectionKind, WeightEntry,
};
use m4c_runtime::bundle::Bundle;

use super::{pool::WeightPool, BuildError};
use crate::adapter::PeftAdapter;

/// Packs the LoRA adapter in `peft_dir` for `fw`: its factors (stored once
/// each, 64-byte aligned), their scales and module paths, the LoRA mode,
/// and `fw`'s content hash. Every module in `modules` must accept every
/// site; the result is read back and applied before it is returned. The
/// same inputs give the same bytes.
pub fn build_adapter(
    fw: &Bundle,
    modules: &[String],
    peft_dir: &Path,
    mode: LoraMode,
) -> Result<Vec<u8>, BuildError> {
    let fail = |msg: String| BuildError::Adapter(format!("{}: {msg}", peft_dir.display()));
    if modules.is_empty() {
        return Err(fail("no firmware module to attach to".into()));
    }
    let peft = PeftAdapter::load(peft_dir).map_err(|e| BuildError::Adapter(e.to_string()))?;
    let factors: Vec<LoraFactors> = peft
        .modules
        .iter()
        .map(|(target, f)| LoraFactors {
            target: target.clone(),
            a: f.a.clone(),
            b: f.b.clone(),
            scale: f.scale,
        })
        .collect();
    if factors.is_empty() {
        return Err(fail("the adapter has no LoRA factors".into()));
    }
    let mut modules = modules.to_vec();
    modules.sort();
    modules.dedup();
    for m in &modules {
        let graph = fw.module(m).map_err(|e| fail(e.to_string()))?;
        lora::attach(&graph, &factors, mode, "lora")
            .map_err(|p| fail(format!("does not fit module `{m}`: {}", p.join("; "))))?;
    }
    let mut pool = WeightPool::default();
    let mut entry = |t: &m4c_ir::Tensor| -> Result<WeightEntry, BuildError> {
        let bytes = t.bytes().map_err(|e| fail(e.to_string()))?;
        Ok(WeightEntry {
            blob: pool.intern(bytes),
            dtype: t.dtype.to_string(),
            shape: t.shape.clone(),
        })
    };
    let mut sites = vec![];
    for f in &factors {
        sites.push(AdapterSite {
            a: entry(&f.a)?,
            b: entry(&f.b)?,
            scale: f.scale,
            target: f.target.clone(),
        });
    }
    let (weights, blobs) = pool.finish();
    let manifest = Manifest {
        adapter: Some(AdapterManifest {
            firmware: hex(&fw.content_hash()),
            lora: mode,
            modules: modules.clone(),
            name: peft.name.clone(),
            sites,
        }),
        blobs,
        kind: BundleKind::Adapter,
        modules: vec![],
        sections: vec![],
    };
    let bytes = encode(
        manifest,
        &[SectionData {
            kind: SectionKind::Weights,
            name: "weights".into(),
            bytes: &weights,
        }],
    );
    let back = AdapterBundle::from_bytes(&bytes).map_err(|e| fail(format!("read back: {e}")))?;
    for m in &modules {
        back.apply(fw, m)
            .map_err(|e| fail(format!("read back: {e}")))?;
    }
    Ok(bytes)
}
