//! Data movement as copies with compile-time index maps: every output axis
//! reads the input at an affine position (`start + step·i`: transpose,
//! slice, expand, concat) or through a table (pad, nearest resize), with
//! an optional fill value for positions outside the input. A constant
//! pad's innermost axis is copied a row at a time: the fill on either
//! side and one copy of the input's row.

use inkwell::module::Linkage;
use inkwell::values::IntValue;
use inkwell::IntPredicate;
use m4c_ir::op::{PadMode, SliceAxis};
use m4c_ir::{DType, Node, Op};

use super::{
    broadcast_strides, contiguous_strides, fold_axes, folded_extent, int_type, Cx, Kernel,
};
use crate::graph::Lowering;
use crate::CodegenError;

/// How one output axis finds its input position.
#[derive(Clone, Debug)]
pub(crate) enum AxisMap {
    /// `start + step·i`.
    Affine { start: i64, step: i64 },
    /// `table[i]`; -1 selects the fill value.
    Table(Vec<i64>),
}

/// An innermost axis of fill, a run of the input, and fill
/// ([`IndexCopy::padded_inner`]).
#[derive(Clone, Copy, Debug)]
struct PaddedRow {
    before: usize,
    start: i64,
    len: usize,
}

/// A copy kernel: buffer 0 is the output, buffer 1 the input.
#[derive(Clone, Debug)]
pub(crate) struct IndexCopy {
    /// Bytes per element.
    pub elem_bytes: u32,
    /// The iteration shape (the output shape, or a sub-view of it).
    pub shape: Vec<usize>,
    /// Output strides per axis, in elements.
    pub out_strides: Vec<i64>,
    /// Input strides per axis, applied to the mapped position.
    pub in_strides: Vec<i64>,
    /// The per-axis maps.
    pub maps: Vec<AxisMap>,
    /// The bit pattern written where a table says -1.
    pub fill: u64,
}

impl IndexCopy {
    /// The parallel axis's extent: the leading loop axes folded together
    /// ([`fold_axes`]; 1 when there is no loop, a single copy).
    pub fn extent(&self) -> usize {
        folded_extent(&self.loop_dims())
    }

    /// The axes looped over: all of them, or all but the innermost when
    /// it is copied as one contiguous run (with fill on either side).
    fn loop_dims(&self) -> Vec<usize> {
        if self.contiguous_inner() || self.padded_inner().is_some() {
            self.shape[..self.shape.len() - 1].to_vec()
        } else {
            self.shape.clone()
        }
    }

    /// The innermost axis as `before` fill elements, `len` consecutive
    /// input elements from `start`, and fill after them, when its map is
    /// such a table (a constant pad: a convolution's padded input) and
    /// both sides are contiguous on it: a row is then two short fills and
    /// one copy, not an element-by-element lookup.
    fn padded_inner(&self) -> Option<PaddedRow> {
        let r = self.shape.len();
        if r == 0 || self.out_strides[r - 1] != 1 || self.in_strides[r - 1] != 1 {
            return None;
        }
        let AxisMap::Table(t) = &self.maps[r - 1] else {
            return None;
        };
        let before = t.iter().position(|&i| i >= 0)?;
        let start = t[before];
        let len = t[before..]
            .iter()
            .zip(start..)
            .take_while(|(&i, want)| i == *want)
            .count();
        t[before + len..]
            .iter()
            .all(|&i| i == -1)
            .then_some(PaddedRow { before, start, len })
    }

    /// Whether the innermost axis is a contiguous run on both sides.
    fn contiguous_inner(&self) -> bool {
        let r = self.shape.len();
        r > 0
            && self.out_strides[r - 1] == 1
            && self.in_strides[r - 1] == 1
            && matches!(self.maps[r - 1], AxisMap::Affine { step: 1, .. })
    }

