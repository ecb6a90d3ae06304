//! From a verified IR graph to kernel descriptions and their memory: the
//! kernels are the shared schedule's (`m4c_plan::memory::Schedule::fused`:
//! one per elementwise fusion group, one per other node, reshapes alias),
//! the arena is `m4c_plan::memory::plan`'s, followed by the graph inputs;
//! constants (and Resize's index tables) go to the weights.

use std::collections::HashMap;

use m4c_gpu_device::{Binding, Space};
use m4c_ir::op::{CoordMode, NormKind, PadMode, ResizeMode};
use m4c_ir::{DType, Graph, Op, ValueDef, ValueId};
use m4c_plan::fusion::group_members;
use m4c_plan::memory::{self, MemoryPlan, Schedule};

mod conv;

use crate::kernel::{
    Bin, Body, Combine, Expr, Fold, Gemm, Kernel, Kind, Map, Operand, Row, RowOp, Un,
};

/// Buffers are placed at multiples of this many bytes.
const ALIGN: usize = 64;

/// A graph ready for an emitter: its kernels in launch order and the
/// memory they address.
#[derive(Debug)]
pub struct Program {
    pub kernels: Vec<Kernel>,
    /// Bytes of the arena: the planned buffers, then the inputs.
    pub arena_bytes: usize,
    /// The planned buffers alone (the shared plan's figures).
    pub memory: MemoryPlan,
    pub weights: Vec<u8>,
    pub inputs: Vec<Binding>,
    pub outputs: Vec<Binding>,
}

