//! The CUDA target without a GPU: `m4c compile MODEL --backend gpu:cuda
//! -o DIR` on every committed fixture writes PTX that NVIDIA's assembler
//! accepts for sm_90 (`ptxas -arch=sm_90 -v`, from the PyPI wheel
//! `nvidia-cuda-nvcc-cu12` that `scripts/test.sh` installs into
//! `.venv-ptxas`) within a register and spill budget, with an `.entry`
//! per planned kernel; and where no NVIDIA driver exists, running on
//! `gpu:cuda` (a model or a firmware bundle) is one line and exit 2.
//! The assembler test skips only when ptxas is absent and
//! `M4C_REQUIRE_PTXAS` is unset.

mod common;
use common::{m4c, text};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Registers one thread may use: 128 lets two 256-thread GEMM blocks (or
/// eight 64-thread blocks) share an SM's 64K registers. No kernel may
/// spill.
const MAX_REGISTERS: u32 = 128;

/// ptxas: `M4C_PTXAS`, else the wheel's in `.venv-ptxas`, else `PATH`.
fn ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("M4C_PTXAS") {
        return Some(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-ptxas/lib");
    let wheel = std::fs::read_dir(&venv).ok().and_then(|pythons| {
        pythons
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("site-packages/nvidia/cuda_nvcc/bin/ptxas"))
            .find(|p| p.is_file())
    });
    wheel.or_else(|| {
        Command::new("ptxas")
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| PathBuf::from("ptxas"))
    })
}

/// Per kernel: (name, registers, spill bytes) from `ptxas -v`'s report.
fn usage(report: &str) -> Vec<(String, u32, u32)> {
    let mut out = Vec::new();
    let mut name = String::new();
    let mut spills = 0;
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            name = rest.split('\'').next().unwrap_or("").to_string();
        } else if line.contains("spill stores") {
            spills = line
                .split(',')
                .filter(|part| part.contains("spill"))
                .map(|part| {
                    part.trim()
                        .split(' ')
                        .next()
                        .unwrap()
                        .parse::<u32>()
                        .unwrap()
                })
                .sum();
        } else if let Some(rest) = line.split("Used ").nth(1) {
            let registers = rest.split(' ').next().unwrap().parse().unwrap();
            out.push((name.clone(), registers, spills));
        }
    }
    out
}

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut models: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
        .collect();
    models.sort();
    assert!(models.len() >= 20, "{} fixtures", models.len());
    models
}

