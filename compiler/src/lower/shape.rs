//! Shape computations and data movement: Shape, Reshape and its relatives,
//! Concat/Split/Slice/Gather/Transpose/Tile/Pad, Constant, Range.
//!
//! Every shape-valued input must fold to a constant (which it does once the
//! input shapes are bound); the resulting IR ops carry static attributes.

use m4c_ir::op::{PadMode, SliceAxis};
use m4c_ir::{broadcast_shapes, DType, Op, Tensor};

use super::builder::Val;
use super::ctx::{axes, axis, dims, need_rank, Lowering, NodeCtx, B};

/// Reshape to a static shape, skipping no-op reshapes.
pub fn reshape(b: &mut B, x: &Val, shape: &[usize], name: &str) -> Result<Val, String> {
    if b.shape(x) == shape {
        return Ok(x.clone());
    }
    b.op(
        Op::Reshape {
            shape: shape.to_vec(),
        },
        std::slice::from_ref(x),
        name,
    )
}

/// Slices `x` along one axis: `len` elements from `start` with `step`.
pub fn slice_axis(
    b: &mut B,
    x: &Val,
    ax: usize,
    start: usize,
    step: i64,
    len: usize,
    name: &str,
) -> Result<Val, String> {
    let s = b.shape(x);
    if ax >= s.len() {
        return Err(format!("axis {ax} out of range for rank {}", s.len()));
    }
    let mut axes: Vec<SliceAxis> = s
        .iter()
        .map(|&n| SliceAxis {
            start: 0,
            step: 1,
            len: n,
        })
        .collect();
    axes[ax] = SliceAxis {
        start: if len == 0 { 0 } else { start },
        step,
        len,
    };
    if axes
        .iter()
        .zip(&s)
        .all(|(a, &n)| a.start == 0 && a.step == 1 && a.len == n)
    {
        return Ok(x.clone());
    }
    b.op(Op::Slice { axes }, std::slice::from_ref(x), name)
}

/// Transposes unless `perm` is the identity.
pub fn transpose(b: &mut B, x: &Val, perm: &[usize], name: &str) -> Result<Val, String> {
    if perm.iter().enumerate().all(|(i, &p)| i == p) {
        return Ok(x.clone());
    }
    b.op(
        Op::Transpose {
            perm: perm.to_vec(),
        },
        std::slice::from_ref(x),
        name,
    )
}

fn i64_vec(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&d| d as i64).collect()
}

/// Shape (with opset-15 start/end) and Size.
pub fn shape_of(b: &mut B, n: &NodeCtx) -> Lowering {
    let s = b.shape(&n.input(0)?);
    if n.node.op_type == "Size" {
        return Ok(vec![Val::konst(Tensor::from_i64(
            &[],
            &[s.iter().product::<usize>() as i64],
        ))]);
    }
    let r = s.len() as i64;
    let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let (lo, hi) = (clampi(n.int("start", 0)), clampi(n.int("end", r)));
    let dims = if lo < hi { i64_vec(&s[lo..hi]) } else { vec![] };
    Ok(vec![Val::konst(Tensor::from_i64(&[dims.len()], &dims))])
}

/// Reshape with ONNX's 0 (copy) and -1 (infer) entries.
pub fn reshape_node(b: &mut B, n: &NodeCtx) -> Lowering {
    let x = n.input(0)?;
    let s = b.shape(&x);
    let spec = n
        .const_ints(1)?
        .or_else(|| n.ints("shape"))
        .ok_or("missing shape")?;
    let allow_zero = n.int("allowzero", 0) != 0;
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        out.push(match d {
            0 if !allow_zero => *s.get(i).ok_or("0 in shape beyond the input rank")?,
            -1 if infer.is_none() => {
                infer = Some(i);
                1
            }
            d if d >= 0 => d as usize,
            d => return Err(format!("bad shape entry {d}")),
        });
    }
    let total: usize = s.iter().product();
    let known = out
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("shape {spec:?} overflows"))?;
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("cannot infer -1 reshaping {s:?} to {spec:?}"));
        }
        out[i] = total / known;
    }
    Ok(vec![reshape(b, &x, &out, n.name())?])
}

