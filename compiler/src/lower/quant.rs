//! Quantised ONNX operators onto the IR's one quantisation operator
//! (`Quantize`) and ordinary arithmetic, with ONNX's integer semantics:
//!
//! - dequantisation is `(Cast(q) − Cast(zero_point)) · scale` in f32;
//! - integer products (MatMulInteger, ConvInteger, the QLinear* ops) are
//!   MatMul/Conv on i32 after subtracting the zero points, accumulating in
//!   i32;
//! - requantisation is `Quantize(Cast(acc) · (sa·sb / sy), 1, zp_y)`: the
//!   real multiplier is computed in the scales' type, as ONNX's reference
//!   does, and Quantize rounds half to even and saturates.
//!
//! Scale and zero-point tensors are checked before anything indexes them
//! (type, shape against the quantised axis or block, finite constant
//! scales, positive where they divide, zero points of the quantised type,
//! an int32 one 0); each error names the tensor.
//! Per-axis parameters are reshaped to broadcast along their axis; blocked
//! ones split the axis into `[blocks, block_size]` (zero-padded to whole
//! blocks when the last one is shorter). Quantised constant
//! weights stay int8/int4 in the graph (the builder does not fold their
//! dequantisation, see `m4c_ir::op::expands_quantised`).

use m4c_ir::op::PadMode;
use m4c_ir::{DType, Op, Tensor};

use super::builder::Val;
use super::ctx::{axis as norm_axis, Lowering, NodeCtx, B};
use super::elementwise::{bin, un};
use super::nn::conv_attrs;
use super::shape::{reshape, slice_axis};
use crate::onnx::dtype_from_onnx;

/// The ONNX name of input `i`, for messages.
fn tname<'a>(n: &'a NodeCtx, i: usize) -> &'a str {
    n.node
        .input
        .get(i)
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("(omitted)")
}

/// Where a scale or zero point applies along x: one value for the tensor,
/// one per index of `axis`, or one per `block` consecutive indices of it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Granularity {
    Tensor,
    Axis(usize),
    Blocked { axis: usize, block: usize },
}

impl Granularity {
    /// The granularity of `scale` (input `si`) for an x of shape `xs`, from
    /// the node's `axis` and `block_size` attributes.
    fn of(b: &B, n: &NodeCtx, xs: &[usize], si: usize) -> Result<Granularity, String> {
        let ss = b.shape(&n.input(si)?);
        let block = n.int("block_size", 0);
        let name = tname(n, si);
        if block < 0 {
            return Err(format!("block_size {block} is negative"));
        }
        if block == 0 && ss.iter().product::<usize>() == 1 && ss.len() <= 1 {
            return Ok(Granularity::Tensor);
        }
        let axis = norm_axis(n.int("axis", 1), xs.len())
            .map_err(|e| format!("scale '{name}': {e} of x {xs:?}"))?;
        if block == 0 {
            if ss != [xs[axis]] {
                return Err(format!(
                    "scale '{name}' has shape {ss:?}, per-axis quantisation along axis {axis} \
                     of x {xs:?} needs [{}]",
                    xs[axis]
                ));
            }
            return Ok(Granularity::Axis(axis));
        }
        let block = block as usize;
        let mut want = xs.to_vec();
        want[axis] = xs[axis].div_ceil(block);
        if ss != want {
            return Err(format!(
                "scale '{name}' has shape {ss:?}, blocks of {block} along axis {axis} of x \
                 {xs:?} need {want:?}"
            ));
        }
        Ok(Granularity::Blocked { axis, block })
    }

    /// x reshaped so that a parameter broadcasts over it (blocked: the
    /// axis zero-padded to whole blocks and split into `[blocks, block]`).
    fn view_x(self, b: &mut B, x: &Val, name: &str) -> Result<Val, String> {
        match self {
            Granularity::Blocked { axis, block } => {
                let s = b.shape(x);
                let x = pad_to_blocks(b, x, axis, block, name)?;
                let mut split = s.clone();
                split[axis] = s[axis].div_ceil(block);
                split.insert(axis + 1, block);
                reshape_any(b, &x, &split, name)
            }
            _ => Ok(x.clone()),
        }
    }

    /// A scale or zero point reshaped to broadcast over [`Self::view_x`].
    fn view_param(self, b: &mut B, p: &Val, rank: usize, name: &str) -> Result<Val, String> {
        match self {
            Granularity::Tensor => reshape(b, p, &[], name),
            Granularity::Axis(axis) => {
                let mut s = vec![1; rank];
                s[axis] = b.shape(p)[0];
                reshape(b, p, &s, name)
            }
            Granularity::Blocked { axis, .. } => {
                let mut s = b.shape(p);
                s.insert(axis + 1, 1);
                reshape_any(b, p, &s, name)
            }
        }
    }

