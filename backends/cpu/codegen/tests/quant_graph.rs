//! Quantised graphs, built as the ONNX importer writes them (dequantisation
//! as Cast → Sub → Mul, integer products as an i32 MatMul, MatMulNBits as a
//! dequantised int4 constant), compiled for AVX2 and AVX-512 (VNNI where
//! the host has it) and compared with the reference interpreter: exactly
//! where the arithmetic is integer, within one quantisation step where the
//! interpreter sums dequantised floats, within the f32 tolerance for f32
//! outputs.

use m4c_cpu_codegen::{compile_graph, CompileOptions, Target};
use m4c_cpu_device::Step;
use m4c_ir::op::{ConvAttrs, SliceAxis};
use m4c_ir::{DType, Graph, Op, Tensor, TensorType, ValueId};
use m4c_ops::{compare, run_graph, Value};
use proptest::prelude::*;

/// Deterministic values in `[lo, hi)`.
fn uniform(len: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let unit =
                (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
            lo + unit * (hi - lo)
        })
        .collect()
}

/// int8 (`signed`) or uint8 values, the full range.
fn quantised(shape: &[usize], signed: bool, seed: u64) -> Tensor {
    let n = shape.iter().product();
    if signed {
        let v: Vec<i8> = uniform(n, seed, -128.0, 128.0)
            .iter()
            .map(|&x| x.floor() as i8)
            .collect();
        Tensor::from_i8(shape, &v)
    } else {
        let v: Vec<u8> = uniform(n, seed, 0.0, 256.0)
            .iter()
            .map(|&x| x.floor() as u8)
            .collect();
        Tensor::from_u8(shape, &v)
    }
}

/// One value of type int8 or uint8.
fn scalar_q(value: i32, signed: bool) -> Tensor {
    if signed {
        Tensor::from_i8(&[], &[value as i8])
    } else {
        Tensor::from_u8(&[], &[value as u8])
    }
}

/// The targets the graphs are compiled for (those this host runs).
fn targets() -> Vec<Target> {
    [Some("x86_64-avx2"), Some("x86_64-avx512"), None]
        .into_iter()
        .map(|t| Target::parse(t, None).unwrap())
        .filter(|t| t.check_runs_on_host().is_ok())
        .collect()
}

/// How compiled results must agree with the interpreter's.
#[derive(Clone, Copy, Debug)]
enum Agree {
    Exactly,
    /// Integer outputs within this many steps.
    Steps(f64),
    /// f32 outputs within `atol + rtol·|want|`.
    Float(f64, f64),
}

struct Case {
    graph: Graph,
    inputs: Vec<Tensor>,
}

impl Case {
    fn new() -> Self {
        Self {
            graph: Graph::new("case"),
            inputs: Vec::new(),
        }
    }

    fn input(&mut self, t: Tensor) -> ValueId {
        let name = format!("in{}", self.inputs.len());
        let id = self
            .graph
            .add_input(name, TensorType::fixed(t.dtype, &t.shape));
        self.inputs.push(t);
        id
    }

    fn constant(&mut self, t: Tensor) -> ValueId {
        let name = format!("c{}", self.graph.values.len());
        self.graph.add_const(name, t)
    }

    fn node(&mut self, op: Op, inputs: &[ValueId]) -> ValueId {
        let name = format!("v{}", self.graph.values.len());
        self.graph.add_node(op, inputs, name).unwrap()
    }

    fn cast(&mut self, x: ValueId, to: DType) -> ValueId {
        self.node(Op::Cast { to }, &[x])
    }

    /// Compiles with `out` as the output on every target and checks the
    /// agreement, and that a kernel named `kernel` (if any) ran.
    fn check(mut self, out: ValueId, agree: Agree, kernel: Option<&str>) {
        self.graph.outputs = vec![out];
        let values: Vec<Value> = self
            .inputs
            .iter()
            .map(|t| Value::from_tensor(t).unwrap())
            .collect();
        let want = run_graph(&self.graph, &values).unwrap().remove(0);
        for target in targets() {
            let options = CompileOptions {
                target: target.clone(),
                threads: 2,
            };
            let mut compiled = compile_graph(&self.graph, &options)
                .unwrap_or_else(|e| panic!("{}: {e}", target.name()));
            if let Some(kernel) = kernel {
                let ran = compiled.plan().steps.iter().any(|s| match s {
                    Step::Kernel { symbol, .. } => symbol.contains(kernel),
                    _ => false,
                });
                assert!(ran, "{}: no {kernel} kernel in the plan", target.name());
            }
            let got = Value::from_tensor(&compiled.run(&self.inputs).unwrap()[0]).unwrap();
            assert_eq!(got.dtype(), want.dtype());
            assert_eq!(got.shape(), want.shape());
            let (rtol, atol) = match agree {
                Agree::Exactly => (0.0, 0.0),
                Agree::Steps(s) => (0.0, s),
                Agree::Float(r, a) => (r, a),
            };
            let c = compare(&got, &want, rtol, atol);
            assert!(c.passed(), "{}: {}", target.name(), c.summary());
        }
    }
}

const MATMUL: Op = Op::MatMul {
    trans_a: false,
    trans_b: false,
};

