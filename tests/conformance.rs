//! One conformance suite, every engine (docs/CONFORMANCE.md).
//!
//! Every backend registered in `m4c_backends::all()` that this host can
//! execute runs every suite: the model fixtures against onnxruntime's
//! outputs, ONNX's node tests, the `.ir` text filetests, and `m4c opt -o
//! x.ir` → `m4c run x.ir` through the CLI. Each engine has a reasoned
//! expected-failure list (`tests/conformance/xfail/<engine>.txt`); node
//! tests the frontend cannot lower are listed once, for all engines, in
//! `tests/conformance/unsupported.txt`. The suite fails on a failure no
//! list names, on a listed case that passes, and on an entry without a
//! reason. It prints `ENGINE SUITE: N passed, N failed, N skipped` per
//! engine and suite, then the overall line; "failed" counts unexpected
//! failures only, expected ones are counted among the skipped and named in
//! parentheses.
//!
//! `M4C_BLESS=1` rewrites the lists from this run (new entries get a
//! placeholder reason the suite refuses). `M4C_CONFORMANCE_ENGINES=cpu`
//! and `M4C_CONFORMANCE_SUITES=filetests,fixtures` narrow a local run;
//! `M4C_CONFORMANCE_THREADS` sets the parallelism (default: the cores).

#[path = "conformance/filetests.rs"]
mod filetests;
#[path = "conformance/fixtures.rs"]
mod fixtures;
#[path = "conformance/harness.rs"]
mod harness;
#[path = "conformance/node.rs"]
mod node;
#[path = "conformance/opt_ir.rs"]
mod opt_ir;
#[path = "conformance/qemu.rs"]
mod qemu;
#[path = "conformance/xfail.rs"]
mod xfail;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use harness::{engines, parallel_map, CaseResult, Engine, Outcome};

/// Writes a line straight to stdout, past the test harness's capture, so
/// the counts show in every `cargo test` run.
macro_rules! say {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

/// Runs the suites `M4C_CONFORMANCE_SUITES` selects (all by default).
fn run_suites(engines: &[Engine]) -> (Vec<(&'static str, Vec<CaseResult>)>, bool) {
    let only = std::env::var("M4C_CONFORMANCE_SUITES").ok();
    let wanted = |s: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|n| n.trim() == s))
    };
    let mut out = vec![];
    // A suite whose cases went missing would pass vacuously: each has a
    // floor (the committed counts, rounded down).
    let mut timed = |suite: &'static str, floor: usize, run: &dyn Fn() -> Vec<CaseResult>| {
        if wanted(suite) {
            let start = Instant::now();
            let results = run();
            assert!(
                results.len() >= floor,
                "{suite}: only {} cases (at least {floor} are committed)",
                results.len()
            );
            say!(
                "conformance: {suite}: {} cases in {:.1} s",
                results.len(),
                start.elapsed().as_secs_f64()
            );
            out.push((suite, results));
        }
    };
    timed(fixtures::SUITE, 20, &|| {
        parallel_map(&fixtures::cases(), |c| fixtures::run_case(engines, c))
    });
    timed(node::SUITE, 1800, &|| {
        parallel_map(&node::cases(), |c| node::run_case(engines, c))
    });
    timed(filetests::SUITE, 15, &|| {
        parallel_map(&filetests::cases(), |c| filetests::run_case(engines, c))
    });
    timed(opt_ir::SUITE, 6, &|| {
        parallel_map(&opt_ir::cases(), |c| opt_ir::run_case(engines, c))
    });
    (out, only.is_none())
}

/// Checks the shared unsupported list against the node tests the frontend
/// skipped; returns the problems.
fn check_unsupported(
    suites: &[(&str, Vec<CaseResult>)],
    complete: bool,
    bless: bool,
) -> Vec<String> {
    let Some((_, results)) = suites.iter().find(|(s, _)| *s == node::SUITE) else {
        return vec![];
    };
    let skipped: BTreeMap<String, String> = results
        .iter()
        .filter_map(|r| match r.outcomes.first() {
            Some(Outcome::Skip(why)) if why.starts_with("frontend:") => {
                Some((r.name.clone(), why.clone()))
            }
            _ => None,
        })
        .collect();
    let path = xfail::unsupported_path();
    let list = xfail::load(&path, false);
    if bless && complete {
        xfail::bless(&list, xfail::UNSUPPORTED_HEADER, &skipped, false);
    }
    let list = xfail::load(&path, false);
    let mut problems = list.problems;
    let ran: std::collections::BTreeSet<&str> = results.iter().map(|r| r.name.as_str()).collect();
    for (case, why) in &skipped {
        if !list.entries.contains_key(case) {
            problems.push(format!(
                "{case}: the frontend no longer lowers it ({why}); it is not in unsupported.txt"
            ));
        }
    }
    for case in list.entries.keys() {
        if ran.contains(case.as_str()) && !skipped.contains_key(case) {
            problems.push(format!(
                "{case}: now lowers: remove it from unsupported.txt (M4C_BLESS=1) and list any engine failure"
            ));
        } else if complete && !ran.contains(case.as_str()) {
            problems.push(format!("{case}: in unsupported.txt but no such case"));
        }
    }
    problems
}

