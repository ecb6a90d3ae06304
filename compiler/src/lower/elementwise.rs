//! Elementwise ONNX operators: arithmetic, comparisons and logic, and the
//! activation functions, expressed with the IR's elementwise set.
//!
//! Logic on bools maps to Min (and) / Max (or) / Equal-with-false (not);
//! activations become their min/max/where formulas.

use m4c_ir::{DType, Op};

use super::builder::Val;
use super::ctx::{Lowering, NodeCtx, B};
use crate::onnx::dtype_from_onnx;

fn one(v: Result<Val, String>) -> Lowering {
    v.map(|v| vec![v])
}

/// `op(x, y)` for a binary IR operator.
pub fn bin(b: &mut B, op: Op, x: &Val, y: &Val, name: &str) -> Result<Val, String> {
    b.op(op, &[x.clone(), y.clone()], name)
}

/// `op(x)` for a unary IR operator.
pub fn un(b: &mut B, op: Op, x: &Val, name: &str) -> Result<Val, String> {
    b.op(op, std::slice::from_ref(x), name)
}

/// `-x` for any numeric type.
pub fn neg(b: &mut B, x: &Val, name: &str) -> Result<Val, String> {
    let dt = b.dtype(x);
    if dt.is_float() {
        let m1 = b.scalar(dt, -1.0)?;
        bin(b, Op::Mul, x, &m1, name)
    } else {
        let zero = b.scalar(dt, 0.0)?;
        bin(b, Op::Sub, &zero, x, name)
    }
}

/// Logical not of a bool tensor.
pub fn not(b: &mut B, x: &Val, name: &str) -> Result<Val, String> {
    let f = b.scalar(DType::Bool, 0.0)?;
    bin(b, Op::Equal, x, &f, name)
}

/// `x · k` for a float constant `k`, in x's type.
pub fn scale(b: &mut B, x: &Val, k: f64, name: &str) -> Result<Val, String> {
    let c = b.scalar(b.dtype(x), k)?;
    bin(b, Op::Mul, x, &c, name)
}

/// `x + k` for a constant `k`, in x's type.
pub fn offset(b: &mut B, x: &Val, k: f64, name: &str) -> Result<Val, String> {
    let c = b.scalar(b.dtype(x), k)?;
    bin(b, Op::Add, x, &c, name)
}

/// Binary ONNX operators that are IR operators as they are.
pub fn direct_binary(b: &mut B, n: &NodeCtx) -> Lowering {
    let op = match n.node.op_type.as_str() {
        "Add" => Op::Add,
        "Sub" => Op::Sub,
        "Mul" => Op::Mul,
        "Div" => Op::Div,
        "Equal" => Op::Equal,
        "Less" => Op::Less,
        "And" => Op::Min,
        "Or" => Op::Max,
        other => return Err(format!("not a direct binary op: {other}")),
    };
    one(bin(b, op, &n.input(0)?, &n.input(1)?, n.name()))
}

/// Unary ONNX operators that are IR operators as they are.
pub fn direct_unary(b: &mut B, n: &NodeCtx) -> Lowering {
    let op = match n.node.op_type.as_str() {
        "Exp" => Op::Exp,
        "Log" => Op::Log,
        "Sqrt" => Op::Sqrt,
        "Erf" => Op::Erf,
        "Tanh" => Op::Tanh,
        "Sigmoid" => Op::Sigmoid,
        "Sin" => Op::Sin,
        "Cos" => Op::Cos,
        "Floor" => Op::Floor,
        other => return Err(format!("not a direct unary op: {other}")),
    };
    one(un(b, op, &n.input(0)?, n.name()))
}

/// Pow; an integer exponent of a float base is cast to the base's type.
pub fn pow(b: &mut B, n: &NodeCtx) -> Lowering {
    let (x, mut y) = (n.input(0)?, n.input(1)?);
    if b.dtype(&x) != b.dtype(&y) {
        y = un(b, Op::Cast { to: b.dtype(&x) }, &y, n.name())?;
    }
    one(bin(b, Op::Pow, &x, &y, n.name()))
}

