//! Data-movement operators as DMA address patterns: Transpose, Slice,
//! Concat, Expand, Gather with constant indices, nearest-neighbour
//! Resize and Pad become, per output row, the pieces
//! (`m4c_npu::kernels::gather::Piece`) a strided DMA load reads.

use m4c_ir::op::{CoordMode, NearestRounding, PadMode};
use m4c_ir::Op;
use m4c_npu::kernels::gather::Piece;

/// Row-major strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// The source and byte offset output index `o` reads.
fn locate(op: &Op, ins: &[Vec<usize>], o: &[usize]) -> Result<(usize, usize), String> {
    let offset = |shape: &[usize], idx: &[usize]| -> usize {
        strides(shape).iter().zip(idx).map(|(s, i)| s * i).sum()
    };
    match op {
        Op::Transpose { perm } => {
            let mut i = vec![0; o.len()];
            for (d, &p) in perm.iter().enumerate() {
                i[p] = o[d];
            }
            Ok((0, offset(&ins[0], &i)))
        }
        Op::Slice { axes } => {
            let i: Vec<usize> = axes
                .iter()
                .zip(o)
                .map(|(a, &o)| (a.start as i64 + o as i64 * a.step) as usize)
                .collect();
            Ok((0, offset(&ins[0], &i)))
        }
        Op::Concat { axis } => {
            let mut at = o[*axis];
            for (s, shape) in ins.iter().enumerate() {
                if at < shape[*axis] {
                    let mut i = o.to_vec();
                    i[*axis] = at;
                    return Ok((s, offset(shape, &i)));
                }
                at -= shape[*axis];
            }
            Err("concat index outside its inputs".into())
        }
        Op::Expand { .. } => {
            let shape = &ins[0];
            let skip = o.len() - shape.len();
            let i: Vec<usize> = shape
                .iter()
                .zip(&o[skip..])
                .map(|(&d, &o)| if d == 1 { 0 } else { o })
                .collect();
            Ok((0, offset(shape, &i)))
        }
        other => Err(format!("{} is not data movement", other.name())),
    }
}

/// The pieces of every output row of `op` from inputs of shapes `ins`
/// to an output of shape `out` (row = the last axis).
pub fn pieces(op: &Op, ins: &[Vec<usize>], out: &[usize]) -> Result<Vec<Vec<Piece>>, String> {
    pieces_by(out, &|o| locate(op, ins, o))
}

/// The pieces of `data.take(indices, axis)` (`indices` of shape
/// `idx_shape`, negative ones counting from the end) from `data`.
pub fn gather(
    data: &[usize],
    axis: usize,
    (indices, idx_shape): (&[i64], &[usize]),
    out: &[usize],
) -> Result<Vec<Vec<Piece>>, String> {
    let len = *data.get(axis).ok_or("gather axis outside the data")? as i64;
    let picks = indices
        .iter()
        .map(|&i| {
            let j = if i < 0 { i + len } else { i };
            (0..len)
                .contains(&j)
                .then_some(j as usize)
                .ok_or_else(|| format!("index {i} outside an axis of {len}"))
        })
        .collect::<Result<Vec<usize>, String>>()?;
    let r = idx_shape.len();
    let st = strides(data);
    let idx_st = strides(idx_shape);
    pieces_by(out, &|o| {
        let flat: usize = o[axis..axis + r]
            .iter()
            .zip(&idx_st)
            .map(|(i, s)| i * s)
            .sum();
        let pick = picks.get(flat).ok_or("gather index outside its indices")?;
        let rest = o[..axis].iter().chain([pick]).chain(&o[axis + r..]);
        Ok((0, rest.zip(&st).map(|(i, s)| i * s).sum()))
    })
}

