//! Tasks: the paper's execution paths (§3.3, Fig. 4) over a firmware's
//! modules, described by a TOML manifest ([`manifest`]) and run by a
//! [`TaskRunner`], which attaches a task's adapter, runs the modules on the
//! path with the glue between them and times each module.

pub mod manifest;
mod paths;
pub mod tokenizer;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use m4c_ops::Value;

use crate::adapter::{AdapterBundle, AdapterError};
use crate::bundle::{Bundle, BundleError};
use crate::exec::{load_module, ExecError, LoadError, LoadOptions, ModuleExecutor};
use crate::generate::GenError;
pub use manifest::{Task, TaskManifest, TaskPath};

/// Why a task could not run.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{path}: {msg}")]
    Manifest { path: String, msg: String },
    #[error("no task `{name}` in the manifest (tasks: {known})")]
    UnknownTask { name: String, known: String },
    #[error("task `{task}`: module `{module}` is not in the firmware (modules: {known})")]
    UnknownModule {
        task: String,
        module: String,
        known: String,
    },
    #[error("task `{task}`: {msg}")]
    Input { task: String, msg: String },
    #[error("task `{task}`: {source}")]
    Adapter { task: String, source: AdapterError },
    #[error("task `{task}`: {source}")]
    Load { task: String, source: LoadError },
    #[error("task `{task}`: {source}")]
    Exec { task: String, source: ExecError },
    #[error("task `{task}`: {source}")]
    Generate { task: String, source: GenError },
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

/// What a task produced.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum TaskOutput {
    /// Path-2: the best label, every label's cosine similarity (best
    /// first) and the input's embedding.
    Classification {
        label: String,
        scores: Vec<(String, f32)>,
        embedding: Vec<f32>,
    },
    /// Paths 1 and 3: the tokens fed (prefix from the projection, then the
    /// prompt) and the new tokens.
    Generation {
        prefix_tokens: Vec<i64>,
        prompt_tokens: Vec<i64>,
        tokens: Vec<i64>,
        prompt_ms: f64,
        decode_tokens_per_s: f64,
        cache_bytes: usize,
        /// Why generation stopped (a full context is never silent).
        stopped: crate::generate::Stop,
    },
    /// Path-4: the module's outputs.
    Tensors { outputs: Vec<NamedTensor> },
}

/// A tensor in a result: name, shape, values as f32.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Time spent in one module during a task.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModuleTime {
    pub module: String,
    /// What ran it: `reference` (the interpreter) or a device's name
    /// (`cpu`: compiled code).
    pub engine: String,
    pub calls: usize,
    pub ms: f64,
}

/// A task's result and the time per module.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TaskResult {
    pub task: String,
    pub path: u8,
    pub adapter: Option<String>,
    pub output: TaskOutput,
    pub modules: Vec<ModuleTime>,
}

/// The inputs a task run takes.
#[derive(Clone, Debug, Default)]
pub struct TaskInput {
    /// Arrays keyed by the first module's input names (paths 1, 2, 4).
    pub arrays: BTreeMap<String, Value>,
    /// Prompt token ids (path 3; appended after the prefix on path 1).
    pub tokens: Vec<i64>,
}

/// Runs the tasks of one manifest on one firmware. Shares the firmware's
/// map among every module and adapter it loads; `Send + Sync`, so tasks can
/// run concurrently from several threads.
pub struct TaskRunner {
    firmware: Arc<Bundle>,
    manifest: TaskManifest,
    load: LoadOptions,
}

/// Module calls and time collected while a task runs.
#[derive(Default)]
struct Clock(Mutex<BTreeMap<String, (usize, Duration, String)>>);

/// An executor whose every call is counted and timed into a [`Clock`].
struct Timed {
    inner: Arc<dyn ModuleExecutor>,
    clock: Arc<Clock>,
}

impl ModuleExecutor for Timed {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn signature(&self) -> &crate::exec::Signature {
        self.inner.signature()
    }
    fn arena(&self) -> Option<&crate::exec::ArenaPlan> {
        self.inner.arena()
    }
    fn backend(&self) -> &str {
        self.inner.backend()
    }
    fn run(&self, inputs: &[Value]) -> Result<Vec<Value>, ExecError> {
        let start = Instant::now();
        let out = self.inner.run(inputs);
        let mut times = self.clock.0.lock().unwrap_or_else(|e| e.into_inner());
        let e = times.entry(self.name().to_string()).or_default();
        e.0 += 1;
        e.1 += start.elapsed();
        e.2 = self.inner.backend().to_string();
        out
    }
}

