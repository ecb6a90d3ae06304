//! Building IR while lowering, with eager constant folding.
//!
//! Every operator whose inputs are all constants is evaluated on the spot
//! by the reference interpreter, so ONNX shape arithmetic (`Shape → Gather
//! → Concat → Reshape`) disappears once input shapes are known.

use std::collections::{HashMap, HashSet};

use m4c_ir::{DType, Graph, Op, Tensor, TensorType, ValueId};

/// A lowered ONNX value: a compile-time constant or an IR value.
#[derive(Clone, Debug)]
pub enum Val {
    /// Known at compile time; `name` is the ONNX initializer name, if any.
    Const {
        t: Tensor,
        name: Option<String>,
    },
    Value(ValueId),
}

impl Val {
    /// An unnamed constant.
    pub fn konst(t: Tensor) -> Val {
        Val::Const { t, name: None }
    }

    /// The constant, if this value is one.
    pub fn as_const(&self) -> Option<&Tensor> {
        match self {
            Val::Const { t, .. } => Some(t),
            Val::Value(_) => None,
        }
    }
}

/// The graph under construction plus naming and constant bookkeeping.
pub struct Builder {
    pub g: Graph,
    used_names: HashSet<String>,
    named_consts: HashMap<String, ValueId>,
    /// Largest tensor (bytes) a lowering may create or fold.
    max_memory: usize,
    /// The arithmetic folding may still spend on this graph.
    fold_budget: m4c_ir::op::FoldBudget,
}

impl Builder {
    /// Starts an empty graph whose tensors may be at most `max_memory` bytes.
    pub fn new(name: &str, max_memory: usize) -> Builder {
        Builder {
            g: Graph::new(name),
            used_names: HashSet::new(),
            named_consts: HashMap::new(),
            max_memory,
            fold_budget: m4c_ir::op::FoldBudget::default(),
        }
    }

    /// Checks that a tensor of `shape` and `dtype` made by `op` fits the
    /// memory budget (its size computed with checked arithmetic) before it
    /// is made.
    pub fn check_alloc(
        &self,
        op: &'static str,
        shape: &[usize],
        dtype: DType,
    ) -> Result<(), String> {
        let elem = dtype.size_bits().div_ceil(8);
        m4c_ops::budget::check_with(op, shape, elem, self.max_memory).map_err(|e| e.to_string())
    }

    /// A name not used yet, derived from `hint`.
    pub fn fresh_name(&mut self, hint: &str) -> String {
        let mut name = hint.to_string();
        let mut k = 1;
        while !self.used_names.insert(name.clone()) {
            name = format!("{hint}#{k}");
            k += 1;
        }
        name
    }

    /// Gives a value made while lowering a node the ONNX name of the node's
    /// output, so IR results keep the names users and adapters refer to.
    pub fn rename(&mut self, id: ValueId, name: &str) {
        let fresh = self.fresh_name(name);
        self.g.values[id.index()].name = fresh;
    }

    /// Number of values so far (to tell which ones a lowering created).
    pub fn value_count(&self) -> usize {
        self.g.values.len()
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, ty: TensorType) -> Val {
        let name = self.fresh_name(name);
        Val::Value(self.g.add_input(name, ty))
    }

    /// Type of a value.
    pub fn ty(&self, v: &Val) -> TensorType {
        match v {
            Val::Const { t, .. } => TensorType::fixed(t.dtype, &t.shape),
            Val::Value(id) => self.g.value(*id).ty.clone(),
        }
    }

