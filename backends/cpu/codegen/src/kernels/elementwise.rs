//! Fused elementwise kernels: a tree of elementwise IR operations with
//! numpy broadcasting evaluated in one loop nest, intermediates in
//! registers, with target-width vectors along the innermost axis.

use inkwell::values::{IntValue, VectorValue};
use inkwell::{FloatPredicate, IntPredicate};
use m4c_ir::{DType, Op};

use std::collections::HashMap;

use m4c_ir::ValueId;

use super::math::{math, Math};
use super::{broadcast_strides, contiguous_strides, fold_axes, folded_extent, Cx, Elem, Kernel};
use crate::graph::Lowering;
use crate::CodegenError;

/// A tensor the fused expression reads, with its strides broadcast to the
/// output shape (0 on broadcast axes).
#[derive(Clone, Debug)]
pub(crate) struct Operand {
    pub elem: Elem,
    pub strides: Vec<i64>,
}

/// Where an expression node's argument comes from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg {
    /// A loaded operand.
    Operand(usize),
    /// An earlier node's result.
    Node(usize),
    /// A compile-time scalar constant (f32 operands only).
    Scalar(f32),
}

/// One elementwise operation of the fused tree.
#[derive(Clone, Debug)]
pub(crate) struct ExprNode {
    pub op: Op,
    pub args: Vec<Arg>,
    pub elem: Elem,
}

/// A fused elementwise kernel: the output shape, the operands (buffers
/// `1..`; buffer 0 is the output) and the nodes in evaluation order, the
/// last being the result.
#[derive(Clone, Debug)]
pub(crate) struct Fused {
    pub shape: Vec<usize>,
    pub operands: Vec<Operand>,
    pub nodes: Vec<ExprNode>,
}

impl Fused {
    /// The collapsed loop shape: size-1 axes dropped and neighbouring axes
    /// merged wherever every operand (and the output) is contiguous across
    /// them. Returns the dims and the operands' strides over them.
    fn collapsed(&self) -> (Vec<usize>, Vec<Vec<i64>>) {
        let out = contiguous_strides(&self.shape);
        let mut dims: Vec<usize> = Vec::new();
        let mut strides: Vec<Vec<i64>> = vec![Vec::new(); self.operands.len() + 1];
        for (d, (&size, &out_stride)) in self.shape.iter().zip(&out).enumerate() {
            if size == 1 {
                continue;
            }
            let axis: Vec<i64> = std::iter::once(out_stride)
                .chain(self.operands.iter().map(|o| o.strides[d]))
                .collect();
            // Every stride list has one entry per dim so far (pushed together).
            let mergeable = !dims.is_empty()
                && strides
                    .iter()
                    .zip(&axis)
                    .all(|(s, &inner)| s.last() == Some(&(inner * self.shape[d] as i64)));
            if let (true, Some(last)) = (mergeable, dims.last_mut()) {
                *last *= size;
                for (s, &inner) in strides.iter_mut().zip(&axis) {
                    if let Some(last) = s.last_mut() {
                        *last = inner;
                    }
                }
            } else {
                dims.push(size);
                for (s, &inner) in strides.iter_mut().zip(&axis) {
                    s.push(inner);
                }
            }
        }
        if dims.is_empty() {
            dims.push(1);
            for s in &mut strides {
                s.push(1);
            }
        }
        (dims, strides)
    }

    /// The iterations of the kernel's outermost loop (what the executor
    /// splits over threads).
    pub fn extent(&self, lanes: u32) -> usize {
        let (dims, _) = self.collapsed();
        if dims.len() > 1 {
            folded_extent(&dims[..dims.len() - 1])
        } else {
            dims[0].div_ceil(lanes as usize)
        }
    }

    /// Emits the kernel `symbol`.
    pub fn emit(&self, cx: Cx<'_, '_>, symbol: &str) -> Result<(), CodegenError> {
        let k = Kernel::define(cx, symbol, self.operands.len() + 1)?;
        let (dims, strides) = self.collapsed();
        let (outer, _) = dims.split_at(dims.len() - 1);
        if outer.is_empty() {
            self.emit_inner(&k, &dims, &strides, &[], true)?;
        } else {
            k.nest_folded(outer, fold_axes(outer), &mut |index| {
                self.emit_inner(&k, &dims, &strides, index, false)
            })?;
        }
        k.finish()
    }