/// Flatten to 2-D at `axis`.
pub fn flatten(b: &mut B, n: &NodeCtx) -> Lowering {
    let x = n.input(0)?;
    let s = b.shape(&x);
    let (r, raw) = (s.len() as i64, n.int("axis", 1));
    let a = if raw < 0 { raw + r } else { raw };
    if !(0..=r).contains(&a) {
        return Err(format!("axis {raw} out of range for rank {r}"));
    }
    let a = a as usize;
    let shape = [s[..a].iter().product(), s[a..].iter().product()];
    Ok(vec![reshape(b, &x, &shape, n.name())?])
}

/// Squeeze and Unsqueeze (axes as attribute before opset 13, input after).
pub fn squeeze(b: &mut B, n: &NodeCtx) -> Lowering {
    let x = n.input(0)?;
    let s = b.shape(&x);
    let list = n.ints_attr_or_input("axes", 1)?;
    let out: Vec<usize> = if n.node.op_type == "Squeeze" {
        let drop = match list {
            Some(l) => axes(&l, s.len())?,
            None => (0..s.len()).filter(|&i| s[i] == 1).collect(),
        };
        if let Some(&bad) = drop.iter().find(|&&a| s[a] != 1) {
            return Err(format!("cannot squeeze axis {bad} of size {}", s[bad]));
        }
        s.iter()
            .enumerate()
            .filter(|(i, _)| !drop.contains(i))
            .map(|(_, &d)| d)
            .collect()
    } else {
        let list = list.ok_or("Unsqueeze needs axes")?;
        let rank = s.len() + list.len();
        let ins = axes(&list, rank)?;
        if ins.len() != list.len() {
            return Err(format!("axes {list:?} has a repeated axis"));
        }
        let mut it = s.iter();
        (0..rank)
            .map(|i| {
                if ins.contains(&i) {
                    1
                } else {
                    it.next().copied().unwrap_or(1) // unreachable: rank = |s| + |ins|
                }
            })
            .collect()
    };
    Ok(vec![reshape(b, &x, &out, n.name())?])
}

/// Expand to `broadcast(x.shape, shape)`.
pub fn expand(b: &mut B, n: &NodeCtx) -> Lowering {
    let x = n.input(0)?;
    let s = b.shape(&x);
    let want = dims("shape", &n.const_ints(1)?.ok_or("missing shape")?)?;
    let out =
        broadcast_shapes(&s, &want).ok_or_else(|| format!("cannot expand {s:?} to {want:?}"))?;
    if out == s {
        return Ok(vec![x]);
    }
    Ok(vec![b.op(Op::Expand { shape: out }, &[x], n.name())?])
}

/// ConstantOfShape: a constant filled with `value` (default f32 zero).
pub fn constant_of_shape(b: &mut B, n: &NodeCtx) -> Lowering {
    let shape = dims("shape", &n.const_ints(0)?.ok_or("missing shape")?)?;
    let value = n
        .tensor_attr("value")?
        .unwrap_or_else(|| Tensor::from_f32(&[1], &[0.0]));
    let bytes = value.bytes().map_err(|e| e.to_string())?;
    if value.len() != 1 {
        return Err("value must have one element".into());
    }
    let scalar = Val::konst(Tensor::from_bytes(value.dtype, &[], bytes.to_vec()));
    Ok(vec![b.op(Op::Expand { shape }, &[scalar], n.name())?])
}

/// Constant (all value attribute forms but sparse ones).
pub fn constant(_b: &mut B, n: &NodeCtx) -> Lowering {
    let t = if let Some(t) = n.tensor_attr("value")? {
        t
    } else if n.has("value_float") {
        Tensor::from_f32(&[], &[n.float("value_float", 0.0)])
    } else if let Some(v) = n.floats("value_floats") {
        Tensor::from_f32(&[v.len()], &v)
    } else if n.has("value_int") {
        Tensor::from_i64(&[], &[n.int("value_int", 0)])
    } else if let Some(v) = n.ints("value_ints") {
        Tensor::from_i64(&[v.len()], &v)
    } else {
        return Err("unsupported Constant value form".into());
    };
    Ok(vec![Val::konst(t)])
}

