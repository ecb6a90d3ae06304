//! Expressions of a kernel description as LLVM IR: one scalar per
//! element (f32, i32, or i1 for bools), with the same semantics as the
//! WGSL emitter's text (WGSL's integer division and remainder by zero,
//! `x - y·trunc(x/y)` for float remainders, saturating float→int casts,
//! NaN-propagating max/min, ONNX's `pow`). Float transcendentals are
//! `m4c_llvm_math`'s, evaluated on one-lane vectors. Folds become counted
//! loops whose accumulators live in allocas (registers after `mem2reg`).

use std::collections::HashMap;

use inkwell::types::BasicTypeEnum;
use inkwell::values::{BasicValueEnum, FloatValue, IntValue, VectorValue};
use inkwell::{FloatPredicate, IntPredicate};
use m4c_llvm_math::{Math, MathError};

use super::cx::Cx;
use super::Fail;
use crate::kernel::{Bin, Combine, Expr, Fold, Kind, Un};
use crate::launch;

/// The values an expression may name: the output coordinates, the loop
/// coordinates of the folds it is inside, the kernel's lets.
pub(crate) struct Scope<'ctx> {
    pub coords: Vec<IntValue<'ctx>>,
    pub loops: HashMap<(usize, usize), IntValue<'ctx>>,
    pub lets: Vec<BasicValueEnum<'ctx>>,
    pub kinds: Vec<Kind>,
}

impl<'ctx> Scope<'ctx> {
    /// The scope of an element whose coordinates are `coords`.
    pub fn new(coords: Vec<IntValue<'ctx>>) -> Self {
        Scope {
            coords,
            loops: HashMap::new(),
            lets: Vec::new(),
            kinds: Vec::new(),
        }
    }
}

/// Row-major coordinates of the flat index `i` (non-negative) in `shape`.
pub(crate) fn coords<'ctx>(
    cx: &Cx<'_, 'ctx>,
    shape: &[usize],
    i: IntValue<'ctx>,
) -> Result<Vec<IntValue<'ctx>>, Fail> {
    shape
        .iter()
        .zip(launch::strides(shape))
        .map(|(&n, stride)| {
            let q = cx.b.build_int_unsigned_div(i, cx.i32(stride as i64), "q")?;
            Ok(cx
                .b
                .build_int_unsigned_rem(q, cx.i32(n.max(1) as i64), "c")?)
        })
        .collect()
}

/// `f` applied to the scalar `x` through one-lane vector math.
fn math1<'ctx>(
    cx: &Cx<'_, 'ctx>,
    xs: &[FloatValue<'ctx>],
    f: impl FnOnce(&Math<'_, 'ctx>, &[VectorValue<'ctx>]) -> Result<VectorValue<'ctx>, MathError>,
) -> Result<FloatValue<'ctx>, Fail> {
    let v1 = cx.context.f32_type().vec_type(1);
    let zero = cx.i32(0);
    let lanes = xs
        .iter()
        .map(|&x| cx.b.build_insert_element(v1.get_poison(), x, zero, "v"))
        .collect::<Result<Vec<_>, _>>()?;
    let math = Math::new(cx.context, &cx.b, cx.module, 1);
    let y = f(&math, &lanes)?;
    Ok(cx.b.build_extract_element(y, zero, "s")?.into_float_value())
}

/// `e^x` (`Math::exp`).
pub(crate) fn exp<'ctx>(cx: &Cx<'_, 'ctx>, x: FloatValue<'ctx>) -> Result<FloatValue<'ctx>, Fail> {
    math1(cx, &[x], |m, v| m.exp(v[0]))
}

/// A float intrinsic of one or more f32 arguments.
pub(crate) fn float_intrinsic<'ctx>(
    cx: &Cx<'_, 'ctx>,
    name: &str,
    xs: &[FloatValue<'ctx>],
) -> Result<FloatValue<'ctx>, Fail> {
    let ty: BasicTypeEnum<'ctx> = cx.context.f32_type().into();
    let args: Vec<_> = xs.iter().map(|&x| x.into()).collect();
    Ok(cx
        .call(name, &[ty], &args)?
        .ok_or_else(|| Fail(format!("{name} returns nothing")))?
        .into_float_value())
}

