//! `m4c generate`: text generation with a KV cache on a decoder with past
//! (an ONNX/IR model specialised here for the prompt and the context, or a
//! firmware's decoder modules), printing tokens as they come.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use m4c_compiler::adapter::{attach, PeftAdapter};
use m4c_compiler::onnx::pb::tensor_shape_proto::dimension::Value as DimValue;
use m4c_compiler::onnx::pb::type_proto::Value as TypeValue;
use m4c_ir::{Dim, TensorType};
use m4c_runtime::bundle::{is_bundle, Bundle};
use m4c_runtime::exec::{load_module, Engine, LoadOptions, ModuleExecutor, Signature};
use m4c_runtime::generate::{
    Decoder, Fixed, GenError, KvLayout, Limits, Roles, Sampler, Sampling, Specialisations, Stop,
};

use super::backend::BackendArgs;
use super::model_args::Model;
use super::CliResult;

/// Arguments of `m4c generate`.
#[derive(clap::Args)]
pub struct GenerateArgs {
    /// A decoder with past (ONNX or IR file), or a firmware bundle (with
    /// --module).
    model: PathBuf,
    /// The firmware's decode module; a module `NAME_prefill` (a prefill
    /// bucket, built with `firmware build --module-dim`) is used for the
    /// prompt when the bundle has one.
    #[arg(long, value_name = "NAME")]
    module: Option<String>,
    /// The prompt's token ids, comma-separated.
    #[arg(
        long,
        value_name = "IDS",
        value_delimiter = ',',
        conflicts_with = "prompt_file"
    )]
    prompt_ids: Vec<i64>,
    /// A file of token ids (separated by commas or white space).
    #[arg(long, value_name = "FILE")]
    prompt_file: Option<PathBuf>,
    /// New tokens at most.
    #[arg(long, value_name = "N")]
    max_new_tokens: usize,
    /// Sampling temperature (sampling only with --temperature, --top-k or
    /// --top-p; greedy otherwise).
    #[arg(long, value_name = "T")]
    temperature: Option<f32>,
    /// Sample among the K most likely tokens.
    #[arg(long, value_name = "K")]
    top_k: Option<usize>,
    /// Sample among the fewest tokens whose probabilities sum to P.
    #[arg(long, value_name = "P")]
    top_p: Option<f32>,
    /// Seed of the sampler (runs repeat exactly).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A LoRA adapter: a PEFT directory (ONNX models) or an adapter bundle
    /// from `m4c adapt` (firmware).
    #[arg(long, value_name = "DIR|APP.m4a")]
    adapter: Option<PathBuf>,
    /// Tokens the KV cache holds (default: prompt + --max-new-tokens).
    #[arg(long, value_name = "C")]
    max_context: Option<usize>,
    /// Stop after this token.
    #[arg(long, value_name = "ID")]
    stop_id: Option<i64>,
    /// Print JSON (tokens, ttft_ms, tokens_per_s, ...) instead of tokens as
    /// they come.
    #[arg(long)]
    json: bool,
    /// Which engine runs a firmware's modules.
    #[arg(long, value_name = "auto|compiled|reference", value_parser = |s: &str| s.parse::<Engine>())]
    engine: Option<Engine>,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    trust: super::keygen::TrustArgs,
}

/// Runs `m4c generate`; errors exit 2 (in `main`).
pub fn run(args: GenerateArgs) -> CliResult<i32> {
    let prompt = prompt(&args)?;
    if prompt.is_empty() {
        return Err(GenError::EmptyPrompt.into());
    }
    let sampling = sampling(&args);
    let mut sampler = Sampler::new(sampling.clone())?;
    let context = args
        .max_context
        .unwrap_or(prompt.len() + args.max_new_tokens);
    if prompt.len() > context {
        return Err(GenError::PromptTooLong {
            prompt: prompt.len(),
            max: context,
        }
        .into());
    }
    let roles = Roles::default();
    let (source, engines): (Box<dyn Specialisations>, String) = if is_bundle(&args.model) {
        bundle_source(&args, &roles)?
    } else {
        let s = OnnxSource::new(&args)?;
        let backend = args.backend.backend.clone();
        (Box::new(s), backend)
    };
    let decoder = Decoder::from_source(source, roles, context)?;
    let limits = Limits {
        max_new: args.max_new_tokens,
        stop_id: args.stop_id,
    };
    let json = args.json;
    let mut out = std::io::stdout();
    let out_of = |e: GenError| format!("{}: {e}", args.model.display());
    let g = decoder
        .generate_with(&prompt, &limits, &mut sampler, &mut |t| {
            if !json {
                let _ = write!(out, "{t} ");
                let _ = out.flush();
            }
        })
        .map_err(out_of)?;
    let ttft_ms = g.prompt_time.as_secs_f64() * 1e3;
    let tokens_per_s = g.decode_tokens_per_s();
    if json {
        let stop = serde_json::to_value(g.stop)?;
        let report = serde_json::json!({
            "tokens": g.tokens,
            "prompt_tokens": prompt.len(),
            "ttft_ms": ttft_ms,
            "tokens_per_s": tokens_per_s,
            "prefill_calls": g.prefill_calls,
            "max_context": decoder.max_context(),
            "cache_bytes": g.cache_bytes,
            "stopped": stop["reason"],
            "engine": engines,
            "sampling": format!("{sampling:?}"),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!();
        if let Stop::ContextFull { at } = g.stop {
            println!("stopped: context full at {at} tokens");
        }
        eprintln!(
            "{} tokens; first after {ttft_ms:.2} ms ({} prefill call(s) for {} prompt tokens), \
             then {tokens_per_s:.1} tokens/s; KV cache {} bytes for {} tokens; {engines}",
            g.tokens.len(),
            g.prefill_calls,
            prompt.len(),
            g.cache_bytes,
            decoder.max_context()
        );
    }
    Ok(0)
}

fn prompt(args: &GenerateArgs) -> CliResult<Vec<i64>> {
    let Some(file) = &args.prompt_file else {
        return Ok(args.prompt_ids.clone());
    };
    // A regular file (never a FIFO), of a prompt's size.
    let bytes = m4c_runtime::input_file::read_regular(file, 64 << 20)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let text =
        String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8 text", file.display()))?;
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<i64>()
                .map_err(|_| format!("{}: '{s}' is not a token id", file.display()).into())
        })
        .collect()
}

