//! Running modules: a [`ModuleExecutor`] takes a module's inputs and gives
//! its outputs. The reference interpreter ([`Interpreter`]) runs any IR
//! graph; compiled code is loaded by its backend's [`device::Device`]
//! (the CPU's runs as a [`CompiledModule`]). [`load_module`] picks one for
//! a bundle's module ([`Engine`]), falling back to the interpreter when the
//! code cannot be used. Executors are `Send + Sync`: tasks may run
//! concurrently on shared modules.

pub mod arena;
pub mod compiled;
pub mod device;
#[cfg(feature = "gpu")]
mod gpu;
mod load;
pub mod npu;
mod plan_check;

use std::sync::Arc;

use m4c_ir::{Graph, TensorType};
use m4c_ops::{run_graph, Value};

use crate::adapter::{AdaptedModule, AdapterError};
use crate::bundle::format::REFERENCE_BACKEND;
pub use arena::ArenaPlan;
pub use compiled::{by_kind, CodeLoadError, CompiledModule, StepTime};
pub use load::{
    load_code, load_module, load_shared, BaseGraphs, Engine, LoadError, LoadOptions, Loaded,
};

/// Why a module could not run.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("module `{module}`: {found} inputs given, it takes {expected}")]
    InputCount {
        module: String,
        expected: usize,
        found: usize,
    },
    #[error("module `{module}`: input '{input}' {msg}")]
    Input {
        module: String,
        input: String,
        msg: String,
    },
    #[error("module `{module}`: {msg}")]
    Run { module: String, msg: String },
}

/// A module's interface: input and output names (as in the source model)
/// and types.
#[derive(Clone, Debug)]
pub struct Signature {
    pub inputs: Vec<(String, TensorType)>,
    pub outputs: Vec<(String, TensorType)>,
}

impl Signature {
    /// The signature of a graph.
    pub fn of(g: &Graph) -> Signature {
        let side = |ids: &[m4c_ir::ValueId]| {
            ids.iter()
                .map(|&i| (g.value(i).name.clone(), g.value(i).ty.clone()))
                .collect()
        };
        Signature {
            inputs: side(&g.inputs),
            outputs: side(&g.outputs),
        }
    }

    /// Position of the input called `name`.
    pub fn input(&self, name: &str) -> Option<usize> {
        self.inputs.iter().position(|(n, _)| n == name)
    }

    /// Position of the output called `name`.
    pub fn output(&self, name: &str) -> Option<usize> {
        self.outputs.iter().position(|(n, _)| n == name)
    }
}

/// Something that runs one module.
pub trait ModuleExecutor: Send + Sync {
    /// The module's name.
    fn name(&self) -> &str;
    /// Its inputs and outputs.
    fn signature(&self) -> &Signature;
    /// The interpreter's activation arena over the IR's values, planned at
    /// load (`None` for symbolic shapes and for compiled code, whose arena
    /// was planned by the code generator: see [`Self::arena_bytes`]).
    fn arena(&self) -> Option<&ArenaPlan>;
    /// Bytes of the one activation arena the module runs from.
    fn arena_bytes(&self) -> Option<usize> {
        self.arena().map(|a| a.arena_bytes)
    }
    /// The backend whose engine executes it: `reference` (the
    /// interpreter) or a device's name (`cpu`: compiled code).
    fn backend(&self) -> &str;
    /// The CPU backend's loaded code, for what only it offers (per-kernel
    /// profiles, where its weights lie).
    fn as_compiled(&self) -> Option<&CompiledModule> {
        None
    }
    /// A module built with LoRA slots, whose adapters can be switched
    /// without reloading it.
    fn as_slotted(&self) -> Option<&crate::adapter::SlottedModule> {
        None
    }
    /// A module on the simulated NPU, for its per-part engines and
    /// figures.
    fn as_npu(&self) -> Option<&npu::NpuModule> {
        None
    }
    /// Runs the module on inputs in signature order (checked: count,
    /// element types, static shapes).
    fn run(&self, inputs: &[Value]) -> Result<Vec<Value>, ExecError>;
}

/// The interpreter for a module's graph: compiled code is loaded from
/// its code by a device ([`load_module`], [`load_code`]), not from a graph.
pub fn executor_for(name: &str, graph: Graph) -> Arc<dyn ModuleExecutor> {
    Arc::new(Interpreter::new(name, graph))
}

/// Runs a module's IR with the reference interpreter. The interpreter
/// allocates each intermediate and frees it after its last use; the arena
/// plan says what a compiled executor of the same module will preallocate.
/// The module's base graph is shared with every other executor of it
/// ([`AdaptedModule`]): keep-mode adapters are attached for each run.
pub struct Interpreter {
    name: String,
    module: AdaptedModule,
    signature: Signature,
    arena: Option<ArenaPlan>,
}

impl Interpreter {
    /// Wraps a verified graph.
    pub fn new(name: &str, graph: Graph) -> Interpreter {
        Interpreter {
            name: name.to_string(),
            signature: Signature::of(&graph),
            arena: arena::plan(&graph),
            module: AdaptedModule::from(Arc::new(graph)),
        }
    }

    /// Runs `module` (base graph plus adapters). Its signature and arena
    /// plan are those of the adapted graph, built once here and dropped.
    pub fn shared(name: &str, module: AdaptedModule) -> Result<Interpreter, AdapterError> {
        let graph = module.graph()?;
        let (signature, arena) = (Signature::of(&graph), arena::plan(&graph));
        drop(graph);
        Ok(Interpreter {
            name: name.to_string(),
            module,
            signature,
            arena,
        })
    }
}

impl ModuleExecutor for Interpreter {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn arena(&self) -> Option<&ArenaPlan> {
        self.arena.as_ref()
    }

    fn backend(&self) -> &str {
        REFERENCE_BACKEND
    }

    fn run(&self, inputs: &[Value]) -> Result<Vec<Value>, ExecError> {
        check_inputs(&self.name, &self.signature, inputs)?;
        let fail = |msg: String| ExecError::Run {
            module: self.name.clone(),
            msg,
        };
        let graph = self.module.graph().map_err(|e| fail(e.to_string()))?;
        run_graph(&graph, inputs).map_err(|e| fail(e.to_string()))
    }
}

/// Checks count, element types and static shapes of `inputs`.
pub fn check_inputs(module: &str, sig: &Signature, inputs: &[Value]) -> Result<(), ExecError> {
    if inputs.len() != sig.inputs.len() {
        return Err(ExecError::InputCount {
            module: module.to_string(),
            expected: sig.inputs.len(),
            found: inputs.len(),
        });
    }
    for ((name, ty), v) in sig.inputs.iter().zip(inputs) {
        let err = |msg: String| ExecError::Input {
            module: module.to_string(),
            input: name.clone(),
            msg,
        };
        // int4/uint4 inputs arrive widened to int8/uint8.
        if v.dtype() != ty.dtype.unpacked() {
            return Err(err(format!(
                "is {} but the module expects {}",
                v.dtype(),
                ty.dtype
            )));
        }
        if ty.static_shape().is_some_and(|s| s != v.shape()) {
            return Err(err(format!(
                "has shape {:?} but the module expects {ty}",
                v.shape()
            )));
        }
    }
    Ok(())
}
