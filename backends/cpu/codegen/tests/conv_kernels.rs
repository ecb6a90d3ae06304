//! The convolution kernels (GEMM on NCHW reading the input through offset
//! tables, with pixels or filters in the lanes, register-blocked depthwise, the fused elementwise epilogues) compiled for
//! AVX-512 (when the host has it) and AVX2 and compared with the reference
//! interpreter, proptest over shapes, strides, pads, dilations, groups and
//! epilogues.

use m4c_cpu_codegen::{compile_graph, CompileOptions, CompiledGraph, Target};
use m4c_cpu_device::Step;
use m4c_ir::op::{ConvAttrs, PadMode, PoolAttrs};
use m4c_ir::{Graph, Op, Tensor, TensorType, ValueId};
use m4c_ops::{compare, run_graph, Value};
use proptest::prelude::*;

/// Deterministic values in `[-scale, scale)`.
fn uniform(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let len: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let values: Vec<f32> = (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let unit =
                (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
            (unit * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_f32(shape, &values)
}

/// The targets every case is compiled for: AVX2, and AVX-512 where the
/// host runs it.
fn targets() -> Vec<Target> {
    let mut targets = vec![Target::parse(Some("x86_64-avx2"), None).unwrap()];
    let host = Target::parse(None, None).unwrap();
    if host.isa.f32_lanes() == 16 {
        targets.push(host);
    }
    targets
}

/// What follows the convolution (fused into its epilogue where the kernel
/// takes one).
#[derive(Clone, Copy, Debug)]
enum After {
    Nothing,
    Relu,
    Relu6,
    HardSwish,
    Silu,
    Sigmoid,
    /// `Relu(conv + residual)`, the residual a graph input.
    ResidualRelu,
    /// `conv · scale[channel] + shift[channel]` (an unfolded batch norm).
    ChannelAffine,
}

const AFTERS: [After; 8] = [
    After::Nothing,
    After::Relu,
    After::Relu6,
    After::HardSwish,
    After::Silu,
    After::Sigmoid,
    After::ResidualRelu,
    After::ChannelAffine,
];

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

    fn scalar(&mut self, v: f32) -> ValueId {
        self.constant(Tensor::from_f32(&[], &[v]))
    }

    fn node(&mut self, op: Op, inputs: &[ValueId]) -> ValueId {
        let name = format!("v{}", self.graph.values.len());
        self.graph.add_node(op, inputs, name).unwrap()
    }

    /// The convolution `x * w (+ b)` followed by `after`.
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        x: [usize; 4],
        filters: usize,
        kernel: usize,
        attrs: ConvAttrs,
        bias: bool,
        after: After,
        seed: u64,
    ) -> ValueId {
        let group = attrs.group;
        let depth = x[1] / group * kernel * kernel;
        let xv = self.input(uniform(&x, seed, 1.0));
        let w = uniform(
            &[filters, x[1] / group, kernel, kernel],
            seed + 1,
            1.0 / (depth as f32).sqrt(),
        );
        let w = self.constant(w);
        let mut inputs = vec![xv, w];
        if bias {
            inputs.push(self.constant(uniform(&[filters], seed + 2, 1.0)));
        }
        let y = self.node(Op::Conv(attrs), &inputs);
        let shape = self.graph.value(y).ty.static_shape().unwrap();
        let zero = self.scalar(0.0);
        match after {
            After::Nothing => y,
            After::Relu => self.node(Op::Max, &[y, zero]),
            After::Relu6 => {
                let six = self.scalar(6.0);
                let r = self.node(Op::Max, &[y, zero]);
                self.node(Op::Min, &[r, six])
            }
            After::HardSwish => {
                let (three, six) = (self.scalar(3.0), self.scalar(6.0));
                let s = self.node(Op::Add, &[y, three]);
                let s = self.node(Op::Max, &[s, zero]);
                let s = self.node(Op::Min, &[s, six]);
                let p = self.node(Op::Mul, &[y, s]);
                self.node(Op::Div, &[p, six])
            }
            After::Silu => {
                let s = self.node(Op::Sigmoid, &[y]);
                self.node(Op::Mul, &[y, s])
            }
            After::Sigmoid => self.node(Op::Sigmoid, &[y]),
            After::ResidualRelu => {
                let r = self.input(uniform(&shape, seed + 3, 1.0));
                let s = self.node(Op::Add, &[r, y]);
                self.node(Op::Max, &[s, zero])
            }
            After::ChannelAffine => {
                let c = [1, shape[1], 1, 1];
                let scale = self.constant(uniform(&c, seed + 4, 2.0));
                let shift = self.constant(uniform(&c, seed + 5, 1.0));
                let s = self.node(Op::Mul, &[y, scale]);
                self.node(Op::Add, &[s, shift])
            }
        }
    }

    /// Compiles for every target and compares with the interpreter on one
    /// and two threads; returns the host-compiled graph's kernel steps.
    fn check(self, out: ValueId) -> Result<Vec<String>, TestCaseError> {
        Ok(self
            .check_threads(out, &[1, 2])?
            .into_iter()
            .map(|(symbol, _)| symbol)
            .collect())
    }

    /// [`Self::check`] on each of `threads`; returns the host-compiled
    /// graph's kernel steps with their parallel extents.
    fn check_threads(
        self,
        out: ValueId,
        threads: &[usize],
    ) -> Result<Vec<(String, usize)>, TestCaseError> {
        self.check_on(out, &targets(), threads)
    }

    /// [`Self::check_threads`] on `targets` alone; returns the last
    /// target's kernel steps.
    fn check_on(
        mut self,
        out: ValueId,
        targets: &[Target],
        threads: &[usize],
    ) -> Result<Vec<(String, usize)>, TestCaseError> {
        self.graph.outputs = vec![out];
        let values: Vec<Value> = self
            .inputs
            .iter()
            .map(|t| Value::from_tensor(t).unwrap())
            .collect();
        let want = run_graph(&self.graph, &values).unwrap().remove(0);
        let mut symbols = Vec::new();
        for target in targets {
            for &threads in threads {
                let options = CompileOptions {
                    target: target.clone(),
                    threads,
                };
                let mut compiled = compile_graph(&self.graph, &options).unwrap();
                let got = Value::from_tensor(&compiled.run(&self.inputs).unwrap()[0]).unwrap();
                prop_assert_eq!(got.shape(), want.shape());
                let c = compare(&got, &want, 1e-4, 1e-5);
                prop_assert!(
                    c.passed(),
                    "{:?}, {threads} threads: {}",
                    target.isa,
                    c.summary()
                );
                symbols = kernel_symbols(&compiled);
            }
        }
        Ok(symbols)
    }
}

fn kernel_symbols(compiled: &CompiledGraph) -> Vec<(String, usize)> {
    compiled
        .plan()
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Kernel { symbol, extent, .. } => Some((symbol.clone(), *extent)),
            _ => None,
        })
        .collect()
}

