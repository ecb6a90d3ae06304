//! Every IR operator compiled into a one-node graph (and fused chains)
//! and compared with the reference interpreter on random inputs, shapes
//! drawn by proptest (odd sizes included).

use m4c_cpu_codegen::{compile_graph, CompileOptions, Target};
use m4c_cpu_device::Step;
use m4c_ir::op::{
    ConvAttrs, CoordMode, NearestRounding, NormKind, PadMode, PoolAttrs, ResizeMode, SliceAxis,
};
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

fn floats(shape: &[usize], seed: u64) -> Tensor {
    Tensor::from_f32(shape, &uniform(shape.iter().product(), seed, -2.0, 2.0))
}

/// A graph under construction with its input values.
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

    /// Compiles the graph with `out` as its output, runs both backends and
    /// checks `|got − want| ≤ atol + rtol·|want|` everywhere; returns the
    /// compiled kernels' symbols.
    fn check(mut self, out: ValueId, rtol: f64, atol: f64) -> Result<Vec<String>, TestCaseError> {
        self.graph.outputs = vec![out];
        let values: Vec<Value> = self
            .inputs
            .iter()
            .map(|t| Value::from_tensor(t).unwrap())
            .collect();
        let want = run_graph(&self.graph, &values).unwrap().remove(0);
        let options = CompileOptions {
            target: Target::parse(None, None).unwrap(),
            threads: 2,
        };
        let mut compiled = compile_graph(&self.graph, &options).unwrap();
        let got = Value::from_tensor(&compiled.run(&self.inputs).unwrap()[0]).unwrap();
        prop_assert_eq!(got.dtype(), want.dtype());
        prop_assert_eq!(got.shape(), want.shape());
        let c = compare(&got, &want, rtol, atol);
        prop_assert!(c.passed(), "{}", c.summary());
        Ok(compiled
            .plan()
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Kernel { symbol, .. } => Some(symbol.clone()),
                _ => None,
            })
            .collect())
    }
}

/// A shape of rank 1..=4 with sizes 1..=9 (odd ones included).
fn shape() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..=9, 1..=4)
}

/// `shape` with some axes set to 1 (broadcast operands) and leading axes
/// dropped.
fn broadcast_of(shape: &[usize], mask: u32, drop: usize) -> Vec<usize> {
    let s: Vec<usize> = shape
        .iter()
        .enumerate()
        .map(|(i, &n)| if mask >> i & 1 == 1 { 1 } else { n })
        .collect();
    s[drop.min(s.len() - 1)..].to_vec()
}

const TOL: (f64, f64) = (1e-4, 1e-5);

/// Attention with a mask whose scores (3000 columns) are cut into row
/// blocks of 14 on AVX-512: two full blocks and a remainder of 3 rows, two
/// heads.
#[test]
fn attention_in_row_blocks() {
    let (h, m, k, n1, n2) = (2, 31, 8, 3000, 5);
    let mut c = Case::new();
    let q = c.input(floats(&[h, m, k], 7));
    let key = c.input(floats(&[h, n1, k], 8));
    let v = c.input(floats(&[h, n1, n2], 9));
    let s = c.node(
        Op::MatMul {
            trans_a: false,
            trans_b: true,
        },
        &[q, key],
    );
    let p = c.node(Op::Softmax { axis: 2 }, &[s]);
    let out = c.node(
        Op::MatMul {
            trans_a: false,
            trans_b: false,
        },
        &[p, v],
    );
    c.check(out, TOL.0, TOL.1).unwrap();
}

