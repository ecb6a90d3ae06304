//! The task manifest (TOML): per task, the execution path of the paper's
//! §3.3, the firmware modules on it, the adapter and the glue. The schema
//! is documented in `docs/TASKS.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::tokenizer::WordTokenizer;
use super::TaskError;
use crate::input_file::{read_regular, resolve_inside};

/// The largest manifest read (manifests are a few kilobytes).
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;

impl TaskManifest {
    /// Resolves a file the manifest names (an adapter, a projection) and
    /// checks that it lies inside the manifest's folder.
    pub fn resolve(&self, file: &Path) -> Result<PathBuf, String> {
        resolve_inside(&self.dir, file).map_err(|e| format!("{}: {e}", file.display()))
    }
}

/// A parsed and checked manifest.
#[derive(Clone, Debug)]
pub struct TaskManifest {
    /// The manifest's folder: adapter and projection files must resolve
    /// inside it (after following symlinks) when they are opened.
    pub dir: PathBuf,
    pub tokenizer: Option<WordTokenizer>,
    /// The decoders' roles where their names are not the conventional
    /// ones (`[signature]`; see `crate::generate::Roles`).
    pub signature: crate::generate::Roles,
    pub tasks: BTreeMap<String, Task>,
}

/// One task: its path and the modules and glue that path needs.
#[derive(Clone, Debug)]
pub struct Task {
    /// An adapter bundle attached to the modules on the path it was built
    /// for (resolved against the manifest's directory).
    pub adapter: Option<PathBuf>,
    pub path: TaskPath,
}

/// The paper's four execution paths (Fig. 4).
#[derive(Clone, Debug)]
pub enum TaskPath {
    /// Path-1: encoder → projection → backbone (generation).
    EncoderBackbone {
        encoder: Output,
        /// `[prefix_tokens, vocab, dim]` (f32 .npy): prefix token k is
        /// `argmax_v (P[k]·e)_v` for the encoder embedding `e`.
        projection: PathBuf,
        decoder: String,
        prompt_tokens: Vec<i64>,
        generation: Generation,
    },
    /// Path-2: zero-shot classification by cosine similarity between an
    /// encoder's embedding and the text encoder's embeddings of the label
    /// prompts.
    ZeroShot {
        encoder: Output,
        text_encoder: Output,
        labels: Vec<Label>,
    },
    /// Path-3: text through the backbone (generation with a KV cache).
    Text {
        decoder: String,
        generation: Generation,
    },
    /// Path-4: one module (a generator) on its inputs.
    Single { module: String },
}

/// A module and the output a path uses.
#[derive(Clone, Debug)]
pub struct Output {
    pub module: String,
    pub output: String,
}

/// A class label and the text-encoder token ids of its prompt.
#[derive(Clone, Debug)]
pub struct Label {
    pub name: String,
    /// Token ids given in the manifest, or `None` to tokenize the prompt.
    pub tokens: Option<Vec<i64>>,
    /// The prompt with the label filled in.
    pub prompt: String,
}

/// Generation settings of paths 1 and 3.
#[derive(Clone, Debug)]
pub struct Generation {
    pub max_new_tokens: usize,
    /// 0: greedy; otherwise top-k sampling.
    pub top_k: usize,
    pub temperature: f32,
    pub seed: u64,
}

/// The TOML as written; every field optional so that each path can say
/// which it needs and which do not apply.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    tokenizer: Option<WordTokenizer>,
    signature: Option<crate::generate::Roles>,
    #[serde(default)]
    tasks: BTreeMap<String, RawTask>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTask {
    path: u8,
    adapter: Option<PathBuf>,
    encoder: Option<String>,
    encoder_output: Option<String>,
    text_encoder: Option<String>,
    text_output: Option<String>,
    prompt: Option<String>,
    labels: Option<Vec<String>>,
    label_tokens: Option<BTreeMap<String, Vec<i64>>>,
    projection: Option<PathBuf>,
    decoder: Option<String>,
    prompt_tokens: Option<Vec<i64>>,
    max_new_tokens: Option<usize>,
    top_k: Option<usize>,
    temperature: Option<f32>,
    seed: Option<u64>,
    module: Option<String>,
}

/// Fields each path takes (besides `path` and `adapter`).
const FIELDS: [&[&str]; 4] = [
    &[
        "encoder",
        "encoder_output",
        "projection",
        "decoder",
        "prompt_tokens",
        "max_new_tokens",
        "top_k",
        "temperature",
        "seed",
    ],
    &[
        "encoder",
        "encoder_output",
        "text_encoder",
        "text_output",
        "prompt",
        "labels",
        "label_tokens",
    ],
    &["decoder", "max_new_tokens", "top_k", "temperature", "seed"],
    &["module"],
];

