//! Calibration: the fp32 model runs over every sample in the reference
//! interpreter with the tensors to quantise observed by ONNX name; a
//! calibrator turns what was seen into a range per tensor.
//!
//! `minmax` keeps the extremes; `percentile:P` and `entropy` clip
//! outliers, from a histogram of |x| filled in a second pass:
//! `percentile:P` at the P-th percentile of |x|, `entropy` at the
//! threshold whose 128-level (256 for a non-negative tensor) quantised
//! histogram is closest (smallest KL divergence) to the clipped original.
//! Histograms have 2048 bins; for `entropy` at most one per 8 observed
//! elements: a sparse histogram would make the KL search clip on noise,
//! so a tensor seen too little to fill more bins than levels is not
//! clipped.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use m4c_ops::Value;
use serde::{Deserialize, Serialize};

use super::model::{FloatModel, Runner, Sample};
use super::{Observer, QuantizeError, Result};

/// How activation ranges are chosen (`--calibration`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Calibration {
    /// The smallest and largest value seen.
    MinMax,
    /// |x| clipped at this percentile (0 < P ≤ 100).
    Percentile(f32),
    /// |x| clipped where the KL divergence of the quantised histogram is
    /// least.
    Entropy,
}

/// Most bins of an |x| histogram.
const BINS: usize = 2048;
/// Observed elements per histogram bin, at least.
const PER_BIN: usize = 8;

/// Bins of the histogram of a tensor seen `count` times.
fn bins_for(count: usize) -> usize {
    (count / PER_BIN).clamp(1, BINS)
}
/// Levels the entropy calibrator quantises |x| into: int8's magnitudes
/// for a signed tensor, all 256 codes for a non-negative one.
const SIGNED_LEVELS: usize = 128;
const UNSIGNED_LEVELS: usize = 256;

impl FromStr for Calibration {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Calibration, String> {
        match s {
            "minmax" => Ok(Calibration::MinMax),
            "entropy" => Ok(Calibration::Entropy),
            _ => s
                .strip_prefix("percentile:")
                .and_then(|p| p.parse::<f32>().ok())
                .filter(|p| *p > 0.0 && *p <= 100.0)
                .map(Calibration::Percentile)
                .ok_or_else(|| {
                    format!("unknown calibration '{s}' (minmax, percentile:P with 0 < P ≤ 100, entropy)")
                }),
        }
    }
}

impl fmt::Display for Calibration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Calibration::MinMax => write!(f, "minmax"),
            Calibration::Percentile(p) => write!(f, "percentile:{p}"),
            Calibration::Entropy => write!(f, "entropy"),
        }
    }
}

impl From<Calibration> for String {
    fn from(c: Calibration) -> String {
        c.to_string()
    }
}

impl TryFrom<String> for Calibration {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Calibration, String> {
        s.parse()
    }
}

/// The f32 elements of an observed tensor; other element types are not
/// activations that can be quantised.
fn floats<'v>(name: &str, v: &'v Value) -> Result<&'v ndarray::ArrayD<f32>> {
    match v {
        Value::F32(a) => Ok(a),
        other => Err(QuantizeError::Tensor {
            tensor: name.to_string(),
            msg: format!(
                "is {}, not f32: only f32 activations are quantised",
                other.dtype()
            ),
        }),
    }
}

/// Runs `model` over `samples` observing `tensors` and calls `visit` with
/// each observed value (one pass, one progress step per sample).
pub fn observe(
    model: &FloatModel,
    samples: &[Sample],
    tensors: &[String],
    what: &str,
    observer: &dyn Observer,
    mut visit: impl FnMut(&str, &ndarray::ArrayD<f32>) -> Result<()>,
) -> Result<()> {
    let mut runner = Runner::new(&model.proto, tensors, &model.path.display().to_string())?;
    observer.begin(samples.len(), what);
    for s in samples {
        let out = runner.run(s)?;
        for name in tensors {
            visit(name, floats(name, &out[name])?)?;
        }
        observer.step();
    }
    Ok(())
}

