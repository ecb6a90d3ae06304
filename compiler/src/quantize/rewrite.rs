//! Writing the quantised model: which nodes are quantised ([`plan`]) and
//! the ONNX they become ([`quantize_graph`]), in the forms onnxruntime
//! writes and runs, so it can check m4c independently:
//!
//! - `int8`: `QuantizeLinear`→`DequantizeLinear` on each activation input
//!   of MatMul/Gemm/Conv (one pair per tensor, shared by its consumers),
//!   `DequantizeLinear` on int8 weights (per channel: `axis`).
//! - `int8-dynamic`: MatMul with a constant weight becomes
//!   `DynamicQuantizeLinear` → `MatMulInteger` → `Cast` → `Mul` by the
//!   product of the scales (onnxruntime's `quantize_dynamic`).
//! - `w8`: `DequantizeLinear` on the weights only.
//! - `w4`: MatMul with a constant `[K, N]` weight becomes
//!   `com.microsoft.MatMulNBits` (bits 4, blocks along K).
//!
//! Nodes keep their names and output tensors, so the quantised model's
//! tensors compare with the fp32 model's by name (the accuracy report).

use std::collections::{BTreeMap, HashMap, HashSet};

use tract_onnx::pb::{AttributeProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto};

use super::encodings::{Encodings, WeightEncoding};
use super::model::{f32_values, graph, FloatModel};
use super::scheme::{quantize_blocks, quantize_int8, Options, Scheme};
use super::{QuantizeError, Result};

/// ONNX data type codes written.
const FLOAT: i32 = 1;
const UINT8: i32 = 2;
const INT8: i32 = 3;

/// A node chosen for quantisation.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    /// The ONNX node name (its first output when unnamed).
    pub name: String,
    /// Its operator type.
    pub op: String,
    /// Its (first) output tensor, kept by the rewrite.
    pub output: String,
}

/// What a rewrite quantises.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Nodes to quantise, in graph order.
    pub layers: Vec<Layer>,
    /// Activations needing calibrated scales (`int8`), in graph order.
    pub activations: Vec<String>,
    /// Weights quantised (filled by [`quantize_graph`]).
    pub weights: BTreeMap<String, WeightEncoding>,
}

/// A node's name for users: its ONNX name, else its first output.
pub fn layer_name(n: &NodeProto) -> String {
    if n.name.is_empty() {
        n.output.first().cloned().unwrap_or_default()
    } else {
        n.name.clone()
    }
}

/// Checks every `--exclude` names a node or an operator type of the
/// model; returns them as a set.
pub fn resolve_excludes(proto: &ModelProto, exclude: &[String]) -> Result<HashSet<String>> {
    let g = graph(proto);
    for e in exclude {
        if !g
            .node
            .iter()
            .any(|n| &layer_name(n) == e || &n.op_type == e)
        {
            return Err(QuantizeError::UnknownExclude(e.clone()));
        }
    }
    Ok(exclude.iter().cloned().collect())
}

/// Float initializers by name, also under the names of `Identity` nodes
/// that merely rename them (tied weights).
fn float_inits(proto: &ModelProto) -> HashMap<String, &TensorProto> {
    let g = graph(proto);
    let mut m: HashMap<String, &TensorProto> = g
        .initializer
        .iter()
        .filter(|t| t.data_type == FLOAT)
        .map(|t| (t.name.clone(), t))
        .collect();
    for n in &g.node {
        if n.op_type == "Identity" && n.domain.is_empty() {
            if let (Some(i), Some(o)) = (n.input.first(), n.output.first()) {
                if let Some(&t) = m.get(i) {
                    m.insert(o.clone(), t);
                }
            }
        }
    }
    m
}

/// The initializers `float_inits` knows, for other modules (SmoothQuant).
pub(super) fn constant<'p>(proto: &'p ModelProto, name: &str) -> Option<&'p TensorProto> {
    float_inits(proto).get(name).copied()
}

