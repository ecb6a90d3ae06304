//! Text generation with a KV cache on a decoder with past (the layout of
//! [`roles`](KvLayout)): the prompt goes through the decoder in one
//! prefill call (`S` = prompt length, `P` = 0), then one decode call per
//! new token (`S` = 1) reads the cache, which is allocated once for the
//! whole context.
//!
//! Decoders are compiled ahead of time for static shapes, so a decoder is
//! a set of [`Specialisations`]: the ONNX path specialises the model on
//! demand (the CLI's), a firmware offers the modules it was built with
//! ([`Fixed`]). A decoder that takes an attention mask and positions is
//! decoded with one specialisation for the whole context (`P` = context −
//! 1 slots, the unused ones masked); one without them must see exactly the
//! cached past, so each step asks for `P` = tokens so far.

mod cache;
mod roles;
mod sample;

use std::sync::Arc;
use std::time::{Duration, Instant};

use m4c_ops::Value;
use ndarray::{Array1, ArrayD, Axis, IxDyn};

pub use cache::KvCache;
pub use roles::{KvLayout, Roles, SymbolicDims};
pub use sample::{Sampler, Sampling};

use crate::exec::{ExecError, ModuleExecutor};

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("module `{module}` is not a KV-cache decode module: {msg}")]
    Layout { module: String, msg: String },
    #[error("the context is full: module `{module}` holds {max} tokens")]
    ContextFull { module: String, max: usize },
    #[error("the prompt has {prompt} tokens, more than the context of {max} (--max-context)")]
    PromptTooLong { prompt: usize, max: usize },
    #[error(
        "module `{module}` serves a context of at most {max} tokens, {asked} asked (--max-context)"
    )]
    ContextTooLarge {
        module: String,
        max: usize,
        asked: usize,
    },
    #[error("token {token} is outside the vocabulary (0..{vocab})")]
    Token { token: i64, vocab: usize },
    #[error("an empty prompt: generation needs at least one token")]
    EmptyPrompt,
    #[error("decoder `{module}`: {msg}")]
    Specialise { module: String, msg: String },
    #[error(transparent)]
    Exec(#[from] ExecError),
}

/// Executors of one decoder for `S` new tokens after `P` cached ones.
pub trait Specialisations: Send + Sync {
    /// The decoder's name, for messages.
    fn name(&self) -> &str;
    /// An executor for `seq` new tokens after `past` cached ones, `None`
    /// when there is none of that shape. A source may answer a decode
    /// request (`seq` = 1) with a maskable module of more past slots.
    fn get(&self, seq: usize, past: usize) -> Result<Option<Arc<dyn ModuleExecutor>>, GenError>;
    /// The largest context it serves (`None`: any).
    fn max_context(&self) -> Option<usize>;
}

/// Modules compiled ahead of time for fixed shapes (a firmware's, a
/// task's), matched to requests by their static shapes.
pub struct Fixed {
    name: String,
    modules: Vec<(Arc<dyn ModuleExecutor>, KvLayout)>,
}

impl Fixed {
    /// Checks that every module is a decoder with static shapes.
    pub fn new(modules: Vec<Arc<dyn ModuleExecutor>>, roles: &Roles) -> Result<Fixed, GenError> {
        let name = modules.first().map_or("decoder", |m| m.name()).to_string();
        let modules = modules
            .into_iter()
            .map(|m| {
                let l =
                    KvLayout::with_roles(m.signature(), roles).map_err(|msg| GenError::Layout {
                        module: m.name().to_string(),
                        msg,
                    })?;
                Ok((m, l))
            })
            .collect::<Result<_, GenError>>()?;
        Ok(Fixed { name, modules })
    }
}

impl Specialisations for Fixed {
    fn name(&self) -> &str {
        &self.name
    }

    fn get(&self, seq: usize, past: usize) -> Result<Option<Arc<dyn ModuleExecutor>>, GenError> {
        let exact = self
            .modules
            .iter()
            .find(|(_, l)| l.seq == seq && l.past == past);
        // A maskable module serves fewer past tokens (decode: unused slots
        // masked) or, with no past, fewer new ones (a prefill bucket:
        // padding masked).
        let masked = || {
            self.modules
                .iter()
                .filter(|(_, l)| l.maskable())
                .filter(|(_, l)| {
                    (seq == 1 && l.seq == 1 && l.past >= past)
                        || (past == 0 && l.past == 0 && l.seq >= seq)
                })
                .min_by_key(|(_, l)| (l.past, l.seq))
        };
        Ok(exact.or_else(masked).map(|(m, _)| m.clone()))
    }

