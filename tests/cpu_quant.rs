//! The models onnxruntime's own tools quantised (`tests/fixtures/quant/`)
//! compiled by the CPU backend for the host (AVX-512 VNNI here), and for
//! aarch64 — plain NEON and with the dot-product extension (`sdot`) — run
//! under qemu-user (`tests/conformance/qemu.rs`), each
//! compared with onnxruntime's outputs under `tests/quant_fixtures.rs`'s
//! bound (cosine ≥ 0.999, max error ≤ 2 output quantisation steps), both
//! as lowered and after the optimiser; the int8 GEMM and int4 GEMM kernels
//! (and the int8 convolution) must be the ones that ran. Models the
//! backend refuses are named with the reason, which must be one of those
//! documented (a uint8 MaxPool: the pool kernels are f32; an integer
//! convolution whose uint8 weights do not fit int8 after centring).

#[path = "conformance/qemu.rs"]
mod qemu;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use m4c_compiler::backend::{refusals, CodeGenerator, CompileRequest};
use m4c_compiler::opt::{optimise, OptOptions, Roofline};
use m4c_compiler::{lower, LowerOptions, OnnxModel};
use m4c_cpu_codegen::{compile_graph, CompileOptions, CpuBackend, Target};
use m4c_cpu_device::{GraphPlan, Manifest, Step};
use m4c_ir::{Graph, Tensor};
use m4c_ops::{as_f64, Value};
use m4c_runtime::bundle::format::SectionKind;
use m4c_runtime::read_npz;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant")
}

/// The fixtures and their output steps, from `MANIFEST.json`.
fn manifest() -> Vec<(String, BTreeMap<String, f64>)> {
    let text = std::fs::read_to_string(dir().join("MANIFEST.json")).expect("MANIFEST.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("MANIFEST.json parses");
    json["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| {
            let steps = m["output_step"]
                .as_object()
                .expect("output_step")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_f64().expect("step")))
                .collect();
            (m["name"].as_str().expect("name").to_string(), steps)
        })
        .collect()
}

/// Lowers `model` for the shapes of `inputs`; the feeds in graph order.
fn load(model: &Path, inputs: &BTreeMap<String, Value>) -> (Graph, Vec<Tensor>) {
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
        feeds.push(v.to_tensor());
    }
    let g = lower(&m, &options).unwrap_or_else(|e| panic!("{}: {e}", model.display()));
    (g, feeds)
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