/// The parallel extent of the (last) kernel whose symbol ends in `kind`.
fn extent_of(steps: &[(String, usize)], kind: &str) -> usize {
    steps
        .iter()
        .rev()
        .find(|(symbol, _)| symbol.ends_with(kind))
        .unwrap_or_else(|| panic!("no {kind} kernel in {steps:?}"))
        .1
}

fn attrs(stride: usize, pad: usize, dil: usize, group: usize) -> ConvAttrs {
    ConvAttrs {
        strides: vec![stride, stride],
        pads: vec![pad; 4],
        dilations: vec![dil, dil],
        group,
    }
}

/// Whether `symbol` is one of the GEMM convolution kernels (pixels in the
/// lanes, or filters in the lanes on small maps).
fn gemm(symbol: &str) -> bool {
    symbol.ends_with("conv_gemm") || symbol.ends_with("conv_gemm_t")
}

/// Small maps (7×7, 3×3 after a stride, 1×1 as in squeeze-and-excite)
/// with a filter count the lanes divide, and windowed convolutions on
/// larger maps whose output rows the lanes split (14×14, 14×13: several
/// pixel blocks), take the kernel with filters in the lanes, through
/// several K blocks, with padding, strides and
/// dilations read from the input through its offset tables (no im2col),
/// and with epilogues that read operands along the filters (a residual,
/// per-channel scale and shift): its outputs match the interpreter's, on
/// 1 to 3 threads. Filter counts are given in vectors of each target's
/// lanes, so every target meets panels of one and of two vectors.
#[test]
fn small_maps_put_filters_in_the_lanes() {
    for target in targets() {
        let lanes = target.isa.f32_lanes();
        for (x, vectors, kernel, (stride, pad, dil), bias, after) in [
            ([1, 600, 7, 7], 6, 1, (1, 0, 1), true, After::Silu),
            ([2, 64, 7, 7], 4, 1, (1, 0, 1), false, After::Relu),
            ([1, 40, 5, 5], 2, 3, (2, 1, 1), true, After::HardSwish),
            ([2, 96, 1, 1], 3, 1, (1, 0, 1), true, After::Sigmoid),
            ([1, 8, 5, 5], 1, 1, (1, 0, 1), true, After::Nothing),
            ([2, 64, 7, 7], 8, 3, (1, 1, 1), true, After::ResidualRelu),
            ([1, 300, 7, 7], 4, 3, (1, 1, 1), false, After::ChannelAffine),
            ([2, 24, 14, 13], 4, 1, (2, 0, 1), true, After::ChannelAffine),
            ([1, 16, 7, 7], 2, 3, (1, 2, 2), false, After::Relu6),
            ([1, 12, 8, 6], 1, 5, (2, 2, 1), true, After::ResidualRelu),
            ([1, 24, 14, 14], 4, 3, (1, 1, 1), true, After::ResidualRelu),
            ([2, 16, 27, 26], 2, 3, (2, 1, 1), false, After::Silu),
        ] {
            let mut c = Case::new();
            let filters = vectors * lanes;
            let y = c.conv(
                x,
                filters,
                kernel,
                attrs(stride, pad, dil, 1),
                bias,
                after,
                11,
            );
            let case = format!("{:?}, {x:?} → {filters}", target.isa);
            let steps = filters_in_lanes(c, y, &target, &case);
            assert!(
                steps
                    .iter()
                    .all(|(symbol, _)| symbol.ends_with("pad") || symbol.ends_with("conv_gemm_t")),
                "{case}: {steps:?}"
            );
        }
    }
}