fn sampling(args: &GenerateArgs) -> Sampling {
    if args.temperature.is_none() && args.top_k.is_none() && args.top_p.is_none() {
        return Sampling::Greedy;
    }
    Sampling::TopK {
        k: args.top_k.unwrap_or(usize::MAX),
        top_p: args.top_p.unwrap_or(1.0),
        temperature: args.temperature.unwrap_or(1.0),
        seed: args.seed,
    }
}

/// A firmware's decode module (and its `_prefill` bucket, if any), with
/// the adapter attached to both.
fn bundle_source(
    args: &GenerateArgs,
    roles: &Roles,
) -> CliResult<(Box<dyn Specialisations>, String)> {
    if args.backend.backend != m4c_runtime::bundle::format::REFERENCE_BACKEND
        || args.backend.target.is_some()
    {
        return Err(format!(
            "{}: --backend/--target apply to models; a bundle runs its own compiled code (choose with --engine)",
            args.model.display()
        )
        .into());
    }
    let fw = Bundle::open(&args.model)?;
    let name = args.module.as_deref().ok_or_else(|| {
        format!(
            "{}: a bundle needs --module NAME (modules: {})",
            args.model.display(),
            fw.modules().collect::<Vec<_>>().join(", ")
        )
    })?;
    let adapter = args
        .adapter
        .as_deref()
        .map(|p| super::run::open_adapter_bundle(p, &args.model))
        .transpose()?;
    let adapters: Vec<_> = adapter.iter().collect();
    let opts = LoadOptions {
        engine: args.engine.unwrap_or_default(),
        threads: super::backend::threads(args.backend.threads)?,
        trusted: args.trust.keys()?,
    };
    let prefill = format!("{name}_prefill");
    let mut names = vec![name.to_string()];
    if fw.modules().any(|m| m == prefill) {
        names.push(prefill);
    }
    let mut modules = vec![];
    let mut engines = vec![];
    for m in &names {
        let loaded = load_module(&fw, m, &adapters, &opts)?;
        if let Some(why) = &loaded.fallback {
            eprintln!("note: {why}");
        }
        // A prefill module that is not a decoder with past (no keys and
        // values out) is left aside: the prompt then goes token by token.
        if m != name {
            if let Err(e) = KvLayout::with_roles(loaded.executor.signature(), roles) {
                eprintln!("note: module `{m}` is not used for prefill: {e}");
                continue;
            }
        }
        engines.push(format!("`{m}`: {}", loaded.executor.backend()));
        modules.push(loaded.executor);
    }
    Ok((
        Box::new(Fixed::new(modules, roles)?),
        format!("engines {}", engines.join(", ")),
    ))
}

/// An ONNX (or IR) decoder specialised on demand: each (S, P) is lowered
/// with its symbolic dims bound, the adapter attached, and prepared on the
/// backend once.
struct OnnxSource {
    name: String,
    model: Model,
    adapter: Option<PeftAdapter>,
    backend: BackendArgs,
    /// The declared inputs (symbolic dims kept) and outputs.
    declared: Signature,
    roles: Roles,
    prepared: Mutex<HashMap<(usize, usize), Arc<dyn ModuleExecutor>>>,
}

impl OnnxSource {
    fn new(args: &GenerateArgs) -> CliResult<OnnxSource> {
        if args.module.is_some() || args.engine.is_some() {
            return Err(format!(
                "{}: --module and --engine apply to bundles, not models (use --backend)",
                args.model.display()
            )
            .into());
        }
        let model = Model::open(&args.model)?;
        let adapter = match &args.adapter {
            Some(p) if is_bundle(p) => {
                return Err(format!(
                    "{}: is an adapter bundle, which applies to the firmware it was built for; with a model give a PEFT directory",
                    p.display()
                )
                .into())
            }
            Some(p) => Some(PeftAdapter::load(p)?),
            None => None,
        };
        let declared = declared(&model)?;
        let roles = Roles::default();
        roles
            .resolve(&declared)
            .map_err(|e| format!("{}: not a decoder with past: {e}", args.model.display()))?;
        Ok(OnnxSource {
            name: args.model.display().to_string(),
            model,
            adapter,
            backend: args.backend.clone(),
            declared,
            roles,
            prepared: Mutex::default(),
        })
    }

