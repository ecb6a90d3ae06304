//! What every command that reads a model shares: the model itself (an
//! ONNX file or an IR file written by `m4c opt -o`), its symbolic
//! dimensions and pinned constant inputs, and the optimiser switch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use m4c_compiler::{ir_file, lower_report, LowerOptions, LowerReport, OnnxModel};
use m4c_ir::{DType, Graph, Tensor};

use super::progress::Progress;
use super::CliResult;

/// How to fix the model's symbolic dimensions and constant inputs.
#[derive(clap::Args, Clone, Debug)]
pub struct DimArgs {
    /// Value of a symbolic input dimension, e.g. `--dim batch=1 --dim seq=16`.
    #[arg(long = "dim", value_name = "NAME=N", value_parser = parse_dim)]
    pub dims: Vec<(String, usize)>,
    /// Pin an integer or bool input to a compile-time constant, so that
    /// control flow on it folds (e.g. silero VAD's `If` on the sample
    /// rate: `--const sr=16000`); a 1-D input takes a comma-separated list
    /// (`--const axes=0,2`). The input is no longer fed at run time.
    #[arg(long = "const", value_name = "NAME=VALUE", value_parser = parse_const)]
    pub consts: Vec<(String, String)>,
}

fn parse_dim(s: &str) -> Result<(String, usize), String> {
    let (k, v) = s.split_once('=').ok_or("expected NAME=N")?;
    let n = v
        .parse()
        .map_err(|_| format!("'{v}' is not a dimension size"))?;
    Ok((k.to_string(), n))
}

fn parse_const(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected NAME=VALUE")?;
    if k.is_empty() || v.is_empty() {
        return Err("expected NAME=VALUE".into());
    }
    Ok((k.to_string(), v.to_string()))
}

impl DimArgs {
    /// Lowering options for `model` with these dims bound (and `default`
    /// for the rest) and the `--const` inputs pinned to tensors of their
    /// declared element type and shape.
    pub fn options(&self, model: &Model, default: Option<usize>) -> CliResult<LowerOptions> {
        let mut opts = LowerOptions {
            dims: self.dims.iter().cloned().collect::<HashMap<_, _>>(),
            default_dim: default,
            ..Default::default()
        };
        for (name, value) in &self.consts {
            let onnx = match model {
                Model::Onnx(m) => m,
                Model::Ir { path: p, .. } => {
                    return Err(format!(
                    "{}: --const applies to ONNX models (an IR file's inputs are already bound)",
                    p.display()
                )
                    .into())
                }
            };
            let (dtype, shape) = declared_input(onnx, name)?;
            opts.constant_inputs
                .insert(name.clone(), const_tensor(name, value, dtype, &shape)?);
        }
        Ok(opts)
    }

    /// The names pinned by `--const`.
    pub fn pinned(&self) -> impl Iterator<Item = &str> {
        self.consts.iter().map(|(k, _)| k.as_str())
    }
}