    /// The result back in x's shape `xs` (a partial last block cut off).
    fn unview(self, b: &mut B, y: &Val, xs: &[usize], name: &str) -> Result<Val, String> {
        match self {
            Granularity::Blocked { axis, block } => {
                let mut padded = xs.to_vec();
                padded[axis] = xs[axis].div_ceil(block) * block;
                let y = reshape_any(b, y, &padded, name)?;
                slice_axis(b, &y, axis, 0, 1, xs[axis], name)
            }
            _ => reshape_any(b, y, xs, name),
        }
    }
}

/// `x` zero-padded at the end of `axis` to a multiple of `block` (ONNX's
/// blocked quantisation allows a shorter last block).
fn pad_to_blocks(b: &mut B, x: &Val, axis: usize, block: usize, name: &str) -> Result<Val, String> {
    let s = b.shape(x);
    let extra = s[axis].div_ceil(block) * block - s[axis];
    if extra == 0 {
        return Ok(x.clone());
    }
    let mut pads = vec![0; 2 * s.len()];
    pads[s.len() + axis] = extra;
    b.op(
        Op::Pad {
            pads,
            mode: PadMode::Constant(0.0),
        },
        std::slice::from_ref(x),
        name,
    )
}

/// Reshape that keeps a packed int4 constant packed (same bytes, new
/// shape): reshaping moves no element.
fn reshape_any(b: &mut B, x: &Val, shape: &[usize], name: &str) -> Result<Val, String> {
    match x.as_const() {
        Some(t) if matches!(t.dtype, DType::I4 | DType::U4) => {
            if t.len() != shape.iter().product::<usize>() {
                return Err(format!("cannot reshape {:?} to {shape:?}", t.shape));
            }
            Ok(Val::konst(Tensor {
                dtype: t.dtype,
                shape: shape.to_vec(),
                storage: t.storage.clone(),
            }))
        }
        _ => reshape(b, x, shape, name),
    }
}

/// The scale input `i`: a float tensor; when constant, every element
/// positive and finite.
fn scale(b: &B, n: &NodeCtx, i: usize) -> Result<Val, String> {
    checked_scale(b, n, i, true)
}

/// [`scale`], with `positive` false accepting zero and negative scales:
/// where a scale only multiplies (DequantizeLinear, MatMulNBits) any
/// finite one has a meaning, and onnxruntime's symmetric block quantisers
/// write negative ones (the sign maps each block's largest magnitude onto
/// −2^(bits−1)).
fn checked_scale(b: &B, n: &NodeCtx, i: usize, positive: bool) -> Result<Val, String> {
    let s = n.input(i)?;
    let dt = b.dtype(&s);
    if !dt.is_float() {
        return Err(format!(
            "scale '{}' is {dt}, needs a float type",
            tname(n, i)
        ));
    }
    if let Some(t) = s.as_const() {
        let v = m4c_ops::Value::from_tensor(t).map_err(|e| e.to_string())?;
        let bad = |s: &f64| !s.is_finite() || (positive && *s <= 0.0);
        if let Some(bad) = m4c_ops::as_f64(&v).into_iter().find(bad) {
            let want = if positive {
                "positive and finite"
            } else {
                "finite"
            };
            return Err(format!(
                "scale '{}' holds {bad} (scales must be {want})",
                tname(n, i)
            ));
        }
    }
    Ok(s)
}

/// The zero-point input `i` for quantised type `q`: of type `q`, its shape
/// that of the scale (input `si`); `None` when omitted.
fn zero_point(b: &B, n: &NodeCtx, i: usize, q: DType, si: usize) -> Result<Option<Val>, String> {
    let Some(zp) = n.opt_input(i) else {
        return Ok(None);
    };
    let dt = b.dtype(&zp);
    if dt != q {
        return Err(format!(
            "zero point '{}' is {dt}, the quantised tensor is {q}",
            tname(n, i)
        ));
    }
    let (zs, ss) = (b.shape(&zp), b.shape(&n.input(si)?));
    if zs != ss && !(zs.iter().product::<usize>() == 1 && ss.iter().product::<usize>() == 1) {
        return Err(format!(
            "zero point '{}' has shape {zs:?}, its scale '{}' {ss:?}",
            tname(n, i),
            tname(n, si)
        ));
    }
    Ok(Some(zp))
}

/// A quantised element type m4c computes with, or an error naming `what`.
fn quantised_type(dt: DType, what: &str) -> Result<DType, String> {
    if dt.is_quantised() {
        Ok(dt)
    } else {
        Err(format!(
            "{what} is {dt}; quantised tensors must be int8, uint8, int4 or uint4"
        ))
    }
}

/// `(Cast(q) − Cast(zp)) · scale` in f32 (ONNX's order), all broadcast.
fn dequant(b: &mut B, q: &Val, zp: Option<&Val>, s: &Val, name: &str) -> Result<Val, String> {
    let mut x = un(b, Op::Cast { to: DType::F32 }, q, name)?;
    if let Some(zp) = zp {
        let z = to_f32(b, zp, name)?;
        x = bin(b, Op::Sub, &x, &z, name)?;
    }
    let s = to_f32(b, s, name)?;
    bin(b, Op::Mul, &x, &s, name)
}

