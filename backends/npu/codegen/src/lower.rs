//! One NPU part of the graph onto the kernel generators of `m4c-npu`: a
//! layer (one generated program, placeholders for its run-time operands)
//! per node, int8 tensors quantised with the calibrated scales.
//!
//! - MatMul with a constant B: a GEMM with per-channel symmetric int8
//!   weights, and the bias of a following `Add` of a constant vector (its
//!   only consumer, in the same part) fused into the GEMM; with a run-time B (attention): one GEMM per batch entry, all
//!   sharing one program.
//! - Add/Sub/Mul/Max/Min: the elementwise kernel (a constant operand is
//!   broadcast and quantised into the program); with a constant scalar, and
//!   Div/Pow by one, a lookup table.
//! - Unary functions: a lookup table computed by evaluating the IR op
//!   itself (`m4c_ops`) on the 256 dequantised inputs.
//! - Softmax: the softmax kernel, then a table that requantises its fixed
//!   output scale to the calibrated one. LayerNorm/RMSNorm: the norm kernel.
//! - Reshape: nothing (the tensor is reinterpreted); Transpose, Slice,
//!   Concat, Expand: DMA address patterns (`kernels::gather`), the bytes
//!   keep their quantisation.

use std::collections::HashMap;

use m4c_ir::op::NormKind as IrNorm;
use m4c_ir::{Graph, Op, ValueDef, ValueId};
use m4c_npu::config::MachineConfig;
use m4c_npu::kernels::{eltwise, gather, gemm, lut, norm, softmax, KernelProgram, Quant};
use m4c_npu::module::{Binding, Boundary, LayerSpec, PartPlan, TensorSpec};
use m4c_npu::program::Program;
use m4c_npu::quant::{Requant, SHIFT_RANGE};
use m4c_ops::{eval_op, Value};

use crate::calibrate::Calibration;

/// A lowered NPU part.
pub struct Lowered {
    /// Tensors and layers.
    pub plan: PartPlan,
    /// The layers' programs.
    pub programs: Vec<Program>,
    /// Values quantised on entry.
    pub inputs: Vec<Boundary>,
    /// Values dequantised on exit.
    pub outputs: Vec<Boundary>,
}

struct Ctx<'a> {
    g: &'a Graph,
    cal: &'a Calibration,
    config: &'a MachineConfig,
    tensor_of: HashMap<ValueId, usize>,
    out: Lowered,
}

/// Lowers the nodes `nodes` of `g` (one NPU part, graph order); the values
/// `exported` returns true for leave the part.
pub fn lower_part(
    g: &Graph,
    nodes: &[usize],
    exported: &dyn Fn(ValueId) -> bool,
    cal: &Calibration,
    config: &MachineConfig,
) -> Result<Lowered, (usize, String)> {
    let mut cx = Ctx {
        g,
        cal,
        config,
        tensor_of: HashMap::new(),
        out: Lowered {
            plan: PartPlan {
                tensors: vec![],
                layers: vec![],
            },
            programs: vec![],
            inputs: vec![],
            outputs: vec![],
        },
    };
    let mut fused = None;
    for &i in nodes {
        let node = &g.nodes[i];
        if fused == Some(i) {
            continue;
        }
        let name = &g.value(node.output).name;
        let fail = |e: String| (i, format!("{} `{name}`: {e}", node.op.kind().name()));
        match bias_add(g, nodes, node, exported) {
            Some((add, bias)) => {
                let trans_b = matches!(node.op, Op::MatMul { trans_b: true, .. });
                cx.matmul(&node.inputs, g.nodes[add].output, trans_b, Some(bias))
                    .map_err(fail)?;
                fused = Some(add);
            }
            None => cx.node(&node.op, &node.inputs, node.output).map_err(fail)?,
        }
    }
    for &i in nodes {
        let v = g.nodes[i].output;
        if exported(v) {
            let value = g.value(v);
            cx.out.outputs.push(Boundary {
                value: value.name.clone(),
                tensor: cx.tensor_of[&v],
                shape: value.ty.static_shape().unwrap_or_default(),
            });
        }
    }
    Ok(cx.out)
}

