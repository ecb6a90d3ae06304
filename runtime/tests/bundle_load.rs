//! A valid bundle loads into runnable graphs whose weights are slices of
//! the file's map, shared between modules.

mod common;

use common::{bias, shared_weight, tiny_bundle};
use m4c_ir::Storage;
use m4c_ops::{run_graph, Value};
use m4c_runtime::bundle::{is_bundle, Bundle};
use ndarray::{Array2, ArrayD};

fn x() -> Array2<f32> {
    Array2::from_shape_fn((2, 4), |(i, j)| (i * 4 + j) as f32 - 2.5)
}

/// x · w computed here, in f64, from the weight's definition.
fn matmul_truth() -> Array2<f64> {
    let w = shared_weight();
    Array2::from_shape_fn((2, 8), |(i, j)| {
        (0..4)
            .map(|k| f64::from(x()[[i, k]]) * f64::from(w[k * 8 + j]))
            .sum()
    })
}

fn run(b: &Bundle, module: &str) -> ArrayD<f32> {
    let g = b.module(module).unwrap();
    let out = run_graph(&g, &[Value::F32(x().into_dyn())]).unwrap();
    match out.into_iter().next().unwrap() {
        Value::F32(a) => a,
        other => panic!("unexpected output {other:?}"),
    }
}

#[test]
fn modules_compute_what_their_graphs_say() {
    let b = Bundle::from_bytes(&tiny_bundle()).unwrap();
    let truth = matmul_truth();
    let a = run(&b, "a");
    let with_bias = run(&b, "b");
    for ((i, j), &t) in truth.indexed_iter() {
        assert!((f64::from(a[[i, j]]) - t).abs() <= 1e-5 * t.abs().max(1.0));
        let want = t.max(f64::from(bias()[i * 8 + j]));
        assert!((f64::from(with_bias[[i, j]]) - want).abs() <= 1e-5 * want.abs().max(1.0));
    }
}

#[test]
fn weights_are_one_shared_slice_of_the_map() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.fw");
    std::fs::write(&path, tiny_bundle()).unwrap();
    assert!(is_bundle(&path));
    assert!(!is_bundle(&dir.path().join("missing.fw")));
    std::fs::write(dir.path().join("text.fw"), "graph").unwrap();
    assert!(!is_bundle(&dir.path().join("text.fw")));
    let b = Bundle::open(&path).unwrap();
    let ranges: Vec<(usize, usize, *const u8)> = ["a", "b"]
        .iter()
        .map(|m| {
            let g = b.module(m).unwrap();
            let id = g.constants().find(|&c| g.value(c).name == "w").unwrap();
            let t = g.constant(id).unwrap();
            assert!(t.is_mapped(), "{m}: %w is not mapped");
            match &t.storage {
                Storage::Mapped {
                    map, offset, len, ..
                } => (*offset, *len, map.as_ptr()),
                _ => unreachable!(),
            }
        })
        .collect();
    assert_eq!(ranges[0], ranges[1], "both modules use the same bytes");
    assert_eq!(ranges[0].0 % 64, 0, "weights are 64-byte aligned");
    let g = b.module("b").unwrap();
    let bias = g.constants().find(|&c| g.value(c).name == "bias").unwrap();
    assert!(
        !g.constant(bias).unwrap().is_mapped(),
        "small literals stay in the IR text"
    );
}

#[test]
fn content_hash_is_blake3_of_header_head_and_manifest() {
    let bytes = tiny_bundle();
    let b = Bundle::from_bytes(&bytes).unwrap();
    let manifest_len = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    let mut h = blake3::Hasher::new();
    h.update(&bytes[..32]);
    h.update(&bytes[64..64 + manifest_len]);
    assert_eq!(b.content_hash(), *h.finalize().as_bytes());
    assert_eq!(&bytes[32..64], &b.content_hash());
    assert_eq!(b.content_hash_hex().len(), 64);
}

#[test]
fn encoding_is_deterministic() {
    assert_eq!(tiny_bundle(), tiny_bundle());
}