    /// The innermost axis at outer position `index`: full vectors, then
    /// the remainder one element at a time. With `ranged`, the vectors are
    /// the kernel's iteration range (1-D kernels), the remainder belonging
    /// to the range that ends past the last vector.
    fn emit_inner<'ctx>(
        &self,
        k: &Kernel<'_, 'ctx>,
        dims: &[usize],
        strides: &[Vec<i64>],
        index: &[IntValue<'ctx>],
        ranged: bool,
    ) -> Result<(), CodegenError> {
        let lanes = k.cx.lanes();
        let inner = *dims
            .last()
            .ok_or(CodegenError::Internal("at least one dim"))?;
        let vectors = inner / lanes as usize;
        let tail = inner % lanes as usize;
        let out_elem = self
            .nodes
            .last()
            .ok_or(CodegenError::Internal("a fused group has nodes"))?
            .elem;
        let bases = strides
            .iter()
            .map(|s| k.linear(0, index, &s[..s.len() - 1]))
            .collect::<Result<Vec<_>, _>>()?;
        let inner_strides: Vec<i64> = strides.iter().map(|s| s[s.len() - 1]).collect();
        let (start, stop) = if ranged {
            (k.begin, k.em.umin(k.end, k.em.i64(vectors))?)
        } else {
            (k.em.i64(0), k.em.i64(vectors))
        };
        k.em.counted_loop(start, stop, |v| {
            let position =
                k.em.builder
                    .build_int_mul(v, k.em.i64(lanes as usize), "pos")?;
            self.emit_point(k, &bases, &inner_strides, position, lanes, out_elem)
        })?;
        if tail == 0 {
            return Ok(());
        }
        let emit_tail = || {
            k.em.counted_loop(k.em.i64(vectors * lanes as usize), k.em.i64(inner), |p| {
                self.emit_point(k, &bases, &inner_strides, p, 1, out_elem)
            })
        };
        if ranged {
            let covers = k.em.builder.build_int_compare(
                IntPredicate::UGT,
                k.end,
                k.em.i64(vectors),
                "tail",
            )?;
            k.em.if_then(covers, emit_tail)
        } else {
            emit_tail()
        }
    }

    /// Loads the operands at inner position `position` (`lanes` wide),
    /// evaluates the nodes and stores the result.
    fn emit_point<'ctx>(
        &self,
        k: &Kernel<'_, 'ctx>,
        bases: &[IntValue<'ctx>],
        inner_strides: &[i64],
        position: IntValue<'ctx>,
        lanes: u32,
        out_elem: Elem,
    ) -> Result<(), CodegenError> {
        let context = k.cx.context;
        let mut loaded = Vec::with_capacity(self.operands.len());
        for (i, operand) in self.operands.iter().enumerate() {
            let base = bases[i + 1];
            let stride = inner_strides[i + 1];
            let memory = operand.elem.memory_type(context);
            let buffer = k.buffers[i + 1];
            let value = match stride {
                0 => k.load_splat(operand.elem, lanes, k.element(buffer, memory, base)?)?,
                1 => {
                    let at = k.em.builder.build_int_add(base, position, "at")?;
                    k.load(operand.elem, lanes, k.element(buffer, memory, at)?)?
                }
                s => {
                    let mut vector = operand.elem.vector(context, lanes).get_poison();
                    for lane in 0..lanes {
                        let p =
                            k.em.builder
                                .build_int_add(position, k.em.i64(lane as usize), "p")?;
                        let at = k.em.mul_add(p, k.int(s), base)?;
                        let one = k.load(operand.elem, 1, k.element(buffer, memory, at)?)?;
                        let scalar = k.em.builder.build_extract_element(
                            one,
                            context.i32_type().const_zero(),
                            "s",
                        )?;
                        vector = k.em.builder.build_insert_element(
                            vector,
                            scalar,
                            context.i32_type().const_int(u64::from(lane), false),
                            "v",
                        )?;
                    }
                    vector
                }
            };
            loaded.push(value);
        }
        let operands: Vec<_> = loaded
            .iter()
            .zip(&self.operands)
            .map(|(&v, o)| (v, o.elem))
            .collect();
        let result = eval_tree(k, &math(k, lanes), &self.nodes, &operands)?;
        let out_at = k.em.builder.build_int_add(bases[0], position, "out")?;
        let out = k.element(k.buffers[0], out_elem.memory_type(context), out_at)?;
        k.store(out_elem, out, result)
    }
}