    fn max_context(&self) -> Option<usize> {
        self.modules.iter().map(|(_, l)| l.max_context()).max()
    }
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum Stop {
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// The stop token was generated (it is the last of the tokens).
    StopToken,
    /// The context holds `at` tokens: no further step fits.
    ContextFull { at: usize },
}

/// What [`Decoder::generate`] produced and how long it took.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Generation {
    /// The new tokens (not the prompt).
    pub tokens: Vec<i64>,
    /// Time to feed the prompt (and choose the first new token).
    pub prompt_time: Duration,
    /// Time of the remaining steps.
    pub decode_time: Duration,
    /// Bytes of the preallocated cache.
    pub cache_bytes: usize,
    /// Prefill calls (1, or the prompt's length when the source has no
    /// prefill specialisation and the prompt is fed token by token).
    pub prefill_calls: usize,
    /// Why it stopped.
    pub stop: Stop,
}

impl Generation {
    /// New tokens per second after the first (0 with fewer than two).
    pub fn decode_tokens_per_s(&self) -> f64 {
        let n = self.tokens.len().saturating_sub(1);
        if n == 0 {
            0.0
        } else {
            n as f64 / self.decode_time.as_secs_f64()
        }
    }
}

/// When to stop generating.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// New tokens at most.
    pub max_new: usize,
    /// Stop after generating this token.
    pub stop_id: Option<i64>,
}

/// An executor and its layout.
type Specialised = (Arc<dyn ModuleExecutor>, KvLayout);

/// How decode steps run.
enum DecodeMode {
    /// One maskable module for the whole context: `past` slots, unused
    /// ones masked.
    Masked(Arc<dyn ModuleExecutor>, KvLayout),
    /// A specialisation per past length (decoders without mask/positions).
    Exact,
}

/// A decoder ready for cached generation over a fixed context.
pub struct Decoder {
    source: Box<dyn Specialisations>,
    roles: Roles,
    context: usize,
    decode: DecodeMode,
    /// The layout of the decode specialisation (`P` = context − 1 for
    /// masked decoding).
    layout: KvLayout,
}

impl Decoder {
    /// A decoder over one decode module of fixed shape (its context: its
    /// past slots + 1); the prompt is fed token by token.
    pub fn new(exec: Arc<dyn ModuleExecutor>) -> Result<Decoder, GenError> {
        Decoder::with_roles(exec, Roles::default())
    }

    /// [`Self::new`] for a module whose roles are declared.
    pub fn with_roles(exec: Arc<dyn ModuleExecutor>, roles: Roles) -> Result<Decoder, GenError> {
        let fixed = Fixed::new(vec![exec], &roles)?;
        #[allow(clippy::expect_used, reason = "Fixed::new was given one module")]
        let context = fixed.max_context().expect("one module");
        Decoder::from_source(Box::new(fixed), roles, context)
    }

    /// A decoder over `source` for a context of `context` tokens.
    pub fn from_source(
        source: Box<dyn Specialisations>,
        roles: Roles,
        context: usize,
    ) -> Result<Decoder, GenError> {
        let module = source.name().to_string();
        if let Some(max) = source.max_context().filter(|&m| context > m) {
            return Err(GenError::ContextTooLarge {
                module,
                max,
                asked: context,
            });
        }
        let context = context.max(1);
        let Some(exec) = source.get(1, context - 1)? else {
            return Err(GenError::Layout {
                module,
                msg: format!(
                    "no decode module for one token after {} cached ones",
                    context - 1
                ),
            });
        };
        let layout =
            KvLayout::with_roles(exec.signature(), &roles).map_err(|msg| GenError::Layout {
                module: exec.name().to_string(),
                msg,
            })?;
        // The cache is allocated once for the whole context: within budget.
        let slots = if layout.maskable() {
            layout.past
        } else {
            context - 1
        };
        let mut shape = layout.past_shape.clone();
        shape[2] = slots;
        shape.insert(0, layout.pairs.len());
        m4c_ops::budget::check("KV cache", &shape, 4).map_err(|e| GenError::Specialise {
            module: module.clone(),
            msg: e.to_string(),
        })?;
        let decode = if layout.maskable() {
            DecodeMode::Masked(exec, layout.clone())
        } else {
            DecodeMode::Exact
        };
        Ok(Decoder {
            source,
            roles,
            context: context.min(layout.max_context()),
            decode,
            layout,
        })
    }

