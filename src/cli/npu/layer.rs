//! Generating, simulating and reporting one layer (`m4c npu gemm|conv|...`).

use std::path::Path;

use m4c_npu::config::MachineConfig;
use m4c_npu::kernels::norm::NormKind;
use m4c_npu::kernels::{norm, KernelProgram, TilePlan};
use m4c_npu::program::Program;
use m4c_npu::report::Stats;
use m4c_npu::sim::{chrome_trace, simulate, SimOptions, SimResult, TimingMode};

use super::files::write_atomic;
use super::{LayerFlags, RowsCols};
use crate::cli::CliResult;

pub(super) fn run_norm(kind: NormKind, shape: &RowsCols, layer: &LayerFlags) -> CliResult<i32> {
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

pub(super) fn plan_json(plan: TilePlan) -> serde_json::Value {
    serde_json::json!({
        "m": plan.m_tile, "k": plan.k_tile, "n": plan.n_tile, "acc_buffers": plan.acc_buffers,
    })
}

/// Simulates a vector-unit kernel (row tiles) and checks it like a layer.
pub(super) fn run_streamed(
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

pub(super) fn sim_options(compat: bool, trace: bool, check_hazards: bool) -> SimOptions {
    let timing = if compat {
        TimingMode::ScaleSimCompat
    } else {
        TimingMode::Full
    };
    SimOptions {
        timing,
        trace,
        check_hazards,
        ..SimOptions::default()
    }
}

pub(super) fn layer_config(layer: &LayerFlags) -> CliResult<MachineConfig> {
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

pub(super) fn run_layer(
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

pub(super) fn print_report(
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

pub(super) fn write_trace(
    path: Option<&Path>,
    result: &SimResult,
    config: &MachineConfig,
) -> CliResult<()> {
    if let Some(path) = path {
        let trace = chrome_trace(&result.trace, config.clock_mhz);
        write_atomic(path, serde_json::to_string(&trace)?.as_bytes())?;
    }
    Ok(())
}