/// Greater, GreaterOrEqual, LessOrEqual, Not, Xor.
pub fn comparison(b: &mut B, n: &NodeCtx) -> Lowering {
    let name = n.name();
    let x = n.input(0)?;
    let r = match n.node.op_type.as_str() {
        "Not" => not(b, &x, name),
        "Greater" => bin(b, Op::Less, &n.input(1)?, &x, name),
        "LessOrEqual" | "GreaterOrEqual" => {
            let y = n.input(1)?;
            let strict = if n.node.op_type == "LessOrEqual" {
                bin(b, Op::Less, &x, &y, name)?
            } else {
                bin(b, Op::Less, &y, &x, name)?
            };
            let eq = bin(b, Op::Equal, &x, &y, name)?;
            bin(b, Op::Max, &strict, &eq, name)
        }
        "Xor" => {
            let eq = bin(b, Op::Equal, &x, &n.input(1)?, name)?;
            not(b, &eq, name)
        }
        other => Err(format!("not a comparison: {other}")),
    };
    one(r)
}

/// Variadic Sum / Mean / Max / Min.
pub fn variadic(b: &mut B, n: &NodeCtx) -> Lowering {
    let name = n.name();
    let op = match n.node.op_type.as_str() {
        "Sum" | "Mean" => Op::Add,
        "Max" => Op::Max,
        "Min" => Op::Min,
        other => return Err(format!("not variadic: {other}")),
    };
    let inputs: Vec<Val> = n.inputs.iter().flatten().cloned().collect();
    let (first, rest) = inputs.split_first().ok_or("needs at least one input")?;
    let mut acc = first.clone();
    for v in rest {
        acc = bin(b, op.clone(), &acc, v, name)?;
    }
    if n.node.op_type == "Mean" {
        acc = scale(b, &acc, 1.0 / inputs.len() as f64, name)?;
    }
    Ok(vec![acc])
}

/// Neg, Abs, Reciprocal, Ceil, Round, Tan, Sign, IsNaN.
pub fn derived_unary(b: &mut B, n: &NodeCtx) -> Lowering {
    let name = n.name();
    let x = n.input(0)?;
    let dt = b.dtype(&x);
    let r = match n.node.op_type.as_str() {
        "Neg" => neg(b, &x, name),
        "Abs" => {
            let m = neg(b, &x, name)?;
            bin(b, Op::Max, &x, &m, name)
        }
        "Reciprocal" => {
            let one = b.scalar(dt, 1.0)?;
            bin(b, Op::Div, &one, &x, name)
        }
        "Ceil" => {
            let m = neg(b, &x, name)?;
            let f = un(b, Op::Floor, &m, name)?;
            neg(b, &f, name)
        }
        "Round" => round_half_even(b, &x, name),
        "Tan" => {
            let s = un(b, Op::Sin, &x, name)?;
            let c = un(b, Op::Cos, &x, name)?;
            bin(b, Op::Div, &s, &c, name)
        }
        "Sign" => {
            let zero = b.scalar(dt, 0.0)?;
            let (p, m) = (b.scalar(dt, 1.0)?, b.scalar(dt, -1.0)?);
            let is_pos = bin(b, Op::Less, &zero, &x, name)?;
            let is_neg = bin(b, Op::Less, &x, &zero, name)?;
            let negs = b.op(Op::Where, &[is_neg, m, zero], name)?;
            b.op(Op::Where, &[is_pos, p, negs], name)
        }
        "IsNaN" => {
            let eq = bin(b, Op::Equal, &x, &x, name)?;
            not(b, &eq, name)
        }
        other => Err(format!("not a derived unary op: {other}")),
    };
    one(r)
}

/// Round half to even (ONNX Round) from Floor: `f = ⌊x⌋`, `d = x − f`,
/// plus one when `d > ½` or `d = ½` with `f` odd. `d` is exact (Sterbenz)
/// except for x in (−½, 0), where any rounding still leaves `d ≥ ½` and
/// the result 0; integral, infinite and NaN x come back unchanged.
fn round_half_even(b: &mut B, x: &Val, name: &str) -> Result<Val, String> {
    let dt = b.dtype(x);
    let (zero, half, one, two) = (
        b.scalar(dt, 0.0)?,
        b.scalar(dt, 0.5)?,
        b.scalar(dt, 1.0)?,
        b.scalar(dt, 2.0)?,
    );
    let f = un(b, Op::Floor, x, name)?;
    let d = bin(b, Op::Sub, x, &f, name)?;
    let above = bin(b, Op::Less, &half, &d, name)?;
    let tie = bin(b, Op::Equal, &d, &half, name)?;
    let f2 = bin(b, Op::Mul, &f, &half, name)?;
    let f2 = un(b, Op::Floor, &f2, name)?;
    let f2 = bin(b, Op::Mul, &f2, &two, name)?;
    let parity = bin(b, Op::Sub, &f, &f2, name)?;
    let odd = bin(b, Op::Equal, &parity, &one, name)?;
    let tie_odd = bin(b, Op::Min, &tie, &odd, name)?;
    let up = bin(b, Op::Max, &above, &tie_odd, name)?;
    let step = b.op(Op::Where, &[up, one, zero], name)?;
    bin(b, Op::Add, &f, &step, name)
}

