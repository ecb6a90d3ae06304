//! LLVM plumbing: one target machine per [`Target`], modules set up for it,
//! the optimisation pipeline, and machine-code emission.

use std::sync::Once;

use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target as LlvmTarget, TargetMachine,
    TargetTriple,
};
use inkwell::OptimizationLevel;

use crate::{CodegenError, Target};

/// An LLVM target machine for one resolved [`Target`]: everything that
/// turns a module of generated IR into optimised machine code.
pub struct Machine {
    target: Target,
    machine: TargetMachine,
}

impl Machine {
    /// Creates the target machine (position-independent code, so objects can
    /// go into shared libraries).
    pub fn new(target: &Target) -> Result<Self, CodegenError> {
        static INIT: Once = Once::new();
        INIT.call_once(|| {
            let config = InitializationConfig::default();
            LlvmTarget::initialize_x86(&config);
            LlvmTarget::initialize_aarch64(&config);
        });
        let triple = TargetTriple::create(target.triple());
        let llvm_target =
            LlvmTarget::from_triple(&triple).map_err(|e| CodegenError::Llvm(e.to_string()))?;
        let machine = llvm_target
            .create_target_machine(
                &triple,
                &target.cpu,
                target.features(),
                OptimizationLevel::Aggressive,
                RelocMode::PIC,
                CodeModel::Default,
            )
            .ok_or_else(|| {
                CodegenError::Llvm(format!("no target machine for {}", target.triple()))
            })?;
        Ok(Self {
            target: target.clone(),
            machine,
        })
    }

    /// The target this machine generates code for.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// An empty module with this machine's triple and data layout.
    pub fn new_module<'ctx>(&self, context: &'ctx Context, name: &str) -> Module<'ctx> {
        let module = context.create_module(name);
        module.set_triple(&self.machine.get_triple());
        module.set_data_layout(&self.machine.get_target_data().get_data_layout());
        module
    }

    /// Verifies the module and runs LLVM's `-O3` pipeline on it.
    pub fn optimize(&self, module: &Module<'_>) -> Result<(), CodegenError> {
        module
            .verify()
            .map_err(|e| CodegenError::Llvm(format!("invalid IR: {e}")))?;
        module
            .run_passes("default<O3>", &self.machine, PassBuilderOptions::create())
            .map_err(|e| CodegenError::Llvm(e.to_string()))
    }

    /// The module as a relocatable object file.
    pub fn emit_object(&self, module: &Module<'_>) -> Result<Vec<u8>, CodegenError> {
        self.emit(module, FileType::Object)
    }

    /// The module as assembly text (for inspection and snapshot tests).
    pub fn emit_assembly(&self, module: &Module<'_>) -> Result<String, CodegenError> {
        let bytes = self.emit(module, FileType::Assembly)?;
        String::from_utf8(bytes).map_err(|e| CodegenError::Llvm(e.to_string()))
    }

    fn emit(&self, module: &Module<'_>, file_type: FileType) -> Result<Vec<u8>, CodegenError> {
        let buffer = self
            .machine
            .write_to_memory_buffer(module, file_type)
            .map_err(|e| CodegenError::Llvm(e.to_string()))?;
        Ok(buffer.as_slice().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_carry_the_target_triple() {
        for name in ["x86_64-avx512", "x86_64-avx2", "aarch64"] {
            let target = Target::parse(Some(name), None).unwrap();
            let machine = Machine::new(&target).unwrap();
            let context = Context::create();
            let module = machine.new_module(&context, "m");
            assert_eq!(
                module.get_triple().as_str().to_str().unwrap(),
                target.triple()
            );
            machine.optimize(&module).unwrap();
            assert!(!machine.emit_object(&module).unwrap().is_empty());
        }
    }
}