/// The shape of one int8 case: `[batch?, m, k] × [k, n]`.
#[derive(Clone, Copy, Debug)]
struct Shape {
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
}

impl Shape {
    fn a(&self) -> Vec<usize> {
        if self.batch > 1 {
            vec![self.batch, self.m, self.k]
        } else {
            vec![self.m, self.k]
        }
    }
}

/// QLinearMatMul as imported: `Quantize(Cast_f32((Cast_i32(a) − za) ·
/// (Cast_i32(W) − zw)) · multiplier, 1, zy)`; exact.
fn qlinear_matmul(s: Shape, a_signed: bool, w_signed: bool, per_column: bool, seed: u64) {
    let mut c = Case::new();
    let a = c.input(quantised(&s.a(), a_signed, seed));
    let za = c.constant(Tensor::from_i32(&[], &[if a_signed { -3 } else { 131 }]));
    let a32 = c.cast(a, DType::I32);
    let a_centred = c.node(Op::Sub, &[a32, za]);
    // Weights whose centred values fit int8.
    let w = if w_signed {
        let v: Vec<i8> = uniform(s.k * s.n, seed + 1, -120.0, 120.0)
            .iter()
            .map(|&x| x as i8)
            .collect();
        Tensor::from_i8(&[s.k, s.n], &v)
    } else {
        quantised(&[s.k, s.n], false, seed + 1)
    };
    let w = c.constant(w);
    let zw: Vec<i32> = (0..if per_column { s.n } else { 1 })
        // uint8 weights centred on 127 range over -127..=128: the kernel
        // stores those columns negated.
        .map(|j| {
            if w_signed {
                (j % 5) as i32 - 2
            } else {
                127 + (j % 2) as i32
            }
        })
        .collect();
    let zw_shape: Vec<usize> = if per_column { vec![1, s.n] } else { vec![] };
    let zw = c.constant(Tensor::from_i32(&zw_shape, &zw));
    let w32 = c.cast(w, DType::I32);
    let w_centred = c.node(Op::Sub, &[w32, zw]);
    let acc = c.node(MATMUL, &[a_centred, w_centred]);
    let accf = c.cast(acc, DType::F32);
    let multiplier: Vec<f32> = uniform(if per_column { s.n } else { 1 }, seed + 2, 1e-4, 3e-3);
    let multiplier = c.constant(Tensor::from_f32(&zw_shape, &multiplier));
    let y = c.node(Op::Mul, &[accf, multiplier]);
    let one = c.constant(Tensor::from_f32(&[], &[1.0]));
    let zy = c.constant(scalar_q(if a_signed { 5 } else { 120 }, a_signed));
    let out = c.node(
        Op::Quantize {
            to: if a_signed { DType::I8 } else { DType::U8 },
        },
        &[y, one, zy],
    );
    c.check(out, Agree::Exactly, Some("q8gemm"));
}

/// MatMulInteger as imported: the i32 product of the centred operands,
/// with the weights' centring folded into an i32 constant (stored `[n, k]`
/// with `trans_b`, as QGemm's transB writes it); exact.
fn matmul_integer(s: Shape, a_signed: bool, trans_b: bool, seed: u64) {
    let mut c = Case::new();
    let a = c.input(quantised(&s.a(), a_signed, seed));
    let a32 = c.cast(a, DType::I32);
    let w: Vec<i32> = uniform(s.k * s.n, seed + 1, -128.0, 128.0)
        .iter()
        .map(|&x| x.floor() as i32)
        .collect();
    let shape = if trans_b { [s.n, s.k] } else { [s.k, s.n] };
    let w = c.constant(Tensor::from_i32(&shape, &w));
    let out = c.node(
        Op::MatMul {
            trans_a: false,
            trans_b,
        },
        &[a32, w],
    );
    c.check(out, Agree::Exactly, Some("q8gemm"));
}

/// QDQ as imported: dequantised activation and weights, an f32 MatMul,
/// a bias, and the Quantize of the result: the interpreter sums floats, so
/// results may differ by one step where a value lies at a rounding edge.
fn qdq_matmul(s: Shape, a_signed: bool, quantize_output: bool, seed: u64) {
    let mut c = Case::new();
    let a = c.input(quantised(&s.a(), a_signed, seed));
    let af = c.cast(a, DType::F32);
    let za = c.constant(Tensor::from_f32(&[], &[if a_signed { 0.0 } else { 128.0 }]));
    let a_c = c.node(Op::Sub, &[af, za]);
    let sa = c.constant(Tensor::from_f32(&[], &[0.02]));
    let a_d = c.node(Op::Mul, &[a_c, sa]);
    let w = c.constant(quantised(&[s.k, s.n], true, seed + 1));
    let wf = c.cast(w, DType::F32);
    let sw = c.constant(Tensor::from_f32(
        &[1, s.n],
        &uniform(s.n, seed + 2, 1e-3, 1e-2),
    ));
    let w_d = c.node(Op::Mul, &[wf, sw]);
    let y = c.node(MATMUL, &[a_d, w_d]);
    let bias = c.constant(Tensor::from_f32(&[s.n], &uniform(s.n, seed + 3, -1.0, 1.0)));
    let y = c.node(Op::Add, &[y, bias]);
    if quantize_output {
        let sy = c.constant(Tensor::from_f32(&[], &[0.05]));
        let zy = c.constant(scalar_q(if a_signed { 0 } else { 128 }, a_signed));
        let out = c.node(
            Op::Quantize {
                to: if a_signed { DType::I8 } else { DType::U8 },
            },
            &[y, sy, zy],
        );
        c.check(out, Agree::Steps(1.0), Some("q8gemm"));
    } else {
        c.check(y, Agree::Float(1e-4, 1e-4), Some("q8gemm"));
    }
}

