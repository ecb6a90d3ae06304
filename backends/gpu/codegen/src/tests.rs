//! Every kernel shape emitted for small graphs and validated by naga
//! (wgpu's own WGSL front end and validator), snapshots of two shaders,
//! and the refusals.

use m4c_compiler::backend::{refusals, CodeGenerator};
use m4c_ir::op::{
    ConvAttrs, CoordMode, NearestRounding, NormKind, PadMode, PoolAttrs, ResizeMode, SliceAxis,
};
use m4c_ir::{DType, Graph, Op, Tensor, TensorType, ValueId};
use m4c_ops::Value;
use m4c_runtime::bundle::format::CodeEntry;
use m4c_runtime::bundle::ModuleCode;
use m4c_runtime::exec::{load_code, Signature};

use crate::kernel::Body;
use crate::{lower::lower, wgsl::emit, GpuBackend};

fn f32s(shape: &[usize]) -> TensorType {
    TensorType::fixed(DType::F32, shape)
}

fn weight(g: &mut Graph, name: &str, shape: &[usize]) -> ValueId {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.25 - 0.5).collect();
    g.add_const(name, Tensor::from_f32(shape, &values))
}

fn node(g: &mut Graph, op: Op, inputs: &[ValueId], name: &str) -> ValueId {
    g.add_node(op, inputs, name).unwrap()
}

/// The WGSL of `g`, validated by naga.
fn shader(g: &Graph) -> String {
    assert_eq!(refusals(&GpuBackend, g), vec![], "{}", g.name);
    let program = lower(g, None).unwrap();
    let (text, table) = emit(&program.kernels, program.weights.len()).unwrap();
    let module = naga::front::wgsl::parse_str(&text)
        .unwrap_or_else(|e| panic!("{}: {}\n{text}", g.name, e.emit_to_string(&text)));
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{}: {}\n{text}", g.name, e.emit_to_string(&text)));
    for k in &table {
        assert!(
            module.entry_points.iter().any(|e| e.name == k.entry),
            "{}",
            k.entry
        );
    }
    text
}

/// A fused chain with broadcasting, a comparison (bool result), a cast
/// to i64 and a batched, transposed, broadcast matrix product.
pub(crate) fn elementwise_and_gemm() -> Graph {
    let mut g = Graph::new("ew_gemm");
    let x = g.add_input("x", f32s(&[2, 3, 8]));
    let w = weight(&mut g, "w", &[5, 8]);
    let bias = weight(&mut g, "bias", &[5]);
    let y = node(
        &mut g,
        Op::MatMul {
            trans_a: false,
            trans_b: true,
        },
        &[x, w],
        "y",
    );
    let s = node(&mut g, Op::Add, &[y, bias], "s");
    let e = node(&mut g, Op::Gelu { tanh_approx: false }, &[s], "e");
    let t = node(&mut g, Op::Tanh, &[e], "t");
    let zero = g.add_const("zero", Tensor::from_f32(&[1], &[0.0]));
    let mask = node(&mut g, Op::Less, &[t, zero], "mask");
    let ints = node(&mut g, Op::Cast { to: DType::I64 }, &[t], "ints");
    let v = weight(&mut g, "v", &[8]);
    let mv = node(
        &mut g,
        Op::MatMul {
            trans_a: false,
            trans_b: false,
        },
        &[x, v],
        "mv",
    );
    let bytes = node(&mut g, Op::Cast { to: DType::I8 }, &[mv], "bytes");
    g.outputs = vec![t, mask, ints, bytes];
    g
}

/// Row kernels: softmax over a middle axis, LayerNorm and RMSNorm.
pub(crate) fn rows() -> Graph {
    let mut g = Graph::new("rows");
    let x = g.add_input("x", f32s(&[2, 5, 3]));
    let sm = node(&mut g, Op::Softmax { axis: 1 }, &[x], "sm");
    let scale = weight(&mut g, "scale", &[3]);
    let bias = weight(&mut g, "bias", &[3]);
    let norm = |kind| Op::Norm {
        kind,
        axis: 2,
        epsilon: 1e-5,
    };
    let ln = node(&mut g, norm(NormKind::Layer), &[sm, scale, bias], "ln");
    let rms = node(&mut g, norm(NormKind::Rms), &[ln, scale], "rms");
    g.outputs = vec![rms];
    g
}

