//! Hostile files never hurt: every case below runs the CLI on a hostile
//! input (a FIFO, a directory, a device, a truncated or huge-claiming npz, a
//! path escaping its folder, an NPU program with zero-length transfers or
//! too much work, sizes that cannot be allocated) and asserts exit status 2,
//! exactly one `error:` line naming the file and the problem, no panic, the
//! case's files unchanged, nothing left behind, and a quick end (each child
//! runs under `timeout`, so a hang fails the test instead of blocking it).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use m4c_compiler::bundle::{build_firmware, write_atomically, FirmwareOptions};
use m4c_compiler::onnx::pb;
use prost::Message;

/// Seconds a child may run before it counts as a hang.
const LIMIT_S: &str = "60";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A fresh, empty directory for one case.
fn case_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("hostile-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap().success();
    assert!(ok, "mkfifo {}", path.display());
}

/// Every entry under `dir`: its kind and, for regular files, a hash of the
/// contents (symlinks are recorded, not followed).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let t = meta.file_type();
            let what = if t.is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if t.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if t.is_file() {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::fs::read(&p).unwrap().hash(&mut h);
                format!("file {:x}", h.finish())
            } else {
                "special".to_string()
            };
            out.insert(p, what);
        }
    }
    out
}

/// Runs `m4c args` under a time limit.
fn m4c(args: &[OsString]) -> Output {
    Command::new("timeout")
        .args(["-s", "KILL", LIMIT_S])
        .arg(env!("CARGO_BIN_EXE_m4c"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// Runs the case and checks everything the module promises.
fn check(dir: &Path, args: &[OsString], needles: &[&str]) -> String {
    let before = snapshot(dir);
    let out = m4c(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_ne!(out.status.code(), None, "killed (a hang?): {err}");
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "missing `{n}` in: {err}");
    }
    assert_eq!(snapshot(dir), before, "files changed or left behind: {err}");
    err
}

fn os(parts: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    parts.iter().map(|p| p.as_ref().to_os_string()).collect()
}

/// `m4c run batchnorm_net.onnx --inputs INPUTS -o DIR/out.npz`.
fn run_with_inputs(dir: &Path, inputs: &Path) -> Vec<OsString> {
    os(&[
        &"run",
        &fixture("batchnorm_net.onnx"),
        &"--inputs",
        &inputs,
        &"-o",
        &dir.join("out.npz"),
    ])
}

// ---------------------------------------------------------------- npz files

/// An `.npy` stream: header dictionary `dict` (format 1.0), then `data`.
fn npy(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut header = dict.to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

/// An `.npz` (zip) of `entries`, deflated or stored.
fn npz(path: &Path, entries: &[(&str, Vec<u8>)], deflate: bool) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in entries {
        zip.start_file(*name, options).unwrap();
        std::io::Write::write_all(&mut zip, bytes).unwrap();
    }
    zip.finish().unwrap();
}

fn image_header(shape: &str, descr: &str) -> String {
    format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}")
}

/// A one-entry npz named `name` in a fresh case directory, then the run.
fn npz_case(case: &str, entry: Vec<u8>, deflate: bool, needles: &[&str]) {
    let d = case_dir(case);
    let f = d.join("in.npz");
    npz(&f, &[("image.npy", entry)], deflate);
    let mut all = vec!["in.npz"];
    all.extend(needles);
    check(&d, &run_with_inputs(&d, &f), &all);
}

#[test]
fn npz_claiming_2_pow_40_elements_is_refused_before_allocating() {
    let entry = npy(&image_header("(1099511627776,)", "<f4"), &[0; 16]);
    let d = case_dir("npz_huge_claim");
    let f = d.join("in.npz");
    npz(&f, &[("image.npy", entry)], false);
    assert!(std::fs::metadata(&f).unwrap().len() < 300);
    check(
        &d,
        &run_with_inputs(&d, &f),
        &[
            "in.npz",
            "array 'image'",
            "header claims shape [1099511627776]",
        ],
    );
}

#[test]
fn compressed_npz_claiming_2_pow_40_elements() {
    npz_case(
        "npz_huge_claim_deflated",
        npy(&image_header("(1099511627776,)", "<f4"), &[0; 16]),
        true,
        &["array 'image'", "header claims shape"],
    );
}

#[test]
fn npz_shape_product_overflows() {
    npz_case(
        "npz_overflow",
        npy(&image_header("(4294967296, 4294967296, 16)", "<f4"), &[]),
        false,
        &["array 'image'", "overflows"],
    );
}

#[test]
fn npz_header_claims_less_than_the_data() {
    npz_case(
        "npz_short_claim",
        npy(&image_header("(2,)", "<f4"), &[0; 64]),
        false,
        &["array 'image'", "but the array holds 64 bytes"],
    );
}

#[test]
fn npz_truncated_npy_header() {
    npz_case(
        "npz_trunc_header",
        b"\x93NUMPY\x01\x00\x40\x00{'descr'".to_vec(),
        false,
        &["array 'image'", "truncated .npy header"],
    );
}

#[test]
fn npz_entry_is_not_npy() {
    npz_case(
        "npz_bad_magic",
        b"PK\x03\x04 not an array at all".to_vec(),
        true,
        &["array 'image'", "bad magic"],
    );
}

#[test]
fn npz_float64_is_refused() {
    npz_case(
        "npz_f8",
        npy(&image_header("(1,)", "<f8"), &[0; 8]),
        false,
        &["array 'image'", "'<f8' not supported"],
    );
}

#[test]
fn npz_bool_with_a_bad_byte() {
    npz_case(
        "npz_bad_bool",
        npy(&image_header("(2,)", "|b1"), &[1, 9]),
        false,
        &["array 'image'", "bool array holds the byte 9"],
    );
}

#[test]
fn npz_negative_dimension() {
    npz_case(
        "npz_negative_dim",
        npy(&image_header("(-3,)", "<f4"), &[0; 12]),
        false,
        &["array 'image'", "bad dimension '-3'"],
    );
}

#[test]
fn npz_header_length_of_2_gib() {
    let mut entry = b"\x93NUMPY\x02\x00".to_vec();
    entry.extend(0x8000_0000u32.to_le_bytes());
    npz_case(
        "npz_header_len",
        entry,
        false,
        &["array 'image'", "header of 2147483648 bytes"],
    );
}

#[test]
fn npz_unknown_npy_version() {
    npz_case(
        "npz_version",
        b"\x93NUMPY\x09\x00\x10\x00".to_vec(),
        false,
        &["array 'image'", "version 9"],
    );
}

#[test]
fn npz_header_without_descr() {
    npz_case(
        "npz_no_descr",
        npy("{'fortran_order': False, 'shape': (1,), }", &[0; 4]),
        true,
        &["array 'image'", "no 'descr'"],
    );
}

#[test]
fn npz_truncated_zip() {
    let d = case_dir("npz_truncated_zip");
    let bytes = std::fs::read(fixture("batchnorm_net.inputs.npz")).unwrap();
    let f = d.join("in.npz");
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    check(
        &d,
        &run_with_inputs(&d, &f),
        &["in.npz", "not a valid .npz"],
    );
}

#[test]
fn npz_empty_file() {
    let d = case_dir("npz_empty");
    let f = d.join("in.npz");
    std::fs::write(&f, b"").unwrap();
    check(
        &d,
        &run_with_inputs(&d, &f),
        &["in.npz", "not a valid .npz"],
    );
}

#[test]
fn npz_fifo_input_does_not_block() {
    let d = case_dir("npz_fifo");
    let f = d.join("in.npz");
    mkfifo(&f);
    check(
        &d,
        &run_with_inputs(&d, &f),
        &["in.npz", "not a regular file (a FIFO)"],
    );
}

#[test]
fn npz_directory_input() {
    let d = case_dir("npz_dir");
    let f = d.join("in.npz");
    std::fs::create_dir(&f).unwrap();
    check(
        &d,
        &run_with_inputs(&d, &f),
        &["in.npz", "not a regular file (a directory)"],
    );
}

#[test]
fn npz_character_device_input() {
    let d = case_dir("npz_dev");
    check(
        &d,
        &run_with_inputs(&d, Path::new("/dev/zero")),
        &["/dev/zero", "not a regular file (a character device)"],
    );
}

#[test]
fn expected_npz_fifo() {
    let d = case_dir("expect_fifo");
    let f = d.join("want.npz");
    mkfifo(&f);
    let mut args = run_with_inputs(&d, &fixture("batchnorm_net.inputs.npz"));
    args.truncate(4);
    args.extend(os(&[&"--expect", &f]));
    check(&d, &args, &["want.npz", "not a regular file (a FIFO)"]);
}

#[test]
fn compressed_npz_inputs_run_like_stored_ones() {
    // Not hostile: np.savez_compressed output is read (same result as the
    // stored original).
    let d = case_dir("npz_compressed_ok");
    let f = d.join("in.npz");
    let mut zip =
        zip::ZipArchive::new(std::fs::File::open(fixture("batchnorm_net.inputs.npz")).unwrap())
            .unwrap();
    let mut entries = vec![];
    for i in 0..zip.len() {
        let mut e = zip.by_index(i).unwrap();
        let mut bytes = vec![];
        std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
        entries.push((e.name().to_string(), bytes));
    }
    let named: Vec<(&str, Vec<u8>)> = entries
        .iter()
        .map(|(n, b)| (n.as_str(), b.clone()))
        .collect();
    npz(&f, &named, true);
    let out = m4c(&os(&[
        &"run",
        &fixture("batchnorm_net.onnx"),
        &"--inputs",
        &f,
        &"--expect",
        &fixture("batchnorm_net.expected.npz"),
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
}

#[test]
fn absurd_thread_count_is_refused_before_spawning() {
    let d = case_dir("threads");
    let mut args = run_with_inputs(&d, &fixture("batchnorm_net.inputs.npz"));
    args.extend(os(&[&"--backend", &"cpu", &"--threads", &"100000"]));
    check(
        &d,
        &args,
        &["batchnorm_net.onnx", "100000 threads requested; at most"],
    );
}

// ------------------------------------------------------- models, external data

fn inspect(model: &Path) -> Vec<OsString> {
    os(&[&"inspect", &model])
}

#[test]
fn model_fifo_does_not_block() {
    let d = case_dir("model_fifo");
    let m = d.join("m.onnx");
    mkfifo(&m);
    check(&d, &inspect(&m), &["m.onnx", "not a regular file (a FIFO)"]);
    let mut args = run_with_inputs(&d, &fixture("batchnorm_net.inputs.npz"));
    args[1] = m.clone().into_os_string();
    check(&d, &args, &["m.onnx", "not a regular file (a FIFO)"]);
}

#[test]
fn model_directory() {
    let d = case_dir("model_dir");
    let m = d.join("m.onnx");
    std::fs::create_dir(&m).unwrap();
    check(
        &d,
        &inspect(&m),
        &["m.onnx", "not a regular file (a directory)"],
    );
}

#[test]
fn model_character_device() {
    let d = case_dir("model_dev");
    check(
        &d,
        &inspect(Path::new("/dev/null")),
        &["/dev/null", "not a regular file (a character device)"],
    );
}

/// The external-data fixture in a fresh case directory, its first
/// initializer's external-data entries edited by `edit`; the data file is
/// left for the case to provide.
fn external_model(case: &str, edit: impl Fn(&mut pb::TensorProto)) -> PathBuf {
    let d = case_dir(case);
    let bytes = std::fs::read(fixture("mlp_external_data.onnx")).unwrap();
    let mut model = pb::ModelProto::decode(bytes.as_slice()).unwrap();
    let graph = model.graph.as_mut().unwrap();
    edit(&mut graph.initializer[0]);
    let m = d.join("m.onnx");
    std::fs::write(&m, model.encode_to_vec()).unwrap();
    m
}

fn set_location(t: &mut pb::TensorProto, location: &str) {
    for e in &mut t.external_data {
        if e.key == "location" {
            e.value = location.to_string();
        }
    }
}

fn data_file() -> Vec<u8> {
    std::fs::read(fixture("mlp_external_data.onnx.data")).unwrap()
}

fn run_external(m: &Path) -> Vec<OsString> {
    os(&[
        &"run",
        &m,
        &"--inputs",
        &fixture("mlp_external_data.inputs.npz"),
        &"-o",
        &m.with_file_name("out.npz"),
    ])
}

#[test]
fn external_data_fifo_does_not_block() {
    let m = external_model("ext_fifo", |t| set_location(t, "w.data"));
    mkfifo(&m.with_file_name("w.data"));
    check(
        m.parent().unwrap(),
        &run_external(&m),
        &["m.onnx", "external data file 'w.data'", "a FIFO"],
    );
}

#[test]
fn external_data_directory() {
    let m = external_model("ext_dir", |t| set_location(t, "w.data"));
    std::fs::create_dir(m.with_file_name("w.data")).unwrap();
    check(
        m.parent().unwrap(),
        &run_external(&m),
        &["m.onnx", "external data file 'w.data'", "a directory"],
    );
}

#[test]
fn external_data_symlink_escaping_the_folder() {
    let m = external_model("ext_symlink", |t| set_location(t, "w.data"));
    let outside = case_dir("ext_symlink_target").join("secret.data");
    std::fs::write(&outside, data_file()).unwrap();
    std::os::unix::fs::symlink(&outside, m.with_file_name("w.data")).unwrap();
    let err = check(
        m.parent().unwrap(),
        &run_external(&m),
        &[
            "m.onnx",
            "external data file 'w.data'",
            "resolves outside its folder",
        ],
    );
    assert!(!err.contains("secret.data"), "{err}");
}

#[test]
fn external_data_through_a_symlinked_folder() {
    let m = external_model("ext_symlink_dir", |t| set_location(t, "sub/w.data"));
    let outside = case_dir("ext_symlink_dir_target");
    std::fs::write(outside.join("w.data"), data_file()).unwrap();
    std::os::unix::fs::symlink(&outside, m.with_file_name("sub")).unwrap();
    check(
        m.parent().unwrap(),
        &run_external(&m),
        &["m.onnx", "'sub/w.data'", "resolves outside its folder"],
    );
}

#[test]
fn external_data_parent_directory() {
    let m = external_model("ext_dotdot", |t| set_location(t, "../ext_dotdot_w.data"));
    std::fs::write(
        m.parent().unwrap().with_file_name("ext_dotdot_w.data"),
        data_file(),
    )
    .unwrap();
    check(
        m.parent().unwrap(),
        &run_external(&m),
        &[
            "m.onnx",
            "'../ext_dotdot_w.data'",
            "resolves outside its folder",
        ],
    );
}

#[test]
fn external_data_absolute_path() {
    let m = external_model("ext_absolute", |t| set_location(t, "/etc/passwd"));
    check(
        m.parent().unwrap(),
        &run_external(&m),
        &["m.onnx", "'/etc/passwd' is absolute"],
    );
}

#[test]
fn external_data_offset_past_the_end() {
    let m = external_model("ext_offset", |t| {
        set_location(t, "w.data");
        t.external_data.push(pb::StringStringEntryProto {
            key: "offset".into(),
            value: "1000000000000".into(),
        });
    });
    std::fs::write(m.with_file_name("w.data"), data_file()).unwrap();
    check(
        m.parent().unwrap(),
        &run_external(&m),
        &[
            "m.onnx",
            "external data 'w.data' has",
            "at offset 1000000000000",
        ],
    );
}

#[test]
fn external_data_shape_too_large_to_address() {
    let m = external_model("ext_huge_shape", |t| {
        set_location(t, "w.data");
        t.dims = vec![1 << 40, 1 << 40];
    });
    std::fs::write(m.with_file_name("w.data"), data_file()).unwrap();
    check(
        m.parent().unwrap(),
        &run_external(&m),
        &["m.onnx", "more elements than memory can address"],
    );
}

// -------------------------------------------------------------- NPU programs

fn npu_sim(program: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut args = os(&[&"npu", &"sim", &program]);
    args.extend(extra.iter().map(OsString::from));
    args
}

fn npu_program(case: &str, text: &str) -> PathBuf {
    let d = case_dir(case);
    let p = d.join("p.s");
    std::fs::write(&p, text).unwrap();
    p
}

const LD_CFG: &str =
    "ld.cfg dram_stride=0 sram_stride=0 pad_top=0 pad_bottom=0 pad_left=0 pad_right=0\n";

#[test]
fn npu_zero_length_ld_outside_dram() {
    let p = npu_program(
        "npu_ld0",
        &format!(".dram 64\n{LD_CFG}ld space=a sram=0 dram=4000000 rows=2 row_bytes=0\nhalt\n"),
    );
    check(
        p.parent().unwrap(),
        &npu_sim(&p, &[]),
        &["p.s", "trap at instruction #1 `ld`", "DRAM image"],
    );
}

#[test]
fn npu_zero_length_st_outside_sram() {
    let p = npu_program(
        "npu_st0",
        ".dram 64\nst.cfg dram_stride=0 sram_stride=0\nst space=w sram=16000000 dram=0 rows=1 row_bytes=0\nhalt\n",
    );
    check(
        p.parent().unwrap(),
        &npu_sim(&p, &[]),
        &["p.s", "trap at instruction #1 `st`", "weight SRAM"],
    );
}

#[test]
fn npu_zero_length_vcopy_outside_sram() {
    let p = npu_program(
        "npu_vcopy0",
        "vec.cfg dst_stride=0 src_stride=0 src2_stride=0\nvcopy dst_space=a dst=16000000 src_space=a src=0 rows=1 cols=0\nhalt\n",
    );
    check(
        p.parent().unwrap(),
        &npu_sim(&p, &[]),
        &["p.s", "trap at instruction #1 `vcopy`", "activation SRAM"],
    );
}

#[test]
fn npu_huge_instruction_under_a_cycle_budget() {
    let p = npu_program(
        "npu_huge_vbin",
        "vec.cfg dst_stride=0 src_stride=0 src2_stride=0\nvbin op=add dst_mem=a dst=0 a_mem=a a=0 b_mem=a b=0 rows=65535 cols=65535 bcast=0\nhalt\n",
    );
    check(
        p.parent().unwrap(),
        &npu_sim(&p, &["--max-cycles", "1000000"]),
        &[
            "p.s",
            "budget exceeded at instruction #1 `vbin`",
            "1000000 cycles",
        ],
    );
}

#[test]
fn npu_heavy_program_under_the_default_budget() {
    let p = npu_program(
        "npu_heavy_default",
        &format!(
            "vec.cfg dst_stride=0 src_stride=0 src2_stride=0\n{}halt\n",
            "vcopy dst_space=a dst=0 src_space=a src=0 rows=65535 cols=16000000\n".repeat(200)
        ),
    );
    check(
        p.parent().unwrap(),
        &npu_sim(&p, &[]),
        &["p.s", "budget exceeded at instruction #1 `vcopy`"],
    );
}

/// A config claiming a million vector lanes makes every `vbin` a few
/// cycles long, so the cycle budget never stops the program; the work
/// budget (from the instructions' fields, whatever the config) does,
/// before the first instruction runs.
#[test]
fn npu_config_claiming_a_million_lanes_meets_the_work_budget() {
    let p = npu_program(
        "npu_million_lanes",
        &format!(
            "vec.cfg dst_stride=0 src_stride=0 src2_stride=0\n{}halt\n",
            "vbin op=mulq dst_mem=a dst=0 a_mem=a a=0 b_mem=a b=0 rows=65535 cols=65535 bcast=0\n"
                .repeat(200)
        ),
    );
    let dir = p.parent().unwrap();
    let dump = m4c(&os(&[
        &"npu",
        &"config",
        &"--preset",
        &"edge-small",
        &"--dump",
    ]));
    assert!(dump.status.success());
    let toml = String::from_utf8_lossy(&dump.stdout)
        .replace("vector_lanes = 16", "vector_lanes = 1048576");
    assert!(toml.contains("vector_lanes = 1048576"));
    let config = dir.join("npu.toml");
    std::fs::write(&config, toml).unwrap();
    check(
        dir,
        &npu_sim(&p, &["--config", &config.to_string_lossy()]),
        &[
            "p.s",
            "budget exceeded at instruction #1 `vbin`",
            "(max_work)",
        ],
    );
}

#[test]
fn npu_long_program_crosses_the_cycle_budget() {
    let p = npu_program(
        "npu_long",
        &format!(
            ".dram 4096\n{LD_CFG}{}halt\n",
            "ld space=a sram=0 dram=0 rows=1 row_bytes=4096\n".repeat(1000)
        ),
    );
    check(
        p.parent().unwrap(),
        &npu_sim(&p, &["--max-cycles", "5000"]),
        &[
            "p.s",
            "budget exceeded at instruction #",
            "`ld`",
            "5000 cycles",
        ],
    );
}

#[test]
fn npu_program_fifo_does_not_block() {
    let d = case_dir("npu_fifo");
    let p = d.join("p.npub");
    mkfifo(&p);
    check(
        &d,
        &npu_sim(&p, &[]),
        &["p.npub", "not a regular file (a FIFO)"],
    );
    check(
        &d,
        &os(&[&"npu", &"disasm", &p]),
        &["p.npub", "not a regular file (a FIFO)"],
    );
    check(
        &d,
        &os(&[&"npu", &"asm", &p, &"-o", &d.join("x.npub")]),
        &["p.npub", "not a regular file (a FIFO)"],
    );
}

#[test]
fn npu_program_directory() {
    let d = case_dir("npu_dir");
    check(&d, &npu_sim(&d, &[]), &["not a regular file (a directory)"]);
}

fn npu_layer(case: &str, args: &[&str], needles: &[&str]) {
    let d = case_dir(case);
    let mut all = vec!["npu".to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    let emit = d.join("p.npub");
    all.extend(["--emit".to_string(), emit.display().to_string()]);
    let args: Vec<OsString> = all.into_iter().map(OsString::from).collect();
    check(&d, &args, needles);
}

#[test]
fn npu_gemm_too_large_to_allocate() {
    npu_layer(
        "npu_gemm_huge",
        &["gemm", "--m", "100000000", "--k", "100000000", "--n", "10"],
        &["gemm: the operands need", "DRAM image"],
    );
}

#[test]
fn npu_gemm_sizes_overflow() {
    let big = usize::MAX.to_string();
    npu_layer(
        "npu_gemm_overflow",
        &["gemm", "--m", &big, "--k", &big, "--n", "2"],
        &["gemm: the operand sizes overflow"],
    );
}

#[test]
fn npu_conv_too_large_to_allocate() {
    npu_layer(
        "npu_conv_huge",
        &[
            "conv", "--h", "100000", "--w", "100000", "--c-in", "512", "--c-out", "8",
        ],
        &["conv: the operands need", "DRAM image"],
    );
}

#[test]
fn npu_conv_zero_stride() {
    npu_layer(
        "npu_conv_stride0",
        &[
            "conv", "--h", "8", "--w", "8", "--c-in", "4", "--c-out", "4", "--stride", "0",
        ],
        &["conv: --kernel and --stride must be at least 1"],
    );
}

#[test]
fn npu_conv_padding_overflows() {
    let big = (usize::MAX / 2 + 1).to_string();
    npu_layer(
        "npu_conv_pad",
        &[
            "conv", "--h", "8", "--w", "8", "--c-in", "4", "--c-out", "4", "--pad", &big,
        ],
        &["conv: the padded size overflows"],
    );
}

#[test]
fn npu_dwconv_too_large_to_allocate() {
    npu_layer(
        "npu_dwconv_huge",
        &["dwconv", "--h", "100000", "--w", "100000", "--c", "64"],
        &["dwconv: the operands need"],
    );
}

#[test]
fn npu_eltwise_too_large_to_allocate() {
    npu_layer(
        "npu_eltwise_huge",
        &["eltwise", "--rows", "1000000", "--cols", "1000000"],
        &["eltwise: the operands need"],
    );
}

#[test]
fn npu_softmax_too_large_to_allocate() {
    npu_layer(
        "npu_softmax_huge",
        &["softmax", "--rows", "1000000", "--cols", "1000000"],
        &["softmax: the operands need"],
    );
}

// --------------------------------------------------------------------- tasks

/// A firmware with two modules of the small batch-norm fixture.
fn firmware() -> &'static Path {
    static FW: OnceLock<PathBuf> = OnceLock::new();
    FW.get_or_init(|| {
        let d = case_dir("firmware");
        let modules = vec![
            ("enc".to_string(), fixture("batchnorm_net.onnx")),
            ("dec".to_string(), fixture("batchnorm_net.onnx")),
        ];
        let bytes = build_firmware(&modules, &FirmwareOptions::default()).unwrap();
        let fw = d.join("M4.fw");
        write_atomically(&fw, &[], &bytes).unwrap();
        fw
    })
}

/// A case directory with `tasks.toml` = `manifest`; `m4c task run` of task
/// `t` with the fixture's inputs.
fn task_case(case: &str, manifest: &str) -> (PathBuf, Vec<OsString>) {
    let d = case_dir(case);
    let m = d.join("tasks.toml");
    std::fs::write(&m, manifest).unwrap();
    let args = os(&[
        &"task",
        &"run",
        &firmware(),
        &"--manifest",
        &m,
        &"--task",
        &"t",
        &"--input",
        &fixture("batchnorm_net.inputs.npz"),
    ]);
    (d, args)
}

const SINGLE_WITH_ADAPTER: &str = "[tasks.t]\npath = 4\nmodule = \"enc\"\nadapter = \"{}\"\n";

fn adapter_manifest(adapter: &str) -> String {
    SINGLE_WITH_ADAPTER.replace("{}", adapter)
}

fn caption_manifest(projection: &str) -> String {
    format!(
        "[tasks.t]\npath = 1\nencoder = \"enc\"\nencoder_output = \"logits\"\nprojection = \"{projection}\"\ndecoder = \"dec\"\n"
    )
}

#[test]
fn task_adapter_escaping_by_parent_directory() {
    let (d, args) = task_case("task_adapter_dotdot", &adapter_manifest("../app.m4a"));
    std::fs::write(d.with_file_name("app.m4a"), b"M4C").unwrap();
    check(
        &d,
        &args,
        &[
            "task `t`",
            "adapter",
            "app.m4a",
            "resolves outside its folder",
        ],
    );
}

#[test]
fn task_adapter_escaping_by_symlink() {
    let (d, args) = task_case("task_adapter_symlink", &adapter_manifest("app.m4a"));
    let outside = case_dir("task_adapter_symlink_target").join("real.m4a");
    std::fs::write(&outside, b"SECRET-ADAPTER").unwrap();
    std::os::unix::fs::symlink(&outside, d.join("app.m4a")).unwrap();
    let err = check(
        &d,
        &args,
        &["task `t`", "app.m4a", "resolves outside its folder"],
    );
    assert!(!err.contains("SECRET"), "{err}");
}

#[test]
fn task_adapter_absolute_path_outside() {
    let (d, args) = task_case("task_adapter_abs", &adapter_manifest("/etc/passwd"));
    check(
        &d,
        &args,
        &["task `t`", "/etc/passwd", "resolves outside its folder"],
    );
}

#[test]
fn task_adapter_fifo_does_not_block() {
    let (d, args) = task_case("task_adapter_fifo", &adapter_manifest("app.m4a"));
    mkfifo(&d.join("app.m4a"));
    check(
        &d,
        &args,
        &["task `t`", "app.m4a", "not a regular file (a FIFO)"],
    );
}

#[test]
fn task_adapter_errors_never_echo_its_bytes() {
    let (d, args) = task_case("task_adapter_garbage", &adapter_manifest("app.m4a"));
    std::fs::write(
        d.join("app.m4a"),
        [b"SECRETKEY".as_slice(), &[7u8; 200]].concat(),
    )
    .unwrap();
    let err = check(&d, &args, &["app.m4a", "not an m4c bundle"]);
    assert!(!err.contains("SECRET"), "{err}");
    assert!(!err.contains("53, 45, 43"), "{err}");
}

#[test]
fn task_projection_escaping_its_folder() {
    let (d, args) = task_case("task_projection_dotdot", &caption_manifest("../proj.npy"));
    std::fs::write(d.with_file_name("proj.npy"), b"x").unwrap();
    check(
        &d,
        &args,
        &[
            "task `t`",
            "projection",
            "proj.npy",
            "resolves outside its folder",
        ],
    );
}

#[test]
fn task_projection_claiming_2_pow_40_elements() {
    let (d, args) = task_case("task_projection_huge", &caption_manifest("proj.npy"));
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1048576, 1048576, 4), }";
    std::fs::write(d.join("proj.npy"), npy(header, &[0; 16])).unwrap();
    check(&d, &args, &["task `t`", "proj.npy", "header claims shape"]);
}

#[test]
fn task_projection_fifo_does_not_block() {
    let (d, args) = task_case("task_projection_fifo", &caption_manifest("proj.npy"));
    mkfifo(&d.join("proj.npy"));
    check(
        &d,
        &args,
        &["task `t`", "proj.npy", "not a regular file (a FIFO)"],
    );
}

#[test]
fn task_manifest_fifo_does_not_block() {
    let d = case_dir("task_manifest_fifo");
    let m = d.join("tasks.toml");
    mkfifo(&m);
    let args = os(&[
        &"task",
        &"run",
        &firmware(),
        &"--manifest",
        &m,
        &"--task",
        &"t",
    ]);
    check(&d, &args, &["tasks.toml", "not a regular file (a FIFO)"]);
}

#[test]
fn task_manifest_directory() {
    let d = case_dir("task_manifest_dir");
    let m = d.join("tasks.toml");
    std::fs::create_dir(&m).unwrap();
    let args = os(&[
        &"task",
        &"run",
        &firmware(),
        &"--manifest",
        &m,
        &"--task",
        &"t",
    ]);
    check(
        &d,
        &args,
        &["tasks.toml", "not a regular file (a directory)"],
    );
}

#[test]
fn task_firmware_fifo_does_not_block() {
    let (d, mut args) = task_case("task_firmware_fifo", &adapter_manifest("app.m4a"));
    let fw = d.join("M4.fw");
    mkfifo(&fw);
    args[2] = fw.into_os_string();
    check(&d, &args, &["M4.fw", "not a regular file (a FIFO)"]);
}
