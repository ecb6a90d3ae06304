//! `m4c npu ...`: assemble, disassemble and simulate NPU programs, and
//! generate + simulate + check single layers (GEMM, convolution, depthwise
//! convolution, softmax, LayerNorm/RMSNorm, activations, elementwise ops).

use super::CliResult;
use m4c_npu::asm::assemble;
use m4c_npu::config::{Dataflow, MachineConfig};
use m4c_npu::disasm::disassemble;
use m4c_npu::kernels::norm::NormKind;
use m4c_npu::kernels::reference::ConvShape;
use m4c_npu::kernels::{
    conv, depthwise, eltwise, gemm, lut, norm, softmax, KernelProgram, TilePlan,
};
use m4c_npu::program::Program;
use m4c_npu::report::Stats;
use m4c_npu::sim::{chrome_trace, simulate, SimOptions, SimResult, TimingMode};
use std::path::{Path, PathBuf};

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
struct RowsCols {
    /// Rows of the (flattened) tensor.
    #[arg(long)]
    rows: usize,
    /// Elements per row.
    #[arg(long)]
    cols: usize,
}

#[derive(clap::Args)]
struct SimFlags {
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
}

#[derive(clap::Args)]
struct LayerFlags {
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

/// Runs `m4c npu ...`; returns the exit code.
pub fn run(args: NpuArgs) -> CliResult<i32> {
    match args.command {
        NpuCommand::Asm { file, output } => {
            let source = read_text(&file)?;
            let program = assemble(&source).map_err(|e| format!("{}: {e}", file.display()))?;
            let out = output.unwrap_or_else(|| file.with_extension("npub"));
            write_atomic(&out, &program.to_bytes())?;
            Ok(0)
        }
        NpuCommand::Disasm { file, output } => {
            let program = load_program(&file)?;
            let text = disassemble(&program);
            match output {
                Some(out) => write_atomic(&out, text.as_bytes())?,
                None => print!("{text}"),
            }
            Ok(0)
        }
        NpuCommand::Sim { program, sim } => {
            let config = MachineConfig::load(&sim.config)?;
            let program = load_program(&program)?;
            let options = sim_options(sim.scalesim_compat, sim.trace.is_some(), true);
            let result = simulate(&program, &config, options)?;
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
        NpuCommand::Gemm { m, k, n, layer } => {
            let config = layer_config(&layer)?;
            let ops = gemm::GemmOperands::random(m, k, n, layer.seed);
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
            let config = layer_config(&layer)?;
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
            let ops = softmax::SoftmaxOperands::random(shape.rows, shape.cols, scale, layer.seed);
            let config = layer_config(&layer)?;
            let k = softmax::generate(&ops, &config)?;
            let desc =
                serde_json::json!({ "kind": "softmax", "rows": shape.rows, "cols": shape.cols });
            run_streamed(&layer, &config, &k, ops.reference()?, desc)
        }
        NpuCommand::Layernorm { shape, layer } => run_norm(NormKind::LayerNorm, &shape, &layer),
        NpuCommand::Rmsnorm { shape, layer } => run_norm(NormKind::RmsNorm, &shape, &layer),
        NpuCommand::Act {
            function,
            shape,
            layer,
        } => {
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

fn run_norm(kind: NormKind, shape: &RowsCols, layer: &LayerFlags) -> CliResult<i32> {
    let ops = norm::NormOperands::random(kind, shape.rows, shape.cols, layer.seed);
    let config = layer_config(layer)?;
    let k = norm::generate(&ops, &config)?;
    let name = if kind == NormKind::LayerNorm {
        "layernorm"
    } else {
        "rmsnorm"
    };
    let desc = serde_json::json!({ "kind": name, "rows": shape.rows, "cols": shape.cols });
    run_streamed(layer, &config, &k, ops.reference()?, desc)
}

fn plan_json(plan: TilePlan) -> serde_json::Value {
    serde_json::json!({
        "m": plan.m_tile, "k": plan.k_tile, "n": plan.n_tile, "acc_buffers": plan.acc_buffers,
    })
}

/// Simulates a vector-unit kernel (row tiles) and checks it like a layer.
fn run_streamed(
    layer: &LayerFlags,
    config: &MachineConfig,
    k: &KernelProgram,
    expected: Vec<i8>,
    desc: serde_json::Value,
) -> CliResult<i32> {
    let tiles = serde_json::json!({ "rows": k.tile_rows });
    run_layer(
        layer,
        config,
        &k.program,
        tiles,
        (k.out_addr, expected),
        desc,
    )
}

fn sim_options(compat: bool, trace: bool, check_hazards: bool) -> SimOptions {
    let timing = if compat {
        TimingMode::ScaleSimCompat
    } else {
        TimingMode::Full
    };
    SimOptions {
        timing,
        trace,
        check_hazards,
    }
}

fn layer_config(layer: &LayerFlags) -> CliResult<MachineConfig> {
    Ok(match (&layer.config, layer.array) {
        (_, Some((r, c))) => {
            let config = MachineConfig::scalesim_like(r, c, layer.dataflow);
            config.validate()?;
            config
        }
        (Some(spec), None) => MachineConfig::load(spec)?,
        (None, None) => MachineConfig::edge_small(),
    })
}

fn run_layer(
    layer: &LayerFlags,
    config: &MachineConfig,
    program: &Program,
    tiles: serde_json::Value,
    (out_addr, expected): (u32, Vec<i8>),
    desc: serde_json::Value,
) -> CliResult<i32> {
    if let Some(path) = &layer.emit {
        write_atomic(path, &program.to_bytes())?;
    }
    let options = sim_options(layer.scalesim_compat, layer.trace.is_some(), false);
    let result = simulate(program, config, options)?;
    let out = &result.dram[out_addr as usize..out_addr as usize + expected.len()];
    let verified = out.iter().zip(&expected).all(|(&a, &b)| a as i8 == b);
    write_trace(layer.trace.as_deref(), &result, config)?;
    let extra = serde_json::json!({
        "layer": desc,
        "tiles": tiles,
        "bit_exact": verified,
    });
    print_report(&result.stats, config, layer.json, extra)?;
    if !verified {
        return Err("simulated output differs from the reference kernel".into());
    }
    Ok(0)
}

fn print_report(
    stats: &Stats,
    config: &MachineConfig,
    json: bool,
    extra: serde_json::Value,
) -> CliResult<()> {
    if json {
        let mut value = serde_json::to_value(stats)?;
        if let (Some(obj), Some(more)) = (value.as_object_mut(), extra.as_object()) {
            obj.insert("machine".into(), config.name.clone().into());
            obj.extend(more.clone());
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        if let Some(layer) = extra.get("layer") {
            println!("layer          {layer}");
            println!("tiles          {}", extra["tiles"]);
            println!("bit-exact      {}", extra["bit_exact"]);
        }
        print!("{}", stats.to_text(config));
    }
    Ok(())
}

fn write_trace(path: Option<&Path>, result: &SimResult, config: &MachineConfig) -> CliResult<()> {
    if let Some(path) = path {
        let trace = chrome_trace(&result.trace, config.clock_mhz);
        write_atomic(path, serde_json::to_string(&trace)?.as_bytes())?;
    }
    Ok(())
}

fn read_text(path: &Path) -> CliResult<String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()).into())
}

/// A binary program, or assembly text when the file lacks the binary magic.
fn load_program(path: &Path) -> CliResult<Program> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.starts_with(b"M4NPU") {
        return Program::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()).into());
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        format!(
            "{}: neither an NPU binary nor assembly text",
            path.display()
        )
    })?;
    assemble(&text).map_err(|e| format!("{}: {e}", path.display()).into())
}

/// Writes via a temporary file in the same directory and a rename, so a
/// failure never leaves a partial output.
fn write_atomic(path: &Path, bytes: &[u8]) -> CliResult<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| format!("{} is not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display()).into()
    })
}
