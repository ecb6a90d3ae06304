//! The plan a GPU artifact carries (its `code-plan` section, JSON): the
//! kernels in launch order with their workgroup counts, the arena the
//! kernels share, where each input is written and each output read. The
//! code generator writes it, the runner reads it; [`Manifest::check`]
//! validates it against the module's interface before anything runs.

use serde::{Deserialize, Serialize};

/// Which device buffer a tensor lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Space {
    /// The activation arena (binding 0, read-write): results, and the
    /// inputs region after the planned buffers.
    Arena,
    /// The module's constants (binding 1, read-only), uploaded once.
    Weights,
}

/// A tensor's bytes in one of the two buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub space: Space,
    /// Byte offset, a multiple of 4.
    pub offset: u64,
    pub bytes: u64,
}

/// One compute kernel: its entry point in the shader text and how many
/// workgroups it is launched with, of how many invocations each (WGSL
/// declares it in the shader too; CUDA takes it at launch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelEntry {
    pub entry: String,
    pub workgroups: [u32; 3],
    pub threads: [u32; 3],
}

/// What the runner needs besides the shader text and the weights.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `wgpu` (WGSL text) or `cuda` (PTX text).
    pub target: String,
    /// Bytes of the arena buffer (planned buffers, then the inputs).
    pub arena_bytes: u64,
    /// Bytes of the weights section.
    pub weights_bytes: u64,
    /// Per graph input, in signature order (always in the arena).
    pub inputs: Vec<Binding>,
    /// Per graph output, in signature order.
    pub outputs: Vec<Binding>,
    /// The kernels, in launch order.
    pub kernels: Vec<KernelEntry>,
}

/// The most workgroups one dispatch dimension may have (WebGPU's default
/// `maxComputeWorkgroupsPerDimension`).
pub const MAX_WORKGROUPS: u32 = 65_535;

/// The largest storage binding every WebGPU device offers (128 MiB): the
/// wgpu runner binds weights beyond it as several buffers of at most this
/// many bytes (bindings 1, 2, …), split at its multiples.
pub const BINDING_BYTES: u64 = 128 << 20;

/// The most weights bindings a WGSL module may have: WebGPU's default of
/// eight storage buffers per shader stage, less the arena.
pub const MAX_WEIGHT_BINDINGS: u64 = 7;

/// The most invocations one workgroup may have (WebGPU's default
/// `maxComputeInvocationsPerWorkgroup` is 256; CUDA's block limit, 1024,
/// is larger).
pub const MAX_THREADS: u32 = 256;

impl Manifest {
    /// Checks the manifest against the module's interface (input and
    /// output byte sizes, signature order) and its weights section: every
    /// binding lies inside its buffer, 4-byte aligned, every launch fits
    /// the dispatch limits. A hostile plan is an error here, never a
    /// fault later.
    pub fn check(
        &self,
        input_bytes: &[u64],
        output_bytes: &[u64],
        weights_len: u64,
    ) -> Result<(), String> {
        if self.weights_bytes != weights_len {
            return Err(format!(
                "plan says {} weight bytes, the section has {weights_len}",
                self.weights_bytes
            ));
        }
        let sides = [
            ("input", &self.inputs, input_bytes),
            ("output", &self.outputs, output_bytes),
        ];
        for (what, bindings, want) in sides {
            if bindings.len() != want.len() {
                return Err(format!(
                    "plan has {} {what}s, the module {}",
                    bindings.len(),
                    want.len()
                ));
            }
            for (k, (b, &bytes)) in bindings.iter().zip(want).enumerate() {
                if b.bytes != bytes {
                    return Err(format!(
                        "{what} {k}: plan says {} bytes, the module {bytes}",
                        b.bytes
                    ));
                }
                let size = match b.space {
                    Space::Arena => self.arena_bytes,
                    Space::Weights => self.weights_bytes,
                };
                let fits = b.offset.checked_add(b.bytes).is_some_and(|end| end <= size);
                if !fits || b.offset % 4 != 0 {
                    return Err(format!(
                        "{what} {k}: bytes {}+{} outside its {size}-byte buffer or unaligned",
                        b.offset, b.bytes
                    ));
                }
            }
        }
        if self.target == "wgpu" && self.weights_bytes.div_ceil(BINDING_BYTES) > MAX_WEIGHT_BINDINGS
        {
            return Err(format!(
                "{} weight bytes need more than {MAX_WEIGHT_BINDINGS} bindings of {BINDING_BYTES}",
                self.weights_bytes
            ));
        }
        if self.inputs.iter().any(|b| b.space != Space::Arena) {
            return Err("an input outside the arena".into());
        }
        for k in &self.kernels {
            if k.workgroups.iter().any(|&w| w == 0 || w > MAX_WORKGROUPS) {
                return Err(format!(
                    "kernel `{}`: {:?} workgroups (1..={MAX_WORKGROUPS} per axis)",
                    k.entry, k.workgroups
                ));
            }
            let threads = k.threads.iter().try_fold(1u32, |n, &t| n.checked_mul(t));
            if !threads.is_some_and(|n| (1..=MAX_THREADS).contains(&n)) {
                return Err(format!(
                    "kernel `{}`: {:?} invocations per workgroup (1..={MAX_THREADS} in all)",
                    k.entry, k.threads
                ));
            }
            let name_ok = !k.entry.is_empty()
                && k.entry
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !name_ok {
                return Err(format!("kernel entry `{}` is not an identifier", k.entry));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            target: "wgpu".into(),
            arena_bytes: 128,
            weights_bytes: 16,
            inputs: vec![Binding {
                space: Space::Arena,
                offset: 64,
                bytes: 16,
            }],
            outputs: vec![Binding {
                space: Space::Arena,
                offset: 0,
                bytes: 16,
            }],
            kernels: vec![KernelEntry {
                entry: "k0".into(),
                workgroups: [1, 1, 1],
                threads: [64, 1, 1],
            }],
        }
    }

    #[test]
    fn a_fitting_plan_passes_and_hostile_ones_are_named() {
        let m = manifest();
        assert_eq!(m.check(&[16], &[16], 16), Ok(()));
        assert!(m
            .check(&[16], &[16], 12)
            .unwrap_err()
            .contains("weight bytes"));
        assert!(m.check(&[8], &[16], 16).unwrap_err().contains("input 0"));
        let mut far = manifest();
        far.outputs[0].offset = u64::MAX - 4;
        assert!(far.check(&[16], &[16], 16).unwrap_err().contains("outside"));
        let mut huge = manifest();
        huge.kernels[0].workgroups = [70_000, 1, 1];
        assert!(huge
            .check(&[16], &[16], 16)
            .unwrap_err()
            .contains("workgroups"));
        let mut wide = manifest();
        wide.kernels[0].threads = [64, 64, 1];
        assert!(wide
            .check(&[16], &[16], 16)
            .unwrap_err()
            .contains("invocations"));
        let mut heavy = manifest();
        heavy.weights_bytes = 8 * BINDING_BYTES;
        assert!(heavy
            .check(&[16], &[16], 8 * BINDING_BYTES)
            .unwrap_err()
            .contains("bindings"));
        let mut bad = manifest();
        bad.kernels[0].entry = "k0(); evil".into();
        assert!(bad
            .check(&[16], &[16], 16)
            .unwrap_err()
            .contains("identifier"));
    }
}