    /// Lowers and prepares the (S, P) specialisation.
    fn specialise(&self, seq: usize, past: usize) -> CliResult<Arc<dyn ModuleExecutor>> {
        let l = self.roles.resolve(&self.declared)?;
        let mut opts = m4c_compiler::LowerOptions::default();
        for (i, (name, ty)) in self.declared.inputs.iter().enumerate() {
            let mut shape: Vec<usize> = ty
                .dims
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => *n,
                    Dim::Sym(_) => 1,
                })
                .collect();
            let mut set = |axis: usize, n: usize| {
                if let Some(d) = shape.get_mut(axis) {
                    *d = n;
                }
            };
            if i == l.input_ids || Some(i) == l.position_ids {
                set(1, seq);
            } else if Some(i) == l.attention_mask {
                set(1, past + seq);
            } else {
                set(2, past);
            }
            opts.input_shapes.insert(name.clone(), shape);
        }
        let mut graph = self.model.lower(&opts)?;
        if let Some(a) = &self.adapter {
            graph = attach(&graph, a)?.0;
        }
        // Outputs keep the model's names whatever lowering made of them.
        if let Some(names) = self.model.output_names() {
            for (&o, name) in graph.outputs.clone().iter().zip(names) {
                graph.values[o.index()].name = name;
            }
        }
        let name = graph.name.clone();
        let (exec, _) = self.backend.prepare(&name, graph)?;
        Ok(exec)
    }
}

impl Specialisations for OnnxSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn get(&self, seq: usize, past: usize) -> Result<Option<Arc<dyn ModuleExecutor>>, GenError> {
        let mut prepared = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = prepared.get(&(seq, past)) {
            return Ok(Some(e.clone()));
        }
        let exec = self
            .specialise(seq, past)
            .map_err(|e| GenError::Specialise {
                module: self.name.clone(),
                msg: format!("S={seq}, P={past}: {e}"),
            })?;
        prepared.insert((seq, past), exec.clone());
        Ok(Some(exec))
    }

    fn max_context(&self) -> Option<usize> {
        None
    }
}

/// Values for a decoder's symbolic sequence, past and total lengths that
/// agree (total = past + sequence), the ones in `given` kept and the rest
/// `default`; nothing for a model that is not a decoder with past.
pub(super) fn decoder_dims(
    model: &Model,
    given: &HashMap<String, usize>,
    default: usize,
) -> Vec<(String, usize)> {
    let Ok(dims) = declared(model).and_then(|sig| Ok(Roles::default().symbolic_dims(&sig)?)) else {
        return vec![];
    };
    let value = |name: &Option<String>| {
        name.as_ref()
            .map_or(default, |n| given.get(n).copied().unwrap_or(default))
    };
    let (seq, past) = (value(&dims.seq), value(&dims.past));
    [(dims.seq, seq), (dims.past, past), (dims.total, seq + past)]
        .into_iter()
        .filter_map(|(n, v)| Some((n?, v)))
        .collect()
}

/// A model's declared inputs and outputs with their symbolic dims (an IR
/// file's are its graph's).
fn declared(model: &Model) -> CliResult<Signature> {
    let onnx = match model {
        Model::Onnx(m) => m,
        Model::Ir { graph, .. } => return Ok(Signature::of(graph)),
    };
    let g = onnx.graph();
    let inits: std::collections::HashSet<&str> =
        g.initializer.iter().map(|t| t.name.as_str()).collect();
    let side =
        |vs: &[m4c_compiler::onnx::pb::ValueInfoProto]| -> CliResult<Vec<(String, TensorType)>> {
            vs.iter()
                .filter(|v| !inits.contains(v.name.as_str()))
                .map(|v| {
                    let Some(TypeValue::TensorType(tt)) =
                        v.r#type.as_ref().and_then(|t| t.value.as_ref())
                    else {
                        return Err(format!(
                            "{}: `{}` is not a tensor",
                            onnx.path.display(),
                            v.name
                        )
                        .into());
                    };
                    let dtype = m4c_compiler::onnx::dtype_from_onnx(tt.elem_type)?;
                    let dims = tt.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or(&[]);
                    let dims = dims
                        .iter()
                        .map(|d| match &d.value {
                            Some(DimValue::DimValue(n)) if *n >= 0 => Dim::Fixed(*n as usize),
                            Some(DimValue::DimParam(p)) => Dim::Sym(p.clone()),
                            _ => Dim::Sym("?".into()),
                        })
                        .collect();
                    Ok((v.name.clone(), TensorType { dtype, dims }))
                })
                .collect()
        };
    Ok(Signature {
        inputs: side(&g.input)?,
        outputs: side(&g.output)?,
    })
}