/// True when `node` is one `scheme` quantises, given which inputs are
/// constant.
fn quantisable(scheme: Scheme, n: &NodeProto, inits: &HashMap<String, &TensorProto>) -> bool {
    let konst = |i: usize| n.input.get(i).and_then(|x| inits.get(x));
    let matmul_2d_weight =
        n.op_type == "MatMul" && konst(0).is_none() && konst(1).is_some_and(|t| t.dims.len() == 2);
    match scheme {
        Scheme::Int8 => matches!(n.op_type.as_str(), "MatMul" | "Gemm" | "Conv"),
        Scheme::W8 => {
            matches!(n.op_type.as_str(), "MatMul" | "Gemm" | "Conv") && konst(1).is_some()
        }
        Scheme::Int8Dynamic | Scheme::W4 { .. } => matmul_2d_weight,
    }
}

/// Chooses the nodes to quantise: MatMul/Gemm/Conv of the default domain
/// the scheme handles, minus `exclude` (node names or op types) and the
/// layers `prior` switches off.
pub fn plan(
    proto: &ModelProto,
    scheme: Scheme,
    exclude: &HashSet<String>,
    prior: Option<&Encodings>,
) -> Result<Plan> {
    let g = graph(proto);
    let inits = float_inits(proto);
    let mut p = Plan {
        layers: vec![],
        activations: vec![],
        weights: BTreeMap::new(),
    };
    for n in &g.node {
        let name = layer_name(n);
        let off = prior
            .and_then(|e| e.layers.get(&name))
            .is_some_and(|l| !l.quantize);
        if !n.domain.is_empty()
            || exclude.contains(&name)
            || exclude.contains(&n.op_type)
            || off
            || !quantisable(scheme, n, &inits)
        {
            continue;
        }
        if scheme == Scheme::Int8 {
            for x in n.input.iter().take(2) {
                if !inits.contains_key(x) && !p.activations.contains(x) {
                    p.activations.push(x.clone());
                }
            }
        }
        p.layers.push(Layer {
            name,
            op: n.op_type.clone(),
            output: n.output.first().cloned().unwrap_or_default(),
        });
    }
    Ok(p)
}

/// The per-channel axis of input `i` of node `n` (a weight of `rank`).
fn weight_axis(n: &NodeProto, i: usize, rank: usize) -> Option<i64> {
    match (n.op_type.as_str(), i, rank) {
        ("MatMul", 1, 2) => Some(1),
        ("Gemm", 1, 2) => Some(if attr_i(n, "transB") == Some(1) { 0 } else { 1 }),
        ("Conv", 1, _) => Some(0),
        _ => None,
    }
}

fn attr_i(n: &NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 2,
        i,
        ..Default::default()
    }
}

fn tensor(name: &str, data_type: i32, dims: &[usize], raw_data: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.into(),
        data_type,
        dims: dims.iter().map(|&d| d as i64).collect(),
        raw_data,
        ..Default::default()
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// The graph being rewritten: nodes emitted so far, new initializers, and
/// the names in use (new names never collide with the model's).
struct Out {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    names: HashSet<String>,
    /// What each tensor was replaced by (shared Q/DQ pairs, weights).
    done: HashMap<String, Vec<String>>,
}

impl Out {
    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while !self.names.insert(name.clone()) {
            name = format!("{base}_{k}");
            k += 1;
        }
        name
    }

    fn init(&mut self, base: &str, dtype: i32, dims: &[usize], raw: Vec<u8>) -> String {
        let name = self.fresh(base);
        self.inits.push(tensor(&name, dtype, dims, raw));
        name
    }
}

