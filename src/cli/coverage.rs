//! `m4c coverage`: the paper's Fig. 14 operator-simplicity analysis for any
//! set of ONNX models, grouped by globs, as Markdown, JSON and SVG plots.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use glob::{MatchOptions, Pattern};
use m4c_compiler::coverage::{
    analyze, census_model, frequency_svg, growth_svg, render_markdown, GroupSpec, Outcome,
};
use m4c_compiler::partition::OpSupport;

use super::CliResult;

/// The group that collects listed models no `--group` glob selects.
const UNGROUPED: &str = "ungrouped";

/// Arguments of `m4c coverage`.
#[derive(clap::Args)]
#[command(after_help = "\
Groups: each --group NAME=GLOB selects the listed MODELS whose path matches GLOB and also \
adds the files GLOB matches on disk that are not listed (after the listed ones, in glob order). \
Repeating a NAME adds to that group. With no --group, all models form one group 'all'; listed \
models that no glob selects form the group 'ungrouped'. Growth curves add models in this order.

Output: Markdown on stdout, or JSON with --json. With --out DIR, coverage.md, coverage.json, \
growth.svg and frequency.svg are written there (each complete or not at all) and stdout gets \
the JSON only if --json is given.

Exit status: 0 when the analysis ran; models that cannot be read are listed in the report and \
left out of its statistics, and models that do not lower fully are part of the result. 2 on bad \
arguments, when a glob matches no model, when no model can be read, or when --out cannot be written.")]
pub struct CoverageArgs {
    /// ONNX models, in the order the growth curves add them.
    models: Vec<PathBuf>,
    /// A group of models as NAME=GLOB (repeatable; quote the glob so the shell leaves it alone).
    #[arg(long = "group", value_name = "NAME=GLOB", value_parser = parse_group)]
    groups: Vec<(String, String)>,
    /// Write coverage.md, coverage.json, growth.svg and frequency.svg into this directory.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print the report as JSON instead of Markdown.
    #[arg(long)]
    json: bool,
    /// Also measure, for every model that lowers fully, the IR nodes and
    /// MACs each of these targets compiles (comma-separated: backends from
    /// `m4c backends`, `npu[:PRESET|CONFIG]`; `all` = every code generator
    /// and the NPU op set) — a "Backend support" table.
    #[arg(long, value_name = "TARGETS", value_delimiter = ',')]
    backends: Vec<String>,
}

fn parse_group(arg: &str) -> Result<(String, String), String> {
    let (name, glob) = arg
        .split_once('=')
        .ok_or_else(|| format!("'{arg}' is not NAME=GLOB"))?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.+-".contains(c))
    {
        return Err(format!(
            "group name '{name}' must be non-empty and use only letters, digits and _.+-"
        ));
    }
    if name == UNGROUPED {
        return Err(format!(
            "group name '{UNGROUPED}' is reserved for listed models no glob selects"
        ));
    }
    Pattern::new(glob).map_err(|e| format!("bad glob '{glob}': {e}"))?;
    Ok((name.to_string(), glob.to_string()))
}

/// The `--backends` list, `all` expanded to the NPU op set and every code
/// generator but the reference interpreter (which takes everything).
fn backend_targets(names: &[String]) -> CliResult<Vec<Box<dyn OpSupport>>> {
    let mut expanded: Vec<String> = vec![];
    for n in names {
        if n == "all" {
            expanded.push("npu".into());
            expanded.extend(
                m4c_backends::names()
                    .into_iter()
                    .filter(|b| *b != m4c_runtime::bundle::format::REFERENCE_BACKEND)
                    .map(String::from),
            );
        } else {
            expanded.push(n.clone());
        }
    }
    expanded
        .iter()
        .map(|t| super::backend::op_support(t))
        .collect()
}