/// Reductions, pooling, convolutions (dense and depthwise), resizes and
/// every movement operator.
pub(crate) fn the_rest() -> Graph {
    let mut g = Graph::new("rest");
    let x = g.add_input("x", f32s(&[1, 4, 6, 6]));
    let conv = |group| {
        Op::Conv(ConvAttrs {
            strides: vec![1, 2],
            pads: vec![1, 1, 1, 0],
            dilations: vec![1, 1],
            group,
        })
    };
    let w = weight(&mut g, "w", &[4, 2, 3, 3]);
    let b = weight(&mut g, "b", &[4]);
    let c = node(&mut g, conv(2), &[x, w, b], "c");
    let dw = weight(&mut g, "dw", &[4, 1, 3, 3]);
    let d = node(&mut g, conv(4), &[c, dw], "d");
    let pool = PoolAttrs {
        kernel: vec![2, 2],
        strides: vec![1, 1],
        pads: vec![1, 1, 0, 0],
        dilations: vec![1, 1],
    };
    let mp = node(&mut g, Op::MaxPool(pool.clone()), &[d], "mp");
    let ap = node(
        &mut g,
        Op::AvgPool {
            pool,
            count_include_pad: false,
        },
        &[mp],
        "ap",
    );
    let scales = vec![1.0, 1.0, 2.0, 2.0];
    let sizes = |s: &[usize]| vec![s[0], s[1], s[2] * 2, s[3] * 2];
    let ap_shape = g.value(ap).ty.static_shape().unwrap();
    let lin = Op::Resize {
        mode: ResizeMode::Linear,
        coord: CoordMode::HalfPixel,
        scales: scales.clone(),
        sizes: sizes(&ap_shape),
    };
    let up = node(&mut g, lin, &[ap], "up");
    let up_shape = g.value(up).ty.static_shape().unwrap();
    let near = Op::Resize {
        mode: ResizeMode::Nearest(NearestRounding::RoundPreferFloor),
        coord: CoordMode::Asymmetric,
        scales,
        sizes: sizes(&up_shape),
    };
    let nn = node(&mut g, near, &[up], "nn");
    let sum = node(
        &mut g,
        Op::ReduceSum {
            axes: vec![2, 3],
            keep_dims: false,
        },
        &[nn],
        "sum",
    );
    let mx = node(
        &mut g,
        Op::ReduceMax {
            axes: vec![1],
            keep_dims: true,
        },
        &[nn],
        "mx",
    );
    let am = node(
        &mut g,
        Op::ArgMax {
            axis: 1,
            keep_dims: false,
            select_last: true,
        },
        &[sum],
        "am",
    );
    let t = node(
        &mut g,
        Op::Transpose {
            perm: vec![0, 2, 3, 1],
        },
        &[x],
        "t",
    );
    let axes = [(0, 1, 1), (5, -1, 3), (0, 2, 3), (1, 1, 2)];
    let slice = Op::Slice {
        axes: axes
            .iter()
            .map(|&(start, step, len)| SliceAxis { start, step, len })
            .collect(),
    };
    let s = node(&mut g, slice, &[t], "s");
    let p = node(
        &mut g,
        Op::Pad {
            pads: vec![0, 1, 0, 1, 0, 1, 0, 1],
            mode: PadMode::Reflect,
        },
        &[s],
        "p",
    );
    let e = node(
        &mut g,
        Op::Pad {
            pads: vec![0, 0, 1, 0, 0, 0, 0, 2],
            mode: PadMode::Edge,
        },
        &[s],
        "e",
    );
    let k = node(
        &mut g,
        Op::Pad {
            pads: vec![0, 0, 0, 1, 0, 0, 0, 0],
            mode: PadMode::Constant(2.5),
        },
        &[s],
        "k",
    );
    let cat = node(&mut g, Op::Concat { axis: 3 }, &[s, s], "cat");
    let idx = g.add_const("idx", Tensor::from_i64(&[2, 2], &[0, -1, 2, 1]));
    let ga = node(&mut g, Op::Gather { axis: 1 }, &[x, idx], "ga");
    let ex = node(
        &mut g,
        Op::Expand {
            shape: vec![2, 4, 6, 6],
        },
        &[x],
        "ex",
    );
    let r = node(&mut g, Op::Reshape { shape: vec![4, 36] }, &[x], "r");
    // A product over enough 64×64 output blocks for the register-tiled
    // kernel, edges partial, K not a multiple of the step.
    let big = g.add_input("big", f32s(&[6, 130, 37]));
    let bw = weight(&mut g, "bw", &[37, 250]);
    let mm = node(
        &mut g,
        Op::MatMul {
            trans_a: false,
            trans_b: false,
        },
        &[big, bw],
        "mm",
    );
    g.outputs = vec![mx, am, p, e, k, cat, ga, ex, r, mm];
    g
}