    /// The decode specialisation's layout.
    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }

    /// Tokens the context holds.
    pub fn max_context(&self) -> usize {
        self.context
    }

    /// An empty cache for this decoder.
    pub fn new_cache(&self) -> KvCache {
        let slots = match &self.decode {
            DecodeMode::Masked(_, l) => l.past,
            DecodeMode::Exact => self.context - 1,
        };
        KvCache::new(&self.layout, slots)
    }

    fn layout_of(&self, exec: &dyn ModuleExecutor) -> Result<KvLayout, GenError> {
        KvLayout::with_roles(exec.signature(), &self.roles).map_err(|msg| GenError::Layout {
            module: exec.name().to_string(),
            msg,
        })
    }

    fn check_token(&self, token: i64) -> Result<(), GenError> {
        if (0..self.layout.vocab as i64).contains(&token) {
            Ok(())
        } else {
            Err(GenError::Token {
                token,
                vocab: self.layout.vocab,
            })
        }
    }

    /// Feeds `token` at position `cache.len()` and returns its logits; the
    /// token's key and value enter the cache.
    pub fn step(&self, cache: &mut KvCache, token: i64) -> Result<Vec<f32>, GenError> {
        if cache.len >= self.context {
            return Err(GenError::ContextFull {
                module: self.source.name().into(),
                max: self.context,
            });
        }
        self.check_token(token)?;
        match &self.decode {
            DecodeMode::Masked(exec, l) => call(&**exec, l, cache, &[token]),
            DecodeMode::Exact => {
                let exec = self.specialisation(1, cache.len)?;
                call(&*exec, &self.layout_of(&*exec)?, cache, &[token])
            }
        }
    }

    fn specialisation(&self, seq: usize, past: usize) -> Result<Arc<dyn ModuleExecutor>, GenError> {
        self.source
            .get(seq, past)?
            .ok_or_else(|| GenError::Specialise {
                module: self.source.name().to_string(),
                msg: format!(
                    "no module for {seq} token(s) after exactly {past} (it has no attention \
                     mask or positions, so a cache with masked slots cannot stand in)"
                ),
            })
    }

    /// The prefill specialisation for a prompt of `n` tokens, if the source
    /// has one (obtained before timing starts: it may be compiled now).
    fn prefill_module(&self, n: usize) -> Result<Option<Specialised>, GenError> {
        let Some(exec) = self.source.get(n, 0)? else {
            return Ok(None);
        };
        let l = self.layout_of(&*exec)?;
        let fits = l.seq >= n && l.past == 0 && (l.seq == n || l.maskable());
        Ok(fits.then_some((exec, l)))
    }

    /// Feeds the prompt: one call of `prefill` when given, else token by
    /// token. Returns the last position's logits and the calls made.
    fn prefill(
        &self,
        cache: &mut KvCache,
        prompt: &[i64],
        prefill: Option<Specialised>,
    ) -> Result<(Vec<f32>, usize), GenError> {
        if let Some((exec, l)) = prefill {
            return Ok((call(&*exec, &l, cache, prompt)?, 1));
        }
        let mut logits = vec![];
        for &t in prompt {
            logits = self.step(cache, t)?;
        }
        Ok((logits, prompt.len()))
    }

    /// Feeds `prompt`, then generates up to `max_new` tokens (fewer when the
    /// context fills: [`Generation::stop`] says so).
    pub fn generate(
        &self,
        prompt: &[i64],
        max_new: usize,
        sampler: &mut Sampler,
    ) -> Result<Generation, GenError> {
        let limits = Limits {
            max_new,
            stop_id: None,
        };
        self.generate_with(prompt, &limits, sampler, &mut |_| {})
    }

    /// [`Self::generate`] with a stop token, calling `on_token` with each
    /// new token as soon as it is chosen.
    pub fn generate_with(
        &self,
        prompt: &[i64],
        limits: &Limits,
        sampler: &mut Sampler,
        on_token: &mut dyn FnMut(i64),
    ) -> Result<Generation, GenError> {
        if prompt.is_empty() {
            return Err(GenError::EmptyPrompt);
        }
        if prompt.len() > self.context {
            return Err(GenError::PromptTooLong {
                prompt: prompt.len(),
                max: self.context,
            });
        }
        for &t in prompt {
            self.check_token(t)?;
        }
        let mut cache = self.new_cache();
        let prefill = self.prefill_module(prompt.len())?;
        let start = Instant::now();
        let mut tokens = vec![];
        let mut first_token_at = None;
        let mut stop = Stop::MaxTokens;
        let mut prefill_calls = 0;
        if limits.max_new > 0 {
            let (mut logits, calls) = self.prefill(&mut cache, prompt, prefill)?;
            prefill_calls = calls;
            loop {
                let tok = sampler.pick(&logits);
                tokens.push(tok);
                first_token_at.get_or_insert_with(Instant::now);
                on_token(tok);
                if limits.stop_id == Some(tok) {
                    stop = Stop::StopToken;
                    break;
                }
                if tokens.len() == limits.max_new {
                    break;
                }
                if cache.len() >= self.context {
                    stop = Stop::ContextFull { at: self.context };
                    break;
                }
                logits = self.step(&mut cache, tok)?;
            }
        }
        let first = first_token_at.unwrap_or_else(Instant::now);
        Ok(Generation {
            tokens,
            prompt_time: first - start,
            decode_time: first.elapsed(),
            cache_bytes: cache.bytes(),
            prefill_calls,
            stop,
        })
    }
}

