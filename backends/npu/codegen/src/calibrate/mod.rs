//! Calibration of a float graph for the NPU: every f32 value's range over
//! calibration inputs, observed by running the reference interpreter
//! (`m4c_ops`), node by node. The NPU's activations are symmetric int8
//! per tensor: `scale = max|x| / 127`, zero point 0 — except values that
//! were ever infinite or beyond [`MASK_MAGNITUDE`] (additive attention
//! masks, written with `-inf` or with `finfo(float32).min` as exporters
//! do): their ordinary range ends at 127 and -128 stands for the mask, at
//! least [`MASK_GAP`] below the largest ordinary value (so that softmax
//! gives masked entries ~e^-12). Masks written with ordinary magnitudes
//! (`-1e9`, `-10000`) are found by what the softmax makes of them
//! ([`mask`]).

use std::collections::HashMap;

use m4c_ir::{Graph, ValueDef, ValueId};
use m4c_ops::{eval_op, Value};

use m4c_npu::kernels::Quant;

mod mask;
pub use mask::SOFTMAX_FLOOR;

/// How far below the largest finite value the code -128 of a masked
/// value lies (natural-log units for a softmax).
pub const MASK_GAP: f64 = 12.0;

/// Magnitudes at or beyond this are mask sentinels (`finfo(float32).min`
/// ≈ -3.4e38, and sums of it), not activations: calibrated like ±inf.
pub const MASK_MAGNITUDE: f32 = 1e30;

/// Whether `x` is a mask sentinel (infinite, NaN, or beyond
/// [`MASK_MAGNITUDE`]) rather than an ordinary value.
pub fn is_mask_sentinel(x: f64) -> bool {
    x.is_nan() || x.abs() >= f64::from(MASK_MAGNITUDE)
}

/// The range one f32 value took over the samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    /// Smallest ordinary element (finite, below [`MASK_MAGNITUDE`]).
    pub min: f32,
    /// Largest ordinary element.
    pub max: f32,
    /// Whether any element was infinite, NaN or a mask sentinel.
    pub nonfinite: bool,
    /// For an `Add` operand carrying a mask into a softmax: the most its
    /// code -128 may dequantise to, so that a masked sum saturates (the
    /// sum's smallest ordinary value less the other operand's largest).
    pub floor: Option<f32>,
}

/// The range of each f32 value, by value name.
#[derive(Clone, Debug, Default)]
pub struct Calibration {
    /// Per value name.
    pub ranges: HashMap<String, Range>,
}

/// Why calibration failed.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    /// The interpreter failed on a sample (its index and the message).
    #[error("calibration sample {sample}: {msg}")]
    Run { sample: usize, msg: String },
}

impl Calibration {
    /// The int8 quantisation of value `name` (`None`: never observed).
    /// An always-zero value gets a tiny positive scale.
    pub fn quant(&self, name: &str) -> Option<Quant> {
        let r = self.ranges.get(name)?;
        let (lo, hi) = (f64::from(r.min), f64::from(r.max));
        let absmax = lo.abs().max(hi.abs()).max(1e-6);
        let symmetric = Quant {
            scale: absmax / 127.0,
            zero_point: 0,
        };
        if !r.nonfinite {
            return Some(symmetric);
        }
        let deep = r.floor.map_or(0.0, |f| (hi - f64::from(f)) / 255.0);
        let scale = ((hi - lo) / 254.0).max(MASK_GAP / 255.0).max(deep);
        let zero_point = 127 - (hi / scale).round() as i64;
        Some(if (-128..=127).contains(&zero_point) {
            Quant {
                scale,
                zero_point: zero_point as i32,
            }
        } else {
            Quant {
                scale: symmetric.scale.max(MASK_GAP / 128.0),
                zero_point: 0,
            }
        })
    }

    /// Whether element `x` of value `name` is a mask sentinel: beyond
    /// [`MASK_MAGNITUDE`], or below the ordinary range of a value whose
    /// masked elements calibration found ([`mask`]) — how a constant
    /// mask written with `-1e9` is recognised when it is lowered.
    pub fn is_sentinel(&self, name: &str, x: f64) -> bool {
        is_mask_sentinel(x)
            || self
                .ranges
                .get(name)
                .is_some_and(|r| r.nonfinite && x < f64::from(r.min))
    }
}

