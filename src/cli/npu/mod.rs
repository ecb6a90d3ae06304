//! `m4c npu ...`: assemble, disassemble and simulate NPU programs,
//! generate + simulate + check single layers (GEMM, convolution, depthwise
//! convolution, softmax, LayerNorm/RMSNorm, activations, elementwise ops),
//! and explore machine configurations over whole models (`explore`).

mod explore;
mod files;
mod layer;

use super::CliResult;
use files::{load_program, read_text, write_output};
use layer::{
    layer_config, plan_json, print_report, run_layer, run_norm, run_streamed, sim_options,
    write_trace,
};
use m4c_npu::asm::assemble;
use m4c_npu::config::{Dataflow, MachineConfig};
use m4c_npu::disasm::disassemble;
use m4c_npu::kernels::norm::NormKind;
use m4c_npu::kernels::reference::ConvShape;
use m4c_npu::kernels::{conv, depthwise, eltwise, gemm, lut, softmax};
use m4c_npu::sim::simulate;
use std::path::PathBuf;

/// Arguments of `m4c npu`.
#[derive(clap::Args)]
pub struct NpuArgs {
    #[command(subcommand)]
    command: NpuCommand,
}

#[derive(clap::Subcommand)]
enum NpuCommand {
    /// Assemble a text program (see docs/NPU_ISA.md) into a binary `.npub`.
    Asm {
        /// The assembly source.
        file: PathBuf,
        /// Output file [default: FILE with extension `.npub`].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Disassemble a binary `.npub` program to text (stdout unless -o).
    Disasm {
        /// The binary program.
        file: PathBuf,
        /// Write the text here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Simulate models over a grid of machines (array × SRAM × DRAM
    /// bandwidth) in parallel: a table and the latency/area Pareto front.
    Explore(explore::ExploreArgs),
    /// Describe an NPU: a summary of a preset or a config file, or with --dump
    /// its full description as commented TOML, the template for a new NPU
    /// (`m4c npu config --preset phone-flagship --dump -o my_npu.toml`, edit,
    /// then `--config my_npu.toml` anywhere a machine is taken).
    Config {
        /// A preset (edge-small, phone-flagship) or a .toml/.json file.
        #[arg(long, default_value = "edge-small")]
        preset: String,
        /// Print the whole description as commented TOML.
        #[arg(long)]
        dump: bool,
        /// With --dump: write the TOML here instead of stdout.
        #[arg(short, long, requires = "dump")]
        output: Option<PathBuf>,
    },
    /// Simulate a program (binary `.npub` or assembly text) and report cycles,
    /// engine utilisation, traffic and energy. Exits 1 if hazards are found.
    Sim {
        /// The program.
        program: PathBuf,
        #[command(flatten)]
        sim: SimFlags,
    },
    /// Generate, simulate and check one int8 GEMM layer: out[M,N] = A[M,K] * W[K,N].
    Gemm {
        /// Rows of A and of the output (tokens, pixels).
        #[arg(long)]
        m: usize,
        /// Reduction depth.
        #[arg(long)]
        k: usize,
        /// Output columns (features, channels).
        #[arg(long)]
        n: usize,
        /// Requantise per output column (per-channel quantised weights, as
        /// `--backend npu` compiles a MatMul with constant weights).
        #[arg(long)]
        per_channel: bool,
        #[command(flatten)]
        layer: LayerFlags,
    },
    /// Generate, simulate and check one int8 NHWC conv2d layer.
    Conv {
        /// Input height.
        #[arg(long)]
        h: usize,
        /// Input width.
        #[arg(long)]
        w: usize,
        /// Input channels.
        #[arg(long)]
        c_in: usize,
        /// Output channels.
        #[arg(long)]
        c_out: usize,
        /// Square kernel size (1, 3, ...).
        #[arg(long, default_value_t = 3)]
        kernel: usize,
        /// Stride in both directions.
        #[arg(long, default_value_t = 1)]
        stride: usize,
        /// Zero padding on every side.
        #[arg(long, default_value_t = 0)]
        pad: usize,
        /// Requantise per output channel (per-channel quantised weights).
        #[arg(long)]
        per_channel: bool,
        #[command(flatten)]
        layer: LayerFlags,
    },
    /// Generate, simulate and check a depthwise int8 NHWC conv2d (per-channel requantisation).
    Dwconv {
        /// Input height.
        #[arg(long)]
        h: usize,
        /// Input width.
        #[arg(long)]
        w: usize,
        /// Channels (in and out).
        #[arg(long)]
        c: usize,
        /// Square kernel size.
        #[arg(long, default_value_t = 3)]
        kernel: usize,
        /// Stride in both directions.
        #[arg(long, default_value_t = 1)]
        stride: usize,
        /// Zero padding on every side.
        #[arg(long, default_value_t = 1)]
        pad: usize,
        #[command(flatten)]
        layer: LayerFlags,
    },
    /// Generate, simulate and check an int8 softmax over each row of a ROWS x COLS matrix.
    Softmax {
        #[command(flatten)]
        shape: RowsCols,
        /// Input quantisation scale.
        #[arg(long, default_value_t = 0.05)]
        scale: f64,
        #[command(flatten)]
        layer: LayerFlags,
    },
    /// Generate, simulate and check an int8 LayerNorm over each row.
    Layernorm {
        #[command(flatten)]
        shape: RowsCols,
        #[command(flatten)]
        layer: LayerFlags,
    },
    /// Generate, simulate and check an int8 RMSNorm over each row.
    Rmsnorm {
        #[command(flatten)]
        shape: RowsCols,
        #[command(flatten)]
        layer: LayerFlags,
    },
    /// Generate, simulate and check an elementwise activation through a lookup table.
    Act {
        /// gelu, silu, sigmoid, tanh, exp or identity.
        #[arg(long = "fn", default_value = "gelu")]
        function: String,
        #[command(flatten)]
        shape: RowsCols,
        #[command(flatten)]
        layer: LayerFlags,
    },
    /// Generate, simulate and check an elementwise binary op of two int8 tensors.
    Eltwise {
        /// add, sub, mul, max or min.
        #[arg(long, default_value = "add")]
        op: String,
        #[command(flatten)]
        shape: RowsCols,
        #[command(flatten)]
        layer: LayerFlags,
    },
}

#[derive(clap::Args)]
pub(super) struct RowsCols {
    /// Rows of the (flattened) tensor.
    #[arg(long)]
    rows: usize,
    /// Elements per row.
    #[arg(long)]
    cols: usize,
}

#[derive(clap::Args)]
pub(super) struct SimFlags {
    /// Machine: a preset (edge-small, phone-flagship) or a .toml/.json file.
    #[arg(long, default_value = "edge-small")]
    config: String,
    /// Write a Perfetto / Chrome trace JSON (one track per engine) here.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Use SCALE-Sim v3's per-fold matrix cycle formulas.
    #[arg(long)]
    scalesim_compat: bool,
    /// Stop (exit 2) when any engine would run past this cycle.
    #[arg(long, default_value_t = m4c_npu::sim::DEFAULT_MAX_CYCLES)]
    max_cycles: u64,
    /// Stop (exit 2) before the instruction that would bring the simulator's
    /// own work past this many element operations (vector/SFU elements,
    /// 64-byte DMA or copy blocks, 64-MAC matrix steps; whatever the
    /// config claims): bounds a hostile program's running time.
    #[arg(long, default_value_t = m4c_npu::sim::DEFAULT_MAX_WORK)]
    max_work: u64,
}

#[derive(clap::Args)]
pub(super) struct LayerFlags {
    /// Machine: a preset (edge-small, phone-flagship) or a .toml/.json file.
    #[arg(long, conflicts_with = "array")]
    config: Option<String>,
    /// Instead of --config: an RxC array with SCALE-Sim-sized memories (6 MiB SRAMs, 2 MiB accumulator).
    #[arg(long, value_parser = parse_array)]
    array: Option<(u32, u32)>,
    /// Dataflow with --array: os (output-stationary) or ws (weight-stationary).
    #[arg(long, default_value = "ws", requires = "array")]
    dataflow: Dataflow,
    /// SCALE-Sim-compatible timing: one fold per matmul, SCALE-Sim's cycle formulas.
    #[arg(long)]
    scalesim_compat: bool,
    /// Seed of the random operands.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Write a Perfetto / Chrome trace JSON here.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Also write the generated program (binary .npub) here.
    #[arg(long)]
    emit: Option<PathBuf>,
}

/// The few numbers a hardware team compares NPUs by.
fn config_summary(c: &MachineConfig) -> String {
    let macs = c.array_rows as f64 * c.array_cols as f64;
    let tops = 2.0 * macs * c.clock_mhz * 1e6 / 1e12;
    let kib = |b: u32| b as f64 / 1024.0;
    let fmap = if c.fmap_sram_bytes == 0 {
        "none (feature maps live in DRAM)".to_string()
    } else {
        format!(
            "{:.0} KiB, {} B/cycle after {} cycles",
            kib(c.fmap_sram_bytes),
            c.fmap_dma.bytes_per_cycle,
            c.fmap_dma.latency_cycles
        )
    };
    format!(
        "{}: {}x{} int8 array ({:?}), {:.0} MHz, {tops:.2} TOPS peak\n\
         SRAM: {:.0} KiB weights + {:.0} KiB activations, {:.0} KiB accumulator\n\
         feature-map SRAM: {}\n\
         vector unit: {} lanes; special functions: {} lanes\n\
         DMA: {} B/cycle in, {} B/cycle out ({:.1} GB/s in)\n",
        c.name,
        c.array_rows,
        c.array_cols,
        c.dataflow,
        c.clock_mhz,
        kib(c.weight_sram_bytes),
        kib(c.act_sram_bytes),
        kib(c.acc_bytes),
        fmap,
        c.vector_lanes,
        c.sfu_lanes,
        c.dma_in.bytes_per_cycle,
        c.dma_out.bytes_per_cycle,
        c.dma_in.bytes_per_cycle as f64 * c.clock_mhz * 1e6 / 1e9,
    )
}

fn parse_array(s: &str) -> Result<(u32, u32), String> {
    let (r, c) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("`{s}` is not RxC (e.g. 32x32)"))?;
    let parse = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("`{v}` in `{s}` is not a number"))
    };
    Ok((parse(r)?, parse(c)?))
}

