//! Options shared by the commands that read an ONNX model.

use std::collections::HashMap;
use std::path::PathBuf;

use m4c_compiler::LowerOptions;

/// How to fix the model's symbolic dimensions.
#[derive(clap::Args, Clone, Debug)]
pub struct DimArgs {
    /// Value of a symbolic input dimension, e.g. `--dim batch=1 --dim seq=16`.
    #[arg(long = "dim", value_name = "NAME=N", value_parser = parse_dim)]
    pub dims: Vec<(String, usize)>,
}

fn parse_dim(s: &str) -> Result<(String, usize), String> {
    let (k, v) = s.split_once('=').ok_or("expected NAME=N")?;
    let n = v
        .parse()
        .map_err(|_| format!("'{v}' is not a dimension size"))?;
    Ok((k.to_string(), n))
}

impl DimArgs {
    /// Lowering options with these dims bound (and `default` for the rest).
    pub fn options(&self, default: Option<usize>) -> LowerOptions {
        LowerOptions {
            dims: self.dims.iter().cloned().collect::<HashMap<_, _>>(),
            default_dim: default,
            ..Default::default()
        }
    }
}

/// A model path argument.
pub type ModelPath = PathBuf;