    /// Emits the kernel `symbol`.
    pub fn emit<'ctx>(&self, cx: Cx<'_, 'ctx>, symbol: &str) -> Result<(), CodegenError> {
        let k = Kernel::define(cx, symbol, 2)?;
        let int = int_type(cx.context, self.elem_bytes);
        let tables: Vec<Option<inkwell::values::GlobalValue<'ctx>>> = self
            .maps
            .iter()
            .enumerate()
            .map(|(d, m)| match m {
                AxisMap::Table(t) => {
                    let i64t = cx.context.i64_type();
                    let values: Vec<_> =
                        t.iter().map(|&v| i64t.const_int(v as u64, true)).collect();
                    let array = i64t.const_array(&values);
                    let global =
                        cx.module
                            .add_global(array.get_type(), None, &format!("{symbol}_axis{d}"));
                    global.set_initializer(&array);
                    global.set_constant(true);
                    global.set_linkage(Linkage::Private);
                    Some(global)
                }
                AxisMap::Affine { .. } => None,
            })
            .collect();
        let scalar = self.shape.is_empty();
        let padded = self.padded_inner();
        let contiguous = self.contiguous_inner();
        let loop_dims = self.loop_dims();
        let emit_body = |index: &[IntValue<'ctx>]| -> Result<(), CodegenError> {
            let out_at = k.linear(0, index, &self.out_strides)?;
            let mut in_at = k.int(0);
            let mut valid: Option<IntValue<'ctx>> = None;
            let mut all_index = index.to_vec();
            if contiguous {
                all_index.push(k.int(0));
            }
            // A padded row's innermost axis is placed below, not looked up.
            let mapped = self.maps.len() - usize::from(padded.is_some());
            for (d, map) in self.maps[..mapped].iter().enumerate() {
                let i = all_index[d];
                let position = match map {
                    AxisMap::Affine { start, step } => {
                        k.em.mul_add(i, k.int(*step), k.int(*start))?
                    }
                    AxisMap::Table(t) => {
                        let global =
                            tables[d].ok_or(CodegenError::Internal("table axes have globals"))?;
                        let array = global.get_value_type().into_array_type();
                        // SAFETY: GEP into the table; `i` < the axis length,
                        // the table's length.
                        let at = unsafe {
                            k.em.builder.build_in_bounds_gep(
                                array,
                                global.as_pointer_value(),
                                &[k.int(0), i],
                                "entry",
                            )?
                        };
                        let p =
                            k.em.builder
                                .build_load(cx.context.i64_type(), at, "src")?
                                .into_int_value();
                        if t.contains(&-1) {
                            let ok = k.em.builder.build_int_compare(
                                IntPredicate::SGE,
                                p,
                                k.int(0),
                                "ok",
                            )?;
                            valid = Some(match valid {
                                Some(v) => k.em.builder.build_and(v, ok, "ok")?,
                                None => ok,
                            });
                            k.em.builder
                                .build_select(ok, p, k.int(0), "p")?
                                .into_int_value()
                        } else {
                            p
                        }
                    }
                };
                in_at = k.em.mul_add(position, k.int(self.in_strides[d]), in_at)?;
            }
            if let Some(row) = padded {
                let fill = int.const_int(self.fill, false);
                let width = *self
                    .shape
                    .last()
                    .ok_or(CodegenError::Internal("a padded row has an axis"))?;
                let fill_range = |from: usize, to: usize| {
                    k.em.counted_loop(k.int(from as i64), k.int(to as i64), |j| {
                        let at = k.em.builder.build_int_add(out_at, j, "at")?;
                        k.em.builder
                            .build_store(k.element(k.buffers[0], int.into(), at)?, fill)?;
                        Ok(())
                    })
                };
                fill_range(0, row.before)?;
                fill_range(row.before + row.len, width)?;
                let copy = || -> Result<(), CodegenError> {
                    let dst =
                        k.em.builder
                            .build_int_add(out_at, k.int(row.before as i64), "d")?;
                    let src = k.em.builder.build_int_add(in_at, k.int(row.start), "s")?;
                    let bytes = k.int((row.len * self.elem_bytes as usize) as i64);
                    k.em.builder.build_memcpy(
                        k.element(k.buffers[0], int.into(), dst)?,
                        self.elem_bytes,
                        k.element(k.buffers[1], int.into(), src)?,
                        self.elem_bytes,
                        bytes,
                    )?;
                    Ok(())
                };
                // A row a leading table puts in the padding is fill only.
                return match valid {
                    None => copy(),
                    Some(valid) => {
                        k.em.if_then(valid, copy)?;
                        let outside = k.em.builder.build_not(valid, "outside")?;
                        k.em.if_then(outside, || fill_range(row.before, row.before + row.len))
                    }
                };
            }
            if contiguous {
                let len = *self
                    .shape
                    .last()
                    .ok_or(CodegenError::Internal("contiguous needs an axis"))?;
                let bytes = k.int((len * self.elem_bytes as usize) as i64);
                let dst = k.element(k.buffers[0], int.into(), out_at)?;
                let src = k.element(k.buffers[1], int.into(), in_at)?;
                k.em.builder
                    .build_memcpy(dst, self.elem_bytes, src, self.elem_bytes, bytes)?;
                return Ok(());
            }
            let src = k.element(k.buffers[1], int.into(), in_at)?;
            let mut value = k.em.builder.build_load(int, src, "v")?.into_int_value();
            if let Some(valid) = valid {
                let fill = int.const_int(self.fill, false);
                value =
                    k.em.builder
                        .build_select(valid, value, fill, "v")?
                        .into_int_value();
            }
            let dst = k.element(k.buffers[0], int.into(), out_at)?;
            k.em.builder.build_store(dst, value)?;
            Ok(())
        };
        if scalar {
            emit_body(&[])?;
        } else if loop_dims.is_empty() {
            k.em.if_then(
                k.em.builder
                    .build_int_compare(IntPredicate::ULT, k.begin, k.end, "any")?,
                || emit_body(&[]),
            )?;
        } else {
            k.nest_folded(&loop_dims, fold_axes(&loop_dims), &mut |index| {
                emit_body(index)
            })?;
        }
        k.finish()
    }
}

