//! SmoothQuant (`--smooth ALPHA`): moves activation outliers into the
//! weights before quantising. For an activation X read only by MatMuls
//! with constant weights, channel j is divided by
//! `s_j = max|X_j|^α / max|W_j|^(1−α)` and row j of every reading weight
//! multiplied by it; the division is folded into what produces X — the
//! scale and bias of a `LayerNormalization`, the constant of a `Mul` (the
//! weight of a decomposed RMSNorm), or the columns (and bias) of a
//! preceding MatMul — so the fp32 function is unchanged.

use std::collections::{HashMap, HashSet};

use tract_onnx::pb::{NodeProto, TensorProto};

use super::calibrate::channel_absmax;
use super::model::{f32_values, graph, FloatModel, Sample};
use super::rewrite::{constant, layer_name};
use super::{Observer, QuantizeError, Result};

/// Where a smoothed activation's division goes: (node, input) pairs of
/// constants scaled per channel — for a MatMul's weight, its columns.
#[derive(Debug)]
struct Site {
    tensor: String,
    /// 1-D constants `[C]` divided elementwise.
    vectors: Vec<(usize, usize)>,
    /// `[K, C]` weights whose columns are divided.
    columns: Vec<(usize, usize)>,
    /// `[C, N]` weights (of the readers) whose rows are multiplied.
    readers: Vec<(usize, usize)>,
}

/// Finds the activations SmoothQuant can fold and applies it with
/// statistics over `samples`. Returns the smoothed tensors' names.
pub fn apply(
    model: &mut FloatModel,
    samples: &[Sample],
    alpha: f32,
    exclude: &HashSet<String>,
    observer: &dyn Observer,
) -> Result<Vec<String>> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(QuantizeError::Invalid(format!(
            "--smooth {alpha}: α must be between 0 and 1"
        )));
    }
    if samples.is_empty() {
        return Err(QuantizeError::Invalid(
            "--smooth needs calibration data (--calibrate)".into(),
        ));
    }
    let sites = find_sites(model, exclude);
    let names: Vec<String> = sites.iter().map(|s| s.tensor.clone()).collect();
    let stats = channel_absmax(model, samples, &names, observer)?;
    for site in &sites {
        let amax = &stats[&site.tensor];
        let mut wmax = vec![0f32; amax.len()];
        for &(n, i) in &site.readers {
            let (shape, w) = values(model, n, i)?;
            if shape[0] != amax.len() {
                return Err(QuantizeError::Tensor {
                    tensor: site.tensor.clone(),
                    msg: format!(
                        "has {} channels but a reading weight {} rows",
                        amax.len(),
                        shape[0]
                    ),
                });
            }
            for (k, x) in w.iter().enumerate() {
                let j = k / shape[1];
                wmax[j] = wmax[j].max(x.abs());
            }
        }
        let s: Vec<f32> = amax
            .iter()
            .zip(&wmax)
            .map(|(&a, &w)| {
                if a > 0.0 && w > 0.0 {
                    (a.powf(alpha) / w.powf(1.0 - alpha)).clamp(1e-5, 1e5)
                } else {
                    1.0
                }
            })
            .collect();
        for &(n, i) in &site.vectors {
            edit(model, n, i, |_, w| {
                w.iter_mut()
                    .zip(s.iter().cycle())
                    .for_each(|(x, d)| *x /= d)
            })?;
        }
        for &(n, i) in &site.columns {
            edit(model, n, i, |_, w| {
                w.iter_mut()
                    .zip(s.iter().cycle())
                    .for_each(|(x, d)| *x /= d)
            })?;
        }
        for &(n, i) in &site.readers {
            edit(model, n, i, |shape, w| {
                for (k, x) in w.iter_mut().enumerate() {
                    *x *= s[k / shape[1]];
                }
            })?;
        }
    }
    Ok(names)
}

/// The f32 constant input `i` of node `n`.
fn values(model: &FloatModel, n: usize, i: usize) -> Result<(Vec<usize>, Vec<f32>)> {
    let name = &graph(&model.proto).node[n].input[i];
    let t = constant(&model.proto, name).ok_or_else(|| QuantizeError::Tensor {
        tensor: name.clone(),
        msg: "is not a constant".into(),
    })?;
    f32_values(t)
}