impl RawTask {
    fn set_fields(&self) -> Vec<&'static str> {
        let set = [
            ("encoder", self.encoder.is_some()),
            ("encoder_output", self.encoder_output.is_some()),
            ("text_encoder", self.text_encoder.is_some()),
            ("text_output", self.text_output.is_some()),
            ("prompt", self.prompt.is_some()),
            ("labels", self.labels.is_some()),
            ("label_tokens", self.label_tokens.is_some()),
            ("projection", self.projection.is_some()),
            ("decoder", self.decoder.is_some()),
            ("prompt_tokens", self.prompt_tokens.is_some()),
            ("max_new_tokens", self.max_new_tokens.is_some()),
            ("top_k", self.top_k.is_some()),
            ("temperature", self.temperature.is_some()),
            ("seed", self.seed.is_some()),
            ("module", self.module.is_some()),
        ];
        set.into_iter().filter(|s| s.1).map(|s| s.0).collect()
    }
}

impl TaskManifest {
    /// Reads and checks the manifest at `path` (a regular file of at most
    /// [`MAX_MANIFEST_BYTES`]); file names in it resolve against its folder.
    pub fn load(path: &Path) -> Result<TaskManifest, TaskError> {
        let err = |msg: String| TaskError::Manifest {
            path: path.display().to_string(),
            msg,
        };
        let bytes = read_regular(path, MAX_MANIFEST_BYTES).map_err(|e| err(e.to_string()))?;
        let text = String::from_utf8(bytes).map_err(|_| err("not UTF-8 text".into()))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let dir = dir.canonicalize().map_err(|e| err(e.to_string()))?;
        TaskManifest::parse(&text, &dir).map_err(err)
    }

    /// Parses manifest text; relative file names resolve against `dir`.
    /// Errors carry the line (and column) for TOML and schema problems.
    pub fn parse(text: &str, dir: &Path) -> Result<TaskManifest, String> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| line_col(text, s.start));
            let msg = e.message().replace('\n', " ");
            match at {
                Some((l, c)) => format!("line {l}, column {c}: {msg}"),
                None => msg,
            }
        })?;
        if raw.tasks.is_empty() {
            return Err("no tasks (add a [tasks.NAME] table)".into());
        }
        let mut tasks = BTreeMap::new();
        for (name, t) in raw.tasks {
            let task = check_task(&t, dir, raw.tokenizer.is_some())
                .map_err(|e| format!("task `{name}` (path {}): {e}", t.path))?;
            tasks.insert(name, task);
        }
        Ok(TaskManifest {
            dir: dir.to_path_buf(),
            tokenizer: raw.tokenizer,
            signature: raw.signature.unwrap_or_default(),
            tasks,
        })
    }
}

/// 1-based line and column of byte `at` of `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

fn check_task(t: &RawTask, dir: &Path, has_tokenizer: bool) -> Result<Task, String> {
    if !(1..=4).contains(&t.path) {
        return Err("`path` must be 1, 2, 3 or 4".into());
    }
    let allowed = FIELDS[usize::from(t.path) - 1];
    if let Some(f) = t.set_fields().into_iter().find(|f| !allowed.contains(f)) {
        return Err(format!(
            "`{f}` does not apply to this path (it takes {})",
            allowed.join(", ")
        ));
    }
    let need = |v: &Option<String>, f: &str| v.clone().ok_or(format!("missing `{f}`"));
    let file = |p: &PathBuf| {
        if p.is_absolute() {
            p.clone()
        } else {
            dir.join(p)
        }
    };
    let generation = || -> Result<Generation, String> {
        let g = Generation {
            max_new_tokens: t.max_new_tokens.unwrap_or(8),
            top_k: t.top_k.unwrap_or(0),
            temperature: t.temperature.unwrap_or(1.0),
            seed: t.seed.unwrap_or(0),
        };
        if g.max_new_tokens == 0 {
            return Err("`max_new_tokens` must be at least 1".into());
        }
        if !(g.temperature > 0.0 && g.temperature.is_finite()) {
            return Err("`temperature` must be positive".into());
        }
        Ok(g)
    };
    let path = match t.path {
        1 => TaskPath::EncoderBackbone {
            encoder: Output {
                module: need(&t.encoder, "encoder")?,
                output: need(&t.encoder_output, "encoder_output")?,
            },
            projection: file(t.projection.as_ref().ok_or("missing `projection`")?),
            decoder: need(&t.decoder, "decoder")?,
            prompt_tokens: t.prompt_tokens.clone().unwrap_or_default(),
            generation: generation()?,
        },
        2 => TaskPath::ZeroShot {
            encoder: Output {
                module: need(&t.encoder, "encoder")?,
                output: need(&t.encoder_output, "encoder_output")?,
            },
            text_encoder: Output {
                module: need(&t.text_encoder, "text_encoder")?,
                output: need(&t.text_output, "text_output")?,
            },
            labels: labels(t, has_tokenizer)?,
        },
        3 => TaskPath::Text {
            decoder: need(&t.decoder, "decoder")?,
            generation: generation()?,
        },
        _ => TaskPath::Single {
            module: need(&t.module, "module")?,
        },
    };
    Ok(Task {
        adapter: t.adapter.as_ref().map(file),
        path,
    })
}

