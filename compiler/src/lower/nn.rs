//! Neural-network ONNX operators: MatMul/Gemm, convolutions, normalisation,
//! pooling, softmax.

use m4c_ir::op::{ConvAttrs, NormKind, PadMode, PoolAttrs};
use m4c_ir::{Op, ValueDef};

use super::builder::Val;
use super::ctx::{axis, dims, need_rank, Lowering, NodeCtx, B};
use super::elementwise::{bin, scale, un};
use super::shape::{pad_signed, reshape, slice_axis, transpose};

/// MatMul as it is.
pub fn matmul(b: &mut B, n: &NodeCtx) -> Lowering {
    Ok(vec![b.op(
        Op::MatMul {
            trans_a: false,
            trans_b: false,
        },
        &[n.input(0)?, n.input(1)?],
        n.name(),
    )?])
}

/// Gemm: `alpha·op(A)·op(B) + beta·C` with transposes as MatMul flags.
pub fn gemm(b: &mut B, n: &NodeCtx) -> Lowering {
    let name = n.name();
    let op = Op::MatMul {
        trans_a: n.int("transA", 0) != 0,
        trans_b: n.int("transB", 0) != 0,
    };
    let mut y = b.op(op, &[n.input(0)?, n.input(1)?], name)?;
    let alpha = n.float("alpha", 1.0);
    if alpha != 1.0 {
        y = scale(b, &y, alpha as f64, name)?;
    }
    if let Some(c) = n.opt_input(2) {
        let beta = n.float("beta", 1.0);
        if beta != 0.0 {
            let c = if beta == 1.0 {
                c
            } else {
                scale(b, &c, beta as f64, name)?
            };
            y = bin(b, Op::Add, &y, &c, name)?;
        }
    }
    Ok(vec![y])
}

/// Explicit begin/end pads for a sliding window, from `pads` or `auto_pad`.
fn window_pads(
    n: &NodeCtx,
    input: &[usize],
    spans: &[usize],
    strides: &[usize],
) -> Result<Vec<usize>, String> {
    let sp = input.len();
    match n.string("auto_pad", "NOTSET").as_str() {
        "NOTSET" => {
            let p = n.ints("pads").unwrap_or_else(|| vec![0; 2 * sp]);
            if p.len() != 2 * sp {
                return Err(format!("pads {p:?} needs {} entries", 2 * sp));
            }
            dims("pads", &p)
        }
        "VALID" => Ok(vec![0; 2 * sp]),
        mode @ ("SAME_UPPER" | "SAME_LOWER") => {
            let mut pads = vec![0; 2 * sp];
            for i in 0..sp {
                let out = input[i].div_ceil(strides[i]);
                let total = (out.saturating_sub(1) * strides[i])
                    .checked_add(spans[i])
                    .ok_or("kernel span overflows")?
                    .saturating_sub(input[i]);
                let small = total / 2;
                let (lo, hi) = if mode == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                };
                pads[i] = lo;
                pads[i + sp] = hi;
            }
            Ok(pads)
        }
        other => Err(format!("unknown auto_pad '{other}'")),
    }
}

/// Per-spatial-axis attribute (strides, dilations): one positive entry per
/// axis, all 1 by default.
fn spatial_attr(n: &NodeCtx, name: &str, sp: usize) -> Result<Vec<usize>, String> {
    let v = n.ints(name).unwrap_or_else(|| vec![1; sp]);
    if v.len() != sp || v.iter().any(|&x| x < 1) {
        return Err(format!("{name} {v:?} must be {sp} positive entries"));
    }
    Ok(v.iter().map(|&x| x as usize).collect())
}

/// Extent covered by a kernel of `k` taps `d` apart (`d·(k−1)+1`).
fn span(k: usize, d: usize) -> Result<usize, String> {
    if k == 0 {
        return Err("the kernel has an empty spatial axis".into());
    }
    d.checked_mul(k - 1)
        .and_then(|v| v.checked_add(1))
        .ok_or_else(|| format!("kernel extent {k} with dilation {d} overflows"))
}