/// Lowers `g` (every node accepted by the backend's `refuse`). With
/// `chunk`, no weights tensor straddles a multiple of `chunk` bytes, so
/// the weights can be bound as several buffers of at most `chunk` bytes
/// (WebGPU's 128 MiB binding limit); a tensor larger than `chunk` is an
/// error.
pub fn lower(g: &Graph, chunk: Option<usize>) -> Result<Program, String> {
    let schedule = Schedule::fused(g);
    let buffers = memory::buffer_lifetimes(g, &schedule).map_err(|e| e.to_string())?;
    let plan = memory::plan(g, &schedule).map_err(|e| e.to_string())?;
    let mut cx = Lowering {
        g,
        of_value: buffers.of_value,
        plan,
        inputs: HashMap::new(),
        constants: HashMap::new(),
        weights: Vec::new(),
        chunk: chunk.unwrap_or(usize::MAX),
        largest: 0,
    };
    let mut arena = cx.plan.arena_bytes.next_multiple_of(ALIGN);
    let mut inputs = Vec::new();
    for &v in &g.inputs {
        let bytes = cx.bytes(v)?;
        cx.inputs.insert(v.index(), arena);
        inputs.push(Binding {
            space: Space::Arena,
            offset: arena as u64,
            bytes: bytes as u64,
        });
        arena += bytes.max(1).next_multiple_of(ALIGN);
    }
    let roots: Vec<usize> = schedule.kernel_of.clone();
    let members = group_members(
        &roots
            .iter()
            .enumerate()
            .map(|(i, &r)| g.nodes[i].op.kind().is_elementwise().then_some(r))
            .collect::<Vec<_>>(),
    );
    let mut kernels = Vec::new();
    for (i, node) in g.nodes.iter().enumerate() {
        if roots[i] != i || memory::aliases_input(&node.op) {
            continue;
        }
        let out = cx.operand(node.output)?;
        if out.len == 0 {
            continue;
        }
        let body = if node.op.kind().is_elementwise() {
            cx.fused(&members[i])?
        } else {
            cx.node(i)?
        };
        kernels.push(Kernel {
            value: g.value(node.output).name.clone(),
            body,
        });
    }
    let outputs = g
        .outputs
        .iter()
        .map(|&v| {
            let op = cx.operand(v)?;
            Ok(Binding {
                space: op.space,
                offset: op.offset as u64,
                bytes: cx.bytes(v)? as u64,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    if cx.largest > cx.chunk {
        return Err(format!(
            "a {}-byte constant exceeds the {}-byte weights binding",
            cx.largest, cx.chunk
        ));
    }
    cx.weights.resize(cx.weights.len().next_multiple_of(4), 0);
    Ok(Program {
        kernels,
        arena_bytes: arena,
        memory: cx.plan,
        weights: cx.weights,
        inputs,
        outputs,
    })
}

struct Lowering<'g> {
    g: &'g Graph,
    of_value: Vec<Option<usize>>,
    plan: MemoryPlan,
    /// Arena offsets of the graph inputs, by value index.
    inputs: HashMap<usize, usize>,
    /// Weights offsets of the constants placed so far, by value index.
    constants: HashMap<usize, usize>,
    weights: Vec<u8>,
    /// No weights tensor straddles a multiple of this many bytes.
    chunk: usize,
    /// Bytes of the largest weights tensor.
    largest: usize,
}

/// Row-major element strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

fn lit(n: usize) -> Expr {
    Expr::I(n as i32)
}

fn add(a: Expr, b: Expr) -> Expr {
    match (&a, &b) {
        (Expr::I(0), _) => b,
        (_, Expr::I(0)) => a,
        _ => Expr::bin(Bin::Add, a, b),
    }
}

fn scale(a: Expr, by: usize) -> Expr {
    match (by, &a) {
        (0, _) | (_, Expr::I(0)) => Expr::I(0),
        (1, _) => a,
        _ => Expr::bin(Bin::Mul, a, lit(by)),
    }
}

/// The element index of coordinates `coords` in a row-major `shape`.
fn linear(coords: Vec<Expr>, shape: &[usize]) -> Expr {
    coords
        .into_iter()
        .zip(strides(shape))
        .zip(shape)
        .filter(|(_, &n)| n != 1)
        .fold(Expr::I(0), |acc, ((c, s), _)| add(acc, scale(c, s)))
}

/// `0 <= c < n`.
fn in_range(c: Expr, n: usize) -> Expr {
    Expr::bin(
        Bin::And,
        Expr::bin(Bin::Le, Expr::I(0), c.clone()),
        Expr::bin(Bin::Lt, c, lit(n)),
    )
}

fn all(conds: Vec<Expr>) -> Expr {
    conds
        .into_iter()
        .reduce(|a, b| Expr::bin(Bin::And, a, b))
        .unwrap_or(Expr::B(true))
}

fn coords(rank: usize) -> Vec<Expr> {
    (0..rank).map(Expr::Coord).collect()
}

impl Lowering<'_> {
    fn shape(&self, v: ValueId) -> Result<Vec<usize>, String> {
        let value = self.g.value(v);
        value
            .ty
            .static_shape()
            .ok_or_else(|| format!("`{}` has the symbolic type {}", value.name, value.ty))
    }

    fn bytes(&self, v: ValueId) -> Result<usize, String> {
        let n = self.shape(v)?.iter().product();
        Ok(self.g.value(v).ty.dtype.storage_bytes(n))
    }

    /// Appends `bytes` to the weights at the next aligned offset (the
    /// next chunk's start if they would straddle a chunk boundary).
    fn push_weights(&mut self, bytes: &[u8]) -> usize {
        let mut at = self.weights.len().next_multiple_of(ALIGN);
        let last = at + bytes.len().max(1) - 1;
        if at / self.chunk != last / self.chunk {
            at = at.next_multiple_of(self.chunk);
        }
        self.largest = self.largest.max(bytes.len());
        self.weights.resize(at, 0);
        self.weights.extend_from_slice(bytes);
        at
    }

    /// Where `v`'s elements are: through reshapes to the value holding
    /// the bytes, then its arena buffer, input slot or weights.
    fn operand(&mut self, v: ValueId) -> Result<Operand, String> {
        let mut src = v;
        while let ValueDef::Node(n) = self.g.value(src).def {
            match self.g.nodes[n].op {
                Op::Reshape { .. } => src = self.g.nodes[n].inputs[0],
                _ => break,
            }
        }
        let ty = &self.g.value(v).ty;
        let len = self.shape(v)?.iter().product();
        let (space, offset) = match &self.g.value(src).def {
            ValueDef::Const(t) => {
                let at = match self.constants.get(&src.index()) {
                    Some(&at) => at,
                    None => {
                        let bytes = t.bytes().map_err(|e| e.to_string())?.to_vec();
                        let at = self.push_weights(&bytes);
                        self.constants.insert(src.index(), at);
                        at
                    }
                };
                (Space::Weights, at)
            }
            ValueDef::Input => (Space::Arena, self.inputs[&src.index()]),
            ValueDef::Node(_) => {
                let b = self.of_value[src.index()]
                    .ok_or_else(|| format!("`{}` has no buffer", self.g.value(src).name))?;
                (Space::Arena, self.plan.placements[b].offset)
            }
        };
        Ok(Operand {
            space,
            offset,
            dtype: ty.dtype,
            len,
        })
    }

    /// A weights table of i32 or f32 values, as an operand.
    fn table<T: Copy>(
        &mut self,
        values: &[T],
        dtype: DType,
        to_bytes: fn(T) -> [u8; 4],
    ) -> Operand {
        let bytes: Vec<u8> = values.iter().flat_map(|&v| to_bytes(v)).collect();
        Operand {
            space: Space::Weights,
            offset: self.push_weights(&bytes),
            dtype,
            len: values.len(),
        }
    }

    /// `v` read at the output coordinates of a `out_rank`-axis kernel,
    /// broadcasting (numpy rules, right-aligned).
    fn broadcast(&mut self, v: ValueId, out_rank: usize) -> Result<Expr, String> {
        let shape = self.shape(v)?;
        let skip = out_rank - shape.len();
        let c = (0..shape.len()).map(|d| Expr::Coord(d + skip)).collect();
        Ok(Expr::load(self.operand(v)?, linear(c, &shape)))
    }

    /// One fused elementwise group: each member a `let`, the last stored.
    fn fused(&mut self, members: &[usize]) -> Result<Body, String> {
        let g = self.g;
        let root = *members.last().ok_or("an empty group")?;
        let out_value = g.nodes[root].output;
        let shape = self.shape(out_value)?;
        let mut lets: Vec<Expr> = Vec::new();
        let mut kinds: Vec<Kind> = Vec::new();
        let mut at: HashMap<usize, usize> = HashMap::new();
        for &m in members {
            let node = &g.nodes[m];
            let args = node
                .inputs
                .iter()
                .map(|&v| match at.get(&v.index()) {
                    Some(&k) => Ok(Expr::Var(k)),
                    None => self.broadcast(v, shape.len()),
                })
                .collect::<Result<Vec<_>, String>>()?;
            let arg_kinds: Vec<Kind> = args.iter().map(|a| a.kind(&kinds)).collect();
            let e = elementwise(&node.op, args, &arg_kinds)?;
            kinds.push(e.kind(&kinds));
            at.insert(node.output.index(), lets.len());
            lets.push(e);
        }
        let value = Expr::Var(lets.len() - 1);
        Ok(Body::Map(Map {
            out: self.operand(out_value)?,
            shape,
            lets,
            value,
        }))
    }

    /// The kernel of a node that is not elementwise.
    fn node(&mut self, i: usize) -> Result<Body, String> {
        let node = &self.g.nodes[i];
        let out_shape = self.shape(node.output)?;
        let out = self.operand(node.output)?;
        let x = node.inputs[0];
        let xs = self.shape(x)?;
        let map = |value: Expr| {
            Body::Map(Map {
                out,
                shape: out_shape.clone(),
                lets: Vec::new(),
                value,
            })
        };
        let rows = |axis: usize, inner: bool| {
            let len_end = if inner { axis + 1 } else { xs.len() };
            (
                xs[..axis].iter().product::<usize>(),
                xs[axis..len_end].iter().product::<usize>(),
                xs[len_end..].iter().product::<usize>(),
            )
        };
        Ok(match &node.op {
            Op::MatMul { trans_a, trans_b } => self.gemm(
                node.inputs[0],
                node.inputs[1],
                *trans_a,
                *trans_b,
                out,
                &out_shape,
            )?,
            Op::Softmax { axis } => {
                let (outer, len, inner) = rows(*axis, true);
                Body::Row(Row {
                    op: RowOp::Softmax,
                    x: self.operand(x)?,
                    out,
                    scale: None,
                    bias: None,
                    outer,
                    len,
                    inner,
                })
            }
            Op::Norm {
                kind,
                axis,
                epsilon,
            } => {
                let (outer, len, inner) = rows(*axis, false);
                let eps = *epsilon;
                Body::Row(Row {
                    op: match kind {
                        NormKind::Layer => RowOp::LayerNorm { eps },
                        NormKind::Rms => RowOp::RmsNorm { eps },
                    },
                    x: self.operand(x)?,
                    out,
                    scale: Some(self.operand(node.inputs[1])?),
                    bias: node.inputs.get(2).map(|&b| self.operand(b)).transpose()?,
                    outer,
                    len,
                    inner,
                })
            }
            Op::Transpose { perm } => {
                let mut c = vec![Expr::I(0); xs.len()];
                for (d, &p) in perm.iter().enumerate() {
                    c[p] = Expr::Coord(d);
                }
                map(Expr::load(self.operand(x)?, linear(c, &xs)))
            }
            Op::Slice { axes } => {
                let c = axes
                    .iter()
                    .enumerate()
                    .map(|(d, a)| {
                        let step = Expr::bin(Bin::Mul, Expr::Coord(d), Expr::I(a.step as i32));
                        add(lit(a.start), step)
                    })
                    .collect();
                map(Expr::load(self.operand(x)?, linear(c, &xs)))
            }
            Op::Expand { .. } => map(self.broadcast(x, out_shape.len())?),
            Op::Concat { axis } => {
                let mut parts = Vec::new();
                let mut start = 0;
                for &v in &node.inputs {
                    let s = self.shape(v)?;
                    let mut c = coords(s.len());
                    c[*axis] = Expr::bin(Bin::Sub, Expr::Coord(*axis), lit(start));
                    start += s[*axis];
                    parts.push((start, Expr::load(self.operand(v)?, linear(c, &s))));
                }
                let (_, last) = parts.pop().ok_or("Concat of nothing")?;
                map(parts.into_iter().rev().fold(last, |rest, (end, e)| {
                    Expr::select(Expr::bin(Bin::Lt, Expr::Coord(*axis), lit(end)), e, rest)
                }))
            }
            Op::Pad { pads, mode } => {
                let r = xs.len();
                let src: Vec<Expr> = (0..r)
                    .map(|d| Expr::bin(Bin::Sub, Expr::Coord(d), lit(pads[d])))
                    .collect();
                let x_op = self.operand(x)?;
                match mode {
                    PadMode::Constant(v) => {
                        let valid = all((0..r)
                            .filter(|&d| pads[d] + pads[d + r] > 0)
                            .map(|d| in_range(src[d].clone(), xs[d]))
                            .collect());
                        let fill = match Kind::of(out.dtype) {
                            Kind::F => Expr::F(*v as f32),
                            Kind::I => Expr::I(*v as i32),
                            Kind::B => Expr::B(*v != 0.0),
                        };
                        map(Expr::select(
                            valid,
                            Expr::load(x_op, linear(src, &xs)),
                            fill,
                        ))
                    }
                    PadMode::Edge => {
                        let c = src
                            .into_iter()
                            .zip(&xs)
                            .map(|(c, &n)| {
                                let lo = Expr::bin(Bin::Max, c, Expr::I(0));
                                Expr::bin(Bin::Min, lo, lit(n.max(1) - 1))
                            })
                            .collect();
                        map(Expr::load(x_op, linear(c, &xs)))
                    }
                    PadMode::Reflect => {
                        let c = src
                            .into_iter()
                            .zip(&xs)
                            .map(|(c, &n)| {
                                let neg = Expr::un(Un::Neg, c.clone());
                                let a =
                                    Expr::select(Expr::bin(Bin::Lt, c.clone(), Expr::I(0)), neg, c);
                                let back = Expr::bin(Bin::Sub, lit(2 * (n.max(1) - 1)), a.clone());
                                Expr::select(Expr::bin(Bin::Lt, a.clone(), lit(n)), a, back)
                            })
                            .collect();
                        map(Expr::load(x_op, linear(c, &xs)))
                    }
                }
            }
            Op::Gather { axis } => {
                let idx = node.inputs[1];
                let qs = self.shape(idx)?;
                let qc = (0..qs.len()).map(|d| Expr::Coord(axis + d)).collect();
                let raw = Expr::load(self.operand(idx)?, linear(qc, &qs));
                let wrapped = Expr::select(
                    Expr::bin(Bin::Lt, raw.clone(), Expr::I(0)),
                    Expr::bin(Bin::Add, raw.clone(), lit(xs[*axis])),
                    raw,
                );
                let mut c: Vec<Expr> = (0..*axis).map(Expr::Coord).collect();
                c.push(wrapped);
                c.extend((axis + 1..xs.len()).map(|d| Expr::Coord(d - 1 + qs.len())));
                map(Expr::load(self.operand(x)?, linear(c, &xs)))
            }
            Op::Resize {
                mode,
                coord,
                scales,
                sizes,
            } => {
                let value = self.resize(x, &xs, *mode, *coord, scales, sizes)?;
                map(value)
            }
            Op::ReduceSum { axes, keep_dims } | Op::ReduceMax { axes, keep_dims } => {
                let combine = match node.op {
                    Op::ReduceSum { .. } => Combine::Sum,
                    _ => Combine::Max,
                };
                let (c, dims) = reduce_coords(&xs, axes, *keep_dims);
                let body = Expr::load(self.operand(x)?, linear(c, &xs));
                map(Expr::Fold(Box::new(Fold {
                    id: 0,
                    dims,
                    combine,
                    body,
                })))
            }
            Op::ArgMax {
                axis,
                keep_dims,
                select_last,
            } => {
                let (c, dims) = reduce_coords(&xs, &[*axis], *keep_dims);
                let body = Expr::load(self.operand(x)?, linear(c, &xs));
                let combine = Combine::ArgMax { last: *select_last };
                map(Expr::Fold(Box::new(Fold {
                    id: 0,
                    dims,
                    combine,
                    body,
                })))
            }
            Op::MaxPool(p) | Op::AvgPool { pool: p, .. } => {
                let at = |fold| {
                    window(
                        &xs,
                        (&p.strides, &p.pads, &p.dilations),
                        output_spatial(p.kernel.len()),
                        taps(fold, 0, p.kernel.len()),
                        (Expr::Coord(0), Expr::Coord(1)),
                    )
                };
                let (valid, c) = at(0);
                let x_op = self.operand(x)?;
                let load = Expr::load(x_op, linear(c, &xs));
                let dims = p.kernel.clone();
                let fold = |id, combine, body| {
                    Expr::Fold(Box::new(Fold {
                        id,
                        dims: dims.clone(),
                        combine,
                        body,
                    }))
                };
                match &node.op {
                    Op::MaxPool(_) => map(fold(
                        0,
                        Combine::Max,
                        Expr::select(valid, load, Expr::F(f32::NEG_INFINITY)),
                    )),
                    _ => {
                        let include = matches!(
                            node.op,
                            Op::AvgPool {
                                count_include_pad: true,
                                ..
                            }
                        );
                        let sum = fold(0, Combine::Sum, Expr::select(valid, load, Expr::F(0.0)));
                        let count = if include {
                            Expr::F(p.kernel.iter().product::<usize>() as f32)
                        } else {
                            fold(
                                1,
                                Combine::Sum,
                                Expr::select(at(1).0, Expr::F(1.0), Expr::F(0.0)),
                            )
                        };
                        map(Expr::bin(Bin::Div, sum, count))
                    }
                }
            }
            Op::Conv(a) if a.group <= 1 => self.conv_gemm(&node.inputs, a, out, &out_shape)?,
            Op::Conv(a) => {
                let ws = self.shape(node.inputs[1])?;
                let (m, cg) = (ws[0], ws[1]);
                let per_group = m / a.group.max(1);
                let channel = add(
                    scale(
                        Expr::bin(Bin::Div, Expr::Coord(1), lit(per_group.max(1))),
                        cg,
                    ),
                    Expr::Loop { fold: 0, d: 0 },
                );
                let kernel = &ws[2..];
                let (valid, c) = window(
                    &xs,
                    (&a.strides, &a.pads, &a.dilations),
                    output_spatial(kernel.len()),
                    taps(0, 1, kernel.len()),
                    (Expr::Coord(0), channel),
                );
                let shifted = |d: usize| Expr::Loop { fold: 0, d };
                let mut wc = vec![Expr::Coord(1), shifted(0)];
                wc.extend((0..kernel.len()).map(|d| shifted(d + 1)));
                let product = Expr::bin(
                    Bin::Mul,
                    Expr::load(self.operand(x)?, linear(c, &xs)),
                    Expr::load(self.operand(node.inputs[1])?, linear(wc, &ws)),
                );
                let mut dims = vec![cg];
                dims.extend_from_slice(kernel);
                let sum = Expr::Fold(Box::new(Fold {
                    id: 0,
                    dims,
                    combine: Combine::Sum,
                    body: Expr::select(valid, product, Expr::F(0.0)),
                }));
                let value = match node.inputs.get(2) {
                    Some(&b) => {
                        Expr::bin(Bin::Add, sum, Expr::load(self.operand(b)?, Expr::Coord(1)))
                    }
                    None => sum,
                };
                map(value)
            }
            other => return Err(format!("no GPU kernel for {}", other.kind().name())),
        })
    }

    /// Batched `a · b` (transposes as strides, batch axes broadcast).
    /// A vector operand is a one-row (`a`) or one-column (`b`) matrix
    /// whose axis the output lacks.
    fn gemm(
        &mut self,
        a: ValueId,
        b: ValueId,
        ta: bool,
        tb: bool,
        c: Operand,
        out: &[usize],
    ) -> Result<Body, String> {
        let (mut sa, mut sb) = (self.shape(a)?, self.shape(b)?);
        let mut out = out.to_vec();
        if sa.len() == 1 {
            sa.insert(0, 1);
            let at = out.len() - usize::from(sb.len() > 1);
            out.insert(at, 1);
        }
        if sb.len() == 1 {
            sb.push(1);
            out.push(1);
        }
        let r = out.len();
        let (m, n) = (out[r - 2], out[r - 1]);
        let k = if ta {
            sa[sa.len() - 2]
        } else {
            sa[sa.len() - 1]
        };
        let mat = |s: &[usize], t: bool| {
            let cols = s[s.len() - 1];
            if t {
                [1, cols]
            } else {
                [cols, 1]
            }
        };
        let batch_strides = |s: &[usize]| -> Vec<usize> {
            let st = strides(s);
            (0..r - 2)
                .map(|d| {
                    let skip = r - s.len();
                    match d.checked_sub(skip) {
                        Some(e) if s[e] != 1 => st[e],
                        _ => 0,
                    }
                })
                .collect()
        };
        Ok(Body::Gemm(Gemm {
            a: self.operand(a)?,
            b: self.operand(b)?,
            c,
            m,
            n,
            k,
            a_strides: mat(&sa, ta),
            b_strides: mat(&sb, tb),
            batch: out[..r - 2].to_vec(),
            a_batch: batch_strides(&sa),
            b_batch: batch_strides(&sb),
            b_view: None,
            bias: None,
        }))
    }

    /// Resize through per-axis index (and weight) tables computed here
    /// with the interpreter's coordinate rules.
    fn resize(
        &mut self,
        x: ValueId,
        xs: &[usize],
        mode: ResizeMode,
        coord: CoordMode,
        scales: &[f32],
        sizes: &[usize],
    ) -> Result<Expr, String> {
        let x_op = self.operand(x)?;
        let axes: Vec<usize> = (0..xs.len())
            .filter(|&d| sizes[d] != xs[d] || scales[d] != 1.0)
            .collect();
        let source = |d: usize| -> Vec<f64> {
            (0..sizes[d])
                .map(|o| coord.source(o, scales[d], xs[d], sizes[d]))
                .collect()
        };
        let i32_bytes: fn(i32) -> [u8; 4] = i32::to_le_bytes;
        match mode {
            ResizeMode::Nearest(rounding) => {
                let mut c = coords(xs.len());
                for &d in &axes {
                    let t: Vec<i32> = source(d)
                        .into_iter()
                        .map(|s| rounding.index(s, xs[d]) as i32)
                        .collect();
                    let table = self.table(&t, DType::I32, i32_bytes);
                    c[d] = Expr::load(table, Expr::Coord(d));
                }
                Ok(Expr::load(x_op, linear(c, xs)))
            }
            ResizeMode::Linear => {
                let mut tables = Vec::new();
                for &d in &axes {
                    let last = (xs[d] as f64 - 1.0).max(0.0);
                    let (mut lo, mut hi, mut w) = (vec![], vec![], vec![]);
                    for s in source(d) {
                        let s = s.clamp(0.0, last);
                        let i0 = s.floor();
                        lo.push(i0 as i32);
                        hi.push((i0 + 1.0).min(last) as i32);
                        w.push((s - i0) as f32);
                    }
                    let f32_bytes: fn(f32) -> [u8; 4] = f32::to_le_bytes;
                    tables.push((
                        d,
                        self.table(&lo, DType::I32, i32_bytes),
                        self.table(&hi, DType::I32, i32_bytes),
                        self.table(&w, DType::F32, f32_bytes),
                    ));
                }
                Ok(interpolate(x_op, xs, &tables, coords(xs.len())))
            }
        }
    }
}

/// N-linear interpolation over `tables` (axis, lo, hi, weight), one axis
/// at a time: `v0 + (v1 - v0) · w`, as the interpreter.
fn interpolate(
    x: Operand,
    xs: &[usize],
    tables: &[(usize, Operand, Operand, Operand)],
    c: Vec<Expr>,
) -> Expr {
    match tables.split_last() {
        None => Expr::load(x, linear(c, xs)),
        Some(((d, lo, hi, w), rest)) => {
            let at = |t: Operand| {
                let mut c = c.clone();
                c[*d] = Expr::load(t, Expr::Coord(*d));
                c
            };
            let v0 = interpolate(x, xs, rest, at(*lo));
            let v1 = interpolate(x, xs, rest, at(*hi));
            let diff = Expr::bin(Bin::Sub, v1, v0.clone());
            Expr::bin(
                Bin::Add,
                v0,
                Expr::bin(Bin::Mul, diff, Expr::load(*w, Expr::Coord(*d))),
            )
        }
    }
}

/// The input coordinates of a reduction over `axes` (fold 0's loop
/// coordinates on them, the output's elsewhere) and the loop's extent.
fn reduce_coords(xs: &[usize], axes: &[usize], keep_dims: bool) -> (Vec<Expr>, Vec<usize>) {
    let mut sorted = axes.to_vec();
    sorted.sort_unstable();
    let mut kept = 0;
    let c = (0..xs.len())
        .map(|d| match sorted.iter().position(|&a| a == d) {
            Some(k) => Expr::Loop { fold: 0, d: k },
            None => {
                let c = Expr::Coord(if keep_dims { d } else { kept });
                kept += 1;
                c
            }
        })
        .collect();
    (c, sorted.iter().map(|&a| xs[a]).collect())
}

/// The geometry of a sliding window: strides, pads (begins then ends),
/// dilations per spatial axis (missing strides and dilations are 1).
type Geometry<'a> = (&'a [usize], &'a [usize], &'a [usize]);

/// A sliding window over the spatial axes of `xs` (`[N, C, spatial..]`):
/// output position `at[d]`, tap `taps[d]` on each spatial axis. Gives
/// whether the tap lies inside the input, and the input coordinates
/// (`batch`, `channel`, then the spatial ones).
fn window(
    xs: &[usize],
    (strides, pads, dilations): Geometry<'_>,
    at: Vec<Expr>,
    taps: Vec<Expr>,
    (batch, channel): (Expr, Expr),
) -> (Expr, Vec<Expr>) {
    let spatial: Vec<Expr> = at
        .into_iter()
        .zip(taps)
        .enumerate()
        .map(|(d, (at, tap))| {
            let at = scale(at, strides.get(d).copied().unwrap_or(1));
            let tap = scale(tap, dilations.get(d).copied().unwrap_or(1));
            Expr::bin(Bin::Sub, add(at, tap), lit(pads[d]))
        })
        .collect();
    let valid = all(spatial
        .iter()
        .zip(&xs[2..])
        .map(|(c, &n)| in_range(c.clone(), n))
        .collect());
    let mut c = vec![batch, channel];
    c.extend(spatial);
    (valid, c)
}

/// The output's spatial coordinates (`Coord(2)`, …) of a map over an
/// `[N, C, spatial..]` result.
fn output_spatial(rank: usize) -> Vec<Expr> {
    (0..rank).map(|d| Expr::Coord(2 + d)).collect()
}

/// The loop coordinates `first..first + rank` of fold `fold`: a window's
/// taps.
fn taps(fold: usize, first: usize, rank: usize) -> Vec<Expr> {
    (0..rank)
        .map(|d| Expr::Loop { fold, d: first + d })
        .collect()
}

/// The expression of one elementwise operator on its operands.
fn elementwise(op: &Op, mut args: Vec<Expr>, arg_kinds: &[Kind]) -> Result<Expr, String> {
    let mut arg = || args.remove(0);
    Ok(match op {
        Op::Add => Expr::bin(Bin::Add, arg(), arg()),
        Op::Sub => Expr::bin(Bin::Sub, arg(), arg()),
        Op::Mul => Expr::bin(Bin::Mul, arg(), arg()),
        Op::Div => Expr::bin(Bin::Div, arg(), arg()),
        Op::Pow => Expr::bin(Bin::Pow, arg(), arg()),
        Op::Max => Expr::bin(Bin::Max, arg(), arg()),
        Op::Min => Expr::bin(Bin::Min, arg(), arg()),
        Op::Equal => Expr::bin(Bin::Eq, arg(), arg()),
        Op::Less => Expr::bin(Bin::Lt, arg(), arg()),
        Op::Where => Expr::select(arg(), arg(), arg()),
        // Floats saturate into i8 (as Rust's `as`); integers wrap when the
        // low byte is stored.
        Op::Cast { to: DType::I8 } if arg_kinds.first() == Some(&Kind::F) => {
            let i = Expr::Cast(Kind::I, Box::new(arg()));
            Expr::bin(
                Bin::Min,
                Expr::bin(Bin::Max, i, Expr::I(-128)),
                Expr::I(127),
            )
        }
        Op::Cast { to } => Expr::Cast(Kind::of(*to), Box::new(arg())),
        other => {
            let u = match other {
                Op::Exp => Un::Exp,
                Op::Log => Un::Log,
                Op::Sqrt => Un::Sqrt,
                Op::Erf => Un::Erf,
                Op::Tanh => Un::Tanh,
                Op::Sigmoid => Un::Sigmoid,
                Op::Sin => Un::Sin,
                Op::Cos => Un::Cos,
                Op::Floor => Un::Floor,
                Op::Gelu { tanh_approx } => Un::Gelu { tanh: *tanh_approx },
                _ => return Err(format!("no elementwise kernel for {}", other.kind().name())),
            };
            Expr::un(u, arg())
        }
    })
}
