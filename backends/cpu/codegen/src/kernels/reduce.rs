//! ReduceSum / ReduceMax over any set of axes (vector accumulators when the
//! innermost input axis is reduced) and ArgMax along one axis.

use inkwell::values::{BasicValueEnum, IntValue, VectorValue};
use inkwell::{FloatPredicate, IntPredicate};
use m4c_ir::{Node, Op};

use super::{contiguous_strides, fold_axes, folded_extent, Cx, Elem, Kernel};
use crate::graph::Lowering;
use crate::CodegenError;

/// Vector accumulators a reduced row is spread over (FP adds have a
/// latency of 3–4 cycles and two issue per cycle).
const ACCUMULATORS: usize = 4;

/// A reduction: buffer 0 the output (kept axes, row-major), buffer 1 the
/// input.
#[derive(Clone, Debug)]
pub(crate) struct Reduce {
    pub max: bool,
    pub elem: Elem,
    pub kept: Vec<usize>,
    pub kept_strides: Vec<i64>,
    pub reduced: Vec<usize>,
    pub reduced_strides: Vec<i64>,
}

impl Reduce {
    /// Splits `shape` into kept and reduced axes.
    pub fn new(max: bool, elem: Elem, shape: &[usize], axes: &[usize]) -> Self {
        let strides = contiguous_strides(shape);
        let (mut kept, mut kept_strides, mut reduced, mut reduced_strides) =
            (vec![], vec![], vec![], vec![]);
        for d in 0..shape.len() {
            if axes.contains(&d) {
                // Reduced axes next to each other are one run in memory
                // (a pooled H, W plane is one row of H·W, not H rows of
                // W with a scalar remainder each).
                if d > 0 && axes.contains(&(d - 1)) {
                    if let (Some(size), Some(stride)) =
                        (reduced.last_mut(), reduced_strides.last_mut())
                    {
                        *size *= shape[d];
                        *stride = strides[d];
                        continue;
                    }
                }
                reduced.push(shape[d]);
                reduced_strides.push(strides[d]);
            } else {
                kept.push(shape[d]);
                kept_strides.push(strides[d]);
            }
        }
        Self {
            max,
            elem,
            kept,
            kept_strides,
            reduced,
            reduced_strides,
        }
    }

    /// The parallel axis's extent: the leading kept axes folded together
    /// ([`fold_axes`]: a `[1, C]` pooling result splits over its channels).
    pub fn extent(&self) -> usize {
        folded_extent(&self.kept)
    }

