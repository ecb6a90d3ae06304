//! Result-type inference for every operator.
//!
//! The builder calls this for each new node and the verifier re-runs it, so
//! a graph's recorded types are always the ones its operators imply.

use crate::{DType, Dim, IrError, Op, TensorType};

type R = Result<TensorType, IrError>;

/// Infers the result type of `op` applied to inputs of the given types.
pub fn infer_type(op: &Op, inputs: &[&TensorType]) -> R {
    let kind = op.kind();
    let name = kind.name();
    kind.check_arity(inputs.len())
        .map_err(|e| IrError::ty(name, e))?;
    let x = inputs[0];
    match op {
        Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Pow | Op::Max | Op::Min => {
            same_dtype(name, inputs)?;
            broadcast(name, x.dtype, inputs)
        }
        Op::Equal | Op::Less => {
            same_dtype(name, inputs)?;
            broadcast(name, DType::Bool, inputs)
        }
        Op::Where => {
            if x.dtype != DType::Bool {
                return Err(IrError::ty(name, "condition must be bool"));
            }
            same_dtype(name, &inputs[1..])?;
            broadcast(name, inputs[1].dtype, inputs)
        }
        Op::Exp
        | Op::Log
        | Op::Sqrt
        | Op::Erf
        | Op::Tanh
        | Op::Sigmoid
        | Op::Sin
        | Op::Cos
        | Op::Floor
        | Op::Gelu { .. } => {
            if !x.dtype.is_float() {
                return Err(IrError::ty(
                    name,
                    format!("needs a float input, got {}", x.dtype),
                ));
            }
            Ok(x.clone())
        }
        Op::Cast { to } => Ok(TensorType {
            dtype: *to,
            dims: x.dims.clone(),
        }),
        Op::Quantize { to } => {
            if !to.is_quantised() {
                return Err(IrError::ty(
                    name,
                    format!("quantises to int8, uint8, int4 or uint4, not {to}"),
                ));
            }
            float_only(name, x)?;
            same_dtype(name, &inputs[..2])?;
            let zp = inputs[2].dtype;
            if !(zp.is_quantised() || zp == DType::I32) {
                return Err(IrError::ty(
                    name,
                    format!("zero point must be an integer type, got {zp}"),
                ));
            }
            broadcast(name, *to, inputs)
        }
        Op::Softmax { axis } => {
            check_axis(name, *axis, x.rank())?;
            Ok(x.clone())
        }
        Op::Norm { kind, axis, .. } => {
            check_axis(name, *axis, x.rank())?;
            same_dtype(name, inputs)?;
            float_only(name, x)?;
            if *kind == crate::op::NormKind::Rms && inputs.len() == 3 {
                return Err(IrError::ty(name, "RMSNorm takes no bias"));
            }
            // scale and bias broadcast against the normalised trailing axes.
            if let Some(s) = x.static_shape() {
                let trailing = &s[*axis..];
                for p in &inputs[1..] {
                    let ps = shape(name, p)?;
                    if crate::broadcast_shapes(&ps, trailing).as_deref() != Some(trailing) {
                        return Err(IrError::ty(
                            name,
                            format!("{p} does not broadcast to the normalised shape {trailing:?}"),
                        ));
                    }
                }
            }
            Ok(x.clone())
        }
        Op::MatMul { trans_a, trans_b } => matmul(name, x, inputs[1], *trans_a, *trans_b),
        Op::Conv(c) => {
            let s = shape(name, x)?;
            let w = shape(name, inputs[1])?;
            same_dtype(name, inputs)?;
            // i32: the integer convolution of quantised models (ConvInteger,
            // QLinearConv), accumulating in i32.
            if x.dtype != DType::I32 {
                float_only(name, x)?;
            }
            let sp = s
                .len()
                .checked_sub(2)
                .ok_or_else(|| IrError::ty(name, "input rank < 3"))?;
            if w.len() != s.len() || c.group == 0 || s[1] != w[1] * c.group || w[0] % c.group != 0 {
                return Err(IrError::ty(
                    name,
                    format!("input {s:?} and weight {w:?} do not fit group {}", c.group),
                ));
            }
            if let Some(b) = inputs.get(2) {
                if shape(name, b)? != [w[0]] {
                    return Err(IrError::ty(name, "bias must be [M]"));
                }
            }
            let mut out = vec![s[0], w[0]];
            out.extend(window_dims(
                name,
                &s[2..],
                &w[2..],
                &c.strides,
                &c.pads,
                &c.dilations,
                sp,
            )?);
            Ok(TensorType::fixed(x.dtype, &out))
        }
        Op::MaxPool(p) | Op::AvgPool { pool: p, .. } => {
            let s = shape(name, x)?;
            if x.dtype == DType::Bool || (matches!(op, Op::AvgPool { .. }) && !x.dtype.is_float()) {
                return Err(IrError::ty(name, format!("not defined on {}", x.dtype)));
            }
            let sp = s
                .len()
                .checked_sub(2)
                .ok_or_else(|| IrError::ty(name, "input rank < 3"))?;
            let mut out = s[..2].to_vec();
            out.extend(window_dims(
                name,
                &s[2..],
                &p.kernel,
                &p.strides,
                &p.pads,
                &p.dilations,
                sp,
            )?);
            Ok(TensorType::fixed(x.dtype, &out))
        }
        Op::ReduceSum { axes, keep_dims } | Op::ReduceMax { axes, keep_dims } => {
            reduce(name, x, axes, *keep_dims, x.dtype)
        }
        Op::ArgMax {
            axis, keep_dims, ..
        } => reduce(name, x, &[*axis], *keep_dims, DType::I64),
        Op::Reshape { shape: to } => {
            let n = x
                .num_elements()
                .ok_or_else(|| IrError::ty(name, "needs a static input shape"))?;
            if n != to.iter().product::<usize>() {
                return Err(IrError::ty(name, format!("cannot reshape {x} to {to:?}")));
            }
            Ok(TensorType::fixed(x.dtype, to))
        }
        Op::Transpose { perm } => {
            let mut sorted = perm.clone();
            sorted.sort_unstable();
            if sorted != (0..x.rank()).collect::<Vec<_>>() {
                return Err(IrError::ty(
                    name,
                    format!("{perm:?} is not a permutation of rank {}", x.rank()),
                ));
            }
            Ok(TensorType {
                dtype: x.dtype,
                dims: perm.iter().map(|&p| x.dims[p].clone()).collect(),
            })
        }
        Op::Slice { axes } => {
            let s = shape(name, x)?;
            if axes.len() != s.len() {
                return Err(IrError::ty(name, "needs one entry per axis"));
            }
            for (a, &n) in axes.iter().zip(&s) {
                if a.len > 0 {
                    // The last index read, in i128 so that no stride or
                    // length a file can hold overflows it.
                    let last = a.start as i128 + a.step as i128 * (a.len as i128 - 1);
                    if a.start >= n || last < 0 || last >= n as i128 || a.step == 0 {
                        return Err(IrError::ty(
                            name,
                            format!("window {a:?} outside axis of {n}"),
                        ));
                    }
                }
            }
            Ok(TensorType::fixed(
                x.dtype,
                &axes.iter().map(|a| a.len).collect::<Vec<_>>(),
            ))
        }
        Op::Concat { axis } => {
            same_dtype(name, inputs)?;
            let first = shape(name, x)?;
            check_axis(name, *axis, first.len())?;
            let mut out = first.clone();
            out[*axis] = 0;
            for t in inputs {
                let s = shape(name, t)?;
                let fits = s.len() == first.len()
                    && s.iter()
                        .zip(&first)
                        .enumerate()
                        .all(|(i, (a, b))| i == *axis || a == b);
                if !fits {
                    return Err(IrError::ty(
                        name,
                        format!("{s:?} does not concatenate with {first:?}"),
                    ));
                }
                out[*axis] += s[*axis];
            }
            Ok(TensorType::fixed(x.dtype, &out))
        }
        Op::Gather { axis } => {
            let s = shape(name, x)?;
            let idx = shape(name, inputs[1])?;
            check_axis(name, *axis, s.len())?;
            if !matches!(inputs[1].dtype, DType::I64 | DType::I32) {
                return Err(IrError::ty(name, "indices must be i64 or i32"));
            }
            let mut out = s[..*axis].to_vec();
            out.extend(&idx);
            out.extend(&s[axis + 1..]);
            Ok(TensorType::fixed(x.dtype, &out))
        }
        Op::Expand { shape: to } => {
            let s = shape(name, x)?;
            match crate::broadcast_shapes(&s, to) {
                Some(b) if &b == to => Ok(TensorType::fixed(x.dtype, to)),
                _ => Err(IrError::ty(name, format!("cannot expand {s:?} to {to:?}"))),
            }
        }
        Op::Pad { pads, mode } => {
            let s = shape(name, x)?;
            if pads.len() != 2 * s.len() {
                return Err(IrError::ty(name, "needs begin and end pads for every axis"));
            }
            if *mode == crate::op::PadMode::Reflect
                && s.iter()
                    .enumerate()
                    .any(|(i, &n)| pads[i] >= n.max(1) || pads[i + s.len()] >= n.max(1))
            {
                return Err(IrError::ty(
                    name,
                    "reflect padding must be smaller than the axis",
                ));
            }
            let out: Vec<usize> = s
                .iter()
                .enumerate()
                .map(|(i, n)| n + pads[i] + pads[i + s.len()])
                .collect();
            Ok(TensorType::fixed(x.dtype, &out))
        }
        Op::Resize { scales, sizes, .. } => {
            let s = shape(name, x)?;
            if sizes.len() != s.len() || scales.len() != s.len() {
                return Err(IrError::ty(name, "needs a size and a scale per axis"));
            }
            if scales.iter().any(|&k| !(k > 0.0 && k.is_finite())) {
                return Err(IrError::ty(
                    name,
                    format!("scales {scales:?} must be positive"),
                ));
            }
            Ok(TensorType::fixed(x.dtype, sizes))
        }
    }
}

