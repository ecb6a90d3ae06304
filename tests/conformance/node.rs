//! ONNX's own backend node tests (`tests/onnx-node/`, written by
//! `scripts/onnx_node/export_node_tests.py`) on every engine, with the
//! tolerances ONNX's test runner uses (`INDEX.tsv`).
//!
//! Integer and bool inputs (shapes, axes, indices, flags) are specialised
//! as compile-time constants, as an AOT compiler needs shape-like values
//! ahead of time; float inputs stay runtime inputs. A case the frontend
//! cannot load or lower is skipped on every engine (it is not the engine's
//! failure) and must be listed in `tests/conformance/unsupported.txt`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use m4c_compiler::onnx::load_tensor_file;
use m4c_compiler::{lower, LowerOptions, OnnxModel};
use m4c_ir::{DType, Tensor};
use m4c_ops::Value;

use crate::harness::{run_everywhere, CaseResult, Engine, Loaded, Outcome};

/// The suite's name in reports and expected-failure lists.
pub const SUITE: &str = "onnx-node";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/onnx-node")
}

/// Every case of `INDEX.tsv` with its (rtol, atol).
pub fn cases() -> Vec<(String, f64, f64)> {
    let index = std::fs::read_to_string(root().join("INDEX.tsv")).expect("INDEX.tsv");
    index
        .lines()
        .skip(1)
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            let num =
                |i: usize, default| cols.get(i).and_then(|c| c.parse().ok()).unwrap_or(default);
            (cols[0].to_string(), num(6, 1e-3), num(7, 1e-7))
        })
        .collect()
}

fn is_const(t: &Tensor) -> bool {
    matches!(t.dtype, DType::I64 | DType::I32 | DType::Bool)
}

/// Loads and lowers every data set of a case (each for its input
/// values); `Err` is the frontend's reason it cannot.
fn lower_case(dir: &Path) -> Result<Vec<Loaded>, String> {
    let model = OnnxModel::load(&dir.join("model.onnx")).map_err(|e| e.to_string())?;
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    sets.sort();
    let graph_inputs: Vec<String> = model.graph().input.iter().map(|i| i.name.clone()).collect();
    sets.iter()
        .map(|set| {
            let read = |prefix: &str| -> Result<Vec<(String, Tensor)>, String> {
                (0..)
                    .map(|i| set.join(format!("{prefix}_{i}.pb")))
                    .take_while(|p| p.exists())
                    .map(|p| load_tensor_file(&p).map_err(|e| e.to_string()))
                    .collect()
            };
            let (inputs, outputs) = (read("input")?, read("output")?);
            let named = graph_inputs
                .iter()
                .cloned()
                .zip(inputs.iter().map(|(_, t)| t));
            let options = LowerOptions {
                input_shapes: named.clone().map(|(n, t)| (n, t.shape.clone())).collect(),
                constant_inputs: named
                    .filter(|(_, t)| is_const(t))
                    .map(|(n, t)| (n, t.clone()))
                    .collect::<HashMap<_, _>>(),
                ..Default::default()
            };
            let graph = lower(&model, &options).map_err(|e| e.to_string())?;
            let inputs = inputs
                .iter()
                .filter(|(_, t)| !is_const(t))
                .map(|(_, t)| Value::from_tensor(t).map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?;
            let want = outputs
                .iter()
                .map(|(n, t)| Ok((n.clone(), Value::from_tensor(t).map_err(|e| e.to_string())?)))
                .collect::<Result<_, String>>()?;
            Ok(Loaded {
                graph,
                inputs,
                want,
            })
        })
        .collect()
}

/// Runs one case on every engine: every data set must pass.
pub fn run_case(engines: &[Engine], (case, rtol, atol): &(String, f64, f64)) -> CaseResult {
    let name = format!("{SUITE}/{case}");
    let sets = match lower_case(&root().join(case)) {
        Ok(sets) => sets,
        Err(why) => {
            let skip = Outcome::Skip(format!("frontend: {why}"));
            return CaseResult {
                name,
                outcomes: vec![skip; engines.len()],
            };
        }
    };
    let mut outcomes = vec![Outcome::Pass; engines.len()];
    for set in sets {
        let now = run_everywhere(engines, &set, (*rtol, *atol));
        for (o, n) in outcomes.iter_mut().zip(now) {
            if matches!(o, Outcome::Pass) {
                *o = n;
            }
        }
    }
    CaseResult { name, outcomes }
}