/// Lowers Transpose, Slice, Expand, Pad and Concat.
pub(crate) fn lower(l: &mut Lowering<'_, '_>, node: &Node) -> Result<(), CodegenError> {
    let out_shape = l.shape(node.output)?;
    let dtype = l.dtype(node.output);
    let elem_bytes = element_bytes(dtype, &node.op)?;
    let out = l.define(node.output)?;
    if let Op::Concat { axis } = node.op {
        let out_strides = contiguous_strides(&out_shape);
        let mut offset = 0usize;
        for &input in &node.inputs {
            let shape = l.shape(input)?;
            let copy = IndexCopy {
                elem_bytes,
                in_strides: contiguous_strides(&shape),
                maps: vec![AxisMap::Affine { start: 0, step: 1 }; shape.len()],
                out_strides: out_strides.clone(),
                shape: shape.clone(),
                fill: 0,
            };
            let at = offset * out_strides[axis] as usize * elem_bytes as usize;
            offset += shape[axis];
            if shape.iter().product::<usize>() == 0 {
                continue;
            }
            let dst = crate::graph::Loc {
                buf: out.buf,
                offset: out.offset + at,
            };
            let src = l.loc(input)?;
            if src == dst {
                // Written in place by its producer (a slice).
                continue;
            }
            let symbol = l.symbol("concat");
            copy.emit(l.cx, &symbol)?;
            l.kernel(symbol, vec![dst, src], copy.extent(), true);
        }
        return Ok(());
    }
    let in_shape = l.shape(node.inputs[0])?;
    let own = contiguous_strides(&in_shape);
    let identity = |rank: usize| vec![AxisMap::Affine { start: 0, step: 1 }; rank];
    let (in_strides, maps, fill) = match &node.op {
        Op::Transpose { perm } => (
            perm.iter().map(|&p| own[p]).collect(),
            identity(perm.len()),
            0,
        ),
        Op::Slice { axes } => (own.clone(), slice_maps(axes), 0),
        Op::Expand { .. } => (
            broadcast_strides(&in_shape, &out_shape),
            identity(out_shape.len()),
            0,
        ),
        Op::Pad { pads, mode } => {
            let rank = in_shape.len();
            let maps = (0..rank)
                .map(|d| pad_table(in_shape[d], pads[d], pads[d + rank], *mode).map(AxisMap::Table))
                .collect::<Result<Vec<_>, _>>()?;
            let fill = match mode {
                PadMode::Constant(c) => fill_bits(dtype, *c),
                _ => 0,
            };
            (own.clone(), maps, fill)
        }
        other => unreachable!("{} is not a movement op", other.name()),
    };
    let copy = IndexCopy {
        elem_bytes,
        out_strides: contiguous_strides(&out_shape),
        shape: out_shape.clone(),
        in_strides,
        maps,
        fill,
    };
    if out_shape.iter().product::<usize>() == 0 {
        return Ok(());
    }
    let symbol = l.symbol(&node.op.name().to_lowercase());
    copy.emit(l.cx, &symbol)?;
    let src = l.loc(node.inputs[0])?;
    l.kernel(symbol, vec![out, src], copy.extent(), true);
    Ok(())
}