/// The calibrated range of each of `tensors` over `samples`.
pub fn calibrate(
    model: &FloatModel,
    samples: &[Sample],
    tensors: &[String],
    method: Calibration,
    observer: &dyn Observer,
) -> Result<HashMap<String, (f32, f32)>> {
    let mut ranges: HashMap<String, (f32, f32)> = HashMap::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    if tensors.is_empty() {
        return Ok(ranges);
    }
    observe(
        model,
        samples,
        tensors,
        "calibration samples",
        observer,
        |name, a| {
            let r = ranges.entry(name.to_string()).or_insert((0.0, 0.0));
            for &x in a.iter().filter(|x| x.is_finite()) {
                *r = (r.0.min(x), r.1.max(x));
            }
            *counts.entry(name.to_string()).or_default() += a.len();
            Ok(())
        },
    )?;
    if method == Calibration::MinMax {
        return Ok(ranges);
    }
    let mut hists: HashMap<String, Vec<u64>> = HashMap::new();
    observe(
        model,
        samples,
        tensors,
        "histogram samples",
        observer,
        |name, a| {
            let (lo, hi) = ranges[name];
            let bins = match method {
                Calibration::Entropy => bins_for(counts[name]),
                _ => BINS,
            };
            let width = lo.abs().max(hi) / bins as f32;
            let h = hists
                .entry(name.to_string())
                .or_insert_with(|| vec![0; bins]);
            for &x in a.iter().filter(|x| x.is_finite()) {
                let bin = if width > 0.0 {
                    ((x.abs() / width) as usize).min(bins - 1)
                } else {
                    0
                };
                h[bin] += 1;
            }
            Ok(())
        },
    )?;
    for (name, r) in ranges.iter_mut() {
        let absmax = r.0.abs().max(r.1);
        let h = &hists[name];
        let t = match method {
            Calibration::Percentile(p) => percentile_threshold(h, absmax, p),
            _ if r.0 >= 0.0 => entropy_threshold(h, absmax, UNSIGNED_LEVELS),
            _ => entropy_threshold(h, absmax, SIGNED_LEVELS),
        };
        *r = (r.0.max(-t), r.1.min(t));
    }
    Ok(ranges)
}

/// The largest absolute value of every channel (last axis) of each of
/// `tensors` over `samples` (SmoothQuant's activation statistic).
pub fn channel_absmax(
    model: &FloatModel,
    samples: &[Sample],
    tensors: &[String],
    observer: &dyn Observer,
) -> Result<HashMap<String, Vec<f32>>> {
    let mut out: HashMap<String, Vec<f32>> = HashMap::new();
    observe(
        model,
        samples,
        tensors,
        "smoothing samples",
        observer,
        |name, a| {
            let c = a.shape().last().copied().unwrap_or(1);
            let m = out.entry(name.to_string()).or_insert_with(|| vec![0.0; c]);
            for (i, &x) in a.iter().enumerate() {
                if x.is_finite() {
                    m[i % c] = m[i % c].max(x.abs());
                }
            }
            Ok(())
        },
    )?;
    Ok(out)
}

/// The |x| below which `p` % of the histogram's mass lies.
pub fn percentile_threshold(hist: &[u64], absmax: f32, p: f32) -> f32 {
    let total: u64 = hist.iter().sum();
    let want = (total as f64 * f64::from(p) / 100.0).ceil() as u64;
    let width = absmax / hist.len() as f32;
    let mut seen = 0;
    for (i, &n) in hist.iter().enumerate() {
        seen += n;
        if seen >= want {
            return (i + 1) as f32 * width;
        }
    }
    absmax
}

