//! A small two-module bundle built with the runtime's own container
//! encoder (the runtime's tests do not depend on the compiler), and a way
//! to rewrite its manifest while keeping the file sealed.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;

use m4c_ir::{DType, Graph, Op, Tensor, TensorType};
use m4c_runtime::bundle::container::{decode, encode, seal, SectionData};
use m4c_runtime::bundle::format::{
    align_up, AdapterManifest, AdapterSite, Blob, BundleKind, LoraMode, Manifest, ModuleEntry,
    SectionKind, WeightEntry, FORMAT_VERSION,
};
use serde_json::Value as Json;

/// The weight shared by both modules: 4×8 f32, 0.5·i.
pub fn shared_weight() -> Vec<f32> {
    (0..32).map(|i| i as f32 * 0.5).collect()
}

/// The literal bias of module `b`: 2×8, `i − 3`.
pub fn bias() -> Vec<f32> {
    (0..16).map(|i| i as f32 - 3.0).collect()
}

/// `y = x · w` (module `a`) or `y = max(x · w, bias)` (module `b`); `w`
/// (32 elements) is printed as a weight, `bias` (16) as a literal.
fn graph(with_bias: bool) -> Graph {
    let mut g = Graph::new(if with_bias { "b" } else { "a" });
    let x = g.add_input("x", TensorType::fixed(DType::F32, &[2, 4]));
    let w = g.add_const("w", Tensor::from_f32(&[4, 8], &shared_weight()));
    let mm = Op::MatMul {
        trans_a: false,
        trans_b: false,
    };
    let mut y = g
        .add_node(mm, &[x, w], "/layer/proj/MatMul_output_0")
        .unwrap();
    if with_bias {
        let b = g.add_const("bias", Tensor::from_f32(&[2, 8], &bias()));
        y = g.add_node(Op::Max, &[y, b], "y").unwrap();
    }
    g.outputs.push(y);
    g
}

/// A valid firmware bundle with modules `a` and `b` sharing one weight
/// blob.
pub fn tiny_bundle() -> Vec<u8> {
    let w: Vec<u8> = shared_weight()
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let texts = [graph(false), graph(true)].map(|g| m4c_ir::text::print(&g));
    let weight = WeightEntry {
        blob: 0,
        dtype: "f32".into(),
        shape: vec![4, 8],
    };
    let module = |name: &str| ModuleEntry {
        code: vec![],
        dims: BTreeMap::new(),
        ir_section: name.into(),
        name: name.into(),
        source_blake3: "0".repeat(64),
        backend: "reference".into(),
        weights: BTreeMap::from([("w".to_string(), weight.clone())]),
        code_weights: BTreeMap::new(),
    };
    let manifest = Manifest {
        adapter: None,
        blobs: vec![Blob {
            len: w.len() as u64,
            offset: 0,
        }],
        kind: BundleKind::Firmware,
        modules: vec![module("a"), module("b")],
        sections: vec![],
    };
    let section = |kind, name: &str, bytes| SectionData {
        kind,
        name: name.into(),
        bytes,
    };
    encode(
        manifest,
        &[
            section(SectionKind::Weights, "weights", &w),
            section(SectionKind::Ir, "a", texts[0].as_bytes()),
            section(SectionKind::Ir, "b", texts[1].as_bytes()),
        ],
    )
}

/// LoRA factors for the tiny bundle's `layer.proj` (4 → 8, rank 2):
/// `a` `[2, 4]`, `b` `[8, 2]`, scale 0.5.
pub fn lora_factors() -> (Vec<f32>, Vec<f32>) {
    let a = (0..8).map(|i| i as f32 * 0.25 - 1.0).collect();
    let b = (0..16).map(|i| 0.1 * i as f32 - 0.7).collect();
    (a, b)
}

/// An adapter bundle with [`lora_factors`] on `layer.proj`, bound to the
/// firmware whose content hash is `firmware` (hex).
pub fn tiny_adapter(firmware: &str, lora: LoraMode) -> Vec<u8> {
    let (a, b) = lora_factors();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (a, b) = (bytes(&a), bytes(&b));
    let mut weights = a.clone();
    weights.resize(64, 0);
    weights.extend_from_slice(&b);
    let entry = |blob, shape: &[usize]| WeightEntry {
        blob,
        dtype: "f32".into(),
        shape: shape.to_vec(),
    };
    let manifest = Manifest {
        adapter: Some(AdapterManifest {
            firmware: firmware.into(),
            lora,
            modules: vec!["a".into()],
            name: "tiny".into(),
            sites: vec![AdapterSite {
                a: entry(0, &[2, 4]),
                b: entry(1, &[8, 2]),
                scale: 0.5,
                target: "layer.proj".into(),
            }],
        }),
        blobs: vec![
            Blob { len: 32, offset: 0 },
            Blob {
                len: 64,
                offset: 64,
            },
        ],
        kind: BundleKind::Adapter,
        modules: vec![],
        sections: vec![],
    };
    encode(
        manifest,
        &[SectionData {
            kind: SectionKind::Weights,
            name: "weights".into(),
            bytes: &weights,
        }],
    )
}

/// Rewrites the manifest of a valid bundle with `mutate` and seals the
/// result (header and content hash valid), keeping each section's payload
/// at the offset the rewritten manifest gives it. Every section is shifted
/// by whole 64-byte steps when the new manifest needs more room.
pub fn reseal(bytes: &[u8], mutate: impl FnOnce(&mut Json)) -> Vec<u8> {
    reseal_from(&decode(bytes).unwrap().manifest, bytes, mutate)
}

/// [`reseal`] with the manifest given: `bytes` may have sections whose
/// checksums no longer match (`mutate` then fixes them).
pub fn reseal_from(manifest: &Manifest, bytes: &[u8], mutate: impl FnOnce(&mut Json)) -> Vec<u8> {
    let payloads: Vec<&[u8]> = manifest
        .sections
        .iter()
        .map(|s| &bytes[s.offset as usize..(s.offset + s.len) as usize])
        .collect();
    let first = manifest.sections[0].offset;
    let mut v = serde_json::to_value(manifest).unwrap();
    mutate(&mut v);
    let mut shift = 0;
    loop {
        let mut w = v.clone();
        for s in w["sections"].as_array_mut().into_iter().flatten() {
            if let Some(o) = s["offset"].as_u64() {
                s["offset"] = (o + shift).into();
            }
        }
        let json = serde_json::to_vec(&w).unwrap();
        if align_up(64 + json.len()).unwrap() as u64 <= first + shift {
            let placed: Vec<(u64, &[u8])> = w["sections"]
                .as_array()
                .into_iter()
                .flatten()
                .zip(&payloads)
                .filter_map(|(s, p)| Some((s["offset"].as_u64()?, *p)))
                .collect();
            return seal(FORMAT_VERSION, &json, &placed);
        }
        shift += 64;
    }
}

/// Index of the section of this kind and name in the manifest.
pub fn section_index(bytes: &[u8], kind: SectionKind, name: &str) -> usize {
    decode(bytes)
        .unwrap()
        .manifest
        .sections
        .iter()
        .position(|s| s.kind == kind && s.name == name)
        .unwrap()
}