fn empty() -> Value {
    Value::Bool(ArrayD::from_elem(IxDyn(&[0]), false))
}

/// One call of `exec` (layout `l`) on `tokens` at positions `cache.len()..`:
/// past slots below `cache.len()` and the new tokens are unmasked, the
/// rest masked. A module of more new positions than `tokens` (a prefill
/// bucket) gets them right-padded and masked: with causal attention the
/// real positions never see the padding. The real tokens' keys and values
/// enter the cache. Returns the last real position's logits.
fn call(
    exec: &dyn ModuleExecutor,
    l: &KvLayout,
    cache: &mut KvCache,
    tokens: &[i64],
) -> Result<Vec<f32>, GenError> {
    let (t, n, s) = (cache.len, tokens.len(), l.seq);
    debug_assert!(n <= s);
    // A [1, len] row (its length is the vector's: no shape can mismatch).
    let row = |v: Vec<i64>| Value::I64(Array1::from(v).insert_axis(Axis(0)).into_dyn());
    let mut inputs: Vec<Value> = (0..exec.signature().inputs.len())
        .map(|_| empty())
        .collect();
    let mut ids = tokens.to_vec();
    ids.resize(s, 0);
    inputs[l.input_ids] = row(ids);
    if let Some(m) = l.attention_mask {
        let mask: Vec<i64> = (0..l.past + s)
            .map(|j| i64::from(j < t || (l.past..l.past + n).contains(&j)))
            .collect();
        inputs[m] = row(mask);
    }
    if let Some(p) = l.position_ids {
        inputs[p] = row((t..t + s).map(|p| p as i64).collect());
    }
    // The cache's own buffers are lent when they are the past input as is
    // (masked decoding); an exact-past decoder gets a copy of the filled part.
    let lend = l.past == cache.slots() && l.past > 0;
    for (k, &(i, _)) in l.pairs.iter().enumerate() {
        inputs[i] = Value::F32(if lend {
            std::mem::replace(&mut cache.buffers[k], ArrayD::zeros(IxDyn(&[0])))
        } else {
            cache.prefix(k, l.past)
        });
    }
    let result = exec.run(&inputs);
    if lend {
        for (k, &(i, _)) in l.pairs.iter().enumerate() {
            if let Value::F32(a) = std::mem::replace(&mut inputs[i], empty()) {
                cache.buffers[k] = a;
            }
        }
    }
    let outputs = result?;
    for (k, &(_, o)) in l.pairs.iter().enumerate() {
        let Value::F32(present) = &outputs[o] else {
            unreachable!("present outputs are f32 (checked by the layout and the run)")
        };
        cache.store(k, present, l.past, n);
    }
    cache.len += n;
    let Value::F32(logits) = &outputs[l.logits] else {
        unreachable!("logits are f32 (checked by the run)")
    };
    // Logits of every position ([1, S, V]) or of the last only ([1, 1, V]).
    let row = if logits.len() == s * l.vocab {
        n - 1
    } else {
        0
    };
    Ok(logits
        .iter()
        .skip(row * l.vocab)
        .take(l.vocab)
        .copied()
        .collect())
}
