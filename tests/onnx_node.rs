//! Conformance: ONNX's own backend node tests through the frontend and the
//! reference interpreter.
//!
//! Each case in `tests/onnx-node/` (written by
//! `scripts/onnx_node/export_node_tests.py`) is lowered and run; outputs are
//! compared with ONNX's expected outputs using the tolerances ONNX's test
//! runner uses (`INDEX.tsv`). The run prints `N passed, N failed, N
//! unsupported`; `tests/onnx-node/EXPECTED_PASS.txt` lists the cases that
//! must pass, so any regression fails the test. `M4C_BLESS=1` rewrites the
//! list after an improvement.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use m4c_compiler::onnx::load_tensor_file;
use m4c_compiler::{lower, FrontendError, LowerOptions, OnnxModel};
use m4c_ops::{compare, run_graph, Value};

enum Outcome {
    Pass,
    Fail(String),
    Unsupported(String),
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/onnx-node")
}

fn run_case(dir: &Path, rtol: f64, atol: f64) -> Outcome {
    let model = match OnnxModel::load(&dir.join("model.onnx")) {
        Ok(m) => m,
        Err(e) => return Outcome::Unsupported(e.to_string()),
    };
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    sets.sort();
    for set in sets {
        let read = |prefix: &str| -> Result<Vec<(String, m4c_ir::Tensor)>, FrontendError> {
            (0..)
                .map(|i| set.join(format!("{prefix}_{i}.pb")))
                .take_while(|p| p.exists())
                .map(|p| load_tensor_file(&p))
                .collect()
        };
        let (inputs, outputs) = match (read("input"), read("output")) {
            (Ok(i), Ok(o)) => (i, o),
            (Err(e), _) | (_, Err(e)) => return Outcome::Unsupported(e.to_string()),
        };
        let graph_inputs: Vec<String> =
            model.graph().input.iter().map(|i| i.name.clone()).collect();
        // Integer and bool inputs (shapes, axes, indices, flags) are specialised as
        // compile-time constants: an AOT compiler needs shape-like values
        // ahead of time. Float inputs stay runtime inputs.
        let is_const = |t: &m4c_ir::Tensor| {
            matches!(
                t.dtype,
                m4c_ir::DType::I64 | m4c_ir::DType::I32 | m4c_ir::DType::Bool
            )
        };
        let shapes: HashMap<String, Vec<usize>> = graph_inputs
            .iter()
            .cloned()
            .zip(inputs.iter().map(|(_, t)| t.shape.clone()))
            .collect();
        let constant_inputs: HashMap<String, m4c_ir::Tensor> = graph_inputs
            .iter()
            .cloned()
            .zip(inputs.iter().map(|(_, t)| t.clone()))
            .filter(|(_, t)| is_const(t))
            .collect();
        let graph = match lower(
            &model,
            &LowerOptions {
                input_shapes: shapes,
                constant_inputs,
                ..Default::default()
            },
        ) {
            Ok(g) => g,
            Err(e) => return Outcome::Unsupported(e.to_string()),
        };
        let values: Result<Vec<Value>, _> = inputs
            .iter()
            .filter(|(_, t)| !is_const(t))
            .map(|(_, t)| Value::from_tensor(t))
            .collect();
        let values = match values {
            Ok(v) => v,
            Err(e) => return Outcome::Unsupported(e.to_string()),
        };
        let got = match run_graph(&graph, &values) {
            Ok(v) => v,
            Err(e) => return Outcome::Fail(e.to_string()),
        };
        for (k, ((name, want), got)) in outputs.iter().zip(&got).enumerate() {
            let want = match Value::from_tensor(want) {
                Ok(w) => w,
                Err(e) => return Outcome::Unsupported(e.to_string()),
            };
            if want.shape() != got.shape() || want.dtype() != got.dtype() {
                return Outcome::Fail(format!(
                    "output {k} '{name}': {}{:?} vs expected {}{:?}",
                    got.dtype(),
                    got.shape(),
                    want.dtype(),
                    want.shape()
                ));
            }
            let c = compare(got, &want, rtol, atol);
            if !c.passed() {
                return Outcome::Fail(format!("output {k} '{name}': {}", c.summary()));
            }
        }
    }
    Outcome::Pass
}

#[test]
fn onnx_backend_node_tests() {
    let index = std::fs::read_to_string(root().join("INDEX.tsv")).expect("INDEX.tsv");
    let (mut passed, mut failed, mut unsupported) = (BTreeSet::new(), vec![], vec![]);
    for line in index.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (case, rtol, atol) = (
            cols[0],
            cols[6].parse().unwrap_or(1e-3),
            cols[7].parse().unwrap_or(1e-7),
        );
        match run_case(&root().join(case), rtol, atol) {
            Outcome::Pass => {
                passed.insert(case.to_string());
            }
            Outcome::Fail(why) => failed.push(format!("{case}: {why}")),
            Outcome::Unsupported(why) => unsupported.push(format!("{case}: {why}")),
        }
    }
    let report = root()
        .parent()
        .unwrap()
        .join("../target/onnx-node-report.txt");
    let _ = std::fs::write(
        &report,
        format!(
            "FAILED\n{}\n\nUNSUPPORTED\n{}\n",
            failed.join("\n"),
            unsupported.join("\n")
        ),
    );
    println!(
        "onnx node tests: {} passed, {} failed, {} unsupported (details: {})",
        passed.len(),
        failed.len(),
        unsupported.len(),
        report.display()
    );
    let list_path = root().join("EXPECTED_PASS.txt");
    if std::env::var_os("M4C_BLESS").is_some() {
        let text: String = passed.iter().map(|c| format!("{c}\n")).collect();
        std::fs::write(&list_path, text).unwrap();
        return;
    }
    let expected: BTreeSet<String> = std::fs::read_to_string(&list_path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    let regressions: Vec<&String> = expected.difference(&passed).collect();
    let newly: Vec<&String> = passed.difference(&expected).collect();
    if !newly.is_empty() {
        println!(
            "{} cases pass that EXPECTED_PASS.txt does not list yet (M4C_BLESS=1 to record)",
            newly.len()
        );
    }
    assert!(
        regressions.is_empty(),
        "{} expected passes regressed: {regressions:?}",
        regressions.len()
    );
}