fn shape(op: &'static str, t: &TensorType) -> Result<Vec<usize>, IrError> {
    t.static_shape()
        .ok_or_else(|| IrError::ty(op, format!("needs a static shape, got {t}")))
}

fn float_only(op: &'static str, t: &TensorType) -> Result<(), IrError> {
    if t.dtype.is_float() {
        Ok(())
    } else {
        Err(IrError::ty(
            op,
            format!("needs a float input, got {}", t.dtype),
        ))
    }
}

fn check_axis(op: &'static str, axis: usize, rank: usize) -> Result<(), IrError> {
    if axis < rank {
        Ok(())
    } else {
        Err(IrError::ty(
            op,
            format!("axis {axis} out of range for rank {rank}"),
        ))
    }
}

fn same_dtype(op: &'static str, inputs: &[&TensorType]) -> Result<(), IrError> {
    match inputs.iter().find(|t| t.dtype != inputs[0].dtype) {
        None => Ok(()),
        Some(t) => Err(IrError::ty(
            op,
            format!("mixed element types {} and {}", inputs[0].dtype, t.dtype),
        )),
    }
}

/// Broadcasts dimension lists; equal symbolic dims broadcast with each other.
fn broadcast(op: &'static str, dtype: DType, inputs: &[&TensorType]) -> R {
    let rank = inputs.iter().map(|t| t.rank()).max().unwrap_or(0);
    let mut dims = vec![Dim::Fixed(1); rank];
    for t in inputs {
        let pad = rank - t.rank();
        for (i, d) in t.dims.iter().enumerate() {
            let slot = &mut dims[pad + i];
            *slot = match (&*slot, d) {
                (a, b) if a == b => a.clone(),
                (Dim::Fixed(1), b) => b.clone(),
                (a, Dim::Fixed(1)) => a.clone(),
                _ => {
                    let shapes: Vec<String> = inputs.iter().map(|t| t.to_string()).collect();
                    return Err(IrError::ty(
                        op,
                        format!("cannot broadcast {}", shapes.join(" with ")),
                    ));
                }
            };
        }
    }
    Ok(TensorType { dtype, dims })
}

