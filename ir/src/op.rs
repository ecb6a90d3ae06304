//! The closed operator set of the IR.
//!
//! Every ONNX graph m4c accepts is lowered onto these operators and nothing
//! else. The set is chosen to match the three units of an NPU: a matrix unit
//! (MatMul, Conv), a vector unit (elementwise, reductions, the composite
//! Softmax / Norm / Gelu that accelerators run as one LUT- or SFU-assisted
//! pass, pooling) and data movement (reshape, transpose, slice, concat,
//! gather, expand, pad, resize: all DMA address patterns). `docs/IR.md` says
//! why each one is in and where each one is implemented.
//!
//! This file holds the operators with their attributes; `op/kinds.rs` holds
//! one declaration per operator (text form, arity, unit, NPU support, cost
//! formula) and `op/cost.rs` evaluates the cost formulas.

use crate::DType;

mod cost;
#[cfg(test)]
mod docs;
mod kinds;

pub use cost::{
    bytes, elements, expands_large, expands_quantised, foldable, Cost, Flops, FoldBudget,
    FOLD_ALWAYS_FLOPS, FOLD_BUDGET_FLOPS, FOLD_LARGE_BYTES, QUANTISED_WEIGHT_MIN,
};
pub use kinds::{Npu, OpInfo, OpKind, Unit};

/// Attributes of a 2-D (or N-D) convolution. Inputs: `x [N,C,spatial..]`,
/// `w [M, C/group, kernel..]`, optional `bias [M]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvAttrs {
    pub strides: Vec<usize>,
    /// Begin pads for every spatial axis, then end pads (ONNX order).
    pub pads: Vec<usize>,
    pub dilations: Vec<usize>,
    pub group: usize,
}

/// Attributes shared by the pooling operators. Ceil-mode rounding is
/// expressed by the frontend as extra end padding.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolAttrs {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    /// Begin pads for every spatial axis, then end pads.
    pub pads: Vec<usize>,
    pub dilations: Vec<usize>,
}

/// Which statistic [`Op::Norm`] removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// `(x - mean) / sqrt(var + eps) * scale + bias`.
    Layer,
    /// `x / sqrt(mean(x²) + eps) * scale`.
    Rms,
}

/// How [`Op::Pad`] fills the border.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PadMode {
    Constant(f64),
    Reflect,
    Edge,
}

/// Interpolation of [`Op::Resize`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    /// Nearest neighbour with the given rounding of the source coordinate.
    Nearest(NearestRounding),
    /// N-linear interpolation over the resized axes.
    Linear,
}

/// Rounding of [`ResizeMode::Nearest`] (ONNX `nearest_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NearestRounding {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

/// Mapping from output to input coordinates of [`Op::Resize`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoordMode {
    HalfPixel,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
}

impl CoordMode {
    /// The input coordinate that output index `o` reads along an axis
    /// resized from `len_in` to `len_out` with `scale` (ONNX Resize's
    /// `coordinate_transformation_mode`). Every executor of Resize uses
    /// this one definition.
    ///
    /// ```
    /// use m4c_ir::op::CoordMode;
    /// assert_eq!(CoordMode::HalfPixel.source(0, 2.0, 4, 8), -0.25);
    /// assert_eq!(CoordMode::AlignCorners.source(7, 2.0, 4, 8), 3.0);
    /// ```
    pub fn source(self, o: usize, scale: f32, len_in: usize, len_out: usize) -> f64 {
        let (o, scale) = (o as f64, f64::from(scale));
        match self {
            CoordMode::HalfPixel => (o + 0.5) / scale - 0.5,
            CoordMode::PytorchHalfPixel if len_out > 1 => (o + 0.5) / scale - 0.5,
            CoordMode::PytorchHalfPixel => 0.0,
            CoordMode::AlignCorners if len_out > 1 => {
                o * (len_in as f64 - 1.0) / (len_out as f64 - 1.0)
            }
            CoordMode::AlignCorners => 0.0,
            CoordMode::Asymmetric => o / scale,
        }
    }
}

impl NearestRounding {
    /// The source index nearest to coordinate `x`: integral coordinates are
    /// exact, otherwise this rounding decides; clamped into `0..len`.
    ///
    /// ```
    /// use m4c_ir::op::NearestRounding;
    /// assert_eq!(NearestRounding::RoundPreferFloor.index(1.5, 4), 1);
    /// assert_eq!(NearestRounding::RoundPreferCeil.index(1.5, 4), 2);
    /// assert_eq!(NearestRounding::Floor.index(-0.25, 4), 0);
    /// ```
    pub fn index(self, x: f64, len: usize) -> usize {
        let (floor, frac) = (x.floor(), x - x.floor());
        let i = if frac == 0.0 {
            floor
        } else {
            match self {
                NearestRounding::RoundPreferFloor if frac <= 0.5 => floor,
                NearestRounding::RoundPreferCeil if frac < 0.5 => floor,
                NearestRounding::Floor => floor,
                _ => floor + 1.0,
            }
        };
        i.clamp(0.0, len as f64 - 1.0) as usize
    }
}

/// Static description of one axis of [`Op::Slice`]: `len` elements starting
/// at `start`, `step` apart (negative steps walk backwards).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceAxis {
    pub start: usize,
    pub step: i64,
    pub len: usize,
}

