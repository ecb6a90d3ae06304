//! Tiled int8 GEMM: out[M x N] = requant(A[M x K] * W[K x N] + bias).

use super::data::{i8_bytes, SplitMix64};
use super::pipeline::{emit, param_bytes, MatmulIo};
use super::{KernelError, ProgramBuilder, TilePlan};
use crate::config::MachineConfig;
use crate::isa::Instr;
use crate::program::Program;
use crate::quant::Requant;

/// Operands of one GEMM layer.
#[derive(Clone, Debug)]
pub struct GemmOperands {
    /// Rows of A / output.
    pub m: usize,
    /// Reduction depth.
    pub k: usize,
    /// Output columns.
    pub n: usize,
    /// A, M x K row-major.
    pub a: Vec<i8>,
    /// W, K x N row-major.
    pub w: Vec<i8>,
    /// Per-column bias.
    pub bias: Option<Vec<i32>>,
    /// Output requantisation (its multiplier and shift apply unless
    /// `channel_scales` is given).
    pub quant: Requant,
    /// Per-output-channel multiplier and shift (per-channel quantised weights).
    pub channel_scales: Option<Vec<(i32, i32)>>,
}

impl GemmOperands {
    /// Random operands from `seed`, with a requantisation scale that keeps
    /// outputs spread over the int8 range.
    pub fn random(m: usize, k: usize, n: usize, seed: u64) -> GemmOperands {
        let mut rng = SplitMix64::new(seed);
        let scale = 1.0 / (128.0 * (k.max(1) as f64).sqrt());
        let (multiplier, shift) = Requant::quantize_scale(scale).unwrap_or((1 << 30, -31));
        GemmOperands {
            m,
            k,
            n,
            a: rng.i8s(m * k),
            w: rng.i8s(k * n),
            bias: Some(rng.i32s(n, 4096)),
            quant: Requant {
                multiplier,
                shift,
                zero_point: (rng.next_u64() % 21) as i32 - 10,
                clamp_min: -128,
                clamp_max: 127,
            },
            channel_scales: None,
        }
    }

    /// The same operands requantised per output column (per-channel
    /// quantised weights), with scales spread over 4x around the
    /// per-tensor one, as a compiled MatMul with constant weights is.
    pub fn per_channel(mut self, seed: u64) -> GemmOperands {
        let q = self.quant;
        let base = q.multiplier as f64 / 2f64.powi(31) * 2f64.powi(q.shift) / 2.0;
        self.channel_scales = Some(SplitMix64::new(seed).channel_scales(self.n, base));
        self
    }

    /// The reference result.
    pub fn reference(&self) -> Vec<i8> {
        super::reference::gemm(
            &self.a,
            &self.w,
            self.bias.as_deref(),
            (self.m, self.k, self.n),
            (&self.quant, self.channel_scales.as_deref()),
        )
    }
}

/// A generated GEMM program and where its output lands in DRAM.
pub struct GemmProgram {
    /// The program (operands in its DRAM image).
    pub program: Program,
    /// DRAM address of the M x N int8 output.
    pub out_addr: u32,
    /// The tiling used.
    pub plan: TilePlan,
    /// DRAM addresses of the A and W segments (run-time operands are
    /// written there, as for [`super::KernelProgram::inputs`]).
    pub inputs: [u32; 2],
}

/// Generates a GEMM program for `config`; `unsplit` demands SCALE-Sim's folds
/// exactly (the streamed dimension kept whole).
pub fn generate(
    ops: &GemmOperands,
    config: &MachineConfig,
    unsplit: bool,
) -> Result<GemmProgram, KernelError> {
    generate_with(ops, None, config, unsplit)
}

/// [`generate`] whose output stage maps each requantised int8 result `q`
/// through `table[q + 128]` (`vlut` on the output tile before it is
/// stored): a function of the GEMM's result fused into the layer.
pub fn generate_with(
    ops: &GemmOperands,
    table: Option<&[i8; 256]>,
    config: &MachineConfig,
    unsplit: bool,
) -> Result<GemmProgram, KernelError> {
    let (m, k, n) = (ops.m, ops.k, ops.n);
    if m == 0 || k == 0 || n == 0 {
        return Err(KernelError::BadShape(format!(
            "GEMM {m}x{k}x{n} has a zero dimension"
        )));
    }
    if ops.a.len() != m * k
        || ops.w.len() != k * n
        || ops.bias.as_ref().is_some_and(|b| b.len() != n)
    {
        return Err(KernelError::BadShape(
            "operand lengths do not match M, K, N".into(),
        ));
    }
    let plan = TilePlan::choose_reserving(
        config,
        (m, k, n),
        param_bytes(ops.channel_scales.is_some()),
        table.map_or(0, |t| t.len()),
        unsplit,
    )?;
    let mut b = ProgramBuilder::default();
    let a_dram = b.alloc_data(i8_bytes(&ops.a))?;
    let io = MatmulIo::alloc(
        &mut b,
        (m, k, n),
        &ops.w,
        ops.bias.as_deref(),
        ops.channel_scales.as_deref(),
        (ops.quant, table),
    )?;
    let load_a = |b: &mut ProgramBuilder,
                  rows: std::ops::Range<usize>,
                  cols: std::ops::Range<usize>,
                  sram: u64,
                  stride: u64| {
        b.emit(Instr::LdCfg {
            dram_stride: k as i64,
            sram_stride: stride as i64,
            pad_top: 0,
            pad_bottom: 0,
            pad_left: 0,
            pad_right: 0,
        })?;
        b.emit(Instr::Ld {
            space: 1,
            sram: sram as i64,
            dram: (a_dram as usize + rows.start * k + cols.start) as i64,
            rows: rows.len() as i64,
            row_bytes: cols.len() as i64,
        })
    };
    emit(&mut b, &io, plan, &load_a)?;
    Ok(GemmProgram {
        program: b.finish()?,
        out_addr: io.out_dram,
        plan,
        inputs: [a_dram, io.w_dram],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{simulate, SimOptions};

    /// A table fused into the output stage gives the table of the plain
    /// GEMM's result, element for element, on both presets (one tile and
    /// several); the table load and a `vlut` per tile cost some cycles.
    #[test]
    fn a_fused_table_maps_every_result() {
        let table: [i8; 256] = std::array::from_fn(|i| ((i as i32 * 37 + 11) % 256 - 128) as i8);
        for (config, (m, k, n)) in [
            (MachineConfig::edge_small(), (40, 72, 48)),
            (MachineConfig::phone_flagship(), (9, 300, 130)),
        ] {
            let ops = GemmOperands::random(m, k, n, 5).per_channel(6);
            let want: Vec<i8> = ops
                .reference()
                .iter()
                .map(|&q| table[(q as i32 + 128) as usize])
                .collect();
            let plain = generate(&ops, &config, false).unwrap();
            let fused = generate_with(&ops, Some(&table), &config, false).unwrap();
            let run =
                |p: &GemmProgram| simulate(&p.program, &config, SimOptions::default()).unwrap();
            let (a, b) = (run(&plain), run(&fused));
            let at = fused.out_addr as usize;
            let got: Vec<i8> = b.dram[at..at + m * n].iter().map(|&v| v as i8).collect();
            assert_eq!(got, want, "{}", config.name);
            assert!(b.stats.cycles > a.stats.cycles, "the table costs something");
        }
    }
}