/// Evaluates a fused tree's `nodes` in order on its loaded `operands`
/// (with their element types): the last node's result.
pub(crate) fn eval_tree<'ctx>(
    k: &Kernel<'_, 'ctx>,
    math: &Math<'_, 'ctx>,
    nodes: &[ExprNode],
    operands: &[(VectorValue<'ctx>, Elem)],
) -> Result<VectorValue<'ctx>, CodegenError> {
    let mut results: Vec<VectorValue<'ctx>> = Vec::with_capacity(nodes.len());
    for node in nodes {
        let args: Vec<(VectorValue<'ctx>, Elem)> = node
            .args
            .iter()
            .map(|a| match *a {
                Arg::Operand(i) => operands[i],
                Arg::Node(i) => (results[i], nodes[i].elem),
                Arg::Scalar(v) => (math.c(v), Elem::F32),
            })
            .collect();
        let scalar = match node.args.get(1) {
            Some(Arg::Scalar(v)) => Some(*v),
            _ => None,
        };
        results.push(eval(k, math, &node.op, &args, scalar, node.elem)?);
    }
    results
        .last()
        .copied()
        .ok_or(CodegenError::Internal("a fused tree has nodes"))
}

/// Emits one elementwise operation on register vectors; `scalar` is
/// the second argument's value when it is a compile-time scalar.
pub(crate) fn eval<'ctx>(
    k: &Kernel<'_, 'ctx>,
    math: &Math<'_, 'ctx>,
    op: &Op,
    args: &[(VectorValue<'ctx>, Elem)],
    scalar: Option<f32>,
    out: Elem,
) -> Result<VectorValue<'ctx>, CodegenError> {
    let b = &k.em.builder;
    let (x, ty) = args[0];
    let y = args.get(1).map(|a| a.0);
    let y = || {
        y.ok_or(CodegenError::Internal(
            "binary operators have two arguments",
        ))
    };
    let unsupported = || CodegenError::Unsupported(format!("{} on {ty:?} elements", op.name()));
    let float = ty.is_float();
    Ok(match op {
        Op::Add if float => math.add(x, y()?)?,
        Op::Sub if float => math.sub(x, y()?)?,
        Op::Mul if float => math.mul(x, y()?)?,
        Op::Div if float => math.div(x, y()?)?,
        Op::Pow if float => math.pow(x, y()?)?,
        Op::Max | Op::Min if float && scalar.is_some_and(|c| !c.is_nan()) => {
            // Against a constant (a ReLU's 0, a clip's 6): one max/min
            // instruction; `llvm.maximum` costs two more per vector to
            // propagate a NaN of either side. `x < c ? c : x` keeps x's
            // NaN (and x = −0 against +0, which compares equal).
            let c = y()?;
            let (pick_c, name) = match op {
                Op::Max => (FloatPredicate::OLT, "max"),
                _ => (FloatPredicate::OGT, "min"),
            };
            let cmp = b.build_float_compare(pick_c, x, c, name)?;
            b.build_select(cmp, c, x, name)?.into_vector_value()
        }
        Op::Max if float => math.intrinsic("llvm.maximum", &[x, y()?])?,
        Op::Min if float => math.intrinsic("llvm.minimum", &[x, y()?])?,
        Op::Max if ty == Elem::Bool => b.build_or(x, y()?, "or")?,
        Op::Min if ty == Elem::Bool => b.build_and(x, y()?, "and")?,
        Op::Add if ty != Elem::Bool => b.build_int_add(x, y()?, "add")?,
        Op::Sub if ty != Elem::Bool => b.build_int_sub(x, y()?, "sub")?,
        Op::Mul if ty != Elem::Bool => b.build_int_mul(x, y()?, "mul")?,
        Op::Div if ty == Elem::U8 => unsigned_div(k, x, y()?)?,
        Op::Div if ty != Elem::Bool => int_div(k, x, y()?)?,
        Op::Max if ty == Elem::U8 => int_minmax(k, x, y()?, IntPredicate::UGT)?,
        Op::Min if ty == Elem::U8 => int_minmax(k, x, y()?, IntPredicate::ULT)?,
        Op::Max if ty != Elem::Bool => int_minmax(k, x, y()?, IntPredicate::SGT)?,
        Op::Min if ty != Elem::Bool => int_minmax(k, x, y()?, IntPredicate::SLT)?,
        Op::Equal if float => b.build_float_compare(FloatPredicate::OEQ, x, y()?, "eq")?,
        Op::Less if float => b.build_float_compare(FloatPredicate::OLT, x, y()?, "lt")?,
        Op::Equal => b.build_int_compare(IntPredicate::EQ, x, y()?, "eq")?,
        Op::Less if ty.is_unsigned() => b.build_int_compare(IntPredicate::ULT, x, y()?, "lt")?,
        Op::Less => b.build_int_compare(IntPredicate::SLT, x, y()?, "lt")?,
        Op::Where => b
            .build_select(x, y()?, args[2].0, "where")?
            .into_vector_value(),
        Op::Exp if float => math.exp(x)?,
        Op::Log if float => math.log(x)?,
        Op::Sqrt if float => math.intrinsic("llvm.sqrt", &[x])?,
        Op::Floor if float => math.intrinsic("llvm.floor", &[x])?,
        Op::Erf if float => math.erf(x)?,
        Op::Tanh if float => math.tanh(x)?,
        Op::Sigmoid if float => math.sigmoid(x)?,
        Op::Sin if float => math.sin_cos(x, false)?,
        Op::Cos if float => math.sin_cos(x, true)?,
        Op::Gelu { tanh_approx } if float => gelu(math, x, *tanh_approx)?,
        Op::Cast { .. } => cast(k, x, ty, out)?,
        Op::Quantize { .. } if float => quantize(k, x, y()?, args[2], out)?,
        _ => return Err(unsupported()),
    })
}

/// Truncating signed division without the machine trap: a zero divisor is
/// reported in the kernel's status (an error, as in the interpreter; the
/// lane computes 0 meanwhile) and `MIN / -1` wraps to MIN.
fn int_div<'ctx>(
    k: &Kernel<'_, 'ctx>,
    x: VectorValue<'ctx>,
    y: VectorValue<'ctx>,
) -> Result<VectorValue<'ctx>, CodegenError> {
    let b = &k.em.builder;
    let ty = y.get_type();
    let zero = ty.const_zero();
    let all_ones = b.build_not(zero, "m1")?;
    let is_zero = b.build_int_compare(IntPredicate::EQ, y, zero, "zero")?;
    k.report_if(is_zero.into(), m4c_cpu_device::STATUS_DIVISION_BY_ZERO)?;
    let is_m1 = b.build_int_compare(IntPredicate::EQ, y, all_ones, "m1")?;
    let unsafe_divisor = b.build_or(is_zero, is_m1, "unsafe")?;
    let one = b.build_int_sub(zero, all_ones, "one")?;
    let divisor = b
        .build_select(unsafe_divisor, one, y, "d")?
        .into_vector_value();
    let q = b.build_int_signed_div(x, divisor, "q")?;
    let negated = b.build_int_sub(zero, x, "neg")?;
    let q = b.build_select(is_m1, negated, q, "q")?.into_vector_value();
    Ok(b.build_select(is_zero, zero, q, "q")?.into_vector_value())
}