#[test]
fn every_fixture_compiles_to_ptx_that_ptxas_accepts() {
    let Some(ptxas) = ptxas() else {
        assert!(
            std::env::var_os("M4C_REQUIRE_PTXAS").is_none(),
            "M4C_REQUIRE_PTXAS is set but no ptxas was found (scripts/test.sh installs it)"
        );
        println!("skipped: no ptxas (pip install nvidia-cuda-nvcc-cu12, or run scripts/test.sh)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut most = (String::new(), 0);
    for model in fixtures() {
        let stem = model.file_stem().unwrap().to_str().unwrap();
        let out = tmp.path().join(stem);
        let args = [
            "compile",
            model.to_str().unwrap(),
            "--backend",
            "gpu:cuda",
            "-o",
        ];
        let o = Command::new(env!("CARGO_BIN_EXE_m4c"))
            .args(args)
            .arg(&out)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{stem}: {}", text(&o));
        let ptx = out.join(format!("{}.ptx", ptx_stem(&out)));
        let source = std::fs::read_to_string(&ptx).unwrap();
        let plan: serde_json::Value =
            serde_json::from_slice(&std::fs::read(ptx.with_extension("plan.json")).unwrap())
                .unwrap();
        assert_eq!(plan["target"], "cuda", "{stem}");
        let kernels = plan["kernels"].as_array().unwrap();
        assert!(!kernels.is_empty(), "{stem}: no kernels");
        let o = Command::new(&ptxas)
            .args(["-arch=sm_90", "-v", "-o"])
            .arg(tmp.path().join("out.cubin"))
            .arg(&ptx)
            .output()
            .unwrap();
        assert!(o.status.success(), "{stem}: ptxas refused:\n{}", text(&o));
        let report = usage(&text(&o));
        assert_eq!(report.len(), kernels.len(), "{stem}: {}", text(&o));
        for k in kernels {
            let entry = k["entry"].as_str().unwrap();
            assert!(
                source.contains(&format!(".entry {entry}(")),
                "{stem}: {entry}"
            );
            let (_, registers, spills) = report
                .iter()
                .find(|(name, ..)| name == entry)
                .unwrap_or_else(|| panic!("{stem}: ptxas compiled no {entry}"));
            assert!(
                *registers <= MAX_REGISTERS && *spills == 0,
                "{stem} {entry}: {registers} registers, {spills} spill bytes"
            );
        }
        let (name, registers) = report
            .iter()
            .map(|(n, r, _)| (n.clone(), *r))
            .max_by_key(|(_, r)| *r)
            .unwrap();
        println!(
            "{stem}: {} kernels accepted, at most {registers} registers ({name}), no spills",
            report.len()
        );
        if registers > most.1 {
            most = (format!("{stem} {name}"), registers);
        }
    }
    println!("most registers: {} ({})", most.1, most.0);
}

/// The name the artifact's files share (the graph's).
fn ptx_stem(dir: &Path) -> String {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .find_map(|n| n.strip_suffix(".ptx").map(str::to_string))
        .expect("a .ptx file")
}

/// Whether this host has a CUDA device the runtime can open.
fn cuda_here() -> bool {
    let gpu = m4c_backends::lookup("gpu").unwrap();
    m4c_backends::runnable(gpu, Some("cuda")).is_ok()
}

#[test]
fn without_a_driver_gpu_cuda_is_one_line_and_exit_2() {
    if cuda_here() {
        println!("skipped: this host has a CUDA device");
        return;
    }
    let fixture = |ext: &str| {
        format!(
            "{}/tests/fixtures/resnet_small.{ext}",
            env!("CARGO_MANIFEST_DIR")
        )
    };
    let inputs = fixture("inputs.npz");
    let run = ["run", &fixture("onnx"), "--inputs", &inputs, "--backend"];
    let o = m4c(&[&run[..], &["gpu:cuda"]].concat());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no CUDA driver"), "{err}");
    let o = m4c(&[&run[..], &["gpu:cuda", "--target", "wgpu"]].concat());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("different targets"), "{}", text(&o));
}

/// A firmware bundle carries the CUDA code as PTX text beside the plan;
/// loading it where no driver exists is one line, exit 2.
#[test]
fn firmware_carries_ptx_text() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let model = format!(
        "net={}/tests/fixtures/resnet_small.onnx",
        env!("CARGO_MANIFEST_DIR")
    );
    let o = m4c(&["keygen", "-o", &path("k")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let build = [
        "firmware",
        "build",
        "--module",
        &model,
        "--backend",
        "gpu:cuda",
    ];
    let o = m4c(&[&build[..], &["--sign-key", &path("k"), "-o", &path("g.fw")]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("code net.cuda"), "{}", text(&o));
    let bytes = std::fs::read(path("g.fw")).unwrap();
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(has(b".target sm_90") && has(b".visible .entry k0("));
    // No native code: no cubin (ELF) in the bundle.
    assert!(!has(b"\x7fELF"));
    if cuda_here() {
        return;
    }
    let inputs = format!(
        "{}/tests/fixtures/resnet_small.inputs.npz",
        env!("CARGO_MANIFEST_DIR")
    );
    let run = ["run", &path("g.fw"), "--module", "net", "--inputs", &inputs];
    let engine = ["--engine", "compiled", "--trust-key", &path("k.pub")];
    let o = m4c(&[&run[..], &engine[..]].concat());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no CUDA driver"), "{err}");
}
