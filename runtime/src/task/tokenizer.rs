//! A deterministic word tokenizer for text encoders without a vocabulary
//! file (the tiny fixtures are random-weight models with no trained
//! tokenizer): each lowercase word maps to a fixed id by BLAKE3, between
//! the special tokens. It makes prompts reproducible, not meaningful.

use serde::Deserialize;

/// Word ids are `first_word + blake3(word) mod (end_word − first_word)`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WordTokenizer {
    pub bos: i64,
    pub eos: i64,
    pub pad: i64,
    pub first_word: i64,
    /// Exclusive.
    pub end_word: i64,
}

impl WordTokenizer {
    /// `bos`, the words' ids, `eos`, padded with `pad` to `len`; the mask is
    /// 1 on real tokens. Errors when the prompt does not fit.
    pub fn encode(&self, text: &str, len: usize) -> Result<(Vec<i64>, Vec<i64>), String> {
        if self.end_word <= self.first_word {
            return Err("tokenizer: end_word must exceed first_word".into());
        }
        let span = (self.end_word - self.first_word) as u64;
        let mut ids = vec![self.bos];
        for word in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            let h = blake3::hash(word.to_lowercase().as_bytes());
            let mut le = [0u8; 8];
            le.copy_from_slice(&h.as_bytes()[..8]); // a BLAKE3 hash has 32 bytes
            let n = u64::from_le_bytes(le);
            ids.push(self.first_word + (n % span) as i64);
        }
        ids.push(self.eos);
        pad(ids, len, self.pad)
    }
}

/// Pads token ids to `len` with `pad`; returns ids and attention mask.
pub fn pad(mut ids: Vec<i64>, len: usize, pad: i64) -> Result<(Vec<i64>, Vec<i64>), String> {
    if ids.len() > len {
        return Err(format!(
            "{} tokens do not fit the text encoder's {len}",
            ids.len()
        ));
    }
    let mut mask = vec![1; ids.len()];
    mask.resize(len, 0);
    ids.resize(len, pad);
    Ok((ids, mask))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_map_to_fixed_ids_between_the_specials() {
        let t = WordTokenizer {
            bos: 98,
            eos: 99,
            pad: 99,
            first_word: 3,
            end_word: 98,
        };
        let (ids, mask) = t.encode("A photo of a Cat.", 8).unwrap();
        assert_eq!(ids[0], 98);
        assert_eq!(ids[1], ids[4], "`A` and `a` are one word");
        assert_eq!(&ids[6..], &[99, 99]);
        assert!(ids[1..6].iter().all(|&i| (3..98).contains(&i)));
        assert_eq!(mask, [1, 1, 1, 1, 1, 1, 1, 0]);
        assert_eq!(t.encode("a photo of a cat", 8).unwrap().0, ids);
        assert!(t.encode("one two three four five six seven", 8).is_err());
    }
}
