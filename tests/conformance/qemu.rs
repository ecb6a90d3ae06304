//! The CPU backend's aarch64 code, run under user-mode emulation: the
//! phone target checked on an x86 host, although it cannot be timed here.
//!
//! A cross-compiled artifact is an object file (NEON kernels with the
//! uniform kernel and GEMM signatures), a plan and a weight file. For each
//! case this writes a small C driver that makes the plan's calls in order
//! — exactly what the CPU device's executor does, on one thread — links it
//! with the object by `aarch64-linux-gnu-gcc -static`, and runs it under
//! `qemu-aarch64`: inputs in, outputs out as raw bytes, compared by the
//! suite like every other engine's.

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use m4c_compiler::backend::Artifact;
use m4c_cpu_device::{BufRef, Manifest, Region, Step};
use m4c_ir::{Graph, Tensor};
use m4c_ops::Value;

/// The cross target the emulated engine compiles for.
pub const TARGET: &str = "aarch64";
/// The C compiler that links the driver with the object.
const CC: &str = "aarch64-linux-gnu-gcc";
/// The user-mode emulator.
const QEMU: &str = "qemu-aarch64";
/// No case of the suite runs near this long; a hang fails the case.
const TIME_LIMIT: Duration = Duration::from_secs(120);

/// Whether this host has the cross compiler and the emulator (Debian's
/// `gcc-aarch64-linux-gnu`, `libc6-dev-arm64-cross` and `qemu-user`, which
/// `scripts/setup.sh` installs), with the reason when not.
pub fn available() -> Result<(), String> {
    for tool in [CC, QEMU] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Err(format!(
                "`{tool}` not found (scripts/setup.sh installs qemu-user and gcc-aarch64-linux-gnu)"
            ));
        }
    }
    Ok(())
}

/// Runs `artifact` (compiled for [`TARGET`] from `graph`) on `inputs`
/// under the emulator; the outputs in the graph's output order.
pub fn run(graph: &Graph, artifact: &Artifact, inputs: &[Value]) -> Result<Vec<Value>, String> {
    let file = |name: &str| {
        artifact
            .files
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.bytes.as_slice())
            .ok_or_else(|| format!("the artifact has no `{name}`"))
    };
    let manifest: Manifest =
        serde_json::from_slice(file("plan.json")?).map_err(|e| format!("plan.json: {e}"))?;
    let plan = manifest
        .graph
        .as_ref()
        .ok_or("the artifact has no graph plan")?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let at = |name: &str| dir.path().join(name);
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(at(name), bytes).map_err(|e| format!("{name}: {e}"))
    };
    write(&manifest.object, file(&manifest.object)?)?;
    write("weights.bin", file(&manifest.weights)?)?;
    write("driver.c", driver(&manifest)?.as_bytes())?;
    let mut input_bytes = vec![];
    for (spec, value) in plan.inputs.iter().zip(inputs) {
        let tensor = value.to_tensor();
        let bytes = tensor.bytes().map_err(|e| e.to_string())?;
        if bytes.len() != spec.bytes() {
            return Err(format!(
                "input `{}`: {} bytes, the plan expects {}",
                spec.name,
                bytes.len(),
                spec.bytes()
            ));
        }
        input_bytes.extend_from_slice(bytes);
    }
    write("inputs.bin", &input_bytes)?;

    let link = Command::new(CC)
        .current_dir(dir.path())
        .args([
            "-O1",
            "-static",
            "-o",
            "driver",
            "driver.c",
            &manifest.object,
        ])
        .output()
        .map_err(|e| format!("{CC}: {e}"))?;
    if !link.status.success() {
        return Err(format!(
            "{CC}: {}",
            String::from_utf8_lossy(&link.stderr).trim()
        ));
    }
    // QEMU_CPU=max: every extension a `--cpu` may have enabled (`sdot`, …).
    run_with_limit(
        Command::new(QEMU)
            .current_dir(dir.path())
            .env("QEMU_CPU", "max")
            .args(["./driver", "weights.bin", "inputs.bin", "outputs.bin"]),
    )?;
    let out = std::fs::read(at("outputs.bin")).map_err(|e| format!("outputs.bin: {e}"))?;

    let mut values = vec![];
    let mut offset = 0;
    for (spec, &id) in plan.outputs.iter().zip(&graph.outputs) {
        let bytes = out
            .get(offset..offset + spec.bytes())
            .ok_or("the driver wrote fewer output bytes than the plan has")?;
        offset += spec.bytes();
        let tensor = Tensor::from_bytes(graph.value(id).ty.dtype, &spec.shape, bytes.to_vec());
        values.push(Value::from_tensor(&tensor).map_err(|e| e.to_string())?);
    }
    Ok(values)
}