/// Refuses a layer whose operands (each `terms` entry: a product of sizes
/// in bytes) cannot fit the NPU's DRAM image, before any is allocated.
fn check_operands(what: &str, terms: &[&[usize]]) -> CliResult<()> {
    let limit = m4c_npu::program::MAX_DRAM_BYTES;
    let bytes = terms
        .iter()
        .map(|t| t.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64)))
        .try_fold(0u64, |a, t| a.checked_add(t?));
    match bytes {
        Some(b) if b <= limit => Ok(()),
        Some(b) => Err(format!(
            "{what}: the operands need {b} bytes, more than the NPU's {limit}-byte DRAM image"
        )
        .into()),
        None => Err(format!("{what}: the operand sizes overflow").into()),
    }
}

/// Checks a convolution's sizes before anything is allocated: a positive
/// kernel and stride, and operands that fit the DRAM image (`depthwise`:
/// one filter per channel).
fn check_conv(what: &str, s: &ConvShape, depthwise: bool) -> CliResult<()> {
    if s.kh == 0 || s.kw == 0 || s.stride == 0 {
        return Err(format!("{what}: --kernel and --stride must be at least 1").into());
    }
    let out = |x: usize, k: usize| {
        s.pad
            .checked_mul(2)
            .and_then(|p| x.checked_add(p))
            .map(|x| x.saturating_sub(k) / s.stride + 1)
            .ok_or_else(|| format!("{what}: the padded size overflows"))
    };
    let (oh, ow) = (out(s.h, s.kh)?, out(s.w, s.kw)?);
    let filters = if depthwise { 1 } else { s.c_out };
    check_operands(
        what,
        &[
            &[s.h, s.w, s.c_in],
            &[s.kh, s.kw, s.c_in, filters],
            &[oh, ow, s.c_out, 4],
        ],
    )
}