/// Range over constant scalars; the element count is checked against the
/// memory budget before anything is made.
pub fn range(b: &mut B, n: &NodeCtx) -> Lowering {
    let get = |i: usize| -> Result<Tensor, String> {
        n.const_input(i)?
            .ok_or_else(|| format!("missing input {i}"))
    };
    let (start, limit, delta) = (get(0)?, get(1)?, get(2)?);
    let count = |span: f64, d: f64| -> Result<usize, String> {
        let c = (span / d).ceil().max(0.0);
        if !c.is_finite() || d == 0.0 {
            return Err(format!("delta {d} gives no finite element count"));
        }
        let c = if c >= usize::MAX as f64 {
            usize::MAX
        } else {
            c as usize
        };
        b.check_alloc("Range", &[c], start.dtype)?;
        Ok(c)
    };
    let t = match start.dtype {
        DType::F32 => {
            let f = |t: &Tensor| scalar_of(t.to_f32_vec().map_err(|e| e.to_string())?);
            let (s, l, d) = (f(&start)?, f(&limit)?, f(&delta)?);
            let count = count(f64::from(l) - f64::from(s), f64::from(d))?;
            Tensor::from_f32(
                &[count],
                &(0..count).map(|i| s + i as f32 * d).collect::<Vec<_>>(),
            )
        }
        DType::I64 | DType::I32 => {
            let f = |t: &Tensor| scalar_of(t.to_index_vec().map_err(|e| e.to_string())?);
            let (s, l, d) = (f(&start)?, f(&limit)?, f(&delta)?);
            let count = count((i128::from(l) - i128::from(s)) as f64, d as f64)?;
            let vals: Vec<i64> = (0..count as i64)
                .map(|i| s.wrapping_add(i.wrapping_mul(d)))
                .collect();
            if start.dtype == DType::I64 {
                Tensor::from_i64(&[count], &vals)
            } else {
                Tensor::from_i32(
                    &[count],
                    &vals.iter().map(|&v| v as i32).collect::<Vec<_>>(),
                )
            }
        }
        other => return Err(format!("Range over {other} is not supported")),
    };
    Ok(vec![Val::konst(t)])
}

/// The single element of a scalar input (start, limit, delta...).
fn scalar_of<T: Copy>(v: Vec<T>) -> Result<T, String> {
    match v[..] {
        [x] => Ok(x),
        _ => Err(format!("needs a scalar, got {} elements", v.len())),
    }
}

/// Concat (zero-sized inputs are dropped, as ONNX allows them).
pub fn concat(b: &mut B, n: &NodeCtx) -> Lowering {
    let inputs: Vec<Val> = n.inputs.iter().flatten().cloned().collect();
    let first = inputs.first().ok_or("needs inputs")?;
    let a = axis(n.int("axis", 0), b.shape(first).len())?;
    let live: Vec<Val> = inputs
        .iter()
        .filter(|v| b.shape(v).iter().product::<usize>() > 0)
        .cloned()
        .collect();
    match live.len() {
        0 => Ok(vec![first.clone()]),
        1 => Ok(live),
        _ => Ok(vec![b.op(Op::Concat { axis: a }, &live, n.name())?]),
    }
}

