//! Choosing what runs a bundle's module: its compiled code when the bundle
//! has code this host can run and no adapter changes the graph, the
//! reference interpreter otherwise.

use std::str::FromStr;
use std::sync::Arc;

use super::{CompiledModule, Interpreter, ModuleExecutor, Signature};
use crate::adapter::{adapted_module, AdapterBundle, AdapterError};
use crate::bundle::Bundle;

/// Which engine runs a bundle's module.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Engine {
    /// Compiled code when usable, else the interpreter ([`Loaded::fallback`]
    /// says why).
    #[default]
    Auto,
    /// Compiled code or an error.
    Compiled,
    /// The reference interpreter on the module's IR.
    Reference,
}

impl FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Engine::Auto),
            "compiled" => Ok(Engine::Compiled),
            "reference" => Ok(Engine::Reference),
            other => Err(format!(
                "unknown engine '{other}' (known: auto, compiled, reference)"
            )),
        }
    }
}

/// How to load a module.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub engine: Engine,
    /// Threads compiled code spreads GEMMs and parallel loops over.
    pub threads: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            engine: Engine::Auto,
            threads: 1,
        }
    }
}

/// A loaded module and, when [`Engine::Auto`] fell back to the
/// interpreter although the bundle has code for it, why.
pub struct Loaded {
    pub executor: Arc<dyn ModuleExecutor>,
    pub fallback: Option<String>,
}

/// Why a module could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    #[error("module `{module}`: {reason}")]
    NoCode { module: String, reason: String },
}

/// Loads `module` of `fw` with `adapters` attached (in order).
///
/// Compiled code is the base module's: with an adapter attached (keep or
/// fold, both change the computation) the adapted IR runs on the
/// interpreter. Without adapters the first code entry this host can run
/// is loaded; if there is none or loading fails, [`Engine::Auto`] falls
/// back to the interpreter and [`Engine::Compiled`] is an error.
pub fn load_module(
    fw: &Bundle,
    module: &str,
    adapters: &[&AdapterBundle],
    opts: &LoadOptions,
) -> Result<Loaded, LoadError> {
    let graph = adapted_module(fw, module, adapters)?;
    let interpret = |fallback: Option<String>| Loaded {
        executor: Arc::new(Interpreter::new(module, graph.clone())),
        fallback,
    };
    if opts.engine == Engine::Reference {
        return Ok(interpret(None));
    }
    let codes = fw.code(module);
    let reason = if codes.is_empty() {
        "the bundle has no compiled code for it (built with --target reference)".to_string()
    } else if !adapters.is_empty() {
        "an adapter is attached and the compiled code is the base module's".to_string()
    } else {
        let mut why = vec![];
        for code in codes {
            match CompiledModule::load(module, code, Signature::of(&graph), opts.threads) {
                Ok(c) => {
                    return Ok(Loaded {
                        executor: Arc::new(c),
                        fallback: None,
                    })
                }
                Err(e) => why.push(e.to_string()),
            }
        }
        why.join("; ")
    };
    match opts.engine {
        Engine::Compiled => Err(LoadError::NoCode {
            module: module.to_string(),
            reason,
        }),
        _ if codes.is_empty() => Ok(interpret(None)),
        _ => Ok(interpret(Some(format!(
            "module `{module}` runs on the reference interpreter: {reason}"
        )))),
    }
}
