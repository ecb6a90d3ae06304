//! `m4c npu ...` end to end through the binary.

use std::process::Command;

fn m4c(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_m4c"))
        .args(args)
        .output()
        .expect("runs m4c");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fresh scratch directory for one test (the root package has no
/// tempfile dependency); removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("m4c-cli-npu-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).expect("valid JSON")
}

#[test]
fn gemm_scalesim_compat_matches_scalesim_and_is_bit_exact() {
    let (code, out, err) = m4c(&[
        "npu",
        "gemm",
        "--m",
        "197",
        "--k",
        "768",
        "--n",
        "768",
        "--array",
        "32x32",
        "--dataflow",
        "ws",
        "--scalesim-compat",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v = json(&out);
    // SCALE-Sim v3 on the same configuration (docs/NPU_VALIDATION.md).
    assert_eq!(v["scalesim_compute_cycles"], 167615);
    assert_eq!(v["bit_exact"], true);
    for field in [
        "cycles",
        "compute_cycles",
        "utilization",
        "macs",
        "sram_read_bytes",
        "sram_write_bytes",
        "dram_read_bytes",
        "dram_write_bytes",
        "energy_pj",
    ] {
        assert!(v.get(field).is_some(), "missing {field}");
    }
    assert_eq!(v["macs"], 197 * 768 * 768);
}

#[test]
fn conv_on_a_preset() {
    let (code, out, err) = m4c(&[
        "npu",
        "conv",
        "--h",
        "12",
        "--w",
        "12",
        "--c-in",
        "16",
        "--c-out",
        "24",
        "--pad",
        "1",
        "--config",
        "edge-small",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v = json(&out);
    assert_eq!(v["bit_exact"], true);
    assert_eq!(v["macs"], 12 * 12 * 9 * 16 * 24);
}

#[test]
fn emitted_program_disassembles_reassembles_and_simulates() {
    let dir = Scratch::new("roundtrip");
    let bin = dir.path().join("g.npub");
    let text = dir.path().join("g.s");
    let again = dir.path().join("g2.npub");
    let p = |x: &std::path::Path| x.to_str().unwrap().to_string();
    assert_eq!(
        m4c(&[
            "npu",
            "gemm",
            "--m",
            "20",
            "--k",
            "40",
            "--n",
            "36",
            "--emit",
            &p(&bin)
        ])
        .0,
        0
    );
    assert_eq!(m4c(&["npu", "disasm", &p(&bin), "-o", &p(&text)]).0, 0);
    assert_eq!(m4c(&["npu", "asm", &p(&text), "-o", &p(&again)]).0, 0);
    assert_eq!(std::fs::read(&bin).unwrap(), std::fs::read(&again).unwrap());
    let trace = dir.path().join("t.json");
    let (code, out, err) = m4c(&[
        "npu",
        "sim",
        &p(&again),
        "--config",
        "edge-small",
        "--trace",
        &p(&trace),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["macs"], 20 * 40 * 36);
    let t: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    assert!(t["traceEvents"].as_array().unwrap().len() > 4);
}

#[test]
fn errors_are_one_line_and_leave_no_output() {
    let dir = Scratch::new("errors");
    let src = dir.path().join("bad.s");
    std::fs::write(&src, "halt\nfrob x=1\n").unwrap();
    let out = dir.path().join("bad.npub");
    let (code, _, err) = m4c(&[
        "npu",
        "asm",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("line 2: unknown instruction `frob`"), "{err}");
    assert_eq!(err.trim().lines().count(), 1);
    assert!(!out.exists());
    let (code, _, err) = m4c(&["npu", "gemm", "--m", "0", "--k", "4", "--n", "4"]);
    assert_eq!(code, 2);
    assert!(err.contains("zero dimension"), "{err}");
    let (code, _, err) = m4c(&[
        "npu",
        "sim",
        src.to_str().unwrap(),
        "--config",
        "no-such-preset",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown preset"), "{err}");
}

#[test]
fn racy_program_exits_1_with_hazard() {
    let dir = Scratch::new("racy");
    let src = dir.path().join("racy.s");
    std::fs::write(
        &src,
        ".dram 64\nld.cfg dram_stride=0 sram_stride=0 pad_top=0 pad_bottom=0 pad_left=0 pad_right=0\n\
         ld space=a sram=0 dram=0 rows=1 row_bytes=16\nvec.cfg dst_stride=0 src_stride=0 src2_stride=0\n\
         vcopy dst_space=a dst=8 src_space=a src=100 rows=1 cols=4\nhalt\n",
    )
    .unwrap();
    let (code, out, _) = m4c(&["npu", "sim", src.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.contains("hazard"), "{out}");
}

#[test]
fn vector_kernels_report_the_layer_fields_and_are_bit_exact() {
    let cases: [&[&str]; 6] = [
        &["softmax", "--rows", "20", "--cols", "50"],
        &["layernorm", "--rows", "9", "--cols", "64"],
        &["rmsnorm", "--rows", "9", "--cols", "64"],
        &["act", "--fn", "gelu", "--rows", "8", "--cols", "33"],
        &["eltwise", "--op", "add", "--rows", "8", "--cols", "33"],
        &[
            "dwconv", "--h", "7", "--w", "6", "--c", "5", "--stride", "2",
        ],
    ];
    for case in cases {
        let mut args = vec!["npu"];
        args.extend_from_slice(case);
        args.push("--json");
        let (code, out, err) = m4c(&args);
        assert_eq!(code, 0, "{case:?}: {err}");
        let v = json(&out);
        assert_eq!(v["bit_exact"], true, "{case:?}");
        for field in [
            "cycles",
            "compute_cycles",
            "utilization",
            "macs",
            "sram_read_bytes",
            "sram_write_bytes",
            "dram_read_bytes",
            "dram_write_bytes",
            "energy_pj",
        ] {
            assert!(v.get(field).is_some(), "{case:?} misses {field}");
        }
        assert!(v["engine_busy_cycles"]["vx"].as_u64().unwrap() > 0);
    }
    let (code, _, err) = m4c(&["npu", "act", "--fn", "relu6", "--rows", "1", "--cols", "1"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown activation `relu6`"), "{err}");
}

#[test]
fn softmax_json_report_snapshot() {
    let (code, out, err) = m4c(&["npu", "softmax", "--rows", "16", "--cols", "100", "--json"]);
    assert_eq!(code, 0, "{err}");
    insta::assert_snapshot!(out);
}

#[test]
fn conv_with_per_channel_requantisation() {
    let (code, out, err) = m4c(&[
        "npu",
        "conv",
        "--h",
        "6",
        "--w",
        "6",
        "--c-in",
        "4",
        "--c-out",
        "9",
        "--per-channel",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v = json(&out);
    assert_eq!(v["bit_exact"], true);
    assert_eq!(v["layer"]["per_channel"], true);
}

#[test]
fn config_dump_is_a_commented_template_that_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("my_npu.toml");
    let toml = toml.to_str().unwrap();
    let (code, _, err) = m4c(&[
        "npu",
        "config",
        "--preset",
        "phone-flagship",
        "--dump",
        "-o",
        toml,
    ]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(toml).unwrap();
    assert!(
        text.contains("# Systolic array rows (1..=4096).\narray_rows = "),
        "{text}"
    );
    let (code, from_file, err) = m4c(&["npu", "config", "--preset", toml]);
    assert_eq!(code, 0, "{err}");
    let (_, from_preset, _) = m4c(&["npu", "config", "--preset", "phone-flagship"]);
    assert_eq!(from_file, from_preset);
    assert!(from_preset.contains("TOPS peak"), "{from_preset}");

    // The template drives a layer exactly as the preset does.
    let gemm = |config: &str| {
        m4c(&[
            "npu", "gemm", "--m", "16", "--k", "32", "--n", "16", "--config", config, "--json",
        ])
    };
    let (a, b) = (gemm(toml), gemm("phone-flagship"));
    assert_eq!((a.0, &a.1), (0, &b.1), "{}", a.2);

    let (code, _, err) = m4c(&["npu", "config", "--preset", "no-such-npu"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown preset `no-such-npu`"), "{err}");
}
