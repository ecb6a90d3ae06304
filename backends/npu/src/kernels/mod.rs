//! Kernel generators: Rust functions that turn layer shapes and
//! quantisation parameters into NPU programs, plus the plain Rust reference
//! implementations they are checked against.

mod builder;
pub mod conv;
pub mod data;
pub mod depthwise;
pub mod eltwise;
pub mod gather;
pub mod gemm;
pub mod lerp;
pub mod lut;
pub mod norm;
mod pipeline;
pub mod reduce;
pub mod reference;
pub mod softmax;
mod stream;
mod vector;

pub use builder::ProgramBuilder;
pub use pipeline::TilePlan;
pub use stream::StreamShape;

/// An int8 tensor's affine quantisation: `real = scale * (q - zero_point)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quant {
    /// The real value of one step.
    pub scale: f64,
    /// The integer that represents 0.
    pub zero_point: i32,
}

impl Quant {
    /// The real value of `q`.
    pub fn dequantize(&self, q: i8) -> f64 {
        self.scale * (q as i32 - self.zero_point) as f64
    }

    /// The int8 nearest to `x`, saturated.
    pub fn quantize(&self, x: f64) -> i8 {
        ((x / self.scale).round() + self.zero_point as f64).clamp(-128.0, 127.0) as i8
    }

    /// Checks the scale is positive and finite and the zero point an int8.
    pub fn check(&self, what: &str) -> Result<(), KernelError> {
        if self.scale > 0.0 && self.scale.is_finite() && (-128..=127).contains(&self.zero_point) {
            Ok(())
        } else {
            Err(KernelError::BadShape(format!(
                "{what} quantisation {self:?} needs a positive finite scale and an int8 zero point"
            )))
        }
    }
}

/// A generated program whose result is an int8 tensor in its DRAM image.
#[derive(Debug)]
pub struct KernelProgram {
    /// The program (operands in its DRAM image).
    pub program: crate::program::Program,
    /// DRAM address of the output.
    pub out_addr: u32,
    /// Output bytes.
    pub out_len: usize,
    /// DRAM addresses of the run-time operands' segments, in operand
    /// order: a caller that runs the program on other data overwrites
    /// these segments of the image (`Program::with_segment`).
    pub inputs: Vec<u32>,
    /// Rows per tile of the streamed pipeline.
    pub tile_rows: usize,
}

impl KernelProgram {
    /// The output as int8 from a final DRAM image.
    pub fn output(&self, dram: &[u8]) -> Vec<i8> {
        let at = self.out_addr as usize;
        dram[at..at + self.out_len]
            .iter()
            .map(|&b| b as i8)
            .collect()
    }
}

/// `bytes` rounded up to the 64-byte alignment of SRAM buffers.
pub(crate) fn align(bytes: usize) -> usize {
    bytes.div_ceil(64) * 64
}

/// `ceil(log2(n))` for `n >= 1`.
pub(crate) fn ceil_log2(n: usize) -> u32 {
    n.next_power_of_two().trailing_zeros()
}

/// The multiplier/shift of a real scale, or an error naming `what`.
pub(crate) fn scale_of(scale: f64, what: &str) -> Result<(i32, i32), KernelError> {
    crate::quant::Requant::quantize_scale(scale).ok_or_else(|| {
        KernelError::BadShape(format!(
            "{what} scale {scale:e} is not representable as a multiplier and shift"
        ))
    })
}

/// Why a kernel could not be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// A shape is zero or inconsistent.
    #[error("bad shape: {0}")]
    BadShape(String),
    /// An operand does not fit its instruction field.
    #[error("`{mnemonic}` field {field}={value} does not fit its encoding")]
    FieldRange {
        /// Mnemonic.
        mnemonic: &'static str,
        /// Field.
        field: &'static str,
        /// Value.
        value: i64,
    },
    /// The layer does not fit the machine's memories.
    #[error("does not fit: {0}")]
    DoesNotFit(String),
    /// A generator bug (the generated program failed validation).
    #[error("internal generator error: {0}")]
    Internal(String),
}
