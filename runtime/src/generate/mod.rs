//! Text generation with a KV cache on a LLaMA-style decode module: the
//! prompt is fed one token per step (the decode module is the only one
//! that returns keys and values), then each new token is chosen from the
//! last step's logits and fed back, until the requested count or the
//! module's maximum context.

mod cache;
mod sample;

use std::sync::Arc;
use std::time::{Duration, Instant};

use m4c_ops::Value;
use ndarray::{ArrayD, IxDyn};

pub use cache::{KvCache, KvLayout};
pub use sample::{Sampler, Sampling};

use crate::exec::{ExecError, ModuleExecutor};

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("module `{module}` is not a KV-cache decode module: {msg}")]
    Layout { module: String, msg: String },
    #[error("the context is full: module `{module}` holds {max} tokens")]
    ContextFull { module: String, max: usize },
    #[error("token {token} is outside the vocabulary (0..{vocab})")]
    Token { token: i64, vocab: usize },
    #[error("an empty prompt: generation needs at least one token")]
    EmptyPrompt,
    #[error(transparent)]
    Exec(#[from] ExecError),
}

/// A decode module ready for cached steps.
pub struct Decoder {
    exec: Arc<dyn ModuleExecutor>,
    layout: KvLayout,
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

impl Decoder {
    /// Checks that `exec` has the decode interface (see [`KvLayout`]).
    pub fn new(exec: Arc<dyn ModuleExecutor>) -> Result<Decoder, GenError> {
        let layout = KvLayout::of(exec.signature()).map_err(|msg| GenError::Layout {
            module: exec.name().to_string(),
            msg,
        })?;
        Ok(Decoder { exec, layout })
    }

    /// The cache layout.
    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }

    /// An empty cache for this module.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(&self.layout)
    }

    /// Feeds `token` at position `cache.len()` and returns its logits; the
    /// token's key and value enter the cache.
    pub fn step(&self, cache: &mut KvCache, token: i64) -> Result<Vec<f32>, GenError> {
        let l = &self.layout;
        let t = cache.len;
        if t >= l.max_context() {
            return Err(GenError::ContextFull {
                module: self.exec.name().into(),
                max: l.max_context(),
            });
        }
        if !(0..l.vocab as i64).contains(&token) {
            return Err(GenError::Token {
                token,
                vocab: l.vocab,
            });
        }
        let ids = |v: i64| Value::I64(ArrayD::from_elem(IxDyn(&[1, 1]), v));
        let mut mask = ArrayD::<i64>::zeros(IxDyn(&[1, l.past + 1]));
        for j in (0..t).chain([l.past]) {
            mask[[0, j]] = 1;
        }
        let mut inputs: Vec<Value> = (0..self.exec.signature().inputs.len())
            .map(|_| Value::Bool(ArrayD::from_elem(IxDyn(&[0]), false)))
            .collect();
        inputs[l.input_ids] = ids(token);
        inputs[l.attention_mask] = Value::I64(mask);
        if let Some(p) = l.position_ids {
            inputs[p] = ids(t as i64);
        }
        for (k, &(i, _)) in l.pairs.iter().enumerate() {
            let buf = std::mem::replace(&mut cache.buffers[k], ArrayD::zeros(IxDyn(&[0])));
            inputs[i] = Value::F32(buf);
        }
        let result = self.exec.run(&inputs);
        // Give the buffers back to the cache whatever happened.
        for (k, &(i, _)) in l.pairs.iter().enumerate() {
            let v = std::mem::replace(
                &mut inputs[i],
                Value::Bool(ArrayD::from_elem(IxDyn(&[0]), false)),
            );
            if let Value::F32(a) = v {
                cache.buffers[k] = a;
            }
        }
        let outputs = result?;
        if t < l.past {
            for (k, &(_, o)) in l.pairs.iter().enumerate() {
                let Value::F32(present) = &outputs[o] else {
                    unreachable!("present outputs are f32 (checked by the layout and the run)")
                };
                cache.store(k, present, l.past);
            }
        }
        cache.len += 1;
        let Value::F32(logits) = &outputs[l.logits] else {
            unreachable!("logits are f32 (checked by the run)")
        };
        Ok(logits.iter().copied().collect())
    }

    /// Feeds `prompt`, then generates up to `max_new` tokens (fewer when the
    /// context fills).
    pub fn generate(
        &self,
        prompt: &[i64],
        max_new: usize,
        sampler: &mut Sampler,
    ) -> Result<Generation, GenError> {
        if prompt.is_empty() {
            return Err(GenError::EmptyPrompt);
        }
        let max = self.layout.max_context();
        if prompt.len() > max {
            return Err(GenError::ContextFull {
                module: self.exec.name().into(),
                max,
            });
        }
        let mut cache = self.new_cache();
        let start = Instant::now();
        let mut logits = vec![];
        for &tok in prompt {
            logits = self.step(&mut cache, tok)?;
        }
        let mut tokens = vec![];
        let mut first_token_at = None;
        while tokens.len() < max_new {
            tokens.push(sampler.pick(&logits));
            first_token_at.get_or_insert_with(Instant::now);
            if tokens.len() == max_new || cache.len() == max {
                break;
            }
            logits = self.step(&mut cache, tokens[tokens.len() - 1])?;
        }
        let first = first_token_at.unwrap_or_else(Instant::now);
        Ok(Generation {
            tokens,
            prompt_time: first - start,
            decode_time: first.elapsed(),
            cache_bytes: cache.bytes(),
        })
    }
}
