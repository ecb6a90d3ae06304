//! Data movement: Reshape, Transpose, Slice, Concat, Gather, Expand, Pad.
//! All are exact and work on every element type.

use m4c_ir::op::{PadMode, SliceAxis};
use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn, Slice};

use crate::budget;
use crate::elem::{same_dtype, with_elem, Elem, Scalar};
use crate::error::{OpsError, Result};
use crate::value::{map_array, Value};

fn shape_err(op: &'static str) -> impl Fn(ndarray::ShapeError) -> OpsError {
    move |e| OpsError::invalid(op, e.to_string())
}

/// Same elements in row-major order, new shape.
pub(crate) fn reshape(x: &Value, shape: &[usize]) -> Result<Value> {
    if x.len() != shape.iter().product::<usize>() {
        return Err(OpsError::invalid(
            "Reshape",
            format!("cannot reshape {:?} to {shape:?}", x.shape()),
        ));
    }
    Ok(
        map_array!(x, a => a.as_standard_layout().into_owned().into_shape_with_order(IxDyn(shape)).map_err(shape_err("Reshape"))),
    )
}

/// Axis permutation: output axis `i` is input axis `perm[i]`.
pub(crate) fn transpose(x: &Value, perm: &[usize]) -> Result<Value> {
    let mut sorted = perm.to_vec();
    sorted.sort_unstable();
    if sorted != (0..x.shape().len()).collect::<Vec<_>>() {
        return Err(OpsError::invalid(
            "Transpose",
            format!("{perm:?} is not a permutation of rank {}", x.shape().len()),
        ));
    }
    Ok(
        map_array!(x, a => Ok::<_, OpsError>(a.view().permuted_axes(IxDyn(perm)).as_standard_layout().into_owned())),
    )
}

/// A strided window on every axis (`len` elements from `start`, `step`
/// apart; negative steps walk backwards).
pub(crate) fn slice(x: &Value, axes: &[SliceAxis]) -> Result<Value> {
    let shape = x.shape();
    if axes.len() != shape.len() {
        return Err(OpsError::invalid(
            "Slice",
            format!("needs {} axis windows, got {}", shape.len(), axes.len()),
        ));
    }
    let mut windows = Vec::with_capacity(axes.len());
    for (a, &n) in axes.iter().zip(shape) {
        if a.len == 0 {
            windows.push(Slice::new(0, Some(0), 1));
            continue;
        }
        let last = a.start as i64 + a.step * (a.len as i64 - 1);
        if a.step == 0 || a.start >= n || last < 0 || last >= n as i64 {
            return Err(OpsError::invalid(
                "Slice",
                format!("window {a:?} outside axis of {n}"),
            ));
        }
        // ndarray walks a negative step backwards from the end of the range.
        let (lo, hi) = if a.step > 0 {
            (a.start as i64, last + 1)
        } else {
            (last, a.start as i64 + 1)
        };
        windows.push(Slice::new(lo as isize, Some(hi as isize), a.step as isize));
    }
    Ok(
        map_array!(x, a => Ok::<_, OpsError>(a.slice_each_axis(|ax| windows[ax.axis.index()]).to_owned())),
    )
}

/// Concatenation along `axis`; all inputs share the element type.
pub(crate) fn concat(inputs: &[&Value], axis: usize) -> Result<Value> {
    fn cat<T: Elem>(inputs: &[&Value], axis: usize) -> Result<Value> {
        let views = inputs
            .iter()
            .map(|v| v.array::<T>("Concat").map(|a| a.view()))
            .collect::<Result<Vec<ArrayViewD<T>>>>()?;
        let rank = views[0].ndim();
        if axis >= rank {
            return Err(OpsError::invalid(
                "Concat",
                format!("axis {axis} out of range for rank {rank}"),
            ));
        }
        let shapes: Vec<_> = views.iter().map(|v| v.shape().to_vec()).collect();
        let out = ndarray::concatenate(Axis(axis), &views).map_err(|_| {
            OpsError::invalid(
                "Concat",
                format!("shapes {shapes:?} do not concatenate on axis {axis}"),
            )
        })?;
        Ok(T::wrap(out))
    }
    if inputs.is_empty() {
        return Err(OpsError::invalid("Concat", "needs at least one input"));
    }
    let d = same_dtype("Concat", inputs)?;
    with_elem!(d, T => cat::<T>(inputs, axis), i4 => Err(OpsError::dtype("Concat", d)))
}

