//! Writing an artifact directory: one object file with every kernel, the
//! packed weights, a manifest, and (for targets this host can run) a shared
//! library linked from the object with the system C compiler driver.

use std::path::Path;
use std::process::Command;

use inkwell::context::Context;
use m4c_cpu_device::{Manifest, MANIFEST_FILE};

use crate::gemm::{emit_gemm, GemmSpec};
use crate::{CodegenError, Machine, Target};

const OBJECT_FILE: &str = "kernels.o";
const LIBRARY_FILE: &str = "libm4c_kernels.so";
const WEIGHTS_FILE: &str = "weights.bin";

/// Packed weights start on cache-line boundaries (16 floats).
const WEIGHT_ALIGN_FLOATS: usize = 16;

/// Collects kernels and their weights, then compiles them into one
/// artifact directory.
pub struct ArtifactBuilder {
    target: Target,
    gemms: Vec<(GemmSpec, Vec<f32>)>,
}

impl ArtifactBuilder {
    /// An empty artifact for `target`.
    pub fn new(target: &Target) -> Self {
        Self {
            target: target.clone(),
            gemms: Vec::new(),
        }
    }

    /// Adds a GEMM whose B (row-major `k × n`) is `b`.
    pub fn add_gemm(&mut self, spec: GemmSpec, b: &[f32]) -> Result<(), CodegenError> {
        if self.gemms.iter().any(|(s, _)| s.symbol == spec.symbol) {
            return Err(CodegenError::DuplicateSymbol(spec.symbol));
        }
        self.gemms.push((spec, b.to_vec()));
        Ok(())
    }

    /// Compiles everything into `dir` (created if missing) and returns the
    /// manifest written there.
    pub fn write(&self, dir: &Path) -> Result<Manifest, CodegenError> {
        let machine = Machine::new(&self.target)?;
        let context = Context::create();
        let module = machine.new_module(&context, "m4c_kernels");
        let mut gemms = Vec::with_capacity(self.gemms.len());
        let mut weights: Vec<f32> = Vec::new();
        for (spec, b) in &self.gemms {
            let mut manifest = emit_gemm(&context, &module, &self.target, spec)?;
            let packed = manifest.packed_b.pack(b)?;
            weights.resize(weights.len().next_multiple_of(WEIGHT_ALIGN_FLOATS), 0.0);
            manifest.weights_offset = weights.len();
            weights.extend_from_slice(packed.as_slice());
            gemms.push(manifest);
        }
        let bytes: Vec<u8> = weights.iter().flat_map(|w| w.to_le_bytes()).collect();
        let built = build_artifact(&machine, &module, bytes, gemms, None)?;
        built.write(dir)?;
        Ok(built.manifest)
    }
}

/// A compiled artifact in memory: the manifest (kernels and plan) and the
/// bytes of the files it names. Only linking touches the disk (the system
/// linker works on files, in a scratch directory).
pub struct BuiltArtifact {
    pub manifest: Manifest,
    /// The relocatable object with every kernel.
    pub object: Vec<u8>,
    /// The packed weights, a whole number of f32.
    pub weights: Vec<u8>,
    /// The shared library, when the target runs on this host.
    pub library: Option<Vec<u8>>,
}

impl BuiltArtifact {
    /// Writes the files and the manifest into `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> Result<(), CodegenError> {
        std::fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;
        write_file(&dir.join(&self.manifest.object), &self.object)?;
        write_file(&dir.join(&self.manifest.weights), &self.weights)?;
        if let (Some(name), Some(bytes)) = (&self.manifest.library, &self.library) {
            write_file(&dir.join(name), bytes)?;
        }
        let json =
            serde_json::to_string_pretty(&self.manifest).map_err(|e| CodegenError::Graph {
                graph: self.manifest.object.clone(),
                reason: format!("the artifact manifest does not serialise: {e}"),
            })?;
        write_file(&dir.join(MANIFEST_FILE), json.as_bytes())
    }
}

/// Optimises `module`, emits its object file and, when the target runs on
/// this host, links the shared library; pads the weight blob (taken, not
/// copied: it is as large as the model).
pub(crate) fn build_artifact(
    machine: &Machine,
    module: &inkwell::module::Module<'_>,
    mut weights: Vec<u8>,
    gemms: Vec<m4c_cpu_device::GemmManifest>,
    graph: Option<m4c_cpu_device::GraphPlan>,
) -> Result<BuiltArtifact, CodegenError> {
    machine.optimize(module)?;
    let object = machine.emit_object(module)?;
    weights.resize(weights.len().next_multiple_of(4), 0);
    let target = machine.target();
    let library = match target.check_runs_on_host() {
        Ok(()) => Some(link_in_scratch(&object)?),
        Err(_) => None,
    };
    let manifest = Manifest {
        target: target.name().to_string(),
        cpu: target.cpu.clone(),
        object: OBJECT_FILE.to_string(),
        library: library.as_ref().map(|_| LIBRARY_FILE.to_string()),
        weights: WEIGHTS_FILE.to_string(),
        gemms,
        graph,
        kernel_abi: m4c_cpu_device::KERNEL_ABI,
        requires: target.requires(),
    };
    Ok(BuiltArtifact {
        manifest,
        object,
        weights,
        library,
    })
}

/// Links `object` into a shared library in a scratch directory and returns
/// the library's bytes.
fn link_in_scratch(object: &[u8]) -> Result<Vec<u8>, CodegenError> {
    let dir = tempfile::tempdir().map_err(|source| io_error(&std::env::temp_dir(), source))?;
    let (object_path, library_path) = (dir.path().join(OBJECT_FILE), dir.path().join(LIBRARY_FILE));
    write_file(&object_path, object)?;
    link_shared_library(&object_path, &library_path)?;
    std::fs::read(&library_path).map_err(|source| io_error(&library_path, source))
}

fn link_shared_library(object: &Path, library: &Path) -> Result<(), CodegenError> {
    let link_error = |reason: String| CodegenError::Link {
        path: library.to_path_buf(),
        reason,
    };
    let output = Command::new("cc")
        .arg("-shared")
        .arg("-o")
        .arg(library)
        .arg(object)
        .output()
        .map_err(|e| link_error(format!("cannot run `cc`: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(link_error(
            stderr.lines().next().unwrap_or("cc failed").to_string(),
        ));
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CodegenError> {
    std::fs::write(path, bytes).map_err(|source| io_error(path, source))
}

fn io_error(path: &Path, source: std::io::Error) -> CodegenError {
    CodegenError::Io {
        path: path.to_path_buf(),
        source,
    }
}