/// `v` as f32 (a Cast unless it is one).
fn to_f32(b: &mut B, v: &Val, name: &str) -> Result<Val, String> {
    if b.dtype(v) == DType::F32 {
        Ok(v.clone())
    } else {
        un(b, Op::Cast { to: DType::F32 }, v, name)
    }
}

/// `Cast(q → i32) − Cast(zp → i32)`: the exact integer operand of the
/// integer products.
fn centred(b: &mut B, q: &Val, zp: Option<&Val>, name: &str) -> Result<Val, String> {
    let i = Op::Cast { to: DType::I32 };
    let x = un(b, i.clone(), q, name)?;
    match zp {
        Some(zp) => {
            let z = un(b, i, zp, name)?;
            bin(b, Op::Sub, &x, &z, name)
        }
        None => Ok(x),
    }
}

/// An i32 zero constant: the zero point of a Quantize without one.
fn zero_i32() -> Val {
    Val::konst(Tensor::from_i32(&[], &[0]))
}

/// `Quantize(v, 1, zp)`: rounds an already scaled value into `to`.
fn requantize(b: &mut B, v: &Val, zp: Option<&Val>, to: DType, name: &str) -> Result<Val, String> {
    let one = b.scalar(b.dtype(v), 1.0)?;
    let zp = zp.cloned().unwrap_or_else(zero_i32);
    b.op(Op::Quantize { to }, &[v.clone(), one, zp], name)
}

/// QuantizeLinear (opsets 10–25): integer output types only.
pub fn quantize_linear(b: &mut B, n: &NodeCtx) -> Lowering {
    let name = n.name();
    let x = n.input(0)?;
    let xt = b.dtype(&x);
    if !xt.is_float() {
        return Err(format!("x '{}' is {xt}, needs a float type", tname(n, 0)));
    }
    let s = scale(b, n, 1)?;
    if b.dtype(&s) != xt {
        return Err(format!(
            "scale '{}' is {}, x '{}' is {xt}",
            tname(n, 1),
            b.dtype(&s),
            tname(n, 0)
        ));
    }
    let precision = n.int("precision", 0);
    if precision != 0 && dtype_from_onnx(precision as i32)? != xt {
        return Err(format!(
            "precision {precision} other than x's type is not supported"
        ));
    }
    let declared = match n.int("output_dtype", 0) {
        0 => None,
        code => Some(dtype_from_onnx(code as i32)?),
    };
    let to = match (n.opt_input(2), declared) {
        (Some(zp), d) => {
            let zt = b.dtype(&zp);
            if let Some(d) = d.filter(|&d| d != zt) {
                return Err(format!(
                    "zero point '{}' is {zt} but output_dtype says {d}",
                    tname(n, 2),
                ));
            }
            quantised_type(zt, &format!("zero point '{}'", tname(n, 2)))?
        }
        (None, d) => quantised_type(d.unwrap_or(DType::U8), "output_dtype")?,
    };
    let zp = zero_point(b, n, 2, to, 1)?;
    let xs = b.shape(&x);
    let g = Granularity::of(b, n, &xs, 1)?;
    let xv = g.view_x(b, &x, name)?;
    let rank = b.shape(&xv).len();
    let sv = g.view_param(b, &s, rank, name)?;
    let zv = match zp {
        Some(zp) => g.view_param(b, &zp, rank, name)?,
        None => zero_i32(),
    };
    let y = b.op(Op::Quantize { to }, &[xv, sv, zv], name)?;
    Ok(vec![g.unview(b, &y, &xs, name)?])
}

/// DequantizeLinear (opsets 10–25): integer inputs (int32 with no zero
/// point) to the scale's float type (or `output_dtype`).
pub fn dequantize_linear(b: &mut B, n: &NodeCtx) -> Lowering {
    let name = n.name();
    let x = n.input(0)?;
    let xt = b.dtype(&x);
    if xt != DType::I32 {
        quantised_type(xt, &format!("x '{}'", tname(n, 0)))?;
    }
    let s = checked_scale(b, n, 1, false)?;
    let zp = zero_point(b, n, 2, xt, 1)?;
    if let (DType::I32, Some(zp)) = (xt, &zp) {
        let zero = zp.as_const().and_then(|t| t.to_i32_vec().ok());
        if zero.is_none_or(|v| v.iter().any(|&z| z != 0)) {
            return Err(format!(
                "zero point '{}' of an int32 x must be a constant 0",
                tname(n, 2)
            ));
        }
    }
    let out = match n.int("output_dtype", 0) {
        0 => b.dtype(&s),
        code => dtype_from_onnx(code as i32)?,
    };
    if !out.is_float() {
        return Err(format!("output_dtype {out} is not a float type"));
    }
    let xs = b.shape(&x);
    let g = Granularity::of(b, n, &xs, 1)?;
    let xv = g.view_x(b, &x, name)?;
    let rank = b.shape(&xv).len();
    let sv = g.view_param(b, &s, rank, name)?;
    let zv = zp.map(|z| g.view_param(b, &z, rank, name)).transpose()?;
    let mut y = dequant(b, &xv, zv.as_ref(), &sv, name)?;
    if out != DType::F32 {
        y = un(b, Op::Cast { to: out }, &y, name)?;
    }
    Ok(vec![g.unview(b, &y, &xs, name)?])
}

