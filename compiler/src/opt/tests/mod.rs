//! Every rule, on a small graph built to trigger it, checked by numerical
//! equivalence with the unoptimised graph on random inputs (the reference
//! interpreter is the truth), and checked to have changed the graph.

use m4c_ir::{DType, Graph, Op, OpKind, Tensor, TensorType, ValueId};
use m4c_ops::{run_graph, Value};

use super::{optimise, LoraPolicy, OptOptions, OptReport, Roofline};

mod recognise;

/// Deterministic values in [-1, 1) (xorshift).
struct Rng(u64);

impl Rng {
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }
    fn tensor(&mut self, shape: &[usize]) -> Tensor {
        Tensor::from_f32(shape, &self.vec(shape.iter().product()))
    }
}

fn input(g: &mut Graph, name: &str, shape: &[usize]) -> ValueId {
    g.add_input(name, TensorType::fixed(DType::F32, shape))
}

fn scalar(g: &mut Graph, name: &str, v: f32) -> ValueId {
    g.add_const(name, Tensor::from_f32(&[], &[v]))
}

/// Optimises `g`, checks the outputs ([`equivalent`]) and that `rule` fired.
fn check(g: &Graph, rule: &str) -> (Graph, OptReport) {
    let (opt, report) = equivalent(g);
    assert!(report.fired(rule) > 0, "{rule} did not fire:\n{report}");
    (opt, report)
}

/// Optimises `g` and compares outputs on three random input sets.
fn equivalent(g: &Graph) -> (Graph, OptReport) {
    g.verify().unwrap();
    let opts = OptOptions {
        lora: LoraPolicy::Fold,
        ..Default::default()
    };
    let (opt, report) = optimise(g, &opts, &Roofline::cpu()).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..3 {
        let feeds: Vec<Value> = g
            .inputs
            .iter()
            .map(|&i| {
                let shape = g.value(i).ty.static_shape().unwrap();
                Value::from_tensor(&rng.tensor(&shape)).unwrap()
            })
            .collect();
        let want = run_graph(g, &feeds).unwrap();
        let got = run_graph(&opt, &feeds).unwrap();
        for (a, b) in got.iter().zip(&want) {
            let (abs, _) = m4c_ops::max_abs_rel_error(a, b).unwrap();
            assert!(abs <= 1e-5, "{}: max abs error {abs}", g.name);
        }
    }
    (opt, report)
}

fn count(g: &Graph, kind: OpKind) -> usize {
    g.nodes.iter().filter(|n| n.op.kind() == kind).count()
}

const MM: Op = Op::MatMul {
    trans_a: false,
    trans_b: false,
};

#[test]
fn transposes_fold_into_matmul_flags() {
    let mut g = Graph::new("t");
    let x = input(&mut g, "x", &[2, 3, 4]);
    let y = input(&mut g, "y", &[2, 5, 4]);
    let t = g
        .add_node(
            Op::Transpose {
                perm: vec![0, 2, 1],
            },
            &[y],
            "t",
        )
        .unwrap();
    let z = g.add_node(MM, &[x, t], "z").unwrap();
    g.outputs.push(z);
    let (opt, _) = check(&g, "transpose-into-matmul");
    assert_eq!(count(&opt, OpKind::Transpose), 0);
}

#[test]
fn transposes_compose_and_reshapes_collapse() {
    let mut g = Graph::new("t");
    let x = input(&mut g, "x", &[2, 3, 4]);
    let a = g
        .add_node(
            Op::Transpose {
                perm: vec![0, 2, 1],
            },
            &[x],
            "a",
        )
        .unwrap();
    let b = g
        .add_node(
            Op::Transpose {
                perm: vec![1, 0, 2],
            },
            &[a],
            "b",
        )
        .unwrap();
    let c = g
        .add_node(Op::Reshape { shape: vec![6, 4] }, &[b], "c")
        .unwrap();
    let d = g
        .add_node(Op::Reshape { shape: vec![24] }, &[c], "d")
        .unwrap();
    let e = g.add_node(Op::Exp, &[d], "e").unwrap();
    g.outputs.push(e);
    let (opt, r) = check(&g, "compose-transposes");
    assert!(r.fired("compose-reshapes") > 0);
    assert_eq!(count(&opt, OpKind::Transpose), 1);
    assert_eq!(count(&opt, OpKind::Reshape), 1);
}

#[test]
fn lora_branch_folds_into_the_weight() {
    let mut rng = Rng(7);
    let mut g = Graph::new("lora");
    let x = input(&mut g, "x", &[3, 8]);
    let w = g.add_const("w", rng.tensor(&[8, 6]));
    let a = g.add_const("a", rng.tensor(&[8, 2]));
    let b = g.add_const("b", rng.tensor(&[2, 6]));
    let s = scalar(&mut g, "s", 0.5);
    let base = g.add_node(MM, &[x, w], "base").unwrap();
    let xa = g.add_node(MM, &[x, a], "xa").unwrap();
    let xab = g.add_node(MM, &[xa, b], "xab").unwrap();
    let scaled = g.add_node(Op::Mul, &[s, xab], "scaled").unwrap();
    let y = g.add_node(Op::Add, &[scaled, base], "y").unwrap();
    g.outputs.push(y);
    let (opt, r) = check(&g, "lora-fold");
    assert_eq!(count(&opt, OpKind::MatMul), 1);
    assert!(r.lora.len() == 1 && r.lora[0].folded);
}

