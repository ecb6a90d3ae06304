//! Choosing what runs a bundle's module: its compiled code when the bundle
//! has code this host can run, is signed by a trusted key and no adapter
//! changes the graph (a module built with LoRA slots takes adapters as
//! slot inputs, so its code runs with any), the reference interpreter
//! otherwise. Code that is data for a simulator (the NPU's programs) runs
//! from an untrusted bundle too, its native parts (CPU fallback) on the
//! interpreter ([`super::device::Device::load_without_native`]).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use m4c_ir::Graph;

use super::{device, CodeLoadError, Interpreter, ModuleExecutor, Signature};
use crate::adapter::slots::{slots_of, SlottedModule};
use crate::adapter::{firmware_module, shared_module, AdapterBundle, AdapterError};
use crate::bundle::sign::TrustedKeys;
use crate::bundle::{Bundle, ModuleCode};

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
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub engine: Engine,
    /// Threads compiled code spreads GEMMs and parallel loops over.
    pub threads: usize,
    /// The keys a bundle must be signed by for its native code to be
    /// loaded (`docs/SECURITY.md`); none by default: code is refused.
    pub trusted: TrustedKeys,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            engine: Engine::Auto,
            threads: 1,
            trusted: TrustedKeys::none(),
        }
    }
}

/// A loaded module and, when [`Engine::Auto`] fell back to the
/// interpreter although the bundle has code for it (for the module, or
/// for some of its parts: an NPU module's CPU-fallback parts), why.
pub struct Loaded {
    pub executor: Arc<dyn ModuleExecutor>,
    pub fallback: Option<String>,
}

/// Why a module could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    #[error("{}: module `{module}`: {reason}", bundle.display())]
    NoCode {
        bundle: std::path::PathBuf,
        module: String,
        reason: String,
    },
}

/// A firmware's module graphs, each taken from the bundle once and shared
/// (`Arc`) by every executor loaded through [`load_shared`]: N adapters of
/// one module cost one graph plus N factor tables.
pub struct BaseGraphs<'fw> {
    fw: &'fw Bundle,
    graphs: Mutex<HashMap<String, Arc<Graph>>>,
}

impl<'fw> BaseGraphs<'fw> {
    /// No module taken yet.
    pub fn new(fw: &'fw Bundle) -> BaseGraphs<'fw> {
        BaseGraphs {
            fw,
            graphs: Mutex::default(),
        }
    }

    /// The firmware.
    pub fn firmware(&self) -> &'fw Bundle {
        self.fw
    }

    /// `module`'s graph without its weights stored only as packed code
    /// panels ([`Bundle::module_interface`]): enough for its signature and
    /// its compiled code, and never a copy of a weight.
    pub fn interface(&self, module: &str) -> Result<Graph, AdapterError> {
        self.fw
            .module_interface(module)
            .map_err(|source| AdapterError::Bundle {
                path: "firmware".into(),
                source,
            })
    }

    /// `module`'s base graph, shared: every weight, as the interpreter
    /// runs it.
    pub fn get(&self, module: &str) -> Result<Arc<Graph>, AdapterError> {
        let mut graphs = self.graphs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = graphs.get(module) {
            return Ok(g.clone());
        }
        let g = Arc::new(firmware_module(self.fw, module)?);
        graphs.insert(module.to_string(), g.clone());
        Ok(g)
    }
}

/// Loads `module` of `fw` with `adapters` attached (in order); see
/// [`load_shared`] (here nothing is shared with other loads).
pub fn load_module(
    fw: &Bundle,
    module: &str,
    adapters: &[&AdapterBundle],
    opts: &LoadOptions,
) -> Result<Loaded, LoadError> {
    load_shared(&BaseGraphs::new(fw), module, adapters, opts)
}

/// Loads `module` of `bases`' firmware with `adapters` attached (in order),
/// sharing its base graph with every other load through `bases`.
///
/// Compiled code is the base module's: with an adapter attached (keep or
/// fold, both change the computation) the adapted IR runs on the
/// interpreter, unless the module has LoRA slots: then the adapters are
/// bound to them ([`SlottedModule`]) whichever engine runs. Native code is loaded only from a bundle signed by a key
/// of `opts.trusted` (the signature itself was verified when the bundle
/// was opened). Then the first code entry this host can run is loaded; if
/// there is none or loading fails, [`Engine::Auto`] falls back to the
/// interpreter and [`Engine::Compiled`] is an error.
pub fn load_shared(
    bases: &BaseGraphs,
    module: &str,
    adapters: &[&AdapterBundle],
    opts: &LoadOptions,
) -> Result<Loaded, LoadError> {
    let fw = bases.firmware();
    let signature = Signature::of(&bases.interface(module)?);
    let slots = slots_of(&signature);
    if !slots.is_empty() {
        for a in adapters {
            a.check_binding(fw)?;
        }
        let loaded = load_unslotted(bases, module, signature, &[], opts)?;
        let executor = Arc::new(SlottedModule::new(loaded.executor, slots, adapters)?);
        return Ok(Loaded {
            executor,
            fallback: loaded.fallback,
        });
    }
    load_unslotted(bases, module, signature, adapters, opts)
}