/// `max(lo, min(hi, x))`, skipping absent bounds.
pub fn clamp(
    b: &mut B,
    x: &Val,
    lo: Option<Val>,
    hi: Option<Val>,
    name: &str,
) -> Result<Val, String> {
    let mut y = x.clone();
    if let Some(lo) = lo {
        y = bin(b, Op::Max, &y, &lo, name)?;
    }
    if let Some(hi) = hi {
        y = bin(b, Op::Min, &y, &hi, name)?;
    }
    Ok(y)
}

/// Clip (bounds as attributes before opset 11, inputs after).
pub fn clip(b: &mut B, n: &NodeCtx) -> Lowering {
    let x = n.input(0)?;
    let dt = b.dtype(&x);
    let (lo, hi) = if n.opset < 11 {
        (
            Some(b.scalar(dt, n.float("min", f32::MIN) as f64)?),
            Some(b.scalar(dt, n.float("max", f32::MAX) as f64)?),
        )
    } else {
        (n.opt_input(1), n.opt_input(2))
    };
    one(clamp(b, &x, lo, hi, n.name()))
}

/// `clamp(alpha·x + beta, 0, 1)`.
fn hard_sigmoid(b: &mut B, x: &Val, alpha: f64, beta: f64, name: &str) -> Result<Val, String> {
    let ax = scale(b, x, alpha, name)?;
    let lin = offset(b, &ax, beta, name)?;
    let dt = b.dtype(x);
    let (zero, one) = (b.scalar(dt, 0.0)?, b.scalar(dt, 1.0)?);
    clamp(b, &lin, Some(zero), Some(one), name)
}

/// `x < 0 ? neg_branch : x`.
fn where_negative(b: &mut B, x: &Val, neg_branch: Val, name: &str) -> Result<Val, String> {
    let zero = b.scalar(b.dtype(x), 0.0)?;
    let is_neg = bin(b, Op::Less, x, &zero, name)?;
    b.op(Op::Where, &[is_neg, neg_branch, x.clone()], name)
}

/// `alpha·(exp(x) − 1)`.
fn exp_minus_one(b: &mut B, x: &Val, alpha: f64, name: &str) -> Result<Val, String> {
    let e = un(b, Op::Exp, x, name)?;
    let em1 = offset(b, &e, -1.0, name)?;
    scale(b, &em1, alpha, name)
}

/// Relu, LeakyRelu, PRelu, Elu, Selu, HardSigmoid, HardSwish, Softplus,
/// Softsign, Swish, Mish, ThresholdedRelu, Gelu (opset 20).
pub fn activation(b: &mut B, n: &NodeCtx) -> Lowering {
    let name = n.name();
    let x = n.input(0)?;
    let dt = b.dtype(&x);
    let r = match n.node.op_type.as_str() {
        "Relu" => {
            let zero = b.scalar(dt, 0.0)?;
            bin(b, Op::Max, &x, &zero, name)
        }
        "LeakyRelu" => {
            let s = scale(b, &x, n.float("alpha", 0.01) as f64, name)?;
            where_negative(b, &x, s, name)
        }
        "PRelu" => {
            let s = bin(b, Op::Mul, &x, &n.input(1)?, name)?;
            where_negative(b, &x, s, name)
        }
        "Elu" => {
            let e = exp_minus_one(b, &x, n.float("alpha", 1.0) as f64, name)?;
            where_negative(b, &x, e, name)
        }
        "Selu" => {
            let e = exp_minus_one(b, &x, n.float("alpha", 1.673_263_2) as f64, name)?;
            let zero = b.scalar(dt, 0.0)?;
            let pos = bin(b, Op::Less, &zero, &x, name)?;
            let inner = b.op(Op::Where, &[pos, x.clone(), e], name)?;
            scale(b, &inner, n.float("gamma", 1.050_701) as f64, name)
        }
        "HardSigmoid" => hard_sigmoid(
            b,
            &x,
            n.float("alpha", 0.2) as f64,
            n.float("beta", 0.5) as f64,
            name,
        ),
        "HardSwish" => {
            let h = hard_sigmoid(b, &x, 1.0 / 6.0, 0.5, name)?;
            bin(b, Op::Mul, &x, &h, name)
        }
        "Softplus" => softplus(b, &x, name),
        "Swish" => {
            let ax = scale(b, &x, n.float("alpha", 1.0) as f64, name)?;
            let s = un(b, Op::Sigmoid, &ax, name)?;
            bin(b, Op::Mul, &x, &s, name)
        }
        "Softsign" => {
            let m = neg(b, &x, name)?;
            let abs = bin(b, Op::Max, &x, &m, name)?;
            let den = offset(b, &abs, 1.0, name)?;
            bin(b, Op::Div, &x, &den, name)
        }
        "Mish" => {
            let sp = softplus(b, &x, name)?;
            let t = un(b, Op::Tanh, &sp, name)?;
            bin(b, Op::Mul, &x, &t, name)
        }
        "ThresholdedRelu" => {
            let alpha = b.scalar(dt, n.float("alpha", 1.0) as f64)?;
            let zero = b.scalar(dt, 0.0)?;
            let above = bin(b, Op::Less, &alpha, &x, name)?;
            b.op(Op::Where, &[above, x.clone(), zero], name)
        }
        "Gelu" => match n.string("approximate", "none").as_str() {
            "none" => un(b, Op::Gelu { tanh_approx: false }, &x, name),
            "tanh" => un(b, Op::Gelu { tanh_approx: true }, &x, name),
            other => Err(format!("unknown approximate='{other}'")),
        },
        other => Err(format!("not an activation: {other}")),
    };
    one(r)
}