/// DynamicQuantizeLinear: uint8 with scale `(max(0, max x) − min(0, min
/// x)) / 255` (1/255 for a constant zero range) and zero point
/// `round(−min / scale)` clamped to `[0, 255]`, as ONNX's reference.
pub fn dynamic_quantize_linear(b: &mut B, n: &NodeCtx) -> Lowering {
    let name = n.name();
    let x = n.input(0)?;
    if b.dtype(&x) != DType::F32 {
        return Err(format!("x '{}' is {}, needs f32", tname(n, 0), b.dtype(&x)));
    }
    let rank = b.shape(&x).len();
    let all = Op::ReduceMax {
        axes: (0..rank).collect(),
        keep_dims: false,
    };
    let (zero, one, minus) = (b.f32(0.0), b.f32(1.0), b.f32(-1.0));
    let hi = un(b, all.clone(), &x, name)?;
    let hi = bin(b, Op::Max, &hi, &zero, name)?;
    let neg = bin(b, Op::Mul, &x, &minus, name)?;
    let lo = un(b, all, &neg, name)?;
    let lo = bin(b, Op::Mul, &lo, &minus, name)?;
    let lo = bin(b, Op::Min, &lo, &zero, name)?;
    let range = bin(b, Op::Sub, &hi, &lo, name)?;
    let empty = bin(b, Op::Equal, &range, &zero, name)?;
    let range = b.op(Op::Where, &[empty, one, range], name)?;
    let levels = b.f32(255.0);
    let s = bin(b, Op::Div, &range, &levels, name)?;
    let ratio = bin(b, Op::Div, &lo, &s, name)?;
    let initial = bin(b, Op::Sub, &zero, &ratio, name)?;
    let zp = requantize(b, &initial, None, DType::U8, name)?;
    let y = b.op(
        Op::Quantize { to: DType::U8 },
        &[x, s.clone(), zp.clone()],
        name,
    )?;
    Ok(vec![y, s, zp])
}

/// The integer operand `Cast(q) − zp` of input `qi` with zero point `zi`
/// (optional): of a quantised type, the zero point of the same type with
/// one element or one per index of `axis` (of q's rank), which is then
/// reshaped to broadcast along it.
fn operand(b: &mut B, n: &NodeCtx, qi: usize, zi: usize, axis: usize) -> Result<Val, String> {
    let name = n.name();
    let q = n.input(qi)?;
    let qt = quantised_type(b.dtype(&q), &format!("input '{}'", tname(n, qi)))?;
    let zp = match n.opt_input(zi) {
        None => None,
        Some(zp) => {
            let zt = b.dtype(&zp);
            if zt != qt {
                return Err(format!(
                    "zero point '{}' is {zt}, its tensor '{}' is {qt}",
                    tname(n, zi),
                    tname(n, qi)
                ));
            }
            Some(per_axis(b, n, zi, &zp, &b.shape(&q), axis)?)
        }
    };
    centred(b, &q, zp.as_ref(), name)
}

/// Parameter `p` (input `pi`) with one element, or one per index of
/// `axis` of a tensor of shape `qs`, reshaped to broadcast over it.
fn per_axis(
    b: &mut B,
    n: &NodeCtx,
    pi: usize,
    p: &Val,
    qs: &[usize],
    axis: usize,
) -> Result<Val, String> {
    let ps = b.shape(p);
    let len: usize = ps.iter().product();
    if len == 1 && ps.len() <= 1 {
        return reshape(b, p, &[], n.name());
    }
    if axis >= qs.len() || ps != [qs[axis]] {
        return Err(format!(
            "'{}' has shape {ps:?}, needs one element or one per index of axis {axis} of {qs:?}",
            tname(n, pi)
        ));
    }
    let mut s = vec![1; qs.len()];
    s[axis] = qs[axis];
    reshape(b, p, &s, n.name())
}

/// A scale (input `si`) checked and reshaped like [`per_axis`], as f32.
fn scale_along(
    b: &mut B,
    n: &NodeCtx,
    si: usize,
    qs: &[usize],
    axis: usize,
) -> Result<Val, String> {
    let s = scale(b, n, si)?;
    per_axis(b, n, si, &s, qs, axis)
}

/// The axis a MatMul's per-row (a) or per-column (b) zero point applies
/// to: a's second-last, b's last.
fn matmul_axes(b: &B, n: &NodeCtx, ai: usize, bi: usize) -> Result<(usize, usize), String> {
    let (ar, br) = (b.shape(&n.input(ai)?).len(), b.shape(&n.input(bi)?).len());
    if ar == 0 || br == 0 {
        return Err("MatMul operands must have rank ≥ 1".into());
    }
    Ok((ar.saturating_sub(2), br - 1))
}

