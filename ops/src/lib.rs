//! The reference interpreter of the m4c IR.
//!
//! Every IR operator is executed with `ndarray` following ONNX numerics:
//! floats compute in f32 (f16/bf16 inputs are widened and each result is
//! rounded back to nearest even; sums and normalisation statistics
//! accumulate in f64), integers wrap on overflow, integer Div truncates
//! toward zero. This is the ground truth every backend is tested against, so
//! it favours clarity and exactness over speed. Bad input is an
//! [`OpsError`], never a panic.
//!
//! Choices where ONNX leaves room: Cast float→int saturates (NaN → 0); Erf
//! and Gelu are evaluated in f64 and rounded once; MaxPool and ArgMax compare
//! with `>`, so a NaN never wins; Max/Min/ReduceMax propagate NaN (as numpy). Combinations
//! the IR's type rules accept but that have no ONNX meaning are errors: Conv,
//! AvgPool and linear Resize on integers (Conv does take i32, for quantised
//! models), MaxPool on bool, Cast to int4/uint4 (int4/uint4 constants and
//! inputs are widened to i8/u8 on load, and Quantize's int4 results are
//! held so), a bias on RMSNorm. Quantize divides by the scale in the input's
//! float type, rounds half to even and saturates (ONNX QuantizeLinear);
//! NaN quantises to the zero point.

// Input-derived data is checked, never unwrapped: each remaining `expect` states
// the invariant that makes it unreachable (`#[allow(..., reason = ...)]`).
#![deny(clippy::unwrap_used, clippy::expect_used)]

mod broadcast;
pub mod budget;
mod compare;
mod composite;
mod conv;
mod elem;
mod elementwise;
mod error;
mod graph;
mod matmul;
mod movement;
mod pool;
mod quantize;
mod reduce;
mod resize;
mod value;
mod window;

pub use compare::{as_f64, compare, max_abs_rel_error, Comparison};
pub use error::OpsError;
pub use graph::run_graph;
pub use value::Value;

use m4c_ir::Op;

/// Evaluates one operator on its inputs (in the IR's input order).
///
/// ```
/// use m4c_ir::Op;
/// use m4c_ops::{eval_op, Value};
/// use ndarray::arr1;
/// let x = Value::I64(arr1(&[7, -7]).into_dyn());
/// let y = Value::I64(arr1(&[2, 2]).into_dyn());
/// // Integer division truncates toward zero, as in ONNX.
/// assert_eq!(eval_op(&Op::Div, &[&x, &y]).unwrap(), Value::I64(arr1(&[3, -3]).into_dyn()));
/// assert!(eval_op(&Op::Div, &[&x]).is_err());
/// ```
pub fn eval_op(op: &Op, inputs: &[&Value]) -> Result<Value, OpsError> {
    op.kind()
        .check_arity(inputs.len())
        .map_err(|e| OpsError::invalid(op.name(), e))?;
    let x = inputs[0];
    match op {
        Op::MatMul { trans_a, trans_b } => matmul::matmul(x, inputs[1], *trans_a, *trans_b),
        Op::Conv(c) => conv::conv(x, inputs[1], inputs.get(2).copied(), c),
        Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Pow | Op::Max | Op::Min => {
            elementwise::arithmetic(op, x, inputs[1])
        }
        Op::Equal | Op::Less => elementwise::compare(op, x, inputs[1]),
        Op::Where => elementwise::select(x, inputs[1], inputs[2]),
        Op::Exp
        | Op::Log
        | Op::Sqrt
        | Op::Erf
        | Op::Tanh
        | Op::Sigmoid
        | Op::Sin
        | Op::Cos
        | Op::Floor => elementwise::unary(op, x),
        Op::Cast { to } => elementwise::cast(x, *to),
        Op::Quantize { to } => quantize::quantize(x, inputs[1], inputs[2], *to),
        Op::Softmax { axis } => composite::softmax(x, *axis),
        Op::Norm {
            kind,
            axis,
            epsilon,
        } => composite::norm(*kind, *axis, *epsilon, inputs),
        Op::Gelu { tanh_approx } => composite::gelu(x, *tanh_approx),
        Op::ReduceSum { axes, keep_dims } => reduce::reduce_sum(x, axes, *keep_dims),
        Op::ReduceMax { axes, keep_dims } => reduce::reduce_max(x, axes, *keep_dims),
        Op::ArgMax {
            axis,
            keep_dims,
            select_last,
        } => reduce::arg_max(x, *axis, *keep_dims, *select_last),
        Op::MaxPool(p) => pool::max_pool(x, p),
        Op::AvgPool {
            pool: p,
            count_include_pad,
        } => pool::avg_pool(x, p, *count_include_pad),
        Op::Reshape { shape } => movement::reshape(x, shape),
        Op::Transpose { perm } => movement::transpose(x, perm),
        Op::Slice { axes } => movement::slice(x, axes),
        Op::Concat { axis } => movement::concat(inputs, *axis),
        Op::Gather { axis } => movement::gather(x, inputs[1], *axis),
        Op::Expand { shape } => movement::expand(x, shape),
        Op::Pad { pads, mode } => movement::pad(x, pads, *mode),
        Op::Resize {
            mode,
            coord,
            scales,
            sizes,
        } => resize::resize(x, *mode, *coord, scales, sizes),
    }
}
