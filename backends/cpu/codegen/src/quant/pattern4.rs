//! The weight-only pattern of the quantised lowering (see `lower.rs`):
//! MatMulNBits' and blocked QDQ's dequantised int4/8-bit weights, alone or
//! concatenated by the optimiser, become one weight-only GEMM; when x is
//! itself quantised to int8 in the weights' blocks (MatMulNBits with
//! `accuracy_level = 4`), the int8-compute kernel reads x before that.

use m4c_ir::op::PadMode;
use m4c_ir::{DType, Op, ValueId};

use super::gemv4a8::MAX_BLOCK;
use super::lower::{f32_scalar, int_scalar, Kind, Matched, Uses};
use super::Int4A8Spec;

/// One dequantised int4 weight `[n, k]`: its packed bytes, per-block
/// scales and zero points (one, or one per block), and the nodes read
/// through.
struct Int4Part {
    n: usize,
    block: usize,
    signed: bool,
    bits: u8,
    packed: Vec<u8>,
    scales: Vec<f32>,
    zero_points: Vec<f32>,
    nodes: Vec<usize>,
}

/// `v` past a Slice that keeps a prefix of every axis (the cut of K back
/// from whole blocks), recorded in `nodes`; `None` for any other Slice.
fn past_leading_slice(uses: &Uses<'_>, v: ValueId, nodes: &mut Vec<usize>) -> Option<ValueId> {
    match uses.def(v) {
        Some((i, Op::Slice { axes }, [inner])) => {
            if axes.iter().any(|a| a.start != 0 || a.step != 1) {
                return None;
            }
            nodes.push(i);
            Some(*inner)
        }
        _ => Some(v),
    }
}

/// `Slice?(Reshape(Mul(Sub?(Cast(q), zp), s)))` over a constant
/// int4/uint4 `q`: of shape `[n, blocks, block]` read as `[n, k]`
/// (MatMulNBits), or, `transposed`, of shape `[blocks, block, n]` read as
/// `[k, n]` (blocked QDQ along K), whose nibbles and tables are
/// rearranged into the kernel's `[n, blocks, block]` at compile time.
fn int4_part(uses: &Uses<'_>, w: ValueId, k: usize, transposed: bool) -> Option<Int4Part> {
    let (n, wk) = match uses.shape(w)?[..] {
        [a, b] if transposed => (b, a),
        [a, b] => (a, b),
        _ => return None,
    };
    if wk != k {
        return None;
    }
    let mut nodes = Vec::new();
    let cur = past_leading_slice(uses, w, &mut nodes)?;
    let (i, Op::Reshape { .. }, [inner]) = uses.def(cur)? else {
        return None;
    };
    nodes.push(i);
    let d = uses.dequant(*inner)?;
    let q = uses.constant(d.q)?;
    let (qn, blocks, block) = match q.shape[..] {
        [b, blk, qn] if transposed => (qn, b, blk),
        [qn, b, blk] => (qn, b, blk),
        _ => return None,
    };
    let (signed, bits) = match q.dtype {
        DType::I4 => (true, 4),
        DType::U4 => (false, 4),
        DType::I8 => (true, 8),
        DType::U8 => (false, 8),
        _ => return None,
    };
    let reshaped = if transposed {
        [blocks * block, n]
    } else {
        [n, blocks * block]
    };
    if qn != n
        || blocks != k.div_ceil(block)
        || block < 2
        || !block.is_power_of_two()
        || uses.shape(cur)? != reshaped
    {
        return None;
    }
    // Per-block tables in the kernel's (column, block) order.
    let per_block = |v: ValueId| -> Option<Vec<f32>> {
        let t = uses.constant(v)?;
        let values = t.to_f32_vec().ok()?;
        if values.len() == 1 {
            return Some(values);
        }
        if transposed && t.shape == [blocks, 1, n] {
            return Some(
                (0..n * blocks)
                    .map(|i| values[(i % blocks) * n + i / blocks])
                    .collect(),
            );
        }
        (!transposed && t.shape == [n, blocks, 1]).then_some(values)
    };
    let scales = per_block(d.scale?)?;
    if scales.len() != n * blocks {
        return None;
    }
    let zero_points = match d.zero {
        None => vec![0.0],
        Some(z) => per_block(z)?,
    };
    nodes.extend(d.nodes);
    let bytes = q.bytes().ok()?;
    let packed = match (transposed, bits) {
        (false, _) => bytes.to_vec(),
        (true, _) => {
            // Element (b, i, j) of q is at (b·block + i)·n + j; the kernel
            // wants it at (j·blocks + b)·block + i.
            let element = |e: usize| match bits {
                8 => bytes[e],
                _ => (bytes[e / 2] >> (4 * (e % 2))) & 0xF,
            };
            let at = |e: usize| {
                let (j, rest) = (e / (blocks * block), e % (blocks * block));
                element(rest * n + j)
            };
            match bits {
                8 => (0..n * blocks * block).map(at).collect(),
                _ => (0..n * blocks * block / 2)
                    .map(|pair| at(2 * pair) | (at(2 * pair + 1) << 4))
                    .collect(),
            }
        }
    };
    Some(Int4Part {
        n,
        block,
        signed,
        bits,
        packed,
        scales,
        zero_points,
        nodes,
    })
}