/// The shape and number formats of one int8 attention case.
#[derive(Clone, Copy, Debug)]
struct AttentionCase {
    heads: usize,
    m: usize,
    k: usize,
    n1: usize,
    n2: usize,
    /// K stored `[heads, n1, k]` (the scores' MatMul transposes it).
    trans_b: bool,
    /// Signedness of q, k, v and the quantised probabilities.
    signed: [bool; 4],
    /// The scores and the scaled scores each quantised and dequantised
    /// again (onnxruntime's `quantize_static` QDQ form).
    qdq_scores: bool,
    seed: u64,
}

/// `(Cast_f32(x) − z) · s` over a run-time quantised input of `shape`;
/// the input's zero point is drawn from the seed.
fn dequantised(c: &mut Case, shape: &[usize], signed: bool, scale: f32, seed: u64) -> ValueId {
    let x = c.input(quantised(shape, signed, seed));
    let xf = c.cast(x, DType::F32);
    let zero = (seed % 61) as f32 - if signed { 30.0 } else { -100.0 };
    let z = c.constant(Tensor::from_f32(&[], &[zero]));
    let centred = c.node(Op::Sub, &[xf, z]);
    let s = c.constant(Tensor::from_f32(&[], &[scale]));
    c.node(Op::Mul, &[centred, s])
}

/// Attention over dequantised int8/uint8 q, k, v with its probabilities
/// quantised and dequantised (`m4c quantize`'s QDQ form): one int8
/// attention kernel. The scales are powers of two, so the interpreter's
/// f32 sums of dequantised products are exact and the scores agree bit for
/// bit; the softmaxes differ in their last bits, which can move a
/// probability across a rounding boundary: the output may differ by one
/// probability step times the largest `|v − zv|·sv` (and f32 rounding).
fn qdq_attention(a: AttentionCase) {
    let mut c = Case::new();
    let (h, m, k, n1, n2) = (a.heads, a.m, a.k, a.n1, a.n2);
    let q = dequantised(&mut c, &[h, m, k], a.signed[0], 1.0 / 64.0, a.seed);
    let key_shape = if a.trans_b { [h, n1, k] } else { [h, k, n1] };
    let key = dequantised(&mut c, &key_shape, a.signed[1], 1.0 / 128.0, a.seed + 1);
    let v = dequantised(&mut c, &[h, n1, n2], a.signed[2], 1.0 / 32.0, a.seed + 2);
    let scores = c.node(
        Op::MatMul {
            trans_a: false,
            trans_b: a.trans_b,
        },
        &[q, key],
    );
    // A Quantize → DQ pair (uint8, zero point 128) at `step`.
    let fake_quantise = |c: &mut Case, x: ValueId, step: f32| {
        let s = c.constant(Tensor::from_f32(&[], &[step]));
        let z = c.constant(scalar_q(128, false));
        let q = c.node(Op::Quantize { to: DType::U8 }, &[x, s, z]);
        let qf = c.cast(q, DType::F32);
        let zf = c.constant(Tensor::from_f32(&[], &[128.0]));
        let centred = c.node(Op::Sub, &[qf, zf]);
        c.node(Op::Mul, &[centred, s])
    };
    let scores = if a.qdq_scores {
        fake_quantise(&mut c, scores, 1.0 / 4.0)
    } else {
        scores
    };
    let scale = c.constant(Tensor::from_f32(&[], &[0.125]));
    let mut scaled = c.node(Op::Mul, &[scores, scale]);
    if a.qdq_scores {
        scaled = fake_quantise(&mut c, scaled, 1.0 / 32.0);
    }
    let p = c.node(Op::Softmax { axis: 2 }, &[scaled]);
    let (to, zero) = if a.signed[3] {
        (DType::I8, -128)
    } else {
        (DType::U8, 0)
    };
    let step = 1.0 / 255.0;
    let sp = c.constant(Tensor::from_f32(&[], &[step]));
    let zp = c.constant(scalar_q(zero, a.signed[3]));
    let pq = c.node(Op::Quantize { to }, &[p, sp, zp]);
    let pf = c.cast(pq, DType::F32);
    let zpf = c.constant(Tensor::from_f32(&[], &[zero as f32]));
    let pc = c.node(Op::Sub, &[pf, zpf]);
    let pd = c.node(Op::Mul, &[pc, sp]);
    let out = c.node(MATMUL, &[pd, v]);
    let flip = f64::from(step) * 255.0 / 32.0;
    c.check(out, Agree::Float(1e-5, flip + 1e-5), Some("attention8"));
}