/// The `Add` of a constant bias vector that is the only consumer of
/// `node` (a MatMul with a constant B) within `nodes`: its
/// index and the bias.
fn bias_add(
    g: &Graph,
    nodes: &[usize],
    node: &m4c_ir::Node,
    exported: &dyn Fn(ValueId) -> bool,
) -> Option<(usize, Vec<f64>)> {
    let Op::MatMul { trans_a: false, .. } = node.op else {
        return None;
    };
    constant(g, node.inputs[1])?;
    let out = node.output;
    if exported(out) {
        return None;
    }
    let users: Vec<usize> = nodes
        .iter()
        .copied()
        .filter(|&j| g.nodes[j].inputs.contains(&out))
        .collect();
    let [add] = users[..] else { return None };
    let a = &g.nodes[add];
    if a.op != Op::Add || dims(g, a.output) != dims(g, out) {
        return None;
    }
    let other = *a.inputs.iter().find(|&&v| v != out)?;
    let n = dims(g, out).last().copied()?;
    let bias = constant(g, other)?;
    let shape = bias.shape();
    let row = shape.last() == Some(&n) && shape.iter().rev().skip(1).all(|&d| d == 1);
    row.then(|| floats(&bias)).map(|b| (add, b))
}

/// The symmetric quantisation of `absmax / 127`.
fn symmetric(absmax: f64) -> Quant {
    Quant {
        scale: absmax.max(1e-6) / 127.0,
        zero_point: 0,
    }
}

fn dims(g: &Graph, v: ValueId) -> Vec<usize> {
    g.value(v).ty.static_shape().unwrap_or_default()
}

fn constant(g: &Graph, v: ValueId) -> Option<Value> {
    match &g.value(v).def {
        ValueDef::Const(t) => Value::from_tensor(t).ok(),
        _ => None,
    }
}

fn floats(v: &Value) -> Vec<f64> {
    m4c_ops::as_f64(v)
}

/// Multiplier and shift of a real scale within the requantiser's range.
fn multiplier(scale: f64, what: &str) -> Result<(i32, i32), String> {
    Requant::quantize_scale(scale)
        .filter(|(_, s)| SHIFT_RANGE.contains(s))
        .ok_or_else(|| format!("{what} scale {scale:e} is out of the requantiser's range"))
}

fn requant((multiplier, shift): (i32, i32)) -> Requant {
    Requant {
        multiplier,
        shift,
        zero_point: 0,
        clamp_min: -128,
        clamp_max: 127,
    }
}