impl TaskRunner {
    /// A runner for `manifest` on `firmware`.
    pub fn new(firmware: Arc<Bundle>, manifest: TaskManifest) -> TaskRunner {
        TaskRunner {
            firmware,
            manifest,
            load: LoadOptions::default(),
        }
    }

    /// Loads modules with `opts` (engine, threads, trusted keys).
    pub fn with_load_options(mut self, opts: LoadOptions) -> TaskRunner {
        self.load = opts;
        self
    }

    /// The manifest.
    pub fn manifest(&self) -> &TaskManifest {
        &self.manifest
    }

    /// Runs task `name` on `input`.
    pub fn run(&self, name: &str, input: &TaskInput) -> Result<TaskResult, TaskError> {
        let task = self
            .manifest
            .tasks
            .get(name)
            .ok_or_else(|| TaskError::UnknownTask {
                name: name.to_string(),
                known: self
                    .manifest
                    .tasks
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let adapter = task
            .adapter
            .as_ref()
            .map(|p| {
                let p = self.manifest.resolve(p).map_err(|e| TaskError::Input {
                    task: name.to_string(),
                    msg: format!("adapter {e}"),
                })?;
                AdapterBundle::open(&p).map_err(|source| TaskError::Adapter {
                    task: name.to_string(),
                    source,
                })
            })
            .transpose()?;
        let clock = Arc::new(Clock::default());
        let ctx = paths::Context {
            task: name,
            runner: self,
            adapter: adapter.as_ref(),
            clock: &clock,
        };
        let output = ctx.run(&task.path, input)?;
        let times = std::mem::take(&mut *clock.0.lock().unwrap_or_else(|e| e.into_inner()));
        let path = match task.path {
            TaskPath::EncoderBackbone { .. } => 1,
            TaskPath::ZeroShot { .. } => 2,
            TaskPath::Text { .. } => 3,
            TaskPath::Single { .. } => 4,
        };
        Ok(TaskResult {
            task: name.to_string(),
            path,
            adapter: task.adapter.as_ref().map(|p| p.display().to_string()),
            output,
            modules: times
                .into_iter()
                .map(|(module, (calls, d, engine))| ModuleTime {
                    module,
                    engine,
                    calls,
                    ms: d.as_secs_f64() * 1e3,
                })
                .collect(),
        })
    }

    /// The executor of `module`, with the task's adapter attached when the
    /// adapter was built for that module.
    fn executor(
        &self,
        task: &str,
        module: &str,
        adapter: Option<&AdapterBundle>,
    ) -> Result<Arc<dyn ModuleExecutor>, TaskError> {
        let fw = &self.firmware;
        if !fw.modules().any(|m| m == module) {
            return Err(TaskError::UnknownModule {
                task: task.to_string(),
                module: module.to_string(),
                known: fw.modules().collect::<Vec<_>>().join(", "),
            });
        }
        let adapters: Vec<&AdapterBundle> = adapter
            .filter(|a| a.info().modules.iter().any(|m| m == module))
            .into_iter()
            .collect();
        // Compiled code when the firmware has code this host runs and no
        // adapter is attached; the interpreter otherwise.
        let loaded =
            load_module(fw, module, &adapters, &self.load).map_err(|source| TaskError::Load {
                task: task.to_string(),
                source,
            })?;
        Ok(loaded.executor)
    }
}

/// Opens a manifest and a firmware and checks every module the manifest
/// names exists (so a typo is reported before anything runs).
pub fn open(firmware: &Path, manifest: &Path) -> Result<TaskRunner, TaskError> {
    let fw = Arc::new(Bundle::open(firmware)?);
    let m = TaskManifest::load(manifest)?;
    for (name, task) in &m.tasks {
        for module in task.path.modules() {
            if fw.module_interface(module).is_err() {
                return Err(TaskError::UnknownModule {
                    task: name.clone(),
                    module: module.to_string(),
                    known: fw.modules().collect::<Vec<_>>().join(", "),
                });
            }
        }
    }
    Ok(TaskRunner::new(fw, m))
}

impl TaskPath {
    /// The firmware modules on this path.
    pub fn modules(&self) -> Vec<&str> {
        match self {
            TaskPath::EncoderBackbone {
                encoder, decoder, ..
            } => vec![&encoder.module, decoder],
            TaskPath::ZeroShot {
                encoder,
                text_encoder,
                ..
            } => vec![&encoder.module, &text_encoder.module],
            TaskPath::Text { decoder, .. } => vec![decoder],
            TaskPath::Single { module } => vec![module],
        }
    }
}
