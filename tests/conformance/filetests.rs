//! `.ir` text filetests (`tests/filetests/*.ir`): small IR graphs in the
//! textual IR with their inputs and expected outputs in `#` comments
//! (which the IR parser skips):
//!
//! ```text
//! # in  %x = [1, 2, 3]
//! # out %y = [2, 4, 6]
//! # tolerance rtol=1e-6 atol=1e-7      (optional; default below)
//! graph "double" { ... }
//! ```
//!
//! Values fill the declared type of the input or output in row-major
//! order (`nan`, `inf`, `-inf`, `true`, `false` allowed). The expectations
//! are worked by hand or by `scripts/filetests/expect.py` (Python's `math`,
//! not m4c): an independent truth, never the interpreter's own output.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use m4c_ir::{DType, Tensor, TensorType};
use m4c_ops::Value;

use crate::harness::{run_everywhere, CaseResult, Engine, Loaded, Outcome};

/// The suite's name in reports and expected-failure lists.
pub const SUITE: &str = "filetests";
/// Tolerance when a file gives none.
const DEFAULT_TOLERANCE: (f64, f64) = (1e-5, 1e-6);

/// Every `tests/filetests/*.ir`, sorted.
pub fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/filetests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("tests/filetests")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| m4c_compiler::ir_file::is_ir_file(p))
        .collect();
    files.sort();
    files
}

/// The `# in`, `# out` and `# tolerance` directives of a file.
struct Spec {
    inputs: BTreeMap<String, Vec<f64>>,
    outputs: BTreeMap<String, Vec<f64>>,
    tolerance: (f64, f64),
}

fn parse_spec(text: &str) -> Result<Spec, String> {
    let mut spec = Spec {
        inputs: BTreeMap::new(),
        outputs: BTreeMap::new(),
        tolerance: DEFAULT_TOLERANCE,
    };
    for (n, line) in text.lines().enumerate() {
        let Some(comment) = line.trim_start().strip_prefix('#') else {
            continue;
        };
        let at = |msg: String| format!("line {}: {msg}", n + 1);
        let (word, rest) = comment
            .trim()
            .split_once(' ')
            .unwrap_or((comment.trim(), ""));
        match word {
            "in" | "out" => {
                let (name, list) = rest
                    .split_once('=')
                    .ok_or_else(|| at(format!("expected `# {word} %name = [values]`")))?;
                let name = name
                    .trim()
                    .strip_prefix('%')
                    .ok_or_else(|| at("expected %name".into()))?;
                let values = parse_values(list).map_err(at)?;
                let map = if word == "in" {
                    &mut spec.inputs
                } else {
                    &mut spec.outputs
                };
                if map.insert(name.to_string(), values).is_some() {
                    return Err(at(format!("%{name} given twice")));
                }
            }
            "tolerance" => {
                for kv in rest.split_whitespace() {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| at(format!("bad `{kv}`")))?;
                    let v: f64 = v.parse().map_err(|_| at(format!("bad number `{v}`")))?;
                    match k {
                        "rtol" => spec.tolerance.0 = v,
                        "atol" => spec.tolerance.1 = v,
                        _ => return Err(at(format!("unknown tolerance `{k}`"))),
                    }
                }
            }
            _ => {}
        }
    }
    Ok(spec)
}

fn parse_values(list: &str) -> Result<Vec<f64>, String> {
    let inner = list
        .trim()
        .strip_prefix('[')
        .and_then(|l| l.strip_suffix(']'))
        .ok_or_else(|| format!("expected `[values]`, got `{}`", list.trim()))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s {
            "true" => Ok(1.0),
            "false" => Ok(0.0),
            _ => s.parse::<f64>().map_err(|_| format!("bad value `{s}`")),
        })
        .collect()
}