#[test]
fn int8_attention_at_edges() {
    // One head of ViT-B's shape, ragged K (not whole dot groups) and
    // blocks with a remainder, every signedness.
    let cases = [
        (1, 197, 64, 197, 64, false),
        (2, 5, 3, 7, 9, true),
        (3, 33, 17, 65, 1, false),
        (1, 1, 1, 1, 1, true),
    ];
    for (i, (heads, m, k, n1, n2, trans_b)) in cases.into_iter().enumerate() {
        for bits in [0b0000u8, 0b1111, 0b0101, 0b1010] {
            let signed = [0, 1, 2, 3].map(|b| bits >> b & 1 == 1);
            let seed = 40 + i as u64 * 7 + u64::from(bits);
            qdq_attention(AttentionCase {
                heads,
                m,
                k,
                n1,
                n2,
                trans_b,
                signed,
                qdq_scores: bits == 0b0101,
                seed,
            });
        }
    }
}

/// MatMulNBits' weight as imported: `(Reshape(Cast(q) − zp) · s)[:, :k]`,
/// `[n, k]`.
fn int4_weight(
    c: &mut Case,
    (n, k): (usize, usize),
    (block, bits): (usize, u8),
    zero_points: bool,
    seed: u64,
) -> ValueId {
    let blocks = k.div_ceil(block);
    let levels = f32::from(1u16 << bits);
    let values = uniform(n * blocks * block, seed + 1, 0.0, levels);
    let (dtype, bytes): (DType, Vec<u8>) = match bits {
        8 => (DType::U8, values.iter().map(|&v| v as u8).collect()),
        _ => (
            DType::U4,
            values
                .chunks(2)
                .map(|p| p[0] as u8 | ((p[1] as u8) << 4))
                .collect(),
        ),
    };
    let q = c.constant(Tensor::from_bytes(dtype, &[n, blocks, block], bytes));
    let qf = c.cast(q, DType::F32);
    let zp = if zero_points {
        let z: Vec<f32> = uniform(n * blocks, seed + 2, 0.0, levels)
            .iter()
            .map(|v| v.floor())
            .collect();
        Tensor::from_f32(&[n, blocks, 1], &z)
    } else {
        Tensor::from_f32(&[], &[8.0])
    };
    let zp = c.constant(zp);
    let centred = c.node(Op::Sub, &[qf, zp]);
    let scales = c.constant(Tensor::from_f32(
        &[n, blocks, 1],
        &uniform(n * blocks, seed + 3, 0.01, 0.1),
    ));
    let w = c.node(Op::Mul, &[centred, scales]);
    let w = c.node(
        Op::Reshape {
            shape: vec![n, blocks * block],
        },
        &[w],
    );
    if blocks * block == k {
        return w;
    }
    let axis = |len| SliceAxis {
        start: 0,
        step: 1,
        len,
    };
    c.node(
        Op::Slice {
            axes: vec![axis(n), axis(k)],
        },
        &[w],
    )
}

/// MatMulNBits as imported (`block` size and bits, 4 or 8): `x · Wᵀ`; with `fused`, two weights
/// concatenated along the columns first (the optimiser's fusion of
/// projections reading the same x), one with zero points, one without.
fn matmul_nbits(
    m: usize,
    k: usize,
    n: usize,
    block: (usize, u8),
    zero_points: bool,
    fused: bool,
    seed: u64,
) {
    let mut c = Case::new();
    let x = c.input(Tensor::from_f32(&[m, k], &uniform(m * k, seed, -1.0, 1.0)));
    let w = int4_weight(&mut c, (n, k), block, zero_points, seed);
    let w = if fused {
        let other = int4_weight(&mut c, (n + 3, k), block, !zero_points, seed + 10);
        c.node(Op::Concat { axis: 0 }, &[w, other])
    } else {
        w
    };
    let out = c.node(
        Op::MatMul {
            trans_a: false,
            trans_b: true,
        },
        &[x, w],
    );
    c.check(out, Agree::Float(1e-4, 1e-5), Some("q4gemm"));
}

/// Blocked int4 QDQ as imported: `x · (Reshape(Cast(q) · s))[:k]` with q
/// int4 `[blocks, block, n]` (blocks along K), which the kernel takes
/// rearranged into its column-major blocks.
fn qdq_int4(m: usize, k: usize, n: usize, block: usize, seed: u64) {
    let blocks = k.div_ceil(block);
    let mut c = Case::new();
    let x = c.input(Tensor::from_f32(&[m, k], &uniform(m * k, seed, -1.0, 1.0)));
    let bytes: Vec<u8> = uniform(blocks * block * n / 2 + 1, seed + 1, 0.0, 256.0)
        .iter()
        .map(|&v| v as u8)
        .take((blocks * block * n).div_ceil(2))
        .collect();
    let q = c.constant(Tensor::from_bytes(DType::I4, &[blocks, block, n], bytes));
    let qf = c.cast(q, DType::F32);
    let scales = c.constant(Tensor::from_f32(
        &[blocks, 1, n],
        &uniform(blocks * n, seed + 2, 0.01, 0.1),
    ));
    let w = c.node(Op::Mul, &[qf, scales]);
    let mut w = c.node(
        Op::Reshape {
            shape: vec![blocks * block, n],
        },
        &[w],
    );
    if blocks * block != k {
        let axis = |len| SliceAxis {
            start: 0,
            step: 1,
            len,
        };
        w = c.node(
            Op::Slice {
                axes: vec![axis(k), axis(n)],
            },
            &[w],
        );
    }
    let out = c.node(MATMUL, &[x, w]);
    c.check(out, Agree::Float(1e-4, 1e-5), Some("q4gemm"));
}

