//! `m4c adapt`: pack a PEFT LoRA adapter for one firmware (an `.m4a`
//! adapter bundle holding only the factors, bound to the firmware's content
//! hash).

use std::path::PathBuf;

use m4c_compiler::bundle::{build_adapter, write_atomically};
use m4c_runtime::adapter::slots::{slots_of, SlotBinding};
use m4c_runtime::adapter::AdapterBundle;
use m4c_runtime::bundle::format::LoraMode;
use m4c_runtime::bundle::Bundle;
use m4c_runtime::exec::Signature;

use super::CliResult;

/// Arguments of `m4c adapt`.
#[derive(clap::Args)]
pub struct AdaptArgs {
    /// The firmware bundle the adapter is for.
    firmware: PathBuf,
    /// A firmware module the adapter attaches to (repeat; e.g. backbone and
    /// backbone_decode). Every site must fit every module given.
    #[arg(long = "module", value_name = "NAME", required = true)]
    modules: Vec<String>,
    /// The PEFT LoRA directory (adapter_config.json +
    /// adapter_model.safetensors).
    #[arg(long, value_name = "PEFT_DIR")]
    adapter: PathBuf,
    /// How the branches run on the device: keep them as factors (the
    /// firmware's weights stay shared) or fold them into private copies of
    /// the adapted weights at load.
    #[arg(long, default_value = "keep", value_name = "keep|fold", value_parser = |s: &str| s.parse::<LoraMode>())]
    lora: LoraMode,
    /// The adapter bundle to write.
    #[arg(short = 'o', long = "output", value_name = "APP.m4a")]
    output: PathBuf,
}

/// Runs `m4c adapt`; exit 0 on success, errors exit 2 (in `main`).
pub fn run(args: AdaptArgs) -> CliResult<i32> {
    let inputs = [args.firmware.as_path(), args.adapter.as_path()];
    m4c_runtime::outfile::check(&args.output, &inputs, false)?;
    let fw = Bundle::open(&args.firmware)?;
    let bytes = build_adapter(&fw, &args.modules, &args.adapter, args.lora)?;
    check_slots(&fw, &args.modules, &AdapterBundle::from_bytes(&bytes)?)?;
    write_atomically(&args.output, &inputs, &bytes)?;
    let back = AdapterBundle::open(&args.output)?;
    let info = back.info();
    let params: usize = back.factors().iter().map(|f| f.a.len() + f.b.len()).sum();
    println!(
        "{}: {} bytes, {} sites, {params} parameters, lora {}, for modules {} of firmware {}",
        args.output.display(),
        back.file_len(),
        info.sites.len(),
        info.lora,
        info.modules.join(", "),
        info.firmware
    );
    Ok(0)
}

/// Refuses, before anything is written, an adapter that a module built
/// with LoRA slots could not bind at load (a site without a slot, a rank
/// above the slot's).
fn check_slots(fw: &Bundle, modules: &[String], app: &AdapterBundle) -> CliResult<()> {
    for m in modules {
        let slots = slots_of(&Signature::of(&fw.module_interface(m)?));
        if slots.is_empty() {
            continue;
        }
        SlotBinding::new(&slots, &[app.factors()]).map_err(|problems| {
            format!(
                "does not fit the LoRA slots of module `{m}`: {}",
                problems.join("; ")
            )
        })?;
    }
    Ok(())
}