/// Runs `command`, killing it after [`TIME_LIMIT`]; its stderr on failure.
fn run_with_limit(command: &mut Command) -> Result<(), String> {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{QEMU}: {e}"))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            if status.success() {
                return Ok(());
            }
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            return Err(format!("under {QEMU}: {status}: {}", stderr.trim()));
        }
        if started.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("under {QEMU}: no result in {TIME_LIMIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The C driver for `manifest`'s plan: reads the weights and the inputs,
/// makes every call of the plan in order on one thread (each kernel over
/// its whole extent, each GEMM over all its panels), writes the outputs.
fn driver(manifest: &Manifest) -> Result<String, String> {
    let plan = manifest.graph.as_ref().ok_or("no graph plan")?;
    let mut c = String::from(DRIVER_HEAD);
    let mut declared = std::collections::BTreeSet::new();
    let gemm = |symbol: &str| {
        manifest
            .gemms
            .iter()
            .find(|g| g.symbol == symbol)
            .ok_or_else(|| format!("the plan calls an unknown GEMM `{symbol}`"))
    };
    for step in &plan.steps {
        let (function, prototype) = match step {
            Step::Kernel { symbol, .. } => (symbol.as_str(), "kernel_fn"),
            Step::Gemm { symbol, .. } => (gemm(symbol)?.function(), "gemm_fn"),
        };
        if declared.insert(function.to_string()) {
            let _ = writeln!(c, "extern {prototype} {function};");
        }
    }
    let scratch = plan
        .steps
        .iter()
        .map(|s| match s {
            Step::Kernel { scratch_bytes, .. } => Ok(*scratch_bytes),
            Step::Gemm { symbol, .. } => Ok(gemm(symbol)?.scratch_floats * 4),
        })
        .collect::<Result<Vec<_>, String>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        c,
        "\nint main(int argc, char **argv) {{\n    \
         if (argc != 4) return 2;\n    \
         size_t weights_len, inputs_len;\n    \
         unsigned char *weights = load(argv[1], &weights_len);\n    \
         unsigned char *inputs = load(argv[2], &inputs_len);\n    \
         unsigned char *arena = zeroed({});\n    \
         unsigned char *scratch = zeroed({});\n    \
         int32_t status;",
        plan.arena_bytes, scratch
    );
    let mut input_offset = 0;
    let mut input_at = vec![];
    for spec in &plan.inputs {
        input_at.push(input_offset);
        input_offset += spec.bytes();
    }
    let _ = writeln!(
        c,
        "    if (inputs_len != {input_offset}) fail(\"inputs.bin has the wrong size\");"
    );
    let resolve = |b: &BufRef| -> Result<String, String> {
        Ok(match b.region {
            Region::Arena => format!("arena + {}", b.offset),
            Region::Weights => format!("weights + {}", b.offset),
            Region::Input(i) => {
                let base = input_at.get(i).ok_or_else(|| {
                    format!("the plan reads input {i}, which it does not declare")
                })?;
                format!("inputs + {}", base + b.offset)
            }
        })
    };
    for (n, step) in plan.steps.iter().enumerate() {
        match step {
            Step::Kernel {
                symbol,
                buffers,
                extent,
                ..
            } => {
                let pointers = buffers
                    .iter()
                    .map(&resolve)
                    .collect::<Result<Vec<_>, _>>()?
                    .join(", ");
                let _ = writeln!(
                    c,
                    "    {{ void *b[] = {{ {pointers} }};\n      \
                     status = {symbol}(b, 0, {extent}, scratch);\n      \
                     if (status) {{ fprintf(stderr, \"step {n} ({symbol}): status %d\\n\", status); return 3; }} }}"
                );
            }
            Step::Gemm { symbol, a, c: out } => {
                let g = gemm(symbol)?;
                let _ = writeln!(
                    c,
                    "    {}((const float *)({}), (const float *)(weights + {}), (float *)({}), 0, {}, (float *)scratch);",
                    g.function(),
                    resolve(a)?,
                    g.weights_offset * 4,
                    resolve(out)?,
                    g.packed_b.panels()
                );
            }
        }
    }
    let _ = writeln!(
        c,
        "    FILE *out = fopen(argv[3], \"wb\");\n    if (!out) fail(argv[3]);"
    );
    for spec in &plan.outputs {
        let _ = writeln!(
            c,
            "    if (fwrite({}, 1, {}, out) != {}) fail(\"write\");",
            resolve(&spec.buf)?,
            spec.bytes(),
            spec.bytes()
        );
    }
    c.push_str("    return fclose(out) != 0;\n}\n");
    Ok(c)
}

/// The driver's fixed part: the two call signatures of the plan and file
/// loading into 64-byte-aligned memory (the weight offsets assume it).
const DRIVER_HEAD: &str = r#"#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int32_t kernel_fn(void *const *buffers, int64_t begin, int64_t end, void *scratch);
typedef void gemm_fn(const float *a, const float *packed_b, float *c,
                     int64_t panel_begin, int64_t panel_end, float *scratch);

static void fail(const char *what) { fprintf(stderr, "driver: %s\n", what); exit(4); }

static unsigned char *zeroed(size_t len) {
    size_t rounded = (len + 63) / 64 * 64 + 64;
    unsigned char *p = aligned_alloc(64, rounded);
    if (!p) fail("out of memory");
    memset(p, 0, rounded);
    return p;
}

static unsigned char *load(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) fail(path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *p = zeroed((size_t)n);
    if (n > 0 && fread(p, 1, (size_t)n, f) != (size_t)n) fail(path);
    fclose(f);
    *len = (size_t)n;
    return p;
}

"#;