/// One IR operation with its attributes. Every operation has one result.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Batched matrix product with numpy broadcasting of the batch axes;
    /// `trans_a`/`trans_b` transpose the last two axes of an operand.
    MatMul {
        trans_a: bool,
        trans_b: bool,
    },
    /// Grouped convolution (`group == C` is depthwise).
    Conv(ConvAttrs),
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
    /// Elementwise `a == b` → bool.
    Equal,
    /// Elementwise `a < b` → bool.
    Less,
    /// `cond ? a : b`, broadcasting all three.
    Where,
    Exp,
    Log,
    Sqrt,
    Erf,
    Tanh,
    Sigmoid,
    Sin,
    Cos,
    Floor,
    /// Element type conversion (float→int truncates toward zero).
    Cast {
        to: DType,
    },
    /// Affine quantisation (ONNX QuantizeLinear's integer semantics):
    /// `saturate(round_half_even(x / scale) + zero_point)` into the integer
    /// type `to` (int8, uint8, int4 or uint4). Inputs `x`, `scale` (x's
    /// float type) and `zero_point` (an integer type) broadcast like any
    /// elementwise operator, so per-axis and blocked scales are expressed
    /// by reshaping or expanding them to x's rank. Dequantisation and
    /// integer arithmetic need no operator of their own (Cast, Sub, Mul,
    /// MatMul/Conv on i32).
    Quantize {
        to: DType,
    },
    /// Softmax over one axis.
    Softmax {
        axis: usize,
    },
    /// LayerNorm / RMSNorm over the trailing axes starting at `axis`.
    /// Inputs: `x`, `scale`, and `bias` for [`NormKind::Layer`] when present.
    Norm {
        kind: NormKind,
        axis: usize,
        epsilon: f32,
    },
    /// GELU, exact (erf) or the tanh approximation.
    Gelu {
        tanh_approx: bool,
    },
    ReduceSum {
        axes: Vec<usize>,
        keep_dims: bool,
    },
    ReduceMax {
        axes: Vec<usize>,
        keep_dims: bool,
    },
    /// Index of the maximum along `axis` (ties: first, or last when
    /// `select_last`), as i64.
    ArgMax {
        axis: usize,
        keep_dims: bool,
        select_last: bool,
    },
    MaxPool(PoolAttrs),
    AvgPool {
        pool: PoolAttrs,
        count_include_pad: bool,
    },
    /// Same elements, new static shape.
    Reshape {
        shape: Vec<usize>,
    },
    Transpose {
        perm: Vec<usize>,
    },
    /// Strided window on every axis.
    Slice {
        axes: Vec<SliceAxis>,
    },
    Concat {
        axis: usize,
    },
    /// `data.take(indices, axis)`; negative indices count from the end.
    Gather {
        axis: usize,
    },
    /// Broadcast to a static shape.
    Expand {
        shape: Vec<usize>,
    },
    /// Pads (begin per axis, then end per axis).
    Pad {
        pads: Vec<usize>,
        mode: PadMode,
    },
    /// Resize to a static shape; `scales` keep the exact ONNX coordinate
    /// mapping (they may differ from `out/in`).
    Resize {
        mode: ResizeMode,
        coord: CoordMode,
        scales: Vec<f32>,
        sizes: Vec<usize>,
    },
}

impl Op {
    /// The operator without attributes.
    pub fn kind(&self) -> OpKind {
        match self {
            Op::MatMul { .. } => OpKind::MatMul,
            Op::Conv(_) => OpKind::Conv,
            Op::Add => OpKind::Add,
            Op::Sub => OpKind::Sub,
            Op::Mul => OpKind::Mul,
            Op::Div => OpKind::Div,
            Op::Pow => OpKind::Pow,
            Op::Max => OpKind::Max,
            Op::Min => OpKind::Min,
            Op::Equal => OpKind::Equal,
            Op::Less => OpKind::Less,
            Op::Where => OpKind::Where,
            Op::Exp => OpKind::Exp,
            Op::Log => OpKind::Log,
            Op::Sqrt => OpKind::Sqrt,
            Op::Erf => OpKind::Erf,
            Op::Tanh => OpKind::Tanh,
            Op::Sigmoid => OpKind::Sigmoid,
            Op::Sin => OpKind::Sin,
            Op::Cos => OpKind::Cos,
            Op::Floor => OpKind::Floor,
            Op::Cast { .. } => OpKind::Cast,
            Op::Quantize { .. } => OpKind::Quantize,
            Op::Softmax { .. } => OpKind::Softmax,
            Op::Norm { .. } => OpKind::Norm,
            Op::Gelu { .. } => OpKind::Gelu,
            Op::ReduceSum { .. } => OpKind::ReduceSum,
            Op::ReduceMax { .. } => OpKind::ReduceMax,
            Op::ArgMax { .. } => OpKind::ArgMax,
            Op::MaxPool(_) => OpKind::MaxPool,
            Op::AvgPool { .. } => OpKind::AvgPool,
            Op::Reshape { .. } => OpKind::Reshape,
            Op::Transpose { .. } => OpKind::Transpose,
            Op::Slice { .. } => OpKind::Slice,
            Op::Concat { .. } => OpKind::Concat,
            Op::Gather { .. } => OpKind::Gather,
            Op::Expand { .. } => OpKind::Expand,
            Op::Pad { .. } => OpKind::Pad,
            Op::Resize { .. } => OpKind::Resize,
        }
    }

    /// The operator's textual name.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }
}