fn labels(t: &RawTask, has_tokenizer: bool) -> Result<Vec<Label>, String> {
    let template = t
        .prompt
        .clone()
        .unwrap_or_else(|| "a photo of a {label}".into());
    if !template.contains("{label}") {
        return Err("`prompt` must contain {label}".into());
    }
    let given = t.label_tokens.clone().unwrap_or_default();
    let mut names: Vec<String> = t.labels.clone().unwrap_or_default();
    names.extend(
        given
            .keys()
            .filter(|k| !names.contains(k))
            .cloned()
            .collect::<Vec<_>>(),
    );
    if names.len() < 2 {
        return Err(
            "zero-shot classification needs at least two labels (`labels` or `label_tokens`)"
                .into(),
        );
    }
    names
        .into_iter()
        .map(|name| {
            let tokens = given.get(&name).cloned();
            if tokens.is_none() && !has_tokenizer {
                return Err(format!(
                    "label `{name}` has no `label_tokens` entry and the manifest has no [tokenizer]"
                ));
            }
            Ok(Label {
                prompt: template.replace("{label}", &name),
                name,
                tokens,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        TaskManifest::parse(text, Path::new(".")).unwrap_err()
    }

    #[test]
    fn toml_errors_carry_the_line() {
        let e = err("[tasks.a]\npath = 3\ndecoder = \"x\"\nmax_new_tokens = \n");
        assert!(e.starts_with("line 4, column"), "{e}");
        let e = err("[tasks.a]\npath = 3\ndecodr = \"x\"\n");
        assert!(
            e.starts_with("line 3") && e.contains("unknown field `decodr`"),
            "{e}"
        );
    }

    #[test]
    fn schema_errors_name_the_task_and_field() {
        let e = err("[tasks.a]\npath = 2\nencoder = \"img_enc\"\n");
        assert_eq!(e, "task `a` (path 2): missing `encoder_output`");
        let e = err("[tasks.a]\npath = 4\nmodule = \"m\"\ndecoder = \"d\"\n");
        assert!(
            e.starts_with("task `a` (path 4): `decoder` does not apply"),
            "{e}"
        );
        let e = err("[tasks.a]\npath = 7\n");
        assert!(e.contains("`path` must be 1, 2, 3 or 4"), "{e}");
        assert!(err("").contains("no tasks"));
        let e = err(
            "[tasks.a]\npath = 2\nencoder = \"i\"\nencoder_output = \"e\"\ntext_encoder = \"t\"\ntext_output = \"o\"\nlabels = [\"cat\", \"dog\"]\n",
        );
        assert!(e.contains("label `cat` has no `label_tokens` entry"), "{e}");
    }

    #[test]
    fn a_signature_table_declares_decoder_roles() {
        let m = TaskManifest::parse(
            "[signature]\ninput_ids = \"ids\"\nattention_mask = \"\"\npast_prefix = \"cache_in\"\npresent_prefix = \"cache_out\"\n[tasks.t]\npath = 3\ndecoder = \"d\"\n",
            Path::new("/m"),
        )
        .unwrap();
        assert_eq!(m.signature.input_ids.as_deref(), Some("ids"));
        assert_eq!(m.signature.attention_mask.as_deref(), Some(""));
        let e = err("[signature]\nkeys = \"k\"\n[tasks.t]\npath = 3\ndecoder = \"d\"\n");
        assert!(e.contains("unknown field `keys`"), "{e}");
    }

    #[test]
    fn a_zero_shot_task_with_given_tokens_parses() {
        let m = TaskManifest::parse(
            "[tasks.z]\npath = 2\nencoder = \"i\"\nencoder_output = \"e\"\ntext_encoder = \"t\"\ntext_output = \"o\"\nadapter = \"a.m4a\"\n[tasks.z.label_tokens]\ncat = [1, 2]\ndog = [3]\n",
            Path::new("/m"),
        )
        .unwrap();
        let t = &m.tasks["z"];
        assert_eq!(t.adapter.as_deref(), Some(Path::new("/m/a.m4a")));
        let TaskPath::ZeroShot { labels, .. } = &t.path else {
            panic!("path 2")
        };
        assert_eq!(labels[1].prompt, "a photo of a dog");
        assert_eq!(labels[1].tokens, Some(vec![3]));
    }
}
