//! The optimiser end to end on the committed fixtures: LoRA adapters in
//! every policy against the onnxruntime outputs of the unmerged export,
//! every optimised fixture against its unoptimised graph (the reference
//! interpreter on the fixture's inputs), rule counts, optimised-IR
//! snapshots, and the partition table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use m4c_compiler::adapter::AdapterError;
use m4c_compiler::opt::{
    apply_adapters, CostModel, Limits, LoraPolicy, OptError, OptOptions, OptReport, Roofline,
};
use m4c_compiler::partition::{markdown_table, NpuOpSet, PartitionReport};
use m4c_compiler::{lower, LowerOptions, OnnxModel};
use m4c_ir::{DType, Graph, Op, TensorType};
use m4c_ops::{compare, run_graph, Value};
use m4c_runtime::{read_npz, sanitized_key};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn lowered(name: &str) -> Graph {
    let model = OnnxModel::load(&fixture(&format!("{name}.onnx"))).unwrap();
    lower(
        &model,
        &LowerOptions {
            default_dim: Some(1),
            ..Default::default()
        },
    )
    .unwrap()
}

fn npz(name: &str) -> BTreeMap<String, Value> {
    read_npz(&fixture(name)).unwrap()
}

fn get<'a>(m: &'a BTreeMap<String, Value>, name: &str) -> &'a Value {
    m.get(name)
        .or_else(|| m.get(&sanitized_key(name)))
        .unwrap_or_else(|| panic!("no array {name}"))
}

/// Runs `g` on the fixture's inputs; outputs by name.
fn run(g: &Graph, inputs: &BTreeMap<String, Value>) -> Vec<(String, Value)> {
    let feeds: Vec<Value> = g
        .inputs
        .iter()
        .map(|&i| get(inputs, &g.value(i).name).clone())
        .collect();
    let outs = run_graph(g, &feeds).unwrap();
    g.outputs
        .iter()
        .map(|&o| g.value(o).name.clone())
        .zip(outs)
        .collect()
}

/// numpy allclose at the CLI's default tolerance (rtol 1e-4, atol 1e-5).
fn assert_close(what: &str, got: &Value, want: &Value) {
    assert_eq!(got.dtype(), want.dtype(), "{what}");
    let c = compare(got, want, 1e-4, 1e-5);
    assert!(c.passed(), "{what}: {}", c.summary());
}

fn optimise(
    g: &Graph,
    dirs: &[PathBuf],
    lora: LoraPolicy,
    cost: &dyn CostModel,
) -> (Graph, OptReport) {
    apply_adapters(
        g,
        dirs,
        &OptOptions {
            lora,
            ..Default::default()
        },
        cost,
    )
    .unwrap()
}

#[test]
fn peft_adapter_on_the_base_model_reproduces_the_unmerged_export() {
    let base = lowered("llama_prefill");
    let inputs = npz("llama_lora.inputs.npz");
    let expected = npz("llama_lora.expected.npz");
    let dir = fixture("llama_lora_adapter");
    for lora in [LoraPolicy::Fold, LoraPolicy::Keep, LoraPolicy::Auto] {
        let (g, report) = optimise(&base, std::slice::from_ref(&dir), lora, &Roofline::cpu());
        for (name, v) in run(&g, &inputs) {
            assert_close(&format!("{lora:?} {name}"), &v, get(&expected, &name));
        }
        assert_eq!(report.lora.len(), 4, "{lora:?}");
        let folded = report.lora.iter().filter(|d| d.folded).count();
        match lora {
            LoraPolicy::Fold => assert_eq!(folded, 4),
            LoraPolicy::Keep => assert_eq!(folded, 0),
            LoraPolicy::Auto => assert!(report
                .lora
                .iter()
                .all(|d| d.folded == (d.keep_ns > d.fold_ns))),
        }
        assert_eq!(
            report.fired("lora-fold"),
            if lora == LoraPolicy::Keep { 0 } else { 4 }
        );
    }
}

#[test]
fn in_graph_lora_branches_fold_and_keep_against_onnxruntime() {
    let inputs = npz("llama_lora.inputs.npz");
    let expected = npz("llama_lora.expected.npz");
    for model in ["llama_lora", "llama_lora_dynamo"] {
        let g = lowered(model);
        for lora in [LoraPolicy::Fold, LoraPolicy::Keep] {
            let (opt, report) = optimise(&g, &[], lora, &Roofline::cpu());
            assert_eq!(report.lora.len(), 4, "{model}");
            for (name, v) in run(&opt, &inputs) {
                assert_close(
                    &format!("{model} {lora:?} {name}"),
                    &v,
                    get(&expected, &name),
                );
            }
            let folded_weights = report.after.weight_bytes < report.before.weight_bytes;
            assert_eq!(folded_weights, lora == LoraPolicy::Fold, "{model} {lora:?}");
        }
    }
}