/// An ungrouped Conv of `x` by a `w` of shape `ws` (with a bias when
/// `bias`): the implicit GEMM.
fn conv(
    g: &mut Graph,
    x: ValueId,
    ws: &[usize],
    bias: bool,
    (strides, pads, dilations): (&[usize], &[usize], &[usize]),
) -> ValueId {
    let k = g.nodes.len();
    let w = weight(g, &format!("w{k}"), ws);
    let mut inputs = vec![x, w];
    if bias {
        inputs.push(weight(g, &format!("b{k}"), &ws[..1]));
    }
    let op = Op::Conv(ConvAttrs {
        strides: strides.to_vec(),
        pads: pads.to_vec(),
        dilations: dilations.to_vec(),
        group: 1,
    });
    node(g, op, &inputs, &format!("conv{k}"))
}

/// One small implicit-GEMM convolution (3×3, stride 2, pad 1, bias):
/// the snapshot of its kernel.
pub(crate) fn conv_gemm() -> Graph {
    let mut g = Graph::new("conv_gemm");
    let x = g.add_input("x", f32s(&[1, 2, 5, 5]));
    let y = conv(
        &mut g,
        x,
        &[3, 2, 3, 3],
        true,
        (&[2, 2], &[1, 1, 1, 1], &[1, 1]),
    );
    g.outputs = vec![y];
    g
}

/// Ungrouped convolutions over strides, asymmetric pads, dilations,
/// kernel sizes (1×1 to 5×5, non-square), batches of 1 and 2, 1-D and
/// 2-D, with and without bias, and one large enough for the 4×4 register
/// tiles with ragged M, N and K edges.
pub(crate) fn convs() -> Graph {
    let mut g = Graph::new("convs");
    let x = g.add_input("x", f32s(&[2, 3, 9, 8]));
    let a = conv(
        &mut g,
        x,
        &[5, 3, 3, 3],
        true,
        (&[1, 1], &[1, 1, 1, 1], &[1, 1]),
    );
    let b = conv(
        &mut g,
        x,
        &[4, 3, 2, 3],
        false,
        (&[2, 1], &[0, 1, 1, 2], &[2, 1]),
    );
    let c = conv(
        &mut g,
        x,
        &[7, 3, 1, 1],
        true,
        (&[2, 3], &[0, 0, 0, 0], &[1, 1]),
    );
    let d = conv(
        &mut g,
        x,
        &[2, 3, 5, 5],
        true,
        (&[3, 2], &[2, 2, 1, 0], &[1, 2]),
    );
    let chained = conv(
        &mut g,
        a,
        &[3, 5, 3, 1],
        true,
        (&[1, 1], &[0, 0, 0, 0], &[1, 1]),
    );
    let x1 = g.add_input("x1", f32s(&[2, 3, 11]));
    let e = conv(&mut g, x1, &[4, 3, 3], true, (&[2], &[2, 1], &[2]));
    let x2 = g.add_input("x2", f32s(&[1, 3, 40, 52]));
    let big = conv(
        &mut g,
        x2,
        &[96, 3, 3, 3],
        true,
        (&[1, 1], &[1, 1, 1, 1], &[1, 1]),
    );
    g.outputs = vec![a, b, c, d, chained, e, big];
    g
}

#[test]
fn ungrouped_convs_are_implicit_gemms() {
    let program = lower(&convs(), None).unwrap();
    assert_eq!(program.kernels.len(), 7);
    for k in &program.kernels {
        match &k.body {
            Body::Gemm(g) => assert!(g.b_view.is_some(), "{}", k.value),
            other => panic!("{}: {other:?}", k.value),
        }
    }
    let big = &program.kernels[6].body;
    let Body::Gemm(g) = big else { unreachable!() };
    assert_eq!(
        (g.m, g.n, g.k, g.batch.as_slice()),
        (96, 40 * 52, 27, &[1][..])
    );
    assert_eq!(crate::launch::gemm(g).unwrap().r, 4);
    // Grouped and depthwise convolutions keep the direct kernel.
    let rest = lower(&the_rest(), None).unwrap();
    assert!(matches!(rest.kernels[0].body, Body::Map(_)));
}