/// Unsigned division; a zero divisor is reported like [`int_div`]'s.
fn unsigned_div<'ctx>(
    k: &Kernel<'_, 'ctx>,
    x: VectorValue<'ctx>,
    y: VectorValue<'ctx>,
) -> Result<VectorValue<'ctx>, CodegenError> {
    let b = &k.em.builder;
    let ty = y.get_type();
    let zero = ty.const_zero();
    let is_zero = b.build_int_compare(IntPredicate::EQ, y, zero, "zero")?;
    k.report_if(is_zero.into(), m4c_cpu_device::STATUS_DIVISION_BY_ZERO)?;
    let one = b.build_int_sub(zero, b.build_not(zero, "m1")?, "one")?;
    let divisor = b.build_select(is_zero, one, y, "d")?.into_vector_value();
    let q = b.build_int_unsigned_div(x, divisor, "q")?;
    Ok(b.build_select(is_zero, zero, q, "q")?.into_vector_value())
}

/// `Quantize(x, scale, zero_point)` into int8/uint8: the interpreter's
/// `saturate(round_half_even(x / scale) + zero_point)` (NaN → the zero
/// point). The zero point is added in f64, exact for every i32.
fn quantize<'ctx>(
    k: &Kernel<'_, 'ctx>,
    x: VectorValue<'ctx>,
    scale: VectorValue<'ctx>,
    (zero_point, zp_elem): (VectorValue<'ctx>, Elem),
    out: Elem,
) -> Result<VectorValue<'ctx>, CodegenError> {
    let range = match out {
        Elem::I8 => (-128.0, 127.0),
        Elem::U8 => (0.0, 255.0),
        other => {
            return Err(CodegenError::Unsupported(format!(
                "Quantize into {other:?} (int8 and uint8 are computed; int4 is only stored)"
            )))
        }
    };
    let lanes = x.get_type().get_size();
    let f64v = k.cx.context.f64_type().vec_type(lanes);
    let b = &k.em.builder;
    let zero_point = if zp_elem.is_unsigned() {
        b.build_unsigned_int_to_float(zero_point, f64v, "zp")?
    } else if zp_elem.is_float() {
        return Err(CodegenError::Unsupported(
            "Quantize with a float zero point".into(),
        ));
    } else {
        b.build_signed_int_to_float(zero_point, f64v, "zp")?
    };
    let q = crate::quant::quantize_with_zero_point(&k.em, x, scale, zero_point, range)?;
    Ok(b.build_int_truncate(q, k.cx.context.i8_type().vec_type(lanes), "q")?)
}

