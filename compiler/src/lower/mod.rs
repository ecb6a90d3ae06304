//! Lowering an ONNX graph onto the IR.
//!
//! Symbolic input dimensions are bound first (from the caller's input
//! shapes, `--dim name=N`, or a default), then nodes are lowered in order
//! with eager constant folding, so every shape computation becomes a
//! constant and every IR op gets static attributes. Nodes that cannot be
//! lowered are all collected and reported together.

mod builder;
mod ctx;
mod elementwise;
mod nn;
mod quant;
mod reduce;
pub mod registry;
mod resize;
mod rnn;
mod shape;

use std::collections::{BTreeMap, HashMap};

use m4c_ir::{Dim, Graph, TensorType};
use tract_onnx::pb::{GraphProto, NodeProto};

use builder::Builder;
pub use builder::Val;
use ctx::NodeCtx;

use crate::onnx::{dtype_from_onnx, OnnxModel};
use crate::{FrontendError, UnsupportedNode};

/// How to bind the model's symbolic input dimensions, and how much memory
/// lowering may use.
#[derive(Clone, Debug)]
pub struct LowerOptions {
    /// Concrete shapes per input name (e.g. from an `.npz`).
    pub input_shapes: HashMap<String, Vec<usize>>,
    /// Values for named symbolic dims (`--dim batch=1`).
    pub dims: HashMap<String, usize>,
    /// Value for any symbolic dim still unbound; `None` makes it an error.
    pub default_dim: Option<usize>,
    /// Inputs whose values are fixed at compile time (shape-like inputs of
    /// a model that are known ahead of time); they are folded, not inputs.
    pub constant_inputs: HashMap<String, m4c_ir::Tensor>,
    /// Largest tensor (bytes) lowering may create or fold, and that a
    /// lowered graph may hold: a model asking for more is an error naming
    /// the node and the size, not an out-of-memory abort.
    pub max_memory: usize,
}

impl Default for LowerOptions {
    fn default() -> Self {
        LowerOptions {
            input_shapes: HashMap::new(),
            dims: HashMap::new(),
            default_dim: None,
            constant_inputs: HashMap::new(),
            max_memory: m4c_ops::budget::max_memory(),
        }
    }
}

/// The outcome of lowering, complete or not.
pub struct LowerReport {
    /// The IR graph; `None` when some node could not be lowered.
    pub graph: Option<Graph>,
    /// Every node that could not be lowered.
    pub unsupported: Vec<UnsupportedNode>,
    /// The value chosen for each symbolic dimension.
    pub dims: BTreeMap<String, usize>,
    /// IR operator counts of what did lower (the whole graph's when it
    /// lowered fully), so that `inspect` shows the part that does.
    pub ir_ops: BTreeMap<&'static str, usize>,
}

/// IR operator counts of `g`'s nodes.
pub fn ir_op_counts(g: &Graph) -> BTreeMap<&'static str, usize> {
    g.nodes.iter().fold(BTreeMap::new(), |mut m, n| {
        *m.entry(n.op.name()).or_default() += 1;
        m
    })
}

/// Lowers `model`, failing with every unsupported node listed.
pub fn lower(model: &OnnxModel, opts: &LowerOptions) -> Result<Graph, FrontendError> {
    let report = lower_report(model, opts)?;
    match report.graph {
        Some(g) => Ok(g),
        None => Err(FrontendError::Unsupported {
            path: model.path.clone(),
            nodes: report.unsupported,
        }),
    }
}

/// Lowers `model` as far as possible; hard errors (bad inputs, corrupt
/// tensors) fail, unsupported nodes are reported.
pub fn lower_report(model: &OnnxModel, opts: &LowerOptions) -> Result<LowerReport, FrontendError> {
    let graph = model.graph();
    let mut lw = Lowerer {
        model,
        b: Builder::new(&graph.name, opts.max_memory),
        env: HashMap::new(),
        unsupported: vec![],
        opset: model.opset("").unwrap_or(0),
    };
    for (i, t) in graph.initializer.iter().enumerate() {
        let tensor = model.initializer(i)?;
        lw.env.insert(
            t.name.clone(),
            Val::Const {
                t: tensor,
                name: Some(t.name.clone()),
            },
        );
    }
    let dims = lw.bind_inputs(graph, opts)?;
    lw.lower_nodes(&graph.node);
    let mut outputs = vec![];
    for o in &graph.output {
        match lw.env.get(&o.name) {
            Some(v) => {
                let v = v.clone();
                outputs.push(lw.b.value_id(&v, &o.name));
            }
            None if lw.unsupported.is_empty() => {
                return Err(FrontendError::Input {
                    path: model.path.clone(),
                    input: o.name.clone(),
                    msg: "graph output is never produced".into(),
                });
            }
            None => {}
        }
    }
    if !lw.unsupported.is_empty() {
        return Ok(LowerReport {
            graph: None,
            ir_ops: ir_op_counts(&lw.b.g),
            unsupported: lw.unsupported,
            dims,
        });
    }
    let mut g = lw.b.g;
    g.outputs = outputs;
    crate::passes::dce(&mut g);
    g.verify().map_err(|source| FrontendError::Verify {
        path: model.path.clone(),
        source,
    })?;
    Ok(LowerReport {
        ir_ops: ir_op_counts(&g),
        graph: Some(g),
        unsupported: vec![],
        dims,
    })
}

