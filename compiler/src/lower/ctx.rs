//! What one ONNX node's lowering sees: its attributes, inputs and opset.

use m4c_ir::{DType, Tensor};
use tract_onnx::pb::{AttributeProto, NodeProto};

use super::builder::{Builder, Val};
use crate::onnx::OnnxModel;

/// Result of lowering one node: one value per ONNX output.
pub type Lowering = Result<Vec<Val>, String>;

/// A node being lowered.
pub struct NodeCtx<'a> {
    pub node: &'a NodeProto,
    pub opset: i64,
    pub model: &'a OnnxModel,
    /// Inputs in ONNX order; `None` for omitted optional inputs.
    pub inputs: Vec<Option<Val>>,
}

impl NodeCtx<'_> {
    /// A name for IR values made by this node.
    pub fn name(&self) -> &str {
        self.node
            .output
            .first()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or(&self.node.name)
    }

    fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    /// True when the attribute is present.
    pub fn has(&self, name: &str) -> bool {
        self.attr(name).is_some()
    }

    /// Integer attribute with a default.
    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map_or(default, |a| a.i)
    }

    /// Float attribute with a default.
    pub fn float(&self, name: &str, default: f32) -> f32 {
        self.attr(name).map_or(default, |a| a.f)
    }

    /// Integer-list attribute, if present.
    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }

    /// Float-list attribute, if present.
    pub fn floats(&self, name: &str) -> Option<Vec<f32>> {
        self.attr(name).map(|a| a.floats.clone())
    }

    /// String attribute with a default.
    pub fn string(&self, name: &str, default: &str) -> String {
        self.attr(name).map_or(default.to_string(), |a| {
            String::from_utf8_lossy(&a.s).into_owned()
        })
    }

    /// Tensor attribute (e.g. `Constant.value`).
    pub fn tensor_attr(&self, name: &str) -> Result<Option<Tensor>, String> {
        match self.attr(name).and_then(|a| a.t.as_ref()) {
            Some(t) => self.model.tensor(t).map(Some).map_err(|e| e.to_string()),
            None => Ok(None),
        }
    }

    /// Required input `i`.
    pub fn input(&self, i: usize) -> Result<Val, String> {
        self.opt_input(i)
            .ok_or_else(|| format!("missing input {i}"))
    }

    /// Optional input `i`.
    pub fn opt_input(&self, i: usize) -> Option<Val> {
        self.inputs.get(i).cloned().flatten()
    }

    /// Input `i`, which must be a compile-time constant (shapes, axes...).
    pub fn const_input(&self, i: usize) -> Result<Option<Tensor>, String> {
        match self.opt_input(i) {
            None => Ok(None),
            Some(Val::Const { t, .. }) => Ok(Some(t)),
            Some(Val::Value(_)) => Err(format!(
                "input {i} must be a compile-time constant (it depends on runtime data)"
            )),
        }
    }

    /// Constant integer-list input `i`, if given.
    pub fn const_ints(&self, i: usize) -> Result<Option<Vec<i64>>, String> {
        self.const_input(i)?
            .map(|t| t.to_index_vec().map_err(|e| e.to_string()))
            .transpose()
    }

    /// Constant float-list input `i`, if given.
    pub fn const_floats(&self, i: usize) -> Result<Option<Vec<f32>>, String> {
        match self.const_input(i)? {
            None => Ok(None),
            Some(t) if t.dtype == DType::F32 => t.to_f32_vec().map(Some).map_err(|e| e.to_string()),
            Some(t) => {
                let v = m4c_ops::Value::from_tensor(&t).map_err(|e| e.to_string())?;
                let f = m4c_ops::eval_op(&m4c_ir::Op::Cast { to: DType::F32 }, &[&v])
                    .map_err(|e| e.to_string())?;
                f.to_tensor()
                    .to_f32_vec()
                    .map(Some)
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Integers from an attribute (older opsets) or a constant input
    /// (newer ones), whichever the node uses.
    pub fn ints_attr_or_input(&self, name: &str, input: usize) -> Result<Option<Vec<i64>>, String> {
        match self.ints(name) {
            Some(v) => Ok(Some(v)),
            None => self.const_ints(input),
        }
    }
}

/// Normalises a possibly negative axis against `rank`.
pub fn axis(a: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    if a < -r || a >= r.max(1) {
        return Err(format!("axis {a} out of range for rank {rank}"));
    }
    Ok(if a < 0 { (a + r) as usize } else { a as usize })
}

/// Normalises a list of axes (sorted, deduplicated).
pub fn axes(list: &[i64], rank: usize) -> Result<Vec<usize>, String> {
    let mut v = list
        .iter()
        .map(|&a| axis(a, rank))
        .collect::<Result<Vec<_>, _>>()?;
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// Checks that `what` (an input of shape `shape`) has rank at least `min`.
pub fn need_rank(what: &str, shape: &[usize], min: usize) -> Result<(), String> {
    if shape.len() < min {
        return Err(format!(
            "{what} has rank {} ({shape:?}), needs rank ≥ {min}",
            shape.len()
        ));
    }
    Ok(())
}

/// A shape from ONNX integers (ConstantOfShape, Expand, Tile...): a
/// negative entry is an error naming `what`.
pub fn dims(what: &str, list: &[i64]) -> Result<Vec<usize>, String> {
    list.iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("{what} {list:?} has a negative entry")))
        .collect()
}

/// Shorthand used by the lowering functions.
pub type B = Builder;