/// Tallies one engine against its list, prints its lines; returns the
/// problems and (passed, failed, expected failures, skipped). "Failed"
/// counts only failures its list does not expect (each is also a problem);
/// an expected failure is printed as skipped with its count, since its
/// reason is on record.
fn check_engine(
    k: usize,
    engine: &Engine,
    suites: &[(&str, Vec<CaseResult>)],
    complete: bool,
    bless: bool,
    report: &mut String,
) -> (Vec<String>, [usize; 4]) {
    let path = xfail::engine_path(&engine.name());
    let list = xfail::load(&path, true);
    let failures: BTreeMap<String, String> = suites
        .iter()
        .flat_map(|(_, rs)| rs)
        .filter_map(|r| match &r.outcomes[k] {
            Outcome::Fail(why) => Some((r.name.clone(), why.clone())),
            _ => None,
        })
        .collect();
    if bless && complete && engine.runnable.is_ok() {
        xfail::bless(
            &list,
            &xfail::engine_header(&engine.name()),
            &failures,
            true,
        );
    }
    let list = xfail::load(&path, true);
    let mut problems = list.problems.clone();
    let mut total = [0; 4];
    if let Err(why) = &engine.runnable {
        say!("{}: skipped on this host: {why}", engine.name());
        // CI sets it where a Vulkan driver is installed, so that a missing
        // driver cannot pass as a skip.
        if engine.name() == "gpu" && std::env::var_os("M4C_REQUIRE_GPU").is_some() {
            problems.push(format!("gpu: M4C_REQUIRE_GPU is set but {why}"));
        }
        // Likewise where the cross toolchain and qemu-user are installed.
        if engine.cross.is_some() && std::env::var_os("M4C_REQUIRE_QEMU").is_some() {
            problems.push(format!(
                "{}: M4C_REQUIRE_QEMU is set but {why}",
                engine.name()
            ));
        }
    }
    for (suite, results) in suites {
        let mut counts = [0; 4];
        for r in results {
            match &r.outcomes[k] {
                Outcome::Pass => {
                    counts[0] += 1;
                    if list.entries.contains_key(&r.name) {
                        problems.push(format!(
                            "{} {}: unexpected pass, remove it from {}",
                            engine.name(),
                            r.name,
                            path.display()
                        ));
                    }
                }
                Outcome::Fail(why) => {
                    report.push_str(&format!("{} FAIL {}: {why}\n", engine.name(), r.name));
                    if list.entries.contains_key(&r.name) {
                        counts[2] += 1;
                    } else {
                        counts[1] += 1;
                        problems.push(format!(
                            "{} {}: unexpected failure: {why}",
                            engine.name(),
                            r.name
                        ));
                    }
                }
                Outcome::Skip(why) => {
                    counts[3] += 1;
                    if engine.runnable.is_ok() && k == 0 {
                        report.push_str(&format!("SKIP {}: {why}\n", r.name));
                    }
                    if engine.runnable.is_ok() && list.entries.contains_key(&r.name) {
                        problems.push(format!(
                            "{} {}: listed as failing but skipped ({why}): remove it",
                            engine.name(),
                            r.name
                        ));
                    }
                }
            }
        }
        say!("{} {suite}: {}", engine.name(), tally(&counts));
        for (t, c) in total.iter_mut().zip(counts) {
            *t += c;
        }
    }
    if complete && engine.runnable.is_ok() {
        let ran: std::collections::BTreeSet<&str> = suites
            .iter()
            .flat_map(|(_, rs)| rs)
            .map(|r| r.name.as_str())
            .collect();
        for case in list.entries.keys().filter(|c| !ran.contains(c.as_str())) {
            problems.push(format!(
                "{} {case}: listed in {} but no such case",
                engine.name(),
                path.display()
            ));
        }
    }
    (problems, total)
}

/// `N passed, N failed, N skipped (N expected failures, N not run)`: the
/// plain closing form; expected failures are among the skipped.
fn tally(c: &[usize; 4]) -> String {
    format!(
        "{} passed, {} failed, {} skipped ({} expected failures with reasons, {} not run)",
        c[0],
        c[1],
        c[2] + c[3],
        c[2],
        c[3]
    )
}

#[test]
fn every_suite_on_every_engine() {
    let engines = engines();
    assert!(!engines.is_empty(), "no engine selected");
    // Panics inside a case are caught and reported as its failure: keep
    // the default hook from printing each one while the cases run.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let (suites, all_suites) = run_suites(&engines);
    std::panic::set_hook(hook);
    // An engine's list, and the frontend's, depend only on that engine's
    // (the frontend's) results: every suite must have run, not every engine.
    let complete = all_suites;
    let bless = std::env::var_os("M4C_BLESS").is_some();
    assert!(
        !bless || complete,
        "M4C_BLESS=1 rewrites the lists of the engines run from every suite: unset M4C_CONFORMANCE_SUITES"
    );
    let mut problems = check_unsupported(&suites, complete, bless);
    let mut report = String::new();
    let mut total = [0; 4];
    for (k, engine) in engines.iter().enumerate() {
        let (p, t) = check_engine(k, engine, &suites, complete, bless, &mut report);
        problems.extend(p);
        for (a, b) in total.iter_mut().zip(t) {
            *a += b;
        }
    }
    let report_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/conformance-report.txt");
    let _ = std::fs::write(&report_path, &report);
    say!("conformance details: {}", report_path.display());
    say!("{}", tally(&total));
    assert!(
        problems.is_empty(),
        "{} conformance problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}
