//! `m4c coverage` on the committed fixtures, checked against the op lists the
//! Python exporter wrote into tests/fixtures/MANIFEST.json.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const FIXTURES: &str = "tests/fixtures";

/// A fresh directory of this test process, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("m4c-coverage-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn m4c(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_m4c"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .expect("m4c runs")
}

fn manifest() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(FIXTURES)
        .join("MANIFEST.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// MODELS in manifest order, group `m4` by globs over the sub-model families
/// and group `ts` by the task-specific files named one by one.
fn fixture_args(manifest: &Value) -> Vec<String> {
    let mut args = vec!["coverage".to_string()];
    let fixtures = manifest["fixtures"].as_array().unwrap();
    args.extend(
        fixtures
            .iter()
            .map(|f| format!("{FIXTURES}/{}", f["file"].as_str().unwrap())),
    );
    for family in ["clip", "imu", "llama", "whisper"] {
        args.push(format!("--group=m4={FIXTURES}/{family}_*.onnx"));
    }
    for f in fixtures.iter().filter(|f| f["kind"] == "ts") {
        args.push(format!(
            "--group=ts={FIXTURES}/{}",
            f["file"].as_str().unwrap()
        ));
    }
    args
}

fn run_ok(args: &[String]) -> String {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = m4c(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The manifest's op types of the fixtures of one kind, in manifest order.
fn manifest_op_sets(manifest: &Value, kind: &str) -> Vec<BTreeSet<String>> {
    let fixtures = manifest["fixtures"].as_array().unwrap();
    let of_kind = fixtures.iter().filter(|f| f["kind"] == kind);
    of_kind
        .map(|f| f["op_types"].as_object().unwrap().keys().cloned().collect())
        .collect()
}

#[test]
fn fixture_groups_match_the_exporters_op_lists() {
    let manifest = manifest();
    let mut args = fixture_args(&manifest);
    args.push("--json".into());
    let report: Value = serde_json::from_str(&run_ok(&args)).unwrap();

    // Per model: the exact node counts per op type (If branches included).
    for (model, fixture) in report["models"]
        .as_array()
        .unwrap()
        .iter()
        .zip(manifest["fixtures"].as_array().unwrap())
    {
        assert_eq!(model["name"], fixture["name"]);
        assert_eq!(model["status"], "read");
        assert_eq!(
            model["op_types"], fixture["op_types"],
            "{}",
            fixture["name"]
        );
        assert_eq!(model["opset"], fixture["opset"]);
    }

    let groups = report["groups"].as_array().unwrap();
    let names: Vec<&str> = groups.iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["m4", "ts"]);
    let mut unions = vec![];
    for (group, kind) in groups.iter().zip(["m4", "ts"]) {
        let sets = manifest_op_sets(&manifest, kind);
        assert_eq!(group["models_read"], sets.len());
        let union = strings(&manifest["op_type_union"][kind]);
        assert_eq!(strings(&group["op_types"]), union, "{kind}");
        // Fig. 14a: the union's size after each model, from the manifest's lists.
        let mut seen = BTreeSet::new();
        let growth: Vec<usize> = sets
            .iter()
            .map(|s| {
                seen.extend(s.iter().cloned());
                seen.len()
            })
            .collect();
        assert_eq!(group["growth"], serde_json::json!(growth), "{kind}");
        // Fig. 14b: how many of the group's models use each op type.
        let mut used: BTreeMap<String, usize> = BTreeMap::new();
        for op in sets.iter().flatten() {
            *used.entry(op.clone()).or_default() += 1;
        }
        let reported: BTreeMap<String, usize> = group["frequency"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| {
                (
                    u["op_type"].as_str().unwrap().to_string(),
                    u["models"].as_u64().unwrap() as usize,
                )
            })
            .collect();
        assert_eq!(reported, used, "{kind}");
        unions.push(union.into_iter().collect::<BTreeSet<String>>());
    }
    // Every M4-style graph lowers onto the IR with no leftovers (issue 2).
    assert_eq!(groups[0]["lowering"]["full"], 14);
    let overlap = &report["overlap"];
    let union: Vec<String> = unions[0].union(&unions[1]).cloned().collect();
    let shared: Vec<String> = unions[0].intersection(&unions[1]).cloned().collect();
    let only_m4: Vec<String> = unions[0].difference(&unions[1]).cloned().collect();
    assert_eq!(strings(&overlap["union"]), union);
    assert_eq!(strings(&overlap["intersection"]), shared);
    assert_eq!(strings(&overlap["unique"][0]["op_types"]), only_m4);
}

#[test]
fn markdown_report_of_the_fixtures() {
    let markdown = run_ok(&fixture_args(&manifest()));
    insta::assert_snapshot!(markdown);
}

#[test]
fn a_glob_adds_models_not_listed() {
    let manifest = manifest();
    let args = [
        "coverage",
        "--json",
        "--group",
        "dyn=tests/fixtures/*_dynamo.onnx",
    ]
    .map(String::from);
    let report: Value = serde_json::from_str(&run_ok(&args)).unwrap();
    let group = &report["groups"][0];
    assert_eq!(group["models"].as_array().unwrap().len(), 7);
    assert_eq!(
        strings(&group["op_types"]),
        strings(&manifest["op_type_union"]["m4_dynamo"])
    );
}

#[test]
fn out_dir_gets_markdown_json_and_both_plots() {
    let dir = TempDir::new("out");
    let out = dir.path().join("report");
    let mut args = fixture_args(&manifest());
    let markdown = run_ok(&args);
    args.extend(["--out".into(), out.display().to_string()]);
    assert_eq!(run_ok(&args), "", "nothing on stdout without --json");
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap();
    assert_eq!(read("coverage.md"), markdown);
    let json: Value = serde_json::from_str(&read("coverage.json")).unwrap();
    assert_eq!(json["groups"].as_array().unwrap().len(), 2);
    let growth = read("growth.svg");
    assert!(growth.starts_with("<svg") && growth.ends_with("</svg>\n"));
    assert_eq!(growth.matches("<polyline").count(), 2);
    let frequency = read("frequency.svg");
    let bars = json["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["frequency"].as_array().unwrap().len())
        .sum::<usize>();
    assert_eq!(
        frequency.matches("<rect").count(),
        bars + 1,
        "a bar per op type per group, plus the background"
    );
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "coverage.json",
            "coverage.md",
            "frequency.svg",
            "growth.svg"
        ]
    );
}

#[test]
fn unreadable_models_are_reported_and_only_fatal_when_nothing_reads() {
    let dir = TempDir::new("unreadable");
    let corrupt = dir.path().join("corrupt.onnx");
    std::fs::write(&corrupt, b"\x0a\xff\xff\xff not a protobuf").unwrap();
    let corrupt = corrupt.display().to_string();
    let out = m4c(&["coverage", &corrupt, "tests/fixtures/resnet_small.onnx"]);
    assert_eq!(out.status.code(), Some(0));
    let markdown = String::from_utf8(out.stdout).unwrap();
    assert!(
        markdown.contains("2 model(s) in 1 group(s), 1 read"),
        "{markdown}"
    );
    assert!(
        markdown.contains(&format!(
            "| corrupt | all |  |  |  | unreadable: {corrupt}: not a valid ONNX protobuf"
        )),
        "{markdown}"
    );

    let out = m4c(&["coverage", &corrupt]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: no model could be read (1 given)") && stderr.contains(&corrupt),
        "{stderr}"
    );
}

#[test]
fn bad_arguments_exit_2_and_write_nothing() {
    let dir = TempDir::new("badargs");
    let file = dir.path().join("a_file");
    std::fs::write(&file, "").unwrap();
    let under_file = file.join("out").display().to_string();
    let cases: [(&[&str], &str); 4] = [
        (&["coverage", "--group", "m4"], "is not NAME=GLOB"),
        (
            &["coverage", "--group", "m4=tests/fixtures/nothing_*.onnx"],
            "matches no model",
        ),
        (&["coverage"], "no models given"),
        (
            &[
                "coverage",
                "tests/fixtures/resnet_small.onnx",
                "--out",
                &under_file,
            ],
            "cannot write",
        ),
    ];
    for (args, message) in cases {
        let out = m4c(args);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "only the file the test made");
}

#[test]
fn backend_support_counts_what_each_target_takes() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");
    let resnet = format!("{fixtures}resnet_small.onnx");
    let llama = format!("{fixtures}llama_prefill.onnx");
    let out = m4c(&[
        "coverage",
        "--json",
        "--backends",
        "npu:phone-flagship,cpu",
        &resnet,
        &llama,
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let totals = json["groups"][0]["backends"].as_array().unwrap();
    let targets: Vec<&str> = totals
        .iter()
        .map(|t| t["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["npu:phone-flagship", "cpu"]);
    // Per model, the nodes a target takes plus those it refuses are all
    // the model's IR nodes; the group sums the models.
    let mut sums: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for m in json["models"].as_array().unwrap() {
        let ir_nodes: u64 = m["lowering"]["ir_ops"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        for b in m["lowering"]["backends"].as_array().unwrap() {
            let refused: u64 = b["refused"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_u64().unwrap())
                .sum();
            assert_eq!(b["nodes"].as_u64().unwrap(), ir_nodes);
            assert_eq!(
                b["nodes_supported"].as_u64().unwrap() + refused,
                ir_nodes,
                "{b}"
            );
            let e = sums
                .entry(b["target"].as_str().unwrap().to_string())
                .or_default();
            e.0 += ir_nodes;
            e.1 += b["nodes_supported"].as_u64().unwrap();
        }
    }
    for t in totals {
        let (nodes, supported) = sums[t["target"].as_str().unwrap()];
        assert_eq!(
            (
                t["nodes"].as_u64().unwrap(),
                t["nodes_supported"].as_u64().unwrap()
            ),
            (nodes, supported)
        );
    }
    // The CPU backend compiles both fixtures whole (tests/cpu_fixtures.rs
    // runs them); the NPU takes ResNet whole (its MaxPool on the vector
    // unit) and LLaMA's token-embedding Gather (DMA row copies), and
    // refuses the Gather of its attention mask (a bool tensor).
    assert_eq!(totals[1]["models_whole"], 2);
    assert_eq!(totals[0]["models_whole"], 1);
    assert!(totals[0]["refused"].get("MaxPool").is_none(), "{totals:?}");
    assert_eq!(totals[0]["refused"]["Gather"], 1);
    let md = m4c(&["coverage", "--backends", "all", &resnet]);
    let md = String::from_utf8_lossy(&md.stdout);
    assert!(md.contains("## Backend support"), "{md}");

    let bad = m4c(&["coverage", "--backends", "tpu", &resnet]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown backend `tpu`"));
}
