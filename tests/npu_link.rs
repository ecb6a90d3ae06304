//! NPU parts linked into one program each (`m4c_npu::link`), against
//! the same parts run layer by layer (each layer its own program, its
//! operands copied in and its result out by the host): byte-identical
//! outputs on every kind of fixture, race-free programs (the simulator's
//! hazard checker), feature maps in the feature-map SRAM; and embedding
//! lookups on the NPU against the reference interpreter.

mod common;
#[path = "common/npu.rs"]
mod npu;
use npu::{compile, fixture_graph, load_artifact};

use m4c_npu::module::ModulePart;
use m4c_npu::sim::{simulate, SimOptions};
use m4c_ops::Value;
use m4c_runtime::exec::npu::PartEngine;

/// Fixture `name` on `target`, linked and layer by layer: the outputs of
/// both (which must be identical) and the cycles of each.
fn both_ways(name: &str, target: &str) -> (u64, u64) {
    let (g, feeds) = fixture_graph(name, target);
    let artifact = compile(&g, &feeds, target);
    let linked = load_artifact(&g, &artifact, target).unwrap();
    let mut alone = load_artifact(&g, &artifact, target).unwrap();
    alone.unlink();
    let (want, by_layer) = alone.run_measured(&feeds, 1).unwrap();
    let (got, figures) = linked.run_measured(&feeds, 1).unwrap();
    for (a, b) in got.iter().zip(&want) {
        assert_eq!(a, b, "{name}: linked and layer-by-layer outputs differ");
    }
    for (k, part) in linked.plan().parts.iter().enumerate() {
        if let ModulePart::Npu { .. } = part {
            let l = linked
                .linked(k)
                .unwrap()
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let options = SimOptions {
                check_hazards: true,
                ..Default::default()
            };
            let run = simulate(&l.program, linked.config(), options).unwrap();
            assert!(
                run.hazards.is_empty(),
                "{name} part {k}: {:?}",
                run.hazards[0]
            );
            assert_eq!(l.spans.len(), l.first_instr.len());
        }
    }
    let npu = |f: &m4c_runtime::exec::npu::RunFigures| {
        f.parts
            .iter()
            .filter(|p| p.engine == PartEngine::Npu)
            .map(|p| p.cycles)
            .sum::<u64>()
    };
    // Per-layer figures add up to the part: the layers run one after
    // another, so their spans cover the program.
    let sum: u64 = figures.layers.iter().map(|l| l.cycles).sum();
    assert!(sum <= npu(&figures), "{name}: {sum} > {}", npu(&figures));
    (npu(&figures), npu(&by_layer))
}

#[test]
fn linked_parts_compute_exactly_what_their_layers_compute_alone() {
    for (name, target) in [
        ("clip_text", "edge-small"),
        ("decoder_past", "edge-small"),
        ("resnet_small", "edge-small"),
        ("mobilenet_v3_small", "phone-flagship"),
        ("whisper_encoder", "edge-small"),
        ("deeplab_head", "edge-small"),
        ("lstm_lm", "edge-small"),
    ] {
        let (linked, alone) = both_ways(name, target);
        assert!(linked > 0 && alone > 0, "{name}");
        eprintln!("{name} on {target}: linked {linked} cycles, layer by layer {alone}");
    }
}

/// The embedding lookup of an LSTM language model runs on the NPU (the
/// model is then wholly on it) and fetches exactly the table rows the
/// interpreter does, negative indices included; an index outside the
/// table is an error naming the layer, linked or not.
#[test]
fn embedding_lookups_fetch_the_rows_their_indices_name() {
    let (g, feeds) = fixture_graph("lstm_lm", "edge-small");
    let artifact = compile(&g, &feeds, "edge-small");
    let module = load_artifact(&g, &artifact, "edge-small").unwrap();
    assert!(
        module
            .plan()
            .parts
            .iter()
            .all(|p| matches!(p, ModulePart::Npu { .. })),
        "the lookup fell back"
    );
    let Value::I64(ids) = &feeds[0] else {
        panic!("lstm_lm takes i64 token ids")
    };
    // Count from the end: -1 is the last row, as ONNX's Gather reads it.
    let table = g
        .nodes
        .iter()
        .find(|n| n.op.kind().name() == "Gather")
        .unwrap();
    let rows = g.value(table.inputs[0]).ty.static_shape().unwrap()[0] as i64;
    let with_first = |id: i64| {
        let mut ids = ids.clone();
        ids[[0, 0]] = id;
        Value::I64(ids)
    };
    let run = |m: &m4c_runtime::exec::npu::NpuModule, v: Value| m.run_measured(&[v], 1);
    let first = ids[[0, 0]];
    let (usual, _) = run(&module, with_first(first)).unwrap();
    let (from_end, _) = run(&module, with_first(first - rows)).unwrap();
    assert_eq!(from_end, usual);
    let (last, _) = run(&module, with_first(rows - 1)).unwrap();
    assert_ne!(last, usual, "the first token's row must matter");
    let reference = m4c_ops::run_graph(&g, &[with_first(rows - 1)]).unwrap();
    let (x, y) = (m4c_ops::as_f64(&last[0]), m4c_ops::as_f64(&reference[0]));
    let dot: f64 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
    let norms =
        (x.iter().map(|a| a * a).sum::<f64>() * y.iter().map(|b| b * b).sum::<f64>()).sqrt();
    assert!(dot / norms > 0.99, "cosine {}", dot / norms);
    let mut alone = load_artifact(&g, &artifact, "edge-small").unwrap();
    alone.unlink();
    for m in [&module, &alone] {
        let err = run(m, with_first(rows)).unwrap_err().to_string();
        assert!(
            err.contains(&format!("index {rows} outside a table of {rows} rows")),
            "{err}"
        );
    }
}
