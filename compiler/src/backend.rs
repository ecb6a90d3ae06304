//! The compile side of the backend seam: the one trait every code
//! generator implements ([`CodeGenerator`]), what it takes
//! ([`Capabilities`], [`Refusal`]) and what it gives ([`Artifact`]).
//!
//! The registry of implementations is the `m4c-backends` crate
//! (`lookup(name)`, `all()`); the runtime loads an artifact through the
//! device side of the seam (`m4c_runtime::exec::device`). A backend thus
//! plugs in at two places: its code generator here, its device loader
//! there. `docs/BACKENDS.md` is the recipe.

use m4c_ir::{DType, Graph, Node, OpKind};
use m4c_runtime::bundle::format::SectionKind;

use std::sync::Arc;

use crate::opt::{Roofline, Scheduler};

/// What a code generator takes: the IR operators and element types it
/// compiles. [`CodeGenerator::refuse`] has the per-node word (attributes,
/// ranks), with a reason.
#[derive(Clone, Debug)]
pub struct Capabilities {
    /// IR operators it has code for.
    pub ops: Vec<OpKind>,
    /// Element types its kernels compute on.
    pub dtypes: Vec<DType>,
}

impl Capabilities {
    /// Every IR operator on the given element types.
    pub fn every_op(dtypes: &[DType]) -> Capabilities {
        Capabilities {
            ops: OpKind::ALL.to_vec(),
            dtypes: dtypes.to_vec(),
        }
    }

    /// Why `node` of `g` is outside these capabilities, if it is: an
    /// operator without code, or an operand or result of an element type
    /// the kernels do not compute on.
    pub fn refuse(&self, g: &Graph, node: &Node) -> Option<String> {
        let kind = node.op.kind();
        if !self.ops.contains(&kind) {
            return Some(format!("no kernel for {}", kind.name()));
        }
        let values = node.inputs.iter().chain(std::iter::once(&node.output));
        values.map(|&v| g.value(v).ty.dtype).find_map(|dt| {
            (!self.dtypes.contains(&dt)).then(|| format!("{} on {dt} tensors", kind.name()))
        })
    }
}

/// A node a backend will not compile, and why (printed by `inspect`,
/// `partition` and `backends`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    /// Index of the node in the graph.
    pub node: usize,
    /// The name of the value it computes (the ONNX value name).
    pub value: String,
    /// The IR operator.
    pub op: &'static str,
    /// Why.
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} `{}`: {}", self.op, self.value, self.reason)
    }
}

/// How to compile: the target (backend-specific; `None` is the backend's
/// default, usually this host), a tuning name (the CPU backend's LLVM CPU
/// name) and the threads the loaded code may use.
#[derive(Clone, Debug, Default)]
pub struct CompileRequest {
    pub target: Option<String>,
    pub tuning: Option<String>,
    pub threads: usize,
}

/// One file of an artifact. Files with a [`SectionKind`] become bundle
/// sections of the module (`<module>.<target>`); the rest (an object file
/// for a cross target) are only written by `m4c compile`.
#[derive(Clone, Debug)]
pub struct ArtifactFile {
    /// The file name `m4c compile` writes.
    pub name: String,
    /// The bundle section it becomes, if any.
    pub section: Option<SectionKind>,
    pub bytes: Vec<u8>,
}

/// What a code generator produces for one graph: opaque files plus what
/// the bundle's manifest records about them.
#[derive(Clone, Debug)]
pub struct Artifact {
    /// The backend's registry name (`cpu`, ...).
    pub backend: String,
    /// The resolved target (e.g. `x86_64-avx512`): what a host must be to
    /// run the code.
    pub target: String,
    /// The resolved tuning (e.g. the LLVM CPU name `znver4`).
    pub tuning: String,
    /// Whether the code can be loaded on this host (a cross target gives
    /// an object file only).
    pub runnable: bool,
    pub files: Vec<ArtifactFile>,
    /// Figures about the compilation (kernels, arena, weights, time), as
    /// the backend names them; printed by `compile` and `bench`.
    pub stats: serde_json::Value,
}

impl Artifact {
    /// The bytes of the file that becomes section `kind`.
    pub fn section(&self, kind: SectionKind) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|f| f.section == Some(kind))
            .map(|f| f.bytes.as_slice())
    }
}