/// Split into slices (sizes from attribute, input, `num_outputs` or even).
pub fn split(b: &mut B, n: &NodeCtx) -> Lowering {
    let x = n.input(0)?;
    let s = b.shape(&x);
    need_rank("input", &s, 1)?;
    let a = axis(n.int("axis", 0), s.len())?;
    let parts = n.node.output.len();
    let sizes: Vec<usize> = match n.ints_attr_or_input("split", 1)? {
        Some(v) => dims("split", &v)?,
        None => {
            let k = n.int("num_outputs", parts as i64);
            let k = usize::try_from(k)
                .ok()
                .filter(|&k| k >= 1 && k == parts)
                .ok_or_else(|| format!("num_outputs {k} differs from the {parts} outputs"))?;
            let chunk = s[a].div_ceil(k.max(1));
            (0..k)
                .map(|i| chunk.min(s[a].saturating_sub(i * chunk)))
                .collect()
        }
    };
    if sizes.iter().try_fold(0usize, |acc, &d| acc.checked_add(d)) != Some(s[a]) {
        return Err(format!("split sizes {sizes:?} do not add up to {}", s[a]));
    }
    let mut start = 0;
    let mut outs = vec![];
    for (i, &len) in sizes.iter().enumerate() {
        let name = n.node.output.get(i).cloned().unwrap_or_default();
        outs.push(slice_axis(b, &x, a, start, 1, len, &name)?);
        start += len;
    }
    Ok(outs)
}

/// Normalises one ONNX slice range to (start, len) on an axis of size `d`.
pub fn normalize_slice(
    d: usize,
    start: i64,
    end: i64,
    step: i64,
) -> Result<(usize, usize), String> {
    if step == 0 {
        return Err("slice step is zero".into());
    }
    let d = d as i128;
    let fix = |v: i64| {
        let v = v as i128;
        if v < 0 {
            v + d
        } else {
            v
        }
    };
    let (s, e) = (fix(start), fix(end));
    let (s, len) = if step > 0 {
        let (s, e) = (s.clamp(0, d), e.clamp(0, d));
        (s, (e - s + step as i128 - 1).div_euclid(step as i128))
    } else {
        let (s, e) = (s.clamp(0, d - 1), e.clamp(-1, d - 1));
        (s, (s - e - step as i128 - 1).div_euclid(-(step as i128)))
    };
    Ok((s.max(0) as usize, len.max(0) as usize))
}

/// Slice (attributes before opset 10, inputs after).
pub fn slice(b: &mut B, n: &NodeCtx) -> Lowering {
    let x = n.input(0)?;
    let s = b.shape(&x);
    let (starts, ends, ax, steps) = if n.opset < 10 {
        (n.ints("starts"), n.ints("ends"), n.ints("axes"), None)
    } else {
        (
            n.const_ints(1)?,
            n.const_ints(2)?,
            n.const_ints(3)?,
            n.const_ints(4)?,
        )
    };
    let (starts, ends) = (starts.ok_or("missing starts")?, ends.ok_or("missing ends")?);
    let ax = ax.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || ax.len() != starts.len() || steps.len() != starts.len() {
        return Err("starts, ends, axes and steps differ in length".into());
    }
    if !starts.is_empty() {
        need_rank("data", &s, 1)?;
    }
    let mut axes_out: Vec<SliceAxis> = s
        .iter()
        .map(|&d| SliceAxis {
            start: 0,
            step: 1,
            len: d,
        })
        .collect();
    for i in 0..starts.len() {
        let a = axis(ax[i], s.len())?;
        let (start, len) = normalize_slice(s[a], starts[i], ends[i], steps[i])?;
        axes_out[a] = SliceAxis {
            start: if len == 0 { 0 } else { start },
            step: steps[i],
            len,
        };
    }
    if axes_out
        .iter()
        .zip(&s)
        .all(|(a, &d)| a.start == 0 && a.step == 1 && a.len == d)
    {
        return Ok(vec![x]);
    }
    Ok(vec![b.op(Op::Slice { axes: axes_out }, &[x], n.name())?])
}

