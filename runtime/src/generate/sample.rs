//! Choosing the next token from logits: greedy (argmax) or top-k sampling
//! with a seeded generator, so a run can be repeated exactly.

use rand::RngExt;
use rand::SeedableRng;
use rand_xorshift::XorShiftRng;

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum Sampling {
    /// The most likely token (the lowest id among ties).
    Greedy,
    /// One of the `k` most likely tokens, cut further to the fewest whose
    /// probabilities sum to at least `top_p` (nucleus; 1 keeps all k),
    /// drawn with probabilities `softmax(logits / temperature)`
    /// renormalised over them.
    TopK {
        k: usize,
        top_p: f32,
        temperature: f32,
        seed: u64,
    },
}

/// A [`Sampling`] with its generator state.
pub struct Sampler {
    sampling: Sampling,
    rng: XorShiftRng,
}

impl Sampler {
    /// A sampler; the generator (XorShift, value-stable across versions)
    /// is seeded from the top-k seed.
    pub fn new(sampling: Sampling) -> Result<Sampler, String> {
        let seed = match sampling {
            Sampling::Greedy => 0,
            Sampling::TopK {
                k,
                top_p,
                temperature,
                seed,
            } => {
                if k == 0 {
                    return Err("top-k needs k ≥ 1".into());
                }
                if !(top_p > 0.0 && top_p <= 1.0) {
                    return Err(format!("top-p {top_p} must be in (0, 1]"));
                }
                if !(temperature > 0.0 && temperature.is_finite()) {
                    return Err(format!("temperature {temperature} must be positive"));
                }
                seed
            }
        };
        Ok(Sampler {
            sampling,
            rng: XorShiftRng::seed_from_u64(seed),
        })
    }

    /// The next token for `logits`.
    pub fn pick(&mut self, logits: &[f32]) -> i64 {
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        match self.sampling {
            Sampling::Greedy => order[0] as i64,
            Sampling::TopK {
                k,
                top_p,
                temperature,
                ..
            } => {
                let top = &order[..k.min(order.len())];
                let max = logits[top[0]];
                let mut weights: Vec<f64> = top
                    .iter()
                    .map(|&i| (f64::from(logits[i] - max) / f64::from(temperature)).exp())
                    .collect();
                let total: f64 = weights.iter().sum();
                let mut kept = 0.0;
                let nucleus = weights
                    .iter()
                    .position(|w| {
                        kept += w;
                        kept >= f64::from(top_p) * total
                    })
                    .map_or(weights.len(), |i| i + 1);
                weights.truncate(nucleus);
                let top = &top[..nucleus];
                let mut u = self.rng.random::<f64>() * weights.iter().sum::<f64>();
                for (&i, w) in top.iter().zip(&weights) {
                    if u < *w {
                        return i as i64;
                    }
                    u -= w;
                }
                top[top.len() - 1] as i64
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax_and_top_k_stays_in_the_top_k() {
        let logits = [0.1, 3.0, -1.0, 2.9, 0.0];
        assert_eq!(Sampler::new(Sampling::Greedy).unwrap().pick(&logits), 1);
        let topk = Sampling::TopK {
            k: 2,
            top_p: 1.0,
            temperature: 1.0,
            seed: 7,
        };
        let mut s = Sampler::new(topk.clone()).unwrap();
        let picks: Vec<i64> = (0..200).map(|_| s.pick(&logits)).collect();
        assert!(picks.iter().all(|&p| p == 1 || p == 3));
        assert!(picks.contains(&1) && picks.contains(&3));
        let mut again = Sampler::new(topk).unwrap();
        assert_eq!(
            picks,
            (0..200).map(|_| again.pick(&logits)).collect::<Vec<_>>()
        );
        // p(1) ≈ 0.46 of all five: a nucleus of 0.4 is token 1 alone.
        let nucleus = Sampling::TopK {
            k: 5,
            top_p: 0.4,
            temperature: 1.0,
            seed: 3,
        };
        let mut s = Sampler::new(nucleus).unwrap();
        assert!((0..50).all(|_| s.pick(&logits) == 1));
    }

    #[test]
    fn bad_parameters_are_refused() {
        let bad = |k, temperature| {
            Sampler::new(Sampling::TopK {
                k,
                top_p: 1.0,
                temperature,
                seed: 0,
            })
            .is_err()
        };
        assert!(bad(0, 1.0));
        assert!(bad(3, 0.0));
        assert!(bad(3, f32::NAN));
    }
}
