//! Adapter bundles: attached to the firmware they are bound to (keep and
//! fold give x·(W + s·Aᵀ·Bᵀ)), refused by any other firmware, and damaged
//! files refused with one error naming the problem; never a panic.

mod common;

use common::{lora_factors, shared_weight, tiny_adapter, tiny_bundle};
use m4c_ir::Storage;
use m4c_ops::{run_graph, Value};
use m4c_runtime::adapter::{adapted_module, AdapterBundle};
use m4c_runtime::bundle::container::decode;
use m4c_runtime::bundle::format::LoraMode;
use m4c_runtime::bundle::Bundle;
use m4c_runtime::exec::{load_shared, BaseGraphs, Engine, LoadOptions};
use ndarray::ArrayD;
use proptest::prelude::*;
use std::sync::Arc;

fn firmware() -> Bundle {
    Bundle::from_bytes(&tiny_bundle()).unwrap()
}

fn adapter_for(fw: &Bundle, mode: LoraMode) -> Vec<u8> {
    tiny_adapter(&fw.content_hash_hex(), mode)
}

fn err(bytes: &[u8]) -> String {
    AdapterBundle::from_bytes(bytes).unwrap_err().to_string()
}

/// y = x·(W + 0.5·Aᵀ·Bᵀ), computed directly in f64.
fn truth(x: &[f32]) -> Vec<f64> {
    let w = shared_weight();
    let (a, b) = lora_factors();
    let mut y = vec![0.0; 16];
    for r in 0..2 {
        for j in 0..8 {
            for i in 0..4 {
                let d: f64 = (0..2)
                    .map(|q| f64::from(a[q * 4 + i]) * f64::from(b[j * 2 + q]))
                    .sum();
                y[r * 8 + j] += f64::from(x[r * 4 + i]) * (f64::from(w[i * 8 + j]) + 0.5 * d);
            }
        }
    }
    y
}

#[test]
fn keep_and_fold_compute_the_adapted_module_and_keep_shares_the_weights() {
    let fw = firmware();
    let x: Vec<f32> = (0..8).map(|i| i as f32 * 0.3 - 1.0).collect();
    let input = Value::F32(ArrayD::from_shape_vec(vec![2, 4], x.clone()).unwrap());
    for mode in [LoraMode::Keep, LoraMode::Fold] {
        let app = AdapterBundle::from_bytes(&adapter_for(&fw, mode)).unwrap();
        let g = app.apply(&fw, "a").unwrap();
        let Value::F32(y) = &run_graph(&g, std::slice::from_ref(&input)).unwrap()[0] else {
            panic!("f32 output")
        };
        for (got, want) in y.iter().zip(truth(&x)) {
            assert!(
                (f64::from(*got) - want).abs() < 1e-4,
                "{mode}: {got} vs {want}"
            );
        }
        let w = g.constants().find(|&c| g.value(c).name == "w").unwrap();
        let mapped = matches!(g.constant(w).unwrap().storage, Storage::Mapped { .. });
        assert_eq!(mapped, mode == LoraMode::Keep, "{mode}");
    }
}

#[test]
fn executors_of_keep_adapters_share_one_base_graph_and_compute_the_adapted_module() {
    let fw = firmware();
    let bases = BaseGraphs::new(&fw);
    let opts = LoadOptions {
        engine: Engine::Reference,
        ..LoadOptions::default()
    };
    let x: Vec<f32> = (0..8).map(|i| i as f32 * 0.3 - 1.0).collect();
    let input = Value::F32(ArrayD::from_shape_vec(vec![2, 4], x.clone()).unwrap());
    let keep: Vec<AdapterBundle> = (0..3)
        .map(|_| AdapterBundle::from_bytes(&adapter_for(&fw, LoraMode::Keep)).unwrap())
        .collect();
    let fold = AdapterBundle::from_bytes(&adapter_for(&fw, LoraMode::Fold)).unwrap();
    let mut execs = vec![];
    for a in keep.iter().chain([&fold]) {
        execs.push(load_shared(&bases, "a", &[a], &opts).unwrap().executor);
    }
    // The map's graph, this handle and one per keep executor: the folded
    // module holds a private graph.
    assert_eq!(Arc::strong_count(&bases.get("a").unwrap()), 2 + keep.len());
    for e in &execs {
        let Value::F32(y) = &e.run(std::slice::from_ref(&input)).unwrap()[0] else {
            panic!("f32 output")
        };
        for (got, want) in y.iter().zip(truth(&x)) {
            assert!((f64::from(*got) - want).abs() < 1e-4, "{got} vs {want}");
        }
    }
}