/// Results only a concatenation reads are written into its result in
/// place when the axes before its axis have extent 1 and they start on a
/// cache line; a graph input, a result read twice, and anything at batch
/// 2 are copied.
fn concatenation(s: &[usize], axis: usize, seed: u64) -> Result<(), TestCaseError> {
    let mut c = Case::new();
    let x = c.input(floats(s, seed));
    let b = c.node(Op::Exp, &[x]);
    let a = c.node(Op::Softmax { axis: 3 }, &[x]);
    let d = c.node(Op::Sqrt, &[a]);
    let cat = c.node(Op::Concat { axis }, &[b, d, a, x]);
    let symbols = c.check(cat, TOL.0, TOL.1)?;
    let copies = symbols.iter().filter(|s| s.ends_with("concat")).count();
    let bytes = s.iter().product::<usize>() * 4;
    let in_place = match s[..axis].iter().product::<usize>() {
        1 => 1 + usize::from(bytes % 64 == 0),
        _ => 0,
    };
    prop_assert_eq!(copies, 4 - in_place, "{:?}", symbols);
    Ok(())
}

/// Both results written in place (16 floats each: the second starts on
/// a cache line); at batch 2 all four are copied.
#[test]
fn concatenation_of_channels() {
    concatenation(&[1, 4, 2, 2], 1, 3).unwrap();
    concatenation(&[2, 4, 2, 2], 1, 3).unwrap();
}

/// SqueezeNet's max pools (3×3, stride 2, ceil mode as an end pad of
/// one) over rows whose output leaves a partial vector: those vectors
/// read whole with plain loads, their dead lanes from the next row, and
/// the last rows of the plane (and of the buffer) with masked ones.
#[test]
fn max_pools_past_the_rows_end() {
    for (hw, seed) in [(27, 7), (55, 8), (28, 9), (14, 10)] {
        let mut c = Case::new();
        let x = c.input(floats(&[1, 3, hw, hw], seed));
        let pool = PoolAttrs {
            kernel: vec![3, 3],
            strides: vec![2, 2],
            pads: vec![0, 0, 1, 1],
            dilations: vec![1, 1],
        };
        let y = c.node(Op::MaxPool(pool), &[x]);
        c.check(y, 0.0, 0.0).unwrap();
    }
}