/// [`load_shared`] for a module without slots (or its slots left as
/// inputs): the compiled code without adapters, else the interpreter.
fn load_unslotted(
    bases: &BaseGraphs,
    module: &str,
    signature: Signature,
    adapters: &[&AdapterBundle],
    opts: &LoadOptions,
) -> Result<Loaded, LoadError> {
    let fw = bases.firmware();
    // The whole base graph (unpacking weights the bundle stores only in
    // the code's panels) is taken only for the interpreter; adapters are
    // checked first in any case.
    let adapted = match adapters {
        [] => None,
        _ => Some(shared_module(fw, module, bases.get(module)?, adapters)?),
    };
    let interpret = |fallback: Option<String>| -> Result<Loaded, LoadError> {
        let adapted = match &adapted {
            Some(a) => a.clone(),
            None => shared_module(fw, module, bases.get(module)?, &[])?,
        };
        Ok(Loaded {
            executor: Arc::new(Interpreter::shared(module, adapted)?),
            fallback,
        })
    };
    if opts.engine == Engine::Reference {
        return interpret(None);
    }
    let codes = fw.code(module);
    let loaded = if codes.is_empty() {
        Err("the bundle has no compiled code for it (built with --target reference)".to_string())
    } else if !adapters.is_empty() {
        Err("an adapter is attached and the compiled code is the base module's".to_string())
    } else if let Err(why) = check_trust(fw, &opts.trusted) {
        match load_without_native(module, codes, &signature, opts.threads, &why) {
            Some(loaded) => loaded.map_err(|e| e.to_string()),
            None => Err(why),
        }
    } else {
        let mut why = vec![];
        let mut loaded = None;
        for code in codes {
            match load_code(module, code, signature.clone(), opts.threads) {
                Ok(executor) => {
                    loaded = Some(executor);
                    break;
                }
                Err(e) => why.push(e.to_string()),
            }
        }
        loaded.ok_or_else(|| why.join("; "))
    };
    // Compiled code may leave parts to the interpreter (an NPU module's
    // CPU-fallback parts): `auto` says so, `compiled` refuses it.
    let reason = match loaded {
        Ok(executor) => match (interpreted_parts(executor.as_ref()), opts.engine) {
            (Some((n, why)), Engine::Compiled) => format!(
                "{n} CPU-fallback part(s) would run on the reference interpreter (--engine compiled runs compiled code only): {why}"
            ),
            (interpreted, _) => {
                return Ok(Loaded {
                    executor,
                    fallback: interpreted.map(|(n, why)| {
                        format!(
                            "{}: module `{module}`: {n} CPU-fallback part(s) run on the reference interpreter: {why}",
                            fw.path().display()
                        )
                    }),
                })
            }
        },
        Err(reason) => reason,
    };
    match opts.engine {
        Engine::Compiled => Err(LoadError::NoCode {
            bundle: fw.path().to_path_buf(),
            module: module.to_string(),
            reason,
        }),
        _ if codes.is_empty() => interpret(None),
        _ => interpret(Some(format!(
            "{}: module `{module}` runs on the reference interpreter: {reason}",
            fw.path().display()
        ))),
    }
}

/// The first of `codes` whose device runs what is not native code
/// without the native code (refused: `why`); `None` when no device does.
fn load_without_native(
    module: &str,
    codes: &[ModuleCode],
    signature: &Signature,
    threads: usize,
    why: &str,
) -> Option<Result<Arc<dyn ModuleExecutor>, CodeLoadError>> {
    codes.iter().find_map(|code| {
        let dev = device::lookup(code.backend())?;
        dev.load_without_native(module, code, signature.clone(), threads, why)
    })
}

/// How many parts of a loaded module run on the interpreter, and why
/// (each reason once); `None` when all run compiled code.
fn interpreted_parts(executor: &dyn ModuleExecutor) -> Option<(usize, String)> {
    let groups = executor.as_npu()?.interpreted_parts();
    let n = groups.iter().map(|(_, parts)| parts.len()).sum();
    let why: Vec<&str> = groups.iter().map(|(why, _)| *why).collect();
    (n > 0).then(|| (n, why.join("; ")))
}

/// Whether `fw`'s native code may be loaded: signed by a trusted key.
fn check_trust(fw: &Bundle, trusted: &TrustedKeys) -> Result<(), String> {
    match fw.signer() {
        None => Err("its native code is refused: the bundle is not signed \
             (sign it with `m4c firmware build --sign-key KEY`)"
            .to_string()),
        Some(key) if !trusted.trusts(key) => Err(format!(
            "its native code is refused: the bundle is signed by key {}, which is not \
             trusted (--trust-key KEY.pub or the trust directory)",
            key.fingerprint()
        )),
        Some(_) => Ok(()),
    }
}

/// Loads `code` of module `name` through its backend's device: the one
/// path from compiled code to an executor, for bundles and for code just
/// compiled in the same process.
pub fn load_code(
    name: &str,
    code: &ModuleCode,
    signature: Signature,
    threads: usize,
) -> Result<Arc<dyn ModuleExecutor>, CodeLoadError> {
    let dev = device::lookup(code.backend())
        .ok_or_else(|| CodeLoadError::NoDevice(code.backend().into()))?;
    dev.runs_here(&code.entry().target)
        .map_err(|reason| CodeLoadError::NotRunnable {
            target: code.entry().target.clone(),
            reason,
        })?;
    dev.load(name, code, signature, threads)
}