/// Where a quantised model runs.
#[derive(Clone, Copy, Debug)]
enum Engine {
    /// This host, in process.
    Host,
    /// `aarch64` with this LLVM CPU (none: the generic Armv8 CPU), under
    /// qemu-user.
    Aarch64(Option<&'static str>),
}

/// How many int8 GEMM, int4 GEMM, int8 im2col and int8-compute int4 GEMM
/// kernels a plan calls.
type Kernels = (usize, usize, usize, usize);

/// The quantised kernels `plan` calls.
fn kernels(plan: &GraphPlan) -> Kernels {
    let count = |kernel: &str| {
        plan.steps
            .iter()
            .filter(|s| matches!(s, Step::Kernel { symbol, .. } if symbol.contains(kernel)))
            .count()
    };
    (
        count("q8gemm"),
        count("q4gemm"),
        count("im2col8"),
        count("q4a8gemm"),
    )
}

/// Compiles `g` for `engine` and runs it on `feeds`; the outputs and the
/// kernel counts.
fn compile_and_run(
    name: &str,
    g: &Graph,
    feeds: &[Tensor],
    engine: Engine,
) -> (Vec<Value>, Kernels) {
    match engine {
        Engine::Host => {
            let options = CompileOptions {
                target: Target::parse(None, None).unwrap(),
                threads: 2,
            };
            let mut compiled = compile_graph(g, &options).unwrap_or_else(|e| panic!("{name}: {e}"));
            let counts = kernels(compiled.plan());
            let outputs = compiled
                .run(feeds)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let outputs = outputs.iter().map(|t| Value::from_tensor(t).unwrap());
            (outputs.collect(), counts)
        }
        Engine::Aarch64(cpu) => {
            let request = CompileRequest {
                target: Some(qemu::TARGET.into()),
                tuning: cpu.map(String::from),
                threads: 1,
            };
            let artifact = CpuBackend
                .compile(g, &request)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let plan = artifact.section(SectionKind::CodePlan).expect("a plan");
            let manifest: Manifest = serde_json::from_slice(plan).expect("the plan parses");
            let counts = kernels(manifest.graph.as_ref().expect("a graph plan"));
            let values: Vec<Value> = feeds
                .iter()
                .map(|t| Value::from_tensor(t).unwrap())
                .collect();
            let outputs =
                qemu::run(g, &artifact, &values).unwrap_or_else(|e| panic!("{name}: {e}"));
            (outputs, counts)
        }
    }
}

/// Compiles `g` for `engine`, checks its outputs against `expected`, and
/// returns the number of int8 GEMM, int4 GEMM and int8 im2col kernels it
/// ran.
fn check(
    name: &str,
    g: &Graph,
    feeds: &[Tensor],
    expected: &BTreeMap<String, Value>,
    steps: &BTreeMap<String, f64>,
    engine: Engine,
) -> Kernels {
    let (outputs, kernels) = compile_and_run(name, g, feeds, engine);
    for (&id, got) in g.outputs.iter().zip(&outputs) {
        let out = &g.value(id).name;
        let want = &expected[out];
        assert_eq!(got.shape(), want.shape(), "{name} {out}");
        let (a, b) = (as_f64(got), as_f64(want));
        let max = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        let cos = cosine(&a, &b);
        let step = steps[out];
        eprintln!(
            "{name} {out}: cosine {cos:.7}, max abs error {max:.3e} ({:.3} steps), int8 GEMMs {}, int4 GEMMs {}, int8 convolutions {}, int8-compute int4 GEMMs {}",
            max / step,
            kernels.0,
            kernels.1,
            kernels.2,
            kernels.3
        );
        assert!(cos >= 0.999, "{name} {out}: cosine {cos}");
        assert!(
            max <= 2.0 * step,
            "{name} {out}: max error {max} > 2 × {step}"
        );
    }
    kernels
}

#[test]
fn quantised_models_run_on_the_cpu_backend() {
    quantised_models_run_on(Engine::Host);
}

/// The int8 GEMM on plain NEON (widening multiply-adds).
#[test]
fn quantised_models_run_on_aarch64_neon_under_qemu() {
    if emulator_present() {
        quantised_models_run_on(Engine::Aarch64(None));
    }
}

/// The int8 GEMM on `sdot` (a CPU with the dot-product extension).
#[test]
fn quantised_models_run_on_aarch64_sdot_under_qemu() {
    if emulator_present() {
        quantised_models_run_on(Engine::Aarch64(Some("neoverse-n1")));
    }
}

/// The int8 attention kernel (`quant/attention8.rs`) on aarch64, plain
/// NEON and `sdot`, under qemu: attention over dequantised int8/uint8 q,
/// k, v with its probabilities quantised (`m4c quantize`'s QDQ form),
/// against the interpreter. Power-of-two scales keep the scores exact in
/// both; the softmaxes differ in their last bits, which may move one
/// probability across a rounding step (`backends/cpu/codegen/tests/
/// quant_graph.rs` runs the same graph on every x86 target).
#[test]
fn int8_attention_runs_on_aarch64_under_qemu() {
    if !emulator_present() {
        return;
    }
    use m4c_ir::{DType, Op, TensorType};
    // (heads, m, k, n1, n2), signedness of q, k, v, probabilities.
    for ((h, m, k, n1, n2), signed) in [
        ((2, 13, 9, 21, 7), [true, false, true, false]),
        ((1, 5, 16, 40, 12), [false, true, false, true]),
    ] {
        let mut g = Graph::new("attention8");
        let mut feeds = vec![];
        let mut seed = 7u32;
        let mut dequantised = |g: &mut Graph, shape: &[usize], signed: bool, scale: f32| {
            let n: usize = shape.iter().product();
            let bytes: Vec<u8> = (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 24) as u8
                })
                .collect();
            let (t, zero) = if signed {
                let v: Vec<i8> = bytes.iter().map(|&b| b as i8).collect();
                (Tensor::from_i8(shape, &v), -9.0)
            } else {
                (Tensor::from_u8(shape, &bytes), 131.0)
            };
            let name = format!("x{}", feeds.len());
            let x = g.add_input(&name, TensorType::fixed(t.dtype, shape));
            feeds.push(t);
            let f = g
                .add_node(Op::Cast { to: DType::F32 }, &[x], format!("{name}f"))
                .unwrap();
            let z = g.add_const(format!("{name}z"), Tensor::from_f32(&[], &[zero]));
            let c = g.add_node(Op::Sub, &[f, z], format!("{name}c")).unwrap();
            let s = g.add_const(format!("{name}s"), Tensor::from_f32(&[], &[scale]));
            g.add_node(Op::Mul, &[c, s], format!("{name}d")).unwrap()
        };
        let q = dequantised(&mut g, &[h, m, k], signed[0], 1.0 / 64.0);
        let key = dequantised(&mut g, &[h, k, n1], signed[1], 1.0 / 128.0);
        let v = dequantised(&mut g, &[h, n1, n2], signed[2], 1.0 / 32.0);
        let mm = Op::MatMul {
            trans_a: false,
            trans_b: false,
        };
        let scores = g.add_node(mm.clone(), &[q, key], "scores").unwrap();
        let c = g.add_const("c", Tensor::from_f32(&[], &[0.125]));
        let scaled = g.add_node(Op::Mul, &[scores, c], "scaled").unwrap();
        let p = g.add_node(Op::Softmax { axis: 2 }, &[scaled], "p").unwrap();
        let (to, zero) = if signed[3] {
            (DType::I8, Tensor::from_i8(&[], &[-128]))
        } else {
            (DType::U8, Tensor::from_u8(&[], &[0]))
        };
        let step = 1.0f32 / 255.0;
        let sp = g.add_const("sp", Tensor::from_f32(&[], &[step]));
        let zp = g.add_const("zp", zero);
        let pq = g.add_node(Op::Quantize { to }, &[p, sp, zp], "pq").unwrap();
        let pf = g
            .add_node(Op::Cast { to: DType::F32 }, &[pq], "pf")
            .unwrap();
        let zpf = g.add_const(
            "zpf",
            Tensor::from_f32(&[], &[if signed[3] { -128.0 } else { 0.0 }]),
        );
        let pc = g.add_node(Op::Sub, &[pf, zpf], "pc").unwrap();
        let pd = g.add_node(Op::Mul, &[pc, sp], "pd").unwrap();
        let out = g.add_node(mm, &[pd, v], "out").unwrap();
        g.outputs.push(out);
        let values: Vec<Value> = feeds
            .iter()
            .map(|t| Value::from_tensor(t).unwrap())
            .collect();
        let want = m4c_ops::run_graph(&g, &values).unwrap().remove(0);
        for cpu in [None, Some("neoverse-n1")] {
            let label = format!("attention {h}x{m}x{k}x{n1}x{n2} {signed:?} on {cpu:?}");
            let request = CompileRequest {
                target: Some(qemu::TARGET.into()),
                tuning: cpu.map(String::from),
                threads: 1,
            };
            let artifact = CpuBackend
                .compile(&g, &request)
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            let plan = artifact.section(SectionKind::CodePlan).expect("a plan");
            let manifest: Manifest = serde_json::from_slice(plan).expect("the plan parses");
            let graph_plan = manifest.graph.as_ref().expect("a graph plan");
            let ran = graph_plan
                .steps
                .iter()
                .any(|s| matches!(s, Step::Kernel { symbol, .. } if symbol.contains("attention8")));
            assert!(ran, "{label}: no int8 attention kernel");
            let got = qemu::run(&g, &artifact, &values).unwrap_or_else(|e| panic!("{label}: {e}"));
            // One probability step times the largest |v − zv|·sv, and f32.
            let flip = f64::from(step) * 255.0 / 32.0;
            let c = m4c_ops::compare(&got[0], &want, 1e-5, flip + 1e-5);
            assert!(c.passed(), "{label}: {}", c.summary());
        }
    }
}