/// Why a backend could not compile a graph.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Nodes outside the backend's capabilities (the first is named; all
    /// are in the list).
    #[error(
        "backend `{backend}` cannot compile {} node(s){}",
        .refusals.len(),
        .refusals.first().map_or(String::new(), |r| format!("; first: {r}"))
    )]
    Refused {
        backend: &'static str,
        refusals: Vec<Refusal>,
    },
    /// The target or tuning is unknown or invalid.
    #[error("backend `{backend}`: {msg}")]
    Target { backend: &'static str, msg: String },
    /// Code generation failed.
    #[error("backend `{backend}`: {msg}")]
    Compile { backend: &'static str, msg: String },
}

/// A code generator: the one trait a backend implements on the compile
/// side (as cranelift's `TargetIsa`). Implementations are registered in
/// `m4c-backends`; everything target-specific stays behind it.
pub trait CodeGenerator: Send + Sync {
    /// The registry name (`--backend NAME`), also recorded in bundles.
    fn name(&self) -> &'static str;
    /// One line for `m4c backends`.
    fn description(&self) -> &'static str;
    /// The target strings `--target` accepts.
    fn targets(&self) -> Vec<String>;
    /// The operators and element types it compiles.
    fn capabilities(&self) -> Capabilities;
    /// Why this backend will not compile `node` of `g`, if it will not.
    /// The default checks [`Self::capabilities`]; backends add attribute
    /// and rank limits.
    fn refuse(&self, g: &Graph, node: &Node) -> Option<String> {
        self.capabilities().refuse(g, node)
    }
    /// Whether this host can execute code for `target` (`None`: the
    /// default target), with the reason when not.
    fn runnable(&self, target: Option<&str>) -> Result<(), String>;
    /// Compiles `graph`; refuses it first when any node is refused.
    fn compile(&self, graph: &Graph, request: &CompileRequest) -> Result<Artifact, BackendError>;
    /// The cost figures the optimiser plans with for this backend:
    /// nominal or cached, never re-measured per call, so decisions are
    /// reproducible.
    fn cost_model(&self) -> Roofline;
    /// How this backend groups nodes into kernels and what scratch they
    /// need, so that the optimiser's memory plan is the arena its code
    /// allocates; `None`: the shared rules of `m4c-plan` alone.
    fn scheduler(&self) -> Option<Arc<dyn Scheduler>> {
        None
    }
}

/// Every node of `g` that `backend` refuses, in graph order.
pub fn refusals(backend: &dyn CodeGenerator, g: &Graph) -> Vec<Refusal> {
    g.nodes
        .iter()
        .enumerate()
        .filter_map(|(i, node)| {
            backend.refuse(g, node).map(|reason| Refusal {
                node: i,
                value: g.value(node.output).name.clone(),
                op: node.op.kind().name(),
                reason,
            })
        })
        .collect()
}

/// Refuses `g` as a whole when `backend` refuses any node of it: the
/// check every [`CodeGenerator::compile`] starts with.
pub fn check_graph(backend: &dyn CodeGenerator, g: &Graph) -> Result<(), BackendError> {
    let refusals = refusals(backend, g);
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(BackendError::Refused {
            backend: backend.name(),
            refusals,
        })
    }
}

/// The reference backend: the IR itself is the artifact (bundles always
/// carry it) and the interpreter runs it. It takes every operator on every
/// element type and is runnable everywhere.
pub struct Reference;

impl CodeGenerator for Reference {
    fn name(&self) -> &'static str {
        "reference"
    }

    fn description(&self) -> &'static str {
        "the IR run by the reference interpreter (ONNX numerics, the ground truth)"
    }

    fn targets(&self) -> Vec<String> {
        vec!["ir".into()]
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::every_op(&DType::ALL)
    }

    fn runnable(&self, target: Option<&str>) -> Result<(), String> {
        match target {
            None | Some("ir") => Ok(()),
            Some(t) => Err(format!(
                "unknown target `{t}` (the reference backend has `ir`)"
            )),
        }
    }

    fn compile(&self, graph: &Graph, request: &CompileRequest) -> Result<Artifact, BackendError> {
        self.runnable(request.target.as_deref())
            .map_err(|msg| BackendError::Target {
                backend: "reference",
                msg,
            })?;
        check_graph(self, graph)?;
        Ok(Artifact {
            backend: self.name().into(),
            target: "ir".into(),
            tuning: String::new(),
            runnable: true,
            files: vec![ArtifactFile {
                name: format!("{}.ir", graph.name),
                section: None,
                bytes: m4c_ir::text::print(graph).into_bytes(),
            }],
            stats: serde_json::json!({ "nodes": graph.nodes.len() }),
        })
    }

    fn cost_model(&self) -> Roofline {
        Roofline::cpu()
    }
}