/// The int4 weight-only pattern at the MatMul `mm`: one dequantised int4
/// weight (`[n, k]` with `trans_b`, else `[k, n]`), or several
/// concatenated along the output columns (the optimiser's fusion of q/k/v
/// projections), whose packed bytes and tables concatenate the same way.
pub(super) fn int4(uses: &Uses<'_>, mm: usize, trans_b: bool) -> Option<(Matched, Vec<usize>)> {
    let g = uses.g;
    let node = &g.nodes[mm];
    let (x, w) = (node.inputs[0], node.inputs[1]);
    if uses.dtype(x) != DType::F32 {
        return None;
    }
    let x_shape = uses.shape(x)?;
    let (n, k) = match uses.shape(w)?[..] {
        [a, b] if trans_b => (a, b),
        [a, b] => (b, a),
        _ => return None,
    };
    let (transposed, column_axis) = (!trans_b, usize::from(!trans_b));
    if x_shape.last() != Some(&k) {
        return None;
    }
    let m: usize = x_shape[..x_shape.len() - 1].iter().product();
    let (parts, concat) = match uses.def(w) {
        Some((i, Op::Concat { axis }, inputs)) if *axis == column_axis => (
            inputs
                .iter()
                .map(|&p| int4_part(uses, p, k, transposed))
                .collect::<Option<Vec<_>>>()?,
            Some(i),
        ),
        _ => (vec![int4_part(uses, w, k, transposed)?], None),
    };
    let (block, signed, bits) = (parts[0].block, parts[0].signed, parts[0].bits);
    if parts
        .iter()
        .any(|p| p.block != block || p.signed != signed || p.bits != bits)
        || parts.iter().map(|p| p.n).sum::<usize>() != n
    {
        return None;
    }
    let blocks = k.div_ceil(block);
    let mut nodes: Vec<usize> = concat.into_iter().collect();
    let (mut packed, mut scales, mut zero_points) = (Vec::new(), Vec::new(), Vec::new());
    let one_zero_point = parts
        .iter()
        .all(|p| p.zero_points.len() == 1 && p.zero_points == parts[0].zero_points);
    for part in parts {
        packed.extend(part.packed);
        scales.extend(part.scales);
        if !one_zero_point {
            let len = part.n * blocks;
            zero_points.extend((0..len).map(|i| part.zero_points[i % part.zero_points.len()]));
        } else if zero_points.is_empty() {
            zero_points = part.zero_points;
        }
        nodes.extend(part.nodes);
    }
    let int8 = (bits == 4 && Int4A8Spec::byte_zero_points(&zero_points, signed))
        .then(|| int8_blocks(uses, x, k, block))
        .flatten();
    let int8_compute = int8.is_some();
    let x = match int8 {
        Some((source, chain)) => {
            nodes.extend(chain);
            source
        }
        None => x,
    };
    Some((
        Matched {
            output: mm,
            core: vec![mm],
            kind: Kind::Int4 {
                x,
                m,
                k,
                n,
                block,
                signed,
                bits,
                packed,
                scales,
                zero_points,
                int8_compute,
            },
        },
        nodes,
    ))
}