/// Many filters that are not a multiple of the lanes (SqueezeNet's 1000
/// classes on 13×13) on small maps take the filters-in-lanes kernel too,
/// its last panel partial: the missing filters' weights are zeros, their
/// bias is not read and their outputs are not written, and a residual or
/// per-channel operand is read for the real filters only; outputs match
/// the interpreter's, on 1 to 3 threads.
#[test]
fn many_filters_leave_a_partial_last_panel() {
    for target in targets() {
        let lanes = target.isa.f32_lanes();
        for (x, extra, kernel, bias, after) in [
            ([1, 64, 13, 13], 8, 1, true, After::Relu),
            ([2, 24, 7, 7], lanes / 2 + 1, 1, true, After::ResidualRelu),
            ([1, 16, 5, 5], 3, 3, false, After::ChannelAffine),
            ([1, 40, 3, 3], 1, 1, true, After::Silu),
        ] {
            // 256 filters and more take this path; `extra` past a multiple
            // of the panel's filters.
            let filters = 256 + 2 * lanes + extra;
            let mut c = Case::new();
            let y = c.conv(
                x,
                filters,
                kernel,
                attrs(1, kernel / 2, 1, 1),
                bias,
                after,
                5,
            );
            let case = format!("{:?}, {x:?} → {filters}", target.isa);
            filters_in_lanes(c, y, &target, &case);
        }
    }
}

/// Checks `y` against the interpreter on `target` at 1 to 3 threads and
/// that the filters-in-lanes kernel computed it (the last kernel); the
/// kernel steps.
fn filters_in_lanes(c: Case, y: ValueId, target: &Target, case: &str) -> Vec<(String, usize)> {
    let steps = c
        .check_on(y, std::slice::from_ref(target), &[1, 2, 3])
        .unwrap();
    assert!(
        steps.last().unwrap().0.ends_with("conv_gemm_t"),
        "{case}: {steps:?}"
    );
    steps
}

/// A pointwise convolution with a ReLU and with a residual add is one
/// kernel reading the input in place (no im2col, no elementwise pass).
#[test]
fn pointwise_with_activation_is_one_kernel() {
    for after in [After::Relu, After::ResidualRelu, After::HardSwish] {
        let mut c = Case::new();
        let y = c.conv([1, 24, 7, 9], 40, 1, attrs(1, 0, 1, 1), true, after, 3);
        let symbols = c.check(y).unwrap();
        assert_eq!(symbols.len(), 1, "{after:?}: {symbols:?}");
        assert!(gemm(&symbols[0]), "{symbols:?}");
    }
}