    fn combine<'ctx>(
        &self,
        k: &Kernel<'_, 'ctx>,
        a: VectorValue<'ctx>,
        b: VectorValue<'ctx>,
    ) -> Result<VectorValue<'ctx>, CodegenError> {
        let builder = &k.em.builder;
        Ok(match (self.max, self.elem.is_float()) {
            (false, true) => builder.build_float_add(a, b, "sum")?,
            (false, false) => builder.build_int_add(a, b, "sum")?,
            (true, true) => {
                k.em.call_value(
                    "llvm.maximum",
                    &[a.get_type().into()],
                    &[a.into(), b.into()],
                )?
                .into_vector_value()
            }
            (true, false) => {
                let greater = if self.elem.is_unsigned() {
                    IntPredicate::UGT
                } else {
                    IntPredicate::SGT
                };
                let gt = builder.build_int_compare(greater, a, b, "gt")?;
                builder.build_select(gt, a, b, "max")?.into_vector_value()
            }
        })
    }

    fn identity<'ctx>(&self, k: &Kernel<'_, 'ctx>, lanes: u32) -> VectorValue<'ctx> {
        let ty = self.elem.vector(k.cx.context, lanes);
        if !self.max {
            return ty.const_zero();
        }
        let scalar: BasicValueEnum<'ctx> = match self.elem {
            Elem::F32 => {
                k.cx.context
                    .f32_type()
                    .const_float(f64::NEG_INFINITY)
                    .into()
            }
            Elem::I64 => {
                k.cx.context
                    .i64_type()
                    .const_int(i64::MIN as u64, true)
                    .into()
            }
            Elem::I32 => {
                k.cx.context
                    .i32_type()
                    .const_int(i32::MIN as i64 as u64, true)
                    .into()
            }
            Elem::U8 => k.cx.context.i8_type().const_zero().into(),
            _ => {
                k.cx.context
                    .i8_type()
                    .const_int(i8::MIN as i64 as u64, true)
                    .into()
            }
        };
        let lanes_v: Vec<_> = (0..lanes).map(|_| scalar).collect();
        match scalar {
            BasicValueEnum::FloatValue(_) => inkwell::types::VectorType::const_vector(
                &lanes_v
                    .iter()
                    .map(|v| v.into_float_value())
                    .collect::<Vec<_>>(),
            ),
            _ => inkwell::types::VectorType::const_vector(
                &lanes_v
                    .iter()
                    .map(|v| v.into_int_value())
                    .collect::<Vec<_>>(),
            ),
        }
    }

    /// Emits the kernel `symbol`.
    pub fn emit<'ctx>(&self, cx: Cx<'_, 'ctx>, symbol: &str) -> Result<(), CodegenError> {
        let k = Kernel::define(cx, symbol, 2)?;
        let lanes = cx.lanes();
        let mem = self.elem.memory_type(cx.context);
        let vector = self.elem.vector(cx.context, lanes);
        let scalar = self.elem.vector(cx.context, 1);
        // Independent accumulators for the full vectors of a row, so that
        // the loads are not serialised behind one chain of adds.
        let wides = (0..ACCUMULATORS)
            .map(|_| k.slot(vector.into()))
            .collect::<Result<Vec<_>, _>>()?;
        let wide = wides[0];
        let narrow = k.slot(scalar.into())?;
        let contiguous = self.reduced_strides.last() == Some(&1);
        let (outer_reduced, inner_len) = if contiguous {
            (
                &self.reduced[..self.reduced.len() - 1],
                *self
                    .reduced
                    .last()
                    .ok_or(CodegenError::Internal("contiguous has an axis"))?,
            )
        } else {
            (&self.reduced[..], 1)
        };
        let out_strides = contiguous_strides(&self.kept);
        let mut body = |kept: &[IntValue<'ctx>]| -> Result<(), CodegenError> {
            let base = k.linear(0, kept, &self.kept_strides)?;
            for &slot in &wides {
                k.em.builder.build_store(slot, self.identity(&k, lanes))?;
            }
            k.em.builder.build_store(narrow, self.identity(&k, 1))?;
            let step = ACCUMULATORS * lanes as usize;
            let unrolled = inner_len / step;
            k.nest(outer_reduced, false, &mut |red: &[IntValue<'ctx>]| {
                let row = k.linear(0, red, &self.reduced_strides)?;
                let row = k.em.builder.build_int_add(row, base, "row")?;
                if unrolled > 0 {
                    k.em.counted_loop(k.int(0), k.int(unrolled as i64), |i| {
                        let b = &k.em.builder;
                        let first = k.em.mul_add(i, k.int(step as i64), row)?;
                        for (a, &slot) in wides.iter().enumerate() {
                            let at =
                                b.build_int_add(first, k.int((a * lanes as usize) as i64), "at")?;
                            let v = k.load(self.elem, lanes, k.element(k.buffers[1], mem, at)?)?;
                            let acc = b.build_load(vector, slot, "acc")?.into_vector_value();
                            b.build_store(slot, self.combine(&k, acc, v)?)?;
                        }
                        Ok(())
                    })?;
                }
                let row =
                    k.em.builder
                        .build_int_add(row, k.int((unrolled * step) as i64), "rest")?;
                k.row(inner_len - unrolled * step, lanes, &mut |pos, width| {
                    let at = k.em.builder.build_int_add(row, pos, "at")?;
                    let v = k.load(self.elem, width, k.element(k.buffers[1], mem, at)?)?;
                    let slot = if width == lanes { wide } else { narrow };
                    let ty = if width == lanes { vector } else { scalar };
                    let acc =
                        k.em.builder
                            .build_load(ty, slot, "acc")?
                            .into_vector_value();
                    k.em.builder.build_store(slot, self.combine(&k, acc, v)?)?;
                    Ok(())
                })
            })?;
            let mut acc =
                k.em.builder
                    .build_load(vector, wide, "acc")?
                    .into_vector_value();
            for &slot in &wides[1..] {
                let more =
                    k.em.builder
                        .build_load(vector, slot, "acc")?
                        .into_vector_value();
                acc = self.combine(&k, acc, more)?;
            }
            let mut total =
                k.em.builder
                    .build_load(scalar, narrow, "rest")?
                    .into_vector_value();
            for lane in 0..lanes {
                let v = k.em.builder.build_extract_element(
                    acc,
                    cx.context.i32_type().const_int(u64::from(lane), false),
                    "lane",
                )?;
                let v = k.em.builder.build_insert_element(
                    scalar.get_poison(),
                    v,
                    cx.context.i32_type().const_zero(),
                    "one",
                )?;
                total = self.combine(&k, total, v)?;
            }
            let out = k.linear(0, kept, &out_strides)?;
            k.store(self.elem, k.element(k.buffers[0], mem, out)?, total)
        };
        if self.kept.is_empty() {
            k.em.if_then(
                k.em.builder
                    .build_int_compare(IntPredicate::ULT, k.begin, k.end, "any")?,
                || body(&[]),
            )?;
        } else {
            k.nest_folded(&self.kept, fold_axes(&self.kept), &mut body)?;
        }
        k.finish()
    }
}

