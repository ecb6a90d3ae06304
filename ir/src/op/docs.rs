//! `docs/IR.md`'s "Where each op lives" table kept true: a row for every
//! operator, its NPU column as the declaration says, every link resolving.

use std::path::{Path, PathBuf};

use super::{Npu, OpKind};

fn docs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

fn ir_md() -> String {
    let path = docs_dir().join("IR.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The cells of the table row whose first cell is `op`.
fn row<'a>(doc: &'a str, op: &str) -> Vec<Vec<&'a str>> {
    doc.lines()
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect::<Vec<_>>()
        })
        .filter(|cells| cells.len() == 6 && cells[0] == op)
        .collect()
}

/// The targets of the Markdown links `[text](target)` of `text`.
fn links(text: &str) -> Vec<&str> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .collect()
}

#[test]
fn every_op_has_one_row_with_its_declared_npu_support() {
    let doc = ir_md();
    for &k in OpKind::ALL {
        let rows = row(&doc, k.name());
        assert_eq!(
            rows.len(),
            1,
            "docs/IR.md: {} needs one row in the op table",
            k.name()
        );
        let cells = &rows[0];
        assert!(
            links(cells[1]).contains(&"../ir/src/op/kinds.rs"),
            "{}: declaration link",
            k.name()
        );
        let npu = cells[4];
        match k.info().npu {
            Npu::Kernel(files) => {
                let want: Vec<String> = files
                    .iter()
                    .map(|f| format!("../backends/npu/src/kernels/{f}"))
                    .collect();
                assert_eq!(links(npu), want, "{}: NPU column", k.name());
            }
            Npu::Isa(isa) => assert_eq!(npu, format!("ISA: {isa}"), "{}: NPU column", k.name()),
            Npu::Cpu => assert_eq!(npu, "—", "{}: NPU column", k.name()),
        }
    }
}

#[test]
fn every_link_in_ir_md_resolves() {
    let doc = ir_md();
    let local: Vec<&str> = links(&doc)
        .into_iter()
        .filter(|l| !l.contains("://"))
        .collect();
    assert!(
        local.len() > OpKind::ALL.len(),
        "the op table's links are missing"
    );
    for l in local {
        let path = docs_dir().join(l.split('#').next().unwrap_or(l));
        assert!(
            path.exists(),
            "docs/IR.md links to {l}, which does not exist"
        );
    }
}
