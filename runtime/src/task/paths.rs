//! The glue of each execution path: which modules run, in what order, and
//! what passes between them.

use std::path::Path;
use std::sync::Arc;

use m4c_ops::Value;
use ndarray::{ArrayD, IxDyn};

use super::manifest::{Generation, Label, Output, TaskPath};
use super::tokenizer::pad;
use super::{Clock, NamedTensor, TaskError, TaskInput, TaskOutput, TaskRunner, Timed};
use crate::adapter::AdapterBundle;
use crate::exec::ModuleExecutor;
use crate::generate::{Decoder, Sampler, Sampling};
use crate::sanitized_key;

/// One task run's context.
pub(super) struct Context<'a> {
    pub task: &'a str,
    pub runner: &'a TaskRunner,
    pub adapter: Option<&'a AdapterBundle>,
    pub clock: &'a Arc<Clock>,
}

fn as_f32(v: &Value) -> Vec<f32> {
    match v {
        Value::F32(a) => a.iter().copied().collect(),
        Value::F16(a) => a.iter().map(|x| x.to_f32()).collect(),
        Value::BF16(a) => a.iter().map(|x| x.to_f32()).collect(),
        Value::I8(a) => a.iter().map(|&x| f32::from(x)).collect(),
        Value::U8(a) => a.iter().map(|&x| f32::from(x)).collect(),
        Value::I32(a) => a.iter().map(|&x| x as f32).collect(),
        Value::I64(a) => a.iter().map(|&x| x as f32).collect(),
        Value::Bool(a) => a.iter().map(|&x| f32::from(u8::from(x))).collect(),
    }
}

