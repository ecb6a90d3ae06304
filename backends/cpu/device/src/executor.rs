//! Runs a compiled graph: resolves every kernel of its plan once, then per
//! run points the kernels at the inputs, the weights and one pre-planned
//! activation arena, spreading GEMM panels and parallel loops over a pool.

use std::ops::Range;

use crate::{
    AlignedBuffer, BufRef, DeviceError, GemmEntry, GemmFn, GraphPlan, KernelLibrary, Region, Step,
    ThreadPool,
};

/// The C signature of every non-GEMM kernel (see [`Step::Kernel`]). It
/// returns its status: 0, or `STATUS_*` bits for data outside the
/// operator's domain (the run then fails, as the interpreter does).
pub type KernelFn =
    unsafe extern "C" fn(buffers: *const *mut u8, begin: i64, end: i64, scratch: *mut u8) -> i32;

/// The kernel calling convention of this crate: kernels return a status.
/// Artifacts record it in [`crate::Manifest::kernel_abi`]; code from an
/// older convention is refused instead of misread.
pub const KERNEL_ABI: u32 = 1;

/// Status bit: a Gather index lay outside `[-n, n)`.
pub const STATUS_INDEX_OUT_OF_RANGE: i32 = 1;
/// Status bit: an integer division (or modulo) had a zero divisor.
pub const STATUS_DIVISION_BY_ZERO: i32 = 2;

/// What a non-zero kernel status means, in words.
pub fn status_text(status: i32) -> String {
    let mut parts = vec![];
    if status & STATUS_INDEX_OUT_OF_RANGE != 0 {
        parts.push("index out of range");
    }
    if status & STATUS_DIVISION_BY_ZERO != 0 {
        parts.push("integer division by zero");
    }
    if parts.is_empty() {
        return format!("unknown status {status}");
    }
    parts.join(" and ")
}

enum Call {
    Kernel {
        symbol: String,
        func: KernelFn,
        buffers: Vec<BufRef>,
        extent: usize,
        parallel: bool,
    },
    Gemm {
        entry: GemmEntry,
        weights_offset: usize,
        a: BufRef,
        c: BufRef,
    },
}

/// A loaded graph ready to run: library, resolved calls, arena, scratch.
pub struct GraphExecutor {
    // Kept alive: every `Call` points into its code.
    library: KernelLibrary,
    plan: GraphPlan,
    calls: Vec<Call>,
    arena: AlignedBuffer,
    scratch: Vec<AlignedBuffer>,
    pool: ThreadPool,
}

/// Base addresses of the regions for one run, shared by the worker threads.
struct Bases {
    arena: *mut u8,
    weights: *const u8,
    inputs: Vec<*const u8>,
}

impl Bases {
    fn resolve(&self, buf: BufRef) -> *mut u8 {
        let base = match buf.region {
            Region::Arena => self.arena,
            Region::Weights => self.weights as *mut u8,
            Region::Input(i) => self.inputs[i] as *mut u8,
        };
        base.wrapping_add(buf.offset)
    }
}

/// One thread's part of a kernel call, as plain data (addresses as
/// integers) for [`ThreadPool::run_parts`].
#[derive(Clone, Copy)]
struct KernelPart {
    func: KernelFn,
    buffers: usize,
    begin: i64,
    end: i64,
    scratch: usize,
}

/// Runs one part of a kernel call; its status.
fn run_kernel_part(part: KernelPart) -> i32 {
    // SAFETY: the buffers were laid out by the compiler for exactly this
    // kernel (sizes checked at compile time; inputs checked before the
    // run); the pointer table and the scratch buffer (at least the plan's
    // largest `scratch_bytes`, one per part) outlive `run_parts`, which
    // returns only when every part has run; parallel parts are disjoint
    // iteration ranges, which the plan marks `parallel` only when they
    // write disjoint output elements; inputs and weights are only read.
    unsafe {
        (part.func)(
            part.buffers as *const *mut u8,
            part.begin,
            part.end,
            part.scratch as *mut u8,
        )
    }
}

