//! Expected-failure lists: `tests/conformance/xfail/<engine>.txt`, one
//! case a line as `suite/case  # reason`, and the shared
//! `tests/conformance/unsupported.txt` of node tests the frontend cannot
//! lower (one reason for all, in its header).
//!
//! Every xfail entry needs a reason; [`PLACEHOLDER`] (what `M4C_BLESS=1`
//! writes for a new failure) is refused, so a human must say why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The reason `M4C_BLESS=1` gives a new entry; the suite fails while any
/// entry still has it.
pub const PLACEHOLDER: &str = "TODO(bless): say why";

/// A parsed list: case → reason (empty when the line has none).
pub struct List {
    /// The file it was read from (and bless writes).
    pub path: PathBuf,
    /// Case → reason, as listed.
    pub entries: BTreeMap<String, String>,
    /// Malformed lines: missing or placeholder reasons, duplicates.
    pub problems: Vec<String>,
}

/// The directory of the lists.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

/// The expected-failure list of `engine`.
pub fn engine_path(engine: &str) -> PathBuf {
    dir().join("xfail").join(format!("{engine}.txt"))
}

/// The shared list of node tests the frontend cannot lower.
pub fn unsupported_path() -> PathBuf {
    dir().join("unsupported.txt")
}

/// Reads a list (a missing file is an empty list); `need_reason` makes a
/// line without a real reason a problem.
pub fn load(path: &Path, need_reason: bool) -> List {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut list = List {
        path: path.to_path_buf(),
        entries: BTreeMap::new(),
        problems: vec![],
    };
    for (n, line) in text.lines().enumerate() {
        let (case, reason) = match line.split_once('#') {
            Some((c, r)) => (c.trim(), r.trim()),
            None => (line.trim(), ""),
        };
        if case.is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), n + 1);
        if need_reason && reason.is_empty() {
            list.problems
                .push(format!("{at}: `{case}` has no reason (`{case}  # why`)"));
        } else if reason.starts_with(PLACEHOLDER) {
            list.problems.push(format!(
                "{at}: `{case}` still has the bless placeholder: replace it with why it fails"
            ));
        }
        if list
            .entries
            .insert(case.to_string(), reason.to_string())
            .is_some()
        {
            list.problems.push(format!("{at}: `{case}` listed twice"));
        }
    }
    list
}

/// Rewrites a list for `now` (case → what happened), keeping the reason of
/// every case already listed and giving new ones [`PLACEHOLDER`] plus the
/// failure message, which the human replaces.
pub fn bless(list: &List, header: &str, now: &BTreeMap<String, String>, need_reason: bool) {
    let mut text = String::from(header);
    for (case, detail) in now {
        match list.entries.get(case).filter(|r| !r.is_empty()) {
            Some(reason) => text.push_str(&format!("{case}  # {reason}\n")),
            None if need_reason => {
                let detail: String = detail.chars().take(160).collect();
                text.push_str(&format!("{case}  # {PLACEHOLDER} (got: {detail})\n"));
            }
            None => text.push_str(&format!("{case}\n")),
        }
    }
    std::fs::create_dir_all(list.path.parent().expect("in a directory")).unwrap();
    std::fs::write(&list.path, text).unwrap();
}

/// The header of an engine's list.
pub fn engine_header(engine: &str) -> String {
    format!(
        "# Expected failures of the `{engine}` engine in the conformance suite\n\
         # (tests/conformance.rs, docs/CONFORMANCE.md). One case a line:\n\
         # `suite/case  # why it fails`. Every entry needs a reason; a listed case\n\
         # that passes fails the suite until it is removed.\n"
    )
}

/// The header of the shared unsupported list.
pub const UNSUPPORTED_HEADER: &str = "\
# ONNX node tests the frontend cannot load or lower (an op, attribute, dtype or
# input kind m4c does not accept: `target/conformance-report.txt` has each
# message). Not any engine's failure: they are skipped on every engine. A case
# that starts to lower fails the suite until it is removed from this list.
";

#[test]
fn entries_need_a_real_reason_once() {
    let path = std::env::temp_dir().join(format!("m4c-xfail-{}.txt", std::process::id()));
    std::fs::write(
        &path,
        format!(
            "# header\n\nsuite/a  # a reason\nsuite/b\nsuite/c  # {PLACEHOLDER} (got: x)\nsuite/a  # again\n"
        ),
    )
    .unwrap();
    let list = load(&path, true);
    assert_eq!(list.entries.len(), 3);
    assert_eq!(list.entries["suite/c"], format!("{PLACEHOLDER} (got: x)"));
    let problems = list.problems.join("\n");
    assert_eq!(list.problems.len(), 3, "{problems}");
    for needle in [
        "`suite/b` has no reason",
        "`suite/c` still has the bless placeholder",
        "`suite/a` listed twice",
    ] {
        assert!(problems.contains(needle), "{problems}");
    }
    // The shared unsupported list needs no per-line reason.
    assert_eq!(load(&path, false).problems.len(), 2);
    std::fs::remove_file(&path).unwrap();
}