#[test]
fn matmuls_sharing_an_input_fuse() {
    let mut rng = Rng(11);
    let mut g = Graph::new("qkv");
    let x = input(&mut g, "x", &[4, 8]);
    for name in ["q", "k", "v"] {
        let w = g.add_const(format!("w{name}"), rng.tensor(&[8, 24]));
        let y = g.add_node(MM, &[x, w], name).unwrap();
        g.outputs.push(y);
    }
    let (opt, _) = check(&g, "fuse-horizontal-matmul");
    assert_eq!(count(&opt, OpKind::MatMul), 1);
    assert_eq!(count(&opt, OpKind::Slice), 3);
}

#[test]
fn matmuls_on_dequantised_weights_stay_apart() {
    // Each weight is `(Cast(q) − zp) · s` with q int8, as DequantizeLinear
    // is imported: fusing them would dequantise and concatenate the
    // weights on every run instead of leaving the int8 kernels their B.
    let mut g = Graph::new("qkv8");
    let x = input(&mut g, "x", &[4, 8]);
    let zp = scalar(&mut g, "zp", 1.0);
    let s = scalar(&mut g, "s", 0.05);
    for (i, name) in ["q", "k", "v"].into_iter().enumerate() {
        let values: Vec<i8> = (0..8 * 24)
            .map(|j| ((j * 7 + i * 13) % 255) as i8)
            .collect();
        let q = g.add_const(format!("w{name}_q"), Tensor::from_i8(&[8, 24], &values));
        let f = g
            .add_node(Op::Cast { to: DType::F32 }, &[q], format!("w{name}_f"))
            .unwrap();
        let centred = g.add_node(Op::Sub, &[f, zp], format!("w{name}_c")).unwrap();
        let w = g
            .add_node(Op::Mul, &[centred, s], format!("w{name}"))
            .unwrap();
        let y = g.add_node(MM, &[x, w], name).unwrap();
        g.outputs.push(y);
    }
    let (opt, report) = equivalent(&g);
    assert_eq!(report.fired("fuse-horizontal-matmul"), 0, "{report}");
    assert_eq!(count(&opt, OpKind::MatMul), 3);
    assert_eq!(count(&opt, OpKind::Concat), 0);
}

#[test]
fn requantising_moved_dequantised_values_moves_the_integers() {
    // DQ(Q(x)) → Reshape → Transpose → Q → DQ, one scale and zero point
    // (onnxruntime's QDQ around data movement): the second pair goes, the
    // Reshape and Transpose move the int8 tensor.
    let mut g = Graph::new("qdq_moves");
    let x = input(&mut g, "x", &[2, 12]);
    let s = scalar(&mut g, "s", 0.02);
    let z = g.add_const("z", Tensor::from_i8(&[], &[-3]));
    let zf = scalar(&mut g, "zf", -3.0);
    let dequantise = |g: &mut Graph, q: ValueId, name: &str| {
        let f = g
            .add_node(Op::Cast { to: DType::F32 }, &[q], format!("{name}_f"))
            .unwrap();
        let c = g.add_node(Op::Sub, &[f, zf], format!("{name}_c")).unwrap();
        g.add_node(Op::Mul, &[c, s], name).unwrap()
    };
    let q = g
        .add_node(Op::Quantize { to: DType::I8 }, &[x, s, z], "q")
        .unwrap();
    let d = dequantise(&mut g, q, "d");
    let r = g
        .add_node(
            Op::Reshape {
                shape: vec![2, 3, 4],
            },
            &[d],
            "r",
        )
        .unwrap();
    let t = g
        .add_node(
            Op::Transpose {
                perm: vec![0, 2, 1],
            },
            &[r],
            "t",
        )
        .unwrap();
    let q2 = g
        .add_node(Op::Quantize { to: DType::I8 }, &[t, s, z], "q2")
        .unwrap();
    let y = dequantise(&mut g, q2, "y");
    g.outputs.push(y);
    let (opt, _) = check(&g, "requantise-dequantised");
    assert_eq!(count(&opt, OpKind::Quantize), 1);
    let moved = opt
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Transpose { .. }))
        .all(|n| opt.value(n.inputs[0]).ty.dtype == DType::I8);
    assert!(moved, "the transpose still moves floats");
}