impl GraphExecutor {
    /// Prepares the graph of `library` to run on `threads` threads.
    pub fn new(library: KernelLibrary, threads: usize) -> Result<Self, DeviceError> {
        let plan = library
            .manifest()
            .graph
            .clone()
            .ok_or_else(|| DeviceError::Inconsistent {
                path: library.library_path().to_path_buf(),
                reason: "the artifact holds no graph".into(),
            })?;
        let has_kernels = plan.steps.iter().any(|s| matches!(s, Step::Kernel { .. }));
        let abi = library.manifest().kernel_abi;
        if has_kernels && abi != KERNEL_ABI {
            return Err(DeviceError::Inconsistent {
                path: library.library_path().to_path_buf(),
                reason: format!("kernels of calling convention {abi}, this runtime needs {KERNEL_ABI} (recompile)"),
            });
        }
        let pool = ThreadPool::new(threads)?;
        let mut calls = Vec::with_capacity(plan.steps.len());
        let mut scratch_bytes = 0;
        for step in &plan.steps {
            calls.push(match step {
                Step::Kernel {
                    symbol,
                    buffers,
                    extent,
                    scratch_bytes: bytes,
                    parallel,
                } => {
                    scratch_bytes = scratch_bytes.max(*bytes);
                    // SAFETY: the manifest declares `symbol` a kernel with
                    // the `KernelFn` signature; `library` lives in `self`.
                    let func = unsafe { library.symbol::<KernelFn>(symbol)? };
                    Call::Kernel {
                        symbol: symbol.clone(),
                        func,
                        buffers: buffers.clone(),
                        extent: *extent,
                        parallel: *parallel,
                    }
                }
                Step::Gemm { symbol, a, c } => {
                    let manifest = library
                        .manifest()
                        .gemms
                        .iter()
                        .find(|g| &g.symbol == symbol)
                        .ok_or_else(|| DeviceError::UnknownKernel(symbol.clone()))?
                        .clone();
                    scratch_bytes = scratch_bytes.max(manifest.scratch_floats * 4);
                    // SAFETY: the manifest declares `symbol` a GEMM with the
                    // `GemmFn` signature generated for `manifest`.
                    let func = unsafe { library.symbol::<GemmFn>(manifest.function())? };
                    let weights_offset = manifest.weights_offset;
                    // SAFETY: `func` is the code generated for `manifest`
                    // and stays loaded as long as `library` (in `self`).
                    let entry = unsafe { GemmEntry::new(func, manifest) };
                    Call::Gemm {
                        entry,
                        weights_offset,
                        a: *a,
                        c: *c,
                    }
                }
            });
        }
        let scratch = (0..threads)
            .map(|_| AlignedBuffer::zeroed(scratch_bytes.div_ceil(4)))
            .collect();
        Ok(Self {
            arena: AlignedBuffer::zeroed(plan.arena_bytes.div_ceil(4)),
            library,
            plan,
            calls,
            scratch,
            pool,
        })
    }

    /// The loaded library (its manifest, and its weights where they lie).
    pub fn library(&self) -> &KernelLibrary {
        &self.library
    }

    /// The plan being executed.
    pub fn plan(&self) -> &GraphPlan {
        &self.plan
    }

    /// Threads work is spread over.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Runs the graph on `inputs` (raw little-endian bytes, in plan order)
    /// and returns copies of the outputs' bytes.
    pub fn run(&mut self, inputs: &[&[u8]]) -> Result<Vec<Vec<u8>>, DeviceError> {
        Ok(self
            .run_borrowed(inputs)?
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect())
    }

