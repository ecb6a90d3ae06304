//! The decode module's KV-cache interface and the preallocated cache.
//!
//! A LLaMA-style decode step (as transformers exports it) takes
//! `input_ids [1, 1]`, `attention_mask [1, P+1]`, `position_ids [1, 1]` and
//! `past_key_values.{i}.key|value [1, heads, P, head_dim]`, and returns
//! `logits [1, 1, vocab]` and `present.{i}.key|value [1, heads, P+1,
//! head_dim]` (the past followed by the new token). The module is compiled
//! once for `P` past slots; a step at position `t` sees slots `0..t` through
//! the attention mask (the rest are masked out), and the new token's key and
//! value are copied from `present[.., P, ..]` into slot `t`.

use m4c_ir::{DType, TensorType};
use ndarray::{ArrayD, Axis, IxDyn};

use crate::exec::Signature;

/// Where the decode module's inputs and outputs are, and the cache shape.
#[derive(Clone, Debug)]
pub struct KvLayout {
    pub input_ids: usize,
    pub attention_mask: usize,
    pub position_ids: Option<usize>,
    /// (input index of past, output index of present), per key/value.
    pub pairs: Vec<(usize, usize)>,
    pub logits: usize,
    /// Past slots `P` the module was compiled for.
    pub past: usize,
    /// `[1, heads, P, head_dim]`.
    pub past_shape: Vec<usize>,
    pub vocab: usize,
}

fn fixed(ty: &TensorType, what: &str) -> Result<Vec<usize>, String> {
    ty.static_shape()
        .ok_or_else(|| format!("{what} has symbolic shape {ty}; build the firmware with --dim"))
}

impl KvLayout {
    /// Reads the layout off a decode module's signature.
    pub fn of(sig: &Signature) -> Result<KvLayout, String> {
        let input = |n: &str| sig.input(n).ok_or(format!("no input `{n}`"));
        let (input_ids, attention_mask) = (input("input_ids")?, input("attention_mask")?);
        let logits = sig.output("logits").ok_or("no output `logits`")?;
        let mut pairs = vec![];
        let mut past_shape: Option<Vec<usize>> = None;
        for (i, (name, ty)) in sig.inputs.iter().enumerate() {
            let Some(rest) = name.strip_prefix("past_key_values.") else {
                continue;
            };
            let present = format!("present.{rest}");
            let o = sig
                .output(&present)
                .ok_or(format!("input `{name}` has no output `{present}`"))?;
            let shape = fixed(ty, name)?;
            if ty.dtype != DType::F32 || shape.len() != 4 || shape[0] != 1 {
                return Err(format!(
                    "`{name}` is {ty}, expected f32[1, heads, past, head_dim]"
                ));
            }
            let mut want = shape.clone();
            want[2] += 1;
            if fixed(&sig.outputs[o].1, &present)? != want {
                return Err(format!(
                    "`{present}` is {}, expected {want:?}",
                    sig.outputs[o].1
                ));
            }
            if past_shape.as_ref().is_some_and(|p| *p != shape) {
                return Err(format!("`{name}` is {ty}, unlike the other past inputs"));
            }
            past_shape = Some(shape);
            pairs.push((i, o));
        }
        let past_shape = past_shape.ok_or("no `past_key_values.*` inputs")?;
        let past = past_shape[2];
        if fixed(&sig.inputs[attention_mask].1, "attention_mask")? != [1, past + 1] {
            return Err(format!(
                "attention_mask is {}, expected [1, {}]",
                sig.inputs[attention_mask].1,
                past + 1
            ));
        }
        let ls = fixed(&sig.outputs[logits].1, "logits")?;
        let [1, 1, vocab] = ls[..] else {
            return Err(format!("logits is {:?}, expected [1, 1, vocab]", ls));
        };
        let position_ids = sig.input("position_ids");
        let known = 2 + usize::from(position_ids.is_some()) + pairs.len();
        if known != sig.inputs.len() {
            return Err(
                "inputs other than input_ids, attention_mask, position_ids and past_key_values.*"
                    .into(),
            );
        }
        Ok(KvLayout {
            input_ids,
            attention_mask,
            position_ids,
            pairs,
            logits,
            past,
            past_shape,
            vocab,
        })
    }

    /// Tokens a cache of this layout holds: `P` past slots plus the one a
    /// step adds.
    pub fn max_context(&self) -> usize {
        self.past + 1
    }
}

/// Key/value buffers for one sequence, allocated once at the module's
/// maximum context.
pub struct KvCache {
    pub(crate) buffers: Vec<ArrayD<f32>>,
    /// Tokens cached so far (the next step's position).
    pub(crate) len: usize,
}

impl KvCache {
    /// Zeroed buffers for `layout`.
    pub fn new(layout: &KvLayout) -> KvCache {
        KvCache {
            buffers: layout
                .pairs
                .iter()
                .map(|_| ArrayD::zeros(IxDyn(&layout.past_shape)))
                .collect(),
            len: 0,
        }
    }

    /// Tokens cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first step.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held by the buffers.
    pub fn bytes(&self) -> usize {
        self.buffers.iter().map(|b| b.len() * 4).sum()
    }

    /// Stores the new token's key/value (`present[.., P, ..]`) in slot `len`.
    pub(crate) fn store(&mut self, i: usize, present: &ArrayD<f32>, past: usize) {
        let new = present.index_axis(Axis(2), past);
        self.buffers[i]
            .index_axis_mut(Axis(2), self.len)
            .assign(&new);
    }
}