/// `x` (`[.., k]`) as the importer's `int8_blocks` writes it for
/// MatMulNBits with `accuracy_level = 4`: `Slice?(Reshape(Mul(Cast(q), s)))`
/// with `q = Quantize_i8(v, s, 0)`, `s = Where(Equal(t, 0), 1, t)`, `t =
/// ReduceMax_last(Max(v, Mul(v, −1))) / 127` and `v = Reshape(Pad?(a))` of
/// shape `[.., blocks, block]`: the source `a` and the nodes on the way.
fn int8_blocks(
    uses: &Uses<'_>,
    x: ValueId,
    k: usize,
    block: usize,
) -> Option<(ValueId, Vec<usize>)> {
    if !(8..=MAX_BLOCK).contains(&block) {
        return None;
    }
    let mut nodes = Vec::new();
    let cur = past_leading_slice(uses, x, &mut nodes)?;
    let (i, Op::Reshape { .. }, [deq]) = uses.def(cur)? else {
        return None;
    };
    nodes.push(i);
    let (i, Op::Mul, [a, b]) = uses.def(*deq)? else {
        return None;
    };
    nodes.push(i);
    let (cast, s) = match uses.def(*a) {
        Some((_, Op::Cast { to: DType::F32 }, _)) => (*a, *b),
        _ => (*b, *a),
    };
    let (i, Op::Cast { to: DType::F32 }, [q]) = uses.def(cast)? else {
        return None;
    };
    nodes.push(i);
    let (i, Op::Quantize { to: DType::I8 }, [v, qs, zp]) = uses.def(*q)? else {
        return None;
    };
    nodes.push(i);
    if *qs != s || int_scalar(uses.constant(*zp)?)? != 0 {
        return None;
    }
    // The scale.
    let (i, Op::Where, [empty, one, t]) = uses.def(s)? else {
        return None;
    };
    nodes.push(i);
    let (i, Op::Equal, [t2, zero]) = uses.def(*empty)? else {
        return None;
    };
    nodes.push(i);
    if t2 != t
        || f32_scalar(uses.constant(*one)?)? != 1.0
        || f32_scalar(uses.constant(*zero)?)? != 0.0
    {
        return None;
    }
    let (i, Op::Div, [top, levels]) = uses.def(*t)? else {
        return None;
    };
    nodes.push(i);
    if f32_scalar(uses.constant(*levels)?)? != 127.0 {
        return None;
    }
    let shape = uses.shape(*v)?;
    let rank = shape.len();
    if rank < 2 || shape[rank - 2..] != [k.div_ceil(block), block] {
        return None;
    }
    let (
        i,
        Op::ReduceMax {
            axes,
            keep_dims: true,
        },
        [abs],
    ) = uses.def(*top)?
    else {
        return None;
    };
    nodes.push(i);
    if axes[..] != [rank - 1] {
        return None;
    }
    let (i, Op::Max, [p, r]) = uses.def(*abs)? else {
        return None;
    };
    nodes.push(i);
    let neg = if p == v {
        r
    } else if r == v {
        p
    } else {
        return None;
    };
    let (i, Op::Mul, [p, r]) = uses.def(*neg)? else {
        return None;
    };
    nodes.push(i);
    let minus = if p == v {
        r
    } else if r == v {
        p
    } else {
        return None;
    };
    if f32_scalar(uses.constant(*minus)?)? != -1.0 {
        return None;
    }
    // The blocks of the source: a Reshape (which the optimiser may have
    // merged with the source's own, or removed) of x, zero-padded to
    // whole blocks when K needs it.
    let lead: usize = shape[..rank - 2].iter().product();
    let (inner, reshape) = match uses.def(*v) {
        Some((i, Op::Reshape { .. }, [inner])) => (*inner, Some(i)),
        _ => (*v, None),
    };
    nodes.extend(reshape);
    let source = match uses.def(inner) {
        Some((
            i,
            Op::Pad {
                pads,
                mode: PadMode::Constant(c),
            },
            [a],
        )) if reshape.is_some() => {
            let r = pads.len() / 2;
            let a_shape = uses.shape(*a)?;
            if *c != 0.0
                || pads
                    .iter()
                    .enumerate()
                    .any(|(j, &p)| p != 0 && j != 2 * r - 1)
                || a_shape.last() != Some(&k)
                || a_shape.iter().product::<usize>() != lead * k
            {
                return None;
            }
            nodes.push(i);
            *a
        }
        _ if k.is_multiple_of(block) => inner,
        _ => return None,
    };
    (uses.dtype(source) == DType::F32 && uses.shape(source)?.iter().product::<usize>() == lead * k)
        .then_some((source, nodes))
}