/// `log(1 + exp(x))`.
fn softplus(b: &mut B, x: &Val, name: &str) -> Result<Val, String> {
    let e = un(b, Op::Exp, x, name)?;
    let e1 = offset(b, &e, 1.0, name)?;
    un(b, Op::Log, &e1, name)
}

/// Cast and CastLike.
pub fn cast(b: &mut B, n: &NodeCtx) -> Lowering {
    let x = n.input(0)?;
    let to = if n.node.op_type == "CastLike" {
        b.dtype(&n.input(1)?)
    } else {
        dtype_from_onnx(n.int("to", 0) as i32)?
    };
    if matches!(to, DType::I4 | DType::U4) {
        return Err(format!(
            "Cast to {to} is not supported ({to} is a storage type of quantised weights)"
        ));
    }
    if b.dtype(&x) == to {
        return Ok(vec![x]);
    }
    one(un(b, Op::Cast { to }, &x, n.name()))
}

/// Where.
pub fn where_(b: &mut B, n: &NodeCtx) -> Lowering {
    one(b.op(
        Op::Where,
        &[n.input(0)?, n.input(1)?, n.input(2)?],
        n.name(),
    ))
}

/// Mod: `fmod=1` is C's fmod (sign of the dividend): `a − trunc(a/b)·b`;
/// `fmod=0` takes the divisor's sign (Python's `%`): the truncated
/// remainder plus `b` where the two signs differ.
pub fn modulo(b: &mut B, n: &NodeCtx) -> Lowering {
    let name = n.name();
    let (x, y) = (n.input(0)?, n.input(1)?);
    let dt = b.dtype(&x);
    let fmod = n.int("fmod", 0) != 0;
    let q = bin(b, Op::Div, &x, &y, name)?;
    let q = if dt.is_float() {
        // trunc(q) = q < 0 ? −floor(−q) : floor(q)
        let zero = b.scalar(dt, 0.0)?;
        let neg_q = neg(b, &q, name)?;
        let up = un(b, Op::Floor, &neg_q, name)?;
        let up = neg(b, &up, name)?;
        let down = un(b, Op::Floor, &q, name)?;
        let is_neg = bin(b, Op::Less, &q, &zero, name)?;
        b.op(Op::Where, &[is_neg, up, down], name)?
    } else {
        q
    };
    let qy = bin(b, Op::Mul, &q, &y, name)?;
    let r = bin(b, Op::Sub, &x, &qy, name)?;
    if fmod {
        return Ok(vec![r]);
    }
    let zero = b.scalar(dt, 0.0)?;
    let nonzero = {
        let eq = bin(b, Op::Equal, &r, &zero, name)?;
        not(b, &eq, name)?
    };
    let r_neg = bin(b, Op::Less, &r, &zero, name)?;
    let y_neg = bin(b, Op::Less, &y, &zero, name)?;
    let same = bin(b, Op::Equal, &r_neg, &y_neg, name)?;
    let differ = not(b, &same, name)?;
    let fix = bin(b, Op::Min, &nonzero, &differ, name)?;
    let shifted = bin(b, Op::Add, &r, &y, name)?;
    Ok(vec![b.op(Op::Where, &[fix, shifted, r], name)?])
}