/// Dynamic activation quantisation (DynamicQuantizeLinear's Quantize with
/// a run-time scale and zero point) feeding dequantisation: the generic
/// Quantize and uint8 elementwise kernels; exact.
fn dynamic_quantize(shape: &[usize], signed: bool, seed: u64) {
    let mut c = Case::new();
    let n: usize = shape.iter().product();
    let x = c.input(Tensor::from_f32(shape, &uniform(n, seed, -30.0, 30.0)));
    let scale = c.input(Tensor::from_f32(&[], &[0.17]));
    let zp = c.input(scalar_q(if signed { -7 } else { 121 }, signed));
    let to = if signed { DType::I8 } else { DType::U8 };
    let q = c.node(Op::Quantize { to }, &[x, scale, zp]);
    // Some uint8/int8 arithmetic on the quantised values, then back to f32.
    let two = c.constant(scalar_q(2, signed));
    let halved = c.node(Op::Div, &[q, two]);
    let low = c.node(Op::Min, &[q, halved]);
    let qf = c.cast(low, DType::F32);
    let zpf = c.cast(zp, DType::F32);
    let centred = c.node(Op::Sub, &[qf, zpf]);
    let out = c.node(Op::Mul, &[centred, scale]);
    c.check(out, Agree::Exactly, None);
}

/// `quantize_dynamic`'s MatMulInteger as imported: the activation
/// quantised with a run-time scale and zero point, the i32 product of the
/// centred operands, Cast f32 times the run-time `scale_x · scale_w` (per
/// column when `per_column`), plus a bias: the same f32 operations as the
/// interpreter, so exact.
fn dynamic_matmul_integer(s: Shape, per_column: bool, seed: u64) {
    let mut c = Case::new();
    let x = c.input(Tensor::from_f32(
        &s.a(),
        &uniform(s.batch * s.m * s.k, seed, -4.0, 4.0),
    ));
    let sx = c.input(Tensor::from_f32(&[], &[0.04]));
    let zx = c.input(scalar_q(119, false));
    let xq = c.node(Op::Quantize { to: DType::U8 }, &[x, sx, zx]);
    let x32 = c.cast(xq, DType::I32);
    let zx32 = c.cast(zx, DType::I32);
    let xc = c.node(Op::Sub, &[x32, zx32]);
    let w = c.constant(quantised(&[s.k, s.n], true, seed + 1));
    let w32 = c.cast(w, DType::I32);
    let acc = c.node(MATMUL, &[xc, w32]);
    let accf = c.cast(acc, DType::F32);
    let sw_shape: Vec<usize> = if per_column { vec![s.n] } else { vec![] };
    let sw = uniform(if per_column { s.n } else { 1 }, seed + 2, 1e-3, 1e-2);
    let sw = c.constant(Tensor::from_f32(&sw_shape, &sw));
    let factor = c.node(Op::Mul, &[sx, sw]);
    let y = c.node(Op::Mul, &[accf, factor]);
    let bias = c.constant(Tensor::from_f32(&[s.n], &uniform(s.n, seed + 3, -1.0, 1.0)));
    let out = c.node(Op::Add, &[y, bias]);
    c.check(out, Agree::Exactly, Some("q8gemm"));
}

/// An i32 MatMul of two run-time operands (an attention's QLinearMatMul):
/// the generic integer kernel, wrapping like the interpreter; exact.
fn integer_matmul(
    batch: (usize, usize),
    (m, k, n): (usize, usize, usize),
    trans: (bool, bool),
    seed: u64,
) {
    let mut c = Case::new();
    let ints = |shape: &[usize], seed| {
        let v: Vec<i32> = uniform(shape.iter().product(), seed, -300.0, 300.0)
            .iter()
            .map(|&x| x as i32)
            .collect();
        Tensor::from_i32(shape, &v)
    };
    let a_shape = if trans.0 {
        [batch.0, k, m]
    } else {
        [batch.0, m, k]
    };
    let b_shape = if trans.1 {
        [batch.1, n, k]
    } else {
        [batch.1, k, n]
    };
    let a = c.input(ints(&a_shape, seed));
    let b = c.input(ints(&b_shape, seed + 1));
    let out = c.node(
        Op::MatMul {
            trans_a: trans.0,
            trans_b: trans.1,
        },
        &[a, b],
    );
    c.check(out, Agree::Exactly, Some("imatmul"));
}

