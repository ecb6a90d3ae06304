//! The three kernel shapes as NVPTX functions, step for step the WGSL
//! emitter's (`crate::wgsl`) with the geometry of [`crate::launch`]: a
//! Map writes one element per thread (PTX stores single bytes, so byte
//! outputs need no packing), a Gemm stages `A` and `B` tiles in shared
//! memory and accumulates an `r × r` register tile per thread, a Row
//! reduces one row per block through a shared array.

use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::values::{FloatValue, IntValue};
use inkwell::IntPredicate;

use super::cx::{Cx, Flavor};
use super::expr::{coords, exp, float_intrinsic, Scope, Walk};
use super::Fail;
use crate::kernel::{Gemm, Map, Operand, Row, RowOp};
use crate::launch::{self, GROUP, TILE};

/// The flat index of a 1-D launch spread over blocks x and y:
/// `(ctaid.y · gx + ctaid.x) · per_block + tid.x`.
fn flat<'ctx>(cx: &Cx<'_, 'ctx>, gx: u32, per_block: usize) -> Result<IntValue<'ctx>, Fail> {
    let (x, y, t) = (cx.sreg("ctaid.x")?, cx.sreg("ctaid.y")?, cx.sreg("tid.x")?);
    let b = &cx.b;
    let block = b.build_int_mul(y, cx.i32(i64::from(gx)), "by")?;
    let block = b.build_int_add(block, x, "block")?;
    let first = b.build_int_mul(block, cx.i32(per_block as i64), "first")?;
    Ok(b.build_int_add(first, t, "t")?)
}

/// `a < n` for i32 `a` and a constant `n`.
fn below<'ctx>(cx: &Cx<'_, 'ctx>, a: IntValue<'ctx>, n: usize) -> Result<IntValue<'ctx>, Fail> {
    Ok(cx
        .b
        .build_int_compare(IntPredicate::SLT, a, cx.i32(n as i64), "lt")?)
}

/// A Map kernel: thread `t` computes element `t`.
pub(crate) fn map<'ctx>(
    context: &'ctx Context,
    module: &Module<'ctx>,
    name: &str,
    m: &Map,
    flavor: Flavor,
) -> Result<[u32; 3], Fail> {
    let launch = launch::map(m, 1)?;
    let cx = Cx::kernel(context, module, name, GROUP, None, flavor)?;
    let t = flat(&cx, launch.workgroups[0], GROUP)?;
    cx.return_unless(below(&cx, t, launch.threads)?)?;
    let mut walk = Walk {
        cx: &cx,
        scope: Scope::new(coords(&cx, &m.shape, t)?),
    };
    for e in &m.lets {
        walk.bind(e)?;
    }
    let value = walk.expr(&m.value)?;
    cx.store(&m.out, t, value)?;
    cx.finish()?;
    Ok(launch.workgroups)
}

/// `a + b·c` on i32 with constant `c`.
fn mad<'ctx>(
    cx: &Cx<'_, 'ctx>,
    a: IntValue<'ctx>,
    b: IntValue<'ctx>,
    c: usize,
) -> Result<IntValue<'ctx>, Fail> {
    let p = cx.b.build_int_mul(b, cx.i32(c as i64), "p")?;
    Ok(cx.b.build_int_add(a, p, "s")?)
}

