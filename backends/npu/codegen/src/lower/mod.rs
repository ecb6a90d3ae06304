//! One NPU part of the graph onto the kernel generators of `m4c-npu`: a
//! layer (one generated program, placeholders for its run-time operands)
//! per node, int8 tensors quantised with the calibrated scales. One
//! module per family:
//!
//! - `matmul`: MatMul (a GEMM with per-channel weights, a following bias
//!   `Add` fused; one program per batch entry for a run-time B).
//! - `conv`: Conv (im2col + GEMM or the direct kernel, whichever
//!   simulates faster; depthwise on the vector unit; bias and Relu fused).
//! - `eltwise`: Add/Sub/Mul/Max/Min and unary functions (the binary
//!   kernel, or a lookup table computed by evaluating the IR op itself).
//! - `norm`: Softmax, LayerNorm/RMSNorm.
//! - `pool`: MaxPool/AveragePool and trailing-axis reductions.
//! - `data`: Reshape (nothing: the tensor is reinterpreted) and the DMA
//!   address patterns (Transpose, Slice, Concat, Expand, constant Gather,
//!   nearest Resize, Pad); the bytes keep their quantisation.
//! - `resize`: linear Resize.

mod conv;
mod data;
mod eltwise;
mod layout;
mod matmul;
mod norm;
mod pool;
mod resize;
#[cfg(test)]
mod testing;
mod unary;

use std::collections::HashMap;

use m4c_ir::{Graph, Op, ValueDef, ValueId};
use m4c_npu::config::MachineConfig;
use m4c_npu::kernels::{KernelProgram, Quant};
use m4c_npu::module::{Binding, Boundary, IndexInput, LayerSpec, Layout, PartPlan, TensorSpec};
use m4c_npu::program::Program;
use m4c_npu::quant::{Requant, SHIFT_RANGE};
use m4c_ops::Value;

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
    /// Integer values taken as they are (embedding indices).
    pub indices: Vec<IndexInput>,
}

/// A part's nodes and which of its values leave it.
type PartView<'a> = (&'a [usize], &'a dyn Fn(ValueId) -> bool);

struct Ctx<'a> {
    g: &'a Graph,
    cal: &'a Calibration,
    config: &'a MachineConfig,
    tensor_of: HashMap<ValueId, usize>,
    /// Values also held in NHWC (`layout`).
    nhwc_of: HashMap<ValueId, layout::Nhwc>,
    /// Functions of one value, lowered as one table when needed (`unary`).
    regions: unary::Regions,
    /// The part's nodes and which values leave it, where known: what
    /// fusing a function into a GEMM's output stage must look ahead at.
    part: Option<PartView<'a>>,
    out: Lowered,
    /// Elements one layer's DRAM image may hold (a constant-B GEMM above
    /// it is split into column blocks).
    layer_limit: usize,
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
    let mut cx = Ctx::new(g, cal, config);
    cx.part = Some((nodes, exported));
    let mut fused = std::collections::HashSet::new();
    for &i in nodes {
        let node = &g.nodes[i];
        if fused.contains(&i) {
            continue;
        }
        let name = &g.value(node.output).name;
        let fail = |e: String| (i, format!("{} `{name}`: {e}", node.op.kind().name()));
        if cx.defer_unary(i) {
            continue;
        }
        for &v in &node.inputs {
            cx.realise(v).map_err(fail)?;
        }
        if let Op::Conv(attrs) = &node.op {
            let relu = relu_after(g, nodes, node.output, exported);
            let out = relu.map_or(node.output, |r| g.nodes[r].output);
            cx.conv(attrs, &node.inputs, out, relu.is_some())
                .map_err(fail)?;
            fused.extend(relu);
            continue;
        }
        match matmul::bias_add(g, nodes, node, exported) {
            Some((add, bias)) => {
                let trans_b = matches!(node.op, Op::MatMul { trans_b: true, .. });
                cx.matmul(&node.inputs, g.nodes[add].output, trans_b, Some(bias))
                    .map_err(fail)?;
                fused.insert(add);
            }
            None => cx.node(&node.op, &node.inputs, node.output).map_err(fail)?,
        }
    }
    for &i in nodes {
        let v = g.nodes[i].output;
        if exported(v) {
            let value = g.value(v);
            cx.realise(v).map_err(|e| (i, e))?;
            let tensor = cx.tensor(v).map_err(|e| (i, e))?;
            cx.out.outputs.push(Boundary {
                value: value.name.clone(),
                tensor,
                layout: Layout::AsIs,
                shape: value.ty.static_shape().unwrap_or_default(),
            });
        }
    }
    Ok(cx.out)
}

/// The only consumer of `v` within `nodes`, when `v` does not leave the
/// part (a candidate for fusion into `v`'s producer).
fn only_user(
    g: &Graph,
    nodes: &[usize],
    v: ValueId,
    exported: &dyn Fn(ValueId) -> bool,
) -> Option<usize> {
    if exported(v) {
        return None;
    }
    let mut users = nodes.iter().filter(|&&j| g.nodes[j].inputs.contains(&v));
    match (users.next(), users.next()) {
        (Some(&j), None) => Some(j),
        _ => None,
    }
}