/// A roofline whose private-weight penalty is set directly.
struct Penalised(Roofline, f64);

impl CostModel for Penalised {
    fn name(&self) -> &str {
        "penalised"
    }
    fn op_time_ns(&self, op: &Op, inputs: &[&TensorType], output: &TensorType) -> f64 {
        self.0.op_time_ns(op, inputs, output)
    }
    fn private_weight_ns(&self, _: DType) -> f64 {
        self.1
    }
}

#[test]
fn auto_folds_when_the_penalty_is_cheap_and_keeps_when_it_is_not() {
    let g = lowered("llama_lora");
    let cheap = Penalised(Roofline::cpu(), 1e-3);
    let dear = Penalised(Roofline::cpu(), 1e3);
    let (_, r) = optimise(&g, &[], LoraPolicy::Auto, &cheap);
    assert!(r.lora.iter().all(|d| d.folded), "{r}");
    let (_, r) = optimise(&g, &[], LoraPolicy::Auto, &dear);
    assert!(r.lora.iter().all(|d| !d.folded), "{r}");
}

fn adapter_error(graph: &str, dir: &Path) -> String {
    let e = apply_adapters(
        &lowered(graph),
        &[dir.to_path_buf()],
        &OptOptions::default(),
        &Roofline::cpu(),
    )
    .expect_err("must fail");
    assert!(matches!(e, OptError::Adapter(_)), "{e}");
    e.to_string()
}

