//! Elementwise groups fused into a convolution's epilogue: when the only
//! readers of a convolution's result are the nodes of one elementwise
//! group over the same shape (an activation, a residual add, both), the
//! convolution kernel evaluates the group on its accumulators before the
//! store, so the result never goes to memory and is not read back.
//!
//! Every other operand of the group must be a per-batch/per-channel value
//! (the same for all pixels of a channel plane: a bias, a scale) or laid
//! out like the output along the pixels (a residual), so a vector of
//! consecutive pixels of one plane reads it with one splat or one load.
//! Kernels with the filters in the lanes transpose their accumulators into
//! such vectors first.

use inkwell::values::{IntValue, PointerValue, VectorValue};
use m4c_ir::{DType, Graph, Op, ValueId};

use super::elementwise::{describe, eval_tree, Fused};
use super::math::math;
use super::{contiguous_strides, Elem, Kernel};
use crate::graph::Lowering;
use crate::CodegenError;

/// How an epilogue operand is read for consecutive pixels of one plane.
#[derive(Clone, Copy, Debug)]
enum Read {
    /// The convolution's own result (the accumulators).
    Result,
    /// One value per (batch, channel), splatted: element
    /// `batch·strides.0 + channel·strides.1`.
    Splat(i64, i64),
    /// Laid out like the output along the pixels: element
    /// `batch·strides.0 + channel·strides.1 + pixel`.
    Pixels(i64, i64),
}

impl Read {
    /// The element of its operand this read takes for (`batch`,
    /// `channel`) and, along the pixels, `pixel` (`Result`: none).
    fn element<'ctx>(
        self,
        k: &Kernel<'_, 'ctx>,
        batch: IntValue<'ctx>,
        channel: IntValue<'ctx>,
        pixel: IntValue<'ctx>,
    ) -> Result<IntValue<'ctx>, CodegenError> {
        match self {
            Read::Result => Err(CodegenError::Internal("the result is no operand")),
            Read::Splat(sb, sc) => k.linear(0, &[batch, channel], &[sb, sc]),
            Read::Pixels(sb, sc) => {
                let at = k.linear(0, &[batch, channel], &[sb, sc])?;
                Ok(k.em.builder.build_int_add(at, pixel, "px")?)
            }
        }
    }
}

/// A fused elementwise group evaluated on a convolution's accumulators.
#[derive(Clone, Debug)]
pub(crate) struct Epilogue {
    fused: Fused,
    reads: Vec<Read>,
}

impl Epilogue {
    /// The group `members` (node indices, root last) as the epilogue of
    /// the convolution producing `conv`, with the values of its other
    /// operands (the kernel's extra buffers, in order); `None` when the
    /// group does not fit (types, operand layouts).
    pub fn describe(
        l: &Lowering<'_, '_>,
        conv: ValueId,
        members: &[usize],
    ) -> Option<(Self, Vec<ValueId>)> {
        let (fused, values) = describe(l, members).ok()?;
        let shape = l.shape(conv).ok()?;
        if fused.shape != shape || shape.len() < 3 {
            return None;
        }
        if fused.nodes.iter().any(|n| n.elem != Elem::F32)
            || fused.operands.iter().any(|o| o.elem != Elem::F32)
        {
            return None;
        }
        let spatial = &shape[2..];
        let contiguous = contiguous_strides(spatial);
        let mut reads = Vec::with_capacity(values.len());
        let mut extra = Vec::new();
        for (operand, &value) in fused.operands.iter().zip(&values) {
            if value == conv {
                reads.push(Read::Result);
                continue;
            }
            let s = &operand.strides;
            let live = |d: usize| spatial[d] > 1;
            let read = if (0..spatial.len()).all(|d| !live(d) || s[2 + d] == 0) {
                Read::Splat(s[0], s[1])
            } else if (0..spatial.len()).all(|d| !live(d) || s[2 + d] == contiguous[d]) {
                Read::Pixels(s[0], s[1])
            } else {
                return None;
            };
            reads.push(read);
            extra.push(value);
        }
        if !reads.iter().any(|r| matches!(r, Read::Result)) {
            return None;
        }
        Some((Self { fused, reads }, extra))
    }

    /// Whether the group computes a transcendental or a division (many
    /// instructions a vector): kernels evaluate such an epilogue one
    /// vector at a time in a loop rather than on all accumulators at once.
    pub fn is_costly(&self) -> bool {
        self.fused.nodes.iter().any(|n| {
            matches!(
                n.op,
                Op::Exp
                    | Op::Log
                    | Op::Sigmoid
                    | Op::Tanh
                    | Op::Erf
                    | Op::Gelu { .. }
                    | Op::Div
                    | Op::Pow
                    | Op::Sqrt
                    | Op::Sin
                    | Op::Cos
            )
        })
    }

