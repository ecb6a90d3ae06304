//! Reductions: the ONNX Reduce* family onto ReduceSum / ReduceMax, and
//! ArgMax / ArgMin.

use m4c_ir::Op;

use super::ctx::{axes, axis, Lowering, NodeCtx, B};
use super::elementwise::{bin, neg, not, scale, un};

/// ReduceSum/Mean/Max/Min/L1/L2/SumSquare/LogSum/LogSumExp.
pub fn reduce(b: &mut B, n: &NodeCtx) -> Lowering {
    let name = n.name();
    let x = n.input(0)?;
    let s = b.shape(&x);
    let op_type = n.node.op_type.as_str();
    let axes_from_input = n.opset >= 18 || (op_type == "ReduceSum" && n.opset >= 13);
    let list = if axes_from_input {
        n.const_ints(1)?
    } else {
        n.ints("axes")
    };
    let keep = n.int("keepdims", 1) != 0;
    let ax = match list {
        Some(l) if !l.is_empty() => axes(&l, s.len())?,
        _ if n.int("noop_with_empty_axes", 0) != 0 => return Ok(vec![x]),
        _ => (0..s.len()).collect(),
    };
    let count: usize = ax.iter().map(|&a| s[a]).product();
    let sum = |b: &mut B, v| {
        b.op(
            Op::ReduceSum {
                axes: ax.clone(),
                keep_dims: keep,
            },
            &[v],
            name,
        )
    };
    let max = |b: &mut B, v| {
        b.op(
            Op::ReduceMax {
                axes: ax.clone(),
                keep_dims: keep,
            },
            &[v],
            name,
        )
    };
    let y = match op_type {
        "ReduceSum" => sum(b, x)?,
        "ReduceMean" => {
            let t = sum(b, x)?;
            scale(b, &t, 1.0 / count.max(1) as f64, name)?
        }
        "ReduceMax" => max(b, x)?,
        // min(x) = −max(−x); on bools, all(x) = ¬any(¬x).
        "ReduceMin" if b.dtype(&x) == m4c_ir::DType::Bool => {
            let m = not(b, &x, name)?;
            let r = max(b, m)?;
            not(b, &r, name)?
        }
        "ReduceMin" => {
            let m = neg(b, &x, name)?;
            let r = max(b, m)?;
            neg(b, &r, name)?
        }
        "ReduceSumSquare" | "ReduceL2" => {
            let sq = bin(b, Op::Mul, &x, &x, name)?;
            let t = sum(b, sq)?;
            if op_type == "ReduceL2" {
                un(b, Op::Sqrt, &t, name)?
            } else {
                t
            }
        }
        "ReduceL1" => {
            let m = neg(b, &x, name)?;
            let abs = bin(b, Op::Max, &x, &m, name)?;
            sum(b, abs)?
        }
        "ReduceLogSum" => {
            let t = sum(b, x)?;
            un(b, Op::Log, &t, name)?
        }
        "ReduceLogSumExp" => {
            let m = b.op(
                Op::ReduceMax {
                    axes: ax.clone(),
                    keep_dims: true,
                },
                std::slice::from_ref(&x),
                name,
            )?;
            let d = bin(b, Op::Sub, &x, &m, name)?;
            let e = un(b, Op::Exp, &d, name)?;
            let t = sum(b, e)?;
            let l = un(b, Op::Log, &t, name)?;
            let m = if keep {
                m
            } else {
                super::shape::reshape(b, &m, &b.shape(&l), name)?
            };
            bin(b, Op::Add, &l, &m, name)?
        }
        other => return Err(format!("not a reduction: {other}")),
    };
    Ok(vec![y])
}

/// ArgMax, and ArgMin as ArgMax of the negation.
pub fn arg(b: &mut B, n: &NodeCtx) -> Lowering {
    let name = n.name();
    let mut x = n.input(0)?;
    let a = axis(n.int("axis", 0), b.shape(&x).len())?;
    if n.node.op_type == "ArgMin" {
        x = neg(b, &x, name)?;
    }
    let op = Op::ArgMax {
        axis: a,
        keep_dims: n.int("keepdims", 1) != 0,
        select_last: n.int("select_last_index", 0) != 0,
    };
    Ok(vec![b.op(op, &[x], name)?])
}