#[test]
fn adapters_that_do_not_fit_are_reported_in_full() {
    // Module names: the dynamo export's values do not carry module scopes.
    let e = adapter_error("llama_prefill_dynamo", &fixture("llama_lora_adapter"));
    assert_eq!(
        e.matches("no MatMul carries this module name").count(),
        4,
        "{e}"
    );
    // Rank: a config claiming r=4 for r=8 factors.
    let tmp = std::env::temp_dir().join(format!("m4c-opt-rank-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::copy(
        fixture("llama_lora_adapter/adapter_model.safetensors"),
        tmp.join("adapter_model.safetensors"),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(fixture("llama_lora_adapter/adapter_config.json")).unwrap();
    std::fs::write(
        tmp.join("adapter_config.json"),
        cfg.replace("\"r\": 8", "\"r\": 4"),
    )
    .unwrap();
    let e = adapter_error("llama_prefill", &tmp);
    assert_eq!(e.matches("do not have rank 4").count(), 4, "{e}");
    // Target modules: factors for modules the config does not target.
    std::fs::write(
        tmp.join("adapter_config.json"),
        cfg.replace("q_proj", "k_proj"),
    )
    .unwrap();
    let e = adapter_error("llama_prefill", &tmp);
    assert!(e.contains("not in target_modules"), "{e}");
    // Missing directory.
    let e = m4c_compiler::adapter::PeftAdapter::load(&tmp.join("nope")).unwrap_err();
    assert!(
        matches!(e, AdapterError::Io { .. }) && e.to_string().contains("adapter_config.json"),
        "{e}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// Every M4 fixture, optimised, computes what it computed before, on its
/// own inputs (the unoptimised graph through the interpreter is the truth).
#[test]
fn optimised_fixtures_match_their_unoptimised_graphs_and_rules_fire() {
    let mut counts = vec![];
    for name in [
        "llama_prefill",
        "llama_decode",
        "whisper_encoder",
        "whisper_encoder_dynamo",
        "clip_text",
        "clip_vision",
        "imu_encoder",
        "distilbert",
    ] {
        let g = lowered(name);
        let inputs = npz(&format!("{name}.inputs.npz"));
        let (opt, r) = optimise(&g, &[], LoraPolicy::Auto, &Roofline::cpu());
        let want = run(&g, &inputs);
        for ((n, got), (_, w)) in run(&opt, &inputs).iter().zip(&want) {
            assert_close(&format!("{name} {n}"), got, w);
        }
        counts.push((
            name,
            r.fired("recognise-rmsnorm"),
            r.fired("recognise-gelu"),
            r.fired("fuse-horizontal-matmul"),
            r.fired("transpose-into-matmul"),
        ));
    }
    let c = |n: &str| counts.iter().find(|c| c.0 == n).copied().unwrap();
    assert_eq!(c("llama_prefill").1, 5, "RMSNorm: 2 layers × 2 + final");
    assert!(
        c("llama_prefill").3 >= 6,
        "QKV and gate/up fusion: {counts:?}"
    );
    assert_eq!(c("whisper_encoder").2, 4, "GELU: 2 conv + 2 MLP");
    assert_eq!(c("whisper_encoder_dynamo").2, 4, "GELU, dynamo nesting");
    assert!(
        c("whisper_encoder").4 >= 2,
        "K transpose into MatMul: {counts:?}"
    );
}

/// Norm, Softmax and Gelu nodes by kind.
fn composite_counts(g: &Graph) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for n in g.nodes.iter().filter(|n| n.op.kind().is_composite()) {
        *m.entry(n.op.name()).or_default() += 1;
    }
    m
}

/// The fixtures with every composite expanded by `m4c_ir::decompose` (as an
/// exporter that spells LayerNorm, softmax and GELU out writes them):
/// recognition gives back every composite the optimised fixture has, and
/// the outputs stay the fixture's.
#[test]
fn decomposed_fixtures_get_their_composites_back() {
    for name in [
        "clip_text",
        "clip_vision",
        "whisper_encoder",
        "imu_encoder",
        "llama_prefill",
        "distilbert",
    ] {
        let g = lowered(name);
        let d = m4c_ir::decompose(&g).unwrap();
        assert!(composite_counts(&d).is_empty(), "{name}");
        let (direct, _) = optimise(&g, &[], LoraPolicy::Auto, &Roofline::cpu());
        let (back, _) = optimise(&d, &[], LoraPolicy::Auto, &Roofline::cpu());
        let want = composite_counts(&direct);
        assert!(!want.is_empty(), "{name}");
        assert_eq!(composite_counts(&back), want, "{name}");
        let inputs = npz(&format!("{name}.inputs.npz"));
        for ((n, got), (_, w)) in run(&back, &inputs).iter().zip(&run(&g, &inputs)) {
            assert_close(&format!("{name} {n}"), got, w);
        }
    }
}

/// Saturation region by region (small regions, so that every fixture is
/// cut several times) computes what the whole graph did, and recognises as
/// many composites as the whole graph (cuts fall between patterns).
#[test]
fn regions_stitch_back_to_an_equivalent_graph() {
    let small = OptOptions {
        lora: LoraPolicy::Auto,
        limits: Limits {
            region_nodes: 40,
            ..Default::default()
        },
        ..Default::default()
    };
    for name in [
        "llama_prefill",
        "whisper_encoder",
        "clip_text",
        "distilbert",
    ] {
        let g = m4c_ir::decompose(&lowered(name)).unwrap();
        let cost = Roofline::cpu();
        let (whole, w) = optimise(&g, &[], LoraPolicy::Auto, &cost);
        let (cut, r) = apply_adapters(&g, &[], &small, &cost).unwrap();
        assert!(r.phases[0].regions.len() >= 3, "{name}: {r}");
        assert_eq!(
            composite_counts(&cut),
            composite_counts(&whole),
            "{name}\n{r}\n{w}"
        );
        let inputs = npz(&format!("{name}.inputs.npz"));
        for ((n, got), (_, want)) in run(&cut, &inputs).iter().zip(&run(&g, &inputs)) {
            assert_close(&format!("{name} {n}"), got, want);
        }
    }
}

#[test]
fn optimised_ir_snapshots() {
    for (name, lora) in [
        ("llama_lora", LoraPolicy::Fold),
        ("llama_lora", LoraPolicy::Keep),
        ("whisper_encoder", LoraPolicy::Auto),
    ] {
        let (g, _) = optimise(&lowered(name), &[], lora, &Roofline::cpu());
        insta::assert_snapshot!(format!("{name}_{lora:?}"), m4c_ir::text::print(&g));
    }
}

#[test]
fn partition_table_of_the_fixtures() {
    let names = [
        "llama_prefill",
        "whisper_encoder",
        "clip_vision",
        "mobilenet_v3_small",
        "resnet_small",
    ];
    let reports: Vec<PartitionReport> = names
        .iter()
        .map(|n| PartitionReport::of(n, &lowered(n), &NpuOpSet))
        .collect();
    insta::assert_snapshot!(markdown_table("Target: npu", &reports));
}
