//! The manifest that travels with a compiled kernel library.

use serde::{Deserialize, Serialize};

use crate::{GraphPlan, PackedPanels};

/// The manifest's file name inside an artifact directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Describes an artifact directory: which shared library and weight file it
/// holds and every kernel in them, so the device side can call the kernels
/// without knowing how they were generated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The `--target` the code was generated for (e.g. `x86_64-avx512`).
    pub target: String,
    /// The LLVM CPU name the code was tuned for.
    pub cpu: String,
    /// File name of the object file, relative to the artifact directory.
    pub object: String,
    /// File name of the shared library, if one was linked (host targets).
    pub library: Option<String>,
    /// File name of the packed weights (little-endian f32), relative to the
    /// artifact directory.
    pub weights: String,
    /// The GEMM kernels.
    pub gemms: Vec<GemmManifest>,
    /// The compiled graph's execution plan, when the artifact is a graph.
    #[serde(default)]
    pub graph: Option<GraphPlan>,
    /// The kernels' calling convention ([`crate::KERNEL_ABI`]); 0 in
    /// artifacts from before kernels returned a status.
    #[serde(default)]
    pub kernel_abi: u32,
    /// CPU features beyond the target's ISA the code uses (the tuning CPU's
    /// int8 dot products: `avx512vnni`, `avxvnni`), checked against the
    /// host before the library is loaded (`m4c_plan::host::host_has`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
}

/// One compiled GEMM `C[m×n] = A[m×k] · B[k×n] (+ C)`, all row-major, with B
/// packed at compile time.
///
/// Its symbol has the C signature
/// `void f(const float *a, const float *packed_b, float *c,
///         int64_t panel_begin, int64_t panel_end, float *scratch)`
/// and computes the columns of the B panels `panel_begin..panel_end`, so
/// disjoint panel ranges can run on different threads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GemmManifest {
    /// The GEMM's name (unique in the artifact; the exported function too
    /// unless `function` names another).
    pub symbol: String,
    /// The exported function when this GEMM shares the code of an earlier
    /// one of the same shape (the weights differ, the code does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Rows of A and C.
    pub m: usize,
    /// Columns of A, rows of B.
    pub k: usize,
    /// Columns of B and C.
    pub n: usize,
    /// Whether the kernel adds to C (`C += A·B`) instead of overwriting it.
    pub accumulate: bool,
    /// How B is packed.
    pub packed_b: PackedPanels,
    /// Where the packed B starts in the weight file, in floats.
    pub weights_offset: usize,
    /// Floats of scratch space each concurrent call needs (0 for the
    /// current generator, which reads A in place; kept in the ABI).
    pub scratch_floats: usize,
    /// Rows of the register-blocked micro-kernel tile (MR).
    pub tile_rows: usize,
    /// Reduction-dimension block size (KC).
    pub k_block: usize,
    /// Row block size (MC).
    pub m_block: usize,
}

impl GemmManifest {
    /// The exported function that computes this GEMM.
    pub fn function(&self) -> &str {
        self.function.as_deref().unwrap_or(&self.symbol)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let manifest = Manifest {
            target: "x86_64-avx512".into(),
            cpu: "znver4".into(),
            object: "kernels.o".into(),
            library: Some("libkernels.so".into()),
            weights: "weights.bin".into(),
            gemms: vec![GemmManifest {
                symbol: "gemm".into(),
                function: Some("other_gemm".into()),
                m: 3,
                k: 4,
                n: 5,
                accumulate: false,
                packed_b: PackedPanels {
                    k: 4,
                    n: 5,
                    panel_width: 32,
                },
                weights_offset: 0,
                scratch_floats: 64,
                tile_rows: 14,
                k_block: 256,
                m_block: 112,
            }],
            graph: None,
            kernel_abi: crate::KERNEL_ABI,
            requires: vec!["avx512vnni".into()],
        };
        let json = serde_json::to_string(&manifest).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), manifest);
    }
}