#[test]
fn quantising_before_moving_moves_the_integers() {
    // MatMul → Reshape → Transpose → Q (a QDQ transformer's head split):
    // the Quantize moves to the MatMul's output and the data movement
    // carries int8.
    let mut rng = Rng(11);
    let mut g = Graph::new("quantise_moves");
    let x = input(&mut g, "x", &[4, 6]);
    let w = g.add_const("w", rng.tensor(&[6, 12]));
    let y = g.add_node(MM, &[x, w], "y").unwrap();
    let r = g
        .add_node(
            Op::Reshape {
                shape: vec![4, 3, 4],
            },
            &[y],
            "r",
        )
        .unwrap();
    let t = g
        .add_node(
            Op::Transpose {
                perm: vec![1, 0, 2],
            },
            &[r],
            "t",
        )
        .unwrap();
    let s = scalar(&mut g, "s", 0.05);
    let z = g.add_const("z", Tensor::from_u8(&[], &[128]));
    let q = g
        .add_node(Op::Quantize { to: DType::U8 }, &[t, s, z], "q")
        .unwrap();
    g.outputs.push(q);
    let (opt, _) = check(&g, "quantise-before-moving");
    assert_eq!(count(&opt, OpKind::Quantize), 1);
    let moved = opt
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Transpose { .. } | Op::Reshape { .. }))
        .all(|n| opt.value(n.inputs[0]).ty.dtype == DType::U8);
    assert!(
        moved,
        "the data movement still moves floats: {}",
        m4c_ir::text::print(&opt)
    );
}

#[test]
fn decomposed_rmsnorm_is_recognised() {
    let mut rng = Rng(3);
    let mut g = Graph::new("rms");
    let x = input(&mut g, "x", &[2, 8]);
    let two = scalar(&mut g, "two", 2.0);
    let inv_n = scalar(&mut g, "inv_n", 0.125);
    let eps = scalar(&mut g, "eps", 1e-6);
    let one = scalar(&mut g, "one", 1.0);
    let w = g.add_const("w", rng.tensor(&[8]));
    let sq = g.add_node(Op::Pow, &[x, two], "sq").unwrap();
    let sum = g
        .add_node(
            Op::ReduceSum {
                axes: vec![1],
                keep_dims: true,
            },
            &[sq],
            "sum",
        )
        .unwrap();
    let mean = g.add_node(Op::Mul, &[sum, inv_n], "mean").unwrap();
    let plus = g.add_node(Op::Add, &[mean, eps], "plus").unwrap();
    let root = g.add_node(Op::Sqrt, &[plus], "root").unwrap();
    let inv = g.add_node(Op::Div, &[one, root], "inv").unwrap();
    let normed = g.add_node(Op::Mul, &[x, inv], "normed").unwrap();
    let y = g.add_node(Op::Mul, &[w, normed], "y").unwrap();
    g.outputs.push(y);
    let (opt, _) = check(&g, "recognise-rmsnorm");
    assert_eq!(opt.nodes.len(), 1);
    assert_eq!(count(&opt, OpKind::Norm), 1);
}

#[test]
fn decomposed_gelu_is_recognised() {
    let mut g = Graph::new("gelu");
    let x = input(&mut g, "x", &[4, 5]);
    let sqrt2 = scalar(&mut g, "sqrt2", std::f32::consts::SQRT_2);
    let one = scalar(&mut g, "one", 1.0);
    let half = scalar(&mut g, "half", 0.5);
    let d = g.add_node(Op::Div, &[x, sqrt2], "d").unwrap();
    let e = g.add_node(Op::Erf, &[d], "e").unwrap();
    let a = g.add_node(Op::Add, &[one, e], "a").unwrap();
    let h = g.add_node(Op::Mul, &[half, a], "h").unwrap();
    let y = g.add_node(Op::Mul, &[x, h], "y").unwrap();
    g.outputs.push(y);
    let (opt, _) = check(&g, "recognise-gelu");
    assert_eq!(opt.nodes.len(), 1);
    assert_eq!(count(&opt, OpKind::Gelu), 1);
}

/// A LoRA branch on a biased Linear, the branch on either side.
#[test]
fn lora_branch_on_a_biased_linear_folds() {
    for branch_first in [false, true] {
        let mut rng = Rng(13);
        let mut g = Graph::new("lora-bias");
        let x = input(&mut g, "x", &[3, 8]);
        let w = g.add_const("w", rng.tensor(&[8, 6]));
        let bias = g.add_const("bias", rng.tensor(&[6]));
        let a = g.add_const("a", rng.tensor(&[8, 2]));
        let b = g.add_const("b", rng.tensor(&[2, 6]));
        let s = scalar(&mut g, "s", 0.5);
        let base = g.add_node(MM, &[x, w], "base").unwrap();
        let biased = g.add_node(Op::Add, &[base, bias], "biased").unwrap();
        let xa = g.add_node(MM, &[x, a], "xa").unwrap();
        let xab = g.add_node(MM, &[xa, b], "xab").unwrap();
        let scaled = g.add_node(Op::Mul, &[xab, s], "scaled").unwrap();
        let ins = if branch_first {
            [scaled, biased]
        } else {
            [biased, scaled]
        };
        let y = g.add_node(Op::Add, &ins, "y").unwrap();
        g.outputs.push(y);
        let (opt, r) = check(&g, "lora-fold");
        assert_eq!(
            count(&opt, OpKind::MatMul),
            1,
            "{}",
            m4c_ir::text::print(&opt)
        );
        assert_eq!(count(&opt, OpKind::Add), 1);
        assert!(r.lora.len() == 1 && r.lora[0].folded, "{r}");
    }
}