impl Ctx<'_> {
    /// The quantisation of value `v`: its tensor's when it has one, else
    /// the calibrated one.
    fn quant(&self, v: ValueId) -> Result<Quant, String> {
        if let Some(&t) = self.tensor_of.get(&v) {
            let t = &self.out.plan.tensors[t];
            return Ok(Quant {
                scale: t.scale,
                zero_point: t.zero_point,
            });
        }
        let name = &self.g.value(v).name;
        self.cal
            .quant(name)
            .ok_or_else(|| format!("`{name}` was not calibrated"))
    }

    fn add_tensor(&mut self, name: &str, bytes: usize, q: Quant) -> usize {
        self.out.plan.tensors.push(TensorSpec {
            name: name.to_string(),
            bytes,
            scale: q.scale,
            zero_point: q.zero_point,
        });
        self.out.plan.tensors.len() - 1
    }

    /// The tensor holding run-time value `v`: quantised on entry when
    /// another part computes it.
    fn tensor(&mut self, v: ValueId) -> Result<usize, String> {
        if let Some(&t) = self.tensor_of.get(&v) {
            return Ok(t);
        }
        let (q, shape) = (self.quant(v)?, dims(self.g, v));
        let name = self.g.value(v).name.clone();
        let t = self.add_tensor(&name, shape.iter().product(), q);
        self.out.inputs.push(Boundary {
            value: name,
            tensor: t,
            shape,
        });
        self.tensor_of.insert(v, t);
        Ok(t)
    }

    /// A new tensor for the result `v`.
    fn result(&mut self, v: ValueId, q: Quant) -> usize {
        let name = self.g.value(v).name.clone();
        let t = self.add_tensor(&name, dims(self.g, v).iter().product(), q);
        self.tensor_of.insert(v, t);
        t
    }

    fn program(&mut self, p: Program) -> usize {
        self.out.programs.push(p);
        self.out.programs.len() - 1
    }

    fn layer(
        &mut self,
        v: ValueId,
        kernel: &str,
        program: usize,
        inputs: Vec<Binding>,
        output: Binding,
    ) {
        self.out.plan.layers.push(LayerSpec {
            name: self.g.value(v).name.clone(),
            kernel: kernel.into(),
            program,
            inputs,
            output,
        });
    }

    /// A kernel whose inputs are whole tensors `ins` and result tensor `out`.
    fn whole(&mut self, v: ValueId, kernel: &str, k: KernelProgram, ins: &[usize], out: usize) {
        let bind = |cx: &Self, t: usize, addr| Binding {
            tensor: t,
            offset: 0,
            len: cx.out.plan.tensors[t].bytes,
            addr,
        };
        let inputs = ins
            .iter()
            .zip(&k.inputs)
            .map(|(&t, &a)| bind(self, t, a))
            .collect();
        let output = bind(self, out, k.out_addr);
        let p = self.program(k.program);
        self.layer(v, kernel, p, inputs, output);
    }

    fn node(&mut self, op: &Op, ins: &[ValueId], out: ValueId) -> Result<(), String> {
        let g = self.g;
        let err = |e: m4c_npu::kernels::KernelError| e.to_string();
        let shape = dims(g, out);
        let cols = shape.last().copied().unwrap_or(1).max(1);
        let rows = shape.iter().product::<usize>() / cols;
        match op {
            Op::Reshape { .. } => {
                let t = self.tensor(ins[0])?;
                self.tensor_of.insert(out, t);
            }
            Op::Transpose { .. } | Op::Slice { .. } | Op::Concat { .. } | Op::Expand { .. } => {
                let ts = ins
                    .iter()
                    .map(|&v| self.tensor(v))
                    .collect::<Result<Vec<_>, _>>()?;
                let q = self.quant(ins[0])?;
                for &v in &ins[1..] {
                    if self.quant(v)? != q {
                        return Err(
                            "inputs quantised differently (no requantising concat yet)".into()
                        );
                    }
                }
                let in_shapes: Vec<Vec<usize>> = ins.iter().map(|&v| dims(g, v)).collect();
                let ops = gather::GatherOperands {
                    sources: in_shapes
                        .iter()
                        .map(|s| vec![0; s.iter().product()])
                        .collect(),
                    row_len: cols,
                    rows: crate::movement::pieces(op, &in_shapes, &shape)?,
                };
                let k = gather::generate(&ops, self.config).map_err(err)?;
                let y = self.result(out, q);
                self.whole(out, "dma", k, &ts, y);
            }
            Op::Conv(_) => self.patchify(ins, out)?,
            Op::MatMul { trans_b, .. } => self.matmul(ins, out, *trans_b, None)?,
            Op::Softmax { .. } => {
                let x = self.tensor(ins[0])?;
                let input = self.quant(ins[0])?;
                let ops = softmax::SoftmaxOperands {
                    rows,
                    cols,
                    x: vec![0; rows * cols],
                    input,
                };
                let k = softmax::generate(&ops, self.config).map_err(err)?;
                let name = format!("{}/probabilities", g.value(out).name);
                let p = self.add_tensor(&name, rows * cols, softmax::OUTPUT);
                self.whole(out, "softmax", k, &[x], p);
                let q = self.quant(out)?;
                let table: [i8; 256] = std::array::from_fn(|i| {
                    q.quantize(softmax::OUTPUT.dequantize((i as i32 - 128) as i8))
                });
                let k = lut::generate_table(&table, rows, cols, &vec![0; rows * cols], self.config)
                    .map_err(err)?;
                let y = self.result(out, q);
                self.whole(out, "lut-requant", k, &[p], y);
            }
            Op::Norm { kind, epsilon, .. } => {
                let x = self.tensor(ins[0])?;
                let param = |i: usize| -> (Vec<i8>, f64) {
                    let v = ins.get(i).and_then(|&p| constant(g, p)).map(|v| floats(&v));
                    let v = v.unwrap_or_else(|| vec![0.0; cols]);
                    let q = symmetric(v.iter().fold(0.0, |m: f64, x| m.max(x.abs())));
                    (v.iter().map(|&x| q.quantize(x)).collect(), q.scale)
                };
                let ((gamma, gamma_scale), (beta, beta_scale)) = (param(1), param(2));
                let layer = *kind == IrNorm::Layer;
                let ops = norm::NormOperands {
                    kind: if layer {
                        norm::NormKind::LayerNorm
                    } else {
                        norm::NormKind::RmsNorm
                    },
                    rows,
                    cols,
                    x: vec![0; rows * cols],
                    input: self.quant(ins[0])?,
                    gamma,
                    gamma_scale,
                    beta: if layer { beta } else { vec![] },
                    beta_scale,
                    eps: f64::from(*epsilon),
                    output: self.quant(out)?,
                };
                let k = norm::generate(&ops, self.config).map_err(err)?;
                let y = self.result(out, ops.output);
                self.whole(out, if layer { "layernorm" } else { "rmsnorm" }, k, &[x], y);
            }
            _ => self.elementwise(op, ins, out, rows, cols)?,
        }
        Ok(())
    }

    /// A patchify conv: im2col by DMA, a GEMM with per-channel weights and
    /// the bias folded in, the result transposed to NCHW by DMA.
    fn patchify(&mut self, ins: &[ValueId], out: ValueId) -> Result<(), String> {
        let g = self.g;
        let err = |e: m4c_npu::kernels::KernelError| e.to_string();
        let (xs, ws, ys) = (dims(g, ins[0]), dims(g, ins[1]), dims(g, out));
        let (m, kh, kw) = (ws[0], ws[2], ws[3]);
        let k = ws[1] * kh * kw;
        let pixels = ys[0] * ys[2] * ys[3];
        let (x, qx, qy) = (self.tensor(ins[0])?, self.quant(ins[0])?, self.quant(out)?);
        let name = g.value(out).name.clone();
        let ops = gather::GatherOperands {
            sources: vec![vec![0; xs.iter().product()]],
            row_len: k,
            rows: crate::conv::im2col(&xs, (kh, kw)),
        };
        let kp = gather::generate(&ops, self.config).map_err(err)?;
        let cols = self.add_tensor(&format!("{name}/im2col"), pixels * k, qx);
        self.whole(out, "dma-im2col", kp, &[x], cols);
        let w = floats(&constant(g, ins[1]).ok_or("run-time weights")?);
        let bias = ins.get(2).and_then(|&b| constant(g, b)).map(|b| floats(&b));
        let qw: Vec<Quant> = (0..m)
            .map(|c| {
                symmetric(
                    w[c * k..(c + 1) * k]
                        .iter()
                        .fold(0.0, |a: f64, x| a.max(x.abs())),
                )
            })
            .collect();
        let wq = (0..k * m)
            .map(|i| qw[i % m].quantize(w[(i % m) * k + i / m]))
            .collect();
        let scales = qw
            .iter()
            .map(|q| multiplier(qx.scale * q.scale / qy.scale, "conv output"))
            .collect::<Result<Vec<_>, _>>()?;
        let bias = bias.map(|b| {
            (0..m)
                .map(|c| (b[c] / (qx.scale * qw[c].scale)).round().clamp(-2e9, 2e9) as i32)
                .collect()
        });
        let ops = gemm::GemmOperands {
            m: pixels,
            k,
            n: m,
            a: vec![0; pixels * k],
            w: wq,
            bias,
            quant: requant(scales[0]),
            channel_scales: Some(scales),
        };
        let p = gemm::generate(&ops, self.config, false).map_err(err)?;
        let prod = self.add_tensor(&format!("{name}/gemm"), pixels * m, qy);
        let kp = KernelProgram {
            program: p.program,
            out_addr: p.out_addr,
            out_len: pixels * m,
            tile_rows: p.plan.m_tile,
            inputs: vec![p.inputs[0]],
        };
        self.whole(out, "gemm", kp, &[cols], prod);
        let ops = gather::GatherOperands {
            sources: vec![vec![0; pixels * m]],
            row_len: ys[3],
            rows: crate::conv::to_nchw(ys[0], m, (ys[2], ys[3])),
        };
        let kp = gather::generate(&ops, self.config).map_err(err)?;
        let y = self.result(out, qy);
        self.whole(out, "dma-nchw", kp, &[prod], y);
        Ok(())
    }

    /// Tensor `t` (value `v`) broadcast to `out`'s shape by a DMA
    /// pattern, or `t` itself when the shapes agree.
    fn expanded(&mut self, v: ValueId, t: usize, out: ValueId) -> Result<usize, String> {
        let (from, to) = (dims(self.g, v), dims(self.g, out));
        if from == to {
            return Ok(t);
        }
        let expand = Op::Expand { shape: to.clone() };
        let ops = gather::GatherOperands {
            sources: vec![vec![0; from.iter().product()]],
            row_len: to.last().copied().unwrap_or(1).max(1),
            rows: crate::movement::pieces(&expand, std::slice::from_ref(&from), &to)?,
        };
        let k = gather::generate(&ops, self.config).map_err(|e| e.to_string())?;
        let q = self.quant(v)?;
        let name = format!("{}/expanded", self.g.value(v).name);
        let e = self.add_tensor(&name, to.iter().product(), q);
        self.whole(out, "dma-expand", k, &[t], e);
        Ok(e)
    }

    /// A MatMul computing `out` (with `bias` added when an `Add` is fused:
    /// then `out` is the Add's result).
    fn matmul(
        &mut self,
        ins: &[ValueId],
        out: ValueId,
        trans_b: bool,
        bias: Option<Vec<f64>>,
    ) -> Result<(), String> {
        let g = self.g;
        let a_shape = dims(g, ins[0]);
        let k = a_shape[a_shape.len() - 1];
        let n = dims(g, out).last().copied().unwrap_or(1);
        let m_all = a_shape.iter().product::<usize>() / k;
        let (qa, qy) = (self.quant(ins[0])?, self.quant(out)?);
        if qa.zero_point != 0 || qy.zero_point != 0 {
            return Err("a GEMM takes and gives symmetric int8 (zero point 0)".into());
        }
        let a = self.tensor(ins[0])?;
        let err = |e: m4c_npu::kernels::KernelError| e.to_string();
        if let Some(w) = constant(g, ins[1]) {
            let w = floats(&w);
            // W[K, N] row-major, from B^T when B is stored [N, K].
            let w: Vec<f64> = if trans_b {
                (0..k * n).map(|i| w[(i % n) * k + i / n]).collect()
            } else {
                w
            };
            let absmax: Vec<f64> = (0..n)
                .map(|c| (0..k).fold(0.0, |m: f64, r| m.max(w[r * n + c].abs())))
                .collect();
            let qw: Vec<Quant> = absmax.iter().map(|&m| symmetric(m)).collect();
            let wq = (0..k * n).map(|i| qw[i % n].quantize(w[i])).collect();
            let scales = qw
                .iter()
                .map(|q| multiplier(qa.scale * q.scale / qy.scale, "GEMM output"))
                .collect::<Result<Vec<_>, _>>()?;
            let ops = gemm::GemmOperands {
                m: m_all,
                k,
                n,
                a: vec![0; m_all * k],
                w: wq,
                bias: bias.map(|b| {
                    (0..n)
                        .map(|c| (b[c] / (qa.scale * qw[c].scale)).round().clamp(-2e9, 2e9) as i32)
                        .collect()
                }),
                quant: requant(scales[0]),
                channel_scales: Some(scales),
            };
            let p = gemm::generate(&ops, self.config, false).map_err(err)?;
            let y = self.result(out, qy);
            let kp = KernelProgram {
                program: p.program,
                out_addr: p.out_addr,
                out_len: m_all * n,
                tile_rows: p.plan.m_tile,
                inputs: vec![p.inputs[0]],
            };
            self.whole(out, "gemm", kp, &[a], y);
            return Ok(());
        }
        let m = a_shape[a_shape.len() - 2];
        let batch = m_all / m;
        let qb = self.quant(ins[1])?;
        if qb.zero_point != 0 {
            return Err("a run-time B operand must be symmetric int8".into());
        }
        let b = self.tensor(ins[1])?;
        let ops = gemm::GemmOperands {
            m,
            k,
            n,
            a: vec![0; m * k],
            w: vec![0; k * n],
            bias: None,
            quant: requant(multiplier(qa.scale * qb.scale / qy.scale, "matmul output")?),
            channel_scales: None,
        };
        let p = gemm::generate(&ops, self.config, false).map_err(err)?;
        let y = self.result(out, qy);
        let (a_at, w_at, out_at) = (p.inputs[0], p.inputs[1], p.out_addr);
        let prog = self.program(p.program);
        for i in 0..batch {
            let bind = |tensor, len: usize, addr| Binding {
                tensor,
                offset: i * len,
                len,
                addr,
            };
            let inputs = vec![bind(a, m * k, a_at), bind(b, k * n, w_at)];
            self.layer(out, "batched-gemm", prog, inputs, bind(y, m * n, out_at));
        }
        Ok(())
    }

    fn elementwise(
        &mut self,
        op: &Op,
        ins: &[ValueId],
        out: ValueId,
        rows: usize,
        cols: usize,
    ) -> Result<(), String> {
        let g = self.g;
        let n = rows * cols;
        let err = |e: m4c_npu::kernels::KernelError| e.to_string();
        let qy = self.quant(out)?;
        let consts: Vec<Option<Value>> = ins.iter().map(|&v| constant(g, v)).collect();
        let scalar = consts.iter().flatten().any(|c| c.len() == 1);
        let elt = match op {
            Op::Add => Some(eltwise::EltOp::Add),
            Op::Sub => Some(eltwise::EltOp::Sub),
            Op::Mul => Some(eltwise::EltOp::Mul),
            Op::Max => Some(eltwise::EltOp::Max),
            Op::Min => Some(eltwise::EltOp::Min),
            _ => None,
        };
        match elt {
            Some(elt) if ins.len() == 2 && !scalar => {
                let mut ts = vec![];
                let mut data = [vec![0i8; n], vec![0i8; n]];
                let mut quants = [qy; 3];
                for (i, &v) in ins.iter().enumerate() {
                    if let Some(c) = &consts[i] {
                        let zeros = Value::F32(ndarray::ArrayD::zeros(dims(g, out)));
                        let full =
                            floats(&eval_op(&Op::Add, &[c, &zeros]).map_err(|e| e.to_string())?);
                        quants[i] = symmetric(full.iter().fold(0.0, |m: f64, x| m.max(x.abs())));
                        data[i] = full.iter().map(|&x| quants[i].quantize(x)).collect();
                    } else {
                        quants[i] = self.quant(v)?;
                        let t = self.tensor(v)?;
                        ts.push((i, self.expanded(v, t, out)?));
                    }
                }
                let [a, b] = data;
                let ops = eltwise::BinaryOperands {
                    op: elt,
                    rows,
                    cols,
                    a,
                    b,
                    quant: quants,
                };
                let k = eltwise::generate(&ops, self.config).map_err(err)?;
                let y = self.result(out, qy);
                let bindings = ts
                    .iter()
                    .map(|&(i, t)| Binding {
                        tensor: t,
                        offset: 0,
                        len: n,
                        addr: k.inputs[i],
                    })
                    .collect();
                let output = Binding {
                    tensor: y,
                    offset: 0,
                    len: n,
                    addr: k.out_addr,
                };
                let p = self.program(k.program);
                let name = format!("eltwise-{}", op.kind().name().to_lowercase());
                self.layer(out, &name, p, bindings, output);
            }
            _ => {
                let x_index = consts
                    .iter()
                    .position(Option::is_none)
                    .ok_or("no run-time operand")?;
                let qx = self.quant(ins[x_index])?;
                let grid = Value::F32(ndarray::ArrayD::from_shape_fn(vec![256], |i| {
                    qx.dequantize((i[0] as i32 - 128) as i8) as f32
                }));
                let args: Vec<&Value> =
                    consts.iter().map(|c| c.as_ref().unwrap_or(&grid)).collect();
                let f = floats(&eval_op(op, &args).map_err(|e| e.to_string())?);
                if f.len() != 256 {
                    return Err(format!("lookup table of {} entries", f.len()));
                }
                let table: [i8; 256] = std::array::from_fn(|i| qy.quantize(f[i]));
                let x = self.tensor(ins[x_index])?;
                let k = lut::generate_table(&table, rows, cols, &vec![0; n], self.config)
                    .map_err(err)?;
                let y = self.result(out, qy);
                let name = format!("lut-{}", op.kind().name().to_lowercase());
                self.whole(out, &name, k, &[x], y);
            }
        }
        Ok(())
    }
}
