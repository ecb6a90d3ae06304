//! Models quantised by onnxruntime's own tools (`tests/fixtures/quant/`,
//! written by `scripts/fixtures/quant_models.py`: QDQ from
//! `quantize_static`, QOperator from `quantize_static` and
//! `quantize_dynamic`, int4/int8 `com.microsoft.MatMulNBits` and int4 QDQ) run in m4c's reference interpreter and
//! match onnxruntime's run of the same quantised model.
//!
//! Bound: cosine similarity ≥ 0.999 per output, and max |m4c − ORT| ≤ 2
//! quantisation steps of the output (`output_step` in the directory's
//! `MANIFEST.json`: 1 for an integer output, the scale of the output's
//! DequantizeLinear for QDQ, else max|y|/127). The integer arithmetic is exact on both sides; what
//! may differ is the order of the f32 sums in the float ops around it
//! (MLAS vs ndarray), which can move a value across a rounding boundary of
//! a later requantisation: one step of that tensor, which reaches the
//! output attenuated or amplified by at most the few layers after it.
//! Two steps is "a few" with margin; on the committed fixtures m4c
//! measures 0 (resnet QDQ; resnet and imu QOperator static, i.e. QLinearConv,
//! QLinearMatMul, QLinearAdd/Mul/GlobalAveragePool, QGemm; resnet dynamic;
//! `qgemm_float`, a QGemm with a float output) to
//! ~2e-7, a float ulp (imu dynamic, the MatMulNBits and int4 QDQ llamas);
//! `blocked_partial` (blocked Q/DQ with a shorter last block, an int4
//! weight) is exact, its uint8 output included.
//!
//! The lowered graphs keep the quantised weights packed: their constants
//! take a fraction of the fp32 model's, and they survive the optimiser and
//! the `.ir` file round trip.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use m4c_compiler::opt::{optimise, OptOptions, Roofline};
use m4c_compiler::{lower, LowerOptions, OnnxModel};
use m4c_ir::{Graph, OpKind};
use m4c_ops::{as_f64, run_graph, Value};
use m4c_runtime::read_npz;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant")
}

/// One entry of `MANIFEST.json`.
struct Entry {
    name: String,
    /// The fp32 fixture it was quantised from (none for models built by
    /// the script itself).
    source: Option<String>,
    steps: BTreeMap<String, f64>,
}

fn manifest() -> Vec<Entry> {
    let text = std::fs::read_to_string(dir().join("MANIFEST.json")).expect("MANIFEST.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("MANIFEST.json parses");
    json["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| Entry {
            name: m["name"].as_str().expect("name").to_string(),
            source: m["source"].as_str().map(str::to_string),
            steps: m["output_step"]
                .as_object()
                .expect("output_step")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_f64().expect("step")))
                .collect(),
        })
        .collect()
}

