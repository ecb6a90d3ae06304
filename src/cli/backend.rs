//! Choosing a backend on the command line and running a graph on it
//! through the one compile → load path (`m4c_backends::prepare`:
//! `CodeGenerator::compile` → the artifact's sections in memory → the
//! runtime's device → a `ModuleExecutor`).

use std::sync::Arc;

use m4c_compiler::backend::{Artifact, CodeGenerator, CompileRequest};
use m4c_compiler::partition::OpSupport;
use m4c_ir::{Graph, Node};
use m4c_runtime::bundle::format::REFERENCE_BACKEND;
use m4c_runtime::exec::ModuleExecutor;

use super::progress::Progress;
use super::CliResult;

/// Which backend compiles and runs a model.
#[derive(clap::Args, Clone, Debug)]
pub struct BackendArgs {
    /// Backend (see `m4c backends`): `reference` (the interpreter) or a
    /// code generator such as `cpu`; `NAME:TARGET` also names the target
    /// (`gpu:wgpu`, `gpu:cuda`).
    #[arg(long, default_value = REFERENCE_BACKEND, value_parser = parse_backend)]
    pub backend: String,
    /// The backend's target (CPU: host, x86_64, x86_64-avx512,
    /// x86_64-avx2; aarch64 only cross-compiles, with `m4c compile`).
    #[arg(long, value_name = "TARGET")]
    pub target: Option<String>,
    /// Tuning for the target (CPU: the LLVM CPU name, e.g. znver4;
    /// validated before use).
    #[arg(long, value_name = "CPU")]
    pub cpu: Option<String>,
    /// Threads the compiled code may use (at most the host's cores).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// A registered backend's name, optionally with a target
/// (`NAME[:TARGET]`), for clap: unknown names list the known.
pub fn parse_backend(s: &str) -> Result<String, String> {
    let (name, target) = split_backend(s);
    let name = m4c_backends::lookup(name)
        .map(|b| b.name().to_string())
        .map_err(|e| e.to_string())?;
    Ok(match target {
        Some("") => return Err(format!("`{s}`: no target after `:`")),
        Some(t) => format!("{name}:{t}"),
        None => name,
    })
}

/// `NAME[:TARGET]` split into the backend name and the target.
pub fn split_backend(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once(':') {
        Some((name, target)) => (name, Some(target)),
        None => (spec, None),
    }
}

/// The target of `--backend NAME:TARGET` and `--target`: either, or both
/// when they agree.
pub fn merge_target(spec: &str, target: Option<String>) -> CliResult<Option<String>> {
    match (split_backend(spec).1, target) {
        (Some(a), Some(b)) if a != b => {
            Err(format!("--backend {spec} and --target {b} name different targets").into())
        }
        (Some(a), _) => Ok(Some(a.to_string())),
        (None, t) => Ok(t),
    }
}

impl BackendArgs {
    /// The chosen code generator.
    pub fn generator(&self) -> &'static dyn CodeGenerator {
        m4c_backends::lookup(split_backend(&self.backend).0).expect("validated by clap")
    }

    /// The compile request these options make.
    pub fn request(&self) -> CliResult<CompileRequest> {
        compile_request(
            split_backend(&self.backend).0,
            merge_target(&self.backend, self.target.clone())?,
            self.cpu.clone(),
            threads(self.threads)?,
        )
    }

    /// Compiles `graph` (named `name`) and loads it on this host
    /// ([`m4c_backends::prepare`]), with a spinner while it compiles.
    pub fn prepare(
        &self,
        name: &str,
        graph: Graph,
    ) -> CliResult<(Arc<dyn ModuleExecutor>, Option<Artifact>)> {
        let request = self.request()?;
        let progress = Progress::spinner(format!("compiling for {}", self.backend));
        let prepared = m4c_backends::prepare(self.generator(), name, graph, &request)?;
        progress.finish();
        Ok(prepared)
    }
}

/// The compile request of `--backend`, `--target` and `--cpu`: the
/// reference backend (the IR itself) takes neither a target nor a tuning.
pub fn compile_request(
    backend: &str,
    target: Option<String>,
    tuning: Option<String>,
    threads: usize,
) -> CliResult<CompileRequest> {
    if backend == REFERENCE_BACKEND && (target.is_some() || tuning.is_some()) {
        return Err("--target and --cpu apply to compiled backends (e.g. --backend cpu)".into());
    }
    Ok(CompileRequest {
        target,
        tuning,
        threads,
    })
}

/// `--threads`, checked against the thread pool's limits
/// (`m4c_cpu_device::check_threads`) before anything is compiled or
/// spawned, so a typo such as 100000 is one line, not a fork bomb.
pub fn threads(n: usize) -> CliResult<usize> {
    Ok(m4c_cpu_device::check_threads(n)?)
}

/// What a partition or coverage target takes: `npu[:PRESET|CONFIG]` (the
/// NPU's op set, named with its checked machine config, default
/// edge-small) or a registered backend, whose refusals decide.
pub fn op_support(target: &str) -> CliResult<Box<dyn OpSupport>> {
    let (name, spec) = target.split_once(':').unwrap_or((target, ""));
    match name {
        "npu" => {
            let config = m4c_npu::config::MachineConfig::load(match spec {
                "" => "edge-small",
                s => s,
            })?;
            Ok(Box::new(NamedNpu(format!("npu:{}", config.name))))
        }
        _ if spec.is_empty() => match m4c_backends::lookup(name) {
            Ok(backend) => Ok(Box::new(Refusals(backend))),
            Err(e) => Err(format!("{e}; or npu[:PRESET|CONFIG]").into()),
        },
        _ => Err(format!("unknown target `{target}` (npu[:PRESET|CONFIG] or a backend)").into()),
    }
}

/// The NPU's support constraints (`m4c_npu_codegen::constraints`) under
/// the name of the target as given (with its machine configuration), so
/// that reports say which NPU they are for.
struct NamedNpu(String);

impl OpSupport for NamedNpu {
    fn name(&self) -> &str {
        &self.0
    }

    fn supports(&self, g: &Graph, node: &Node) -> bool {
        m4c_npu_codegen::constraints::refuse(g, node).is_none()
    }

    fn refusal(&self, g: &Graph, node: &Node) -> Option<String> {
        m4c_npu_codegen::constraints::refuse(g, node)
    }
}

/// A registered backend as an [`OpSupport`]: it supports what it does not
/// refuse.
struct Refusals(&'static dyn CodeGenerator);

impl OpSupport for Refusals {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn supports(&self, g: &Graph, node: &Node) -> bool {
        self.0.refuse(g, node).is_none()
    }

    fn refusal(&self, g: &Graph, node: &Node) -> Option<String> {
        self.0.refuse(g, node)
    }
}