/// MatMulInteger: `(A − a_zp) · (B − b_zp)` in i32.
pub fn matmul_integer(b: &mut B, n: &NodeCtx) -> Lowering {
    let (aa, ba) = matmul_axes(b, n, 0, 1)?;
    let a = operand(b, n, 0, 2, aa)?;
    let w = operand(b, n, 1, 3, ba)?;
    Ok(vec![b.op(plain_matmul(), &[a, w], n.name())?])
}

fn plain_matmul() -> Op {
    Op::MatMul {
        trans_a: false,
        trans_b: false,
    }
}

/// ConvInteger: `conv(x − x_zp, w − w_zp)` in i32 (padding contributes 0
/// after the shift, i.e. pads with the zero point as ONNX specifies).
pub fn conv_integer(b: &mut B, n: &NodeCtx) -> Lowering {
    let attrs = conv_attrs(b, n, 1)?;
    let x = operand(b, n, 0, 2, 0)?;
    let w = operand(b, n, 1, 3, 0)?;
    Ok(vec![b.op(Op::Conv(attrs), &[x, w], n.name())?])
}

/// The output type of a QLinear op: its zero point's (input `zi`).
fn output_type(b: &B, n: &NodeCtx, zi: usize) -> Result<DType, String> {
    let zp = n.input(zi)?;
    quantised_type(b.dtype(&zp), &format!("zero point '{}'", tname(n, zi)))
}

/// The output zero point (input `zi`), one element.
fn output_zero_point(b: &mut B, n: &NodeCtx, zi: usize) -> Result<Val, String> {
    let zp = n.input(zi)?;
    per_axis(b, n, zi, &zp, &[], 0)
}

/// The real multiplier `(s1 · s2) / sy` computed in the scales' type,
/// then as f32.
fn multiplier(b: &mut B, s1: &Val, s2: &Val, sy: &Val, name: &str) -> Result<Val, String> {
    let m = bin(b, Op::Mul, s1, s2, name)?;
    let m = bin(b, Op::Div, &m, sy, name)?;
    to_f32(b, &m, name)
}

/// Checks that the scales of one op share a float type.
fn same_scale_type(b: &B, n: &NodeCtx, scales: &[usize]) -> Result<(), String> {
    let first = b.dtype(&n.input(scales[0])?);
    for &i in &scales[1..] {
        let dt = b.dtype(&n.input(i)?);
        if dt != first {
            return Err(format!(
                "scale '{}' is {dt}, scale '{}' is {first}",
                tname(n, i),
                tname(n, scales[0])
            ));
        }
    }
    Ok(())
}

/// QLinearMatMul: the i32 product of the centred operands, requantised.
pub fn qlinear_matmul(b: &mut B, n: &NodeCtx) -> Lowering {
    let name = n.name();
    same_scale_type(b, n, &[1, 4, 6])?;
    let (aa, ba) = matmul_axes(b, n, 0, 3)?;
    let (qa, qb) = (b.shape(&n.input(0)?), b.shape(&n.input(3)?));
    let a = operand(b, n, 0, 2, aa)?;
    let w = operand(b, n, 3, 5, ba)?;
    let sa = scale_along(b, n, 1, &qa, aa)?;
    let sb = scale_along(b, n, 4, &qb, ba)?;
    let sy = scale_along(b, n, 6, &[], 0)?;
    let to = output_type(b, n, 7)?;
    let zy = output_zero_point(b, n, 7)?;
    let acc = b.op(plain_matmul(), &[a, w], name)?;
    let m = multiplier(b, &sa, &sb, &sy, name)?;
    let acc = to_f32(b, &acc, name)?;
    let y = bin(b, Op::Mul, &acc, &m, name)?;
    Ok(vec![requantize(b, &y, Some(&zy), to, name)?])
}

/// QLinearConv: the i32 convolution of the centred operands plus the i32
/// bias, requantised (per-output-channel weight scales and zero points).
pub fn qlinear_conv(b: &mut B, n: &NodeCtx) -> Lowering {
    let name = n.name();
    same_scale_type(b, n, &[1, 4, 6])?;
    let attrs = conv_attrs(b, n, 3)?;
    let ws = b.shape(&n.input(3)?);
    let x = operand(b, n, 0, 2, 0)?;
    let w = operand(b, n, 3, 5, 0)?;
    let sx = scale_along(b, n, 1, &[], 0)?;
    // One weight scale per output channel, broadcast over [N, M, spatial..].
    let mut out_shape = vec![1; ws.len()];
    out_shape[1] = ws[0];
    let sw = scale_along(b, n, 4, &out_shape, 1)?;
    let sy = scale_along(b, n, 6, &[], 0)?;
    let to = output_type(b, n, 7)?;
    let zy = output_zero_point(b, n, 7)?;
    let mut inputs = vec![x, w];
    if let Some(bias) = n.opt_input(8) {
        if b.dtype(&bias) != DType::I32 {
            return Err(format!(
                "bias '{}' is {}, needs int32",
                tname(n, 8),
                b.dtype(&bias)
            ));
        }
        inputs.push(bias);
    }
    let acc = b.op(Op::Conv(attrs), &inputs, name)?;
    let m = multiplier(b, &sx, &sw, &sy, name)?;
    let acc = to_f32(b, &acc, name)?;
    let y = bin(b, Op::Mul, &acc, &m, name)?;
    Ok(vec![requantize(b, &y, Some(&zy), to, name)?])
}

