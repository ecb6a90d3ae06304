//! Which of a decoder's inputs and outputs play which role, read off its
//! signature (names and shapes) or declared by the caller (a task
//! manifest's `[signature]` table).
//!
//! The conventions recognised without a declaration are those of Hugging
//! Face optimum, onnxruntime-genai and transformers.js exports and of
//! hand-written exports: `input_ids [1,S]`, optional `attention_mask
//! [1,P+S]` and `position_ids [1,S]`, per layer a past key and value
//! `[1,kv_heads,P,head_dim]` named `past_key_values.{i}.key|value` or
//! `past_key_{i}`/`past_value_{i}`, whose present output has the same name
//! with the `past_key_values`/`past` prefix replaced by `present`
//! (`present.{i}.key`, `present_key_{i}`), `[1,kv_heads,P+S,head_dim]`;
//! and `logits [1,S,V]` (or `[1,1,V]`).

use m4c_ir::{DType, Dim, TensorType};
use serde::Deserialize;

use crate::exec::Signature;

/// Names of a decoder's roles; `None` fields are detected.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Roles {
    /// The token ids input (default `input_ids`).
    pub input_ids: Option<String>,
    /// The attention mask input (default `attention_mask` if present; `""`
    /// declares that there is none).
    pub attention_mask: Option<String>,
    /// The positions input (default `position_ids` if present; `""`: none).
    pub position_ids: Option<String>,
    /// The logits output (default `logits`).
    pub logits: Option<String>,
    /// Prefix of the past inputs (default: `past_key_values`, then `past`).
    pub past_prefix: Option<String>,
    /// What replaces the past prefix in the present outputs' names
    /// (default `present`).
    pub present_prefix: Option<String>,
}

/// Where a decoder's roles are in its signature, and the shapes it is
/// specialised for: `S` new tokens after `P` cached ones.
#[derive(Clone, Debug, PartialEq)]
pub struct KvLayout {
    /// Input index of the token ids.
    pub input_ids: usize,
    /// Input index of the attention mask, if the decoder takes one.
    pub attention_mask: Option<usize>,
    /// Input index of the positions, if the decoder takes them.
    pub position_ids: Option<usize>,
    /// (input index of past, output index of present), per key/value.
    pub pairs: Vec<(usize, usize)>,
    /// Output index of the logits.
    pub logits: usize,
    /// New tokens per call (`S`).
    pub seq: usize,
    /// Cached tokens the past inputs hold (`P`).
    pub past: usize,
    /// `[1, kv_heads, P, head_dim]`.
    pub past_shape: Vec<usize>,
    /// The logits' last dimension: token ids are `0..vocab`.
    pub vocab: usize,
}

fn fixed(ty: &TensorType, what: &str) -> Result<Vec<usize>, String> {
    ty.static_shape().ok_or_else(|| {
        format!("{what} has symbolic shape {ty}; specialise it (generate does, or --dim)")
    })
}

/// The present output paired with past input `name`, by `roles` or the
/// conventions.
fn present_of(sig: &Signature, name: &str, roles: &Roles) -> Option<(String, usize)> {
    let present = roles.present_prefix.as_deref().unwrap_or("present");
    let prefixes: Vec<&str> = match &roles.past_prefix {
        Some(p) => vec![p.as_str()],
        None => vec!["past_key_values", "past"],
    };
    prefixes.iter().find_map(|p| {
        let rest = name.strip_prefix(p)?;
        let out = format!("{present}{rest}");
        sig.output(&out).map(|o| (out, o))
    })
}

/// The input declared or conventionally named `default`; `Ok(None)` when
/// optional and absent (or declared `""`).
fn role_input(
    sig: &Signature,
    declared: &Option<String>,
    default: &str,
    required: bool,
) -> Result<Option<usize>, String> {
    match declared.as_deref() {
        Some("") if !required => Ok(None),
        Some(name) => sig
            .input(name)
            .map(Some)
            .ok_or(format!("no input `{name}` (declared in [signature])")),
        None => match sig.input(default) {
            Some(i) => Ok(Some(i)),
            None if required => Err(format!("no input `{default}`")),
            None => Ok(None),
        },
    }
}

