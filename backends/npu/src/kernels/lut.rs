//! Elementwise int8 functions through a 256-entry lookup table (GELU, SiLU,
//! sigmoid, tanh, exp, or a plain requantisation): the table is computed on
//! the host from the input and output quantisation, loaded once, and `vlut`
//! maps every element. Each output is the nearest int8 to the function of
//! the dequantised input, so the error is at most half an output step
//! (unless the result saturates the int8 range).

use super::data::{i8_bytes, SplitMix64};
use super::stream::{self, StreamKernel, StreamShape};
use super::{KernelError, KernelProgram, ProgramBuilder, Quant};
use crate::config::MachineConfig;
use crate::isa::Instr;

/// A unary function evaluated through a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x * Phi(x)` with the exact normal CDF (erf).
    Gelu,
    /// `x * sigmoid(x)`.
    Silu,
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// Hyperbolic tangent.
    Tanh,
    /// `e^x`.
    Exp,
    /// The identity: requantises from the input to the output quantisation.
    Identity,
}

impl Activation {
    /// The function on reals.
    pub fn eval(self, x: f64) -> f64 {
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        match self {
            Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
            Activation::Silu => x * sigmoid(x),
            Activation::Sigmoid => sigmoid(x),
            Activation::Tanh => x.tanh(),
            Activation::Exp => x.exp(),
            Activation::Identity => x,
        }
    }

    /// The activation called `name` (`gelu`, `silu`, `sigmoid`, `tanh`, `exp`, `identity`).
    pub fn parse(name: &str) -> Result<Activation, KernelError> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "silu" => Activation::Silu,
            "sigmoid" => Activation::Sigmoid,
            "tanh" => Activation::Tanh,
            "exp" => Activation::Exp,
            "identity" => Activation::Identity,
            _ => {
                return Err(KernelError::BadShape(format!(
                    "unknown activation `{name}` (gelu, silu, sigmoid, tanh, exp, identity)"
                )))
            }
        })
    }
}

/// The table mapping int8 `q` (at index `q + 128`) to the output int8.
pub fn table(f: Activation, input: Quant, output: Quant) -> [i8; 256] {
    std::array::from_fn(|i| output.quantize(f.eval(input.dequantize((i as i32 - 128) as i8))))
}

/// Operands of one elementwise unary layer.
#[derive(Clone, Debug)]
pub struct UnaryOperands {
    /// The function.
    pub f: Activation,
    /// Rows of the (flattened) tensor.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Input, rows x cols.
    pub x: Vec<i8>,
    /// Input quantisation.
    pub input: Quant,
    /// Output quantisation.
    pub output: Quant,
}

impl UnaryOperands {
    /// Random operands from `seed`: input over [-6, 6), the output range
    /// chosen for the function.
    pub fn random(f: Activation, rows: usize, cols: usize, seed: u64) -> UnaryOperands {
        let mut rng = SplitMix64::new(seed);
        let input = Quant {
            scale: 6.0 / 128.0,
            zero_point: (rng.next_u64() % 9) as i32 - 4,
        };
        let (lo, hi) = match f {
            Activation::Gelu | Activation::Silu => (-0.5, 6.5),
            Activation::Sigmoid => (0.0, 1.0),
            Activation::Tanh => (-1.0, 1.0),
            Activation::Exp => (0.0, 20.0),
            Activation::Identity => (-4.0, 4.0),
        };
        let scale: f64 = (hi - lo) / 255.0;
        let output = Quant {
            scale,
            zero_point: (-128.0 - lo / scale).round() as i32,
        };
        UnaryOperands {
            f,
            rows,
            cols,
            x: rng.i8s(rows * cols),
            input,
            output,
        }
    }

    /// The reference: a table lookup per element.
    pub fn reference(&self) -> Vec<i8> {
        let t = table(self.f, self.input, self.output);
        self.x
            .iter()
            .map(|&v| t[(v as i32 + 128) as usize])
            .collect()
    }
}

/// Generates the lookup program for `config`.
pub fn generate(ops: &UnaryOperands, config: &MachineConfig) -> Result<KernelProgram, KernelError> {
    ops.input.check("input")?;
    ops.output.check("output")?;
    let t = table(ops.f, ops.input, ops.output);
    generate_table(&t, ops.rows, ops.cols, &ops.x, config)
}

/// Generates the lookup program of any 256-entry table (index `q + 128`):
/// what a compiler uses for a function the [`Activation`] list does not
/// name (a table it computed itself from the quantisations).
pub fn generate_table(
    t: &[i8; 256],
    rows: usize,
    cols: usize,
    x: &[i8],
    config: &MachineConfig,
) -> Result<KernelProgram, KernelError> {
    if cols == 0 || x.len() != rows * cols {
        return Err(KernelError::BadShape(format!(
            "{rows}x{cols} with {} inputs",
            x.len()
        )));
    }
    let shape = StreamShape {
        rows,
        in_row_bytes: cols,
        out_row_bytes: cols,
        acc_per_row: 0,
        const_bytes: 256,
    };
    let tile_rows = stream::tile_rows(config, &shape)?;
    let mut b = ProgramBuilder::default();
    let table_dram = b.alloc_data(i8_bytes(t))?;
    let x_dram = b.alloc_data(i8_bytes(x))?;
    let out_dram = b.alloc(rows * cols)?;
    let compute = |b: &mut ProgramBuilder, t: &stream::Tile| {
        super::vector::strides(b, cols, cols, 0)?;
        b.emit(Instr::Vlut {
            dst: t.output as i64,
            src: t.input as i64,
            table: 0,
            rows: t.rows.len() as i64,
            cols: cols as i64,
        })
    };
    let kernel = StreamKernel {
        load_consts: &|b| stream::load_block(b, table_dram, 256, 0),
        load: &|b, t| stream::load_rows(b, x_dram, cols, &t.rows, t.input, cols),
        compute: &compute,
        store: &|b, t| stream::store_rows(b, out_dram, cols, t),
    };
    stream::emit(&mut b, &shape, tile_rows, &kernel)?;
    Ok(KernelProgram {
        program: b.finish()?,
        out_addr: out_dram,
        out_len: rows * cols,
        inputs: vec![x_dram],
        tile_rows,
    })
}
