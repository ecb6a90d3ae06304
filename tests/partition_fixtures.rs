//! `m4c partition --target npu` over every fixture plus a model that
//! cannot be lowered: the full Fig. 2 table (its host-time columns
//! redacted: simulated cycles are deterministic, host times are not), the
//! CSV, and `--strict`.

mod common;
use common::{fixture, m4c, text};

use std::path::{Path, PathBuf};

#[path = "common/onnx.rs"]
mod onnx;
use onnx::{node, write_model};

/// Every `tests/fixtures/*.onnx`, sorted.
fn fixtures() -> Vec<PathBuf> {
    let dir = fixture("");
    let mut models: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
        .collect();
    models.sort();
    models
}

/// Writes a valid ONNX model whose one node (`com.example.Frobnicate`)
/// no lowering rule takes.
fn write_unlowerable(path: &Path) {
    write_model(
        path,
        17,
        vec![node("Frobnicate", "com.example", "frob", "x", "y")],
    );
}

/// The table with the host-measured columns replaced by `[host]` and
/// `dir` by `[tmp]`.
fn redacted(table: &str, dir: &Path) -> String {
    let mut host: Vec<usize> = vec![];
    let mut out = String::new();
    for line in table.lines() {
        let line = line.replace(&dir.display().to_string(), "[tmp]");
        if !line.starts_with("| ") {
            out += &line;
            out.push('\n');
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").collect();
        if host.is_empty() {
            host = (0..cells.len())
                .filter(|&i| {
                    let c = cells[i].trim();
                    c.contains("(host)") || c == "accel+CPU ms" || c == "speed-up"
                })
                .collect();
            assert_eq!(host.len(), 4, "{line}");
            out += &line;
        } else {
            let cells: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if host.contains(&i) && c.trim() != "-" {
                        "[host]".to_string()
                    } else {
                        c.trim().to_string()
                    }
                })
                .collect();
            out += &format!("| {} |", cells.join(" | "));
        }
        out.push('\n');
    }
    out
}

#[test]
fn partition_table_of_every_fixture_and_an_unlowerable_model() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("unlowerable.onnx");
    write_unlowerable(&bad);
    let csv = dir.path().join("table.csv");
    let models = fixtures();
    assert!(models.len() >= 20, "fixtures missing: {models:?}");
    let mut args: Vec<String> = vec!["partition".into(), "--runs".into(), "1".into()];
    args.extend(["--csv".into(), csv.display().to_string()]);
    args.extend(models.iter().map(|m| m.display().to_string()));
    args.push(bad.display().to_string());
    let out = m4c(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(rows.len(), models.len() + 2, "{table}");
    let row = |model: &str| {
        rows.iter()
            .find(|r| r.starts_with(&format!("| {model} |")))
            .unwrap_or_else(|| panic!("no row for {model}: {table}"))
    };
    assert!(row("mlp_external_data").contains("| Full |"));
    assert!(row("clip_text").contains("| Partial |"));
    let failed = row("unlowerable");
    assert!(
        failed.contains("| Fails-to-convert |") && failed.contains("com.example.Frobnicate"),
        "{failed}"
    );
    assert!(table.starts_with("Target: npu:edge-small ("), "{table}");
    let csv = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(csv.lines().count(), models.len() + 2, "{csv}");
    assert!(csv.starts_with("target,model,status,"), "{csv}");
    insta::assert_snapshot!(redacted(&table, dir.path()));
}

/// `--strict` prints the table, then refuses (exit 2) naming each model
/// with fallback, each node and the constraint it violates; a model
/// wholly on the NPU passes.
#[test]
fn strict_partition_lists_what_falls_back() {
    let mlp = fixture("mlp_external_data.onnx").display().to_string();
    let clip = fixture("clip_text.onnx").display().to_string();
    let out = m4c(&["partition", "--strict", "--runs", "1", &mlp, &clip]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("| clip_text | Partial |"), "{t}");
    assert!(
        t.contains("--strict: 1 model(s) would fall back to the CPU on npu:edge-small"),
        "{t}"
    );
    assert!(
        t.contains("\n  clip_text (") && t.contains(" node(s)):"),
        "{t}"
    );
    assert!(
        t.contains("Where `") && t.contains(": op: no NPU kernel for Where"),
        "{t}"
    );
    let out = m4c(&["partition", "--strict", "--runs", "1", &mlp]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