/// Runs `m4c npu ...`; returns the exit code.
pub fn run(args: NpuArgs) -> CliResult<i32> {
    match args.command {
        NpuCommand::Asm { file, output } => {
            let source = read_text(&file)?;
            let program = assemble(&source).map_err(|e| format!("{}: {e}", file.display()))?;
            let out = output.unwrap_or_else(|| file.with_extension("npub"));
            write_output(&out, &[&file], &program.to_bytes())?;
            Ok(0)
        }
        NpuCommand::Disasm { file, output } => {
            let program = load_program(&file)?;
            let text = disassemble(&program);
            match output {
                Some(out) => write_output(&out, &[&file], text.as_bytes())?,
                None => print!("{text}"),
            }
            Ok(0)
        }
        NpuCommand::Explore(args) => explore::run(args),
        NpuCommand::Config {
            preset,
            dump,
            output,
        } => {
            let config = MachineConfig::load(&preset)?;
            if !dump {
                print!("{}", config_summary(&config));
                return Ok(0);
            }
            let text = config.to_commented_toml();
            match output {
                Some(out) => write_output(&out, &[std::path::Path::new(&preset)], text.as_bytes())?,
                None => print!("{text}"),
            }
            Ok(0)
        }
        NpuCommand::Sim { program, sim } => {
            let config = MachineConfig::load(&sim.config)?;
            let file = program;
            let program = load_program(&file)?;
            let options = m4c_npu::sim::SimOptions {
                max_cycles: sim.max_cycles,
                max_work: sim.max_work,
                ..sim_options(sim.scalesim_compat, sim.trace.is_some(), true)
            };
            let result = simulate(&program, &config, options)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            write_trace(sim.trace.as_deref(), &result, &config)?;
            let hazards = serde_json::to_value(&result.hazards)?;
            let extra = serde_json::json!({ "hazards": hazards });
            print_report(&result.stats, &config, sim.json, extra)?;
            if !sim.json {
                for h in &result.hazards {
                    println!(
                        "hazard: {:?} [{}, {}) touched by #{} ({}) and #{} ({}) without ordering",
                        h.mem,
                        h.start,
                        h.end,
                        h.first.0,
                        h.first.1.name(),
                        h.second.0,
                        h.second.1.name()
                    );
                }
            }
            Ok(if result.hazards.is_empty() { 0 } else { 1 })
        }
        NpuCommand::Gemm {
            m,
            k,
            n,
            per_channel,
            layer,
        } => {
            check_operands("gemm", &[&[m, k], &[k, n], &[m, n, 4]])?;
            let config = layer_config(&layer)?;
            let mut ops = gemm::GemmOperands::random(m, k, n, layer.seed);
            if per_channel {
                ops = ops.per_channel(layer.seed.wrapping_add(1));
            }
            let g = gemm::generate(&ops, &config, layer.scalesim_compat)?;
            let desc = serde_json::json!({ "kind": "gemm", "m": m, "k": k, "n": n });
            let expected = ops.reference();
            run_layer(
                &layer,
                &config,
                &g.program,
                plan_json(g.plan),
                (g.out_addr, expected),
                desc,
            )
        }
        NpuCommand::Conv {
            h,
            w,
            c_in,
            c_out,
            kernel,
            stride,
            pad,
            per_channel,
            layer,
        } => {
            let shape = ConvShape {
                h,
                w,
                c_in,
                c_out,
                kh: kernel,
                kw: kernel,
                stride,
                pad,
            };
            check_conv("conv", &shape, false)?;
            let config = layer_config(&layer)?;
            let mut ops = conv::ConvOperands::random(shape, layer.seed);
            if per_channel {
                ops = ops.per_channel(layer.seed.wrapping_add(1));
            }
            let g = conv::generate(&ops, &config, layer.scalesim_compat)?;
            let desc = serde_json::json!({
                "kind": "conv", "h": h, "w": w, "c_in": c_in, "c_out": c_out, "kernel": kernel,
                "stride": stride, "pad": pad, "per_channel": per_channel,
                "gemm_m": shape.out_h() * shape.out_w(),
                "gemm_k": kernel * kernel * c_in, "gemm_n": c_out,
            });
            let expected = ops.reference();
            run_layer(
                &layer,
                &config,
                &g.program,
                plan_json(g.plan),
                (g.out_addr, expected),
                desc,
            )
        }
        NpuCommand::Dwconv {
            h,
            w,
            c,
            kernel,
            stride,
            pad,
            layer,
        } => {
            let shape = ConvShape {
                h,
                w,
                c_in: c,
                c_out: c,
                kh: kernel,
                kw: kernel,
                stride,
                pad,
            };
            check_conv("dwconv", &shape, true)?;
            let ops = depthwise::DepthwiseOperands::random(shape, layer.seed);
            let desc = serde_json::json!({
                "kind": "dwconv", "h": h, "w": w, "c": c, "kernel": kernel, "stride": stride, "pad": pad,
            });
            let config = layer_config(&layer)?;
            let k = depthwise::generate(&ops, &config)?;
            run_streamed(&layer, &config, &k, ops.reference(), desc)
        }
        NpuCommand::Softmax {
            shape,
            scale,
            layer,
        } => {
            check_operands("softmax", &[&[shape.rows, shape.cols, 4]])?;
            let ops = softmax::SoftmaxOperands::random(shape.rows, shape.cols, scale, layer.seed);
            let config = layer_config(&layer)?;
            let k = softmax::generate(&ops, &config)?;
            let desc =
                serde_json::json!({ "kind": "softmax", "rows": shape.rows, "cols": shape.cols });
            run_streamed(&layer, &config, &k, ops.reference()?, desc)
        }
        NpuCommand::Layernorm { shape, layer } => {
            check_operands("layernorm", &[&[shape.rows, shape.cols, 4]])?;
            run_norm(NormKind::LayerNorm, &shape, &layer)
        }
        NpuCommand::Rmsnorm { shape, layer } => {
            check_operands("rmsnorm", &[&[shape.rows, shape.cols, 4]])?;
            run_norm(NormKind::RmsNorm, &shape, &layer)
        }
        NpuCommand::Act {
            function,
            shape,
            layer,
        } => {
            check_operands("act", &[&[shape.rows, shape.cols, 4]])?;
            let f = lut::Activation::parse(&function)?;
            let ops = lut::UnaryOperands::random(f, shape.rows, shape.cols, layer.seed);
            let config = layer_config(&layer)?;
            let k = lut::generate(&ops, &config)?;
            let desc = serde_json::json!({
                "kind": "act", "fn": function, "rows": shape.rows, "cols": shape.cols,
            });
            run_streamed(&layer, &config, &k, ops.reference(), desc)
        }
        NpuCommand::Eltwise { op, shape, layer } => {
            check_operands("eltwise", &[&[shape.rows, shape.cols, 4]])?;
            let elt = eltwise::EltOp::parse(&op)?;
            let ops = eltwise::BinaryOperands::random(elt, shape.rows, shape.cols, layer.seed);
            let config = layer_config(&layer)?;
            let k = eltwise::generate(&ops, &config)?;
            let desc = serde_json::json!({
                "kind": "eltwise", "op": op, "rows": shape.rows, "cols": shape.cols,
            });
            run_streamed(&layer, &config, &k, ops.reference()?, desc)
        }
    }
}