/// Gather (negative constant indices are normalised at compile time).
pub fn gather(b: &mut B, n: &NodeCtx) -> Lowering {
    let x = n.input(0)?;
    let s = b.shape(&x);
    need_rank("data", &s, 1)?;
    let a = axis(n.int("axis", 0), s.len())?;
    let mut idx = n.input(1)?;
    if let Some(t) = idx.as_const() {
        let vals = t.to_index_vec().map_err(|e| e.to_string())?;
        let d = s[a] as i64;
        let fixed = vals
            .iter()
            .map(|&i| {
                if (-d..d).contains(&i) {
                    Ok(if i < 0 { i + d } else { i })
                } else {
                    Err(format!("index {i} out of range for axis of {d}"))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        idx = Val::konst(Tensor::from_i64(&t.shape, &fixed));
    }
    Ok(vec![b.op(Op::Gather { axis: a }, &[x, idx], n.name())?])
}

/// Transpose (default: reverse the axes).
pub fn transpose_node(b: &mut B, n: &NodeCtx) -> Lowering {
    let x = n.input(0)?;
    let r = b.shape(&x).len();
    let perm = match n.ints("perm") {
        Some(p) => {
            let perm = p
                .iter()
                .map(|&a| axis(a, r))
                .collect::<Result<Vec<_>, _>>()?;
            let mut sorted = perm.clone();
            sorted.sort_unstable();
            if sorted != (0..r).collect::<Vec<_>>() {
                return Err(format!("perm {p:?} is not a permutation of the {r} axes"));
            }
            perm
        }
        None => (0..r).rev().collect(),
    };
    Ok(vec![transpose(b, &x, &perm, n.name())?])
}

/// Tile as reshape → expand → reshape.
pub fn tile(b: &mut B, n: &NodeCtx) -> Lowering {
    let x = n.input(0)?;
    let s = b.shape(&x);
    let reps = dims("repeats", &n.const_ints(1)?.ok_or("missing repeats")?)?;
    if reps.len() != s.len() {
        return Err(format!("repeats {reps:?} must match the rank of {s:?}"));
    }
    let name = n.name();
    let inter: Vec<usize> = s.iter().flat_map(|&d| [1, d]).collect();
    let big: Vec<usize> = s.iter().zip(&reps).flat_map(|(&d, &r)| [r, d]).collect();
    b.check_alloc("Tile", &big, b.dtype(&x))?;
    let out: Vec<usize> = s.iter().zip(&reps).map(|(&d, &r)| d * r).collect();
    let y = reshape(b, &x, &inter, name)?;
    let y = if big == inter {
        y
    } else {
        b.op(Op::Expand { shape: big }, &[y], name)?
    };
    Ok(vec![reshape(b, &y, &out, name)?])
}

/// Pad; negative pads crop first.
pub fn pad(b: &mut B, n: &NodeCtx) -> Lowering {
    let x = n.input(0)?;
    let s = b.shape(&x);
    let r = s.len();
    let name = n.name();
    let (raw, value) = if n.opset < 11 {
        (
            n.ints("pads").ok_or("missing pads")?,
            n.float("value", 0.0) as f64,
        )
    } else {
        let v = match n.const_input(2)? {
            None => 0.0,
            Some(t) if t.is_empty() => 0.0,
            Some(t) => {
                let v = m4c_ops::Value::from_tensor(&t).map_err(|e| e.to_string())?;
                let f = m4c_ops::eval_op(&Op::Cast { to: DType::F32 }, &[&v])
                    .map_err(|e| e.to_string())?;
                f.to_tensor().to_f32_vec().map_err(|e| e.to_string())?[0] as f64
            }
        };
        (n.const_ints(1)?.ok_or("missing pads")?, v)
    };
    let ax = match n.const_ints(3)? {
        Some(a) => a
            .iter()
            .map(|&a| axis(a, r))
            .collect::<Result<Vec<_>, _>>()?,
        None => (0..r).collect(),
    };
    if raw.len() != 2 * ax.len() {
        return Err(format!("{} pads for {} axes", raw.len(), ax.len()));
    }
    let mut pads = vec![0i64; 2 * r];
    for (k, &a) in ax.iter().enumerate() {
        pads[a] = raw[k];
        pads[a + r] = raw[k + ax.len()];
    }
    let mode = match n.string("mode", "constant").as_str() {
        "constant" => PadMode::Constant(value),
        "reflect" => PadMode::Reflect,
        "edge" => PadMode::Edge,
        other => return Err(format!("pad mode '{other}' is not supported")),
    };
    Ok(vec![pad_signed(b, &x, &pads, mode, name)?])
}

/// Pads with signed amounts (begin per axis, then end): negative entries
/// crop with a slice, positive ones pad.
pub fn pad_signed(
    b: &mut B,
    x: &Val,
    pads: &[i64],
    mode: PadMode,
    name: &str,
) -> Result<Val, String> {
    let r = b.shape(x).len();
    if pads.len() != 2 * r {
        return Err(format!("{} pads for rank {r}", pads.len()));
    }
    let mut y = x.clone();
    for a in 0..r {
        let (lo, hi) = (
            pads[a].min(0).unsigned_abs() as usize,
            pads[a + r].min(0).unsigned_abs() as usize,
        );
        let crop = lo.saturating_add(hi);
        if crop > 0 {
            let d = b.shape(&y)[a];
            y = slice_axis(b, &y, a, lo.min(d), 1, d.saturating_sub(crop), name)?;
        }
    }
    let pos: Vec<usize> = pads.iter().map(|&p| p.max(0) as usize).collect();
    if pos.iter().all(|&p| p == 0) {
        return Ok(y);
    }
    let out = b
        .shape(&y)
        .iter()
        .enumerate()
        .map(|(a, &d)| {
            d.checked_add(pos[a])
                .and_then(|v| v.checked_add(pos[a + r]))
        })
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| format!("pads {pads:?} overflow"))?;
    b.check_alloc("Pad", &out, b.dtype(&y))?;
    b.op(Op::Pad { pads: pos, mode }, &[y], name)
}

/// DepthToSpace / SpaceToDepth as reshape → transpose → reshape.
pub fn depth_space(b: &mut B, n: &NodeCtx) -> Lowering {
    let x = n.input(0)?;
    let s = b.shape(&x);
    let raw = n.int("blocksize", 0);
    let k = usize::try_from(raw)
        .ok()
        .filter(|&k| k >= 1 && k.checked_mul(k).is_some())
        .ok_or_else(|| format!("blocksize {raw} must be a positive size"))?;
    let [bn, c, h, w] = s[..] else {
        return Err(format!("needs a 4-D input, got {s:?}"));
    };
    let name = n.name();
    let (inter, perm, out) = if n.node.op_type == "DepthToSpace" {
        if c % (k * k) != 0 || h.checked_mul(k).and(w.checked_mul(k)).is_none() {
            return Err(format!("channels {c} not divisible by blocksize² ({k}²)"));
        }
        if n.string("mode", "DCR") == "DCR" {
            (
                vec![bn, k, k, c / (k * k), h, w],
                vec![0, 3, 4, 1, 5, 2],
                vec![bn, c / (k * k), h * k, w * k],
            )
        } else {
            (
                vec![bn, c / (k * k), k, k, h, w],
                vec![0, 1, 4, 2, 5, 3],
                vec![bn, c / (k * k), h * k, w * k],
            )
        }
    } else {
        if h % k != 0 || w % k != 0 || c.checked_mul(k * k).is_none() {
            return Err(format!(
                "spatial size {h}×{w} not divisible by blocksize {k}"
            ));
        }
        let perm = if n.string("mode", "DCR") == "CRD" {
            vec![0, 1, 3, 5, 2, 4]
        } else {
            vec![0, 3, 5, 1, 2, 4]
        };
        (
            vec![bn, c, h / k, k, w / k, k],
            perm,
            vec![bn, c * k * k, h / k, w / k],
        )
    };
    let y = reshape(b, &x, &inter, name)?;
    let y = transpose(b, &y, &perm, name)?;
    Ok(vec![reshape(b, &y, &out, name)?])
}

/// Identity, Dropout (inference: identity; the optional mask is all true).
pub fn identity(b: &mut B, n: &NodeCtx) -> Lowering {
    let x = n.input(0)?;
    if n.node.op_type == "Dropout" && n.opt_input(2).is_some() {
        let training = n.const_ints(2)?.is_some_and(|v| v.iter().any(|&t| t != 0));
        let ratio = n
            .const_floats(1)
            .ok()
            .flatten()
            .and_then(|r| r.first().copied());
        if training && ratio != Some(0.0) {
            return Err("training-mode Dropout (random) is not supported".into());
        }
    }
    let mut outs = vec![x.clone()];
    if n.node.op_type == "Dropout" && n.node.output.len() > 1 {
        let s = b.shape(&x);
        outs.push(Val::konst(Tensor::from_bool(
            &s,
            &vec![true; s.iter().product()],
        )));
    }
    Ok(outs)
}

/// GatherND as one Gather over the flattened leading axes, with the linear
/// index computed from the index tuples (and the batch offset).
pub fn gather_nd(b: &mut B, n: &NodeCtx) -> Lowering {
    let name = n.name();
    let (data, mut idx) = (n.input(0)?, n.input(1)?);
    let (ds, is) = (b.shape(&data), b.shape(&idx));
    let bd = n.int("batch_dims", 0).max(0) as usize;
    let k = *is.last().ok_or("indices must have rank ≥ 1")?;
    if k == 0 || bd + k > ds.len() || is.len() <= bd || is[..bd] != ds[..bd] {
        return Err(format!(
            "indices {is:?} do not fit data {ds:?} with batch_dims {bd}"
        ));
    }
    if b.dtype(&idx) != DType::I64 {
        idx = b.op(Op::Cast { to: DType::I64 }, &[idx], name)?;
    }
    let tuple_shape = &is[..is.len() - 1];
    let mut linear: Option<Val> = None;
    let mut cols = vec![];
    for j in 0..k {
        let dim = ds[bd + j] as i64;
        let col = slice_axis(b, &idx, is.len() - 1, j, 1, 1, name)?;
        let col = reshape(b, &col, tuple_shape, name)?;
        let zero = Val::konst(Tensor::from_i64(&[], &[0]));
        let is_neg = b.op(Op::Less, &[col.clone(), zero], name)?;
        let wrapped = b.op(
            Op::Add,
            &[col.clone(), Val::konst(Tensor::from_i64(&[], &[dim]))],
            name,
        )?;
        let col = b.op(Op::Where, &[is_neg, wrapped, col], name)?;
        cols.push((col.clone(), dim));
        let stride: usize = ds[bd + j + 1..bd + k].iter().product();
        let term = b.op(
            Op::Mul,
            &[col, Val::konst(Tensor::from_i64(&[], &[stride as i64]))],
            name,
        )?;
        linear = Some(match linear {
            None => term,
            Some(acc) => b.op(Op::Add, &[acc, term], name)?,
        });
    }
    let mut linear = linear.ok_or("GatherND needs index tuples of length ≥ 1")?;
    if bd > 0 {
        let block: usize = ds[bd..bd + k].iter().product();
        let batches: usize = is[..bd].iter().product();
        let mut shape = is[..bd].to_vec();
        shape.resize(tuple_shape.len(), 1);
        let offsets: Vec<i64> = (0..batches as i64).map(|i| i * block as i64).collect();
        linear = b.op(
            Op::Add,
            &[linear, Val::konst(Tensor::from_i64(&shape, &offsets))],
            name,
        )?;
    }
    let mut flat = vec![ds[..bd + k].iter().product()];
    flat.extend(&ds[bd + k..]);
    for (col, dim) in &cols {
        linear = reject_out_of_range(b, linear, col, *dim, flat[0] as i64, name)?;
    }
    let data = reshape(b, &data, &flat, name)?;
    Ok(vec![b.op(Op::Gather { axis: 0 }, &[data, linear], name)?])
}

/// Trilu: the upper (or lower) triangle of the last two axes, kept through
/// a compile-time mask: `Where(mask, x, 0)`.
pub fn trilu(b: &mut B, n: &NodeCtx) -> Lowering {
    let x = n.input(0)?;
    let s = b.shape(&x);
    if s.len() < 2 {
        return Err("input must have rank ≥ 2".into());
    }
    let k = n
        .const_ints(1)?
        .and_then(|v| v.first().copied())
        .unwrap_or(0);
    let upper = n.int("upper", 1) != 0;
    let (rows, cols) = (s[s.len() - 2], s[s.len() - 1]);
    let mask: Vec<bool> = (0..rows as i64)
        .flat_map(|i| (0..cols as i64).map(move |j| if upper { j - i >= k } else { j - i <= k }))
        .collect();
    let mask = Val::konst(Tensor::from_bool(&[rows, cols], &mask));
    let zero = b.scalar(b.dtype(&x), 0.0)?;
    Ok(vec![b.op(Op::Where, &[mask, x, zero], n.name())?])
}

/// GatherElements as one Gather over the flattened data: the linear index
/// is the (wrapped) index times the axis stride plus a compile-time offset
/// for the position along every other axis.
pub fn gather_elements(b: &mut B, n: &NodeCtx) -> Lowering {
    let name = n.name();
    let (data, mut idx) = (n.input(0)?, n.input(1)?);
    let (ds, is) = (b.shape(&data), b.shape(&idx));
    need_rank("data", &ds, 1)?;
    let a = axis(n.int("axis", 0), ds.len())?;
    if is.len() != ds.len()
        || is
            .iter()
            .zip(&ds)
            .enumerate()
            .any(|(d, (i, s))| d != a && i > s)
    {
        return Err(format!("indices {is:?} do not fit data {ds:?}"));
    }
    if b.dtype(&idx) != DType::I64 {
        idx = b.op(Op::Cast { to: DType::I64 }, &[idx], name)?;
    }
    let strides: Vec<usize> = (0..ds.len())
        .map(|d| ds[d + 1..].iter().product())
        .collect();
    let count: usize = is.iter().product();
    let offsets: Vec<i64> = (0..count)
        .map(|flat| {
            let mut rest = flat;
            let mut off = 0;
            for d in (0..is.len()).rev() {
                let p = rest % is[d];
                rest /= is[d];
                if d != a {
                    off += p * strides[d];
                }
            }
            off as i64
        })
        .collect();
    let dim = ds[a] as i64;
    let zero = Val::konst(Tensor::from_i64(&[], &[0]));
    let is_neg = b.op(Op::Less, &[idx.clone(), zero], name)?;
    let wrapped = b.op(
        Op::Add,
        &[idx.clone(), Val::konst(Tensor::from_i64(&[], &[dim]))],
        name,
    )?;
    let idx = b.op(Op::Where, &[is_neg, wrapped, idx], name)?;
    let scaled = b.op(
        Op::Mul,
        &[
            idx.clone(),
            Val::konst(Tensor::from_i64(&[], &[strides[a] as i64])),
        ],
        name,
    )?;
    let linear = b.op(
        Op::Add,
        &[scaled, Val::konst(Tensor::from_i64(&is, &offsets))],
        name,
    )?;
    let total: usize = ds.iter().product();
    let linear = reject_out_of_range(b, linear, &idx, dim, total as i64, name)?;
    let flat = reshape(b, &data, &[total], name)?;
    Ok(vec![b.op(Op::Gather { axis: 0 }, &[flat, linear], name)?])
}

/// `linear` where the wrapped index `col` lies in `[0, dim)`, else
/// `past_end`, an index the Gather that follows rejects: an out-of-range
/// GatherND / GatherElements index is then an error on every engine (as
/// ONNX says) instead of a read of a neighbouring element.
fn reject_out_of_range(
    b: &mut B,
    linear: Val,
    col: &Val,
    dim: i64,
    past_end: i64,
    name: &str,
) -> Result<Val, String> {
    let end = Val::konst(Tensor::from_i64(&[], &[past_end]));
    let zero = Val::konst(Tensor::from_i64(&[], &[0]));
    let below = b.op(Op::Less, &[col.clone(), zero], name)?;
    let linear = b.op(Op::Where, &[below, end.clone(), linear], name)?;
    let dim = Val::konst(Tensor::from_i64(&[], &[dim]));
    let inside = b.op(Op::Less, &[col.clone(), dim], name)?;
    b.op(Op::Where, &[inside, linear, end], name)
}