/// com.microsoft QLinearAdd / QLinearMul: `A, sa, za, B, sb, zb, sc, zc`.
/// Add: `(A − za)·(sa/sc) + (B − zb)·(sb/sc)`; Mul: `(A − za)·(B − zb)·
/// (sa·sb/sc)`; requantised with `zc` (per-tensor parameters).
pub fn qlinear_binary(b: &mut B, n: &NodeCtx) -> Lowering {
    let name = n.name();
    same_scale_type(b, n, &[1, 4, 6])?;
    let a = operand(b, n, 0, 2, 0)?;
    let c = operand(b, n, 3, 5, 0)?;
    let sa = scale_along(b, n, 1, &[], 0)?;
    let sb = scale_along(b, n, 4, &[], 0)?;
    let sc = scale_along(b, n, 6, &[], 0)?;
    let to = output_type(b, n, 7)?;
    let zc = output_zero_point(b, n, 7)?;
    let (a, c) = (to_f32(b, &a, name)?, to_f32(b, &c, name)?);
    let y = if n.node.op_type == "QLinearAdd" {
        let ra = bin(b, Op::Div, &sa, &sc, name)?;
        let rb = bin(b, Op::Div, &sb, &sc, name)?;
        let (ra, rb) = (to_f32(b, &ra, name)?, to_f32(b, &rb, name)?);
        let pa = bin(b, Op::Mul, &a, &ra, name)?;
        let pb = bin(b, Op::Mul, &c, &rb, name)?;
        bin(b, Op::Add, &pa, &pb, name)?
    } else {
        let m = multiplier(b, &sa, &sb, &sc, name)?;
        let p = bin(b, Op::Mul, &a, &c, name)?;
        bin(b, Op::Mul, &p, &m, name)?
    };
    Ok(vec![requantize(b, &y, Some(&zc), to, name)?])
}

/// com.microsoft QLinearGlobalAveragePool (`channels_last` 0 or 1): the
/// i32 sum over the spatial axes, centred by `zp · count`, scaled by
/// `sx / (sy · count)` and requantised.
pub fn qlinear_global_average_pool(b: &mut B, n: &NodeCtx) -> Lowering {
    let name = n.name();
    same_scale_type(b, n, &[1, 3])?;
    let xs = b.shape(&n.input(0)?);
    if xs.len() < 3 {
        return Err(format!("x '{}' {xs:?} needs rank ≥ 3", tname(n, 0)));
    }
    let axes: Vec<usize> = if n.int("channels_last", 0) != 0 {
        (1..xs.len() - 1).collect()
    } else {
        (2..xs.len()).collect()
    };
    let count: usize = axes.iter().map(|&a| xs[a]).product();
    let x = operand(b, n, 0, 2, 0)?;
    let sum = b.op(
        Op::ReduceSum {
            axes,
            keep_dims: true,
        },
        &[x],
        name,
    )?;
    let sx = scale_along(b, n, 1, &[], 0)?;
    let sy = scale_along(b, n, 3, &[], 0)?;
    let to = output_type(b, n, 4)?;
    let zy = output_zero_point(b, n, 4)?;
    let m = bin(b, Op::Div, &sx, &sy, name)?;
    let m = to_f32(b, &m, name)?;
    let k = b.f32(count as f32);
    let m = bin(b, Op::Div, &m, &k, name)?;
    let sum = to_f32(b, &sum, name)?;
    let y = bin(b, Op::Mul, &sum, &m, name)?;
    Ok(vec![requantize(b, &y, Some(&zy), to, name)?])
}

/// A positive integer attribute that must be present.
fn required(n: &NodeCtx, attr: &str) -> Result<usize, String> {
    let v = n.int(attr, 0);
    usize::try_from(v)
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("attribute {attr} = {v} must be a positive integer"))
}