/// Geometry of a sliding-window node (Conv, pools), checked against the
/// ONNX spec and the input before use.
struct Window {
    strides: Vec<usize>,
    dilations: Vec<usize>,
    pads: Vec<usize>,
    spans: Vec<usize>,
}

/// The window of node `n` with `kernel` over the input of shape `xs`
/// (`[N, C, spatial..]`): positive strides and dilations, non-negative pads,
/// one entry per spatial axis, a kernel that fits the padded input on every
/// axis, and a padded input within the memory budget (the interpreter
/// materialises it, so every engine refuses what one cannot hold).
fn window(b: &B, n: &NodeCtx, xs: &[usize], kernel: &[usize]) -> Result<Window, String> {
    let input = &xs[2..];
    let sp = input.len();
    let strides = spatial_attr(n, "strides", sp)?;
    let dilations = spatial_attr(n, "dilations", sp)?;
    let spans = kernel
        .iter()
        .zip(&dilations)
        .map(|(&k, &d)| span(k, d))
        .collect::<Result<Vec<_>, _>>()?;
    let pads = window_pads(n, input, &spans, &strides)?;
    let mut padded_shape = xs[..2].to_vec();
    for i in 0..sp {
        let padded = input[i]
            .checked_add(pads[i])
            .and_then(|v| v.checked_add(pads[sp + i]))
            .ok_or_else(|| format!("pads {pads:?} overflow"))?;
        if padded < spans[i] {
            return Err(format!(
                "kernel extent {} is larger than the padded input ({padded}) on spatial axis {i}",
                spans[i]
            ));
        }
        padded_shape.push(padded);
    }
    b.check_alloc("padded input", &padded_shape, b.dtype(&n.input(0)?))?;
    Ok(Window {
        strides,
        dilations,
        pads,
        spans,
    })
}

/// Input and weight shapes of Conv / ConvTranspose checked against the
/// spec: input `[N, C, spatial..]`, a weight of the same rank with
/// non-empty spatial axes (equal to `kernel_shape` when given), `group ≥ 1`
/// dividing the channels. Returns (input shape, weight shape, group).
fn conv_shapes(
    b: &B,
    n: &NodeCtx,
    weight: usize,
    transpose: bool,
) -> Result<(Vec<usize>, Vec<usize>, usize), String> {
    let (xs, ws) = (b.shape(&n.input(0)?), b.shape(&n.input(weight)?));
    need_rank("input", &xs, 3)?;
    if ws.len() != xs.len() {
        return Err(format!(
            "weight {ws:?} has rank {}, the input {xs:?} rank {}",
            ws.len(),
            xs.len()
        ));
    }
    if let Some(ks) = n.ints("kernel_shape") {
        if dims("kernel_shape", &ks)? != ws[2..] {
            return Err(format!(
                "kernel_shape {ks:?} does not match the weight {ws:?}"
            ));
        }
    }
    let g = n.int("group", 1);
    let group = usize::try_from(g)
        .ok()
        .filter(|&g| g >= 1)
        .ok_or_else(|| format!("group {g} must be ≥ 1"))?;
    let fits = if transpose {
        ws[0] == xs[1] && xs[1] % group == 0
    } else {
        ws[1].checked_mul(group) == Some(xs[1]) && ws[0] % group == 0
    };
    if !fits {
        return Err(format!(
            "input {xs:?} and weight {ws:?} do not fit group {group}"
        ));
    }
    Ok((xs, ws, group))
}

/// The attributes of a convolution node whose input is input 0 and whose
/// weight is input `weight` (Conv, ConvInteger: 1; QLinearConv: 3),
/// checked against the spec and the shapes.
pub fn conv_attrs(b: &B, n: &NodeCtx, weight: usize) -> Result<ConvAttrs, String> {
    let (xs, ws, group) = conv_shapes(b, n, weight, false)?;
    let w = window(b, n, &xs, &ws[2..])?;
    Ok(ConvAttrs {
        strides: w.strides,
        pads: w.pads,
        dilations: w.dilations,
        group,
    })
}