/// An integer intrinsic (`llvm.smax`, …) of two i32 arguments.
fn int_intrinsic<'ctx>(
    cx: &Cx<'_, 'ctx>,
    name: &str,
    a: IntValue<'ctx>,
    b: IntValue<'ctx>,
) -> Result<IntValue<'ctx>, Fail> {
    let ty: BasicTypeEnum<'ctx> = cx.context.i32_type().into();
    Ok(cx
        .call(name, &[ty], &[a.into(), b.into()])?
        .ok_or_else(|| Fail(format!("{name} returns nothing")))?
        .into_int_value())
}

/// ONNX/WGSL `pow`: `x^0 = 1`, `x^2 = x·x` exactly, odd integral powers
/// of negative bases negative, NaN for fractional ones (`Math::pow`).
fn pow<'ctx>(
    cx: &Cx<'_, 'ctx>,
    x: FloatValue<'ctx>,
    y: FloatValue<'ctx>,
) -> Result<FloatValue<'ctx>, Fail> {
    let general = math1(cx, &[x, y], |m, v| m.pow(v[0], v[1]))?;
    let square = cx.b.build_float_mul(x, x, "sq")?;
    let two =
        cx.b.build_float_compare(FloatPredicate::OEQ, y, cx.f32(2.0), "two")?;
    Ok(cx
        .b
        .build_select(two, square, general, "pow")?
        .into_float_value())
}

/// `f32 → i32` rounding toward zero and saturating (WGSL's conversion).
fn to_int<'ctx>(cx: &Cx<'_, 'ctx>, x: FloatValue<'ctx>) -> Result<IntValue<'ctx>, Fail> {
    let types: [BasicTypeEnum<'ctx>; 2] =
        [cx.context.i32_type().into(), cx.context.f32_type().into()];
    Ok(cx
        .call("llvm.fptosi.sat", &types, &[x.into()])?
        .ok_or_else(|| Fail("llvm.fptosi.sat returns nothing".into()))?
        .into_int_value())
}

/// Builds expressions of one kernel at the builder's position.
pub(crate) struct Walk<'c, 'a, 'ctx> {
    pub cx: &'c Cx<'a, 'ctx>,
    pub scope: Scope<'ctx>,
}

impl<'c, 'a, 'ctx> Walk<'c, 'a, 'ctx> {
    /// Evaluates `e` and appends it to the lets (`Expr::Var(k)`).
    pub fn bind(&mut self, e: &Expr) -> Result<(), Fail> {
        let kind = e.kind(&self.scope.kinds);
        let v = self.expr(e)?;
        self.scope.lets.push(v);
        self.scope.kinds.push(kind);
        Ok(())
    }