/// The pieces of a nearest-neighbour Resize of `x` to `sizes` (the
/// source index of each output index as the interpreter computes it).
pub fn resize_nearest(
    x: &[usize],
    (rounding, coord): (NearestRounding, CoordMode),
    scales: &[f32],
    sizes: &[usize],
) -> Result<Vec<Vec<Piece>>, String> {
    if scales.len() != x.len() || sizes.len() != x.len() {
        return Err(format!(
            "resize of {x:?} with scales {scales:?}, sizes {sizes:?}"
        ));
    }
    let maps: Vec<Vec<usize>> = (0..x.len())
        .map(|d| {
            let identity = sizes[d] == x[d] && scales[d] == 1.0;
            (0..sizes[d])
                .map(|o| match identity {
                    true => o,
                    false => rounding.index(coord.source(o, scales[d], x[d], sizes[d]), x[d]),
                })
                .collect()
        })
        .collect();
    let st = strides(x);
    pieces_by(sizes, &|o| {
        Ok((
            0,
            o.iter()
                .zip(&maps)
                .zip(&st)
                .map(|((&i, m), s)| m[i] * s)
                .sum(),
        ))
    })
}

/// The pieces of Pad (`pads`: begin per axis, then end) of `x` to `out`:
/// reflected or edge positions read the input; constant ones read source
/// 1, `out`'s last dimension of the fill byte (at the output column, so a
/// run of fill is one contiguous piece).
pub fn pad(
    x: &[usize],
    pads: &[usize],
    mode: PadMode,
    out: &[usize],
) -> Result<Vec<Vec<Piece>>, String> {
    let rank = x.len();
    if pads.len() != 2 * rank || out.len() != rank {
        return Err(format!("{} pads of a rank-{rank} input", pads.len()));
    }
    let st = strides(x);
    pieces_by(out, &|o| {
        let mut at = 0;
        for d in 0..rank {
            let (n, i) = (x[d] as i64, o[d] as i64 - pads[d] as i64);
            let j = match mode {
                _ if (0..n).contains(&i) => i,
                PadMode::Constant(_) => return Ok((1, o.last().copied().unwrap_or(0))),
                PadMode::Reflect if i < 0 => -i,
                PadMode::Reflect => 2 * (n - 1) - i,
                PadMode::Edge => i.clamp(0, n - 1),
            };
            if !(0..n).contains(&j) {
                return Err(format!(
                    "{mode:?} padding reads index {j} of an axis of {n}"
                ));
            }
            at += j as usize * st[d];
        }
        Ok((0, at))
    })
}

/// The pieces of `x.take(idx, axis)` for `x` seen as `[outer, len, inner]`
/// (the resized axis in the middle): rows of `inner` bytes, or, when
/// `inner` is 1, rows of `idx.len()` bytes (one per outer index).
pub fn take_along((outer, len, inner): (usize, usize, usize), idx: &[usize]) -> Vec<Vec<Piece>> {
    let n = idx.len();
    if inner == 1 {
        let rows = pieces_by(&[outer, n], &|o| Ok((0, o[0] * len + idx[o[1]])));
        return rows.unwrap_or_default();
    }
    (0..outer * n)
        .map(|r| {
            vec![Piece {
                source: 0,
                start: (r / n * len + idx[r % n]) * inner,
                stride: 1,
                len: inner,
            }]
        })
        .collect()
}

/// Where an output index reads: (source, offset).
type Locate<'a> = dyn Fn(&[usize]) -> Result<(usize, usize), String> + 'a;