/// Rewrites `source` quantising `plan.layers` with `enc`'s activation
/// encodings; records each weight's encoding in `plan.weights`.
pub fn quantize_graph(
    source: &FloatModel,
    plan: &mut Plan,
    opts: &Options,
    enc: &Encodings,
) -> Result<ModelProto> {
    let mut proto = source.proto.clone();
    let inits = float_inits(&source.proto);
    let g = graph(&source.proto);
    let mut names: HashSet<String> = g.initializer.iter().map(|t| t.name.clone()).collect();
    names.extend(g.input.iter().map(|i| i.name.clone()));
    names.extend(g.node.iter().flat_map(|n| n.output.iter().cloned()));
    names.extend(g.node.iter().map(|n| n.name.clone()));
    let mut out = Out {
        nodes: vec![],
        inits: vec![],
        names,
        done: HashMap::new(),
    };
    let chosen: HashMap<&str, &Layer> = plan.layers.iter().map(|l| (l.name.as_str(), l)).collect();
    let outputs: HashSet<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
    let mut per_axis = false;
    for n in &g.node {
        let name = layer_name(n);
        if !n.domain.is_empty() || !chosen.contains_key(name.as_str()) {
            out.nodes.push(n.clone());
            continue;
        }
        let per_channel = enc
            .layers
            .get(&name)
            .and_then(|l| l.per_channel)
            .unwrap_or(opts.per_channel);
        let mut ctx = Ctx {
            n,
            name: &name,
            inits: &inits,
            per_channel,
            symmetric: opts.symmetric,
            weights: &mut plan.weights,
            out: &mut out,
        };
        match opts.scheme {
            Scheme::Int8 | Scheme::W8 => per_axis |= ctx.qdq(opts.scheme, enc)?,
            Scheme::Int8Dynamic => ctx.dynamic()?,
            Scheme::W4 { group } => {
                let head = n.output.iter().any(|o| outputs.contains(o.as_str()));
                let bits = enc
                    .layers
                    .get(&name)
                    .and_then(|l| l.bits)
                    .unwrap_or(if head { opts.head_bits } else { 4 });
                ctx.nbits(group, bits, opts.accuracy_level)?
            }
        }
    }
    let opset = source_opset(&proto);
    if per_axis && opset < 13 {
        return Err(QuantizeError::Invalid(format!(
            "{}: opset {opset}: per-channel weights need opset 13 or later (quantise per tensor)",
            source.path.display()
        )));
    }
    #[allow(
        clippy::expect_used,
        reason = "OnnxModel::load refuses a model without a graph"
    )]
    let gm = proto.graph.as_mut().expect("checked at load");
    gm.node = out.nodes;
    gm.initializer.extend(out.inits);
    // Float weights every reader of which now reads their quantised form.
    let used: HashSet<&String> = gm
        .node
        .iter()
        .flat_map(|n| &n.input)
        .chain(gm.output.iter().map(|o| &o.name))
        .collect();
    let unused: HashSet<String> = gm
        .initializer
        .iter()
        .filter(|t| !used.contains(&t.name))
        .map(|t| t.name.clone())
        .collect();
    gm.initializer.retain(|t| !unused.contains(&t.name));
    gm.input.retain(|i| !unused.contains(&i.name));
    if matches!(opts.scheme, Scheme::W4 { .. })
        && !proto
            .opset_import
            .iter()
            .any(|o| o.domain == "com.microsoft")
    {
        proto.opset_import.push(OperatorSetIdProto {
            domain: "com.microsoft".into(),
            version: 1,
        });
    }
    Ok(proto)
}

fn source_opset(p: &ModelProto) -> i64 {
    p.opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(0, |o| o.version)
}

/// One node being rewritten.
struct Ctx<'a> {
    n: &'a NodeProto,
    name: &'a str,
    inits: &'a HashMap<String, &'a TensorProto>,
    per_channel: bool,
    symmetric: bool,
    weights: &'a mut BTreeMap<String, WeightEncoding>,
    out: &'a mut Out,
}

