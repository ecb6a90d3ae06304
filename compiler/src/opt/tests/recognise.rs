//! Recognition rules on graphs expanded by `m4c_ir::decompose` (the IR's
//! declared definitions of its composites, checked against the interpreter
//! in `ops/tests/decompose.rs`: an independent truth for what the rules
//! must give back), and on the variants exporters write by hand.

use m4c_ir::op::NormKind;
use m4c_ir::{decompose, Graph, Op, OpKind};

use super::{check, count, equivalent, input, scalar, Rng};

/// The composite (and sigmoid) nodes of `g` with their input counts, sorted.
fn composites(g: &Graph) -> Vec<String> {
    let mut v: Vec<String> = g
        .nodes
        .iter()
        .filter(|n| n.op.kind().is_composite() || n.op.kind() == OpKind::Sigmoid)
        .map(|n| format!("{:?}/{}", n.op, n.inputs.len()))
        .collect();
    v.sort();
    v
}

#[test]
fn decomposed_composites_are_recognised_back() {
    let mut rng = Rng(5);
    let mut g = Graph::new("composites");
    let x = input(&mut g, "x", &[2, 3, 8]);
    let w = g.add_const("w", rng.tensor(&[8]));
    let b = g.add_const("b", rng.tensor(&[8]));
    let w2 = g.add_const("w2", rng.tensor(&[3, 8]));
    let norm = |kind, axis, epsilon| Op::Norm {
        kind,
        axis,
        epsilon,
    };
    let ln = g
        .add_node(norm(NormKind::Layer, 2, 1e-5), &[x, w, b], "ln")
        .unwrap();
    let ln2 = g
        .add_node(norm(NormKind::Layer, 1, 1e-6), &[ln, w2], "ln2")
        .unwrap();
    let rms = g
        .add_node(norm(NormKind::Rms, 2, 1e-6), &[ln2, w], "rms")
        .unwrap();
    let erf = g
        .add_node(Op::Gelu { tanh_approx: false }, &[rms], "erf")
        .unwrap();
    let sm = g.add_node(Op::Softmax { axis: 2 }, &[erf], "sm").unwrap();
    let tanh = g
        .add_node(Op::Gelu { tanh_approx: true }, &[x], "tanh")
        .unwrap();
    let sm1 = g.add_node(Op::Softmax { axis: 1 }, &[tanh], "sm1").unwrap();
    g.outputs = vec![sm, sm1];
    let d = decompose(&g).unwrap();
    assert!(composites(&d).is_empty());
    let (opt, r) = check(&d, "recognise-layernorm");
    for rule in [
        "norm-bias",
        "recognise-rmsnorm",
        "recognise-gelu",
        "recognise-gelu-tanh",
        "recognise-softmax",
    ] {
        assert!(r.fired(rule) > 0, "{rule}:\n{r}");
    }
    assert_eq!(composites(&opt), composites(&g));
    assert_eq!(
        opt.nodes.len(),
        g.nodes.len(),
        "{}",
        m4c_ir::text::print(&opt)
    );
}

fn reduce_sum(g: &mut Graph, x: m4c_ir::ValueId, axis: usize, name: &str) -> m4c_ir::ValueId {
    let op = Op::ReduceSum {
        axes: vec![axis],
        keep_dims: true,
    };
    g.add_node(op, &[x], name).unwrap()
}

/// LayerNorm as the TorchScript exporter writes it below opset 17
/// (ReduceMean lowered to ReduceSum · 1/n, `Pow(d, 2)`, `d / √v`).
#[test]
fn torchscript_layernorm_is_recognised() {
    let mut rng = Rng(9);
    let mut g = Graph::new("ln");
    let x = input(&mut g, "x", &[4, 16]);
    let inv_n = scalar(&mut g, "inv_n", 1.0 / 16.0);
    let two = scalar(&mut g, "two", 2.0);
    let eps = scalar(&mut g, "eps", 1e-5);
    let w = g.add_const("w", rng.tensor(&[16]));
    let b = g.add_const("b", rng.tensor(&[16]));
    let s = reduce_sum(&mut g, x, 1, "s");
    let mean = g.add_node(Op::Mul, &[s, inv_n], "mean").unwrap();
    let d = g.add_node(Op::Sub, &[x, mean], "d").unwrap();
    let sq = g.add_node(Op::Pow, &[d, two], "sq").unwrap();
    let ss = reduce_sum(&mut g, sq, 1, "ss");
    let var = g.add_node(Op::Mul, &[ss, inv_n], "var").unwrap();
    let ve = g.add_node(Op::Add, &[var, eps], "ve").unwrap();
    let std = g.add_node(Op::Sqrt, &[ve], "std").unwrap();
    let normed = g.add_node(Op::Div, &[d, std], "normed").unwrap();
    let scaled = g.add_node(Op::Mul, &[normed, w], "scaled").unwrap();
    let y = g.add_node(Op::Add, &[scaled, b], "y").unwrap();
    g.outputs.push(y);
    let (opt, r) = check(&g, "recognise-layernorm");
    assert!(r.fired("norm-bias") > 0);
    assert_eq!(opt.nodes.len(), 1, "{}", m4c_ir::text::print(&opt));
    assert_eq!(opt.nodes[0].inputs.len(), 3);
}