/// The pieces of every output row of an output of shape `out` whose
/// element at index `o` is read from `locate(o)` (source, offset).
fn pieces_by(out: &[usize], locate: &Locate) -> Result<Vec<Vec<Piece>>, String> {
    let cols = out.last().copied().unwrap_or(1).max(1);
    let rows = out.iter().product::<usize>() / cols;
    let outer = &out[..out.len().saturating_sub(1)];
    let mut all = Vec::with_capacity(rows);
    let mut idx = vec![0; out.len()];
    for r in 0..rows {
        let mut rem = r;
        for d in (0..outer.len()).rev() {
            idx[d] = rem % outer[d];
            rem /= outer[d];
        }
        let mut row: Vec<Piece> = vec![];
        let mut prev = 0usize;
        for c in 0..cols {
            if let Some(last) = idx.last_mut() {
                *last = c;
            }
            let (source, off) = locate(&idx)?;
            let extend = row.last_mut().filter(|p| {
                p.source == source && off >= prev && (p.len == 1 || off - prev == p.stride)
            });
            match extend {
                Some(p) => {
                    p.stride = off - prev;
                    p.len += 1;
                }
                None => row.push(Piece {
                    source,
                    start: off,
                    stride: 1,
                    len: 1,
                }),
            }
            prev = off;
        }
        all.push(row);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Constant padding reads the fill source at the output column;
    /// reflect and edge padding read the interpreter's source indices.
    #[test]
    fn pads_read_the_border() {
        let flat = |p: &[Piece]| -> Vec<(usize, usize)> {
            p.iter()
                .flat_map(|p| (0..p.len).map(move |i| (p.source, p.start + i * p.stride)))
                .collect()
        };
        let c = pad(&[1, 3], &[0, 1, 0, 2], PadMode::Constant(0.0), &[1, 6]).unwrap();
        assert_eq!(
            flat(&c[0]),
            [(1, 0), (0, 0), (0, 1), (0, 2), (1, 4), (1, 5)]
        );
        let r = pad(&[1, 3], &[0, 2, 0, 1], PadMode::Reflect, &[1, 6]).unwrap();
        assert_eq!(
            flat(&r[0]).iter().map(|x| x.1).collect::<Vec<_>>(),
            [2, 1, 0, 1, 2, 1]
        );
        let e = pad(&[2, 2], &[1, 0, 0, 1], PadMode::Edge, &[3, 3]).unwrap();
        assert_eq!(
            flat(&e[0]).iter().map(|x| x.1).collect::<Vec<_>>(),
            [0, 1, 1]
        );
        assert_eq!(
            flat(&e[2]).iter().map(|x| x.1).collect::<Vec<_>>(),
            [2, 3, 3]
        );
    }

    /// A constant-index Gather (the CLS pick, a q/k/v split) and a 2x
    /// nearest upsampling read what the interpreter's definitions read.
    #[test]
    fn gathers_and_nearest_resize_read_the_right_elements() {
        // [2, 3, 4] take [2, 0] on axis 1 -> [2, 2, 4]; row 1 = data[0, 0, :].
        let p = gather(&[2, 3, 4], 1, (&[2, -3], &[2]), &[2, 2, 4]).unwrap();
        assert_eq!(p.len(), 4);
        assert_eq!(
            p[0][0],
            Piece {
                source: 0,
                start: 8,
                stride: 1,
                len: 4
            }
        );
        assert_eq!(p[1][0].start, 0);
        assert_eq!(p[3][0].start, 12);
        assert!(gather(&[2, 3], 1, (&[3], &[1]), &[2, 1]).is_err());
        // A scalar index drops the axis: [4, 8] take 0 on axis 0 -> [8].
        let cls = gather(&[4, 8], 0, (&[0], &[]), &[8]).unwrap();
        assert_eq!(
            cls,
            vec![vec![Piece {
                source: 0,
                start: 0,
                stride: 1,
                len: 8
            }]]
        );
        let up = resize_nearest(
            &[1, 1, 2, 2],
            (NearestRounding::Floor, CoordMode::Asymmetric),
            &[1.0, 1.0, 2.0, 2.0],
            &[1, 1, 4, 4],
        )
        .unwrap();
        assert_eq!(up.len(), 4);
        let row3: Vec<usize> = up[3]
            .iter()
            .flat_map(|p| (0..p.len).map(move |i| p.start + i * p.stride))
            .collect();
        assert_eq!(row3, vec![2, 2, 3, 3]);
    }

    #[test]
    fn a_head_split_transpose_reads_strided_columns() {
        // [2, 3] -> [3, 2]: row j reads column j, 3 bytes apart.
        let p = pieces(&Op::Transpose { perm: vec![1, 0] }, &[vec![2, 3]], &[3, 2]).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(
            p[1],
            vec![Piece {
                source: 0,
                start: 1,
                stride: 3,
                len: 2
            }]
        );
        let c = pieces(&Op::Concat { axis: 1 }, &[vec![2, 2], vec![2, 1]], &[2, 3]).unwrap();
        assert_eq!(c[1].len(), 2);
        assert_eq!(
            c[1][1],
            Piece {
                source: 1,
                start: 1,
                stride: 1,
                len: 1
            }
        );
        let e = pieces(&Op::Expand { shape: vec![2, 4] }, &[vec![1, 1]], &[2, 4]).unwrap();
        assert_eq!(
            e[0],
            vec![Piece {
                source: 0,
                start: 0,
                stride: 0,
                len: 4
            }]
        );
    }
}
