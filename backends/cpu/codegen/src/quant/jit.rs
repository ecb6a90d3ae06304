//! One quantised kernel compiled in-process with its packed operand, for
//! tests and measurements of the kernels apart from a graph.

use inkwell::context::Context;
use m4c_cpu_device::{AlignedBuffer, KernelFn};

use super::{Int4A8Spec, Int4GemmSpec, Int4Weights, Int8GemmSpec, Int8Output, Int8Weights};
use crate::kernels::Cx;
use crate::{CodegenError, JitModule, Machine, Target};

/// A compiled `[input, packed, output]` kernel and its packed operand.
pub struct JitKernel<'ctx> {
    // Kept alive: `func` points into its code.
    _module: JitModule<'ctx>,
    func: KernelFn,
    packed: AlignedBuffer,
    input_bytes: usize,
    output_bytes: usize,
    scratch_bytes: usize,
    extent: usize,
}

impl<'ctx> JitKernel<'ctx> {
    /// The int8 GEMM `spec` over the constant operands `weights`.
    pub fn int8_gemm(
        context: &'ctx Context,
        target: &Target,
        spec: &Int8GemmSpec,
        weights: &Int8Weights<'_>,
    ) -> Result<Self, CodegenError> {
        if spec.runtime != Default::default() {
            return Err(CodegenError::Unsupported(
                "a JIT int8 GEMM with run-time operands (graphs only)".into(),
            ));
        }
        let packed = spec.pack(target, weights)?;
        let output = match spec.output {
            Int8Output::I32 | Int8Output::F32 => 4,
            Int8Output::Quantized { .. } => 1,
        };
        Self::compile(
            context,
            target,
            &spec.symbol,
            |cx| super::emit_int8_gemm(cx, spec),
            Sizes {
                packed,
                input_bytes: spec.m * spec.k,
                output_bytes: spec.m * spec.n * output,
                scratch_bytes: spec.scratch_bytes(target),
                extent: spec.extent(target),
            },
        )
    }

    /// The int4 weight-only GEMM `spec` over `weights`.
    pub fn int4_gemm(
        context: &'ctx Context,
        target: &Target,
        spec: &Int4GemmSpec,
        weights: &Int4Weights<'_>,
    ) -> Result<Self, CodegenError> {
        let packed = spec.pack(weights)?;
        Self::compile(
            context,
            target,
            &spec.symbol,
            |cx| super::emit_int4_gemm(cx, spec),
            Sizes {
                packed,
                input_bytes: spec.m * spec.k * 4,
                output_bytes: spec.m * spec.n * 4,
                scratch_bytes: spec.scratch_bytes(),
                extent: spec.extent(),
            },
        )
    }

    /// The int4 GEMM with int8 compute `spec` over `weights`.
    pub fn int4_a8_gemm(
        context: &'ctx Context,
        target: &Target,
        spec: &Int4A8Spec,
        weights: &Int4Weights<'_>,
    ) -> Result<Self, CodegenError> {
        let packed = spec.pack(target, weights)?;
        Self::compile(
            context,
            target,
            &spec.symbol,
            |cx| super::emit_int4_a8_gemm(cx, spec),
            Sizes {
                packed,
                input_bytes: spec.m * spec.k * 4,
                output_bytes: spec.m * spec.n * 4,
                scratch_bytes: spec.scratch_bytes(),
                extent: spec.extent(target),
            },
        )
    }

    fn compile(
        context: &'ctx Context,
        target: &Target,
        symbol: &str,
        emit: impl FnOnce(Cx<'_, 'ctx>) -> Result<(), CodegenError>,
        sizes: Sizes,
    ) -> Result<Self, CodegenError> {
        let machine = Machine::new(target)?;
        let module = machine.new_module(context, symbol);
        emit(Cx {
            context,
            module: &module,
            target,
        })?;
        let jit = JitModule::new(&machine, module)?;
        let address = jit.address(symbol)?;
        // SAFETY: `address` is the JIT-compiled code of a kernel emitted
        // with the `KernelFn` signature; `_module` keeps it alive as long
        // as `func`.
        let func = unsafe { std::mem::transmute::<usize, KernelFn>(address) };
        Ok(Self {
            _module: jit,
            func,
            packed: aligned(&sizes.packed),
            input_bytes: sizes.input_bytes,
            output_bytes: sizes.output_bytes,
            scratch_bytes: sizes.scratch_bytes,
            extent: sizes.extent,
        })
    }