impl Ctx<'_> {
    fn weight(&self, i: usize) -> Result<(String, Vec<usize>, Vec<f32>)> {
        let t = self.inits[&self.n.input[i]];
        let (shape, values) = f32_values(t)?;
        Ok((t.name.clone(), shape, values))
    }

    fn record(&mut self, w: &str, bits: u8, axis: Option<i64>, block: Option<usize>, v: &[f32]) {
        let absmax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        self.weights.insert(
            w.to_string(),
            WeightEncoding {
                node: self.name.to_string(),
                bits,
                axis,
                block_size: block,
                symmetric: block.is_none() || self.symmetric,
                absmax,
            },
        );
    }

    /// Symmetric int8 weight `i` (per channel on `axis` when asked):
    /// quantised values, scale and zero-point initializers.
    fn int8_weight(&mut self, i: usize, axis: Option<i64>) -> Result<[String; 3]> {
        let (w, shape, values) = self.weight(i)?;
        let (q, scales) = quantize_int8(&shape, &values, axis.map(|a| a as usize));
        self.record(&w, 8, axis, None, &values);
        let dims: Vec<usize> = if axis.is_some() {
            vec![scales.len()]
        } else {
            vec![]
        };
        let qn = self.out.init(
            &format!("{w}_quantized"),
            INT8,
            &shape,
            q.iter().map(|&x| x as u8).collect(),
        );
        let sn = self
            .out
            .init(&format!("{w}_scale"), FLOAT, &dims, f32_bytes(&scales));
        let zn = self.out.init(
            &format!("{w}_zero_point"),
            INT8,
            &dims,
            vec![0; scales.len()],
        );
        Ok([qn, sn, zn])
    }

    /// QDQ form (`int8`: activations and weights; `w8`: weights). Returns
    /// whether a per-axis `DequantizeLinear` was written.
    fn qdq(&mut self, scheme: Scheme, enc: &Encodings) -> Result<bool> {
        let mut rewired = self.n.clone();
        let mut per_axis = false;
        for i in 0..rewired.input.len().min(2) {
            let x = rewired.input[i].clone();
            let replaced = if self.inits.contains_key(&x) {
                let rank = self.inits[&x].dims.len();
                let axis = weight_axis(self.n, i, rank).filter(|_| self.per_channel);
                let key = format!("{x}\u{0}{axis:?}");
                if let Some(d) = self.out.done.get(&key) {
                    d[0].clone()
                } else {
                    let [q, s, z] = self.int8_weight(i, axis)?;
                    let dq = self.out.fresh(&format!("{x}_DequantizeLinear_Output"));
                    let nn = self.out.fresh(&format!("{x}_DequantizeLinear"));
                    let mut d = node("DequantizeLinear", &nn, &[&q, &s, &z], &[&dq]);
                    if let Some(a) = axis {
                        d.attribute.push(int_attr("axis", a));
                        per_axis = true;
                    }
                    self.out.nodes.push(d);
                    self.out.done.insert(key, vec![dq.clone()]);
                    dq
                }
            } else if scheme == Scheme::Int8 {
                if let Some(d) = self.out.done.get(&x) {
                    d[0].clone()
                } else {
                    let a = enc
                        .activations
                        .get(&x)
                        .ok_or_else(|| QuantizeError::Tensor {
                            tensor: x.clone(),
                            msg: "has no encoding".into(),
                        })?;
                    let s = self
                        .out
                        .init(&format!("{x}_scale"), FLOAT, &[], f32_bytes(&[a.scale]));
                    let z = self.out.init(
                        &format!("{x}_zero_point"),
                        INT8,
                        &[],
                        vec![a.zero_point as i8 as u8],
                    );
                    let q = self.out.fresh(&format!("{x}_QuantizeLinear_Output"));
                    let dq = self.out.fresh(&format!("{x}_DequantizeLinear_Output"));
                    let qn = self.out.fresh(&format!("{x}_QuantizeLinear"));
                    let dn = self.out.fresh(&format!("{x}_DequantizeLinear"));
                    self.out
                        .nodes
                        .push(node("QuantizeLinear", &qn, &[&x, &s, &z], &[&q]));
                    self.out
                        .nodes
                        .push(node("DequantizeLinear", &dn, &[&q, &s, &z], &[&dq]));
                    self.out.done.insert(x.clone(), vec![dq.clone()]);
                    dq
                }
            } else {
                continue;
            };
            rewired.input[i] = replaced;
        }
        self.out.nodes.push(rewired);
        Ok(per_axis)
    }

    /// `int8-dynamic`: `DynamicQuantizeLinear` → `MatMulInteger` → `Cast`
    /// → `Mul` by the scales' product (the node's name and output kept).
    fn dynamic(&mut self) -> Result<()> {
        let a = self.n.input[0].clone();
        let y = self.n.output[0].clone();
        let axis = self.per_channel.then_some(1);
        let [wq, ws, wz] = self.int8_weight(1, axis)?;
        let [aq, as_, az] = match self.out.done.get(&a) {
            Some(d) => [d[0].clone(), d[1].clone(), d[2].clone()],
            None => {
                let q = self.out.fresh(&format!("{a}_quantized"));
                let s = self.out.fresh(&format!("{a}_scale"));
                let z = self.out.fresh(&format!("{a}_zero_point"));
                let nn = self.out.fresh(&format!("{a}_DynamicQuantizeLinear"));
                self.out
                    .nodes
                    .push(node("DynamicQuantizeLinear", &nn, &[&a], &[&q, &s, &z]));
                self.out
                    .done
                    .insert(a.clone(), vec![q.clone(), s.clone(), z.clone()]);
                [q, s, z]
            }
        };
        let name = self.name;
        let i32_out = self.out.fresh(&format!("{y}_MatMulInteger_Output"));
        let f_out = self.out.fresh(&format!("{y}_Cast_Output"));
        let scale = self.out.fresh(&format!("{y}_scale"));
        let n1 = self.out.fresh(&format!("{name}_MatMulInteger"));
        let n2 = self.out.fresh(&format!("{name}_Cast"));
        let n3 = self.out.fresh(&format!("{name}_scale_Mul"));
        self.out.nodes.push(node(
            "MatMulInteger",
            &n1,
            &[&aq, &wq, &az, &wz],
            &[&i32_out],
        ));
        let mut cast = node("Cast", &n2, &[&i32_out], &[&f_out]);
        cast.attribute.push(int_attr("to", i64::from(FLOAT)));
        self.out.nodes.push(cast);
        self.out
            .nodes
            .push(node("Mul", &n3, &[&as_, &ws], &[&scale]));
        self.out
            .nodes
            .push(node("Mul", name, &[&f_out, &scale], &[&y]));
        Ok(())
    }

    /// `w4`: `com.microsoft.MatMulNBits` with `bits` (4 or 8) codes (the
    /// node's name and output kept), and `accuracy_level` when not 0.
    fn nbits(&mut self, group: usize, bits: u8, accuracy_level: u8) -> Result<()> {
        let (w, shape, values) = self.weight(1)?;
        let (k, n) = (shape[0], shape[1]);
        let b = quantize_blocks(k, n, &values, group, bits, self.symmetric);
        self.record(&w, bits, None, Some(group), &values);
        let qn = self.out.init(
            &format!("{w}_Q{bits}"),
            UINT8,
            &[n, b.blocks, group * usize::from(bits) / 8],
            b.packed,
        );
        let sn = self.out.init(
            &format!("{w}_scales"),
            FLOAT,
            &[n * b.blocks],
            f32_bytes(&b.scales),
        );
        let mut inputs = vec![self.n.input[0].clone(), qn, sn];
        if let Some(z) = b.zero_points {
            let len = z.len();
            inputs.push(self.out.init(&format!("{w}_zero_points"), UINT8, &[len], z));
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let mut m = node("MatMulNBits", self.name, &refs, &[&self.n.output[0]]);
        m.domain = "com.microsoft".into();
        for (a, v) in [
            ("K", k),
            ("N", n),
            ("bits", bits.into()),
            ("block_size", group),
        ] {
            m.attribute.push(int_attr(a, v as i64));
        }
        if accuracy_level > 0 {
            m.attribute
                .push(int_attr("accuracy_level", accuracy_level.into()));
        }
        self.out.nodes.push(m);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