fn matmul(name: &'static str, a: &TensorType, b: &TensorType, ta: bool, tb: bool) -> R {
    if a.dtype != b.dtype {
        return Err(IrError::ty(
            name,
            format!("mixed element types {} and {}", a.dtype, b.dtype),
        ));
    }
    let (mut sa, mut sb) = (shape(name, a)?, shape(name, b)?);
    if sa.is_empty() || sb.is_empty() {
        return Err(IrError::ty(name, "operands must have rank ≥ 1"));
    }
    let (a_vec, b_vec) = (sa.len() == 1, sb.len() == 1);
    if a_vec {
        sa.insert(0, 1);
    }
    if b_vec {
        sb.push(1);
    }
    let (ra, rb) = (sa.len(), sb.len());
    if ta {
        sa.swap(ra - 1, ra - 2);
    }
    if tb {
        sb.swap(rb - 1, rb - 2);
    }
    if sa[ra - 1] != sb[rb - 2] {
        return Err(IrError::ty(
            name,
            format!("inner dimensions differ: {a} × {b}"),
        ));
    }
    let batch = crate::broadcast_shapes(&sa[..ra - 2], &sb[..rb - 2]).ok_or_else(|| {
        IrError::ty(
            name,
            format!("batch dimensions of {a} and {b} do not broadcast"),
        )
    })?;
    let mut out = batch;
    if !a_vec {
        out.push(sa[ra - 2]);
    }
    if !b_vec {
        out.push(sb[rb - 1]);
    }
    Ok(TensorType::fixed(a.dtype, &out))
}