fn int_minmax<'ctx>(
    k: &Kernel<'_, 'ctx>,
    x: VectorValue<'ctx>,
    y: VectorValue<'ctx>,
    keep_x: IntPredicate,
) -> Result<VectorValue<'ctx>, CodegenError> {
    let b = &k.em.builder;
    let c = b.build_int_compare(keep_x, x, y, "c")?;
    Ok(b.build_select(c, x, y, "m")?.into_vector_value())
}

/// GELU, exact (`x/2·(1 + erf(x/√2))`) or with the tanh approximation.
fn gelu<'ctx>(
    m: &Math<'_, 'ctx>,
    x: VectorValue<'ctx>,
    tanh_approx: bool,
) -> Result<VectorValue<'ctx>, CodegenError> {
    let inner = if tanh_approx {
        let cube = m.mul(m.mul(x, x)?, x)?;
        let arg = m.fma(cube, m.c(0.044_715), x)?;
        m.tanh(m.mul(arg, m.c((2.0 / std::f32::consts::PI).sqrt()))?)?
    } else {
        m.erf(m.mul(x, m.c(std::f32::consts::FRAC_1_SQRT_2))?)?
    };
    Ok(m.mul(m.mul(x, m.c(0.5))?, m.add(inner, m.c(1.0))?)?)
}

