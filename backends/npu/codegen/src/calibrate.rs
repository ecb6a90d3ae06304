//! Calibration of a float graph for the NPU: every f32 value's range over
//! calibration inputs, observed by running the reference interpreter
//! (`m4c_ops`), node by node. The NPU's activations are symmetric int8
//! per tensor: `scale = max|x| / 127`, zero point 0.

use std::collections::HashMap;

use m4c_ir::{Graph, ValueDef};
use m4c_ops::{eval_op, Value};

/// The largest magnitude each f32 value took, by value name.
#[derive(Clone, Debug, Default)]
pub struct Calibration {
    /// `max |x|` per value name.
    pub absmax: HashMap<String, f32>,
}

/// Why calibration failed.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("calibration sample {sample}: {msg}")]
    Run { sample: usize, msg: String },
}

impl Calibration {
    /// The symmetric int8 scale of value `name` (a value never seen, or
    /// always zero, gets a tiny positive scale).
    pub fn scale(&self, name: &str) -> Option<f64> {
        self.absmax
            .get(name)
            .map(|&m| (f64::from(m).max(1e-6)) / 127.0)
    }
}

/// Runs `g` on each sample (inputs in `g.inputs` order) and records the
/// range of every f32 value, inputs included.
pub fn calibrate(g: &Graph, samples: &[Vec<Value>]) -> Result<Calibration, CalibrationError> {
    let mut cal = Calibration::default();
    for (sample, inputs) in samples.iter().enumerate() {
        let fail = |msg: String| CalibrationError::Run { sample, msg };
        if inputs.len() != g.inputs.len() {
            return Err(fail(format!(
                "{} inputs for {}",
                inputs.len(),
                g.inputs.len()
            )));
        }
        let mut env: Vec<Option<Value>> = vec![None; g.values.len()];
        for (&id, v) in g.inputs.iter().zip(inputs) {
            env[id.index()] = Some(v.clone());
        }
        for (id, value) in g.values.iter().enumerate() {
            if let ValueDef::Const(t) = &value.def {
                env[id] = Some(Value::from_tensor(t).map_err(|e| fail(e.to_string()))?);
            }
        }
        for node in &g.nodes {
            let args: Vec<&Value> = node
                .inputs
                .iter()
                .map(|i| env[i.index()].as_ref())
                .collect::<Option<_>>()
                .ok_or_else(|| fail("a value is used before it is defined".into()))?;
            let out = eval_op(&node.op, &args).map_err(|e| fail(e.to_string()))?;
            env[node.output.index()] = Some(out);
        }
        for (id, v) in env.iter().enumerate() {
            if let (Some(Value::F32(a)), false) =
                (v, matches!(g.values[id].def, ValueDef::Const(_)))
            {
                let m = a
                    .iter()
                    .fold(0f32, |m, &x| if x.is_finite() { m.max(x.abs()) } else { m });
                let e = cal.absmax.entry(g.values[id].name.clone()).or_insert(0.0);
                *e = e.max(m);
            }
        }
    }
    Ok(cal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use m4c_ir::{DType, Op, TensorType};

    #[test]
    fn ranges_cover_every_sample() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[3]));
        let y = g.add_node(Op::Exp, &[x], "y").unwrap();
        g.outputs.push(y);
        let s = |v: [f32; 3]| vec![Value::F32(ndarray::arr1(&v).into_dyn())];
        let cal = calibrate(&g, &[s([0.0, -2.0, 1.0]), s([0.5, 0.0, 3.0])]).unwrap();
        assert_eq!(cal.absmax["x"], 3.0);
        assert!((cal.absmax["y"] - 3f32.exp()).abs() < 1e-4);
        assert!((cal.scale("x").unwrap() - 3.0 / 127.0).abs() < 1e-9);
        assert!(calibrate(&g, &[vec![]]).is_err());
    }
}
