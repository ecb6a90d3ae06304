//! The textual IR round-trips: print → parse → print is the identity, and
//! malformed text gives a located error.

use std::collections::HashMap;

use m4c_ir::op::{
    ConvAttrs, CoordMode, NearestRounding, NormKind, PadMode, PoolAttrs, ResizeMode, SliceAxis,
};
use m4c_ir::{text, DType, Dim, Graph, Op, Tensor, TensorType};

/// A graph touching every operator and every attribute form.
fn every_op_graph() -> Graph {
    let mut g = Graph::new("every op");
    let f = |s: &[usize]| TensorType::fixed(DType::F32, s);
    let img = g.add_input("image", f(&[1, 4, 8, 8]));
    let x = g.add_input("x", f(&[1, 2, 4]));
    let ids = g.add_input("token ids", TensorType::fixed(DType::I64, &[2, 5]));
    let w = g.add_const("conv.weight", Tensor::from_f32(&[4, 1, 3, 3], &[0.5; 36]));
    let b = g.add_const(
        "conv.bias",
        Tensor::from_f32(&[4], &[0.0, -1.5, 1e-7, f32::INFINITY]),
    );
    let scale = g.add_const("ln.scale", Tensor::from_f32(&[4], &[1.0; 4]));
    let table = g.add_const("embed", Tensor::from_f32(&[10, 4], &[0.25; 40]));
    let mask = g.add_const("mask", Tensor::from_bool(&[4], &[true, false, true, false]));
    let n = |g: &mut Graph, op: Op, ins: &[m4c_ir::ValueId], name: &str| {
        g.add_node(op, ins, name).unwrap()
    };
    let conv = n(
        &mut g,
        Op::Conv(ConvAttrs {
            strides: vec![1, 1],
            pads: vec![1, 1, 1, 1],
            dilations: vec![1, 1],
            group: 4,
        }),
        &[img, w, b],
        "conv",
    );
    let pool = PoolAttrs {
        kernel: vec![2, 2],
        strides: vec![2, 2],
        pads: vec![0, 0, 0, 0],
        dilations: vec![1, 1],
    };
    let mp = n(&mut g, Op::MaxPool(pool.clone()), &[conv], "mp");
    let ap = n(
        &mut g,
        Op::AvgPool {
            pool,
            count_include_pad: false,
        },
        &[mp],
        "ap",
    );
    let rs = n(
        &mut g,
        Op::Resize {
            mode: ResizeMode::Nearest(NearestRounding::Floor),
            coord: CoordMode::Asymmetric,
            scales: vec![1.0, 1.0, 2.0, 2.0],
            sizes: vec![1, 4, 4, 4],
        },
        &[ap],
        "rs",
    );
    let lin = n(
        &mut g,
        Op::Resize {
            mode: ResizeMode::Linear,
            coord: CoordMode::HalfPixel,
            scales: vec![1.0, 1.0, 0.5, 0.5],
            sizes: vec![1, 4, 2, 2],
        },
        &[rs],
        "lin",
    );
    let pad = n(
        &mut g,
        Op::Pad {
            pads: vec![0, 0, 1, 1, 0, 0, 1, 1],
            mode: PadMode::Constant(-0.5),
        },
        &[lin],
        "pad",
    );
    let refl = n(
        &mut g,
        Op::Pad {
            pads: vec![0, 0, 1, 1, 0, 0, 1, 1],
            mode: PadMode::Reflect,
        },
        &[pad],
        "refl",
    );
    let edge = n(
        &mut g,
        Op::Pad {
            pads: vec![0; 8],
            mode: PadMode::Edge,
        },
        &[refl],
        "edge",
    );
    let _flat = n(
        &mut g,
        Op::Reshape {
            shape: vec![1, 4, 36],
        },
        &[edge],
        "flat",
    );
    let emb = n(&mut g, Op::Gather { axis: 0 }, &[table, ids], "emb");
    let normed = n(
        &mut g,
        Op::Norm {
            kind: NormKind::Rms,
            axis: 2,
            epsilon: 1e-6,
        },
        &[emb, scale],
        "normed",
    );
    let ln = n(
        &mut g,
        Op::Norm {
            kind: NormKind::Layer,
            axis: 2,
            epsilon: 1e-5,
        },
        &[normed, scale, scale],
        "ln",
    );
    let t = n(
        &mut g,
        Op::Transpose {
            perm: vec![0, 2, 1],
        },
        &[ln],
        "t",
    );
    let mm = n(
        &mut g,
        Op::MatMul {
            trans_a: false,
            trans_b: true,
        },
        &[t, t],
        "mm",
    );
    let sm = n(&mut g, Op::Softmax { axis: 2 }, &[mm], "sm");
    let ge = n(&mut g, Op::Gelu { tanh_approx: true }, &[sm], "ge");
    let ge2 = n(&mut g, Op::Gelu { tanh_approx: false }, &[ge], "ge2");
    let sl = n(
        &mut g,
        Op::Slice {
            axes: vec![
                SliceAxis {
                    start: 1,
                    step: 1,
                    len: 1,
                },
                SliceAxis {
                    start: 3,
                    step: -2,
                    len: 2,
                },
                SliceAxis {
                    start: 0,
                    step: 1,
                    len: 4,
                },
            ],
        },
        &[ge2],
        "sl",
    );
    let mut v = sl;
    for op in [
        Op::Exp,
        Op::Log,
        Op::Sqrt,
        Op::Erf,
        Op::Tanh,
        Op::Sigmoid,
        Op::Sin,
        Op::Cos,
        Op::Floor,
    ] {
        let name = format!("u{}", g.nodes.len());
        v = n(&mut g, op, &[v], &name);
    }
    for op in [
        Op::Add,
        Op::Sub,
        Op::Mul,
        Op::Div,
        Op::Pow,
        Op::Max,
        Op::Min,
    ] {
        let name = format!("b{}", g.nodes.len());
        v = n(&mut g, op, &[v, x], &name);
    }
    let eq = n(&mut g, Op::Equal, &[v, x], "eq");
    let lt = n(&mut g, Op::Less, &[v, x], "lt");
    let both = n(&mut g, Op::Min, &[eq, lt], "both");
    let any = n(&mut g, Op::Max, &[both, mask], "any");
    let wh = n(&mut g, Op::Where, &[any, v, x], "wh");
    let rsum = n(
        &mut g,
        Op::ReduceSum {
            axes: vec![1],
            keep_dims: true,
        },
        &[wh],
        "rsum",
    );
    let rmax = n(
        &mut g,
        Op::ReduceMax {
            axes: vec![0, 2],
            keep_dims: false,
        },
        &[wh],
        "rmax",
    );
    let am = n(
        &mut g,
        Op::ArgMax {
            axis: 2,
            keep_dims: false,
            select_last: true,
        },
        &[wh],
        "am",
    );
    let cast = n(&mut g, Op::Cast { to: DType::F32 }, &[am], "cast");
    let cat = n(&mut g, Op::Concat { axis: 1 }, &[rsum, rsum], "cat");
    let ex = n(
        &mut g,
        Op::Expand {
            shape: vec![3, 2, 2, 4],
        },
        &[cat],
        "ex",
    );
    let qs = g.add_const("q.scale", Tensor::from_f32(&[], &[0.5]));
    let qzp = g.add_const("q.zero", Tensor::from_u8(&[], &[128]));
    let q = n(
        &mut g,
        Op::Quantize { to: DType::U8 },
        &[cast, qs, qzp],
        "q",
    );
    let w4 = g.add_const(
        "w4",
        Tensor::from_bytes(DType::U4, &[2, 3], vec![0x21, 0x43, 0x65]),
    );
    let w4f = n(&mut g, Op::Cast { to: DType::F32 }, &[w4], "w4f");
    g.outputs.extend([ex, rmax, cast, q, w4f]);
    g.verify().unwrap();
    g
}