fn reduce(name: &'static str, x: &TensorType, axes: &[usize], keep: bool, dtype: DType) -> R {
    for &a in axes {
        check_axis(name, a, x.rank())?;
    }
    if axes.windows(2).any(|w| w[0] >= w[1]) {
        return Err(IrError::ty(
            name,
            format!("axes {axes:?} must be strictly increasing"),
        ));
    }
    let dims = x
        .dims
        .iter()
        .enumerate()
        .filter_map(|(i, d)| match (axes.contains(&i), keep) {
            (false, _) => Some(d.clone()),
            (true, true) => Some(Dim::Fixed(1)),
            (true, false) => None,
        })
        .collect();
    Ok(TensorType { dtype, dims })
}

/// Output extent of a sliding window along each spatial axis.
fn window_dims(
    name: &'static str,
    input: &[usize],
    kernel: &[usize],
    strides: &[usize],
    pads: &[usize],
    dilations: &[usize],
    sp: usize,
) -> Result<Vec<usize>, IrError> {
    if kernel.len() != sp || strides.len() != sp || dilations.len() != sp || pads.len() != 2 * sp {
        return Err(IrError::ty(
            name,
            format!("attributes must cover {sp} spatial axes"),
        ));
    }
    (0..sp)
        .map(|i| {
            let span = dilations[i] * (kernel[i].max(1) - 1) + 1;
            let padded = input[i] + pads[i] + pads[i + sp];
            if padded < span || strides[i] == 0 {
                return Err(IrError::ty(
                    name,
                    format!("window {span} larger than padded axis {padded}"),
                ));
            }
            Ok((padded - span) / strides[i] + 1)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{ConvAttrs, CoordMode, NormKind, ResizeMode};

    fn f32t(s: &[usize]) -> TensorType {
        TensorType::fixed(DType::F32, s)
    }

    /// Found by the `ir_text` fuzz target: a stride times a length beyond
    /// i64 overflowed while the window was checked.
    #[test]
    fn slice_windows_with_huge_strides_are_errors() {
        let x = f32t(&[2, 5]);
        let slice = |step: i64, len: usize| Op::Slice {
            axes: vec![
                crate::op::SliceAxis {
                    start: 1,
                    step: -1,
                    len: 2,
                },
                crate::op::SliceAxis {
                    start: 4,
                    step,
                    len,
                },
            ],
        };
        let err = infer_type(&slice(-2_999_999_999_999_999_999, 7), &[&x])
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside axis of 5"), "{err}");
        let err = infer_type(&slice(i64::MAX, usize::MAX), &[&x])
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside axis of 5"), "{err}");
        assert_eq!(infer_type(&slice(-2, 3), &[&x]).unwrap(), f32t(&[2, 3]));
    }

    #[test]
    fn norm_parameters_must_fit_the_normalised_axes() {
        let x = f32t(&[2, 3, 4]);
        let layer = Op::Norm {
            kind: NormKind::Layer,
            axis: 2,
            epsilon: 1e-5,
        };
        assert!(infer_type(&layer, &[&x, &f32t(&[4]), &f32t(&[4])]).is_ok());
        assert!(infer_type(&layer, &[&x, &f32t(&[]), &f32t(&[1])]).is_ok());
        let err = infer_type(&layer, &[&x, &f32t(&[3])])
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not broadcast"), "{err}");
        let rms = Op::Norm {
            kind: NormKind::Rms,
            axis: 2,
            epsilon: 1e-5,
        };
        assert!(infer_type(&rms, &[&x, &f32t(&[4]), &f32t(&[4])])
            .unwrap_err()
            .to_string()
            .contains("no bias"));
    }

    #[test]
    fn conv_takes_floats_and_i32_accumulators_only() {
        let conv = Op::Conv(ConvAttrs {
            strides: vec![1, 1],
            pads: vec![0; 4],
            dilations: vec![1, 1],
            group: 1,
        });
        let t = |d| TensorType::fixed(d, &[1, 1, 4, 4]);
        let w = |d| TensorType::fixed(d, &[1, 1, 1, 1]);
        assert!(infer_type(&conv, &[&t(DType::I8), &w(DType::I8)]).is_err());
        assert!(infer_type(&conv, &[&t(DType::I64), &w(DType::I64)]).is_err());
        assert_eq!(
            infer_type(&conv, &[&t(DType::I32), &w(DType::I32)]).unwrap(),
            t(DType::I32)
        );
    }

    #[test]
    fn quantize_types() {
        let q = |to| Op::Quantize { to };
        let x = f32t(&[2, 3]);
        let s = f32t(&[3]);
        let zp = TensorType::fixed(DType::U8, &[]);
        assert_eq!(
            infer_type(&q(DType::U8), &[&x, &s, &zp]).unwrap(),
            TensorType::fixed(DType::U8, &[2, 3])
        );
        assert!(infer_type(&q(DType::I32), &[&x, &s, &zp]).is_err());
        let f = TensorType::fixed(DType::F32, &[]);
        assert!(infer_type(&q(DType::I8), &[&x, &s, &f]).is_err());
        let i = TensorType::fixed(DType::I32, &[2, 3]);
        assert!(infer_type(&q(DType::I8), &[&i, &s, &zp]).is_err());
        assert!(infer_type(&q(DType::I8), &[&x, &f32t(&[2]), &zp]).is_err());
    }

    #[test]
    fn resize_scales_must_be_positive_and_reduce_axes_increasing() {
        let x = f32t(&[1, 2]);
        let bad = Op::Resize {
            mode: ResizeMode::Linear,
            coord: CoordMode::HalfPixel,
            scales: vec![1.0, 0.0],
            sizes: vec![1, 2],
        };
        assert!(infer_type(&bad, &[&x]).is_err());
        let dup = Op::ReduceSum {
            axes: vec![1, 1],
            keep_dims: true,
        };
        assert!(infer_type(&dup, &[&x]).is_err());
        let ok = Op::ReduceSum {
            axes: vec![0, 1],
            keep_dims: false,
        };
        assert_eq!(infer_type(&ok, &[&x]).unwrap(), f32t(&[]));
    }
}