/// Runs `g` on `inputs` (in `g.inputs` order) with the reference
/// interpreter, node by node, showing `visit` each node's result; returns
/// every value by index (inputs and constants included). With
/// `drop_dead`, each value is freed after the last node reading it (and
/// the returned values are those still live): what a report reading a
/// few values needs, where calibration keeps them all.
pub fn evaluate(
    g: &Graph,
    inputs: &[Value],
    drop_dead: bool,
    visit: &mut dyn FnMut(ValueId, &Value),
) -> Result<Vec<Option<Value>>, String> {
    if inputs.len() != g.inputs.len() {
        return Err(format!("{} inputs for {}", inputs.len(), g.inputs.len()));
    }
    let mut env: Vec<Option<Value>> = vec![None; g.values.len()];
    for (&id, v) in g.inputs.iter().zip(inputs) {
        env[id.index()] = Some(v.clone());
    }
    for (id, value) in g.values.iter().enumerate() {
        if let ValueDef::Const(t) = &value.def {
            env[id] = Some(Value::from_tensor(t).map_err(|e| e.to_string())?);
        }
    }
    let mut last_use = vec![usize::MAX; g.values.len()];
    for (k, node) in g.nodes.iter().enumerate() {
        for i in &node.inputs {
            last_use[i.index()] = k;
        }
    }
    for (k, node) in g.nodes.iter().enumerate() {
        let args: Vec<&Value> = node
            .inputs
            .iter()
            .map(|i| env[i.index()].as_ref())
            .collect::<Option<_>>()
            .ok_or("a value is used before it is defined")?;
        let out = eval_op(&node.op, &args).map_err(|e| e.to_string())?;
        visit(node.output, &out);
        env[node.output.index()] = Some(out);
        if drop_dead {
            for i in &node.inputs {
                if last_use[i.index()] == k {
                    env[i.index()] = None;
                }
            }
        }
    }
    Ok(env)
}

/// Runs `g` on each sample (inputs in `g.inputs` order) and records the
/// range of every f32 value, inputs included.
pub fn calibrate(g: &Graph, samples: &[Vec<Value>]) -> Result<Calibration, CalibrationError> {
    let mut cal = Calibration::default();
    let (softmax, operands) = mask::mask_chains(g);
    for (sample, inputs) in samples.iter().enumerate() {
        let env = evaluate(g, inputs, false, &mut |_, _| {})
            .map_err(|msg| CalibrationError::Run { sample, msg })?;
        let masked = mask::masked(&softmax, &operands, &env);
        for (id, v) in env.iter().enumerate() {
            let flags = masked.get(&ValueId(id as u32));
            let constant = matches!(g.values[id].def, ValueDef::Const(_));
            let Some(Value::F32(a)) = v.as_ref().filter(|_| !constant || flags.is_some()) else {
                continue;
            };
            let r = cal
                .ranges
                .entry(g.values[id].name.clone())
                .or_insert(Range {
                    min: 0.0,
                    max: 0.0,
                    nonfinite: false,
                    floor: None,
                });
            for (k, &x) in a.iter().enumerate() {
                let flagged = flags.is_some_and(|f| f.get(k).copied().unwrap_or(false));
                if flagged || is_mask_sentinel(f64::from(x)) {
                    r.nonfinite = true;
                } else {
                    r.min = r.min.min(x);
                    r.max = r.max.max(x);
                }
            }
        }
    }
    for m in &operands {
        let name = |v: ValueId| &g.values[v.index()].name;
        let (Some(out), Some(other)) = (cal.ranges.get(name(m.out)), cal.ranges.get(name(m.other)))
        else {
            continue;
        };
        let floor = out.min - other.max;
        if let Some(r) = cal.ranges.get_mut(name(m.operand)).filter(|r| r.nonfinite) {
            r.floor = Some(r.floor.map_or(floor, |f| f.min(floor)));
        }
    }
    // An embedding lookup may fetch any row of its table, whichever rows
    // the samples used: its range is the whole table's.
    for node in g
        .nodes
        .iter()
        .filter(|n| crate::constraints::is_embedding(g, n))
    {
        let ValueDef::Const(t) = &g.value(node.inputs[0]).def else {
            continue;
        };
        let table = Value::from_tensor(t)
            .map(|v| m4c_ops::as_f64(&v))
            .unwrap_or_default();
        let ordinary = table.iter().filter(|x| !is_mask_sentinel(**x));
        let (lo, hi) = ordinary.fold((0f64, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        if let Some(r) = cal.ranges.get_mut(&g.value(node.output).name) {
            r.min = r.min.min(lo as f32);
            r.max = r.max.max(hi as f32);
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
        assert_eq!((cal.ranges["x"].min, cal.ranges["x"].max), (-2.0, 3.0));
        assert!((cal.ranges["y"].max - 3f32.exp()).abs() < 1e-4);
        assert!((cal.quant("x").unwrap().scale - 3.0 / 127.0).abs() < 1e-9);
        assert!(calibrate(&g, &[vec![]]).is_err());
    }

    /// `finfo(float32).min` masks calibrate as -inf does.
    #[test]
    fn finfo_min_masks_are_sentinels() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[3]));
        let y = g.add_node(Op::Exp, &[x], "y").unwrap();
        g.outputs.push(y);
        let s = vec![Value::F32(ndarray::arr1(&[0.5, f32::MIN, -1.0]).into_dyn())];
        let r = calibrate(&g, &[s]).unwrap().ranges["x"];
        assert_eq!((r.min, r.max, r.nonfinite), (-1.0, 0.5, true));
    }

    /// A masked value's -128 lies at least MASK_GAP below its maximum.
    #[test]
    fn masked_values_keep_a_gap_for_minus_infinity() {
        let mut cal = Calibration::default();
        let r = Range {
            min: -0.2,
            max: 0.3,
            nonfinite: true,
            floor: None,
        };
        cal.ranges.insert("s".into(), r);
        let q = cal.quant("s").unwrap();
        assert_eq!(q.quantize(0.3), 127);
        assert!(0.3 - q.dequantize(-128) >= MASK_GAP);
    }
}