#[test]
fn conv_gemm_shader() {
    insta::assert_snapshot!(shader(&conv_gemm()));
}

#[test]
fn every_kernel_shape_validates() {
    for g in [elementwise_and_gemm(), rows(), the_rest(), convs()] {
        shader(&g);
    }
}

#[test]
fn elementwise_and_gemm_shader() {
    insta::assert_snapshot!(shader(&elementwise_and_gemm()));
}

#[test]
fn row_kernels_shader() {
    insta::assert_snapshot!(shader(&rows()));
}

/// The shared fusion groups are the kernels: the chain after the product
/// is one kernel, the bool and i64 results their own (they are outputs).
#[test]
fn kernels_follow_the_fusion_groups() {
    let g = elementwise_and_gemm();
    let program = lower(&g, None).unwrap();
    let names: Vec<&str> = program.kernels.iter().map(|k| k.value.as_str()).collect();
    assert_eq!(names, ["y", "t", "mask", "ints", "mv", "bytes"]);
}

/// Inputs for `g`: a fixed pseudo-random sequence in [-2, 2).
pub(crate) fn inputs(g: &Graph) -> Vec<Value> {
    let mut state = 12345u32;
    g.inputs
        .iter()
        .map(|&v| {
            let shape = g.value(v).ty.static_shape().unwrap();
            let n = shape.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (state >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
                })
                .collect();
            Value::from_tensor(&Tensor::from_f32(&shape, &values)).unwrap()
        })
        .collect()
}

/// Each sample graph compiled for `target`, loaded through the runtime's
/// `gpu` device (as `m4c run --backend gpu[:TARGET]`) and run on this
/// host's device matches the reference interpreter (rtol 1e-3, atol
/// 1e-4). Without a device it says why and passes, unless `require` is
/// set in the environment.
fn samples_match_the_interpreter(target: &str, require: &str) {
    graphs_match_the_interpreter(
        [elementwise_and_gemm(), rows(), the_rest()],
        target,
        require,
    );
}

/// `graphs` compiled for `target` and run as [`samples_match_the_interpreter`] runs them.
fn graphs_match_the_interpreter(
    graphs: impl IntoIterator<Item = Graph>,
    target: &str,
    require: &str,
) {
    if let Err(why) = GpuBackend.runnable(Some(target)) {
        assert!(
            std::env::var_os(require).is_none(),
            "{require} is set but {why}"
        );
        println!("skipped: no {target} device here: {why}");
        return;
    }
    let request = m4c_compiler::backend::CompileRequest {
        target: Some(target.into()),
        ..Default::default()
    };
    for g in graphs {
        let artifact = GpuBackend.compile(&g, &request).unwrap();
        let entry = CodeEntry {
            cpu: String::new(),
            section: format!("{}.{target}", g.name),
            target: artifact.target.clone(),
        };
        let files: Vec<_> = artifact
            .files
            .iter()
            .filter_map(|f| Some((f.section?, f.bytes.as_slice())))
            .collect();
        let code = ModuleCode::from_memory("gpu", entry, &files).unwrap();
        let module = load_code(&g.name, &code, Signature::of(&g), 1).unwrap();
        let feeds = inputs(&g);
        let got = module.run(&feeds).unwrap();
        let want = m4c_ops::run_graph(&g, &feeds).unwrap();
        for (k, (got, want)) in got.iter().zip(&want).enumerate() {
            let c = m4c_ops::compare(got, want, 1e-3, 1e-4);
            assert!(
                c.passed(),
                "{target} {} output {k}: {}",
                g.name,
                c.summary()
            );
        }
    }
}

#[test]
fn sample_graphs_match_the_interpreter_on_the_gpu() {
    samples_match_the_interpreter("wgpu", "M4C_REQUIRE_GPU");
}

/// The implicit-GEMM convolutions on this host's Vulkan device
/// (lavapipe in CI) match the interpreter.
#[test]
fn implicit_gemm_convs_match_the_interpreter_on_the_gpu() {
    graphs_match_the_interpreter([convs(), conv_gemm()], "wgpu", "M4C_REQUIRE_GPU");
}