/// The element type and static shape an ONNX graph input declares.
fn declared_input(model: &OnnxModel, name: &str) -> CliResult<(DType, Vec<usize>)> {
    use m4c_compiler::onnx::pb::type_proto::Value as TypeValue;
    let path = model.path.display();
    let input = model
        .graph()
        .input
        .iter()
        .find(|i| i.name == name)
        .ok_or_else(|| format!("{path}: --const {name}: the model has no input '{name}'"))?;
    let Some(TypeValue::TensorType(tt)) = input.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(format!("{path}: --const {name}: not a tensor input").into());
    };
    let dtype = m4c_compiler::onnx::dtype_from_onnx(tt.elem_type)
        .map_err(|e| format!("{path}: --const {name}: {e}"))?;
    let dims = tt.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or(&[]);
    let shape = dims
        .iter()
        .map(|d| match d.value {
            Some(m4c_compiler::onnx::pb::tensor_shape_proto::dimension::Value::DimValue(n))
                if n >= 0 =>
            {
                Ok(n as usize)
            }
            _ => Err(format!(
                "{path}: --const {name}: the input has a symbolic or invalid dimension"
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((dtype, shape))
}

/// `value` (comma-separated) as a tensor of `dtype` and `shape`.
fn const_tensor(name: &str, value: &str, dtype: DType, shape: &[usize]) -> CliResult<Tensor> {
    if !matches!(dtype, DType::I64 | DType::I32 | DType::I8 | DType::Bool) {
        return Err(format!(
            "--const {name}: the input is {dtype}; only integer and bool inputs can be pinned"
        )
        .into());
    }
    let items: Vec<&str> = value.split(',').map(str::trim).collect();
    let count: usize = shape.iter().product();
    if items.len() != count {
        return Err(format!(
            "--const {name}: {} value(s) given, the input has shape {shape:?} ({count} element(s))",
            items.len()
        )
        .into());
    }
    let bad = |v: &str| format!("--const {name}: '{v}' is not a {dtype} value");
    let mut bytes = Vec::with_capacity(dtype.storage_bytes(count));
    for v in items {
        match dtype {
            DType::I64 => bytes.extend(v.parse::<i64>().map_err(|_| bad(v))?.to_le_bytes()),
            DType::I32 => bytes.extend(v.parse::<i32>().map_err(|_| bad(v))?.to_le_bytes()),
            DType::I8 => bytes.extend(v.parse::<i8>().map_err(|_| bad(v))?.to_le_bytes()),
            DType::Bool => bytes.push(match v {
                "true" | "1" => 1,
                "false" | "0" => 0,
                _ => return Err(bad(v).into()),
            }),
            other => {
                return Err(format!(
                "--const {name}: the input is {other}; only integer and bool inputs can be pinned"
            )
                .into())
            }
        }
    }
    Ok(Tensor::from_bytes(dtype, shape, bytes))
}

/// A model as the commands take it: an ONNX file, or an IR file written
/// by `m4c opt -o` (already lowered and optimised).
pub enum Model {
    Onnx(Box<OnnxModel>),
    /// An IR file, read and verified once when opened.
    Ir {
        path: PathBuf,
        graph: Box<Graph>,
    },
}

impl Model {
    /// Opens `path`: `.ir` files by extension, anything else as ONNX.
    pub fn open(path: &Path) -> CliResult<Model> {
        if ir_file::is_ir_file(path) {
            Ok(Model::Ir {
                path: path.to_path_buf(),
                graph: Box::new(ir_file::load(path)?),
            })
        } else {
            let progress = Progress::spinner(format!("loading {}", path.display()));
            let model = OnnxModel::load(path)?;
            progress.finish();
            Ok(Model::Onnx(Box::new(model)))
        }
    }

    /// True for an IR file (which `--no-opt` and the optimiser leave as is:
    /// it is optimised already).
    pub fn is_ir(&self) -> bool {
        matches!(self, Model::Ir { .. })
    }

    /// The names of the inputs a caller feeds: for ONNX the graph inputs
    /// that are neither initializers nor `pinned`; for IR the graph's.
    pub fn input_names<'a>(&self, pinned: impl Iterator<Item = &'a str>) -> CliResult<Vec<String>> {
        match self {
            Model::Onnx(m) => {
                let g = m.graph();
                let pinned: Vec<&str> = pinned.collect();
                let inits: std::collections::HashSet<&str> =
                    g.initializer.iter().map(|t| t.name.as_str()).collect();
                Ok(g.input
                    .iter()
                    .map(|i| i.name.as_str())
                    .filter(|n| !inits.contains(n) && !pinned.contains(n))
                    .map(String::from)
                    .collect())
            }
            Model::Ir { graph: g, .. } => {
                Ok(g.inputs.iter().map(|&i| g.value(i).name.clone()).collect())
            }
        }
    }

    /// The names callers know the outputs by (ONNX: the graph's declared
    /// outputs, which an inlined `If` branch may name differently inside
    /// the IR), in output order; `None` for IR files, whose output values
    /// carry their names.
    pub fn output_names(&self) -> Option<Vec<String>> {
        match self {
            Model::Onnx(m) => Some(m.graph().output.iter().map(|o| o.name.clone()).collect()),
            Model::Ir { .. } => None,
        }
    }

    /// Lowers the model (an IR file is read and verified); fails with
    /// every unsupported node listed.
    pub fn lower(&self, opts: &LowerOptions) -> CliResult<Graph> {
        let report = self.lower_report(opts)?;
        match report.graph {
            Some(g) => Ok(g),
            None => Err(m4c_compiler::FrontendError::Unsupported {
                path: self.path().to_path_buf(),
                nodes: report.unsupported,
            }
            .into()),
        }
    }

    /// Lowers the model and reports what does not lower.
    pub fn lower_report(&self, opts: &LowerOptions) -> CliResult<LowerReport> {
        let progress = Progress::spinner(format!("lowering {}", self.path().display()));
        let report = match self {
            Model::Onnx(m) => lower_report(m, opts)?,
            Model::Ir { graph, .. } => {
                let g = Graph::clone(graph);
                LowerReport {
                    ir_ops: m4c_compiler::lower::ir_op_counts(&g),
                    graph: Some(g),
                    unsupported: vec![],
                    dims: Default::default(),
                }
            }
        };
        progress.finish();
        Ok(report)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        match self {
            Model::Onnx(m) => &m.path,
            Model::Ir { path, .. } => path,
        }
    }
}

/// The optimiser switch of commands that optimise by default.
#[derive(clap::Args, Clone, Debug)]
pub struct OptSwitch {
    /// Skip the e-graph optimiser (LoRA policy, layout, recognition,
    /// fusion); by default the graph is optimised for the backend's cost
    /// model before code generation.
    #[arg(long)]
    pub no_opt: bool,
}

impl OptSwitch {
    /// `graph` optimised for `cost` (unless `--no-opt`, or the model is an
    /// IR file, which `m4c opt` optimised already); `keep_adapter_sites`
    /// keeps every MatMul an adapter may attach to (firmware modules).
    pub fn apply(
        &self,
        model: &Model,
        graph: Graph,
        cost: &m4c_compiler::opt::Roofline,
        keep_adapter_sites: bool,
    ) -> CliResult<Graph> {
        if self.no_opt || model.is_ir() {
            return Ok(graph);
        }
        let progress = Progress::spinner(format!("optimising {}", model.path().display()));
        let opts = m4c_compiler::opt::OptOptions {
            keep_adapter_sites,
            ..Default::default()
        };
        let (g, _) = m4c_compiler::opt::optimise(&graph, &opts, cost)?;
        progress.finish();
        Ok(g)
    }
}

/// A model path argument.
pub type ModelPath = PathBuf;

/// Loads and lowers the model at `path` with its inputs: the arrays of
/// `MODEL.inputs.npz` beside it (whose shapes pin symbolic dimensions) when
/// that file exists, else deterministic synthetic inputs (symbolic
/// dimensions 1 unless `--dim`); and where the inputs came from (the
/// file's name, or `synthetic`). What `partition` and `npu explore` run.
pub fn load_with_inputs(
    path: &Path,
    dims: &DimArgs,
) -> CliResult<(Model, Graph, Vec<m4c_ops::Value>, String)> {
    let model = Model::open(path)?;
    let mut opts = dims.options(&model, Some(1))?;
    let file = inputs_beside(path);
    let mut given = vec![];
    if let Some(file) = &file {
        let arrays = m4c_runtime::read_npz(file)?;
        for name in model.input_names(dims.pinned())? {
            let v = super::run::lookup(&arrays, &name)
                .ok_or_else(|| format!("{}: no array for model input '{name}'", file.display()))?;
            opts.input_shapes.insert(name.clone(), v.shape().to_vec());
            given.push(v.clone());
        }
    }
    let graph = model.lower(&opts)?;
    Ok(match file {
        Some(file) => {
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            (model, graph, given, name.into_owned())
        }
        None => {
            let signature = m4c_runtime::exec::Signature::of(&graph);
            let feeds = super::bench::synthetic_inputs(&signature.inputs)?;
            (model, graph, feeds, "synthetic".into())
        }
    })
}

/// `MODEL.inputs.npz` beside `model`, if it exists.
fn inputs_beside(model: &Path) -> Option<PathBuf> {
    let stem = model.file_stem()?.to_string_lossy();
    let file = model.with_file_name(format!("{stem}.inputs.npz"));
    file.is_file().then_some(file)
}