    /// [`Self::run`] without copying: the outputs' bytes where they lie (in
    /// the arena, the weights or an input), valid until the next run. Saves
    /// a copy of large outputs such as an LLM's logits.
    pub fn run_borrowed<'s>(
        &'s mut self,
        inputs: &[&'s [u8]],
    ) -> Result<Vec<&'s [u8]>, DeviceError> {
        self.run_with(inputs, None)
    }

    /// [`Self::run_borrowed`], also returning the wall time of every step
    /// (in plan order), for profiles.
    pub fn run_profiled<'s>(
        &'s mut self,
        inputs: &[&'s [u8]],
    ) -> Result<(Vec<&'s [u8]>, Vec<std::time::Duration>), DeviceError> {
        let mut times = Vec::with_capacity(self.calls.len());
        let outputs = self.run_with(inputs, Some(&mut times))?;
        Ok((outputs, times))
    }

    fn run_with<'s>(
        &'s mut self,
        inputs: &[&'s [u8]],
        times: Option<&mut Vec<std::time::Duration>>,
    ) -> Result<Vec<&'s [u8]>, DeviceError> {
        if inputs.len() != self.plan.inputs.len() {
            return Err(DeviceError::Shape {
                context: "graph".into(),
                operand: "inputs",
                expected: self.plan.inputs.len(),
                actual: inputs.len(),
            });
        }
        for (spec, bytes) in self.plan.inputs.iter().zip(inputs) {
            if bytes.len() != spec.bytes() {
                return Err(DeviceError::Shape {
                    context: format!("graph input `{}` (bytes)", spec.name),
                    operand: "input",
                    expected: spec.bytes(),
                    actual: bytes.len(),
                });
            }
        }
        let bases = Bases {
            arena: bytemuck::cast_slice_mut::<f32, u8>(self.arena.as_mut_slice()).as_mut_ptr(),
            weights: bytemuck::cast_slice::<f32, u8>(self.library.weights()).as_ptr(),
            inputs: inputs.iter().map(|b| b.as_ptr()).collect(),
        };
        run_calls(&self.calls, &self.pool, &mut self.scratch, &bases, times)?;
        let outputs = self
            .plan
            .outputs
            .iter()
            .map(|spec| {
                let at = bases.resolve(spec.buf);
                // SAFETY: the output lies inside its region (placed by the
                // compiler with `spec.bytes()` bytes): the arena and weights
                // borrowed with `self`, or an input that outlives `'s`.
                unsafe { std::slice::from_raw_parts(at.cast_const(), spec.bytes()) }
            })
            .collect();
        Ok(outputs)
    }
}

/// Runs every call of the plan in order on `pool`, each kernel's
/// iterations split over its threads; with `times`, records each call's
/// wall time.
fn run_calls(
    calls: &[Call],
    pool: &ThreadPool,
    scratch: &mut [AlignedBuffer],
    bases: &Bases,
    mut times: Option<&mut Vec<std::time::Duration>>,
) -> Result<(), DeviceError> {
    for call in calls {
        let started = std::time::Instant::now();
        match call {
            Call::Kernel {
                symbol,
                func,
                buffers,
                extent,
                parallel,
            } => {
                let pointers: Vec<*mut u8> = buffers.iter().map(|&b| bases.resolve(b)).collect();
                let threads = if *parallel { pool.threads() } else { 1 };
                let parts: Vec<KernelPart> = split(*extent, threads)
                    .into_iter()
                    .zip(scratch.iter_mut())
                    .map(|(range, scratch)| KernelPart {
                        func: *func,
                        buffers: pointers.as_ptr() as usize,
                        begin: range.start as i64,
                        end: range.end as i64,
                        scratch: scratch.as_mut_slice().as_mut_ptr() as usize,
                    })
                    .collect();
                let status = pool.run_parts(&parts, run_kernel_part);
                if status != 0 {
                    return Err(DeviceError::Kernel {
                        symbol: symbol.clone(),
                        reason: status_text(status),
                    });
                }
            }
            Call::Gemm {
                entry,
                weights_offset,
                a,
                c,
            } => {
                let packed_b = bases.weights.wrapping_add(weights_offset * 4);
                // SAFETY: A and C are arena or input buffers of
                // `m·k` and `m·n` floats placed by the compiler; packed
                // B lies in the weight file (checked when loading).
                unsafe {
                    entry.run_raw(
                        bases.resolve(*a).cast(),
                        packed_b.cast(),
                        bases.resolve(*c).cast(),
                        pool,
                        scratch,
                    )
                };
            }
        }
        if let Some(times) = times.as_deref_mut() {
            times.push(started.elapsed());
        }
    }
    Ok(())
}

/// Splits `0..extent` into at most `parts` balanced non-empty ranges (one
/// empty range for an empty extent, so the kernel is still called once).
fn split(extent: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.min(extent).max(1);
    (0..parts)
        .map(|i| extent * i / parts..extent * (i + 1) / parts)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_as_words() {
        assert_eq!(status_text(STATUS_INDEX_OUT_OF_RANGE), "index out of range");
        assert_eq!(
            status_text(STATUS_INDEX_OUT_OF_RANGE | STATUS_DIVISION_BY_ZERO),
            "index out of range and integer division by zero"
        );
        assert_eq!(status_text(64), "unknown status 64");
    }

    #[test]
    fn split_covers_the_extent_once() {
        assert_eq!(split(7, 2), vec![0..3, 3..7]);
        assert_eq!(split(1, 4), vec![0..1]);
        assert_eq!(split(0, 2), vec![0..0]);
    }
}