/// Whether qemu-user and the cross compiler are here; without them the
/// aarch64 tests are skipped with the reason, unless `M4C_REQUIRE_QEMU`
/// (set by `scripts/test.sh`) makes that a failure.
fn emulator_present() -> bool {
    match qemu::available() {
        Ok(()) => true,
        Err(why) if std::env::var_os("M4C_REQUIRE_QEMU").is_some() => {
            panic!("M4C_REQUIRE_QEMU is set but {why}")
        }
        Err(why) => {
            eprintln!("skipped: {why}");
            false
        }
    }
}

fn quantised_models_run_on(engine: Engine) {
    let mut compiled = vec![];
    for (name, steps) in manifest() {
        let file = |ext: &str| dir().join(format!("{name}.{ext}"));
        let inputs = read_npz(&file("inputs.npz")).expect("inputs");
        let expected = read_npz(&file("expected.npz")).expect("expected");
        let (lowered, feeds) = load(&file("onnx"), &inputs);
        let (optimised, _) =
            optimise(&lowered, &OptOptions::default(), &Roofline::cpu()).expect("optimiser");
        for (stage, g) in [("lowered", &lowered), ("optimised", &optimised)] {
            let refused = refusals(&CpuBackend, g);
            if let Some(r) = refused.first() {
                // A uint8 MaxPool (QOperator ResNet), and ConvInteger with
                // uint8 weights centred on 129 (quantize_dynamic), whose
                // centred values fit int8 neither way.
                eprintln!("{name} ({stage}): refused, {r}");
                assert!(
                    r.reason.starts_with("MaxPool on u8") || r.reason.starts_with("Conv on i32"),
                    "{name} ({stage}): {r}"
                );
                continue;
            }
            let label = format!("{name} ({stage}, {engine:?})");
            let kernels = check(&label, g, &feeds, &expected, &steps, engine);
            compiled.push((name.clone(), stage, kernels));
        }
    }
    let ran = |model: &str, stage: &str| {
        compiled
            .iter()
            .find(|(n, s, _)| n == model && *s == stage)
            .map(|(_, _, k)| *k)
            .unwrap_or_else(|| panic!("{model} ({stage}) did not compile"))
    };
    // The quantised kernels ran, as lowered and as optimised: MatMulNBits
    // (4 and 8 bits) and blocked int4 QDQ weights on the weight-only GEMM,
    // QLinearMatMul and quantize_dynamic's MatMulInteger on the int8 GEMM.
    for stage in ["lowered", "optimised"] {
        for model in [
            "llama_prefill_int4",
            "llama_prefill_int8",
            "llama_prefill_int4_qdq",
        ] {
            assert!(ran(model, stage).1 > 0, "{model} ({stage})");
        }
        // accuracy_level = 4: every MatMulNBits on the int8-compute kernel.
        let a8 = ran("llama_prefill_int4_a8", stage);
        assert!(
            a8.3 > 0 && a8.1 == 0,
            "llama_prefill_int4_a8 ({stage}): {a8:?}"
        );
        assert!(ran("imu_encoder_qop", stage).0 > 0, "{stage}");
        // QDQ convolutions on im2col + the int8 GEMM.
        assert!(ran("resnet_small_qdq", stage).2 > 0, "{stage}");
        assert!(ran("imu_encoder_dynamic", stage).0 > 0, "{stage}");
    }
}