/// Replaces constant input `i` of node `n` by an edited copy (the
/// original may be shared with nodes that must not change).
fn edit(
    model: &mut FloatModel,
    n: usize,
    i: usize,
    f: impl FnOnce(&[usize], &mut [f32]),
) -> Result<()> {
    let (shape, mut w) = values(model, n, i)?;
    f(&shape, &mut w);
    #[allow(
        clippy::expect_used,
        reason = "OnnxModel::load refuses a model without a graph"
    )]
    let g = model.proto.graph.as_mut().expect("checked at load");
    let old = g.node[n].input[i].clone();
    let taken: HashSet<&String> = g.initializer.iter().map(|t| &t.name).collect();
    let mut name = format!("{old}_smoothed");
    let mut k = 1;
    while taken.contains(&name) {
        name = format!("{old}_smoothed_{k}");
        k += 1;
    }
    g.initializer.push(TensorProto {
        name: name.clone(),
        data_type: 1,
        dims: shape.iter().map(|&d| d as i64).collect(),
        raw_data: w.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    });
    g.node[n].input[i] = name;
    Ok(())
}

/// Activations SmoothQuant can fold: read only by non-excluded MatMuls
/// with constant `[C, N]` weights, produced by a foldable node.
fn find_sites(model: &FloatModel, exclude: &HashSet<String>) -> Vec<Site> {
    let g = graph(&model.proto);
    let mut readers: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
    for (k, n) in g.node.iter().enumerate() {
        for (i, x) in n.input.iter().enumerate() {
            readers.entry(x.as_str()).or_default().push((k, i));
        }
    }
    let konst = |n: &NodeProto, i: usize| {
        n.input
            .get(i)
            .and_then(|x| constant(&model.proto, x))
            .map(|t| t.dims.clone())
    };
    let is_vector = |d: Option<Vec<i64>>| d.is_some_and(|d| d.len() == 1);
    let matmul_weight = |k: usize, i: usize| {
        let n = &g.node[k];
        n.op_type == "MatMul"
            && n.domain.is_empty()
            && i == 0
            && !exclude.contains(&layer_name(n))
            && !exclude.contains("MatMul")
            && konst(n, 1).is_some_and(|d| d.len() == 2)
    };
    let mut sites = vec![];
    for (k, p) in g.node.iter().enumerate() {
        let Some(x) = p.output.first() else { continue };
        let Some(rs) = readers.get(x.as_str()) else {
            continue;
        };
        if !p.domain.is_empty() || !rs.iter().all(|&(n, i)| matmul_weight(n, i)) {
            continue;
        }
        if g.output.iter().any(|o| &o.name == x) {
            continue;
        }
        let (mut vectors, mut columns) = (vec![], vec![]);
        match p.op_type.as_str() {
            "LayerNormalization" if p.attribute.iter().all(|a| a.name != "axis" || a.i == -1) => {
                vectors.extend(
                    (1..p.input.len().min(3))
                        .filter(|&i| is_vector(konst(p, i)))
                        .map(|i| (k, i)),
                );
                if vectors.first() != Some(&(k, 1)) {
                    continue;
                }
            }
            "Mul" => match (0..2).find(|&i| is_vector(konst(p, i))) {
                Some(i) => vectors.push((k, i)),
                None => continue,
            },
            "MatMul" if konst(p, 1).is_some_and(|d| d.len() == 2) => columns.push((k, 1)),
            _ => continue,
        }
        sites.push(Site {
            tensor: x.clone(),
            vectors,
            columns,
            readers: rs.iter().map(|&(n, _)| (n, 1)).collect(),
        });
    }
    sites
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::model::Runner;
    use crate::quantize::Quiet;
    use m4c_ir::Tensor;
    use m4c_ops::Value;
    use tract_onnx::pb::{GraphProto, ModelProto, OperatorSetIdProto, ValueInfoProto};

    fn t(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
        TensorProto {
            name: name.into(),
            data_type: 1,
            dims: dims.to_vec(),
            raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ..Default::default()
        }
    }

    fn n(op: &str, name: &str, i: &[&str], o: &str) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            name: name.into(),
            input: i.iter().map(|s| s.to_string()).collect(),
            output: vec![o.into()],
            ..Default::default()
        }
    }

    /// `y = (x · gamma) · W`, x `[2, 3]` declared with its shape.
    fn model() -> FloatModel {
        let vi = |name: &str| {
            ValueInfoProto {
            name: name.into(),
            r#type: Some(tract_onnx::pb::TypeProto {
                value: Some(tract_onnx::pb::type_proto::Value::TensorType(
                    tract_onnx::pb::type_proto::Tensor {
                        elem_type: 1,
                        shape: Some(tract_onnx::pb::TensorShapeProto {
                            dim: [2, 3]
                                .iter()
                                .map(|&d| tract_onnx::pb::tensor_shape_proto::Dimension {
                                    value: Some(tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(d)),
                                    ..Default::default()
                                })
                                .collect(),
                        }),
                    },
                )),
                ..Default::default()
            }),
            ..Default::default()
        }
        };
        FloatModel {
            path: "smooth.onnx".into(),
            proto: ModelProto {
                ir_version: 8,
                opset_import: vec![OperatorSetIdProto {
                    domain: String::new(),
                    version: 17,
                }],
                graph: Some(GraphProto {
                    name: "smooth".into(),
                    node: vec![
                        n("Mul", "norm", &["x", "gamma"], "h"),
                        n("MatMul", "mm", &["h", "W"], "y"),
                    ],
                    initializer: vec![
                        t("gamma", &[3], &[1.0, 2.0, 0.5]),
                        t("W", &[3, 2], &[0.1, -0.2, 0.3, 0.4, -0.5, 0.6]),
                    ],
                    input: vec![vi("x")],
                    output: vec![ValueInfoProto {
                        name: "y".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            },
        }
    }

    #[test]
    fn smoothing_keeps_the_function_and_flattens_the_activation() {
        let x = [1.0, -40.0, 0.5, 2.0, 30.0, -1.0];
        let sample = Sample::from([(
            "x".to_string(),
            Value::from_tensor(&Tensor::from_f32(&[2, 3], &x)).unwrap(),
        )]);
        let before = model();
        let mut after = model();
        let smoothed = apply(
            &mut after,
            std::slice::from_ref(&sample),
            0.5,
            &HashSet::new(),
            &Quiet,
        )
        .unwrap();
        assert_eq!(smoothed, vec!["h"]);
        let run = |m: &FloatModel| {
            let mut r = Runner::new(&m.proto, &["h".into()], "test").unwrap();
            r.run(&sample).unwrap()
        };
        let (a, b) = (run(&before), run(&after));
        let c = m4c_ops::compare(&b["y"], &a["y"], 1e-5, 1e-6);
        assert!(c.passed(), "{}", c.summary());
        // The outlier channel (80 before) shrinks relative to the others.
        let spread = |v: &Value| {
            let f = m4c_ops::as_f64(v);
            let m: Vec<f64> = (0..3).map(|j| f[j].abs().max(f[j + 3].abs())).collect();
            m.iter().cloned().fold(0.0, f64::max) / m.iter().cloned().fold(f64::MAX, f64::min)
        };
        assert!(spread(&b["h"]) < spread(&a["h"]) / 4.0);
        // The original constants are untouched (copies are edited).
        assert!(graph(&after.proto)
            .initializer
            .iter()
            .any(|t| t.name == "gamma_smoothed"));
    }

    #[test]
    fn alpha_out_of_range_and_missing_data_fail() {
        let mut m = model();
        let e = apply(&mut m, &[], 1.5, &HashSet::new(), &Quiet).unwrap_err();
        assert!(e.to_string().contains("between 0 and 1"));
        let e = apply(&mut m, &[], 0.5, &HashSet::new(), &Quiet).unwrap_err();
        assert!(e.to_string().contains("--calibrate"));
    }
}