/// Depths past one K block (192 on AVX-512, 384 on AVX2 for these
/// panels of two vectors): partial sums are stored and reloaded, the
/// epilogue runs once.
/// The 3×3 windows on 9×11 maps pack vectors that cross output rows
/// (gathered) next to ones inside a row (one load per k).
#[test]
fn deep_pointwise_and_windowed_convolutions() {
    for (cin, kernel, stride, after) in [
        (300, 1, 1, After::Silu),
        (600, 1, 1, After::ResidualRelu),
        (40, 3, 1, After::Relu),
        (70, 3, 2, After::HardSwish),
        // W (37 × 3600) past half an L2: the K blocks are outermost.
        (400, 3, 1, After::Relu),
    ] {
        let mut c = Case::new();
        let y = c.conv(
            [1, cin, 9, 11],
            37,
            kernel,
            attrs(stride, kernel / 2, 1, 1),
            true,
            after,
            cin as u64,
        );
        let symbols = c.check(y).unwrap();
        assert!(
            symbols.last().unwrap().ends_with("conv_gemm"),
            "{symbols:?}"
        );
    }
}

/// A depthwise convolution with its activation is one kernel.
#[test]
fn depthwise_with_activation_is_one_kernel() {
    let mut c = Case::new();
    let y = c.conv(
        [1, 16, 15, 15],
        16,
        3,
        attrs(2, 1, 1, 16),
        true,
        After::Relu6,
        9,
    );
    let symbols = c.check(y).unwrap();
    assert_eq!(symbols.len(), 1, "{symbols:?}");
    assert!(symbols[0].ends_with("conv_dw"), "{symbols:?}");
}

/// A convolution result read by two groups is not fused (it must reach
/// memory), and the results still agree.
#[test]
fn shared_results_stay_unfused() {
    let mut c = Case::new();
    let y = c.conv(
        [1, 8, 6, 6],
        16,
        1,
        attrs(1, 0, 1, 1),
        true,
        After::Nothing,
        5,
    );
    let zero = c.scalar(0.0);
    let a = c.node(Op::Max, &[y, zero]);
    let b = c.node(Op::Sigmoid, &[y]);
    let b = c.node(Op::Sub, &[b, zero]);
    let sum = c.node(Op::Concat { axis: 1 }, &[a, b]);
    let symbols = c.check(sum).unwrap();
    assert!(symbols.iter().any(|s| s.ends_with("fused")), "{symbols:?}");
}

/// A 3×3 kernel on a 1×1 map reads its padding but for the centre tap
/// (found by `many_filters_on_small_maps` when im2col folded the taps
/// into the parallel axis; the padded copy and its offsets are the edge
/// now).
#[test]
fn more_taps_than_pixels() {
    for threads in [1, 2] {
        let mut c = Case::new();
        let y = c.conv([1, 1, 1, 1], 40, 3, attrs(1, 1, 1, 1), true, AFTERS[0], 0);
        c.check_threads(y, &[threads]).unwrap();
    }
}

/// On a 7×7 map (two pixel panels) the filter tiles are split into groups
/// so that threads share the work; every split (one to three threads, K
/// blocks, the last tile's group, a residual epilogue) agrees with the
/// interpreter.
#[test]
fn small_maps_split_filter_groups_over_threads() {
    for (cin, filters, kernel, stride, after) in [
        (64, 250, 1, 1, After::ResidualRelu),
        (200, 61, 1, 1, After::Relu),
        (48, 130, 3, 1, After::HardSwish),
        (32, 90, 3, 2, After::Silu),
    ] {
        let mut c = Case::new();
        let y = c.conv(
            [1, cin, 7, 7],
            filters,
            kernel,
            attrs(stride, kernel / 2, 1, 1),
            true,
            after,
            filters as u64,
        );
        let steps = c.check_threads(y, &[1, 2, 3]).unwrap();
        let extent = extent_of(&steps, "conv_gemm");
        // More iterations than the one or two pixel panels.
        assert!(extent >= 3, "{filters} filters: extent {extent}, {steps:?}");
    }
}