    /// Iterations of the kernel.
    pub fn extent(&self) -> usize {
        self.extent
    }

    /// Runs all iterations as `pieces` consecutive calls (as threads would
    /// split them) on `input`, writing `output` (raw little-endian bytes
    /// of the kernel's element types).
    pub fn run(&self, input: &[u8], output: &mut [u8], pieces: usize) -> Result<(), CodegenError> {
        self.check("output", output.len(), self.output_bytes)?;
        let mut buffers = self.buffers(input)?;
        let pieces = pieces.clamp(1, self.extent.max(1));
        for piece in 0..pieces {
            buffers.call(
                self,
                self.extent * piece / pieces,
                self.extent * (piece + 1) / pieces,
            )?;
        }
        let bytes: Vec<u8> = buffers
            .output
            .as_slice()
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        output.copy_from_slice(&bytes[..self.output_bytes]);
        Ok(())
    }

    /// The median wall time of `runs` whole-extent calls on `input` (after
    /// two more to warm up), with the buffers prepared once.
    pub fn time(&self, input: &[u8], runs: usize) -> Result<f64, CodegenError> {
        let mut buffers = self.buffers(input)?;
        let mut times = Vec::with_capacity(runs);
        for run in 0..runs.max(1) + 2 {
            let start = std::time::Instant::now();
            buffers.call(self, 0, self.extent)?;
            if run >= 2 {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }

    fn check(&self, what: &str, got: usize, want: usize) -> Result<(), CodegenError> {
        if got == want {
            return Ok(());
        }
        Err(CodegenError::Input(format!(
            "kernel {what} of {got} bytes, expected {want}"
        )))
    }

    fn buffers(&self, input: &[u8]) -> Result<Buffers, CodegenError> {
        self.check("input", input.len(), self.input_bytes)?;
        Ok(Buffers {
            input: aligned(input),
            output: AlignedBuffer::zeroed(self.output_bytes.div_ceil(4)),
            scratch: AlignedBuffer::zeroed(self.scratch_bytes.div_ceil(4)),
        })
    }
}

/// The input, output and scratch of calls to one kernel.
struct Buffers {
    input: AlignedBuffer,
    output: AlignedBuffer,
    scratch: AlignedBuffer,
}

impl Buffers {
    /// Calls `kernel` on iterations `begin..end`.
    fn call(
        &mut self,
        kernel: &JitKernel<'_>,
        begin: usize,
        end: usize,
    ) -> Result<(), CodegenError> {
        let pointers = [
            self.input.as_slice().as_ptr() as *mut u8,
            kernel.packed.as_slice().as_ptr() as *mut u8,
            self.output.as_mut_slice().as_mut_ptr() as *mut u8,
        ];
        // SAFETY: the input was checked against the kernel's size and the
        // output, packed operand and scratch were sized for it; the kernel
        // reads and writes only inside them, for iterations within its
        // extent.
        let status = unsafe {
            (kernel.func)(
                pointers.as_ptr(),
                begin as i64,
                end.min(kernel.extent) as i64,
                self.scratch.as_mut_slice().as_mut_ptr() as *mut u8,
            )
        };
        if status != 0 {
            return Err(CodegenError::Input(format!("kernel status {status}")));
        }
        Ok(())
    }
}

/// What a kernel reads and writes, in bytes.
struct Sizes {
    packed: Vec<u8>,
    input_bytes: usize,
    output_bytes: usize,
    scratch_bytes: usize,
    extent: usize,
}

/// `bytes` in a 64-byte aligned buffer (zero padded to whole f32s).
fn aligned(bytes: &[u8]) -> AlignedBuffer {
    let mut buffer = AlignedBuffer::zeroed(bytes.len().div_ceil(4).max(1));
    for (word, chunk) in buffer.as_mut_slice().iter_mut().zip(bytes.chunks(4)) {
        let mut b = [0u8; 4];
        b[..chunk.len()].copy_from_slice(chunk);
        *word = f32::from_le_bytes(b);
    }
    buffer
}
