//! The committed model fixtures (`tests/fixtures/*.onnx`, described in
//! `MANIFEST.json`) on every engine, against the outputs onnxruntime gave
//! (`X.expected.npz`), at `m4c run --expect`'s default tolerance.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use m4c_compiler::{lower, LowerOptions, OnnxModel};
use m4c_ops::Value;
use m4c_runtime::{read_npz, sanitized_key};

use crate::harness::{run_everywhere, CaseResult, Engine, Loaded, Outcome};

/// The suite's name in reports and expected-failure lists.
pub const SUITE: &str = "fixtures";
/// `m4c run --expect`'s defaults.
pub const TOLERANCE: (f64, f64) = (1e-4, 1e-5);

/// The fixtures directory.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every fixture's name (`X` of `X.onnx`), sorted.
pub fn cases() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .expect("tests/fixtures")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".onnx"))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// An array of an npz by value name, exact first, then as `m4c run` writes
/// names with odd characters.
pub fn lookup<'a>(arrays: &'a BTreeMap<String, Value>, name: &str) -> Result<&'a Value, String> {
    arrays
        .get(name)
        .or_else(|| arrays.get(&sanitized_key(name)))
        .ok_or_else(|| format!("no array `{name}`"))
}

/// Lowers a fixture with the shapes of its input arrays.
fn load(name: &str) -> Result<Loaded, String> {
    let file = |ext: &str| dir().join(format!("{name}.{ext}"));
    let model = OnnxModel::load(&file("onnx")).map_err(|e| e.to_string())?;
    let inputs = read_npz(&file("inputs.npz")).map_err(|e| e.to_string())?;
    let expected = read_npz(&file("expected.npz")).map_err(|e| e.to_string())?;
    let proto = model.graph();
    let inits: HashSet<&str> = proto.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut options = LowerOptions::default();
    let mut feeds = vec![];
    for input in proto
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
    {
        let v = lookup(&inputs, &input.name)?;
        options
            .input_shapes
            .insert(input.name.clone(), v.shape().to_vec());
        feeds.push(v.clone());
    }
    let graph = lower(&model, &options).map_err(|e| e.to_string())?;
    let want = proto
        .output
        .iter()
        .map(|o| Ok((o.name.clone(), lookup(&expected, &o.name)?.clone())))
        .collect::<Result<_, String>>()?;
    Ok(Loaded {
        graph,
        inputs: feeds,
        want,
    })
}

/// Runs one fixture on every engine.
pub fn run_case(engines: &[Engine], fixture: &String) -> CaseResult {
    let name = format!("{SUITE}/{fixture}");
    let outcomes = match load(fixture) {
        Ok(case) => run_everywhere(engines, &case, TOLERANCE),
        // Every fixture is meant to lower: a frontend failure is a failure
        // on every engine, not a skip.
        Err(e) => vec![Outcome::Fail(format!("frontend: {e}")); engines.len()],
    };
    CaseResult { name, outcomes }
}