/// Layers of batch 1 with few planes (an RGB stem's padded copy, a pool
/// and a pad over 3 channels, a global average over channels) fold their
/// leading axes into the parallel axis, and agree with the interpreter on
/// one to three threads.
#[test]
fn few_planes_fold_into_the_parallel_axis() {
    // 7×7/2 stem on 3 channels: the padded copy's iterations are (plane,
    // row) pairs.
    let mut c = Case::new();
    let y = c.conv(
        [1, 3, 30, 30],
        64,
        7,
        attrs(2, 3, 1, 1),
        true,
        After::Relu,
        1,
    );
    let steps = c.check_threads(y, &[1, 2, 3]).unwrap();
    assert!(extent_of(&steps, "pad") >= 32, "{steps:?}");

    let pool = PoolAttrs {
        kernel: vec![3, 3],
        strides: vec![2, 2],
        pads: vec![1, 1, 1, 1],
        dilations: vec![1, 1],
    };
    let mut c = Case::new();
    let x = c.input(uniform(&[1, 3, 21, 40], 2, 1.0));
    let y = c.node(Op::MaxPool(pool), &[x]);
    let steps = c.check_threads(y, &[1, 2, 3]).unwrap();
    assert!(extent_of(&steps, "pool") >= 32, "{steps:?}");

    let mut c = Case::new();
    let x = c.input(uniform(&[1, 3, 9, 11], 3, 1.0));
    let pads = vec![0, 0, 1, 2, 0, 0, 2, 1];
    let y = c.node(
        Op::Pad {
            pads,
            mode: PadMode::Constant(0.5),
        },
        &[x],
    );
    let steps = c.check_threads(y, &[1, 2, 3]).unwrap();
    assert!(extent_of(&steps, "pad") >= 32, "{steps:?}");

    let mut c = Case::new();
    let x = c.input(uniform(&[1, 40, 7, 7], 4, 1.0));
    let y = c.node(
        Op::ReduceSum {
            axes: vec![2, 3],
            keep_dims: true,
        },
        &[x],
    );
    let steps = c.check_threads(y, &[1, 2, 3]).unwrap();
    assert_eq!(extent_of(&steps, "reduce"), 40, "{steps:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Many filters on small maps: filter groups in the parallel axis,
    /// compared with the interpreter on one, two and three threads.
    #[test]
    fn many_filters_on_small_maps(batch in 1usize..3, cin in 1usize..40, filters in 40usize..200, h in 1usize..8, w in 1usize..12, kernel in prop::sample::select(vec![1usize, 3]), stride in 1usize..3, after in 0usize..8, seed in any::<u64>()) {
        prop_assume!(kernel <= h + 2 * (kernel / 2) && kernel <= w + 2 * (kernel / 2));
        let mut c = Case::new();
        let y = c.conv([batch, cin, h, w], filters, kernel, attrs(stride, kernel / 2, 1, 1), true, AFTERS[after], seed);
        let steps = c.check_threads(y, &[1, 2, 3])?;
        prop_assert!(gemm(&steps.last().unwrap().0), "{:?}", steps);
    }

    #[test]
    fn ungrouped_convolutions(batch in 1usize..3, cin in 1usize..24, filters in 1usize..40, h in 1usize..9, w in 1usize..40, kernel in prop::sample::select(vec![1usize, 2, 3, 5]), stride in 1usize..4, pad in 0usize..3, dil in 1usize..3, bias in any::<bool>(), after in 0usize..8, seed in any::<u64>()) {
        prop_assume!(dil * (kernel - 1) < h + 2 * pad && dil * (kernel - 1) < w + 2 * pad);
        prop_assume!(pad < kernel);
        let mut c = Case::new();
        let y = c.conv([batch, cin, h, w], filters, kernel, attrs(stride, pad, dil, 1), bias, AFTERS[after], seed);
        let symbols = c.check(y)?;
        prop_assert!(gemm(symbols.last().unwrap()), "{:?}", symbols);
    }

    #[test]
    fn depthwise_convolutions(batch in 1usize..3, channels in 2usize..20, h in 1usize..14, w in 1usize..40, kernel in prop::sample::select(vec![3usize, 5]), stride in 1usize..3, pad in 0usize..3, dil in 1usize..3, bias in any::<bool>(), after in 0usize..8, seed in any::<u64>()) {
        prop_assume!(dil * (kernel - 1) < h + 2 * pad && dil * (kernel - 1) < w + 2 * pad);
        let mut c = Case::new();
        let y = c.conv([batch, channels, h, w], channels, kernel, attrs(stride, pad, dil, channels), bias, AFTERS[after], seed);
        let symbols = c.check(y)?;
        prop_assert!(symbols.iter().any(|s| s.ends_with("conv_dw")), "{:?}", symbols);
    }

    #[test]
    fn grouped_convolutions(groups in 2usize..4, per_group in 1usize..4, mult in 1usize..3, hw in 3usize..12, stride in 1usize..3, after in 0usize..8, seed in any::<u64>()) {
        // Grouped but not depthwise: the direct kernel, the group a
        // separate elementwise kernel.
        let channels = groups * per_group;
        prop_assume!(per_group > 1 || mult > 1);
        let mut c = Case::new();
        let y = c.conv([1, channels, hw, hw + 3], channels * mult, 3, attrs(stride, 1, 1, groups), true, AFTERS[after], seed);
        c.check(y)?;
    }
}