/// `data.take(indices, axis)`: negative indices count from the end, indices
/// outside `[-n, n)` are an error.
pub(crate) fn gather(data: &Value, indices: &Value, axis: usize) -> Result<Value> {
    let dshape = data.shape().to_vec();
    let n = *dshape.get(axis).ok_or_else(|| {
        OpsError::invalid(
            "Gather",
            format!("axis {axis} out of range for rank {}", dshape.len()),
        )
    })?;
    let raw: Vec<i64> = match indices {
        Value::I64(a) => a.iter().copied().collect(),
        Value::I32(a) => a.iter().map(|&i| i64::from(i)).collect(),
        other => {
            return Err(OpsError::invalid(
                "Gather",
                format!("indices must be i64 or i32, got {}", other.dtype()),
            ))
        }
    };
    let idx = raw
        .iter()
        .map(|&i| {
            let j = if i < 0 { i + n as i64 } else { i };
            usize::try_from(j).ok().filter(|&j| j < n).ok_or_else(|| {
                OpsError::invalid(
                    "Gather",
                    format!("index {i} out of range for axis {axis} of size {n}"),
                )
            })
        })
        .collect::<Result<Vec<usize>>>()?;
    let mut shape = dshape[..axis].to_vec();
    shape.extend(indices.shape());
    shape.extend(&dshape[axis + 1..]);
    budget::check("Gather", &shape, data.dtype().storage_bytes(1).max(1))?;
    Ok(
        map_array!(data, a => a.select(Axis(axis), &idx).as_standard_layout().into_owned().into_shape_with_order(IxDyn(&shape)).map_err(shape_err("Gather"))),
    )
}

/// Numpy broadcast to the static `shape` (which must be the broadcast of the
/// input's shape with itself).
pub(crate) fn expand(x: &Value, shape: &[usize]) -> Result<Value> {
    if m4c_ir::broadcast_shapes(x.shape(), shape).as_deref() != Some(shape) {
        return Err(OpsError::invalid(
            "Expand",
            format!("cannot expand {:?} to {shape:?}", x.shape()),
        ));
    }
    budget::check("Expand", shape, x.dtype().storage_bytes(1).max(1))?;
    let fail = || OpsError::invalid("Expand", "broadcast failed");
    Ok(map_array!(x, a => a.broadcast(IxDyn(shape)).map(|v| v.to_owned()).ok_or_else(fail)))
}

/// Padding with a constant, by reflection (mirror without the edge) or by
/// repeating the edge. `pads` = begin per axis, then end per axis.
pub(crate) fn pad(x: &Value, pads: &[usize], mode: PadMode) -> Result<Value> {
    let rank = x.shape().len();
    if pads.len() != 2 * rank {
        return Err(OpsError::invalid(
            "Pad",
            format!(
                "needs {} pads for rank {rank}, got {}",
                2 * rank,
                pads.len()
            ),
        ));
    }
    let out = x
        .shape()
        .iter()
        .enumerate()
        .map(|(i, &n)| budget::add3("Pad", n, pads[i], pads[i + rank]))
        .collect::<Result<Vec<_>>>()?;
    budget::check("Pad", &out, x.dtype().storage_bytes(1).max(1))?;
    match mode {
        PadMode::Constant(c) => Ok(map_array!(x, a => Ok::<_, OpsError>(pad_constant(a, pads, c)))),
        PadMode::Reflect | PadMode::Edge => {
            // Source index along each axis for every padded position.
            let maps = x
                .shape()
                .iter()
                .enumerate()
                .map(|(i, &n)| source_indices(n, pads[i], pads[i + rank], mode))
                .collect::<Result<Vec<_>>>()?;
            Ok(
                map_array!(x, a => Ok::<_, OpsError>(maps.iter().enumerate().fold(a.clone(), |acc, (i, m)| acc.select(Axis(i), m)))),
            )
        }
    }
}

fn pad_constant<T: Elem>(a: &ArrayD<T>, pads: &[usize], c: f64) -> ArrayD<T> {
    let rank = a.ndim();
    let shape: Vec<usize> = a
        .shape()
        .iter()
        .enumerate()
        .map(|(i, n)| n + pads[i] + pads[i + rank])
        .collect();
    let mut out = ArrayD::from_elem(IxDyn(&shape), T::from_scalar(Scalar::Float(c)));
    out.slice_each_axis_mut(|ax| {
        let i = ax.axis.index();
        Slice::from(pads[i]..pads[i] + a.shape()[i])
    })
    .assign(a);
    out
}

fn source_indices(n: usize, before: usize, after: usize, mode: PadMode) -> Result<Vec<usize>> {
    if before == 0 && after == 0 {
        return Ok((0..n).collect());
    }
    let reflect = mode == PadMode::Reflect;
    if n == 0 || (reflect && (before >= n || after >= n)) {
        return Err(OpsError::invalid(
            "Pad",
            format!("{mode:?} padding of {before}/{after} needs a longer axis than {n}"),
        ));
    }
    let last = n as i64 - 1;
    Ok((-(before as i64)..n as i64 + after as i64)
        .map(|i| match (reflect, i) {
            (true, i) if i < 0 => -i,
            (true, i) if i > last => 2 * last - i,
            (_, i) => i.clamp(0, last),
        } as usize)
        .collect())
}

#[cfg(test)]
#[path = "movement_tests.rs"]
mod tests;