    /// Extra buffers the kernel reads (the operands other than the
    /// convolution's result).
    pub fn buffers(&self) -> usize {
        self.reads.len() - 1
    }

    /// Prefetches the line of every operand laid out like the output at
    /// (`batch`, `channel`, `pixel`), ahead of [`Self::apply`] there.
    pub fn prefetch<'ctx>(
        &self,
        k: &Kernel<'_, 'ctx>,
        buffers: &[PointerValue<'ctx>],
        batch: IntValue<'ctx>,
        channel: IntValue<'ctx>,
        pixel: IntValue<'ctx>,
    ) -> Result<(), CodegenError> {
        let f32t = k.cx.context.f32_type();
        let extra = self.reads.iter().filter(|r| !matches!(r, Read::Result));
        for (read, &buffer) in extra.zip(buffers) {
            if matches!(read, Read::Pixels(..)) {
                let at = read.element(k, batch, channel, pixel)?;
                k.em.prefetch(f32t.into(), buffer, at, false, 3)?;
            }
        }
        Ok(())
    }

    /// Evaluates the group on `acc`, the convolution's result for
    /// consecutive pixels from (`batch`, `channel`, `pixel`), the lanes in
    /// `mask` (`None`: all) inside the plane; `buffers` are the extra
    /// operand buffers.
    #[allow(clippy::too_many_arguments)]
    pub fn apply<'ctx>(
        &self,
        k: &Kernel<'_, 'ctx>,
        buffers: &[PointerValue<'ctx>],
        acc: VectorValue<'ctx>,
        batch: IntValue<'ctx>,
        channel: IntValue<'ctx>,
        pixel: IntValue<'ctx>,
        mask: Option<VectorValue<'ctx>>,
    ) -> Result<VectorValue<'ctx>, CodegenError> {
        let width = acc.get_type().get_size();
        let math = math(k, width);
        let f32t = k.cx.context.f32_type();
        let mut loaded = Vec::with_capacity(self.reads.len());
        let mut next = 0;
        for read in &self.reads {
            let value = match *read {
                Read::Result => acc,
                Read::Splat(..) | Read::Pixels(..) => {
                    let buffer = buffers[next];
                    next += 1;
                    let at = read.element(k, batch, channel, pixel)?;
                    let at = k.element(buffer, f32t.into(), at)?;
                    if matches!(read, Read::Pixels(..)) {
                        k.load_f32(at, width, mask)?
                    } else {
                        k.load_splat(Elem::F32, width, at)?
                    }
                }
            };
            loaded.push(value);
        }
        let operands: Vec<_> = loaded.iter().map(|&v| (v, Elem::F32)).collect();
        eval_tree(k, &math, &self.fused.nodes, &operands)
    }
}

/// Per fusion-group root: the convolution node whose epilogue computes the
/// group. A convolution qualifies when it is f32, its result is no graph
/// output and is read only by the members of one group over its own shape,
/// `fits` says its kernel takes an epilogue, and the group's operands fit
/// [`Epilogue::describe`]. `taken` marks nodes other passes already own
/// (quantised patterns).
pub(crate) fn find(
    l: &Lowering<'_, '_>,
    roots: &[Option<usize>],
    members: &[Vec<usize>],
    taken: &[bool],
    fits: &dyn Fn(&m4c_ir::Node) -> bool,
) -> Vec<Option<usize>> {
    let g: &Graph = l.graph;
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); g.values.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        for &input in &node.inputs {
            if !readers[input.index()].contains(&i) {
                readers[input.index()].push(i);
            }
        }
    }
    let mut absorbs = vec![None; g.nodes.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        if !matches!(node.op, Op::Conv(_)) || taken[i] || g.outputs.contains(&node.output) {
            continue;
        }
        if node.inputs.iter().any(|&v| l.dtype(v) != DType::F32) || !fits(node) {
            continue;
        }
        let users = &readers[node.output.index()];
        let Some(root) = users.first().and_then(|&u| roots[u]) else {
            continue;
        };
        if absorbs[root].is_some()
            || members[root].iter().any(|&m| taken[m])
            || !users.iter().all(|u| members[root].contains(u))
        {
            continue;
        }
        if Epilogue::describe(l, node.output, &members[root]).is_some() {
            absorbs[root] = Some(i);
        }
    }
    absorbs
}