fn slice_maps(axes: &[SliceAxis]) -> Vec<AxisMap> {
    axes.iter()
        .map(|a| AxisMap::Affine {
            start: a.start as i64,
            step: a.step,
        })
        .collect()
}

/// Bytes per element of a tensor that is only moved (any type but the
/// packed int4/uint4).
pub(crate) fn element_bytes(dtype: DType, op: &Op) -> Result<u32, CodegenError> {
    if matches!(dtype, DType::I4 | DType::U4) {
        return Err(CodegenError::Unsupported(format!(
            "{} on packed {dtype} tensors",
            op.name()
        )));
    }
    Ok(dtype.size_bits().div_ceil(8) as u32)
}

/// The source position of every padded position of an axis of `n`
/// (-1: the constant).
pub(crate) fn pad_table(
    n: usize,
    before: usize,
    after: usize,
    mode: PadMode,
) -> Result<Vec<i64>, CodegenError> {
    let last = n as i64 - 1;
    if !matches!(mode, PadMode::Constant(_))
        && (before > 0 || after > 0)
        && (n == 0 || (mode == PadMode::Reflect && (before >= n || after >= n)))
    {
        return Err(CodegenError::Unsupported(format!(
            "{mode:?} padding of {before}/{after} on an axis of {n}"
        )));
    }
    Ok((-(before as i64)..n as i64 + after as i64)
        .map(|i| match mode {
            PadMode::Constant(_) if i < 0 || i > last => -1,
            PadMode::Reflect if i < 0 => -i,
            PadMode::Reflect if i > last => 2 * last - i,
            _ => i.clamp(0, last.max(0)),
        })
        .collect())
}

/// The bit pattern of the pad constant `c` in `dtype` (float→int
/// truncates and saturates, like a Cast).
fn fill_bits(dtype: DType, c: f64) -> u64 {
    match dtype {
        DType::F32 => u64::from((c as f32).to_bits()),
        DType::F16 => u64::from(half::f16::from_f64(c).to_bits()),
        DType::BF16 => u64::from(half::bf16::from_f64(c).to_bits()),
        DType::I64 => c as i64 as u64,
        DType::I32 => u64::from(c as i32 as u32),
        DType::I8 | DType::I4 => u64::from(c as i8 as u8),
        DType::U8 | DType::U4 => u64::from(c as u8),
        DType::Bool => u64::from(c != 0.0),
    }
}