#[test]
fn int8_gemm_patterns_at_edges() {
    for (batch, m, k, n) in [(1, 1, 1, 1), (2, 5, 7, 33), (1, 15, 130, 40)] {
        let s = Shape { batch, m, k, n };
        qlinear_matmul(s, false, true, true, 1);
        qlinear_matmul(s, true, false, false, 2);
        matmul_integer(s, true, false, 3);
        matmul_integer(s, false, true, 8);
        qdq_matmul(s, false, true, 4);
        qdq_matmul(s, true, false, 5);
        dynamic_matmul_integer(s, true, 6);
        dynamic_matmul_integer(s, false, 7);
    }
}

#[test]
fn integer_matmul_of_run_time_operands() {
    integer_matmul((2, 2), (3, 5, 4), (false, true), 1);
    integer_matmul((3, 1), (1, 7, 2), (true, false), 2);
    integer_matmul((1, 2), (4, 1, 3), (false, false), 3);
}

#[test]
fn int4_weights_with_and_without_zero_points() {
    matmul_nbits(1, 64, 9, (32, 4), true, false, 1);
    matmul_nbits(3, 100, 5, (16, 4), false, false, 2);
    matmul_nbits(2, 70, 4, (32, 4), true, true, 3);
    matmul_nbits(2, 70, 5, (32, 8), true, false, 4);
    matmul_nbits(1, 33, 3, (16, 8), false, true, 5);
    qdq_int4(2, 64, 6, 32, 4);
    qdq_int4(1, 40, 3, 16, 5);
    qdq_int4(2, 10, 6, 4, 6);
}

#[test]
fn quantize_and_uint8_elementwise() {
    dynamic_quantize(&[3, 37], false, 1);
    dynamic_quantize(&[40], true, 2);
}

/// A dequantised activation shared by three projections (Q, K, V) is
/// computed by none of them; its Quantize stays a kernel of its own.
#[test]
fn shared_dequantised_activation() {
    let (m, k, n) = (6, 24, 10);
    let mut c = Case::new();
    let x = c.input(Tensor::from_f32(&[m, k], &uniform(m * k, 1, -3.0, 3.0)));
    let sx = c.constant(Tensor::from_f32(&[], &[0.03]));
    let zx = c.constant(scalar_q(128, false));
    let xq = c.node(Op::Quantize { to: DType::U8 }, &[x, sx, zx]);
    let xf = c.cast(xq, DType::F32);
    let zxf = c.constant(Tensor::from_f32(&[], &[128.0]));
    let xc = c.node(Op::Sub, &[xf, zxf]);
    let xd = c.node(Op::Mul, &[xc, sx]);
    let mut sum = None;
    for p in 0..3 {
        let w = c.constant(quantised(&[k, n], true, 10 + p));
        let wf = c.cast(w, DType::F32);
        let sw = c.constant(Tensor::from_f32(&[], &[0.01]));
        let wd = c.node(Op::Mul, &[wf, sw]);
        let y = c.node(MATMUL, &[xd, wd]);
        sum = Some(match sum {
            None => y,
            Some(s) => c.node(Op::Add, &[s, y]),
        });
    }
    c.check(sum.unwrap(), Agree::Float(1e-4, 1e-4), Some("q8gemm"));
}