/// Lowers ReduceSum / ReduceMax.
pub(crate) fn lower(
    l: &mut Lowering<'_, '_>,
    node: &Node,
    axes: &[usize],
) -> Result<(), CodegenError> {
    let max = matches!(node.op, Op::ReduceMax { .. });
    let elem = Elem::of(l.dtype(node.inputs[0]), node.op.name())?;
    if elem == Elem::Bool {
        return Err(CodegenError::Unsupported(format!(
            "{} on bool",
            node.op.name()
        )));
    }
    let shape = l.shape(node.inputs[0])?;
    let spec = Reduce::new(max, elem, &shape, axes);
    let out = l.define(node.output)?;
    if l.shape(node.output)?.iter().product::<usize>() == 0 {
        return Ok(());
    }
    let symbol = l.symbol("reduce");
    spec.emit(l.cx, &symbol)?;
    let input = l.loc(node.inputs[0])?;
    l.kernel(symbol, vec![out, input], spec.extent(), true);
    Ok(())
}

/// Emits ArgMax over the middle axis of `[outer, len, inner]`.
fn emit_argmax(
    cx: Cx<'_, '_>,
    symbol: &str,
    elem: Elem,
    (outer, len, inner): (usize, usize, usize),
    select_last: bool,
) -> Result<(), CodegenError> {
    let k = Kernel::define(cx, symbol, 2)?;
    let mem = elem.memory_type(cx.context);
    let i64t = cx.context.i64_type();
    let best = k.slot(elem.vector(cx.context, 1).into())?;
    let best_at = k.slot(i64t.into())?;
    k.nest(&[outer, inner], true, &mut |oi: &[IntValue<'_>]| {
        let base = k.linear(0, oi, &[(len * inner) as i64, 1])?;
        let first = k.load(elem, 1, k.element(k.buffers[1], mem, base)?)?;
        k.em.builder.build_store(best, first)?;
        k.em.builder.build_store(best_at, k.int(0))?;
        k.em.counted_loop(k.int(1), k.int(len as i64), |j| {
            let at = k.em.mul_add(j, k.int(inner as i64), base)?;
            let v = k.load(elem, 1, k.element(k.buffers[1], mem, at)?)?;
            let b =
                k.em.builder
                    .build_load(elem.vector(cx.context, 1), best, "b")?
                    .into_vector_value();
            let better = match (elem.is_float(), select_last) {
                (true, false) => {
                    k.em.builder
                        .build_float_compare(FloatPredicate::OGT, v, b, "gt")?
                }
                (true, true) => {
                    k.em.builder
                        .build_float_compare(FloatPredicate::OGE, v, b, "ge")?
                }
                (false, last) => {
                    let predicate = match (elem.is_unsigned(), last) {
                        (false, false) => IntPredicate::SGT,
                        (false, true) => IntPredicate::SGE,
                        (true, false) => IntPredicate::UGT,
                        (true, true) => IntPredicate::UGE,
                    };
                    k.em.builder.build_int_compare(predicate, v, b, "better")?
                }
            };
            let better = k.em.builder.build_extract_element(
                better,
                cx.context.i32_type().const_zero(),
                "better",
            )?;
            let nb =
                k.em.builder
                    .build_select(better.into_int_value(), v, b, "nb")?;
            k.em.builder.build_store(best, nb)?;
            let old =
                k.em.builder
                    .build_load(i64t, best_at, "old")?
                    .into_int_value();
            let ni =
                k.em.builder
                    .build_select(better.into_int_value(), j, old, "ni")?;
            k.em.builder.build_store(best_at, ni)?;
            Ok(())
        })?;
        let out = k.linear(0, oi, &[inner as i64, 1])?;
        let index = k.em.builder.build_load(i64t, best_at, "index")?;
        k.em.builder
            .build_store(k.element(k.buffers[0], i64t.into(), out)?, index)?;
        Ok(())
    })?;
    k.finish()
}

/// Lowers ArgMax.
pub(crate) fn lower_argmax(
    l: &mut Lowering<'_, '_>,
    node: &Node,
    axis: usize,
    select_last: bool,
) -> Result<(), CodegenError> {
    let elem = Elem::of(l.dtype(node.inputs[0]), "ArgMax")?;
    let shape = l.shape(node.inputs[0])?;
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let out = l.define(node.output)?;
    if outer * inner == 0 || shape[axis] == 0 {
        return Ok(());
    }
    let symbol = l.symbol("argmax");
    emit_argmax(
        l.cx,
        &symbol,
        elem,
        (outer, shape[axis], inner),
        select_last,
    )?;
    let input = l.loc(node.inputs[0])?;
    l.kernel(symbol, vec![out, input], outer, true);
    Ok(())
}