/// com.microsoft MatMulNBits: `A · dequant(B)ᵀ (+ bias)` with B's `bits`
/// (4 or 8) unsigned integers packed along K in blocks of `block_size`,
/// one scale (and zero point, default `2^(bits−1)`) per block. B stays
/// packed in the graph (a uint4/uint8 constant `[N, blocks, block_size]`,
/// the same bytes); its dequantisation is a node, not a folded f32
/// weight. `g_idx` (act-order) is not supported. With `accuracy_level =
/// 4` (int8 compute allowed) A is first quantised to int8 in the same
/// blocks ([`int8_blocks`]), as onnxruntime's int8 path does.
pub fn matmul_nbits(b: &mut B, n: &NodeCtx) -> Lowering {
    let name = n.name();
    let (k, nn, bits, block) = (
        required(n, "K")?,
        required(n, "N")?,
        required(n, "bits")?,
        required(n, "block_size")?,
    );
    if bits != 4 && bits != 8 {
        return Err(format!("bits = {bits} is not supported (4 or 8)"));
    }
    if block < 16 || !block.is_power_of_two() {
        return Err(format!("block_size = {block} must be a power of two ≥ 16"));
    }
    if n.opt_input(4).is_some() {
        return Err(format!(
            "g_idx '{}' (act-order) is not supported",
            tname(n, 4)
        ));
    }
    let a = n.input(0)?;
    let (at, as_) = (b.dtype(&a), b.shape(&a));
    if !at.is_float() || as_.last() != Some(&k) {
        return Err(format!(
            "A '{}' is {at}{as_:?}; needs a float type and K = {k} as its last axis",
            tname(n, 0)
        ));
    }
    let int8_compute = match n.int("accuracy_level", 0) {
        0..=3 => false,
        4 => at == DType::F32,
        v => return Err(format!("accuracy_level = {v} is not 0–4")),
    };
    let blocks = k.div_ceil(block);
    let blob = block
        .checked_mul(bits)
        .ok_or_else(|| format!("block_size = {block} overflows"))?
        / 8;
    let packed = n
        .const_input(1)
        .map_err(|e| format!("B '{}': {e}", tname(n, 1)))?
        .ok_or_else(|| format!("missing B '{}'", tname(n, 1)))?;
    if packed.dtype != DType::U8 || packed.shape != [nn, blocks, blob] {
        return Err(format!(
            "B '{}' is {}{:?}; K = {k}, N = {nn}, bits = {bits}, block_size = {block} need \
             u8{:?}",
            tname(n, 1),
            packed.dtype,
            packed.shape,
            [nn, blocks, blob]
        ));
    }
    let qt = if bits == 4 { DType::U4 } else { DType::U8 };
    let q = Val::konst(Tensor {
        dtype: qt,
        shape: vec![nn, blocks, block],
        storage: packed.storage.clone(),
    });
    let s = checked_scale(b, n, 2, false)?;
    if b.dtype(&s) != at || b.shape(&s).iter().product::<usize>() != nn * blocks {
        return Err(format!(
            "scales '{}' are {}{:?}; need {at} with N·blocks = {} elements",
            tname(n, 2),
            b.dtype(&s),
            b.shape(&s),
            nn * blocks
        ));
    }
    let s = reshape(b, &s, &[nn, blocks, 1], name)?;
    let zp = match n.opt_input(3) {
        None => b.scalar(DType::F32, f64::from(1u32 << (bits - 1)))?,
        Some(z) => nbits_zero_points(b, n, &z, nn, blocks, bits)?,
    };
    let w = dequant(b, &q, Some(&zp), &s, name)?;
    let w = reshape(b, &w, &[nn, blocks * block], name)?;
    let w = slice_axis(b, &w, 1, 0, 1, k, name)?;
    let w = if at == DType::F32 {
        w
    } else {
        un(b, Op::Cast { to: at }, &w, name)?
    };
    let a = if int8_compute {
        int8_blocks(b, &a, block, name)?
    } else {
        a
    };
    let mut y = b.op(
        Op::MatMul {
            trans_a: false,
            trans_b: true,
        },
        &[a, w],
        name,
    )?;
    if let Some(bias) = n.opt_input(5) {
        if b.dtype(&bias) != at || b.shape(&bias) != [nn] {
            return Err(format!(
                "bias '{}' is {}{:?}, needs {at}[{nn}]",
                tname(n, 5),
                b.dtype(&bias),
                b.shape(&bias)
            ));
        }
        y = bin(b, Op::Add, &y, &bias, name)?;
    }
    Ok(vec![y])
}

/// `a` (f32, K last) quantised to int8 and back in blocks of `block` along
/// K: per block the scale `s = max |a| / 127` (1 for an all-zero block),
/// `q = Quantize(a, s)` (round half to even) and `q · s`. The CPU backend
/// recognises the chain and computes the products on the int8 values.
fn int8_blocks(b: &mut B, a: &Val, block: usize, name: &str) -> Result<Val, String> {
    let shape = b.shape(a);
    let last = shape.len() - 1;
    let k = shape[last];
    let blocks = k.div_ceil(block);
    let padded = pad_to_blocks(b, a, last, block, name)?;
    let mut split = shape[..last].to_vec();
    split.extend([blocks, block]);
    let x = reshape(b, &padded, &split, name)?;
    let minus = b.f32(-1.0);
    let neg = bin(b, Op::Mul, &x, &minus, name)?;
    let abs = bin(b, Op::Max, &x, &neg, name)?;
    let top = Op::ReduceMax {
        axes: vec![last + 1],
        keep_dims: true,
    };
    let top = un(b, top, &abs, name)?;
    let levels = b.f32(127.0);
    let s = bin(b, Op::Div, &top, &levels, name)?;
    let (zero, one) = (b.f32(0.0), b.f32(1.0));
    let empty = bin(b, Op::Equal, &s, &zero, name)?;
    let s = b.op(Op::Where, &[empty, one, s], name)?;
    let zp = Val::konst(Tensor::from_bytes(DType::I8, &[], vec![0]));
    let q = b.op(Op::Quantize { to: DType::I8 }, &[x, s.clone(), zp], name)?;
    let y = dequant(b, &q, None, &s, name)?;
    let mut joined = shape[..last].to_vec();
    joined.push(blocks * block);
    let y = reshape(b, &y, &joined, name)?;
    slice_axis(b, &y, last, 0, 1, k, name)
}