/// The Relu (`Max` with a constant scalar 0) that is the only consumer of
/// `v` within `nodes`: its index.
fn relu_after(
    g: &Graph,
    nodes: &[usize],
    v: ValueId,
    exported: &dyn Fn(ValueId) -> bool,
) -> Option<usize> {
    let j = only_user(g, nodes, v, exported)?;
    let n = &g.nodes[j];
    let other = *n.inputs.iter().find(|&&u| u != v)?;
    let zero = constant(g, other).is_some_and(|c| c.len() == 1 && floats(&c)[0] == 0.0);
    (n.op == Op::Max && n.inputs.len() == 2 && zero && dims(g, n.output) == dims(g, v)).then_some(j)
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

impl<'a> Ctx<'a> {
    /// An empty part of `g`.
    fn new(g: &'a Graph, cal: &'a Calibration, config: &'a MachineConfig) -> Ctx<'a> {
        Ctx {
            g,
            cal,
            config,
            tensor_of: HashMap::new(),
            nhwc_of: HashMap::new(),
            regions: unary::Regions::default(),
            part: None,
            layer_limit: crate::constraints::MAX_ELEMENTS,
            out: Lowered {
                plan: PartPlan {
                    tensors: vec![],
                    layers: vec![],
                },
                programs: vec![],
                inputs: vec![],
                outputs: vec![],
                indices: vec![],
            },
        }
    }

    /// The quantisation of value `v`: its tensor's when it has one, else
    /// the calibrated one.
    fn quant(&self, v: ValueId) -> Result<Quant, String> {
        if let Some(&t) = self.tensor_of.get(&v) {
            return Ok(self.quant_of_tensor(t));
        }
        let name = &self.g.value(v).name;
        self.cal
            .quant(name)
            .ok_or_else(|| format!("`{name}` was not calibrated"))
    }

    /// The quantisation of tensor `t`.
    fn quant_of_tensor(&self, t: usize) -> Quant {
        let t = &self.out.plan.tensors[t];
        Quant {
            scale: t.scale,
            zero_point: t.zero_point,
        }
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
            if self.nhwc_of.get(&v).is_some_and(|w| w.nchw == t) {
                self.materialise(v)?;
            }
            return Ok(t);
        }
        let (q, shape) = (self.quant(v)?, dims(self.g, v));
        let name = self.g.value(v).name.clone();
        let t = self.add_tensor(&name, shape.iter().product(), q);
        self.out.inputs.push(Boundary {
            value: name,
            tensor: t,
            shape,
            layout: Layout::AsIs,
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

    /// A layer computing `v` by `program` (with its pipeline's
    /// `tile_rows`) from `inputs`.
    fn layer(
        &mut self,
        v: ValueId,
        kernel: &str,
        (program, tile_rows): (usize, usize),
        inputs: Vec<Binding>,
        output: Binding,
    ) {
        self.out.plan.layers.push(LayerSpec {
            name: self.g.value(v).name.clone(),
            kernel: kernel.into(),
            program,
            inputs,
            output,
            rows_by_index: None,
            tile_rows,
        });
    }

    /// All of tensor `t` at program address `addr`.
    fn bind(&self, t: usize, addr: u32) -> Binding {
        Binding {
            tensor: t,
            offset: 0,
            len: self.out.plan.tensors[t].bytes,
            addr,
        }
    }

    /// A kernel whose inputs are whole tensors `ins` and result tensor `out`.
    fn whole(&mut self, v: ValueId, kernel: &str, k: KernelProgram, ins: &[usize], out: usize) {
        let inputs = ins
            .iter()
            .zip(&k.inputs)
            .map(|(&t, &a)| self.bind(t, a))
            .collect();
        let output = self.bind(out, k.out_addr);
        let tile_rows = k.tile_rows;
        let p = self.program(k.program);
        self.layer(v, kernel, (p, tile_rows), inputs, output);
    }

    fn node(&mut self, op: &Op, ins: &[ValueId], out: ValueId) -> Result<(), String> {
        let shape = dims(self.g, out);
        let cols = shape.last().copied().unwrap_or(1).max(1);
        let rows = shape.iter().product::<usize>() / cols;
        match op {
            Op::Reshape { .. } => {
                let t = self.tensor(ins[0])?;
                self.tensor_of.insert(out, t);
            }
            Op::Resize {
                mode: m4c_ir::op::ResizeMode::Linear,
                coord,
                scales,
                sizes,
            } => self.resize_linear(*coord, (scales, sizes), ins, out)?,
            Op::Transpose { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Expand { .. }
            | Op::Gather { .. }
            | Op::Resize { .. }
            | Op::Pad { .. } => self.movement(op, ins, out, cols)?,
            Op::MatMul { trans_b, .. } => self.matmul(ins, out, *trans_b, None)?,
            Op::ReduceSum { .. } => self.reduce(true, ins, out)?,
            Op::ReduceMax { .. } => self.reduce(false, ins, out)?,
            Op::MaxPool(attrs) => self.pool(true, attrs, ins, out)?,
            Op::AvgPool { pool, .. } => self.pool(false, pool, ins, out)?,
            Op::Softmax { .. } => self.softmax(ins, out, rows, cols)?,
            Op::Norm { kind, epsilon, .. } => self.norm(*kind, *epsilon, ins, out, (rows, cols))?,
            _ => {
                if !self.elementwise_nhwc(op, ins, out)? {
                    self.elementwise(op, ins, out, rows, cols)?
                }
            }
        }
        Ok(())
    }
}