/// `values` as a value of type `ty` (exact for the integer types).
fn make_value(ty: &TensorType, values: &[f64]) -> Result<Value, String> {
    let shape = ty.static_shape().ok_or("filetests need static shapes")?;
    let count: usize = shape.iter().product();
    if values.len() != count {
        return Err(format!("{} values for {ty}", values.len()));
    }
    let exact = |v: f64| {
        (v.fract() == 0.0)
            .then_some(v)
            .ok_or(format!("{v} is not an integer"))
    };
    let tensor = match ty.dtype {
        DType::F32 => Tensor::from_f32(
            &shape,
            &values.iter().map(|&v| v as f32).collect::<Vec<_>>(),
        ),
        DType::I64 => Tensor::from_i64(
            &shape,
            &values
                .iter()
                .map(|&v| exact(v).map(|v| v as i64))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        DType::I32 => Tensor::from_i32(
            &shape,
            &values
                .iter()
                .map(|&v| exact(v).map(|v| v as i32))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        DType::I8 => Tensor::from_i8(
            &shape,
            &values
                .iter()
                .map(|&v| exact(v).map(|v| v as i8))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        DType::Bool => Tensor::from_bool(
            &shape,
            &values.iter().map(|&v| v != 0.0).collect::<Vec<_>>(),
        ),
        other => return Err(format!("no value syntax for {other}")),
    };
    Value::from_tensor(&tensor).map_err(|e| e.to_string())
}

/// Reads a filetest and its tolerance.
fn load(path: &Path) -> Result<(Loaded, (f64, f64)), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let spec = parse_spec(&text)?;
    let graph = m4c_compiler::ir_file::load(path).map_err(|e| e.to_string())?;
    let named = |ids: &[m4c_ir::ValueId], given: &BTreeMap<String, Vec<f64>>, what: &str| {
        let mut used = 0;
        let values = ids
            .iter()
            .map(|&id| {
                let v = graph.value(id);
                let values = given
                    .get(&v.name)
                    .ok_or_else(|| format!("no `# {what} %{}`", v.name))?;
                used += 1;
                Ok((
                    v.name.clone(),
                    make_value(&v.ty, values).map_err(|e| format!("%{}: {e}", v.name))?,
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        if used != given.len() {
            return Err(format!("a `# {what}` names no graph {what}put"));
        }
        Ok(values)
    };
    let inputs = named(&graph.inputs, &spec.inputs, "in")?
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let want = named(&graph.outputs, &spec.outputs, "out")?;
    Ok((
        Loaded {
            graph,
            inputs,
            want,
        },
        spec.tolerance,
    ))
}

/// Runs one filetest on every engine.
pub fn run_case(engines: &[Engine], path: &Path) -> CaseResult {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("?");
    let name = format!("{SUITE}/{stem}");
    let outcomes = match load(path) {
        Ok((case, tol)) => run_everywhere(engines, &case, tol),
        Err(e) => vec![Outcome::Fail(format!("{}: {e}", path.display())); engines.len()],
    };
    CaseResult { name, outcomes }
}

#[test]
fn directives_parse_and_bad_ones_are_named() {
    let spec = parse_spec(
        "# in  %x = [1, -inf, nan, true]\n# out %y = []\n# tolerance rtol=1e-3 atol=0\ngraph \"g\" {\n",
    )
    .unwrap();
    assert_eq!(spec.inputs["x"][..2], [1.0, f64::NEG_INFINITY]);
    assert!(spec.inputs["x"][2].is_nan() && spec.inputs["x"][3] == 1.0);
    assert!(spec.outputs["y"].is_empty());
    assert_eq!(spec.tolerance, (1e-3, 0.0));
    for (text, want) in [
        ("# in %x = 1, 2", "line 1: expected `[values]`"),
        ("\n# out %y = [1, two]", "line 2: bad value `two`"),
        ("# in %x = [1]\n# in %x = [2]", "line 2: %x given twice"),
        ("# tolerance rtol=big", "line 1: bad number `big`"),
    ] {
        let err = parse_spec(text).err().unwrap();
        assert!(err.contains(want), "{text:?}: {err}");
    }
    let ty = TensorType::fixed(DType::I8, &[2]);
    assert!(make_value(&ty, &[1.5, 2.0])
        .unwrap_err()
        .contains("not an integer"));
    assert!(make_value(&ty, &[1.0])
        .unwrap_err()
        .contains("1 values for i8[2]"));
}