#[test]
fn several_adapters_stack_on_one_mapping() {
    let fw = firmware();
    let bytes = adapter_for(&fw, LoraMode::Keep);
    let (a1, a2) = (
        AdapterBundle::from_bytes(&bytes).unwrap(),
        AdapterBundle::from_bytes(&bytes).unwrap(),
    );
    let g = adapted_module(&fw, "a", &[&a1, &a2]).unwrap();
    assert_eq!(
        g.nodes
            .iter()
            .filter(|n| matches!(n.op, m4c_ir::Op::MatMul { .. }))
            .count(),
        5
    );
}

#[test]
fn another_firmware_is_refused() {
    let fw = firmware();
    let other = "ab".repeat(32);
    let app = AdapterBundle::from_bytes(&tiny_adapter(&other, LoraMode::Keep)).unwrap();
    let e = app.apply(&fw, "a").unwrap_err().to_string();
    assert!(e.contains(&format!("built for firmware {other}")), "{e}");
    assert!(e.contains(&fw.content_hash_hex()), "{e}");
}

#[test]
fn a_module_without_the_sites_is_named() {
    let fw = firmware();
    let app = AdapterBundle::from_bytes(&adapter_for(&fw, LoraMode::Keep)).unwrap();
    let e = app.apply(&fw, "nope").unwrap_err().to_string();
    assert!(e.contains("no module `nope`"), "{e}");
}

#[test]
fn kinds_are_not_confused() {
    let fw = firmware();
    let e = Bundle::from_bytes(&adapter_for(&fw, LoraMode::Keep))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("kind `adapter`, expected kind `firmware`"),
        "{e}"
    );
    let e = err(&tiny_bundle());
    assert!(
        e.contains("kind `firmware`, expected kind `adapter`"),
        "{e}"
    );
}

#[test]
fn truncation_and_flipped_bytes_are_named() {
    let good = adapter_for(&firmware(), LoraMode::Keep);
    assert!(err(&good[..40]).contains("truncated: the header"));
    assert!(err(&good[..good.len() - 1]).contains("truncated: section weights"));
    let s = &decode(&good).unwrap().manifest.sections[0];
    let mut b = good.clone();
    b[s.offset as usize + 3] ^= 1;
    assert!(
        err(&b).contains("checksum mismatch in section weights"),
        "{}",
        err(&b)
    );
    let mut b = good.clone();
    b[70] ^= 1;
    assert!(err(&b).contains("content hash mismatch"), "{}", err(&b));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn random_damage_never_panics(at in 0usize..2000, byte: u8, cut in 0usize..2000) {
        let mut b = adapter_for(&firmware(), LoraMode::Fold);
        let at = at % b.len();
        b[at] ^= byte | 1;
        b.truncate(cut.max(1).min(b.len()));
        prop_assert!(AdapterBundle::from_bytes(&b).is_err());
    }
}

/// Adapters are the apps' and carry data only: an adapter bundle that
/// also holds native code (a `code` section, with or without its plan and
/// weights) is refused when opened, so nothing of it is ever loaded.
#[test]
fn an_adapter_carrying_code_is_refused() {
    use m4c_runtime::bundle::container::{encode, SectionData};
    use m4c_runtime::bundle::format::SectionKind;
    let fw = firmware();
    let good = adapter_for(&fw, LoraMode::Keep);
    let decoded = decode(&good).unwrap();
    let s = &decoded.manifest.sections[0];
    let weights = &good[s.offset as usize..(s.offset + s.len) as usize];
    let elf = b"\x7fELF not really a library";
    for extra in [
        vec![SectionKind::Code],
        vec![
            SectionKind::Code,
            SectionKind::CodePlan,
            SectionKind::CodeWeights,
        ],
    ] {
        let mut sections = vec![SectionData {
            kind: SectionKind::Weights,
            name: "weights".into(),
            bytes: weights,
        }];
        for kind in &extra {
            sections.push(SectionData {
                kind: *kind,
                name: "a.x86_64-avx2".into(),
                bytes: elf,
            });
        }
        let bytes = encode(decoded.manifest.clone(), &sections);
        let e = err(&bytes);
        assert!(
            e.contains(&format!(
                "expected exactly one section (weights), found {}",
                extra.len() + 1
            )),
            "{e}"
        );
    }
}
