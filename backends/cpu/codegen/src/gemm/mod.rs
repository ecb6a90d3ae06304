//! f32 GEMM `C[m×n] = A[m×k] · B[k×n] (+ C)` with B known at compile time:
//! B is packed into panels, A is read in place, and a
//! register-blocked micro-kernel sized for the target does the arithmetic.

mod driver;
mod microkernel;
mod plan;

use inkwell::context::Context;
use inkwell::module::Module;
use m4c_cpu_device::{GemmManifest, PackedPanels};

pub use plan::GemmPlan;

use crate::{CodegenError, Target};

/// What to compile: the shape, whether C is accumulated into, and the
/// exported symbol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GemmSpec {
    /// The exported function name.
    pub symbol: String,
    /// Rows of A and C.
    pub m: usize,
    /// Columns of A, rows of B.
    pub k: usize,
    /// Columns of B and C.
    pub n: usize,
    /// `C += A·B` instead of `C = A·B`.
    pub accumulate: bool,
}

impl GemmSpec {
    /// A `C = A·B` GEMM named `symbol`.
    pub fn new(symbol: &str, m: usize, k: usize, n: usize) -> Self {
        Self {
            symbol: symbol.to_string(),
            m,
            k,
            n,
            accumulate: false,
        }
    }

    fn check(&self) -> Result<(), CodegenError> {
        if self.m == 0 || self.k == 0 || self.n == 0 {
            return Err(CodegenError::EmptyGemm {
                m: self.m,
                k: self.k,
                n: self.n,
            });
        }
        Ok(())
    }
}

/// Emits the GEMM into `module` and returns its manifest (with
/// `weights_offset` 0: the artifact writer places the weights).
pub fn emit_gemm<'ctx>(
    context: &'ctx Context,
    module: &Module<'ctx>,
    target: &Target,
    spec: &GemmSpec,
) -> Result<GemmManifest, CodegenError> {
    spec.check()?;
    driver::emit(context, module, target, spec, &GemmPlan::for_target(target))?;
    Ok(gemm_manifest(target, spec))
}

/// The manifest of the GEMM `spec` (with `weights_offset` 0), without
/// generating code: for a GEMM that reuses the function of an earlier one
/// of the same shape.
pub fn gemm_manifest(target: &Target, spec: &GemmSpec) -> GemmManifest {
    let plan = GemmPlan::for_target(target);
    GemmManifest {
        symbol: spec.symbol.clone(),
        function: None,
        m: spec.m,
        k: spec.k,
        n: spec.n,
        accumulate: spec.accumulate,
        packed_b: PackedPanels {
            k: spec.k,
            n: spec.n,
            panel_width: plan.tile_cols(),
        },
        weights_offset: 0,
        scratch_floats: 0,
        tile_rows: plan.tile_rows,
        k_block: plan.k_block,
        m_block: plan.m_block,
    }
}
