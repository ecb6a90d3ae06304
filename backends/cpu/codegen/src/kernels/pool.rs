//! Sliding windows over `[N, C, spatial..]`: the tap arithmetic shared with
//! convolution, and MaxPool / AvgPool.

use inkwell::values::IntValue;
use inkwell::{FloatPredicate, IntPredicate};
use m4c_ir::op::PoolAttrs;
use m4c_ir::{DType, Node};

use super::math::Math;
use super::{contiguous_strides, Cx, Elem, Kernel};
use crate::graph::Lowering;
use crate::CodegenError;

/// A window geometry over the spatial axes.
#[derive(Clone, Debug)]
pub(crate) struct Window {
    pub input: Vec<usize>,
    pub output: Vec<usize>,
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    /// Begin pads per spatial axis.
    pub pads: Vec<usize>,
    pub dilations: Vec<usize>,
}

impl Window {
    /// The input position of tap `t` of output position `o` on axis `d`,
    /// and whether it lies inside the input.
    pub fn tap<'ctx>(
        &self,
        k: &Kernel<'_, 'ctx>,
        d: usize,
        o: IntValue<'ctx>,
        t: IntValue<'ctx>,
    ) -> Result<(IntValue<'ctx>, IntValue<'ctx>), CodegenError> {
        let p = k.em.mul_add(
            o,
            k.int(self.strides[d] as i64),
            k.int(-(self.pads[d] as i64)),
        )?;
        let p = k.em.mul_add(t, k.int(self.dilations[d] as i64), p)?;
        let inside = k.em.builder.build_int_compare(
            IntPredicate::ULT,
            p,
            k.int(self.input[d] as i64),
            "inside",
        )?;
        Ok((p, inside))
    }

    /// The input offset of the taps `(o, t)` inside one channel plane, and
    /// whether all are inside (the offset is 0 when not).
    pub fn offset<'ctx>(
        &self,
        k: &Kernel<'_, 'ctx>,
        o: &[IntValue<'ctx>],
        t: &[IntValue<'ctx>],
    ) -> Result<(IntValue<'ctx>, IntValue<'ctx>), CodegenError> {
        let strides = contiguous_strides(&self.input);
        let mut at = k.int(0);
        let mut all = k.cx.context.bool_type().const_all_ones();
        for d in 0..self.input.len() {
            let (p, inside) = self.tap(k, d, o[d], t[d])?;
            at = k.em.mul_add(p, k.int(strides[d]), at)?;
            all = k.em.builder.build_and(all, inside, "all")?;
        }
        let at =
            k.em.builder
                .build_select(all, at, k.int(0), "at")?
                .into_int_value();
        Ok((at, all))
    }
}

/// Emits a pool over `[planes, spatial..]` (buffers: out, in); `average`
/// is `Some(count_include_pad)` for AvgPool.
fn emit(
    cx: Cx<'_, '_>,
    symbol: &str,
    planes: usize,
    w: &Window,
    average: Option<bool>,
) -> Result<(), CodegenError> {
    let k = Kernel::define(cx, symbol, 2)?;
    let f32t = cx.context.f32_type();
    let v1 = f32t.vec_type(1);
    let acc = k.slot(v1.into())?;
    let count = k.slot(v1.into())?;
    let one = Math::new(&k, 1);
    let in_plane: usize = w.input.iter().product();
    let out_plane: usize = w.output.iter().product();
    let mut dims = vec![planes];
    dims.extend(&w.output);
    k.nest(&dims, true, &mut |idx: &[IntValue<'_>]| {
        let (plane, o) = idx.split_first().expect("plane axis");
        let start = if average.is_some() {
            0.0
        } else {
            f32::NEG_INFINITY
        };
        k.em.builder.build_store(acc, one.c(start))?;
        k.em.builder.build_store(count, one.c(0.0))?;
        let base =
            k.em.builder
                .build_int_mul(*plane, k.int(in_plane as i64), "base")?;
        k.nest(&w.kernel, false, &mut |t: &[IntValue<'_>]| {
            let (at, inside) = w.offset(&k, o, t)?;
            let at = k.em.builder.build_int_add(at, base, "at")?;
            let x = k.load(Elem::F32, 1, k.element(k.buffers[1], f32t.into(), at)?)?;
            let a = k.em.builder.build_load(v1, acc, "acc")?.into_vector_value();
            let inside_v = k.em.builder.build_insert_element(
                cx.context.bool_type().vec_type(1).get_poison(),
                inside,
                cx.context.i32_type().const_zero(),
                "inside",
            )?;
            let updated = match average {
                Some(_) => one.add(a, x)?,
                None => {
                    let gt =
                        k.em.builder
                            .build_float_compare(FloatPredicate::OGT, x, a, "gt")?;
                    k.em.builder
                        .build_select(gt, x, a, "max")?
                        .into_vector_value()
                }
            };
            let updated =
                k.em.builder
                    .build_select(inside_v, updated, a, "acc")?
                    .into_vector_value();
            k.em.builder.build_store(acc, updated)?;
            let c = k.em.builder.build_load(v1, count, "c")?.into_vector_value();
            let c1 = one.add(c, one.c(1.0))?;
            let c =
                k.em.builder
                    .build_select(inside_v, c1, c, "c")?
                    .into_vector_value();
            k.em.builder.build_store(count, c)?;
            Ok(())
        })?;
        let mut result = k.em.builder.build_load(v1, acc, "r")?.into_vector_value();
        if let Some(include_pad) = average {
            let divisor = if include_pad {
                one.c(w.kernel.iter().product::<usize>() as f32)
            } else {
                k.em.builder.build_load(v1, count, "n")?.into_vector_value()
            };
            result = one.div(result, divisor)?;
        }
        let out_strides = contiguous_strides(&w.output);
        let at = k.linear(0, o, &out_strides)?;
        let at = k.em.mul_add(*plane, k.int(out_plane as i64), at)?;
        k.store(Elem::F32, k.element(k.buffers[0], f32t.into(), at)?, result)?;
        Ok(())
    })?;
    k.finish()
}

/// Lowers MaxPool (`average: None`) and AvgPool.
pub(crate) fn lower(
    l: &mut Lowering<'_, '_>,
    node: &Node,
    pool: &PoolAttrs,
    average: Option<bool>,
) -> Result<(), CodegenError> {
    if l.dtype(node.inputs[0]) != DType::F32 {
        return Err(CodegenError::Unsupported(format!(
            "{} on {} (only f32)",
            node.op.name(),
            l.dtype(node.inputs[0])
        )));
    }
    let shape = l.shape(node.inputs[0])?;
    let out_shape = l.shape(node.output)?;
    let window = Window {
        input: shape[2..].to_vec(),
        output: out_shape[2..].to_vec(),
        kernel: pool.kernel.clone(),
        strides: pool.strides.clone(),
        pads: pool.pads[..shape.len() - 2].to_vec(),
        dilations: pool.dilations.clone(),
    };
    let out = l.define(node.output)?;
    let planes = shape[0] * shape[1];
    if out_shape.iter().product::<usize>() == 0 {
        return Ok(());
    }
    let symbol = l.symbol("pool");
    emit(l.cx, &symbol, planes, &window, average)?;
    let input = l.loc(node.inputs[0])?;
    l.kernel(symbol, vec![out, input], planes, true);
    Ok(())
}