/// Conv (bias optional, auto_pad handled).
pub fn conv(b: &mut B, n: &NodeCtx) -> Lowering {
    let attrs = conv_attrs(b, n, 1)?;
    let mut inputs = vec![n.input(0)?, n.input(1)?];
    inputs.extend(n.opt_input(2));
    Ok(vec![b.op(Op::Conv(attrs), &inputs, n.name())?])
}

/// ConvTranspose as zero insertion + padding + a stride-1 convolution with
/// the kernel flipped and its channel axes swapped (folded at compile time).
pub fn conv_transpose(b: &mut B, n: &NodeCtx) -> Lowering {
    let name = n.name();
    if n.has("output_shape") || n.string("auto_pad", "NOTSET") != "NOTSET" {
        return Err("output_shape / auto_pad on ConvTranspose are not supported".into());
    }
    let (xs, ws, g) = conv_shapes(b, n, 1, true)?;
    let (x, w) = (n.input(0)?, n.input(1)?);
    let sp = xs.len() - 2;
    let k = &ws[2..];
    let strides = spatial_attr(n, "strides", sp)?;
    let dil = spatial_attr(n, "dilations", sp)?;
    let out_pad = dims(
        "output_padding",
        &n.ints("output_padding").unwrap_or_else(|| vec![0; sp]),
    )?;
    let pads = dims("pads", &n.ints("pads").unwrap_or_else(|| vec![0; 2 * sp]))?;
    if pads.len() != 2 * sp || out_pad.len() != sp {
        return Err(format!(
            "pads {pads:?} / output_padding {out_pad:?} need {} / {sp} entries",
            2 * sp
        ));
    }
    if let Some(i) = (0..sp).find(|&i| out_pad[i] >= strides[i].max(dil[i])) {
        return Err(format!(
            "output_padding {out_pad:?} must be smaller than the stride or dilation on axis {i}"
        ));
    }
    if let Some(i) = (0..sp).find(|&i| xs[2 + i] == 0) {
        return Err(format!("input {xs:?} is empty on spatial axis {i}"));
    }
    // Full padding per axis: the kernel extent minus one.
    let full = k
        .iter()
        .zip(&dil)
        .map(|(&ki, &d)| span(ki, d).and_then(|s| i64::try_from(s - 1).map_err(|e| e.to_string())))
        .collect::<Result<Vec<i64>, _>>()?;
    // 1. Insert stride-1 zeros between input elements on every spatial axis.
    let mut y = x;
    for (i, &s) in strides.iter().enumerate() {
        if s == 1 {
            continue;
        }
        let ax = 2 + i;
        let cur = b.shape(&y);
        let mut split = cur.clone();
        split.insert(ax + 1, 1);
        y = reshape(b, &y, &split, name)?;
        let mut p = vec![0; 2 * split.len()];
        p[split.len() + ax + 1] = s - 1;
        let mut padded = split.clone();
        padded[ax + 1] = s;
        b.check_alloc("Pad", &padded, b.dtype(&y))?;
        y = b.op(
            Op::Pad {
                pads: p,
                mode: PadMode::Constant(0.0),
            },
            &[y],
            name,
        )?;
        let mut merged = cur.clone();
        merged[ax] = cur[ax].checked_mul(s).ok_or("stride overflows")?;
        y = reshape(b, &y, &merged, name)?;
        y = slice_axis(b, &y, ax, 0, 1, (cur[ax] - 1) * s + 1, name)?;
    }
    // 2. Full padding minus the requested crop.
    let r = sp + 2;
    let mut signed = vec![0i64; 2 * r];
    for i in 0..sp {
        let crop = |p: usize| i64::try_from(p).map_err(|e| e.to_string());
        signed[2 + i] = full[i] - crop(pads[i])?;
        signed[r + 2 + i] = full[i] - crop(pads[sp + i])? + crop(out_pad[i])?;
    }
    y = pad_signed(b, &y, &signed, PadMode::Constant(0.0), name)?;
    // 3. Kernel [Cin, Cout/g, k..] → [Cout, Cin/g, k..], spatially flipped.
    let (cin, cout_g) = (ws[0], ws[1]);
    let mut grouped = vec![g, cin / g, cout_g];
    grouped.extend(k);
    let mut wt = reshape(b, &w, &grouped, name)?;
    let mut perm = vec![0, 2, 1];
    perm.extend(3..grouped.len());
    wt = transpose(b, &wt, &perm, name)?;
    let mut kshape = vec![g * cout_g, cin / g];
    kshape.extend(k);
    wt = reshape(b, &wt, &kshape, name)?;
    for (i, &ki) in k.iter().enumerate() {
        wt = slice_axis(b, &wt, 2 + i, ki - 1, -1, ki, name)?;
    }
    let attrs = ConvAttrs {
        strides: vec![1; sp],
        pads: vec![0; 2 * sp],
        dilations: dil,
        group: g,
    };
    let mut inputs = vec![y, wt];
    inputs.extend(n.opt_input(2));
    Ok(vec![b.op(Op::Conv(attrs), &inputs, name)?])
}