#[test]
fn print_parse_print_is_identity() {
    let g = every_op_graph();
    let text = text::print(&g);
    let back = text::parse(&text, &HashMap::new()).unwrap();
    back.verify().unwrap();
    assert_eq!(text::print(&back), text);
}

#[test]
fn every_operator_appears_in_the_round_trip_graph() {
    let g = every_op_graph();
    let mut kinds: Vec<_> = g.nodes.iter().map(|n| n.op.kind()).collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(kinds.len(), m4c_ir::OpKind::ALL.len());
}

#[test]
fn text_snapshot() {
    insta::assert_snapshot!(text::print(&every_op_graph()));
}

#[test]
fn weights_bind_by_name_when_parsing() {
    let mut g = Graph::new("w");
    let x = g.add_input(
        "x",
        TensorType {
            dtype: DType::F32,
            dims: vec![Dim::Sym("batch".into()), Dim::Fixed(20)],
        },
    );
    let w = g.add_const("w", Tensor::from_f32(&[20], &[2.0; 20]));
    let y = g.add_node(Op::Mul, &[x, w], "y").unwrap();
    g.outputs.push(y);
    let text = text::print(&g);
    assert!(text.contains("const %w: f32[20] = weight"), "{text}");
    assert!(text.contains("input %x: f32[batch,20]"), "{text}");
    let unbound = text::parse(&text, &HashMap::new()).unwrap();
    assert!(unbound
        .constant(m4c_ir::ValueId(1))
        .unwrap()
        .bytes()
        .is_err());
    let weights = HashMap::from([("w".to_string(), Tensor::from_f32(&[20], &[2.0; 20]))]);
    let bound = text::parse(&text, &weights).unwrap();
    assert_eq!(
        bound
            .constant(m4c_ir::ValueId(1))
            .unwrap()
            .to_f32_vec()
            .unwrap(),
        vec![2.0; 20]
    );
}

