//! Loading compiled kernels: manifest, shared library, packed weights,
//! either from an artifact directory or from a library file plus weights
//! shared in place (a bundle's memory map).

use std::path::{Path, PathBuf};

use crate::weights::PackedWeights;
use crate::{
    AlignedBuffer, DeviceError, GemmEntry, GemmFn, Manifest, SharedBytes, ThreadPool, MANIFEST_FILE,
};

/// A loaded artifact: the kernels of one shared library and the packed
/// weights they read.
pub struct KernelLibrary {
    library_path: PathBuf,
    manifest: Manifest,
    library: libloading::Library,
    weights: PackedWeights,
}

/// A GEMM of a loaded library, ready to call; it borrows the library so the
/// code cannot be unloaded while it is in use.
pub struct GemmKernel<'lib> {
    entry: GemmEntry,
    packed_b: &'lib [f32],
}

impl KernelLibrary {
    /// Loads the artifact in `dir` (written by `m4c-cpu-codegen`); the
    /// weight file is read into an aligned buffer of the library's own.
    pub fn open(dir: &Path) -> Result<Self, DeviceError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = read(&manifest_path, |p| std::fs::read_to_string(p))?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|source| DeviceError::Manifest {
                path: manifest_path.clone(),
                source,
            })?;
        let library_name = manifest
            .library
            .as_ref()
            .ok_or_else(|| DeviceError::Inconsistent {
                path: manifest_path.clone(),
                reason: "no shared library (cross-compiled artifact)".into(),
            })?;
        let library_path = dir.join(library_name);
        let weights_path = dir.join(&manifest.weights);
        let bytes = read(&weights_path, |p| std::fs::read(p))?;
        let weights =
            PackedWeights::from_le_bytes(&bytes).map_err(|reason| DeviceError::Inconsistent {
                path: weights_path,
                reason,
            })?;
        Self::load(library_path, manifest, weights)
    }

    /// Loads the shared library at `library_path`, described by `manifest`
    /// (its `library` and `weights` file names are not used), whose kernels
    /// read `weights` in place: no copy is made, and the library keeps the
    /// owner alive. The bytes must be little-endian `f32` starting on a
    /// [`crate::SHARED_WEIGHTS_ALIGN`] boundary.
    pub fn open_shared(
        library_path: &Path,
        manifest: Manifest,
        weights: SharedBytes,
    ) -> Result<Self, DeviceError> {
        let weights =
            PackedWeights::shared(weights).map_err(|reason| DeviceError::Inconsistent {
                path: library_path.to_path_buf(),
                reason,
            })?;
        Self::load(library_path.to_path_buf(), manifest, weights)
    }

    /// Checks that every GEMM's packed operand lies inside `weights`, then
    /// opens the library.
    fn load(
        library_path: PathBuf,
        manifest: Manifest,
        weights: PackedWeights,
    ) -> Result<Self, DeviceError> {
        let floats = weights.floats().len();
        if let Some(gemm) = manifest
            .gemms
            .iter()
            .find(|g| g.weights_offset + g.packed_b.len() > floats)
        {
            return Err(DeviceError::Inconsistent {
                path: library_path,
                reason: format!(
                    "kernel `{}` reads past the end of the weights ({floats} floats)",
                    gemm.symbol
                ),
            });
        }
        // SAFETY: the library was produced by m4c-cpu-codegen: plain kernel
        // functions with no initialisers that could misbehave on load.
        let library = unsafe { libloading::Library::new(&library_path) }.map_err(|source| {
            DeviceError::Library {
                path: library_path.clone(),
                source,
            }
        })?;
        Ok(Self {
            library_path,
            manifest,
            library,
            weights,
        })
    }

    /// The artifact's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The shared library's path (for messages).
    pub fn library_path(&self) -> &Path {
        &self.library_path
    }

    /// The packed weights (GEMM operands and constants), where they lie:
    /// the library's own buffer or the shared owner's bytes.
    pub fn weights(&self) -> &[f32] {
        self.weights.floats()
    }

    /// The exported function `symbol`.
    ///
    /// # Safety
    /// `T` must be the function's actual pointer type.
    pub unsafe fn symbol<T: Copy>(&self, symbol: &str) -> Result<T, DeviceError> {
        // SAFETY: the caller vouches for `T`; the value is a code pointer
        // valid while `self` keeps the library loaded.
        unsafe {
            self.library
                .get::<T>(symbol.as_bytes())
                .map(|s| *s)
                .map_err(|source| DeviceError::Library {
                    path: self.library_path.clone(),
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
        // SAFETY: the manifest says this symbol is a GEMM with the `GemmFn`
        // signature; the returned kernel borrows `self`, so the library stays
        // loaded while the pointer is used.
        let func: GemmFn = unsafe {
            *self
                .library
                .get::<GemmFn>(manifest.function().as_bytes())
                .map_err(|source| DeviceError::Library {
                    path: self.library_path.clone(),
                    source,
                })?
        };
        let packed_b = &self.weights()
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