/// Two QDQ layers of one shape with different zero points and scales (A's
/// and the output's) share one kernel: those constants live in the packed
/// operand, not in the code. Both outputs stay within one step of the
/// interpreter's.
#[test]
fn layers_of_one_shape_share_their_int8_kernel() {
    let (m, k) = (7, 40);
    let mut c = Case::new();
    let mut a = c.input(quantised(&[m, k], false, 3));
    let mut za = 128.0;
    for (layer, (sy, zy)) in [(0.05f32, 120i32), (0.03, 7)].into_iter().enumerate() {
        let af = c.cast(a, DType::F32);
        let zero = c.constant(Tensor::from_f32(&[], &[za]));
        let a_c = c.node(Op::Sub, &[af, zero]);
        let sa = c.constant(Tensor::from_f32(&[], &[0.02 + 0.01 * layer as f32]));
        let a_d = c.node(Op::Mul, &[a_c, sa]);
        let w = c.constant(quantised(&[k, k], true, 20 + layer as u64));
        let wf = c.cast(w, DType::F32);
        let sw = c.constant(Tensor::from_f32(&[], &[0.004]));
        let w_d = c.node(Op::Mul, &[wf, sw]);
        let y = c.node(MATMUL, &[a_d, w_d]);
        let (scale, zero) = (
            c.constant(Tensor::from_f32(&[], &[sy])),
            c.constant(scalar_q(zy, false)),
        );
        a = c.node(Op::Quantize { to: DType::U8 }, &[y, scale, zero]);
        za = zy as f32;
    }
    let mut graph = c.graph.clone();
    graph.outputs = vec![a];
    let options = CompileOptions {
        target: Target::parse(None, None).unwrap(),
        threads: 1,
    };
    let compiled = compile_graph(&graph, &options).unwrap();
    let gemms: Vec<&str> = compiled
        .plan()
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Kernel { symbol, .. } if symbol.contains("q8gemm") => Some(symbol.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(gemms.len(), 2, "{gemms:?}");
    assert_eq!(
        gemms[0], gemms[1],
        "the two layers did not share their kernel"
    );
    c.check(a, Agree::Steps(1.0), Some("q8gemm"));
}

/// The geometry of one int8 convolution case (2-D, ungrouped).
#[derive(Clone, Copy, Debug)]
struct ConvCase {
    batch: usize,
    channels: usize,
    filters: usize,
    size: [usize; 2],
    kernel: [usize; 2],
    stride: usize,
    pad: [usize; 2],
    dilation: usize,
}

impl ConvCase {
    fn attrs(&self) -> ConvAttrs {
        ConvAttrs {
            strides: vec![self.stride; 2],
            pads: vec![self.pad[0], self.pad[1], self.pad[1], self.pad[0]],
            dilations: vec![self.dilation; 2],
            group: 1,
        }
    }

    /// int8 weights `[filters, channels, kh, kw]` whose centred values
    /// fit int8 (signed), or the full uint8 range centred on 127/128.
    fn weights(&self, signed: bool, seed: u64) -> Tensor {
        let shape = [self.filters, self.channels, self.kernel[0], self.kernel[1]];
        if signed {
            let len = shape.iter().product();
            let v: Vec<i8> = uniform(len, seed, -120.0, 120.0)
                .iter()
                .map(|&x| x as i8)
                .collect();
            Tensor::from_i8(&shape, &v)
        } else {
            quantised(&shape, false, seed)
        }
    }

    /// Whether the output has at least one position.
    fn valid(&self) -> bool {
        // Axis d is padded by pad[d] before and pad[1 − d] after.
        (0..2).all(|d| {
            let span = self.dilation * (self.kernel[d] - 1) + 1;
            self.size[d] + self.pad[0] + self.pad[1] >= span
        })
    }
}

/// QLinearConv as imported: `Quantize(Cast_f32(Conv_i32(Cast_i32(x) − zx,
/// Cast_i32(W) − zw[M,1,1,1], bias_i32[M])) · multiplier[1,M,1,1], 1,
/// zy)`, the padding after centring (ONNX pads with the zero point); exact.
fn qlinear_conv(g: ConvCase, x_signed: bool, w_signed: bool, bias: bool, seed: u64) {
    let mut c = Case::new();
    let x = c.input(quantised(
        &[g.batch, g.channels, g.size[0], g.size[1]],
        x_signed,
        seed,
    ));
    let zx = c.constant(Tensor::from_i32(&[], &[if x_signed { -7 } else { 121 }]));
    let x32 = c.cast(x, DType::I32);
    let x_centred = c.node(Op::Sub, &[x32, zx]);
    let w = c.constant(g.weights(w_signed, seed + 1));
    let zw: Vec<i32> = (0..g.filters)
        .map(|j| {
            if w_signed {
                (j % 3) as i32 - 1
            } else {
                127 + (j % 2) as i32
            }
        })
        .collect();
    let zw = c.constant(Tensor::from_i32(&[g.filters, 1, 1, 1], &zw));
    let w32 = c.cast(w, DType::I32);
    let w_centred = c.node(Op::Sub, &[w32, zw]);
    let mut inputs = vec![x_centred, w_centred];
    if bias {
        let b: Vec<i32> = uniform(g.filters, seed + 3, -3e4, 3e4)
            .iter()
            .map(|&v| v as i32)
            .collect();
        inputs.push(c.constant(Tensor::from_i32(&[g.filters], &b)));
    }
    let acc = c.node(Op::Conv(g.attrs()), &inputs);
    let accf = c.cast(acc, DType::F32);
    let multiplier = uniform(g.filters, seed + 2, 1e-4, 2e-3);
    let multiplier = c.constant(Tensor::from_f32(&[1, g.filters, 1, 1], &multiplier));
    let y = c.node(Op::Mul, &[accf, multiplier]);
    let one = c.constant(Tensor::from_f32(&[], &[1.0]));
    let zy = c.constant(scalar_q(if x_signed { 3 } else { 110 }, x_signed));
    let to = if x_signed { DType::I8 } else { DType::U8 };
    let out = c.node(Op::Quantize { to }, &[y, one, zy]);
    c.check(out, Agree::Exactly, Some("im2col8"));
}

/// ConvInteger as imported (no bias, no requantisation): the i32 sums;
/// exact.
fn conv_integer(g: ConvCase, seed: u64) {
    let mut c = Case::new();
    let x = c.input(quantised(
        &[g.batch, g.channels, g.size[0], g.size[1]],
        false,
        seed,
    ));
    let zx = c.constant(Tensor::from_i32(&[], &[200]));
    let x32 = c.cast(x, DType::I32);
    let x_centred = c.node(Op::Sub, &[x32, zx]);
    let w = c.constant(g.weights(true, seed + 1));
    let w32 = c.cast(w, DType::I32);
    let acc = c.node(Op::Conv(g.attrs()), &[x_centred, w32]);
    c.check(acc, Agree::Exactly, Some("im2col8"));
}

/// A QDQ convolution: `Quantize(Conv_f32(DQ(x), DQ(W), bias_f32), sy,
/// zy)`; the interpreter sums dequantised floats, the kernel integers:
/// within one output step.
fn qdq_conv(g: ConvCase, x_signed: bool, seed: u64) {
    let mut c = Case::new();
    let x = c.input(quantised(
        &[g.batch, g.channels, g.size[0], g.size[1]],
        x_signed,
        seed,
    ));
    let zx = c.constant(Tensor::from_f32(&[], &[if x_signed { 4.0 } else { 130.0 }]));
    let sx = c.constant(Tensor::from_f32(&[], &[0.02]));
    let xf = c.cast(x, DType::F32);
    let xs = c.node(Op::Sub, &[xf, zx]);
    let xd = c.node(Op::Mul, &[xs, sx]);
    let w = c.constant(g.weights(true, seed + 1));
    let sw = c.constant(Tensor::from_f32(
        &[g.filters, 1, 1, 1],
        &uniform(g.filters, seed + 2, 1e-3, 4e-3),
    ));
    let wf = c.cast(w, DType::F32);
    let wd = c.node(Op::Mul, &[wf, sw]);
    let b = c.constant(Tensor::from_f32(
        &[g.filters],
        &uniform(g.filters, seed + 3, -0.5, 0.5),
    ));
    let y = c.node(Op::Conv(g.attrs()), &[xd, wd, b]);
    let sy = c.constant(Tensor::from_f32(&[], &[0.05]));
    let zy = c.constant(scalar_q(if x_signed { -2 } else { 128 }, x_signed));
    let to = if x_signed { DType::I8 } else { DType::U8 };
    let out = c.node(Op::Quantize { to }, &[y, sy, zy]);
    c.check(out, Agree::Steps(1.0), Some("im2col8"));
}

#[test]
fn int8_convolutions_at_edges() {
    let base = ConvCase {
        batch: 1,
        channels: 3,
        filters: 8,
        size: [9, 7],
        kernel: [3, 3],
        stride: 1,
        pad: [1, 1],
        dilation: 1,
    };
    // A 7×7/2 stem with padding 3, an asymmetric pad, a 1×1 projection,
    // dilation, two images, more filters than one GEMM panel.
    let cases = [
        ConvCase {
            kernel: [7, 7],
            stride: 2,
            pad: [3, 3],
            size: [16, 16],
            ..base
        },
        ConvCase {
            pad: [0, 2],
            ..base
        },
        ConvCase {
            kernel: [1, 1],
            pad: [0, 0],
            channels: 16,
            filters: 33,
            ..base
        },
        ConvCase {
            dilation: 2,
            pad: [2, 2],
            ..base
        },
        ConvCase {
            batch: 2,
            filters: 70,
            ..base
        },
    ];
    for (i, g) in cases.into_iter().enumerate() {
        let seed = 40 + i as u64;
        qlinear_conv(g, i % 2 == 0, i % 3 != 1, i != 2, seed);
        conv_integer(g, seed);
        qdq_conv(g, i % 2 == 1, seed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn qlinear_conv_is_exact(
        batch in 1usize..3, channels in 1usize..6, filters in 1usize..40,
        h in 1usize..12, w in 1usize..12, kh in 1usize..4, kw in 1usize..4,
        stride in 1usize..3, pad0 in 0usize..3, pad1 in 0usize..3, dilation in 1usize..3,
        x_signed: bool, w_signed: bool, bias: bool, seed in 0u64..1000,
    ) {
        let g = ConvCase {
            batch, channels, filters, size: [h, w], kernel: [kh, kw], stride,
            pad: [pad0, pad1], dilation,
        };
        prop_assume!(g.valid());
        qlinear_conv(g, x_signed, w_signed, bias, seed);
    }

    #[test]
    fn qlinear_matmul_is_exact(
        batch in 1usize..3, m in 1usize..20, k in 1usize..70, n in 1usize..50,
        a_signed: bool, w_signed: bool, per_column: bool, seed in 0u64..1000,
    ) {
        qlinear_matmul(Shape { batch, m, k, n }, a_signed, w_signed, per_column, seed);
    }

    #[test]
    fn dynamic_matmul_integer_is_exact(
        batch in 1usize..3, m in 1usize..20, k in 1usize..70, n in 1usize..50,
        per_column: bool, seed in 0u64..1000,
    ) {
        dynamic_matmul_integer(Shape { batch, m, k, n }, per_column, seed);
    }

    #[test]
    fn qdq_matmul_within_one_step(
        m in 1usize..20, k in 1usize..70, n in 1usize..50, a_signed: bool, seed in 0u64..1000,
    ) {
        qdq_matmul(Shape { batch: 1, m, k, n }, a_signed, true, seed);
    }

    #[test]
    fn int8_attention_matches(
        heads in 1usize..4, m in 1usize..30, k in 1usize..40, n1 in 1usize..70, n2 in 1usize..40,
        trans_b: bool, signed in proptest::array::uniform4(any::<bool>()), qdq_scores: bool,
        seed in 0u64..1000,
    ) {
        qdq_attention(AttentionCase { heads, m, k, n1, n2, trans_b, signed, qdq_scores, seed });
    }

    #[test]
    fn matmul_nbits_matches(
        m in 1usize..4, k in 1usize..200, n in 1usize..12, block_log in 1u32..7,
        zero_points: bool, fused: bool, eight: bool, seed in 0u64..1000,
    ) {
        matmul_nbits(m, k, n, (1 << block_log, if eight { 8 } else { 4 }), zero_points, fused, seed);
    }
}
