//! The in-process JIT: compiles generated kernels into this process so
//! tests (and the peak-FLOP probe) can call them without an artifact.

use inkwell::context::Context;
use inkwell::execution_engine::ExecutionEngine;
use inkwell::module::Module;
use inkwell::OptimizationLevel;
use m4c_cpu_device::{AlignedBuffer, GemmEntry, GemmFn};

use crate::gemm::{emit_gemm, GemmSpec};
use crate::{CodegenError, Machine, Target};

/// An optimised module loaded into LLVM's MCJIT.
pub struct JitModule<'ctx> {
    engine: ExecutionEngine<'ctx>,
}

impl<'ctx> JitModule<'ctx> {
    /// Optimises `module` for `machine` and hands it to the JIT. The target
    /// must be able to run on this host.
    pub fn new(machine: &Machine, module: Module<'ctx>) -> Result<Self, CodegenError> {
        machine.target().check_runs_on_host()?;
        machine.optimize(&module)?;
        let engine = module
            .create_jit_execution_engine(OptimizationLevel::Aggressive)
            .map_err(|e| CodegenError::Llvm(e.to_string()))?;
        Ok(Self { engine })
    }

    /// The address of the compiled function `name`.
    pub fn address(&self, name: &str) -> Result<usize, CodegenError> {
        self.engine
            .get_function_address(name)
            .map_err(|e| CodegenError::Llvm(format!("{name}: {e}")))
    }
}

/// A GEMM compiled in-process together with its packed B.
pub struct JitGemm<'ctx> {
    // Kept alive: `entry` points into its code.
    _module: JitModule<'ctx>,
    entry: GemmEntry,
    packed_b: AlignedBuffer,
}

impl<'ctx> JitGemm<'ctx> {
    /// Generates, optimises and JIT-compiles `spec` with weights `b`
    /// (row-major `k × n`).
    pub fn compile(
        context: &'ctx Context,
        target: &Target,
        spec: &GemmSpec,
        b: &[f32],
    ) -> Result<Self, CodegenError> {
        let machine = Machine::new(target)?;
        let module = machine.new_module(context, &spec.symbol);
        let manifest = emit_gemm(context, &module, target, spec)?;
        let packed_b = manifest.packed_b.pack(b)?;
        let jit = JitModule::new(&machine, module)?;
        let address = jit.address(&spec.symbol)?;
        // SAFETY: `address` is the JIT-compiled code of the function emitted
        // for `manifest` with the `GemmFn` signature; `_module` keeps the
        // code alive as long as `entry`.
        let entry =
            unsafe { GemmEntry::new(std::mem::transmute::<usize, GemmFn>(address), manifest) };
        Ok(Self {
            _module: jit,
            entry,
            packed_b,
        })
    }

    /// The kernel and its manifest.
    pub fn entry(&self) -> &GemmEntry {
        &self.entry
    }

    /// B, packed as the kernel reads it.
    pub fn packed_b(&self) -> &[f32] {
        self.packed_b.as_slice()
    }
}
