//! Data-movement operators as DMA address patterns: Transpose, Slice,
//! Concat and Expand become, per output row, the pieces
//! (`m4c_npu::kernels::gather::Piece`) a strided DMA load reads.

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
            let (source, off) = locate(op, ins, &idx)?;
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