/// A Gemm kernel: a `block × block` tile of `C` per `TILE × TILE`
/// block; K advances `TILE` at a time through two shared slabs, each
/// thread staging `r` elements of each operand, then accumulating its
/// `r × r` outputs from the slabs (unrolled, so they stay in registers).
/// A `b_view` (a convolution's im2col) is walked as an expression in the
/// B-tile load; a `bias` is added per row in the store.
pub(crate) fn gemm<'ctx>(
    context: &'ctx Context,
    module: &Module<'ctx>,
    name: &str,
    g: &Gemm,
    flavor: Flavor,
) -> Result<[u32; 3], Fail> {
    let launch::GemmLaunch {
        r,
        block,
        workgroups,
    } = launch::gemm(g)?;
    // Two blocks per SM: at most 128 registers a thread, which the
    // r×r accumulators and one K step's operands fit without spilling.
    let cx = Cx::kernel(context, module, name, TILE * TILE, Some(2), flavor)?;
    let b = &cx.b;
    let slab = block * TILE;
    let (ta, tb) = (cx.shared("ta", slab), cx.shared("tb", slab));
    let (lx, ly) = (cx.sreg("tid.x")?, cx.sreg("tid.y")?);
    let lid = mad(&cx, lx, ly, TILE)?;
    let row0 = b.build_int_mul(cx.sreg("ctaid.y")?, cx.i32(block as i64), "row0")?;
    let col0 = b.build_int_mul(cx.sreg("ctaid.x")?, cx.i32(block as i64), "col0")?;
    let zb = cx.sreg("ctaid.z")?;
    let (mut z, mut ao, mut bo) = (zb, cx.i32(0), cx.i32(0));
    for (n, sa, sb) in launch::batch_axes(g) {
        let c = b.build_int_unsigned_rem(z, cx.i32(n as i64), "c")?;
        z = b.build_int_unsigned_div(z, cx.i32(n as i64), "z")?;
        ao = mad(&cx, ao, c, sa)?;
        bo = mad(&cx, bo, c, sb)?;
    }
    let f32t = context.f32_type();
    let acc = (0..r * r)
        .map(|_| cx.var(cx.f32(0.0).into()))
        .collect::<Result<Vec<_>, _>>()?;
    let zero = cx.f32(0.0);
    cx.for_loop(cx.i32(0), cx.i32(g.k as i64), TILE as i64, |cx, k0| {
        let b = &cx.b;
        for q in 0..r {
            let e = b.build_int_add(lid, cx.i32((q * TILE * TILE) as i64), "e")?;
            let ar = b.build_int_add(
                row0,
                b.build_int_unsigned_div(e, cx.i32(TILE as i64), "")?,
                "ar",
            )?;
            let ak = b.build_int_add(
                k0,
                b.build_int_unsigned_rem(e, cx.i32(TILE as i64), "")?,
                "ak",
            )?;
            let index = mad(cx, mad(cx, ao, ar, g.a_strides[0])?, ak, g.a_strides[1])?;
            let inside = b.build_and(below(cx, ar, g.m)?, below(cx, ak, g.k)?, "in")?;
            let a = cx.load(&g.a, index)?;
            let a = b.build_select(inside, a.into_float_value(), zero, "a")?;
            cx.shared_store(ta, e, a.into_float_value())?;
            let bk = b.build_int_add(
                k0,
                b.build_int_unsigned_div(e, cx.i32(block as i64), "")?,
                "bk",
            )?;
            let bc = b.build_int_add(
                col0,
                b.build_int_unsigned_rem(e, cx.i32(block as i64), "")?,
                "bc",
            )?;
            // (With a view, the strides are 0 and LLVM drops this.)
            let index = mad(cx, mad(cx, bo, bk, g.b_strides[0])?, bc, g.b_strides[1])?;
            let inside = b.build_and(below(cx, bk, g.k)?, below(cx, bc, g.n)?, "in")?;
            let v = match &g.b_view {
                Some(view) => Walk {
                    cx,
                    scope: Scope::new(vec![zb, bk, bc]),
                }
                .expr(view)?,
                None => cx.load(&g.b, index)?,
            };
            let v = b.build_select(inside, v.into_float_value(), zero, "b")?;
            cx.shared_store(tb, e, v.into_float_value())?;
        }
        cx.barrier()?;
        let mut sums: Vec<FloatValue<'ctx>> = acc
            .iter()
            .map(|&p| Ok(cx.get(p, f32t)?.into_float_value()))
            .collect::<Result<_, Fail>>()?;
        for kk in 0..TILE {
            let av = (0..r)
                .map(|i| {
                    let at = mad(cx, cx.i32((kk + i * TILE * TILE) as i64), ly, TILE)?;
                    cx.shared_load(ta, at)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let bv = (0..r)
                .map(|j| {
                    let at = b.build_int_add(lx, cx.i32((kk * block + j * TILE) as i64), "")?;
                    cx.shared_load(tb, at)
                })
                .collect::<Result<Vec<_>, _>>()?;
            for i in 0..r {
                for j in 0..r {
                    let args = [av[i], bv[j], sums[i * r + j]];
                    sums[i * r + j] = float_intrinsic(cx, "llvm.fma", &args)?;
                }
            }
        }
        for (&p, s) in acc.iter().zip(sums) {
            b.build_store(p, s)?;
        }
        cx.barrier()
    })?;
    let mn = g.m * g.n;
    for i in 0..r {
        for j in 0..r {
            let row = b.build_int_add(ly, cx.i32((i * TILE) as i64), "")?;
            let row = b.build_int_add(row0, row, "row")?;
            let col = b.build_int_add(lx, cx.i32((j * TILE) as i64), "")?;
            let col = b.build_int_add(col0, col, "col")?;
            let inside = b.build_and(below(&cx, row, g.m)?, below(&cx, col, g.n)?, "in")?;
            let mut c = cx.get(acc[i * r + j], f32t)?;
            if let Some(bias) = &g.bias {
                let v = cx.load(bias, row)?.into_float_value();
                c = b.build_float_add(c.into_float_value(), v, "biased")?.into();
            }
            cx.when(inside, |cx| {
                let index = mad(cx, mad(cx, col, zb, mn)?, row, g.n)?;
                cx.store(&g.c, index, c)
            })?;
        }
    }
    cx.finish()?;
    Ok(workgroups)
}

/// A Row kernel: block `r` reduces row `r` (its `len` elements strided
/// by `inner`) through a 64-element shared array, then writes it.
pub(crate) fn row<'ctx>(
    context: &'ctx Context,
    module: &Module<'ctx>,
    name: &str,
    r: &Row,
    flavor: Flavor,
) -> Result<[u32; 3], Fail> {
    let workgroups = launch::row(r)?;
    let cx = Cx::kernel(context, module, name, GROUP, None, flavor)?;
    let b = &cx.b;
    let red = cx.shared("red", GROUP);
    let rows = r.outer * r.inner;
    let (x, y) = (cx.sreg("ctaid.x")?, cx.sreg("ctaid.y")?);
    let index = mad(&cx, x, y, workgroups[0] as usize)?;
    cx.return_unless(below(&cx, index, rows)?)?;
    let lid = cx.sreg("tid.x")?;
    let inner = cx.i32(r.inner as i64);
    let outer = b.build_int_unsigned_div(index, inner, "o")?;
    let base = mad(
        &cx,
        b.build_int_unsigned_rem(index, inner, "i")?,
        outer,
        r.len * r.inner,
    )?;
    let f32t = context.f32_type();
    // Element j of the row (its index in `x` and `out`).
    let at = |j: IntValue<'ctx>| mad(&cx, base, j, r.inner);
    let xj = |j: IntValue<'ctx>| -> Result<FloatValue<'ctx>, Fail> {
        Ok(cx.load(&r.x, at(j)?)?.into_float_value())
    };
    // `acc = step(acc, x_j)` over this thread's elements, then the
    // block's combination of every thread's `acc`.
    let reduce =
        |init: f32,
         step: &dyn Fn(FloatValue<'ctx>, IntValue<'ctx>) -> Result<FloatValue<'ctx>, Fail>,
         combine: &dyn Fn(FloatValue<'ctx>, FloatValue<'ctx>) -> Result<FloatValue<'ctx>, Fail>|
         -> Result<FloatValue<'ctx>, Fail> {
            let acc = cx.var(cx.f32(init).into())?;
            cx.for_loop(lid, cx.i32(r.len as i64), GROUP as i64, |cx, j| {
                let old = cx.get(acc, f32t)?.into_float_value();
                cx.b.build_store(acc, step(old, j)?)?;
                Ok(())
            })?;
            cx.shared_store(red, lid, cx.get(acc, f32t)?.into_float_value())?;
            cx.barrier()?;
            for s in launch::reduction_steps() {
                cx.when(below(&cx, lid, s)?, |cx| {
                    let other = cx.b.build_int_add(lid, cx.i32(s as i64), "o")?;
                    let v = combine(cx.shared_load(red, lid)?, cx.shared_load(red, other)?)?;
                    cx.shared_store(red, lid, v)
                })?;
                cx.barrier()?;
            }
            let all = cx.shared_load(red, cx.i32(0))?;
            cx.barrier()?;
            Ok(all)
        };
    let add = |a: FloatValue<'ctx>, c: FloatValue<'ctx>| -> Result<FloatValue<'ctx>, Fail> {
        Ok(cx.b.build_float_add(a, c, "s")?)
    };
    let write = |value: &dyn Fn(IntValue<'ctx>) -> Result<FloatValue<'ctx>, Fail>| {
        cx.for_loop(lid, cx.i32(r.len as i64), GROUP as i64, |cx, j| {
            let v = value(j)?;
            cx.store(&r.out, at(j)?, v.into())
        })
    };
    let exp = |v| exp(&cx, v);
    match r.op {
        RowOp::Softmax => {
            let max = |a: FloatValue<'ctx>, c: FloatValue<'ctx>| {
                float_intrinsic(&cx, "llvm.maxnum", &[a, c])
            };
            let mx = reduce(f32::NEG_INFINITY, &|acc, j| max(acc, xj(j)?), &max)?;
            let shifted = |j| -> Result<FloatValue<'ctx>, Fail> {
                Ok(cx.b.build_float_sub(xj(j)?, mx, "d")?)
            };
            let sum = reduce(0.0, &|acc, j| add(acc, exp(shifted(j)?)?), &add)?;
            write(&|j| Ok(cx.b.build_float_div(exp(shifted(j)?)?, sum, "y")?))?;
        }
        RowOp::LayerNorm { eps } | RowOp::RmsNorm { eps } => {
            let mean = if matches!(r.op, RowOp::LayerNorm { .. }) {
                let sum = reduce(0.0, &|acc, j| add(acc, xj(j)?), &add)?;
                b.build_float_div(sum, cx.f32(r.len as f32), "mean")?
            } else {
                cx.f32(0.0)
            };
            let centred = |j| -> Result<FloatValue<'ctx>, Fail> {
                Ok(cx.b.build_float_sub(xj(j)?, mean, "d")?)
            };
            let sq = reduce(
                0.0,
                &|acc, j| {
                    let d = centred(j)?;
                    add(acc, cx.b.build_float_mul(d, d, "d2")?)
                },
                &add,
            )?;
            let var = b.build_float_div(sq, cx.f32(r.len as f32), "var")?;
            let var = b.build_float_add(var, cx.f32(eps), "var")?;
            let sd = float_intrinsic(&cx, "llvm.sqrt", &[var])?;
            let inv = b.build_float_div(cx.f32(1.0), sd, "inv")?;
            let param = |p: &Option<Operand>,
                         j: IntValue<'ctx>|
             -> Result<Option<FloatValue<'ctx>>, Fail> {
                p.as_ref()
                    .map(|p| {
                        let k =
                            cx.b.build_int_unsigned_rem(j, cx.i32(p.len.max(1) as i64), "k")?;
                        Ok(cx.load(p, k)?.into_float_value())
                    })
                    .transpose()
            };
            write(&|j| {
                let y = cx.b.build_float_mul(centred(j)?, inv, "n")?;
                let y = match param(&r.scale, j)? {
                    Some(s) => cx.b.build_float_mul(y, s, "scaled")?,
                    None => y,
                };
                Ok(match param(&r.bias, j)? {
                    Some(c) => cx.b.build_float_add(y, c, "shifted")?,
                    None => y,
                })
            })?;
        }
    }
    cx.finish()?;
    Ok(workgroups)
}
