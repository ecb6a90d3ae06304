//! Resize: source coordinates are computed at compile time (the ONNX
//! coordinate modes); nearest becomes a table copy, N-linear a kernel that
//! blends the corners axis by axis in the interpreter's order.

use inkwell::module::Linkage;
use inkwell::values::{GlobalValue, IntValue, VectorValue};
use m4c_ir::op::{CoordMode, ResizeMode};
use m4c_ir::{DType, Node};

use super::math::{math, Math};
use super::movement::{element_bytes, AxisMap, IndexCopy};
use super::{contiguous_strides, Cx, Elem, Kernel};
use crate::graph::Lowering;
use crate::CodegenError;

/// Per resized axis: low and high source index and the blend weight.
struct LinearAxis {
    axis: usize,
    lo: Vec<i64>,
    hi: Vec<i64>,
    weight: Vec<f32>,
}

fn global<'ctx, T: inkwell::values::BasicValue<'ctx>>(
    cx: Cx<'_, 'ctx>,
    name: &str,
    array: T,
) -> GlobalValue<'ctx> {
    let value = array.as_basic_value_enum();
    let g = cx.module.add_global(value.get_type(), None, name);
    g.set_initializer(&value);
    g.set_constant(true);
    g.set_linkage(Linkage::Private);
    g
}

