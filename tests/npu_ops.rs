//! The NPU operators beyond matmul and elementwise, each compiled in
//! calibrated int8, run on the simulator and compared with the reference
//! interpreter: convolutions (padding, stride, dilation, batches,
//! depthwise, a fused Relu), pooling and reductions, constant-index
//! Gather and nearest Resize; and the conv fixtures through `m4c run
//! --backend npu` against onnxruntime.

mod common;
#[path = "common/npu.rs"]
mod npu;
use common::{fixture, m4c, text};
use npu::{compile, simulate};

use m4c_ir::op::{ConvAttrs, CoordMode, NearestRounding, PadMode, PoolAttrs, ResizeMode};
use m4c_ir::{DType, Graph, Op, Tensor, TensorType, ValueId};
use m4c_ops::Value;
use m4c_runtime::bundle::format::SectionKind;
use m4c_runtime::exec::npu::RunFigures;

/// Deterministic values in about -1..1 (a hash of the index).
fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0 - 1.0)
        .collect()
}

fn input(shape: &[usize], seed: usize) -> Value {
    let n = shape.iter().product();
    Value::F32(ndarray::ArrayD::from_shape_vec(shape.to_vec(), values(n, seed)).unwrap())
}

fn absmax(v: &Value) -> f64 {
    m4c_ops::as_f64(v).iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// A graph of input `x` (shape `shape`) and the nodes `build` adds; its
/// single output is what `build` returns.
fn graph(name: &str, shape: &[usize], build: impl FnOnce(&mut Graph, ValueId) -> ValueId) -> Graph {
    let mut g = Graph::new(name);
    let x = g.add_input("x", TensorType::fixed(DType::F32, shape));
    let y = build(&mut g, x);
    g.outputs.push(y);
    g
}

/// Runs `g` on the NPU and on the interpreter: (NPU output, reference,
/// figures). Every node must be on the NPU.
fn both(g: &Graph, x: &Value) -> (Value, Value, RunFigures) {
    let inputs = [x.clone()];
    let (got, figures) = simulate(g, &inputs, "edge-small");
    let want = m4c_ops::run_graph(g, &inputs).unwrap();
    assert_eq!(figures.fallback_parts, 0, "{}: {figures:?}", g.name);
    (got[0].clone(), want[0].clone(), figures)
}

fn kernels(f: &RunFigures) -> Vec<&str> {
    f.layers.iter().map(|l| l.kernel.as_str()).collect()
}

struct ConvCase {
    name: &'static str,
    x: &'static [usize],
    w: &'static [usize],
    attrs: ConvAttrs,
    relu: bool,
}

fn conv_graph(c: &ConvCase) -> Graph {
    graph(c.name, c.x, |g, x| {
        let n: usize = c.w.iter().product();
        let w = values(n, 3).iter().map(|v| v * 0.4).collect::<Vec<_>>();
        let w = g.add_const("w", Tensor::from_f32(c.w, &w));
        let b = g.add_const("b", Tensor::from_f32(&[c.w[0]], &values(c.w[0], 5)));
        let y = g
            .add_node(Op::Conv(c.attrs.clone()), &[x, w, b], "conv")
            .unwrap();
        if !c.relu {
            return y;
        }
        let zero = g.add_const("zero", Tensor::from_f32(&[], &[0.0]));
        g.add_node(Op::Max, &[y, zero], "relu").unwrap()
    })
}

fn attrs(strides: [usize; 2], pads: [usize; 4], dilations: [usize; 2], group: usize) -> ConvAttrs {
    ConvAttrs {
        strides: strides.to_vec(),
        pads: pads.to_vec(),
        dilations: dilations.to_vec(),
        group,
    }
}

/// Convolutions of every supported form match the interpreter within
/// cosine 0.999 (int8 weights per channel, int8 activations); a Relu
/// after a conv is fused (no layer of its own); forms the direct kernels
/// cannot take (batches, dilation, uneven pads) are im2col + GEMM; a 1-D
/// conv is the 2-D one of height 1;
/// depthwise convs run on the vector unit.
#[test]
fn convolutions_match_the_interpreter() {
    let cases = [
        ConvCase {
            name: "3x3_pad1_relu",
            x: &[1, 8, 12, 12],
            w: &[16, 8, 3, 3],
            attrs: attrs([1, 1], [1; 4], [1, 1], 1),
            relu: true,
        },
        ConvCase {
            name: "7x7_stride2_pad3",
            x: &[1, 3, 20, 20],
            w: &[8, 3, 7, 7],
            attrs: attrs([2, 2], [3; 4], [1, 1], 1),
            relu: false,
        },
        ConvCase {
            name: "1x1_stride2",
            x: &[1, 8, 10, 10],
            w: &[12, 8, 1, 1],
            attrs: attrs([2, 2], [0; 4], [1, 1], 1),
            relu: false,
        },
        ConvCase {
            name: "uneven_pads_stride_2x1",
            x: &[1, 4, 9, 7],
            w: &[6, 4, 3, 3],
            attrs: attrs([2, 1], [1, 0, 0, 2], [1, 1], 1),
            relu: true,
        },
        ConvCase {
            name: "dilation2",
            x: &[1, 4, 11, 11],
            w: &[5, 4, 3, 3],
            attrs: attrs([1, 1], [2; 4], [2, 2], 1),
            relu: false,
        },
        ConvCase {
            name: "batch2",
            x: &[2, 3, 8, 8],
            w: &[4, 3, 3, 3],
            attrs: attrs([1, 1], [1; 4], [1, 1], 1),
            relu: false,
        },
        ConvCase {
            name: "1d_stride2_dilation2",
            x: &[1, 4, 30],
            w: &[6, 4, 3],
            attrs: ConvAttrs {
                strides: vec![2],
                pads: vec![1, 2],
                dilations: vec![2],
                group: 1,
            },
            relu: false,
        },
        ConvCase {
            name: "depthwise_3x3_relu",
            x: &[1, 8, 10, 10],
            w: &[8, 1, 3, 3],
            attrs: attrs([1, 1], [1; 4], [1, 1], 8),
            relu: true,
        },
        ConvCase {
            name: "depthwise_5x5_stride2",
            x: &[1, 6, 11, 11],
            w: &[6, 1, 5, 5],
            attrs: attrs([2, 2], [2; 4], [1, 1], 6),
            relu: false,
        },
    ];
    for c in &cases {
        let g = conv_graph(c);
        let x = input(c.x, 1);
        let (got, want, f) = both(&g, &x);
        let cmp = m4c_ops::compare(&got, &want, 0.0, 0.0);
        assert!(cmp.cosine > 0.999, "{}: {}", c.name, cmp.summary());
        let k = kernels(&f);
        assert!(!k.contains(&"lut-max"), "{}: Relu not fused: {k:?}", c.name);
        assert_eq!(k.last(), Some(&"dma-nchw"), "{}: {k:?}", c.name);
        let general =
            c.x[0] > 1 || c.attrs.dilations.iter().any(|&d| d > 1) || c.name.starts_with("uneven");
        // The input comes in NHWC from the boundary where a direct
        // kernel reads it (no `dma-nhwc` layer).
        if c.attrs.group > 1 {
            assert_eq!(k, ["dwconv", "dma-nchw"], "{}", c.name);
        } else if general {
            assert_eq!(k, ["dma-im2col", "gemm", "dma-nchw"], "{}", c.name);
        } else {
            let direct = k == ["conv", "dma-nchw"];
            assert!(
                direct || k == ["dma-im2col", "gemm", "dma-nchw"],
                "{}: {k:?}",
                c.name
            );
        }
    }
}

/// `|got - want| <= bound` everywhere, with the shapes equal.
fn assert_within(name: &str, got: &Value, want: &Value, bound: f64) {
    assert_eq!(got.shape(), want.shape(), "{name}");
    let c = m4c_ops::compare(got, want, 0.0, 0.0);
    assert!(
        c.max_abs <= bound,
        "{name}: {} > bound {bound:e}",
        c.summary()
    );
}

fn pool(kernel: [usize; 2], strides: [usize; 2], pads: [usize; 4]) -> PoolAttrs {
    PoolAttrs {
        kernel: kernel.to_vec(),
        strides: strides.to_vec(),
        pads: pads.to_vec(),
        dilations: vec![1, 1],
    }
}

/// Max and average pooling and reductions match the interpreter within
/// their int8 rounding: half a step of the input scale (per element
/// summed, divided by the window for an average) plus half a step of the
/// output scale.
#[test]
fn pooling_and_reductions_match_the_interpreter() {
    let shape = [1, 4, 9, 9];
    let x = input(&shape, 2);
    let step_in = absmax(&x) / 127.0;
    let cases: Vec<(&str, Op, f64)> = vec![
        (
            "maxpool_3x3_s2_p1",
            Op::MaxPool(pool([3, 3], [2, 2], [1; 4])),
            1.0,
        ),
        (
            "avgpool_2x2_s2",
            Op::AvgPool {
                pool: pool([2, 2], [2, 2], [0; 4]),
                count_include_pad: false,
            },
            1.0,
        ),
        (
            "avgpool_3x3_p1_counting_pads",
            Op::AvgPool {
                pool: pool([3, 3], [1, 1], [1; 4]),
                count_include_pad: true,
            },
            1.0,
        ),
        (
            "reduce_sum_hw",
            Op::ReduceSum {
                axes: vec![2, 3],
                keep_dims: true,
            },
            81.0,
        ),
        (
            "reduce_max_w",
            Op::ReduceMax {
                axes: vec![3],
                keep_dims: false,
            },
            1.0,
        ),
    ];
    for (name, op, summed) in cases {
        let g = graph(name, &shape, |g, x| g.add_node(op, &[x], "y").unwrap());
        let (got, want, f) = both(&g, &x);
        let step_out = absmax(&want) / 127.0;
        let bound = (summed * step_in + step_out) / 2.0 * 1.0001;
        assert_within(name, &got, &want, bound);
        let k = kernels(&f);
        assert!(k.iter().any(|k| k.starts_with("reduce-")), "{name}: {k:?}");
    }
    // Pooling has two forms (on NCHW planes, or on NHWC channel vectors),
    // taken by simulated cycles: both give the interpreter's result.
    let mut forms = vec![];
    for (name, shape) in [
        ("many_channels", [1, 8, 12, 12]),
        ("one_channel", [1, 1, 12, 12]),
    ] {
        let g = graph(name, &shape, |g, x| {
            let op = Op::MaxPool(pool([3, 3], [2, 2], [1; 4]));
            g.add_node(op, &[x], "y").unwrap()
        });
        let x = input(&shape, 3);
        let (got, want, f) = both(&g, &x);
        let bound = (absmax(&x) + absmax(&want)) / 254.0 * 1.0001;
        assert_within(name, &got, &want, bound);
        forms.push(kernels(&f).join(" "));
    }
    assert_eq!(
        forms,
        [
            "dma-nhwc dma-window reduce-max dma-nchw",
            "dma-window reduce-max"
        ]
    );
    // GlobalAveragePool as the frontend lowers it: ReduceSum, then Mul.
    let g = graph("global_average_pool", &shape, |g, x| {
        let axes = vec![2, 3];
        let s = g
            .add_node(
                Op::ReduceSum {
                    axes,
                    keep_dims: true,
                },
                &[x],
                "sum",
            )
            .unwrap();
        let k = g.add_const("k", Tensor::from_f32(&[], &[1.0 / 81.0]));
        g.add_node(Op::Mul, &[s, k], "mean").unwrap()
    });
    let (got, want, f) = both(&g, &x);
    assert_eq!(kernels(&f), ["reduce-sum", "lut-mul"]);
    let c = m4c_ops::compare(&got, &want, 0.0, 0.0);
    assert!(c.cosine > 0.999, "{}", c.summary());
}

/// Constant-index Gathers (a CLS pick, a q/k/v-style split), nearest
/// Resize and Pad (constant, reflect, edge) move bytes (linear Resize
/// interpolates them): the result is the interpreter's up to
/// the input's int8 rounding (half a step); a Gather with run-time
/// indices (an embedding lookup) is refused by name and falls back.
#[test]
fn constant_gathers_and_nearest_resize_move_bytes() {
    // (name, data shape, axis, indices, indices' shape)
    type Case = (&'static str, Vec<usize>, usize, Vec<i64>, Vec<usize>);
    let gathers: [Case; 3] = [
        ("cls_pick", vec![2, 5, 8], 1, vec![0], vec![]),
        ("qkv_split", vec![3, 2, 4, 6], 0, vec![1], vec![]),
        ("reorder", vec![4, 6], 0, vec![3, -4, 1], vec![3]),
    ];
    for (name, shape, axis, idx, idx_shape) in gathers {
        let g = graph(name, &shape, |g, x| {
            let i = g.add_const("i", Tensor::from_i64(&idx_shape, &idx));
            g.add_node(Op::Gather { axis }, &[x, i], "y").unwrap()
        });
        let x = input(&shape, 4);
        let (got, want, f) = both(&g, &x);
        assert_eq!(kernels(&f), ["dma"], "{name}");
        assert_within(name, &got, &want, absmax(&x) / 254.0 * 1.0001);
    }
    let shape = [1, 2, 3, 5];
    for (rounding, coord) in [
        (NearestRounding::Floor, CoordMode::Asymmetric),
        (NearestRounding::RoundPreferFloor, CoordMode::HalfPixel),
    ] {
        let g = graph("resize", &shape, |g, x| {
            let op = Op::Resize {
                mode: ResizeMode::Nearest(rounding),
                coord,
                scales: vec![1.0, 1.0, 2.0, 1.5],
                sizes: vec![1, 2, 6, 7],
            };
            g.add_node(op, &[x], "y").unwrap()
        });
        let x = input(&shape, 6);
        let (got, want, _) = both(&g, &x);
        assert_within("resize", &got, &want, absmax(&x) / 254.0 * 1.0001);
    }
    // Linear Resize: per resized axis two neighbour gathers and a Q7
    // interpolation; bound: the input's rounding, per axis the
    // intermediate rounding and the weights' (|b - a| / 254 at most), and
    // the output's rounding.
    for (coord, scales, sizes) in [
        (CoordMode::HalfPixel, [1.0, 1.0, 2.0, 2.0], [1, 2, 6, 10]),
        (CoordMode::AlignCorners, [1.0, 1.0, 1.0, 1.5], [1, 2, 3, 7]),
    ] {
        let shape = [1, 2, 3, 5];
        let g = graph("resize_linear", &shape, |g, x| {
            let op = Op::Resize {
                mode: ResizeMode::Linear,
                coord,
                scales: scales.to_vec(),
                sizes: sizes.to_vec(),
            };
            g.add_node(op, &[x], "y").unwrap()
        });
        let x = input(&shape, 11);
        let (got, want, f) = both(&g, &x);
        let axes = scales.iter().filter(|&&s| s != 1.0).count();
        assert_eq!(kernels(&f).iter().filter(|k| **k == "lerp").count(), axes);
        let step_in = absmax(&x) / 127.0;
        let bound = (step_in * (1.0 + 3.0 * axes as f64) + absmax(&want) / 127.0) / 2.0;
        assert_within("resize_linear", &got, &want, bound * 1.0001);
    }
    for mode in [PadMode::Constant(0.25), PadMode::Reflect, PadMode::Edge] {
        let shape = [1, 2, 4, 5];
        let g = graph("pad", &shape, |g, x| {
            let pads = vec![0, 0, 1, 2, 0, 0, 2, 1];
            g.add_node(Op::Pad { pads, mode }, &[x], "y").unwrap()
        });
        let x = input(&shape, 12);
        let (got, want, f) = both(&g, &x);
        assert_eq!(kernels(&f), ["dma"], "{mode:?}");
        assert_within("pad", &got, &want, absmax(&x) / 254.0 * 1.0001);
    }
    // A fill outside the input's range cannot keep its bytes: it falls back.
    let g = graph("pad_far", &[1, 4], |g, x| {
        let mode = PadMode::Constant(9.0);
        g.add_node(
            Op::Pad {
                pads: vec![0, 1, 0, 1],
                mode,
            },
            &[x],
            "y",
        )
        .unwrap()
    });
    let x = input(&[1, 4], 13);
    let (got, figures) = simulate(&g, std::slice::from_ref(&x), "edge-small");
    assert_eq!(figures.fallback_parts, 1);
    assert_eq!(got[0], m4c_ops::run_graph(&g, &[x]).unwrap()[0]);
    // An embedding lookup (a constant table, run-time indices) is one
    // DMA row load per index on the NPU: the rows of the int8 table.
    let mut g = Graph::new("embedding");
    let rows = values(40, 7);
    let table = g.add_const("table", Tensor::from_f32(&[10, 4], &rows));
    let ids = g.add_input("ids", TensorType::fixed(DType::I64, &[3]));
    let y = g
        .add_node(Op::Gather { axis: 0 }, &[table, ids], "y")
        .unwrap();
    g.outputs.push(y);
    let ids = Value::I64(ndarray::arr1(&[7i64, -1, 2]).into_dyn());
    let (got, figures) = simulate(&g, std::slice::from_ref(&ids), "edge-small");
    assert_eq!(figures.fallback_parts, 0);
    let want = m4c_ops::as_f64(&m4c_ops::run_graph(&g, &[ids]).unwrap()[0]);
    let step = rows.iter().fold(0f32, |m, x| m.max(x.abs())) as f64 / 127.0;
    for (a, b) in m4c_ops::as_f64(&got[0]).iter().zip(&want) {
        assert!((a - b).abs() <= step / 2.0 + 1e-6, "{a} vs {b}");
    }
    // A table that is itself a run-time value is not a lookup the NPU takes.
    let mut g = Graph::new("dynamic table");
    let data = g.add_input("data", TensorType::fixed(DType::F32, &[10, 4]));
    let ids = g.add_input("ids", TensorType::fixed(DType::I64, &[3]));
    g.add_node(Op::Gather { axis: 0 }, &[data, ids], "y")
        .unwrap();
    let why = m4c_npu_codegen::constraints::refuse(&g, &g.nodes[0]).unwrap();
    assert!(why.starts_with("gather-indices: run-time"), "{why}");
}

/// resnet_small (7x7 stem, 3x3 and 1x1 strided convs, MaxPool, global
/// average pool) and mobilenet_v3_small (depthwise convs, squeeze-excite)
/// run with every node on the NPU within cosine 0.99 of onnxruntime; the
/// partition table calls both Full.
#[test]
fn conv_fixtures_run_on_the_npu_within_cosine_099() {
    for name in ["resnet_small", "mobilenet_v3_small"] {
        let f = |ext: &str| fixture(&format!("{name}.{ext}")).display().to_string();
        let out = m4c(&[
            "run",
            &f("onnx"),
            "--inputs",
            &f("inputs.npz"),
            "--expect",
            &f("expected.npz"),
            "--backend",
            "npu",
            "--min-cosine",
            "0.99",
        ]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(0), "{name}:\n{t}");
        assert!(!t.contains("FAIL"), "{t}");
        let out = m4c(&["partition", &f("onnx"), "--target", "npu"]);
        let t = text(&out);
        assert!(t.contains(&format!("| {name} | Full | 1 |")), "{t}");
    }
}

/// Every program the code generator emits for a conv, a depthwise conv,
/// pooling and a gather disassembles and reassembles to the identical
/// binary (`docs/NPU_ISA.md`: `asm(disasm(x)) == x`, segments included).
#[test]
fn generated_programs_round_trip_through_assembly() {
    let shape = [1, 6, 9, 9];
    let g = graph("round_trip", &shape, |g, x| {
        let w = g.add_const("w", Tensor::from_f32(&[6, 1, 3, 3], &values(54, 8)));
        let op = Op::Conv(attrs([1, 1], [1; 4], [1, 1], 6));
        let d = g.add_node(op, &[x, w], "dw").unwrap();
        let w = g.add_const("w2", Tensor::from_f32(&[4, 6, 3, 3], &values(216, 9)));
        let c = g
            .add_node(Op::Conv(attrs([2, 2], [1; 4], [1, 1], 1)), &[d, w], "conv")
            .unwrap();
        let p = g
            .add_node(Op::MaxPool(pool([2, 2], [1, 1], [0; 4])), &[c], "pool")
            .unwrap();
        let i = g.add_const("i", Tensor::from_i64(&[], &[2]));
        g.add_node(Op::Gather { axis: 1 }, &[p, i], "pick").unwrap()
    });
    let artifact = compile(&g, &[input(&shape, 9)], "edge-small");
    let blob = artifact
        .files
        .iter()
        .find(|f| f.section == Some(SectionKind::Code))
        .unwrap();
    let programs = m4c_npu::module::unpack_programs(&blob.bytes).unwrap();
    // dwconv (its input enters NHWC), conv, the pooling windows and
    // reduction, the gather and the exit's dma-nchw (the layout between
    // the convs and the pooling stays NHWC).
    assert!(programs.len() >= 6, "{} programs", programs.len());
    for (i, p) in programs.iter().enumerate() {
        let text = m4c_npu::disasm::disassemble(p);
        let again = m4c_npu::asm::assemble(&text).unwrap();
        assert_eq!(again.to_bytes(), p.to_bytes(), "program {i}");
    }
}

/// A squeeze-excite gate (`x * s` with `s` of shape `[1, C, 1, 1]`
/// computed at run time, here by a global average pool and a sigmoid) is
/// one elementwise layer whose second operand the vector unit broadcasts
/// along each channel's row (no DMA expansion), within the int8 rounding
/// of the interpreter's result.
#[test]
fn a_squeeze_excite_gate_broadcasts_per_row() {
    let shape = [1, 6, 5, 5];
    let g = graph("squeeze_excite", &shape, |g, x| {
        let axes = vec![2, 3];
        let s = g
            .add_node(
                Op::ReduceSum {
                    axes,
                    keep_dims: true,
                },
                &[x],
                "sum",
            )
            .unwrap();
        let gate = g.add_node(Op::Sigmoid, &[s], "gate").unwrap();
        g.add_node(Op::Mul, &[gate, x], "y").unwrap()
    });
    let x = input(&shape, 10);
    let (got, want, f) = both(&g, &x);
    assert_eq!(kernels(&f), ["reduce-sum", "lut-sigmoid", "eltwise-mul"]);
    let c = m4c_ops::compare(&got, &want, 0.0, 0.0);
    assert!(c.cosine > 0.999, "{}", c.summary());
}

/// A function of a depthwise conv's result (here a sigmoid, as
/// HardSwish or SiLU follow MobileNet's and EfficientNet's depthwise
/// convs) is a table in the conv's output stage: one `dwconv+lut` layer,
/// within the int8 rounding of the interpreter's result.
#[test]
fn a_function_after_a_depthwise_conv_is_its_output_stage() {
    let shape = [1, 8, 6, 6];
    let g = graph("depthwise_sigmoid", &shape, |g, x| {
        let w = values(8 * 9, 3).iter().map(|v| v * 0.4).collect::<Vec<_>>();
        let w = g.add_const("w", Tensor::from_f32(&[8, 1, 3, 3], &w));
        let b = g.add_const("b", Tensor::from_f32(&[8], &values(8, 5)));
        let attrs = attrs([1, 1], [1, 1, 1, 1], [1, 1], 8);
        let y = g.add_node(Op::Conv(attrs), &[x, w, b], "conv").unwrap();
        g.add_node(Op::Sigmoid, &[y], "act").unwrap()
    });
    let x = input(&shape, 11);
    let (got, want, f) = both(&g, &x);
    assert_eq!(kernels(&f), ["dwconv+lut", "dma-nchw"]);
    let c = m4c_ops::compare(&got, &want, 0.0, 0.0);
    assert!(c.cosine > 0.999, "{}", c.summary());
}

/// A causal mask written as a constant of 0 and `finfo(float32).min` (as
/// exporters fold it) added to attention scores, then Softmax: the mask
/// Add runs on the NPU (its sentinels saturate the sum to the result's
/// mask code) and the masked probabilities come out ≈ 0.
#[test]
fn a_finfo_min_causal_mask_is_added_on_the_npu() {
    let s = 6;
    let g = graph("masked_softmax", &[1, 2, s, s], |g, x| {
        let mask: Vec<f32> = (0..s * s)
            .map(|i| if i % s > i / s { f32::MIN } else { 0.0 })
            .collect();
        let mask = g.add_const("mask", Tensor::from_f32(&[1, 1, s, s], &mask));
        let scores = g.add_node(Op::Add, &[x, mask], "scores").unwrap();
        g.add_node(Op::Softmax { axis: 3 }, &[scores], "p").unwrap()
    });
    let x = input(&[1, 2, s, s], 11);
    let (got, want, figures) = both(&g, &x);
    assert!(
        kernels(&figures).contains(&"eltwise-add"),
        "{:?}",
        kernels(&figures)
    );
    let (got, want) = (m4c_ops::as_f64(&got), m4c_ops::as_f64(&want));
    for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
        let masked = i % s > (i / s) % s;
        if masked {
            assert!(a < 1e-3, "masked entry {i}: {a}");
        } else {
            assert!((a - b).abs() < 0.03, "entry {i}: {a} vs {b}");
        }
    }
}
