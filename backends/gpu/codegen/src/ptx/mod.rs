//! The PTX emitter: the same kernel descriptions as [`crate::wgsl`], as
//! LLVM IR for `nvptx64-nvidia-cuda`, compiled by LLVM's NVPTX backend to
//! PTX text for `sm_90` (at the PTX version LLVM 19 picks for it). Each
//! kernel is a `ptx_kernel` function of two global pointers, the arena
//! and the weights (the WGSL module's two storage bindings), launched
//! with the geometry [`crate::launch`] decides for both emitters; thread
//! and block indices come from the `nvvm.read.ptx.sreg` intrinsics, the
//! GEMM tiles and the row reductions live in shared memory (address
//! space 3) as WGSL's live in workgroup memory, and transcendentals are
//! `m4c-llvm-math`'s polynomials (the CPU backend's), not libdevice.

mod cx;
mod expr;
mod kernels;

use inkwell::context::Context;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};
use inkwell::OptimizationLevel;
use m4c_gpu_device::KernelEntry;

use crate::kernel::{Body, Kernel};
use crate::launch::{GROUP, TILE};

/// The LLVM triple of CUDA devices.
pub const TRIPLE: &str = "nvptx64-nvidia-cuda";
/// The GPU architecture the PTX is generated for (Hopper: H100, H200).
pub const ARCH: &str = "sm_90";

/// Why IR could not be built: every LLVM-side failure is a message.
#[derive(Debug)]
pub(crate) struct Fail(pub String);

impl From<inkwell::builder::BuilderError> for Fail {
    fn from(e: inkwell::builder::BuilderError) -> Self {
        Fail(format!("LLVM builder: {e}"))
    }
}

impl From<m4c_llvm_math::MathError> for Fail {
    fn from(e: m4c_llvm_math::MathError) -> Self {
        Fail(e.to_string())
    }
}

impl From<String> for Fail {
    fn from(e: String) -> Self {
        Fail(e)
    }
}

/// The NVPTX target machine for [`ARCH`].
fn machine() -> Result<TargetMachine, String> {
    Target::initialize_nvptx(&InitializationConfig::default());
    let triple = TargetTriple::create(TRIPLE);
    let target = Target::from_triple(&triple).map_err(|e| format!("LLVM has no NVPTX: {e}"))?;
    target
        .create_target_machine(
            &triple,
            ARCH,
            "",
            OptimizationLevel::Aggressive,
            RelocMode::Default,
            CodeModel::Default,
        )
        .ok_or_else(|| format!("no LLVM target machine for {TRIPLE} {ARCH}"))
}

/// Builds every kernel of `kernels` into `module` for `flavor`; the
/// launch table.
fn build<'ctx>(
    context: &'ctx Context,
    module: &inkwell::module::Module<'ctx>,
    kernels: &[Kernel],
    flavor: cx::Flavor,
) -> Result<Vec<KernelEntry>, String> {
    let mut table = Vec::new();
    for (n, k) in kernels.iter().enumerate() {
        let name = format!("k{n}");
        let (workgroups, threads) = match &k.body {
            Body::Map(m) => (
                kernels::map(context, module, &name, m, flavor),
                [GROUP, 1, 1],
            ),
            Body::Gemm(g) => (
                kernels::gemm(context, module, &name, g, flavor),
                [TILE, TILE, 1],
            ),
            Body::Row(r) => (
                kernels::row(context, module, &name, r, flavor),
                [GROUP, 1, 1],
            ),
        };
        let workgroups =
            workgroups.map_err(|Fail(e)| format!("kernel {name} (`{}`): {e}", k.value))?;
        table.push(KernelEntry {
            entry: name,
            workgroups,
            threads: threads.map(|t| t as u32),
        });
    }
    Ok(table)
}

/// The PTX text of `kernels` (entry points `k0`, `k1`, … as in WGSL) and
/// their launch table.
pub fn emit(kernels: &[Kernel]) -> Result<(String, Vec<KernelEntry>), String> {
    let machine = machine()?;
    let context = Context::create();
    let module = context.create_module("m4c");
    module.set_triple(&machine.get_triple());
    module.set_data_layout(&machine.get_target_data().get_data_layout());
    let table = build(&context, &module, kernels, cx::Flavor::Nvptx)?;
    module
        .verify()
        .map_err(|e| format!("invalid NVPTX IR: {e}"))?;
    // No loop unrolling: unrolling a GEMM's K loop (small K) lets LLVM
    // sink every step's multiply-adds past the barriers, keeping all of
    // the shared-memory operands live at once (135 registers and spills
    // under a 128-register bound); the emitter unrolls what should be.
    let options = PassBuilderOptions::create();
    options.set_loop_unrolling(false);
    module
        .run_passes("default<O3>", &machine, options)
        .map_err(|e| e.to_string())?;
    let ptx = machine
        .write_to_memory_buffer(&module, FileType::Assembly)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8(ptx.as_slice().to_vec()).map_err(|e| e.to_string())?;
    Ok((text, table))
}

#[cfg(test)]
mod host_tests;
#[cfg(test)]
mod tests;