/// Checks that the input has rank ≥ `min_rank` and that each input in
/// `params` (scale, bias, mean, variance) is a `[C]` vector for the input's
/// channel count `C`: the contract of the per-channel normalisations.
fn channel_params(b: &B, n: &NodeCtx, params: &[usize], min_rank: usize) -> Result<(), String> {
    let xs = b.shape(&n.input(0)?);
    need_rank("input", &xs, min_rank)?;
    for &i in params {
        let ps = b.shape(&n.input(i)?);
        if ps != [xs[1]] {
            return Err(format!(
                "input {i} is {ps:?}, must be [C] = [{}] for the input {xs:?}",
                xs[1]
            ));
        }
    }
    Ok(())
}

/// Reshapes a per-channel vector `[C]` to broadcast over `[N, C, spatial..]`.
fn per_channel(b: &mut B, v: &Val, rank: usize, name: &str) -> Result<Val, String> {
    let c = b.shape(v).iter().product();
    let mut s = vec![1; rank - 1];
    s[0] = c;
    reshape(b, v, &s, name)
}

/// BatchNormalization (inference). Folded into the producing Conv when the
/// Conv's weights are constants; otherwise a per-channel multiply-add.
pub fn batch_norm(b: &mut B, n: &NodeCtx) -> Lowering {
    if n.node.output.iter().skip(1).any(|o| !o.is_empty()) || n.int("training_mode", 0) != 0 {
        return Err("training-mode BatchNormalization is not supported".into());
    }
    let name = n.name();
    let x = n.input(0)?;
    channel_params(b, n, &[1, 2, 3, 4], 2)?;
    let eps = b.f32(n.float("epsilon", 1e-5));
    let var = bin(b, Op::Add, &n.input(4)?, &eps, name)?;
    let std = un(b, Op::Sqrt, &var, name)?;
    let a = bin(b, Op::Div, &n.input(1)?, &std, name)?;
    let ma = bin(b, Op::Mul, &n.input(3)?, &a, name)?;
    let c = bin(b, Op::Sub, &n.input(2)?, &ma, name)?;
    let rank = b.shape(&x).len();
    if let Some(folded) = fold_into_conv(b, &x, &a, &c, name)? {
        return Ok(vec![folded]);
    }
    let a = per_channel(b, &a, rank, name)?;
    let c = per_channel(b, &c, rank, name)?;
    let y = bin(b, Op::Mul, &x, &a, name)?;
    Ok(vec![bin(b, Op::Add, &y, &c, name)?])
}