/// MatMulNBits' zero points: a uint8 constant, `bits` wide values packed
/// along the blocks of each row (`[N, ceil(blocks·bits/8)]`), unpacked at
/// compile time to f32 `[N, blocks, 1]` (they are small).
fn nbits_zero_points(
    b: &mut B,
    n: &NodeCtx,
    z: &Val,
    nn: usize,
    blocks: usize,
    bits: usize,
) -> Result<Val, String> {
    let name = tname(n, 3);
    let Some(t) = z.as_const() else {
        return Err(format!("zero points '{name}' must be a constant"));
    };
    let per_row = (blocks * bits).div_ceil(8);
    if t.dtype != DType::U8 || t.len() != nn * per_row {
        return Err(format!(
            "zero points '{name}' are {}{:?}; need uint8 with N·ceil(blocks·bits/8) = {} \
             elements",
            t.dtype,
            t.shape,
            nn * per_row
        ));
    }
    let bytes = t.to_u8_vec().map_err(|e| e.to_string())?;
    let values: Vec<f32> = bytes
        .chunks(per_row)
        .flat_map(|row| {
            (0..blocks).map(move |j| {
                let v = if bits == 8 {
                    row[j]
                } else {
                    (row[j / 2] >> (4 * (j % 2))) & 0xF
                };
                f32::from(v)
            })
        })
        .collect();
    b.check_alloc("MatMulNBits zero points", &[nn, blocks, 1], DType::F32)?;
    Ok(Val::konst(Tensor::from_f32(&[nn, blocks, 1], &values)))
}

/// com.microsoft QGemm: `alpha · (A − za)ᵀ?·(B − zb)ᵀ? + C` with C an
/// int32 bias on the same scale as the product (`alpha·sa·sb`), computed
/// as an i32 accumulator; requantised with `y_scale`/`y_zero_point` when
/// given, else the real result in the scales' float type. B's zero points
/// and scales may be per output column.
pub fn qgemm(b: &mut B, n: &NodeCtx) -> Lowering {
    let name = n.name();
    same_scale_type(b, n, &[1, 4])?;
    let (ta, tb) = (n.int("transA", 0) != 0, n.int("transB", 0) != 0);
    let (qa, qb) = (b.shape(&n.input(0)?), b.shape(&n.input(3)?));
    if qa.len() != 2 || qb.len() != 2 {
        return Err(format!("A {qa:?} and B {qb:?} must be matrices"));
    }
    // The axis of B that indexes output columns.
    let b_cols = if tb { 0 } else { 1 };
    let a = operand(b, n, 0, 2, 0)?;
    let w = operand(b, n, 3, 5, b_cols)?;
    let (m, cols) = (qa[usize::from(ta)], qb[b_cols]);
    let sa = scale_along(b, n, 1, &[], 0)?;
    let sb = scale_along(b, n, 4, &[m, cols], 1)?;
    let mut acc = b.op(
        Op::MatMul {
            trans_a: ta,
            trans_b: tb,
        },
        &[a, w],
        name,
    )?;
    if let Some(c) = n.opt_input(6) {
        if b.dtype(&c) != DType::I32 {
            return Err(format!(
                "C '{}' is {}, needs int32",
                tname(n, 6),
                b.dtype(&c)
            ));
        }
        acc = bin(b, Op::Add, &acc, &c, name)?;
    }
    let st = b.dtype(&sa);
    let alpha = b.scalar(st, f64::from(n.float("alpha", 1.0)))?;
    let m1 = bin(b, Op::Mul, &alpha, &sa, name)?;
    let real = bin(b, Op::Mul, &m1, &sb, name)?;
    let acc = to_f32(b, &acc, name)?;
    match n.opt_input(7) {
        None => {
            let real = to_f32(b, &real, name)?;
            let y = bin(b, Op::Mul, &acc, &real, name)?;
            Ok(vec![if st == DType::F32 {
                y
            } else {
                un(b, Op::Cast { to: st }, &y, name)?
            }])
        }
        Some(_) => {
            same_scale_type(b, n, &[1, 7])?;
            let sy = scale_along(b, n, 7, &[], 0)?;
            let mult = bin(b, Op::Div, &real, &sy, name)?;
            let mult = to_f32(b, &mult, name)?;
            let y = bin(b, Op::Mul, &acc, &mult, name)?;
            let to = output_type(b, n, 8)?;
            let zy = output_zero_point(b, n, 8)?;
            Ok(vec![requantize(b, &y, Some(&zy), to, name)?])
        }
    }
}