/// A ReLU and a clip against constants (one max or min instruction
/// each) keep NaNs and infinities as the interpreter does; against a NaN
/// constant every result is NaN.
#[test]
fn clamps_against_constants_keep_nans() {
    let specials = [
        f32::NAN,
        -0.0,
        0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -3.0,
        2.5,
        7.0,
    ];
    let values: Vec<f32> = (0..67).map(|i| specials[i % specials.len()]).collect();
    for bound in [6.0, f32::NAN] {
        let mut c = Case::new();
        let x = c.input(Tensor::from_f32(&[67], &values));
        let zero = c.constant(Tensor::from_f32(&[], &[0.0]));
        let bound = c.constant(Tensor::from_f32(&[], &[bound]));
        let relu = c.node(Op::Max, &[x, zero]);
        let y = c.node(Op::Min, &[relu, bound]);
        c.check(y, 0.0, 0.0).unwrap();
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 16,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn binary_arithmetic_broadcasts(s in shape(), mask in 0u32..16, drop in 0usize..3, seed in any::<u64>(), which in 0usize..7) {
        let ops = [Op::Add, Op::Sub, Op::Mul, Op::Div, Op::Max, Op::Min, Op::Pow];
        let mut c = Case::new();
        let a = if which == 6 {
            let v = uniform(s.iter().product(), seed, 0.1, 3.0);
            c.input(Tensor::from_f32(&s, &v))
        } else {
            c.input(floats(&s, seed))
        };
        let b = c.input(floats(&broadcast_of(&s, mask, drop), seed + 1));
        let out = c.node(ops[which].clone(), &[a, b]);
        c.check(out, TOL.0, TOL.1)?;
    }

    #[test]
    fn unary_functions(s in shape(), seed in any::<u64>(), which in 0usize..9) {
        let ops = [Op::Exp, Op::Log, Op::Sqrt, Op::Erf, Op::Tanh, Op::Sigmoid, Op::Sin, Op::Cos, Op::Floor];
        let mut c = Case::new();
        let n: usize = s.iter().product();
        let v = match which {
            1 | 2 => uniform(n, seed, 1e-3, 50.0),
            6 | 7 => uniform(n, seed, -100.0, 100.0),
            _ => uniform(n, seed, -10.0, 10.0),
        };
        let x = c.input(Tensor::from_f32(&s, &v));
        let out = c.node(ops[which].clone(), &[x]);
        c.check(out, TOL.0, TOL.1)?;
    }

    #[test]
    fn fused_chain_with_broadcasts(s in shape(), mask in 0u32..16, seed in any::<u64>(), tanh in any::<bool>()) {
        // gelu(tanh(a·b + c) − 0.5) with b broadcast and c a scalar constant.
        let mut c = Case::new();
        let a = c.input(floats(&s, seed));
        let b = c.input(floats(&broadcast_of(&s, mask, 0), seed + 1));
        let k = c.constant(Tensor::from_f32(&[], &[0.25]));
        let half = c.constant(Tensor::from_f32(&[1], &[0.5]));
        let p = c.node(Op::Mul, &[a, b]);
        let q = c.node(Op::Add, &[p, k]);
        let r = c.node(Op::Tanh, &[q]);
        let t = c.node(Op::Sub, &[r, half]);
        let out = c.node(Op::Gelu { tanh_approx: tanh }, &[t]);
        c.check(out, TOL.0, TOL.1)?;
    }

    #[test]
    fn comparisons_where_and_casts(s in shape(), mask in 0u32..16, seed in any::<u64>(), to in 0usize..4) {
        let mut c = Case::new();
        let n: usize = s.iter().product();
        let ints: Vec<i64> = uniform(n, seed, -4.0, 4.0).iter().map(|&f| f as i64).collect();
        let a = c.input(Tensor::from_i64(&s, &ints));
        let bs = broadcast_of(&s, mask, 0);
        // Nonzero divisors (the interpreter rejects integer division by 0).
        let b_ints: Vec<i64> = uniform(bs.iter().product(), seed + 1, -4.0, 4.0)
            .iter()
            .map(|&f| if f as i64 == 0 { 3 } else { f as i64 })
            .collect();
        let b = c.input(Tensor::from_i64(&bs, &b_ints));
        let eq = c.node(Op::Equal, &[a, b]);
        let lt = c.node(Op::Less, &[a, b]);
        let either = c.node(Op::Max, &[eq, lt]);
        let x = c.input(floats(&s, seed + 2));
        let y = c.node(Op::Cast { to: DType::F32 }, &[b]);
        let picked = c.node(Op::Where, &[either, x, y]);
        let sum = c.node(Op::Add, &[a, b]);
        let div = c.node(Op::Div, &[sum, b]);
        let back = c.node(Op::Cast { to: DType::F32 }, &[div]);
        let mixed = c.node(Op::Mul, &[picked, back]);
        let dtype = [DType::F32, DType::I64, DType::I32, DType::Bool][to];
        let out = c.node(Op::Cast { to: dtype }, &[mixed]);
        c.check(out, TOL.0, TOL.1)?;
    }

    #[test]
    fn reductions(s in shape(), axes_mask in 1u32..16, keep in any::<bool>(), seed in any::<u64>(), max in any::<bool>()) {
        let axes: Vec<usize> = (0..s.len()).filter(|&d| axes_mask >> d & 1 == 1).collect();
        prop_assume!(!axes.is_empty());
        let mut c = Case::new();
        let x = c.input(floats(&s, seed));
        let op = if max { Op::ReduceMax { axes, keep_dims: keep } } else { Op::ReduceSum { axes, keep_dims: keep } };
        let out = c.node(op, &[x]);
        c.check(out, TOL.0, TOL.1)?;
    }

    #[test]
    fn argmax(s in shape(), axis in 0usize..4, keep in any::<bool>(), last in any::<bool>(), seed in any::<u64>()) {
        let axis = axis % s.len();
        let mut c = Case::new();
        // Coarse values so ties occur.
        let v: Vec<f32> = uniform(s.iter().product(), seed, -3.0, 3.0).iter().map(|f| f.round()).collect();
        let x = c.input(Tensor::from_f32(&s, &v));
        let out = c.node(Op::ArgMax { axis, keep_dims: keep, select_last: last }, &[x]);
        c.check(out, 0.0, 0.0)?;
    }

    #[test]
    fn softmax_any_axis(s in shape(), axis in 0usize..4, seed in any::<u64>()) {
        let mut c = Case::new();
        let x = c.input(floats(&s, seed));
        let out = c.node(Op::Softmax { axis: axis % s.len() }, &[x]);
        c.check(out, TOL.0, TOL.1)?;
    }

    #[test]
    fn norms(s in shape(), axis in 0usize..4, seed in any::<u64>(), rms in any::<bool>(), bias in any::<bool>()) {
        let axis = axis % s.len();
        let mut c = Case::new();
        let x = c.input(floats(&s, seed));
        let scale = c.constant(floats(&s[axis..], seed + 1));
        let mut inputs = vec![x, scale];
        if bias && !rms {
            inputs.push(c.input(floats(&s[axis..], seed + 2)));
        }
        let kind = if rms { NormKind::Rms } else { NormKind::Layer };
        let out = c.node(Op::Norm { kind, axis, epsilon: 1e-5 }, &inputs);
        c.check(out, TOL.0, TOL.1)?;
    }

    #[test]
    fn matmul_constant_weights(batch in 1usize..4, m in 1usize..40, k in 1usize..40, n in 1usize..70, trans_b in any::<bool>(), seed in any::<u64>()) {
        let mut c = Case::new();
        let a = c.input(floats(&[batch, m, k], seed));
        let w = if trans_b { floats(&[n, k], seed + 1) } else { floats(&[k, n], seed + 1) };
        let b = c.constant(w);
        let out = c.node(Op::MatMul { trans_a: false, trans_b }, &[a, b]);
        c.check(out, TOL.0, TOL.1)?;
    }

    #[test]
    fn matmul_batched_runtime_operands(h in 1usize..4, m in 1usize..20, k in 1usize..20, n in 1usize..40, ta in any::<bool>(), tb in any::<bool>(), bcast in any::<bool>(), seed in any::<u64>()) {
        let mut c = Case::new();
        let a = c.input(floats(&if ta { [2, h, k, m] } else { [2, h, m, k] }, seed));
        let b_batch = if bcast { 1 } else { h };
        let b = c.input(floats(&if tb { [b_batch, n, k] } else { [b_batch, k, n] }, seed + 1));
        let out = c.node(Op::MatMul { trans_a: ta, trans_b: tb }, &[a, b]);
        c.check(out, TOL.0, TOL.1)?;
    }

    #[test]
    fn attention_chains(h in 1usize..4, m in 1usize..24, k in 1usize..20, n1 in 1usize..40, n2 in 1usize..40, tb in any::<bool>(), mask in 0usize..4, guard in any::<bool>(), seed in any::<u64>()) {
        // MatMul → Softmax(last axis) → MatMul: compiled as one kernel.
        let mut c = Case::new();
        let q = c.input(floats(&[h, m, k], seed));
        let key = c.input(floats(&if tb { [h, n1, k] } else { [h, k, n1] }, seed ^ 1));
        let v = c.input(floats(&[h, n1, n2], seed ^ 2));
        let s = c.node(Op::MatMul { trans_a: false, trans_b: tb }, &[q, key]);
        // Optionally a scale and a mask (broadcast per head, per row, or
        // neither) between the scores and the softmax, fused too.
        let s = match mask {
            0 => s,
            which => {
                let shape = [vec![m, n1], vec![h, m, n1], vec![h, 1, n1]][which - 1].clone();
                let bias = c.input(floats(&shape, seed ^ 3));
                let scale = c.constant(Tensor::from_f32(&[], &[0.125]));
                let scaled = c.node(Op::Mul, &[s, scale]);
                c.node(Op::Add, &[scaled, bias])
            }
        };
        let p = c.node(Op::Softmax { axis: 2 }, &[s]);
        // Optionally an exporter's NaN guard after the softmax:
        // Where((p == p) == false, 0, p), fused too.
        let p = if guard {
            let same = c.node(Op::Equal, &[p, p]);
            let no = c.constant(Tensor::from_bytes(DType::Bool, &[], vec![0]));
            let nan = c.node(Op::Equal, &[same, no]);
            let zero = c.constant(Tensor::from_f32(&[], &[0.0]));
            c.node(Op::Where, &[nan, zero, p])
        } else {
            p
        };
        let out = c.node(Op::MatMul { trans_a: false, trans_b: false }, &[p, v]);
        c.check(out, TOL.0, TOL.1)?;
    }

    #[test]
    fn convolutions(cin in 1usize..5, mult in 1usize..4, hw in 3usize..10, kernel in 1usize..4, stride in 1usize..3, pad in 0usize..2, dil in 1usize..3, depthwise in any::<bool>(), runtime_w in any::<bool>(), bias in any::<bool>(), wide in any::<bool>(), seed in any::<u64>()) {
        prop_assume!(dil * (kernel - 1) < hw + 2 * pad);
        // `wide`: rows longer than a vector with a ragged tail, and (when
        // not depthwise) enough filters (65-67) for the im2col + GEMM path;
        // otherwise odd filter blocks, direct or (12 filters on short rows)
        // GEMM.
        let (group, m) = match (depthwise, wide) {
            (true, _) => (cin, cin * mult),
            (false, true) => (1, mult + 64),
            (false, false) => (1, [3, 5, 12][mult - 1]),
        };
        let width = if wide { hw + 18 } else { hw + 1 };
        let mut c = Case::new();
        let x = c.input(floats(&[2, cin, hw, width], seed));
        let weights = floats(&[m, cin / group, kernel, kernel], seed + 1);
        let w = if runtime_w { c.input(weights) } else { c.constant(weights) };
        let mut inputs = vec![x, w];
        if bias {
            inputs.push(c.constant(floats(&[m], seed + 2)));
        }
        let attrs = ConvAttrs { strides: vec![stride, stride], pads: vec![pad, pad, pad, pad], dilations: vec![dil, dil], group };
        let out = c.node(Op::Conv(attrs), &inputs);
        c.check(out, TOL.0, TOL.1)?;
    }

    #[test]
    fn convolutions_1d(cin in 1usize..4, m in 1usize..40, len in 1usize..40, kernel in 1usize..4, stride in 1usize..7, pad in 0usize..2, seed in any::<u64>()) {
        // One spatial axis (Whisper's front end): rows are the whole plane;
        // strides past 4 take the gather path.
        prop_assume!(kernel <= len + 2 * pad);
        let mut c = Case::new();
        let x = c.input(floats(&[1, cin, len], seed));
        let w = c.constant(floats(&[m, cin, kernel], seed + 1));
        let b = c.constant(floats(&[m], seed + 2));
        let attrs = ConvAttrs { strides: vec![stride], pads: vec![pad, pad], dilations: vec![1], group: 1 };
        let out = c.node(Op::Conv(attrs), &[x, w, b]);
        c.check(out, TOL.0, TOL.1)?;
    }

    #[test]
    fn pools(ch in 1usize..4, hw in 3usize..9, kernel in 1usize..4, stride in 1usize..3, pad in 0usize..2, avg in 0usize..3, wide in any::<bool>(), seed in any::<u64>()) {
        prop_assume!(pad < kernel);
        let mut c = Case::new();
        // `wide`: rows longer than a vector, with a ragged tail.
        let width = if wide { hw + 19 } else { hw + 2 };
        let x = c.input(floats(&[1, ch, hw, width], seed));
        let pool = PoolAttrs { kernel: vec![kernel, kernel], strides: vec![stride, stride], pads: vec![pad, pad, pad, pad + 1], dilations: vec![1, 1] };
        let op = match avg {
            0 => Op::MaxPool(pool),
            n => Op::AvgPool { pool, count_include_pad: n == 2 },
        };
        let out = c.node(op, &[x]);
        c.check(out, TOL.0, TOL.1)?;
    }

    #[test]
    fn transpose_slice_reshape(s in prop::collection::vec(1usize..=7, 2..=4), rot in 0usize..4, step in -2i64..=2, seed in any::<u64>()) {
        prop_assume!(step != 0);
        let r = s.len();
        let perm: Vec<usize> = (0..r).map(|d| (d + rot) % r).collect();
        let mut c = Case::new();
        let x = c.input(floats(&s, seed));
        let t = c.node(Op::Transpose { perm: perm.clone() }, &[x]);
        let ts: Vec<usize> = perm.iter().map(|&p| s[p]).collect();
        let axes: Vec<SliceAxis> = ts
            .iter()
            .map(|&n| if step > 0 {
                SliceAxis { start: n / 3, step, len: (n - n / 3).div_ceil(step as usize) }
            } else {
                SliceAxis { start: n - 1, step, len: n.div_ceil((-step) as usize) }
            })
            .collect();
        let sl = c.node(Op::Slice { axes: axes.clone() }, &[t]);
        let len: usize = axes.iter().map(|a| a.len).product();
        let flat = c.node(Op::Reshape { shape: vec![len] }, &[sl]);
        let out = c.node(Op::Exp, &[flat]);
        c.check(out, TOL.0, TOL.1)?;
    }

    #[test]
    fn concat_expand_gather(s in prop::collection::vec(1usize..=6, 2..=3), axis in 0usize..3, seed in any::<u64>(), count in 1usize..5) {
        let axis = axis % s.len();
        let mut c = Case::new();
        let a = c.input(floats(&s, seed));
        let mut s2 = s.clone();
        s2[axis] += 2;
        let b = c.input(floats(&s2, seed + 1));
        let cat = c.node(Op::Concat { axis }, &[a, b]);
        let mut cat_shape = s.clone();
        cat_shape[axis] += s2[axis];
        let n = cat_shape[axis] as i64;
        let idx: Vec<i64> = uniform(count, seed + 2, -(n as f32), n as f32).iter().map(|f| f.floor() as i64).collect();
        let i = c.input(Tensor::from_i64(&[count], &idx));
        let g = c.node(Op::Gather { axis }, &[cat, i]);
        let mut gs = cat_shape.clone();
        gs[axis] = count;
        let mut big = vec![2];
        big.extend(&gs);
        let out = c.node(Op::Expand { shape: big }, &[g]);
        c.check(out, 0.0, 0.0)?;
    }

    #[test]
    fn concatenations_in_place(batch in 1usize..3, axis in 1usize..4, dims in prop::collection::vec(1usize..=6, 3), seed in any::<u64>()) {
        let mut s = vec![batch];
        s.extend(&dims);
        concatenation(&s, axis, seed)?;
    }

    #[test]
    fn pads(s in prop::collection::vec(2usize..=6, 1..=3), mode in 0usize..3, seed in any::<u64>()) {
        let r = s.len();
        let pads: Vec<usize> = (0..2 * r).map(|i| (i * 7 + seed as usize) % 2).collect();
        let mode = [PadMode::Constant(1.5), PadMode::Reflect, PadMode::Edge][mode];
        let mut c = Case::new();
        let x = c.input(floats(&s, seed));
        let out = c.node(Op::Pad { pads, mode }, &[x]);
        c.check(out, 0.0, 0.0)?;
    }

    #[test]
    fn resizes(h in 1usize..6, w in 2usize..6, sh in 1usize..4, sw in 1usize..4, linear in any::<bool>(), coord in 0usize..4, seed in any::<u64>()) {
        let coord = [CoordMode::HalfPixel, CoordMode::PytorchHalfPixel, CoordMode::AlignCorners, CoordMode::Asymmetric][coord];
        let mode = if linear { ResizeMode::Linear } else { ResizeMode::Nearest(NearestRounding::RoundPreferFloor) };
        let mut c = Case::new();
        let x = c.input(floats(&[1, 2, h, w], seed));
        let op = Op::Resize { mode, coord, scales: vec![1.0, 1.0, sh as f32, sw as f32 * 0.75], sizes: vec![1, 2, h * sh, (w as f32 * sw as f32 * 0.75).floor().max(1.0) as usize] };
        let out = c.node(op, &[x]);
        c.check(out, TOL.0, TOL.1)?;
    }
}