/// Element type conversion: float→int truncates toward zero and
/// saturates (NaN → 0), int→int wraps, anything→bool is `≠ 0`.
fn cast<'ctx>(
    k: &Kernel<'_, 'ctx>,
    x: VectorValue<'ctx>,
    from: Elem,
    to: Elem,
) -> Result<VectorValue<'ctx>, CodegenError> {
    let b = &k.em.builder;
    let lanes = x.get_type().get_size();
    let target = to.vector(k.cx.context, lanes);
    Ok(match (from, to) {
        _ if from == to => x,
        (_, Elem::Bool) if from.is_float() => {
            b.build_float_compare(FloatPredicate::UNE, x, x.get_type().const_zero(), "nz")?
        }
        (_, Elem::Bool) => {
            b.build_int_compare(IntPredicate::NE, x, x.get_type().const_zero(), "nz")?
        }
        (Elem::Bool | Elem::U8, Elem::F32) => b.build_unsigned_int_to_float(x, target, "f")?,
        (Elem::Bool, _) => b.build_int_z_extend(x, target, "z")?,
        (Elem::F32, Elem::U8) => {
            k.em.call_value(
                "llvm.fptoui.sat",
                &[target.into(), x.get_type().into()],
                &[x.into()],
            )?
            .into_vector_value()
        }
        (Elem::F32, _) => {
            k.em.call_value(
                "llvm.fptosi.sat",
                &[target.into(), x.get_type().into()],
                &[x.into()],
            )?
            .into_vector_value()
        }
        (_, Elem::F32) => b.build_signed_int_to_float(x, target, "f")?,
        _ => b.build_int_cast_sign_flag(x, target, !from.is_unsigned(), "i")?,
    })
}

/// The element type of `dtype` for elementwise code.
pub(crate) fn elem(dtype: DType, op: &Op) -> Result<Elem, CodegenError> {
    Elem::of(dtype, op.name())
}

/// The fused kernel of the group `members` (node indices in topological
/// order, the root last) over the root's shape, and the value each operand
/// reads.
pub(crate) fn describe(
    l: &Lowering<'_, '_>,
    members: &[usize],
) -> Result<(Fused, Vec<ValueId>), CodegenError> {
    let g = l.graph;
    let root = &g.nodes[*members
        .last()
        .ok_or(CodegenError::Internal("groups are non-empty"))?];
    let shape = l.shape(root.output)?;
    let mut operand_values: Vec<ValueId> = Vec::new();
    let mut operands: Vec<Operand> = Vec::new();
    let mut nodes: Vec<ExprNode> = Vec::with_capacity(members.len());
    let mut computed: HashMap<ValueId, usize> = HashMap::new();
    for &i in members {
        let node = &g.nodes[i];
        let mut args = Vec::with_capacity(node.inputs.len());
        for &input in &node.inputs {
            if let Some(&n) = computed.get(&input) {
                args.push(Arg::Node(n));
                continue;
            }
            if let Some(value) = scalar_f32(l, input) {
                args.push(Arg::Scalar(value));
                continue;
            }
            let index = match operand_values.iter().position(|&v| v == input) {
                Some(index) => index,
                None => {
                    operand_values.push(input);
                    operands.push(Operand {
                        elem: elem(l.dtype(input), &node.op)?,
                        strides: broadcast_strides(&l.shape(input)?, &shape),
                    });
                    operands.len() - 1
                }
            };
            args.push(Arg::Operand(index));
        }
        nodes.push(ExprNode {
            op: node.op.clone(),
            args,
            elem: elem(l.dtype(node.output), &node.op)?,
        });
        computed.insert(node.output, nodes.len() - 1);
    }
    Ok((
        Fused {
            shape,
            operands,
            nodes,
        },
        operand_values,
    ))
}

/// Lowers the fusion group `members` (node indices in topological order,
/// the root last) to one fused kernel.
pub(crate) fn lower(l: &mut Lowering<'_, '_>, members: &[usize]) -> Result<(), CodegenError> {
    let root = &l.graph.nodes[*members
        .last()
        .ok_or(CodegenError::Internal("groups are non-empty"))?];
    let (fused, operand_values) = describe(l, members)?;
    let symbol = l.symbol("fused");
    fused.emit(l.cx, &symbol)?;
    let mut buffers = vec![l.define(root.output)?];
    for &v in &operand_values {
        buffers.push(l.loc(v)?);
    }
    let extent = fused.extent(l.cx.lanes());
    l.kernel(symbol, buffers, extent, true);
    Ok(())
}

/// The value of a one-element f32 constant.
fn scalar_f32(l: &Lowering<'_, '_>, value: ValueId) -> Option<f32> {
    let t = l.constant(value)?;
    if t.dtype != DType::F32 || t.len() != 1 {
        return None;
    }
    t.to_f32_vec().ok().map(|v| v[0])
}
