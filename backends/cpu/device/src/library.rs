//! Loading an artifact directory: manifest, shared library, packed weights.

use std::path::{Path, PathBuf};

use crate::{AlignedBuffer, DeviceError, GemmEntry, GemmFn, Manifest, ThreadPool, MANIFEST_FILE};

/// A loaded artifact: the kernels of one shared library and the packed
/// weights they read.
pub struct KernelLibrary {
    dir: PathBuf,
    manifest: Manifest,
    library: libloading::Library,
    weights: AlignedBuffer,
}

/// A GEMM of a loaded library, ready to call; it borrows the library so the
/// code cannot be unloaded while it is in use.
pub struct GemmKernel<'lib> {
    entry: GemmEntry,
    packed_b: &'lib [f32],
}

impl KernelLibrary {
    /// Loads the artifact in `dir` (written by `m4c-cpu-codegen`).
    pub fn open(dir: &Path) -> Result<Self, DeviceError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = read(&manifest_path, |p| std::fs::read_to_string(p))?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|source| DeviceError::Manifest {
                path: manifest_path.clone(),
                source,
            })?;
        let inconsistent = |reason: String| DeviceError::Inconsistent {
            path: manifest_path.clone(),
            reason,
        };
        let library_name = manifest
            .library
            .as_ref()
            .ok_or_else(|| inconsistent("no shared library (cross-compiled artifact)".into()))?;
        let library_path = dir.join(library_name);
        // SAFETY: the library was produced by m4c-cpu-codegen: plain kernel
        // functions with no initialisers that could misbehave on load.
        let library = unsafe { libloading::Library::new(&library_path) }.map_err(|source| {
            DeviceError::Library {
                path: library_path.clone(),
                source,
            }
        })?;
        let weights_path = dir.join(&manifest.weights);
        let bytes = read(&weights_path, |p| std::fs::read(p))?;
        if bytes.len() % 4 != 0 {
            return Err(inconsistent(format!(
                "{} has {} bytes, not a whole number of f32",
                manifest.weights,
                bytes.len()
            )));
        }
        let floats: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        for gemm in &manifest.gemms {
            if gemm.weights_offset + gemm.packed_b.len() > floats.len() {
                return Err(inconsistent(format!(
                    "kernel `{}` reads past the end of {}",
                    gemm.symbol, manifest.weights
                )));
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            library,
            weights: AlignedBuffer::from_slice(&floats),
        })
    }

    /// The artifact's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The artifact directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The weight file's contents (packed GEMM operands and constants).
    pub fn weights(&self) -> &[f32] {
        self.weights.as_slice()
    }

    /// The exported function `symbol`.
    ///
    /// # Safety
    /// `T` must be the function's actual pointer type.
    pub unsafe fn symbol<T: Copy>(&self, symbol: &str) -> Result<T, DeviceError> {
        let library_path = self
            .dir
            .join(self.manifest.library.as_deref().unwrap_or_default());
        // SAFETY: the caller vouches for `T`; the value is a code pointer
        // valid while `self` keeps the library loaded.
        unsafe {
            self.library
                .get::<T>(symbol.as_bytes())
                .map(|s| *s)
                .map_err(|source| DeviceError::Library {
                    path: library_path,
                    source,
                })
        }
    }

    /// The GEMM kernel exported as `symbol`.
    pub fn gemm(&self, symbol: &str) -> Result<GemmKernel<'_>, DeviceError> {
        let manifest = self
            .manifest
            .gemms
            .iter()
            .find(|g| g.symbol == symbol)
            .ok_or_else(|| DeviceError::UnknownKernel(symbol.to_string()))?;
        let library_path = self
            .dir
            .join(self.manifest.library.as_deref().unwrap_or_default());
        // SAFETY: the manifest says this symbol is a GEMM with the `GemmFn`
        // signature; the returned kernel borrows `self`, so the library stays
        // loaded while the pointer is used.
        let func: GemmFn = unsafe {
            *self
                .library
                .get::<GemmFn>(manifest.function().as_bytes())
                .map_err(|source| DeviceError::Library {
                    path: library_path,
                    source,
                })?
        };
        let packed_b = &self.weights.as_slice()
            [manifest.weights_offset..manifest.weights_offset + manifest.packed_b.len()];
        // SAFETY: `func` is the code generated for `manifest` (same artifact).
        let entry = unsafe { GemmEntry::new(func, manifest.clone()) };
        Ok(GemmKernel { entry, packed_b })
    }
}

impl GemmKernel<'_> {
    /// What the kernel computes.
    pub fn manifest(&self) -> &crate::GemmManifest {
        self.entry.manifest()
    }

    /// One scratch buffer per thread of `pool`.
    pub fn scratch_for(&self, pool: &ThreadPool) -> Vec<AlignedBuffer> {
        self.entry.scratch_for(pool)
    }

    /// Computes `C = A·B (+C)` with the library's packed B.
    pub fn run(
        &self,
        a: &[f32],
        c: &mut [f32],
        pool: &ThreadPool,
        scratch: &mut [AlignedBuffer],
    ) -> Result<(), DeviceError> {
        self.entry.run(a, self.packed_b, c, pool, scratch)
    }
}

fn read<T>(path: &Path, reader: impl Fn(&Path) -> std::io::Result<T>) -> Result<T, DeviceError> {
    reader(path).map_err(|source| DeviceError::Io {
        path: path.to_path_buf(),
        source,
    })
}