/// A mean over a different count than the axis holds is not a mean.
#[test]
fn a_wrong_mean_is_not_a_layernorm() {
    let mut g = Graph::new("ln");
    let x = input(&mut g, "x", &[4, 16]);
    let inv_n = scalar(&mut g, "inv_n", 1.0 / 15.0);
    let eps = scalar(&mut g, "eps", 1e-5);
    let w = g.add_const("w", Rng(2).tensor(&[16]));
    let s = reduce_sum(&mut g, x, 1, "s");
    let mean = g.add_node(Op::Mul, &[s, inv_n], "mean").unwrap();
    let d = g.add_node(Op::Sub, &[x, mean], "d").unwrap();
    let sq = g.add_node(Op::Mul, &[d, d], "sq").unwrap();
    let ss = reduce_sum(&mut g, sq, 1, "ss");
    let var = g.add_node(Op::Mul, &[ss, inv_n], "var").unwrap();
    let ve = g.add_node(Op::Add, &[var, eps], "ve").unwrap();
    let std = g.add_node(Op::Sqrt, &[ve], "std").unwrap();
    let normed = g.add_node(Op::Div, &[d, std], "normed").unwrap();
    let y = g.add_node(Op::Mul, &[normed, w], "y").unwrap();
    g.outputs.push(y);
    let (opt, r) = equivalent(&g);
    assert_eq!(r.fired("recognise-layernorm"), 0);
    assert_eq!(count(&opt, OpKind::Norm), 0);
}

#[test]
fn softmax_without_max_subtraction_is_recognised() {
    let mut g = Graph::new("sm");
    let x = input(&mut g, "x", &[3, 7]);
    let e = g.add_node(Op::Exp, &[x], "e").unwrap();
    let s = reduce_sum(&mut g, e, 1, "s");
    let y = g.add_node(Op::Div, &[e, s], "y").unwrap();
    g.outputs.push(y);
    let (opt, _) = check(&g, "recognise-softmax");
    assert_eq!(composites(&opt), ["Softmax { axis: 1 }/1"]);
    assert_eq!(opt.nodes.len(), 1);
}

/// `x / (1 + exp(−x))` (SiLU spelled out) and `1 / (1 + exp(−x))`.
#[test]
fn spelled_out_silu_and_sigmoid_are_recognised() {
    let mut g = Graph::new("silu");
    let x = input(&mut g, "x", &[3, 7]);
    let m1 = scalar(&mut g, "m1", -1.0);
    let one = scalar(&mut g, "one", 1.0);
    let n = g.add_node(Op::Mul, &[x, m1], "n").unwrap();
    let e = g.add_node(Op::Exp, &[n], "e").unwrap();
    let d = g.add_node(Op::Add, &[one, e], "d").unwrap();
    let silu = g.add_node(Op::Div, &[x, d], "silu").unwrap();
    let sig = g.add_node(Op::Div, &[one, d], "sig").unwrap();
    g.outputs = vec![silu, sig];
    let (opt, r) = check(&g, "recognise-silu");
    assert!(r.fired("recognise-sigmoid") > 0);
    assert_eq!(
        count(&opt, OpKind::Sigmoid),
        1,
        "{}",
        m4c_ir::text::print(&opt)
    );
    assert_eq!(count(&opt, OpKind::Exp), 0);
    assert_eq!(opt.nodes.len(), 2);
}

/// HF's `NewGELUActivation`: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`
/// with `Pow(x, 3)`.
#[test]
fn hf_tanh_gelu_is_recognised() {
    let mut g = Graph::new("gelu");
    let x = input(&mut g, "x", &[4, 6]);
    let half = scalar(&mut g, "half", 0.5);
    let one = scalar(&mut g, "one", 1.0);
    let three = scalar(&mut g, "three", 3.0);
    let c = scalar(&mut g, "c", 0.044_715);
    let k = scalar(&mut g, "k", (2.0 / std::f32::consts::PI).sqrt());
    let hx = g.add_node(Op::Mul, &[half, x], "hx").unwrap();
    let cube = g.add_node(Op::Pow, &[x, three], "cube").unwrap();
    let cx3 = g.add_node(Op::Mul, &[c, cube], "cx3").unwrap();
    let sum = g.add_node(Op::Add, &[x, cx3], "sum").unwrap();
    let arg = g.add_node(Op::Mul, &[k, sum], "arg").unwrap();
    let t = g.add_node(Op::Tanh, &[arg], "t").unwrap();
    let h = g.add_node(Op::Add, &[one, t], "h").unwrap();
    let y = g.add_node(Op::Mul, &[hx, h], "y").unwrap();
    g.outputs.push(y);
    let (opt, _) = check(&g, "recognise-gelu-tanh");
    assert_eq!(composites(&opt), ["Gelu { tanh_approx: true }/1"]);
    assert_eq!(opt.nodes.len(), 1);
}