/// `conv(x, W, bias)·a + c` as one Conv with `W·a` and `bias·a + c`, when W
/// and the affine factors are constants.
fn fold_into_conv(b: &mut B, x: &Val, a: &Val, c: &Val, name: &str) -> Result<Option<Val>, String> {
    let (Val::Value(id), Some(_), Some(_)) = (x, a.as_const(), c.as_const()) else {
        return Ok(None);
    };
    let ValueDef::Node(k) = b.g.value(*id).def else {
        return Ok(None);
    };
    let node = b.g.nodes[k].clone();
    let Op::Conv(attrs) = &node.op else {
        return Ok(None);
    };
    let Some(w) = b.g.constant(node.inputs[1]).cloned() else {
        return Ok(None);
    };
    let bias = match node.inputs.get(2) {
        None => None,
        Some(&bid) => match b.g.constant(bid) {
            Some(t) => Some(t.clone()),
            None => return Ok(None),
        },
    };
    let wv = Val::konst(w);
    let rank = b.shape(&wv).len();
    let a_col = per_channel(b, a, rank + 1, name)?;
    let new_w = bin(b, Op::Mul, &wv, &a_col, name)?;
    let new_bias = match bias {
        Some(t) => {
            let scaled = bin(b, Op::Mul, &Val::konst(t), a, name)?;
            bin(b, Op::Add, &scaled, c, name)?
        }
        None => c.clone(),
    };
    let input = Val::Value(node.inputs[0]);
    Ok(Some(b.op(
        Op::Conv(attrs.clone()),
        &[input, new_w, new_bias],
        name,
    )?))
}

/// LayerNormalization (opset 17) onto the IR's Norm.
pub fn layer_norm(b: &mut B, n: &NodeCtx) -> Lowering {
    if n.node.output.iter().skip(1).any(|o| !o.is_empty()) {
        return Err("the Mean / InvStdDev outputs are not supported".into());
    }
    let x = n.input(0)?;
    let a = axis(n.int("axis", -1), b.shape(&x).len())?;
    let mut inputs = vec![x, n.input(1)?];
    inputs.extend(n.opt_input(2));
    let op = Op::Norm {
        kind: NormKind::Layer,
        axis: a,
        epsilon: n.float("epsilon", 1e-5),
    };
    Ok(vec![b.op(op, &inputs, n.name())?])
}

/// RMSNormalization (opset 23) onto the IR's Norm.
pub fn rms_norm(b: &mut B, n: &NodeCtx) -> Lowering {
    let x = n.input(0)?;
    let a = axis(n.int("axis", -1), b.shape(&x).len())?;
    let op = Op::Norm {
        kind: NormKind::Rms,
        axis: a,
        epsilon: n.float("epsilon", 1e-5),
    };
    Ok(vec![b.op(op, &[x, n.input(1)?], n.name())?])
}

/// InstanceNormalization: Norm over the spatial axes, then a per-channel
/// scale and bias.
pub fn instance_norm(b: &mut B, n: &NodeCtx) -> Lowering {
    let name = n.name();
    let x = n.input(0)?;
    channel_params(b, n, &[1, 2], 3)?;
    let rank = b.shape(&x).len();
    let one = b.scalar(b.dtype(&x), 1.0)?;
    let op = Op::Norm {
        kind: NormKind::Layer,
        axis: 2,
        epsilon: n.float("epsilon", 1e-5),
    };
    let y = b.op(op, &[x, one], name)?;
    let s = per_channel(b, &n.input(1)?, rank, name)?;
    let c = per_channel(b, &n.input(2)?, rank, name)?;
    let y = bin(b, Op::Mul, &y, &s, name)?;
    Ok(vec![bin(b, Op::Add, &y, &c, name)?])
}