/// Emits N-linear resize (buffers: out, in).
fn emit_linear<'ctx>(
    cx: Cx<'_, 'ctx>,
    symbol: &str,
    in_shape: &[usize],
    out_shape: &[usize],
    axes: &[LinearAxis],
) -> Result<(), CodegenError> {
    let k = Kernel::define(cx, symbol, 2)?;
    let (i64t, f32t) = (cx.context.i64_type(), cx.context.f32_type());
    let tables: Vec<[GlobalValue<'ctx>; 3]> = axes
        .iter()
        .map(|a| {
            let ints = |v: &[i64]| {
                i64t.const_array(
                    &v.iter()
                        .map(|&x| i64t.const_int(x as u64, true))
                        .collect::<Vec<_>>(),
                )
            };
            let floats = f32t.const_array(
                &a.weight
                    .iter()
                    .map(|&w| f32t.const_float(f64::from(w)))
                    .collect::<Vec<_>>(),
            );
            [
                global(cx, &format!("{symbol}_lo{}", a.axis), ints(&a.lo)),
                global(cx, &format!("{symbol}_hi{}", a.axis), ints(&a.hi)),
                global(cx, &format!("{symbol}_w{}", a.axis), floats),
            ]
        })
        .collect();
    let in_strides = contiguous_strides(in_shape);
    let out_strides = contiguous_strides(out_shape);
    let one = math(&k, 1);
    k.nest(out_shape, true, &mut |o: &[IntValue<'ctx>]| {
        let entry = |g: GlobalValue<'ctx>,
                     ty: inkwell::types::BasicTypeEnum<'ctx>,
                     i: IntValue<'ctx>|
         -> Result<_, CodegenError> {
            let array = g.get_value_type().into_array_type();
            // SAFETY: GEP into a table of the axis length; `i` < that length.
            let at = unsafe {
                k.em.builder.build_in_bounds_gep(
                    array,
                    g.as_pointer_value(),
                    &[k.int(0), i],
                    "e",
                )?
            };
            Ok(k.em.builder.build_load(ty, at, "t")?)
        };
        let mut fixed = Vec::new();
        let mut base = k.int(0);
        for (d, &i) in o.iter().enumerate() {
            if !axes.iter().any(|a| a.axis == d) {
                base = k.em.mul_add(i, k.int(in_strides[d]), base)?;
            }
        }
        for (a, t) in axes.iter().zip(&tables) {
            let i = o[a.axis];
            let lo = entry(t[0], i64t.into(), i)?.into_int_value();
            let hi = entry(t[1], i64t.into(), i)?.into_int_value();
            let w = entry(t[2], f32t.into(), i)?.into_float_value();
            let w = k.em.builder.build_insert_element(
                f32t.vec_type(1).get_poison(),
                w,
                cx.context.i32_type().const_zero(),
                "w",
            )?;
            fixed.push((a.axis, lo, hi, w));
        }
        let value = blend(&k, &one, &fixed, &in_strides, base, fixed.len())?;
        let at = k.linear(0, o, &out_strides)?;
        k.store(Elem::F32, k.element(k.buffers[0], f32t.into(), at)?, value)
    })?;
    k.finish()
}

/// The blend over the first `depth` resized axes at `base` (the
/// interpreter interpolates the lowest axis first, so it is innermost).
fn blend<'ctx>(
    k: &Kernel<'_, 'ctx>,
    m: &Math<'_, 'ctx>,
    axes: &[(usize, IntValue<'ctx>, IntValue<'ctx>, VectorValue<'ctx>)],
    strides: &[i64],
    base: IntValue<'ctx>,
    depth: usize,
) -> Result<VectorValue<'ctx>, CodegenError> {
    if depth == 0 {
        let f32t = k.cx.context.f32_type();
        return k.load(Elem::F32, 1, k.element(k.buffers[1], f32t.into(), base)?);
    }
    let (axis, lo, hi, w) = axes[depth - 1];
    let at_lo = k.em.mul_add(lo, k.int(strides[axis]), base)?;
    let at_hi = k.em.mul_add(hi, k.int(strides[axis]), base)?;
    let a0 = blend(k, m, axes, strides, at_lo, depth - 1)?;
    let a1 = blend(k, m, axes, strides, at_hi, depth - 1)?;
    Ok(m.add(a0, m.mul(m.sub(a1, a0)?, w)?)?)
}

/// Lowers Resize.
pub(crate) fn lower(
    l: &mut Lowering<'_, '_>,
    node: &Node,
    mode: ResizeMode,
    coord: CoordMode,
    scales: &[f32],
) -> Result<(), CodegenError> {
    let in_shape = l.shape(node.inputs[0])?;
    let out_shape = l.shape(node.output)?;
    let axes: Vec<usize> = (0..in_shape.len())
        .filter(|&d| out_shape[d] != in_shape[d] || scales[d] != 1.0)
        .collect();
    let out = l.define(node.output)?;
    if out_shape.iter().product::<usize>() == 0 {
        return Ok(());
    }
    let sources = |d: usize| -> Vec<f64> {
        (0..out_shape[d])
            .map(|o| coord.source(o, scales[d], in_shape[d], out_shape[d]))
            .collect()
    };
    let symbol = l.symbol("resize");
    let extent = match mode {
        ResizeMode::Nearest(rounding) => {
            let maps = (0..in_shape.len())
                .map(|d| {
                    if axes.contains(&d) {
                        AxisMap::Table(
                            sources(d)
                                .into_iter()
                                .map(|s| rounding.index(s, in_shape[d]) as i64)
                                .collect(),
                        )
                    } else {
                        AxisMap::Affine { start: 0, step: 1 }
                    }
                })
                .collect();
            let copy = IndexCopy {
                elem_bytes: element_bytes(l.dtype(node.output), &node.op)?,
                shape: out_shape.clone(),
                out_strides: contiguous_strides(&out_shape),
                in_strides: contiguous_strides(&in_shape),
                maps,
                fill: 0,
            };
            copy.emit(l.cx, &symbol)?;
            copy.extent()
        }
        ResizeMode::Linear => {
            if l.dtype(node.output) != DType::F32 {
                return Err(CodegenError::Unsupported(
                    "linear Resize on non-f32 tensors".into(),
                ));
            }
            let linear: Vec<LinearAxis> = axes
                .iter()
                .map(|&d| {
                    let last = (in_shape[d] as f64 - 1.0).max(0.0);
                    let (mut lo, mut hi, mut weight) = (vec![], vec![], vec![]);
                    for x in sources(d) {
                        let x = x.clamp(0.0, last);
                        let i0 = x.floor();
                        lo.push(i0 as i64);
                        hi.push((i0 + 1.0).min(last) as i64);
                        weight.push((x - i0) as f32);
                    }
                    LinearAxis {
                        axis: d,
                        lo,
                        hi,
                        weight,
                    }
                })
                .collect();
            emit_linear(l.cx, &symbol, &in_shape, &out_shape, &linear)?;
            out_shape[0]
        }
    };
    let input = l.loc(node.inputs[0])?;
    l.kernel(symbol, vec![out, input], extent, true);
    Ok(())
}