    /// The value of `e`.
    pub fn expr(&mut self, e: &Expr) -> Result<BasicValueEnum<'ctx>, Fail> {
        let cx = self.cx;
        let b = &cx.b;
        Ok(match e {
            Expr::F(v) => cx.f32(*v).into(),
            Expr::I(v) => cx.i32(i64::from(*v)).into(),
            Expr::B(v) => cx
                .context
                .bool_type()
                .const_int(u64::from(*v), false)
                .into(),
            Expr::Coord(d) => (*self
                .scope
                .coords
                .get(*d)
                .ok_or_else(|| Fail(format!("coordinate {d} of a lower-rank output")))?)
            .into(),
            Expr::Loop { fold, d } => (*self
                .scope
                .loops
                .get(&(*fold, *d))
                .ok_or_else(|| Fail(format!("loop coordinate {fold}.{d} outside its fold")))?)
            .into(),
            Expr::Var(k) => *self
                .scope
                .lets
                .get(*k)
                .ok_or_else(|| Fail(format!("let {k} used before it is bound")))?,
            Expr::Load(op, index) => {
                let i = self.expr(index)?.into_int_value();
                cx.load(op, i)?
            }
            Expr::Un(u, a) => {
                let kind = a.kind(&self.scope.kinds);
                let x = self.expr(a)?;
                match (u, kind) {
                    (Un::Not, _) => b.build_not(x.into_int_value(), "not")?.into(),
                    (Un::Neg, Kind::I) => b.build_int_neg(x.into_int_value(), "neg")?.into(),
                    (Un::Neg, _) => b.build_float_neg(x.into_float_value(), "neg")?.into(),
                    (u, _) => self.unary(*u, x.into_float_value())?.into(),
                }
            }
            Expr::Bin(op, a, c) => {
                let kind = a.kind(&self.scope.kinds);
                let right = c.kind(&self.scope.kinds);
                let (x, y) = (self.expr(a)?, self.expr(c)?);
                self.binary(*op, kind, right, x, y)?
            }
            Expr::Select(c, a, d) => {
                let c = self.expr(c)?.into_int_value();
                let (x, y) = (self.expr(a)?, self.expr(d)?);
                b.build_select(c, x, y, "sel")?
            }
            Expr::Cast(to, a) => {
                let from = a.kind(&self.scope.kinds);
                let x = self.expr(a)?;
                self.cast(from, *to, x)?
            }
            Expr::Fold(f) => self.fold(f)?,
        })
    }

    fn unary(&self, u: Un, x: FloatValue<'ctx>) -> Result<FloatValue<'ctx>, Fail> {
        let cx = self.cx;
        let b = &cx.b;
        Ok(match u {
            Un::Exp => exp(cx, x)?,
            Un::Log => math1(cx, &[x], |m, v| m.log(v[0]))?,
            Un::Erf => math1(cx, &[x], |m, v| m.erf(v[0]))?,
            Un::Tanh => math1(cx, &[x], |m, v| m.tanh(v[0]))?,
            Un::Sigmoid => math1(cx, &[x], |m, v| m.sigmoid(v[0]))?,
            Un::Sin => math1(cx, &[x], |m, v| m.sin_cos(v[0], false))?,
            Un::Cos => math1(cx, &[x], |m, v| m.sin_cos(v[0], true))?,
            Un::Sqrt => float_intrinsic(cx, "llvm.sqrt", &[x])?,
            Un::Floor => float_intrinsic(cx, "llvm.floor", &[x])?,
            Un::Gelu { tanh } => {
                // 0.5·x·(1 + erf(x/√2)), or with tanh(√(2/π)·(x + 0.044715·x³)).
                let inner = if tanh {
                    let x3 = b.build_float_mul(b.build_float_mul(x, x, "x2")?, x, "x3")?;
                    let t = b.build_float_mul(x3, cx.f32(0.044_715), "t")?;
                    let t = b.build_float_add(x, t, "t")?;
                    let t = b.build_float_mul(t, cx.f32(0.797_884_6), "t")?;
                    math1(cx, &[t], |m, v| m.tanh(v[0]))?
                } else {
                    let t = b.build_float_mul(x, cx.f32(std::f32::consts::FRAC_1_SQRT_2), "t")?;
                    math1(cx, &[t], |m, v| m.erf(v[0]))?
                };
                let one = b.build_float_add(inner, cx.f32(1.0), "one")?;
                let half = b.build_float_mul(x, cx.f32(0.5), "half")?;
                b.build_float_mul(half, one, "gelu")?
            }
            Un::Neg | Un::Not => return Err(Fail(format!("{u:?} of a float built as math"))),
        })
    }

    fn binary(
        &self,
        op: Bin,
        kind: Kind,
        right: Kind,
        x: BasicValueEnum<'ctx>,
        y: BasicValueEnum<'ctx>,
    ) -> Result<BasicValueEnum<'ctx>, Fail> {
        let cx = self.cx;
        let b = &cx.b;
        if op == Bin::Pow {
            let f = cx.context.f32_type();
            let as_float = |v: BasicValueEnum<'ctx>, k| match k {
                Kind::I => b.build_signed_int_to_float(v.into_int_value(), f, "f"),
                _ => Ok(v.into_float_value()),
            };
            let p = pow(cx, as_float(x, kind)?, as_float(y, right)?)?;
            return Ok(match kind {
                Kind::I => to_int(cx, p)?.into(),
                _ => p.into(),
            });
        }
        if kind == Kind::F {
            let (x, y) = (x.into_float_value(), y.into_float_value());
            let cmp = |p| b.build_float_compare(p, x, y, "cmp");
            return Ok(match op {
                Bin::Add => b.build_float_add(x, y, "add")?.into(),
                Bin::Sub => b.build_float_sub(x, y, "sub")?.into(),
                Bin::Mul => b.build_float_mul(x, y, "mul")?.into(),
                Bin::Div => b.build_float_div(x, y, "div")?.into(),
                Bin::Rem => {
                    let q = b.build_float_div(x, y, "q")?;
                    let q = float_intrinsic(cx, "llvm.trunc", &[q])?;
                    let p = b.build_float_mul(y, q, "p")?;
                    b.build_float_sub(x, p, "rem")?.into()
                }
                Bin::Max => float_intrinsic(cx, "llvm.maximum", &[x, y])?.into(),
                Bin::Min => float_intrinsic(cx, "llvm.minimum", &[x, y])?.into(),
                Bin::Eq => cmp(FloatPredicate::OEQ)?.into(),
                Bin::Lt => cmp(FloatPredicate::OLT)?.into(),
                Bin::Le => cmp(FloatPredicate::OLE)?.into(),
                Bin::And | Bin::Pow => return Err(Fail(format!("{op:?} of floats"))),
            });
        }
        let (x, y) = (x.into_int_value(), y.into_int_value());
        let cmp = |p| b.build_int_compare(p, x, y, "cmp");
        if kind == Kind::B {
            return Ok(match op {
                Bin::Max => b.build_or(x, y, "or")?.into(),
                Bin::Min | Bin::And => b.build_and(x, y, "and")?.into(),
                Bin::Eq => cmp(IntPredicate::EQ)?.into(),
                other => return Err(Fail(format!("{other:?} of bools"))),
            });
        }
        Ok(match op {
            Bin::Add => b.build_int_add(x, y, "add")?.into(),
            Bin::Sub => b.build_int_sub(x, y, "sub")?.into(),
            Bin::Mul => b.build_int_mul(x, y, "mul")?.into(),
            Bin::Div | Bin::Rem => {
                // WGSL: x / 0 and MIN / -1 are x, x % 0 and MIN % -1 are
                // 0; dividing by 1 instead gives exactly that.
                let zero = b.build_int_compare(IntPredicate::EQ, y, cx.i32(0), "zero")?;
                let min =
                    b.build_int_compare(IntPredicate::EQ, x, cx.i32(i64::from(i32::MIN)), "min")?;
                let minus = b.build_int_compare(IntPredicate::EQ, y, cx.i32(-1), "minus")?;
                let overflow = b.build_and(min, minus, "overflow")?;
                let unsafe_ = b.build_or(zero, overflow, "unsafe")?;
                let d = b.build_select(unsafe_, cx.i32(1), y, "d")?.into_int_value();
                if op == Bin::Div {
                    b.build_int_signed_div(x, d, "div")?.into()
                } else {
                    b.build_int_signed_rem(x, d, "rem")?.into()
                }
            }
            Bin::Max => int_intrinsic(cx, "llvm.smax", x, y)?.into(),
            Bin::Min => int_intrinsic(cx, "llvm.smin", x, y)?.into(),
            Bin::Eq => cmp(IntPredicate::EQ)?.into(),
            Bin::Lt => cmp(IntPredicate::SLT)?.into(),
            Bin::Le => cmp(IntPredicate::SLE)?.into(),
            Bin::And => b.build_and(x, y, "and")?.into(),
            Bin::Pow => return Err(Fail("pow is built before the kinds split".into())),
        })
    }

    fn cast(
        &self,
        from: Kind,
        to: Kind,
        x: BasicValueEnum<'ctx>,
    ) -> Result<BasicValueEnum<'ctx>, Fail> {
        let cx = self.cx;
        let b = &cx.b;
        let (f32t, i32t) = (cx.context.f32_type(), cx.context.i32_type());
        Ok(match (from, to) {
            (f, t) if f == t => x,
            (Kind::B, Kind::F) => b
                .build_unsigned_int_to_float(x.into_int_value(), f32t, "f")?
                .into(),
            (Kind::B, Kind::I) => b.build_int_z_extend(x.into_int_value(), i32t, "i")?.into(),
            // On the bits: denormals and NaN are true even where the
            // hardware flushes denormals.
            (Kind::F, Kind::B) => {
                let bits = b.build_bit_cast(x, i32t, "bits")?.into_int_value();
                let mag = b.build_and(bits, cx.i32(0x7fff_ffff), "mag")?;
                b.build_int_compare(IntPredicate::NE, mag, cx.i32(0), "b")?
                    .into()
            }
            (Kind::I, Kind::B) => b
                .build_int_compare(IntPredicate::NE, x.into_int_value(), cx.i32(0), "b")?
                .into(),
            (Kind::F, Kind::I) => to_int(cx, x.into_float_value())?.into(),
            (Kind::I, Kind::F) => b
                .build_signed_int_to_float(x.into_int_value(), f32t, "f")?
                .into(),
            (f, t) => return Err(Fail(format!("cast from {f:?} to {t:?}"))),
        })
    }

    fn fold(&mut self, f: &Fold) -> Result<BasicValueEnum<'ctx>, Fail> {
        let cx = self.cx;
        let kind = f.body.kind(&self.scope.kinds);
        let init: BasicValueEnum<'ctx> = match (f.combine, kind) {
            (Combine::Sum, Kind::F) => cx.f32(0.0).into(),
            (Combine::Sum, _) => cx.i32(0).into(),
            (_, Kind::F) => cx.f32(f32::NEG_INFINITY).into(),
            _ => cx.i32(i64::from(i32::MIN)).into(),
        };
        let ty = init.get_type();
        let acc = cx.var(init)?;
        let at = cx.var(cx.i32(0).into())?;
        let total: usize = f.dims.iter().product();
        cx.for_loop(cx.i32(0), cx.i32(total as i64), 1, |cx, r| {
            let ls = coords(cx, &f.dims, r)?;
            for (d, l) in ls.into_iter().enumerate() {
                self.scope.loops.insert((f.id, d), l);
            }
            let v = self.expr(&f.body)?;
            let old = cx.get(acc, ty)?;
            let b = &cx.b;
            match (f.combine, kind) {
                (Combine::Sum, Kind::F) => {
                    let s = b.build_float_add(old.into_float_value(), v.into_float_value(), "s")?;
                    b.build_store(acc, s)?;
                }
                (Combine::Sum, _) => {
                    let s = b.build_int_add(old.into_int_value(), v.into_int_value(), "s")?;
                    b.build_store(acc, s)?;
                }
                (Combine::Max, Kind::F) => {
                    let m = float_intrinsic(
                        cx,
                        "llvm.maxnum",
                        &[old.into_float_value(), v.into_float_value()],
                    )?;
                    b.build_store(acc, m)?;
                }
                (Combine::Max, _) => {
                    let m =
                        int_intrinsic(cx, "llvm.smax", old.into_int_value(), v.into_int_value())?;
                    b.build_store(acc, m)?;
                }
                (Combine::ArgMax { last }, k) => {
                    let better = if k == Kind::F {
                        let p = if last {
                            FloatPredicate::OGE
                        } else {
                            FloatPredicate::OGT
                        };
                        b.build_float_compare(
                            p,
                            v.into_float_value(),
                            old.into_float_value(),
                            "better",
                        )?
                    } else {
                        let p = if last {
                            IntPredicate::SGE
                        } else {
                            IntPredicate::SGT
                        };
                        b.build_int_compare(p, v.into_int_value(), old.into_int_value(), "better")?
                    };
                    let best = b.build_select(better, v, old, "best")?;
                    b.build_store(acc, best)?;
                    let pos = cx.get(at, cx.context.i32_type())?;
                    let pos = b.build_select(better, r, pos.into_int_value(), "at")?;
                    b.build_store(at, pos)?;
                }
            }
            Ok(())
        })?;
        for d in 0..f.dims.len() {
            self.scope.loops.remove(&(f.id, d));
        }
        Ok(match f.combine {
            Combine::ArgMax { .. } => cx.get(at, cx.context.i32_type())?,
            _ => cx.get(acc, ty)?,
        })
    }
}