#[test]
fn malformed_text_gives_located_errors() {
    let cases = [
        (
            "graph \"g\" {\n  input %x: f33[2]\n}\n",
            2,
            "unknown element type",
        ),
        (
            "graph \"g\" {\n  input %x: f32[2]\n  %y: f32[2] = Frobnicate(%x)\n}\n",
            3,
            "unknown operator",
        ),
        (
            "graph \"g\" {\n  input %x: f32[2]\n  %y: f32[3] = Exp(%x)\n}\n",
            3,
            "operator gives f32[2]",
        ),
        (
            "graph \"g\" {\n  %y: f32[2] = Exp(%nope)\n}\n",
            2,
            "unknown value",
        ),
        (
            "graph \"g\" {\n  input %x: f32[2]\n  %y: f32[2] = Softmax(%x)\n}\n",
            3,
            "missing attribute `axis`",
        ),
        ("graph \"g\" {\n  input %x: f32[2]\n", 2, "missing closing"),
        (
            "graph \"g\" {\n  const %c: i64[2] = [1]\n}\n",
            2,
            "literal has 1 elements",
        ),
        (
            "graph \"g\" {\n  const %c: f32[4611686018427387904,4] = [1.0]\n}\n",
            2,
            "too many elements",
        ),
    ];
    for (text, line, msg) in cases {
        let err = text::parse(text, &HashMap::new()).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("IR text line {line}:")) && err.contains(msg),
            "{err}"
        );
    }
}

/// Names with quotes, backslashes and control characters (NUL, newline)
/// print on one line and parse back to themselves (found by the `ir_text`
/// fuzz target: a graph name with NUL bytes printed as Rust's `\0`, which
/// parsed back as `0`).
#[test]
fn any_name_round_trips() {
    let odd = "a\"b\\c\u{0}d\ne\tf\u{7f}g é";
    let mut g = Graph::new(odd);
    let x = g.add_input(odd, TensorType::fixed(DType::F32, &[2]));
    g.outputs.push(x);
    let printed = text::print(&g);
    assert_eq!(printed.lines().count(), 4, "{printed}");
    let back = text::parse(&printed, &HashMap::new()).unwrap();
    assert_eq!(back.name, odd);
    assert_eq!(back.value(back.inputs[0]).name, odd);
    assert_eq!(text::print(&back), printed);
}