impl Context<'_> {
    fn err(&self, msg: impl Into<String>) -> TaskError {
        TaskError::Input {
            task: self.task.to_string(),
            msg: msg.into(),
        }
    }

    pub fn run(&self, path: &TaskPath, input: &TaskInput) -> Result<TaskOutput, TaskError> {
        match path {
            TaskPath::Single { module } => {
                let exec = self.executor(module)?;
                let outs = self.call(&*exec, &self.inputs_for(&*exec, input)?)?;
                let sig = exec.signature();
                Ok(TaskOutput::Tensors {
                    outputs: sig
                        .outputs
                        .iter()
                        .zip(&outs)
                        .map(|((name, _), v)| NamedTensor {
                            name: name.clone(),
                            shape: v.shape().to_vec(),
                            values: as_f32(v),
                        })
                        .collect(),
                })
            }
            TaskPath::ZeroShot {
                encoder,
                text_encoder,
                labels,
            } => self.zero_shot(encoder, text_encoder, labels, input),
            TaskPath::Text {
                decoder,
                generation,
            } => self.generate(decoder, generation, vec![], input.tokens.clone()),
            TaskPath::EncoderBackbone {
                encoder,
                projection,
                decoder,
                prompt_tokens,
                generation,
            } => {
                let e = self.embedding(encoder, input)?;
                let prefix = self.project(projection, &e)?;
                let mut prompt = prompt_tokens.clone();
                prompt.extend(&input.tokens);
                self.generate(decoder, generation, prefix, prompt)
            }
        }
    }

    /// The module's executor, timed into the task's clock.
    fn executor(&self, module: &str) -> Result<Arc<dyn ModuleExecutor>, TaskError> {
        let inner = self.runner.executor(self.task, module, self.adapter)?;
        Ok(Arc::new(Timed {
            inner,
            clock: Arc::clone(self.clock),
        }))
    }

    fn call(&self, exec: &dyn ModuleExecutor, inputs: &[Value]) -> Result<Vec<Value>, TaskError> {
        exec.run(inputs).map_err(|source| TaskError::Exec {
            task: self.task.to_string(),
            source,
        })
    }

    /// The module's inputs from the task input's arrays, by name.
    fn inputs_for(
        &self,
        exec: &dyn ModuleExecutor,
        input: &TaskInput,
    ) -> Result<Vec<Value>, TaskError> {
        exec.signature()
            .inputs
            .iter()
            .map(|(name, _)| {
                input
                    .arrays
                    .get(name)
                    .or_else(|| input.arrays.get(&sanitized_key(name)))
                    .cloned()
                    .ok_or_else(|| {
                        let keys: Vec<&str> = input.arrays.keys().map(String::as_str).collect();
                        self.err(format!(
                            "module `{}` needs input '{name}'; the inputs have [{}]",
                            exec.name(),
                            keys.join(", ")
                        ))
                    })
            })
            .collect()
    }

    /// One output of a module run on the task input, flattened.
    fn embedding(&self, out: &Output, input: &TaskInput) -> Result<Vec<f32>, TaskError> {
        let exec = self.executor(&out.module)?;
        let values = self.call(&*exec, &self.inputs_for(&*exec, input)?)?;
        self.pick(&*exec, &values, &out.output)
    }

    fn pick(
        &self,
        exec: &dyn ModuleExecutor,
        values: &[Value],
        output: &str,
    ) -> Result<Vec<f32>, TaskError> {
        let sig = exec.signature();
        let i = sig.output(output).ok_or_else(|| {
            let names: Vec<&str> = sig.outputs.iter().map(|o| o.0.as_str()).collect();
            self.err(format!(
                "module `{}` has no output `{output}` (outputs: {})",
                exec.name(),
                names.join(", ")
            ))
        })?;
        Ok(as_f32(&values[i]))
    }

    fn zero_shot(
        &self,
        encoder: &Output,
        text: &Output,
        labels: &[Label],
        input: &TaskInput,
    ) -> Result<TaskOutput, TaskError> {
        let embedding = self.embedding(encoder, input)?;
        let exec = self.executor(&text.module)?;
        let sig = exec.signature();
        // input_ids, and attention_mask when the encoder takes one (an
        // encoder without it, like CLIP's as many export it, sees the
        // padding; its pooled token comes before it).
        let ids_at = sig.input("input_ids");
        let mask_at = sig.input("attention_mask");
        let (Some(ids_at), true) = (
            ids_at,
            sig.inputs.len() == 1 + usize::from(mask_at.is_some()),
        ) else {
            return Err(self.err(format!(
                "text encoder `{}` must take input_ids and optionally attention_mask, nothing else",
                text.module
            )));
        };
        let len = match sig.inputs[ids_at].1.static_shape().as_deref() {
            Some(&[1, n]) => n,
            _ => {
                return Err(self.err(format!(
                    "text encoder `{}`: input_ids must be [1, n]",
                    text.module
                )))
            }
        };
        let tokenizer = self.runner.manifest.tokenizer.as_ref();
        let mut scores = vec![];
        for label in labels {
            let (ids, mask) = match (&label.tokens, tokenizer) {
                (Some(t), tok) => pad(t.clone(), len, tok.map_or(0, |t| t.pad)),
                (None, Some(tok)) => tok.encode(&label.prompt, len),
                (None, None) => unreachable!("checked when the manifest was parsed"),
            }
            .map_err(|e| self.err(format!("label `{}`: {e}", label.name)))?;
            let arr = |v: Vec<i64>| {
                ArrayD::from_shape_vec(IxDyn(&[1, len]), v)
                    .map(Value::I64)
                    .map_err(|e| self.err(format!("label `{}`: {e}", label.name)))
            };
            let mut inputs = vec![arr(ids)?];
            match mask_at {
                Some(m) if m < ids_at => inputs.insert(0, arr(mask)?),
                Some(_) => inputs.push(arr(mask)?),
                None => {}
            }
            let out = self.call(&*exec, &inputs)?;
            let t = self.pick(&*exec, &out, &text.output)?;
            if t.len() != embedding.len() {
                return Err(self.err(format!(
                    "`{}` has {} values but `{}` has {}",
                    text.output,
                    t.len(),
                    encoder.output,
                    embedding.len()
                )));
            }
            scores.push((label.name.clone(), cosine(&embedding, &t)));
        }
        scores.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(TaskOutput::Classification {
            label: scores[0].0.clone(),
            scores,
            embedding,
        })
    }

    /// Prefix tokens: `argmax_v (P[k]·e)_v` for each row block k of the
    /// projection `P [K, vocab, dim]`.
    fn project(&self, projection: &Path, e: &[f32]) -> Result<Vec<i64>, TaskError> {
        let file = self
            .runner
            .manifest
            .resolve(projection)
            .map_err(|e| self.err(format!("projection {e}")))?;
        let p = match crate::read_npy(&file).map_err(|e| self.err(format!("projection {e}")))? {
            Value::F32(p) => p,
            other => {
                return Err(self.err(format!(
                    "projection {}: {} values, expected f32",
                    projection.display(),
                    other.dtype()
                )))
            }
        };
        let [k, vocab, dim] = p.shape()[..] else {
            return Err(self.err(format!(
                "projection {}: shape {:?}, expected [prefix_tokens, vocab, dim]",
                projection.display(),
                p.shape()
            )));
        };
        if dim != e.len() {
            return Err(self.err(format!(
                "projection {}: dim {dim} but the embedding has {} values",
                projection.display(),
                e.len()
            )));
        }
        let flat: Vec<f32> = p.iter().copied().collect();
        Ok((0..k)
            .map(|r| {
                let score = |v: usize| -> f32 {
                    let row = &flat[(r * vocab + v) * dim..][..dim];
                    row.iter().zip(e).map(|(a, b)| a * b).sum()
                };
                (0..vocab)
                    .max_by(|&a, &b| score(a).total_cmp(&score(b)).then(b.cmp(&a)))
                    .unwrap_or(0) as i64
            })
            .collect())
    }

    fn generate(
        &self,
        decoder: &str,
        g: &Generation,
        prefix: Vec<i64>,
        prompt: Vec<i64>,
    ) -> Result<TaskOutput, TaskError> {
        let gen_err = |source| TaskError::Generate {
            task: self.task.to_string(),
            source,
        };
        let roles = self.runner.manifest.signature.clone();
        let dec = Decoder::with_roles(self.executor(decoder)?, roles).map_err(gen_err)?;
        let sampling = match g.top_k {
            0 => Sampling::Greedy,
            k => Sampling::TopK {
                k,
                top_p: 1.0,
                temperature: g.temperature,
                seed: g.seed,
            },
        };
        let mut sampler = Sampler::new(sampling).map_err(|e| self.err(e))?;
        let mut all = prefix.clone();
        all.extend(&prompt);
        let out = dec
            .generate(&all, g.max_new_tokens, &mut sampler)
            .map_err(gen_err)?;
        Ok(TaskOutput::Generation {
            prefix_tokens: prefix,
            prompt_tokens: prompt,
            prompt_ms: out.prompt_time.as_secs_f64() * 1e3,
            decode_tokens_per_s: out.decode_tokens_per_s(),
            cache_bytes: out.cache_bytes,
            stopped: out.stop,
            tokens: out.tokens,
        })
    }
}

/// Cosine similarity (0 when either vector is zero).
fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let d = norm(a) * norm(b);
    if d == 0.0 {
        0.0
    } else {
        (dot / d) as f32
    }
}