impl Roles {
    /// The roles' positions in `sig`, without requiring static shapes: the
    /// pairs of past inputs and present outputs in input order.
    pub fn resolve(&self, sig: &Signature) -> Result<KvLayout, String> {
        let input_ids = role_input(sig, &self.input_ids, "input_ids", true)?
            .ok_or_else(|| "the decoder has no `input_ids` input".to_string())?;
        let attention_mask = role_input(sig, &self.attention_mask, "attention_mask", false)?;
        let position_ids = role_input(sig, &self.position_ids, "position_ids", false)?;
        let logits_name = self.logits.as_deref().unwrap_or("logits");
        let logits = sig
            .output(logits_name)
            .ok_or(format!("no output `{logits_name}`"))?;
        let mut pairs = vec![];
        for (i, (name, _)) in sig.inputs.iter().enumerate() {
            if [Some(input_ids), attention_mask, position_ids].contains(&Some(i)) {
                continue;
            }
            match present_of(sig, name, self) {
                Some((_, o)) => pairs.push((i, o)),
                None => {
                    return Err(format!(
                        "input `{name}` is neither input_ids, attention_mask, position_ids nor a \
                         past key/value with a present output (declare the roles in a [signature] table)"
                    ))
                }
            }
        }
        if pairs.is_empty() {
            return Err(
                "no past key/value inputs (`past_key_values.{i}.key|value` or \
                 `past_key_{i}`/`past_value_{i}` with `present...` outputs)"
                    .into(),
            );
        }
        Ok(KvLayout {
            input_ids,
            attention_mask,
            position_ids,
            pairs,
            logits,
            seq: 0,
            past: 0,
            past_shape: vec![],
            vocab: 0,
        })
    }

    /// The names of the symbolic dims `S` (new tokens) and `P` (past) in
    /// `sig`'s inputs, and of `P+S` where the mask names it, so a
    /// specialiser can bind them consistently. `None` for a dim that is
    /// not symbolic.
    pub fn symbolic_dims(&self, sig: &Signature) -> Result<SymbolicDims, String> {
        let l = self.resolve(sig)?;
        let sym = |ty: &TensorType, axis: usize| match ty.dims.get(axis) {
            Some(Dim::Sym(s)) => Some(s.clone()),
            _ => None,
        };
        Ok(SymbolicDims {
            seq: sym(&sig.inputs[l.input_ids].1, 1),
            past: sym(&sig.inputs[l.pairs[0].0].1, 2),
            total: l.attention_mask.and_then(|m| sym(&sig.inputs[m].1, 1)),
        })
    }
}

/// The symbolic dim names of a decoder's sequence, past and total lengths.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SymbolicDims {
    /// New tokens `S` (`input_ids`' second dim).
    pub seq: Option<String>,
    /// Cached tokens `P` (the past inputs' third dim).
    pub past: Option<String>,
    /// `P + S` (the attention mask's second dim).
    pub total: Option<String>,
}

impl KvLayout {
    /// The layout of a decoder specialised to static shapes, with roles
    /// detected from names.
    pub fn of(sig: &Signature) -> Result<KvLayout, String> {
        KvLayout::with_roles(sig, &Roles::default())
    }

    /// The layout of a decoder specialised to static shapes, with `roles`.
    pub fn with_roles(sig: &Signature, roles: &Roles) -> Result<KvLayout, String> {
        let mut l = roles.resolve(sig)?;
        let ids = fixed(&sig.inputs[l.input_ids].1, &sig.inputs[l.input_ids].0)?;
        let [1, seq] = ids[..] else {
            return Err(format!(
                "`{}` is {ids:?}, expected [1, sequence]",
                sig.inputs[l.input_ids].0
            ));
        };
        if sig.inputs[l.input_ids].1.dtype != DType::I64 {
            return Err(format!("`{}` is not int64", sig.inputs[l.input_ids].0));
        }
        let mut past_shape: Option<Vec<usize>> = None;
        for &(i, o) in &l.pairs {
            let (name, ty) = &sig.inputs[i];
            let shape = fixed(ty, name)?;
            if ty.dtype != DType::F32 || shape.len() != 4 || shape[0] != 1 {
                return Err(format!(
                    "`{name}` is {ty}, expected f32[1, kv_heads, past, head_dim]"
                ));
            }
            let mut want = shape.clone();
            want[2] += seq;
            let (pname, pty) = &sig.outputs[o];
            if fixed(pty, pname)? != want || pty.dtype != DType::F32 {
                return Err(format!("`{pname}` is {pty}, expected f32{want:?}"));
            }
            if past_shape.as_ref().is_some_and(|p| *p != shape) {
                return Err(format!("`{name}` is {ty}, unlike the other past inputs"));
            }
            past_shape = Some(shape);
        }
        let past_shape = past_shape.ok_or_else(|| "the decoder has no past inputs".to_string())?;
        let past = past_shape[2];
        for (role, at, want) in [
            ("attention_mask", l.attention_mask, past + seq),
            ("position_ids", l.position_ids, seq),
        ] {
            let Some(at) = at else { continue };
            let (name, ty) = &sig.inputs[at];
            if fixed(ty, name)? != [1, want] || ty.dtype != DType::I64 {
                return Err(format!("{role} `{name}` is {ty}, expected i64[1, {want}]"));
            }
        }
        let (lname, lty) = &sig.outputs[l.logits];
        let ls = fixed(lty, lname)?;
        let (3, Some(&vocab)) = (ls.len(), ls.last()) else {
            return Err(format!("`{lname}` is {lty}, expected [1, sequence, vocab]"));
        };
        if lty.dtype != DType::F32 || ls[0] != 1 || !(ls[1] == seq || ls[1] == 1) || vocab == 0 {
            return Err(format!("`{lname}` is {lty}, expected f32[1, {seq}, vocab]"));
        }
        (l.seq, l.past, l.past_shape, l.vocab) = (seq, past, past_shape, vocab);
        Ok(l)
    }