/// The clipping threshold of |x| minimising KL(P‖Q), P the histogram
/// clipped at the threshold (outliers folded into the last bin), Q the
/// clipped histogram without them quantised to `levels` levels and
/// expanded back.
pub fn entropy_threshold(hist: &[u64], absmax: f32, levels: usize) -> f32 {
    if hist.len() <= levels {
        return absmax;
    }
    let width = absmax / hist.len() as f32;
    let mut best = (f64::INFINITY, hist.len());
    for i in levels..=hist.len() {
        let mut p: Vec<f64> = hist[..i].iter().map(|&n| n as f64).collect();
        p[i - 1] += hist[i..].iter().sum::<u64>() as f64;
        let mut q = vec![0f64; i];
        for level in 0..levels {
            let (a, b) = (level * i / levels, (level + 1) * i / levels);
            let mass: f64 = hist[a..b].iter().map(|&n| n as f64).sum();
            let nonzero = hist[a..b].iter().filter(|&&n| n > 0).count();
            for j in a..b {
                if hist[j] > 0 {
                    q[j] = mass / nonzero as f64;
                }
            }
        }
        let kl = kl_divergence(&p, &q);
        if kl < best.0 {
            best = (kl, i);
        }
    }
    best.1 as f32 * width
}

/// KL(P‖Q) of two unnormalised histograms; a bin P has and Q lacks costs
/// as if Q held a tiny mass there.
pub fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    let (sp, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
    if sp == 0.0 || sq == 0.0 {
        return 0.0;
    }
    p.iter()
        .zip(q)
        .filter(|(&a, _)| a > 0.0)
        .map(|(&a, &b)| {
            let (a, b) = (a / sp, (b / sq).max(1e-12));
            a * (a / b).ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse_and_print() {
        for s in ["minmax", "entropy", "percentile:99.9"] {
            assert_eq!(s.parse::<Calibration>().unwrap().to_string(), s);
        }
        for bad in ["percentile:0", "percentile:101", "percentile:x", "kl"] {
            assert!(bad.parse::<Calibration>().is_err(), "{bad}");
        }
    }

    #[test]
    fn percentile_clips_the_tail() {
        // 100 elements: 99 in bin 0, one outlier in the last bin.
        let mut h = vec![0u64; BINS];
        h[0] = 99;
        h[BINS - 1] = 1;
        let t = percentile_threshold(&h, 2048.0, 99.0);
        assert_eq!(t, 1.0);
        assert_eq!(percentile_threshold(&h, 2048.0, 100.0), 2048.0);
    }

    #[test]
    fn entropy_ignores_a_lone_outlier_but_keeps_a_spread() {
        // A spread over the first 512 bins and one far outlier: the
        // threshold stays near the bulk, far below the maximum.
        let mut h = vec![0u64; BINS];
        for (i, n) in h.iter_mut().enumerate().take(512) {
            *n = 1000 - i as u64;
        }
        h[BINS - 1] = 1;
        let t = entropy_threshold(&h, BINS as f32, SIGNED_LEVELS);
        assert!((400.0..1100.0).contains(&t), "{t}");
        // A uniform histogram keeps (almost) all of its range.
        let t = entropy_threshold(&vec![10u64; BINS], BINS as f32, SIGNED_LEVELS);
        assert!(t > 1900.0, "{t}");
        // Too few bins to search: nothing is clipped.
        assert_eq!(entropy_threshold(&[5, 0, 1], 3.0, SIGNED_LEVELS), 3.0);
        assert_eq!((bins_for(100), bins_for(1 << 30)), (12, BINS));
    }

    #[test]
    fn kl_by_hand() {
        assert_eq!(kl_divergence(&[1.0, 1.0], &[2.0, 2.0]), 0.0);
        let kl = kl_divergence(&[3.0, 1.0], &[1.0, 1.0]);
        let want = 0.75 * (0.75f64 / 0.5).ln() + 0.25 * (0.25f64 / 0.5).ln();
        assert!((kl - want).abs() < 1e-12);
    }
}