struct Lowerer<'m> {
    model: &'m OnnxModel,
    b: Builder,
    env: HashMap<String, Val>,
    unsupported: Vec<UnsupportedNode>,
    opset: i64,
}

impl Lowerer<'_> {
    fn bind_inputs(
        &mut self,
        graph: &GraphProto,
        opts: &LowerOptions,
    ) -> Result<BTreeMap<String, usize>, FrontendError> {
        let path = &self.model.path;
        let mut dims: BTreeMap<String, usize> =
            opts.dims.iter().map(|(k, v)| (k.clone(), *v)).collect();
        for input in &graph.input {
            if self.env.contains_key(&input.name) {
                continue; // an initializer listed as input (pre-IR-4 style)
            }
            if let Some(t) = opts.constant_inputs.get(&input.name) {
                self.env.insert(input.name.clone(), Val::konst(t.clone()));
                continue;
            }
            let err = |msg: String| FrontendError::Input {
                path: path.clone(),
                input: input.name.clone(),
                msg,
            };
            let Some(tract_onnx::pb::type_proto::Value::TensorType(tt)) =
                input.r#type.as_ref().and_then(|t| t.value.as_ref())
            else {
                return Err(err("not a tensor input".into()));
            };
            let dtype = dtype_from_onnx(tt.elem_type).map_err(err)?;
            let dims_of = tt.shape.iter().flat_map(|s| &s.dim).enumerate();
            for (i, d) in dims_of {
                if let Some(tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(v)) =
                    d.value
                {
                    if v < 0 {
                        return Err(err(format!("dimension {i} is negative ({v})")));
                    }
                }
            }
            let declared: Vec<Option<Dim>> = tt
                .shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(
                                tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(v),
                            ) if *v >= 0 => Some(Dim::Fixed(*v as usize)),
                            Some(
                                tract_onnx::pb::tensor_shape_proto::dimension::Value::DimParam(p),
                            ) if !p.is_empty() => Some(Dim::Sym(p.clone())),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            let shape: Vec<usize> = match opts.input_shapes.get(&input.name) {
                Some(given) => {
                    if tt.shape.is_some() && given.len() != declared.len() {
                        return Err(err(format!(
                            "given rank {} ({given:?}) but the model declares rank {}",
                            given.len(),
                            declared.len()
                        )));
                    }
                    for (i, (g, d)) in given.iter().zip(&declared).enumerate() {
                        match d {
                            Some(Dim::Fixed(n)) if n != g => {
                                return Err(err(format!(
                                    "dimension {i} is {g} but the model declares {n}"
                                )))
                            }
                            Some(Dim::Sym(s)) => match dims.get(s) {
                                Some(&bound) if bound != *g => {
                                    return Err(err(format!(
                                        "dimension {i} ('{s}') is {g} but '{s}' is already {bound}"
                                    )))
                                }
                                _ => {
                                    dims.insert(s.clone(), *g);
                                }
                            },
                            _ => {}
                        }
                    }
                    given.clone()
                }
                None => declared
                    .iter()
                    .enumerate()
                    .map(|(i, d)| match d {
                        Some(Dim::Fixed(n)) => Ok(*n),
                        Some(Dim::Sym(s)) => match dims.get(s).copied().or(opts.default_dim) {
                            Some(v) => {
                                dims.insert(s.clone(), v);
                                Ok(v)
                            }
                            None => Err(err(format!(
                                "symbolic dimension '{s}' needs a value (--dim {s}=N)"
                            ))),
                        },
                        None => opts
                            .default_dim
                            .ok_or_else(|| err(format!("dimension {i} is unknown"))),
                    })
                    .collect::<Result<_, _>>()?,
            };
            self.b.check_alloc("input", &shape, dtype).map_err(err)?;
            let v = self.b.input(&input.name, TensorType::fixed(dtype, &shape));
            self.env.insert(input.name.clone(), v);
        }
        Ok(dims)
    }

    fn lower_nodes(&mut self, nodes: &[NodeProto]) {
        for node in nodes {
            self.lower_node(node);
        }
    }

    fn report(&mut self, node: &NodeProto, reason: String) {
        let opset = self.model.opset(&node.domain).unwrap_or(self.opset);
        self.unsupported.push(UnsupportedNode {
            op_type: node.op_type.clone(),
            domain: node.domain.clone(),
            node: node.name.clone(),
            opset,
            reason,
        });
    }

    fn lower_node(&mut self, node: &NodeProto) {
        if !registry::is_supported(&node.domain, &node.op_type) {
            self.report(node, "no lowering for this operator".into());
            return;
        }
        // ONNX graphs are in SSA form: every name has one producer.
        if let Some(dup) = node
            .output
            .iter()
            .find(|o| !o.is_empty() && self.env.contains_key(*o))
        {
            self.report(
                node,
                format!(
                    "output '{dup}' is already produced by an initializer, input or earlier node"
                ),
            );
            return;
        }
        let mut inputs = Vec::with_capacity(node.input.len());
        for name in &node.input {
            if name.is_empty() {
                inputs.push(None);
                continue;
            }
            match self.env.get(name) {
                Some(v) => inputs.push(Some(v.clone())),
                // Produced by a node that failed: already reported.
                None if !self.unsupported.is_empty() => return,
                None => {
                    self.report(node, format!("input '{name}' is not defined"));
                    return;
                }
            }
        }
        if node.op_type == "If" {
            return self.lower_if(node, &inputs);
        }
        let Some(lower) = registry::lowering_for(&node.domain, &node.op_type) else {
            self.report(node, format!("no lowering for {}", node.op_type));
            return;
        };
        let ctx = NodeCtx {
            node,
            opset: self.opset,
            model: self.model,
            inputs,
        };
        let before = self.b.value_count();
        match lower(&mut self.b, &ctx) {
            Ok(outs) => {
                for (name, v) in node.output.iter().zip(outs) {
                    if let Val::Value(id) = v {
                        if id.index() >= before && !name.is_empty() {
                            self.b.rename(id, name);
                        }
                    }
                    if !name.is_empty() {
                        self.env.insert(name.clone(), v);
                    }
                }
                if let Some(missing) = node
                    .output
                    .iter()
                    .skip(1)
                    .find(|o| !o.is_empty() && !self.env.contains_key(*o))
                {
                    self.report(node, format!("output '{missing}' is not supported"));
                }
            }
            Err(reason) => self.report(node, reason),
        }
    }

    /// `If` whose condition folds to a constant: the taken branch is lowered
    /// in place (its nodes see the enclosing scope).
    fn lower_if(&mut self, node: &NodeProto, inputs: &[Option<Val>]) {
        let cond = match inputs
            .first()
            .cloned()
            .flatten()
            .as_ref()
            .and_then(Val::as_const)
            .map(|t| t.to_index_vec())
        {
            Some(Ok(v)) if v.len() == 1 => v[0] != 0,
            _ => return self.report(node, "condition does not fold to a constant".into()),
        };
        let branch = if cond { "then_branch" } else { "else_branch" };
        let Some(g) = node
            .attribute
            .iter()
            .find(|a| a.name == branch)
            .and_then(|a| a.g.as_ref())
        else {
            return self.report(node, format!("missing {branch}"));
        };
        for t in &g.initializer {
            match self.model.tensor(t) {
                Ok(tensor) => {
                    self.env.insert(
                        t.name.clone(),
                        Val::Const {
                            t: tensor,
                            name: Some(t.name.clone()),
                        },
                    );
                }
                Err(e) => return self.report(node, e.to_string()),
            }
        }
        let before = self.unsupported.len();
        self.lower_nodes(&g.node);
        if self.unsupported.len() > before {
            return;
        }
        for (out, res) in node.output.iter().zip(&g.output) {
            match self.env.get(&res.name).cloned() {
                Some(v) => {
                    self.env.insert(out.clone(), v);
                }
                None => {
                    return self.report(
                        node,
                        format!("branch output '{}' is never produced", res.name),
                    )
                }
            }
        }
    }
}