/// The PTX path, on an NVIDIA GPU with its driver (skips elsewhere unless
/// `M4C_REQUIRE_CUDA` is set).
#[test]
fn sample_graphs_match_the_interpreter_through_cuda() {
    samples_match_the_interpreter("cuda", "M4C_REQUIRE_CUDA");
}

#[test]
fn other_element_types_and_integer_arithmetic_are_refused_with_reasons() {
    let mut g = Graph::new("refused");
    let h = g.add_input("h", TensorType::fixed(DType::F16, &[4]));
    let i = g.add_input("i", TensorType::fixed(DType::I32, &[4]));
    let e = node(&mut g, Op::Exp, &[h], "e");
    let q = node(&mut g, Op::Div, &[i, i], "q");
    let b = g.add_input("b", TensorType::fixed(DType::Bool, &[4]));
    let s = node(&mut g, Op::Add, &[b, b], "s");
    g.outputs = vec![e, q, s];
    let reasons: Vec<String> = refusals(&GpuBackend, &g)
        .into_iter()
        .map(|r| r.reason)
        .collect();
    assert_eq!(
        reasons,
        [
            "Exp on f16 tensors",
            "Div on i32 tensors (GPU kernels compute it in f32 only)",
            "Add on bool tensors"
        ]
    );
    assert!(GpuBackend.compile(&g, &Default::default()).is_err());
}

/// Weights beyond WebGPU's 128 MiB binding are split across bindings: two
/// 80 MB tables, the second placed at the next 128 MiB boundary (bound as
/// `weights1`), gathered from on this host's adapter and compared with
/// the interpreter.
#[test]
fn weights_beyond_one_binding_are_split_across_bindings() {
    let rows = 5_000_000;
    let mut g = Graph::new("split");
    let idx = g.add_input("idx", TensorType::fixed(DType::I64, &[3]));
    let table = |g: &mut Graph, name: &str, scale: f32| {
        let values: Vec<f32> = (0..rows * 4).map(|i| (i % 1009) as f32 * scale).collect();
        g.add_const(name, Tensor::from_f32(&[rows, 4], &values))
    };
    let (t0, t1) = (table(&mut g, "t0", 0.5), table(&mut g, "t1", -0.25));
    let a = node(&mut g, Op::Gather { axis: 0 }, &[t0, idx], "a");
    let b = node(&mut g, Op::Gather { axis: 0 }, &[t1, idx], "b");
    let s = node(&mut g, Op::Add, &[a, b], "s");
    g.outputs = vec![s];
    let program = lower(&g, Some(crate::backend::MAX_BINDING)).unwrap();
    // t0 at 0, t1 moved from 80 MB (across the boundary) to 128 MiB.
    assert_eq!(
        program.weights.len(),
        crate::backend::MAX_BINDING + rows * 16
    );
    let (text, _) = emit(&program.kernels, program.weights.len()).unwrap();
    assert!(text.contains("@binding(2) var<storage, read> weights1"));
    let module = naga::front::wgsl::parse_str(&text).unwrap();
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default(),
    )
    .validate(&module)
    .unwrap();
    if let Err(why) = GpuBackend.runnable(None) {
        assert!(std::env::var_os("M4C_REQUIRE_GPU").is_none(), "{why}");
        println!("skipped running: {why}");
        return;
    }
    let artifact = GpuBackend.compile(&g, &Default::default()).unwrap();
    let entry = CodeEntry {
        cpu: String::new(),
        section: "split.wgpu".into(),
        target: artifact.target.clone(),
    };
    let files: Vec<_> = artifact
        .files
        .iter()
        .filter_map(|f| Some((f.section?, f.bytes.as_slice())))
        .collect();
    let code = ModuleCode::from_memory("gpu", entry, &files).unwrap();
    let module = load_code("split", &code, Signature::of(&g), 1).unwrap();
    let feeds = vec![
        Value::from_tensor(&Tensor::from_i64(&[3], &[rows as i64 - 1, 0, 2_500_001])).unwrap(),
    ];
    let got = module.run(&feeds).unwrap();
    let want = m4c_ops::run_graph(&g, &feeds).unwrap();
    let c = m4c_ops::compare(&got[0], &want[0], 1e-3, 1e-4);
    assert!(c.passed(), "{}", c.summary());
}
