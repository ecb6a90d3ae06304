//! The optimiser's output is a model like any other: `m4c opt MODEL -o
//! x.ir --target cpu-nominal` (nominal cost figures, so the IR is the same
//! on every machine), then `m4c run x.ir --inputs … --expect … --backend
//! ENGINE` for the M4 fixtures, through the CLI binary.

use std::path::Path;
use std::process::{Command, Output};

use crate::fixtures::dir;
use crate::harness::{CaseResult, Engine, Outcome};

/// The suite's name in reports and expected-failure lists.
pub const SUITE: &str = "opt-ir-cli";

/// The M4 fixtures (torchscript exports).
pub fn cases() -> Vec<String> {
    [
        "clip_text",
        "clip_vision",
        "imu_encoder",
        "whisper_encoder",
        "llama_prefill",
        "llama_decode",
    ]
    .map(String::from)
    .to_vec()
}

fn m4c(args: &[&std::ffi::OsStr]) -> Result<Output, String> {
    Command::new(env!("CARGO_BIN_EXE_m4c"))
        .args(args)
        .output()
        .map_err(|e| e.to_string())
}

fn failure(what: &str, out: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let tail: Vec<&str> = text.lines().rev().take(4).collect();
    format!(
        "{what} exited {:?}: {}",
        out.status.code(),
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    )
}

/// Optimises one fixture to IR once, then runs the IR on every engine.
pub fn run_case(engines: &[Engine], fixture: &String) -> CaseResult {
    let name = format!("{SUITE}/{fixture}");
    let tmp =
        std::env::temp_dir().join(format!("m4c-conformance-{}-{fixture}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let ir = tmp.join(format!("{fixture}.ir"));
    let file = |ext: &str| dir().join(format!("{fixture}.{ext}"));
    let opt = m4c(&[
        "opt".as_ref(),
        file("onnx").as_os_str(),
        "--target".as_ref(),
        "cpu-nominal".as_ref(),
        "-o".as_ref(),
        ir.as_os_str(),
    ]);
    let outcomes = match opt {
        Ok(out) if out.status.success() => engines
            .iter()
            .map(|engine| run_ir(engine, &ir, &file("inputs.npz"), &file("expected.npz")))
            .collect(),
        Ok(out) => vec![Outcome::Fail(failure("m4c opt", &out)); engines.len()],
        Err(e) => vec![Outcome::Fail(format!("m4c opt: {e}")); engines.len()],
    };
    let _ = std::fs::remove_dir_all(&tmp);
    CaseResult { name, outcomes }
}

fn run_ir(engine: &Engine, ir: &Path, inputs: &Path, expected: &Path) -> Outcome {
    if let Err(why) = &engine.runnable {
        return Outcome::Skip(why.clone());
    }
    if engine.cross.is_some() {
        return Outcome::Skip(
            "`m4c run` runs host code; cross code runs only in the suite's emulator harness".into(),
        );
    }
    let out = m4c(&[
        "run".as_ref(),
        ir.as_os_str(),
        "--inputs".as_ref(),
        inputs.as_os_str(),
        "--expect".as_ref(),
        expected.as_os_str(),
        "--backend".as_ref(),
        engine.name().as_ref(),
    ]);
    match out {
        Ok(out) if out.status.success() => Outcome::Pass,
        Ok(out) => Outcome::Fail(failure("m4c run", &out)),
        Err(e) => Outcome::Fail(format!("m4c run: {e}")),
    }
}