/// MaxPool / AveragePool; `ceil_mode` becomes extra end padding.
pub fn pool(b: &mut B, n: &NodeCtx) -> Lowering {
    if n.node.op_type == "MaxPool" && n.node.output.get(1).is_some_and(|o| !o.is_empty()) {
        return Err("the Indices output of MaxPool is not supported".into());
    }
    let x = n.input(0)?;
    let xs = b.shape(&x);
    need_rank("input", &xs, 3)?;
    let sp = xs.len() - 2;
    let kernel = dims(
        "kernel_shape",
        &n.ints("kernel_shape").ok_or("missing kernel_shape")?,
    )?;
    if kernel.len() != sp {
        return Err(format!(
            "kernel_shape {kernel:?} does not match the input {xs:?}"
        ));
    }
    let Window {
        strides,
        dilations,
        mut pads,
        spans,
    } = window(b, n, &xs, &kernel)?;
    if n.int("ceil_mode", 0) != 0 {
        // `window` checked that every span fits its padded axis.
        for i in 0..sp {
            let padded = xs[2 + i] + pads[i] + pads[sp + i];
            let mut out = (padded - spans[i]).div_ceil(strides[i]) + 1;
            if (out - 1) * strides[i] >= xs[2 + i] + pads[i] {
                out -= 1;
            }
            pads[sp + i] += ((out - 1) * strides[i] + spans[i]).saturating_sub(padded);
        }
    }
    let attrs = PoolAttrs {
        kernel,
        strides,
        pads,
        dilations,
    };
    let op = if n.node.op_type == "MaxPool" {
        Op::MaxPool(attrs)
    } else {
        Op::AvgPool {
            pool: attrs,
            count_include_pad: n.int("count_include_pad", 0) != 0,
        }
    };
    Ok(vec![b.op(op, &[x], n.name())?])
}

/// GlobalAveragePool / GlobalMaxPool as reductions over the spatial axes.
pub fn global_pool(b: &mut B, n: &NodeCtx) -> Lowering {
    let name = n.name();
    let x = n.input(0)?;
    let xs = b.shape(&x);
    need_rank("input", &xs, 3)?;
    let axes: Vec<usize> = (2..xs.len()).collect();
    if n.node.op_type == "GlobalMaxPool" {
        return Ok(vec![b.op(
            Op::ReduceMax {
                axes,
                keep_dims: true,
            },
            &[x],
            name,
        )?]);
    }
    let count: usize = xs[2..].iter().product();
    let s = b.op(
        Op::ReduceSum {
            axes,
            keep_dims: true,
        },
        &[x],
        name,
    )?;
    Ok(vec![scale(b, &s, 1.0 / count as f64, name)?])
}

/// Softmax and LogSoftmax (opset < 13 flattens to 2-D at `axis`).
pub fn softmax(b: &mut B, n: &NodeCtx) -> Lowering {
    let name = n.name();
    let x = n.input(0)?;
    let s = b.shape(&x);
    let default = if n.opset < 13 { 1 } else { -1 };
    let a = axis(n.int("axis", default), s.len())?;
    let (y, ax) = if n.opset < 13 && a + 1 != s.len() {
        let flat = [s[..a].iter().product(), s[a..].iter().product()];
        (reshape(b, &x, &flat, name)?, 1)
    } else {
        (x, a)
    };
    let out = if n.node.op_type == "LogSoftmax" {
        let m = b.op(
            Op::ReduceMax {
                axes: vec![ax],
                keep_dims: true,
            },
            std::slice::from_ref(&y),
            name,
        )?;
        let d = bin(b, Op::Sub, &y, &m, name)?;
        let e = un(b, Op::Exp, &d, name)?;
        let sum = b.op(
            Op::ReduceSum {
                axes: vec![ax],
                keep_dims: true,
            },
            &[e],
            name,
        )?;
        let lse = un(b, Op::Log, &sum, name)?;
        bin(b, Op::Sub, &d, &lse, name)?
    } else {
        b.op(Op::Softmax { axis: ax }, &[y], name)?
    };
    Ok(vec![reshape(b, &out, &s, name)?])
}