    /// Tokens a call sees at most: the past and the new ones.
    pub fn max_context(&self) -> usize {
        self.past + self.seq
    }

    /// True when a fixed-size cache can be fed with its unused slots
    /// masked: the decoder takes an attention mask and explicit positions.
    pub fn maskable(&self) -> bool {
        self.attention_mask.is_some() && self.position_ids.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(inputs: &[(&str, &[usize])], outputs: &[(&str, &[usize])]) -> Signature {
        let side = |v: &[(&str, &[usize])], ids: bool| {
            v.iter()
                .map(|(n, s)| {
                    let dt = if ids && s.len() == 2 {
                        DType::I64
                    } else {
                        DType::F32
                    };
                    (n.to_string(), TensorType::fixed(dt, s))
                })
                .collect()
        };
        Signature {
            inputs: side(inputs, true),
            outputs: side(outputs, false),
        }
    }

    #[test]
    fn optimum_and_genai_names_are_detected() {
        let s = sig(
            &[
                ("input_ids", &[1, 3]),
                ("attention_mask", &[1, 7]),
                ("position_ids", &[1, 3]),
                ("past_key_values.0.key", &[1, 2, 4, 8]),
                ("past_key_values.0.value", &[1, 2, 4, 8]),
            ],
            &[
                ("logits", &[1, 3, 50]),
                ("present.0.key", &[1, 2, 7, 8]),
                ("present.0.value", &[1, 2, 7, 8]),
            ],
        );
        let l = KvLayout::of(&s).unwrap();
        assert_eq!((l.seq, l.past, l.vocab, l.pairs.len()), (3, 4, 50, 2));
        assert!(l.maskable());
        let s = sig(
            &[
                ("input_ids", &[1, 1]),
                ("past_key_0", &[1, 2, 4, 8]),
                ("past_value_0", &[1, 2, 4, 8]),
            ],
            &[
                ("logits", &[1, 1, 50]),
                ("present_key_0", &[1, 2, 5, 8]),
                ("present_value_0", &[1, 2, 5, 8]),
            ],
        );
        let l = KvLayout::of(&s).unwrap();
        assert_eq!((l.seq, l.past, l.attention_mask), (1, 4, None));
        assert!(!l.maskable());
    }

    #[test]
    fn what_is_missing_is_named() {
        let s = sig(
            &[("input_ids", &[1, 1]), ("cache_in", &[1, 2, 4, 8])],
            &[("logits", &[1, 1, 50]), ("cache_out", &[1, 2, 5, 8])],
        );
        let e = KvLayout::of(&s).unwrap_err();
        assert!(
            e.contains("input `cache_in`") && e.contains("[signature]"),
            "{e}"
        );
        let roles = Roles {
            past_prefix: Some("cache_in".into()),
            present_prefix: Some("cache_out".into()),
            ..Default::default()
        };
        assert_eq!(KvLayout::with_roles(&s, &roles).unwrap().past, 4);
        let s = sig(&[("ids", &[1, 1])], &[("logits", &[1, 1, 50])]);
        assert!(KvLayout::of(&s)
            .unwrap_err()
            .contains("no input `input_ids`"));
    }
}