/// Runs the analysis; see the `after_help` text for outputs and exit codes.
pub fn run(args: CoverageArgs) -> CliResult<i32> {
    let (paths, groups) = resolve(&args.models, &args.groups)?;
    let inputs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    if let Some(dir) = &args.out {
        let is_dir = fs::symlink_metadata(dir).is_ok();
        m4c_runtime::outfile::check(dir, &inputs, is_dir)?;
    }
    let targets = backend_targets(&args.backends)?;
    let targets: Vec<&dyn OpSupport> = targets.iter().map(|t| t.as_ref()).collect();
    let names = display_names(&paths);
    let progress = super::progress::Progress::bar(paths.len(), "models");
    let models: Vec<_> = paths
        .iter()
        .zip(names)
        .map(|(p, n)| {
            progress.item(n.clone());
            let census = census_model(p, n, &targets);
            progress.inc();
            census
        })
        .collect();
    drop(progress);
    let errors: Vec<&str> = models
        .iter()
        .filter_map(|m| match &m.outcome {
            Outcome::Unreadable { error } => Some(error.as_str()),
            Outcome::Read(_) => None,
        })
        .collect();
    if errors.len() == models.len() {
        return Err(format!(
            "no model could be read ({} given); first: {}",
            models.len(),
            errors.first().unwrap_or(&"none given")
        )
        .into());
    }
    let report = analyze(models, &groups);
    let json = serde_json::to_string_pretty(&report)? + "\n";
    let markdown = render_markdown(&report);
    match &args.out {
        Some(dir) => {
            let files = [
                ("coverage.md", markdown),
                ("coverage.json", json.clone()),
                ("growth.svg", growth_svg(&report.groups)),
                ("frequency.svg", frequency_svg(&report.groups)),
            ];
            write_all(dir, &inputs, &files)?;
            eprintln!(
                "wrote {}",
                files
                    .iter()
                    .map(|(f, _)| dir.join(f).display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if args.json {
                print!("{json}");
            }
        }
        None if args.json => print!("{json}"),
        None => print!("{markdown}"),
    }
    Ok(0)
}

/// The models to read, in order, and the groups over them.
fn resolve(
    models: &[PathBuf],
    globs: &[(String, String)],
) -> CliResult<(Vec<PathBuf>, Vec<GroupSpec>)> {
    if globs.is_empty() {
        if models.is_empty() {
            return Err(
                "no models given (list MODELS or select them with --group NAME=GLOB)".into(),
            );
        }
        return Ok((
            models.to_vec(),
            vec![GroupSpec {
                name: "all".into(),
                members: (0..models.len()).collect(),
            }],
        ));
    }
    let mut paths = models.to_vec();
    let mut index: HashMap<PathBuf, usize> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| (identity(p), i))
        .collect();
    let mut groups: Vec<GroupSpec> = vec![];
    let literal_separator = MatchOptions {
        require_literal_separator: true,
        ..MatchOptions::new()
    };
    for (name, glob) in globs {
        let pattern = Pattern::new(glob).map_err(|e| format!("--group {name}={glob}: {e}"))?;
        let mut members: Vec<usize> = (0..models.len())
            .filter(|&i| pattern.matches_path_with(&models[i], literal_separator))
            .collect();
        for found in glob::glob(glob).map_err(|e| format!("--group {name}={glob}: {e}"))? {
            let found = found.map_err(|e| format!("--group {name}={glob}: {e}"))?;
            if !found.is_file() {
                continue;
            }
            let i = *index.entry(identity(&found)).or_insert_with(|| {
                paths.push(found.clone());
                paths.len() - 1
            });
            members.push(i);
        }
        if members.is_empty() {
            return Err(format!("--group {name}={glob} matches no model").into());
        }
        match groups.iter_mut().find(|g| g.name == *name) {
            Some(g) => g.members.extend(members),
            None => groups.push(GroupSpec {
                name: name.clone(),
                members,
            }),
        }
    }
    for g in &mut groups {
        g.members.sort_unstable();
        g.members.dedup();
    }
    let ungrouped: Vec<usize> = (0..models.len())
        .filter(|i| groups.iter().all(|g| !g.members.contains(i)))
        .collect();
    if !ungrouped.is_empty() {
        groups.push(GroupSpec {
            name: UNGROUPED.into(),
            members: ungrouped,
        });
    }
    Ok((paths, groups))
}

/// The key under which two spellings of one file are the same model.
fn identity(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// File stems, or the whole path where two models share a stem.
fn display_names(paths: &[PathBuf]) -> Vec<String> {
    let stem = |p: &PathBuf| {
        p.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.display().to_string())
    };
    let stems: Vec<String> = paths.iter().map(stem).collect();
    stems
        .iter()
        .zip(paths)
        .map(|(s, p)| {
            if stems.iter().filter(|t| *t == s).count() > 1 {
                p.display().to_string()
            } else {
                s.clone()
            }
        })
        .collect()
}

/// Writes every file through the output helper, leaving nothing behind on
/// failure: a new `dir` is filled as a temporary directory renamed into
/// place; in an existing one every file is written to its temporary first
/// and all are renamed only once all are written. `inputs` (the models)
/// are never overwritten.
pub(super) fn write_all(dir: &Path, inputs: &[&Path], files: &[(&str, String)]) -> CliResult<()> {
    use m4c_runtime::outfile::{Options, Pending, PendingDir};
    use std::io::Write;
    if fs::symlink_metadata(dir).is_err() {
        let pending = PendingDir::create(dir, inputs)?;
        for (name, text) in files {
            fs::write(pending.dir().join(name), text)
                .map_err(|e| format!("cannot write {}: {e}", dir.join(name).display()))?;
        }
        pending.commit()?;
        return Ok(());
    }
    m4c_runtime::outfile::check(dir, inputs, true)?;
    let mut pending = vec![];
    for (name, text) in files {
        let path = dir.join(name);
        let mut out = Pending::create(&path, inputs, Options::default())?;
        out.writer()
            .write_all(text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        out.finish()?;
        pending.push(out);
    }
    for out in pending {
        out.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn group_arguments_are_validated() {
        assert_eq!(
            parse_group("m4=a/*.onnx"),
            Ok(("m4".into(), "a/*.onnx".into()))
        );
        assert!(parse_group("m4").unwrap_err().contains("NAME=GLOB"));
        assert!(parse_group("=x").is_err());
        assert!(parse_group("a b=x").is_err());
        assert!(parse_group("ungrouped=x").unwrap_err().contains("reserved"));
        assert!(parse_group("g=[").unwrap_err().contains("bad glob"));
    }

    #[test]
    fn globs_select_listed_models_and_repeated_names_extend_a_group() {
        // Paths that do not exist: only the textual match applies.
        let models = [
            p("no/such/a_x.onnx"),
            p("no/such/b.onnx"),
            p("no/such/c_x.onnx"),
            p("elsewhere/d.onnx"),
        ];
        let globs = [
            ("x".to_string(), "no/such/*_x.onnx".to_string()),
            ("y".into(), "no/such/b.onnx".into()),
            ("x".into(), "no/*/b.onnx".into()),
        ];
        let (paths, groups) = resolve(&models, &globs).unwrap();
        assert_eq!(paths, models.to_vec());
        let got: Vec<(&str, &[usize])> = groups
            .iter()
            .map(|g| (g.name.as_str(), g.members.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("x", &[0, 1, 2][..]),
                ("y", &[1][..]),
                ("ungrouped", &[3][..])
            ]
        );
        assert!(resolve(&models, &[("z".into(), "none/*.onnx".into())])
            .unwrap_err()
            .to_string()
            .contains("matches no model"));
        assert!(resolve(&[], &[]).is_err());
    }

    #[test]
    fn names_are_stems_unless_ambiguous() {
        assert_eq!(
            display_names(&[p("a/m.onnx"), p("b/m.onnx"), p("b/n.onnx")]),
            vec!["a/m.onnx", "b/m.onnx", "n"]
        );
    }
}