/// Lowers `model` for the shapes of `inputs`; the feeds in graph order.
fn load(model: &Path, inputs: &BTreeMap<String, Value>) -> (Graph, Vec<Value>) {
    let m = OnnxModel::load(model).unwrap_or_else(|e| panic!("{}: {e}", model.display()));
    let proto = m.graph();
    let inits: HashSet<&str> = proto.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut options = LowerOptions::default();
    let mut feeds = vec![];
    for i in proto
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
    {
        let v = &inputs[&i.name];
        options
            .input_shapes
            .insert(i.name.clone(), v.shape().to_vec());
        feeds.push(v.clone());
    }
    let g = lower(&m, &options).unwrap_or_else(|e| panic!("{}: {e}", model.display()));
    (g, feeds)
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

/// Bytes of every constant of `g`.
fn constant_bytes(g: &Graph) -> usize {
    g.constants()
        .map(|id| {
            let t = g.constant(id).expect("constant");
            t.dtype.storage_bytes(t.len())
        })
        .sum()
}

#[test]
fn quantised_models_match_onnxruntime() {
    let entries = manifest();
    assert!(entries.len() >= 10, "{} quantised fixtures", entries.len());
    for e in &entries {
        let file = |ext: &str| dir().join(format!("{}.{ext}", e.name));
        let inputs = read_npz(&file("inputs.npz")).expect("inputs");
        let expected = read_npz(&file("expected.npz")).expect("expected");
        let (g, feeds) = load(&file("onnx"), &inputs);
        let outs = run_graph(&g, &feeds).unwrap_or_else(|err| panic!("{}: {err}", e.name));
        assert_eq!(outs.len(), e.steps.len(), "{}", e.name);
        for (&id, got) in g.outputs.iter().zip(&outs) {
            let out = &g.value(id).name;
            let want = &expected[out];
            assert_eq!(got.shape(), want.shape(), "{} {out}", e.name);
            let (a, b) = (as_f64(got), as_f64(want));
            let max = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            let cos = cosine(&a, &b);
            let step = e.steps[out];
            eprintln!(
                "{} {out}: cosine {cos:.7}, max abs error {max:.3e} ({:.3} steps of {step:.3e})",
                e.name,
                max / step
            );
            assert!(cos >= 0.999, "{} {out}: cosine {cos}", e.name);
            assert!(
                max <= 2.0 * step,
                "{} {out}: max error {max} > 2 × {step}",
                e.name
            );
        }
    }
}

/// The quantised weights stay quantised through lowering: the lowered
/// graph's constants are at most 45 % of the fp32 source model's (int8
/// weights with their scales; int4 is below a third), and the
/// dequantisation is in the graph, not folded.
#[test]
fn lowering_keeps_quantised_weights_small() {
    for e in manifest() {
        let Some(source) = &e.source else { continue };
        let file = |ext: &str| dir().join(format!("{}.{ext}", e.name));
        let inputs = read_npz(&file("inputs.npz")).expect("inputs");
        let (g, _) = load(&file("onnx"), &inputs);
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(source);
        let (fp32, _) = load(&source, &inputs);
        let (q, f) = (constant_bytes(&g), constant_bytes(&fp32));
        let ratio = q as f64 / f as f64;
        eprintln!(
            "{}: constants {q} bytes, fp32 {f} bytes ({ratio:.2})",
            e.name
        );
        let limit = if e.name.ends_with("int4") { 0.33 } else { 0.45 };
        assert!(
            ratio <= limit,
            "{}: constants are {ratio:.2} of fp32",
            e.name
        );
        let casts_of_weights = g
            .nodes
            .iter()
            .filter(|n| n.op.kind() == OpKind::Cast)
            .filter(|n| {
                g.constant(n.inputs[0])
                    .is_some_and(|t| t.dtype.is_quantised() && t.len() >= 64)
            })
            .count();
        assert!(
            casts_of_weights > 0,
            "{}: no quantised weight is read",
            e.name
        );
    }
}

/// MatMulNBits with `accuracy_level = 4`: the interpreter quantises the
/// activations to int8 per block as onnxruntime's int8 path does, so it
/// matches that path far more closely than the two-step bound (2e-5
/// measured), while the same weights computed in f32 (`llama_prefill_int4`,
/// the same quantiser's bytes without the attribute) are further from it
/// than this bound: the test tells the two semantics apart.
#[test]
fn int8_compute_matches_onnxruntimes_int8_path() {
    let file = |name: &str, ext: &str| dir().join(format!("{name}.{ext}"));
    let max_diff = |a: &Value, b: &Value| {
        as_f64(a)
            .iter()
            .zip(as_f64(b))
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    };
    let inputs = read_npz(&file("llama_prefill_int4_a8", "inputs.npz")).expect("inputs");
    let want = read_npz(&file("llama_prefill_int4_a8", "expected.npz")).expect("expected");
    let f32_compute = read_npz(&file("llama_prefill_int4", "expected.npz")).expect("expected");
    let (g, feeds) = load(&file("llama_prefill_int4_a8", "onnx"), &inputs);
    let got = run_graph(&g, &feeds).expect("runs");
    let bound = 1e-4;
    assert!(max_diff(&got[0], &want["logits"]) <= bound);
    assert!(max_diff(&f32_compute["logits"], &want["logits"]) > 10.0 * bound);
}

/// The int4 model through the optimiser (which must not fold the
/// dequantisation of a packed weight either) and `m4c_compiler::ir_file`
/// (the `.ir` text plus its weights file): read back, it computes the same
/// outputs and its constants have not grown.
#[test]
fn int4_graph_survives_the_optimiser_and_ir_files() {
    let name = "llama_prefill_int4";
    let file = |ext: &str| dir().join(format!("{name}.{ext}"));
    let inputs = read_npz(&file("inputs.npz")).expect("inputs");
    let (lowered, feeds) = load(&file("onnx"), &inputs);
    let (g, _) = optimise(&lowered, &OptOptions::default(), &Roofline::cpu()).expect("opt");
    assert!(
        constant_bytes(&g) <= constant_bytes(&lowered),
        "the optimiser widened constants: {} > {}",
        constant_bytes(&g),
        constant_bytes(&lowered)
    );
    let want = run_graph(&lowered, &feeds).unwrap();
    let got = run_graph(&g, &feeds).unwrap();
    for (a, b) in got.iter().zip(&want) {
        assert!(cosine(&as_f64(a), &as_f64(b)) > 0.999_999);
    }
    let tmp = std::env::temp_dir().join(format!("m4c-quant-ir-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let ir = tmp.join("int4.ir");
    m4c_compiler::ir_file::save(&ir, &[], &g).expect("save");
    let text = std::fs::read_to_string(&ir).unwrap();
    assert!(text.contains(": u4["), "no u4 constant in the IR text");
    let back = m4c_compiler::ir_file::load(&ir).expect("load");
    assert_eq!(run_graph(&back, &feeds).unwrap(), got);
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// The int4 model as a firmware bundle (`m4c firmware build`, optimised,
/// IR text plus weight blobs): at most 40 % of the fp32 model's bytes, and
/// `m4c run` of its module still matches onnxruntime.
#[test]
fn int4_model_bundles_small_and_runs() {
    let name = "llama_prefill_int4";
    let file = |ext: &str| dir().join(format!("{name}.{ext}"));
    let tmp = std::env::temp_dir().join(format!("m4c-quant-fw-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let fw = tmp.join("q.fw");
    let m4c = |args: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_m4c"))
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    };
    let module = format!("backbone={}", file("onnx").display());
    m4c(&[
        "firmware".as_ref(),
        "build".as_ref(),
        "--module".as_ref(),
        module.as_ref(),
        "--backend".as_ref(),
        "reference".as_ref(),
        "-o".as_ref(),
        fw.as_os_str(),
    ]);
    let fp32 = std::fs::metadata(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_prefill.onnx"),
    )
    .unwrap()
    .len();
    let bundle = std::fs::metadata(&fw).unwrap().len();
    assert!(
        bundle * 5 <= fp32 * 2,
        "bundle {bundle} bytes, fp32 model {fp32} bytes"
    );
    m4c(&[
        "run".as_ref(),
        fw.as_os_str(),
        "--module".as_ref(),
        "backbone".as_ref(),
        "--inputs".as_ref(),
        file("inputs.npz").as_os_str(),
        "--expect".as_ref(),
        file("expected.npz").as_os_str(),
    ]);
    std::fs::remove_dir_all(&tmp).unwrap();
}