    /// Static shape of a value (lowering runs after symbolic dims are bound).
    #[allow(
        clippy::expect_used,
        reason = "lower() adds every graph input with a static shape and type inference keeps shapes static"
    )]
    pub fn shape(&self, v: &Val) -> Vec<usize> {
        match v {
            Val::Const { t, .. } => t.shape.clone(),
            Val::Value(id) => self
                .g
                .value(*id)
                .ty
                .static_shape()
                .expect("lowering binds every symbolic dim"),
        }
    }

    /// Element type of a value.
    pub fn dtype(&self, v: &Val) -> DType {
        match v {
            Val::Const { t, .. } => t.dtype,
            Val::Value(id) => self.g.value(*id).ty.dtype,
        }
    }

    /// The IR value for `v`, adding constants to the graph on first use.
    pub fn value_id(&mut self, v: &Val, hint: &str) -> ValueId {
        match v {
            Val::Value(id) => *id,
            Val::Const { t, name: Some(n) } => {
                if let Some(&id) = self.named_consts.get(n) {
                    return id;
                }
                let fresh = self.fresh_name(n);
                let id = self.g.add_const(fresh, t.clone());
                self.named_consts.insert(n.clone(), id);
                id
            }
            Val::Const { t, name: None } => {
                let fresh = self.fresh_name(&format!("{hint}/const"));
                self.g.add_const(fresh, t.clone())
            }
        }
    }

    /// Applies `op`; folds it when every input is constant, unless the
    /// graph's [`m4c_ir::op::FoldBudget`] says no: that would widen a quantised
    /// weight (dequantisation stays a node, the weight stays int8/int4) or
    /// make a large constant of small ones (an `Expand` of a large shape
    /// stays a node, computed when the model runs), or the budget is
    /// spent. The
    /// result's type is inferred first and its size checked against the
    /// budget, so neither folding nor a later run allocates an oversized
    /// tensor.
    pub fn op(&mut self, op: Op, inputs: &[Val], name: &str) -> Result<Val, String> {
        let types: Vec<TensorType> = inputs.iter().map(|v| self.ty(v)).collect();
        let refs: Vec<&TensorType> = types.iter().collect();
        let out = m4c_ir::infer_type(&op, &refs).map_err(|e| e.to_string())?;
        if let Some(shape) = out.static_shape() {
            self.check_alloc(op.name(), &shape, out.dtype)?;
        }
        let consts: Option<Vec<&Tensor>> = inputs.iter().map(|v| v.as_const()).collect();
        let fold = consts.is_some() && self.fold_budget.take(&op, &refs, &out);
        if let Some(consts) = consts.filter(|_| fold) {
            let values = consts
                .into_iter()
                .map(m4c_ops::Value::from_tensor)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let refs: Vec<&m4c_ops::Value> = values.iter().collect();
            let value =
                m4c_ops::eval_op(&op, &refs).map_err(|e| format!("folding {}: {e}", op.name()))?;
            return Ok(Val::konst(value.to_tensor_as(out.dtype)));
        }
        let ids: Vec<ValueId> = inputs.iter().map(|v| self.value_id(v, name)).collect();
        let fresh = self.fresh_name(&format!("{name}/{}", op.name()));
        self.g
            .add_node(op, &ids, fresh)
            .map(Val::Value)
            .map_err(|e| e.to_string())
    }

    /// Scalar f32 constant (rank 0).
    pub fn f32(&self, v: f32) -> Val {
        Val::konst(Tensor::from_f32(&[], &[v]))
    }

    /// Scalar constant of `dtype` holding `v` (floats and integers).
    pub fn scalar(&self, dtype: DType, v: f64) -> Result<Val, String> {
        let t = match dtype {
            DType::F32 => Tensor::from_f32(&[], &[v as f32]),
            DType::I64 => Tensor::from_i64(&[], &[v as i64]),
            DType::I32 => Tensor::from_i32(&[], &[v as i32]),
            DType::I8 => Tensor::from_i8(&[], &[v as i8]),
            DType::U8 => Tensor::from_u8(&[], &[v as u8]),
            DType::Bool => Tensor::from_bool(&[], &[v != 0.0]),
            DType::F16 | DType::BF16 => {
                let f = Tensor::from_f32(&[], &[v as f32]);
                let casted = m4c_ops::eval_op(
                    &Op::Cast { to: dtype },
                    &[&m4c_ops::Value::from_tensor(&f).map_err(|e| e.to_string())?],
                )
                .map_err(|e| e.to_string())?;
                casted.to_tensor()
            }
            DType::I4 | DType::U4 => return Err(format!("no scalar constants of type {dtype}")),
        };
        Ok(Val::konst(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dequantising_a_quantised_weight_is_not_folded() {
        let mut b = Builder::new("g", 1 << 20);
        let cast = Op::Cast { to: DType::F32 };
        let weight = Val::konst(Tensor::from_i8(&[8, 8], &[3; 64]));
        let kept = b.op(cast.clone(), &[weight], "w").unwrap();
        assert!(kept.as_const().is_none(), "an int8 weight was widened");
        assert_eq!(b.g.nodes.len(), 1);
        // A zero point (a few elements) still folds.
        let zp = Val::konst(Tensor::from_u8(&[4], &[1, 2, 3, 4]));
        let folded = b.op(cast, &[zp], "zp").unwrap();
        assert_eq!(
            folded.as_const().unwrap().to_f32_vec().unwrap(),
            [1.0, 2.0, 3.0, 4.0]
        );
    }

    #[test]
    fn folding_stops_when_the_graph_fold_budget_is_spent() {
        // Each 64×64 MatMul of constants is 524,288 operations: the budget
        // pays for one; the second stays a node, computed when the model
        // runs; a small node still folds after that.
        let mut b = Builder::new("g", 1 << 20);
        b.fold_budget = m4c_ir::op::FoldBudget::new(600_000);
        let m = Val::konst(Tensor::from_f32(&[64, 64], &[0.5; 64 * 64]));
        let mm = Op::MatMul {
            trans_a: false,
            trans_b: false,
        };
        let first = b.op(mm.clone(), &[m.clone(), m.clone()], "first").unwrap();
        assert_eq!(first.as_const().unwrap().to_f32_vec().unwrap()[0], 16.0);
        let second = b.op(mm, &[first, m], "second").unwrap();
        assert!(second.as_const().is_none(), "folded past the budget");
        assert_eq!(b.g.nodes.len(), 1);
        let small = Val::konst(Tensor::from_f32(&[4], &[1.0; 4]));
        let exp = b.op(Op::Exp, &[small], "small").unwrap();
        assert!(exp.as_const().is_some(), "a small node must still fold");
    }

    #[test]
    fn a_large_expansion_of_a_small_constant_stays_a_node() {
        // 2^24 f32 zeros (64 MiB) from one scalar: kept as an Expand node,
        // computed when the model runs (the fuzzer's 123 KB model asked
        // the lowering for 5 copies of 671 MB this way).
        let mut b = Builder::new("g", 1 << 30);
        let zero = b.f32(0.0);
        let big = Op::Expand {
            shape: vec![1 << 12, 1 << 12],
        };
        let kept = b.op(big, std::slice::from_ref(&zero), "big").unwrap();
        assert!(kept.as_const().is_none(), "64 MiB of zeros were folded");
        assert_eq!(b.shape(&kept), [1 << 12, 1 << 12]);
        // One element short of the limit still folds.
        let small = Op::Expand {
            shape: vec![(1 << 24) - 1],
        };
        let folded = b.op(small, &[zero], "small").unwrap();
        assert_eq!(folded.as_const().unwrap().len(), (1 << 24) - 1);
    }

    #[test]
    fn folded_int4_results_stay_packed() {
        let mut b = Builder::new("g", 1 << 20);
        let x = Val::konst(Tensor::from_f32(&[3], &[1.0, -9.0, 2.6]));
        let s = b.f32(1.0);
        let zp = Val::konst(Tensor::from_i32(&[], &[0]));
        let q = b
            .op(Op::Quantize { to: DType::I4 }, &[x, s, zp], "q")
            .unwrap();
        let t = q.as_const().unwrap();
        // 1, -8 (saturated), 3 (2.6 rounds up): nibbles 0x1, 0x8, 0x3.
        assert_eq!(
            (t.dtype, t.bytes().unwrap()),
            (DType::I4, &[0x81, 0x03][..])
        );
    }
}
