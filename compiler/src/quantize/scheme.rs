//! Quantisation schemes, their options and arithmetic: how a calibrated
//! range becomes a scale and zero point, how weights become int8 or
//! block-wise int4 (round half to even and saturation, as ONNX's
//! `QuantizeLinear`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::model::{declared_rank, graph, FloatModel};
use super::Calibration;

/// What `m4c quantize --scheme` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Scheme {
    /// Static int8: calibrated `QuantizeLinear`/`DequantizeLinear` on the
    /// activations feeding MatMul/Gemm/Conv, int8 weights (QDQ).
    Int8,
    /// Activations quantised at run time (`DynamicQuantizeLinear` +
    /// `MatMulInteger`, as onnxruntime's `quantize_dynamic` writes).
    Int8Dynamic,
    /// Weight-only int8 (`DequantizeLinear` on the weights).
    W8,
    /// Weight-only int4 in blocks of `group` along K
    /// (`com.microsoft.MatMulNBits`).
    W4 { group: usize },
}

/// The int4 block size when `w4` names none (onnxruntime-genai's default).
pub const DEFAULT_GROUP: usize = 32;

impl FromStr for Scheme {
    type Err = String;

    fn from_str(s: &str) -> Result<Scheme, String> {
        Ok(match s {
            "int8" => Scheme::Int8,
            "int8-dynamic" => Scheme::Int8Dynamic,
            "w8" => Scheme::W8,
            "w4" => Scheme::W4 {
                group: DEFAULT_GROUP,
            },
            _ => {
                let group = s
                    .strip_prefix("w4:")
                    .ok_or_else(|| {
                        format!("unknown scheme '{s}' (int8, int8-dynamic, w8, w4[:GROUP])")
                    })?
                    .parse::<usize>()
                    .ok()
                    .filter(|g| *g >= 16 && g.is_power_of_two())
                    .ok_or_else(|| {
                        format!("'{s}': the group must be a power of two of at least 16")
                    })?;
                Scheme::W4 { group }
            }
        })
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scheme::Int8 => write!(f, "int8"),
            Scheme::Int8Dynamic => write!(f, "int8-dynamic"),
            Scheme::W8 => write!(f, "w8"),
            Scheme::W4 { group } => write!(f, "w4:{group}"),
        }
    }
}

impl From<Scheme> for String {
    fn from(s: Scheme) -> String {
        s.to_string()
    }
}

impl TryFrom<String> for Scheme {
    type Error = String;
    fn try_from(s: String) -> Result<Scheme, String> {
        s.parse()
    }
}

impl Scheme {
    /// True when activations are quantised with calibrated ranges.
    pub fn calibrates(self) -> bool {
        self == Scheme::Int8
    }

    /// The scheme suited to a module: a decoder (an LLM backbone: rank-3
    /// `logits` output or a KV cache input) gets w4 g32, anything else
    /// (encoders, classifiers) int8 static per channel. Returns the scheme
    /// and whether weights are per channel.
    pub fn default_for(model: &FloatModel) -> (Scheme, bool) {
        let g = graph(&model.proto);
        let decoder = g
            .output
            .iter()
            .any(|o| o.name.contains("logits") && declared_rank(o).is_some_and(|r| r >= 3))
            || g.input.iter().any(|i| i.name.starts_with("past_key"));
        if decoder {
            (
                Scheme::W4 {
                    group: DEFAULT_GROUP,
                },
                false,
            )
        } else {
            (Scheme::Int8, true)
        }
    }
}

/// Options of one quantisation.
#[derive(Clone, Debug)]
pub struct Options {
    /// What to write.
    pub scheme: Scheme,
    /// int8 weights: one scale per output channel (else per tensor).
    pub per_channel: bool,
    /// Activations (int8) and int4 blocks: zero point 0 / 8.
    pub symmetric: bool,
    /// How activation ranges are chosen.
    pub calibration: Calibration,
    /// Node names or operator types left in fp32.
    pub exclude: Vec<String>,
    /// SmoothQuant's migration strength α, when smoothing.
    pub smooth: Option<f32>,
    /// `w4`: bits (4 or 8) of a MatMul writing a graph output — an LLM's
    /// `lm_head`, whose error reaches the logits undamped by any later
    /// layer (8 by default; see docs/QUANTISATION.md for the measurement).
    pub head_bits: u8,
    /// `w4`: the `MatMulNBits` attribute `accuracy_level` (0 leaves it
    /// unset). 4 allows int8 compute: A is quantised to int8 in the
    /// weights' blocks, which onnxruntime and m4c's CPU backend then
    /// multiply as integers (docs/QUANTISATION.md).
    pub accuracy_level: u8,
}

/// `w4`'s default [`Options::head_bits`].
pub const DEFAULT_HEAD_BITS: u8 = 8;

/// The scale and zero point of an int8 activation, with the range they
/// were made from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActEncoding {
    /// Quantisation step (> 0).
    pub scale: f32,
    /// The int8 value representing 0.0.
    pub zero_point: i32,
    /// The calibrated range (informational: editing scale and zero point
    /// is what changes the model).
    pub min: f32,
    /// Upper end of the calibrated range.
    pub max: f32,
}

impl ActEncoding {
    /// Checks a (possibly hand-edited) encoding: the message names the
    /// problem.
    pub fn check(&self) -> Result<(), String> {
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(format!("scale {} is not a positive number", self.scale));
        }
        if !(-128..=127).contains(&self.zero_point) {
            return Err(format!(
                "zero point {} is outside int8's range",
                self.zero_point
            ));
        }
        Ok(())
    }
}

/// The int8 encoding of the range `[lo, hi]` (widened to include 0, so 0.0
/// is exact): asymmetric over 256 steps, or symmetric with zero point 0.
pub fn activation_encoding((lo, hi): (f32, f32), symmetric: bool) -> ActEncoding {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    if symmetric {
        let m = lo.abs().max(hi);
        let scale = if m > 0.0 { m / 127.0 } else { 1.0 };
        return ActEncoding {
            scale,
            zero_point: 0,
            min: lo,
            max: hi,
        };
    }
    let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
    let zero_point = (-128.0 - lo / scale).round_ties_even().clamp(-128.0, 127.0) as i32;
    ActEncoding {
        scale,
        zero_point,
        min: lo,
        max: hi,
    }
}

/// Symmetric int8 quantisation of a weight of `shape`: one scale per index
/// of `axis` (per channel) or one for the whole tensor. Values are in
/// `[-127, 127]`; a zero channel gets scale 1.
pub fn quantize_int8(shape: &[usize], w: &[f32], axis: Option<usize>) -> (Vec<i8>, Vec<f32>) {
    let (channels, inner) = match axis {
        Some(a) => (shape[a], shape[a + 1..].iter().product::<usize>()),
        None => (1, w.len()),
    };
    let channel = |i: usize| (i / inner) % channels;
    let mut absmax = vec![0f32; channels];
    for (i, &x) in w.iter().enumerate() {
        let c = channel(i);
        absmax[c] = absmax[c].max(x.abs());
    }
    let scales: Vec<f32> = absmax
        .iter()
        .map(|&m| if m > 0.0 { m / 127.0 } else { 1.0 })
        .collect();
    let q = w
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            (x / scales[channel(i)])
                .round_ties_even()
                .clamp(-127.0, 127.0) as i8
        })
        .collect();
    (q, scales)
}

/// A `[K, N]` weight in `MatMulNBits` form (4 or 8 bits).
#[derive(Debug, PartialEq)]
pub struct Blocks {
    /// `[N, blocks, group·bits/8]`: codes along K (4 bits: two per byte,
    /// low nibble first), K padded with the zero point to whole blocks.
    pub packed: Vec<u8>,
    /// `[N * blocks]` scales.
    pub scales: Vec<f32>,
    /// `[N * ceil(blocks·bits/8)]` packed zero points (asymmetric); none
    /// for symmetric blocks (the implied zero point is `2^(bits−1)`).
    pub zero_points: Option<Vec<u8>>,
    /// Blocks per column.
    pub blocks: usize,
}

/// Scale and zero point of a block of `bits`-bit codes with range
/// `[lo, hi]` (0 included): the range shrunk by the factor in 1, 0.975,
/// …, 0.75 whose round trip has the least squared error (the full range
/// on ties), so one outlier does not coarsen the step of the whole block.
fn block_params(vals: &[f32], lo: f32, hi: f32, bits: u8, symmetric: bool) -> (f32, f32) {
    let top = f32::from((1u16 << bits) - 1);
    let half = f32::from(1u16 << (bits - 1));
    let params = |f: f32| {
        let (lo, hi) = (lo * f, hi * f);
        if symmetric {
            let m = lo.abs().max(hi);
            (if m > 0.0 { m / (half - 1.0) } else { 1.0 }, half)
        } else {
            let s = if hi > lo { (hi - lo) / top } else { 1.0 };
            (s, (-lo / s).round_ties_even().clamp(0.0, top))
        }
    };
    let error = |(scale, zp): (f32, f32)| -> f32 {
        vals.iter()
            .map(|&x| {
                let q = ((x / scale).round_ties_even() + zp).clamp(0.0, top);
                let d = (q - zp) * scale - x;
                d * d
            })
            .sum()
    };
    (0..=10)
        .map(|i| params(1.0 - 0.025 * i as f32))
        .fold((f32::INFINITY, (1.0, half)), |best, p| {
            let e = error(p);
            if e < best.0 {
                (e, p)
            } else {
                best
            }
        })
        .1
}

/// Quantises a row-major `[K, N]` weight into `bits`-bit (4 or 8) blocks
/// of `group` consecutive K for each column (ranges from
/// [`block_params`]), laid out as `MatMulNBits` reads them.
pub fn quantize_blocks(
    k: usize,
    n: usize,
    w: &[f32],
    group: usize,
    bits: u8,
    symmetric: bool,
) -> Blocks {
    assert!(bits == 4 || bits == 8, "MatMulNBits bits {bits}");
    let b = usize::from(bits);
    let top = f32::from((1u16 << bits) - 1);
    let blocks = k.div_ceil(group);
    let zp_bytes = (blocks * b).div_ceil(8);
    let mut packed = vec![0u8; n * blocks * group * b / 8];
    let mut scales = vec![0f32; n * blocks];
    let mut zps = vec![0u8; n * zp_bytes];
    // Code `q` of element `j` of a block starting at byte `base`.
    let put = |packed: &mut [u8], base: usize, j: usize, q: u8| {
        let bit = j * b;
        packed[base + bit / 8] |= q << (bit % 8);
    };
    for col in 0..n {
        for blk in 0..blocks {
            let ks = blk * group..((blk + 1) * group).min(k);
            let vals: Vec<f32> = ks.clone().map(|r| w[r * n + col]).collect();
            let (lo, hi) = vals
                .iter()
                .fold((0f32, 0f32), |(l, h), &x| (l.min(x), h.max(x)));
            let (scale, zp) = block_params(&vals, lo, hi, bits, symmetric);
            scales[col * blocks + blk] = scale;
            let zbit = blk * b;
            zps[col * zp_bytes + zbit / 8] |= (zp as u8) << (zbit % 8);
            let base = (col * blocks + blk) * group * b / 8;
            for (j, &x) in vals.iter().enumerate() {
                let q = ((x / scale).round_ties_even() + zp).clamp(0.0, top) as u8;
                put(&mut packed, base, j, q);
            }
            // Padding beyond K codes 0.0, which is the zero point.
            for j in ks.len()..group {
                put(&mut packed, base, j, zp as u8);
            }
        }
    }
    Blocks {
        packed,
        scales,
        zero_points: (!symmetric).then_some(zps),
        blocks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_parse_and_print() {
        for s in ["int8", "int8-dynamic", "w8", "w4:32", "w4:128"] {
            assert_eq!(s.parse::<Scheme>().unwrap().to_string(), s);
        }
        assert_eq!("w4".parse::<Scheme>().unwrap(), Scheme::W4 { group: 32 });
        assert!("w4:24"
            .parse::<Scheme>()
            .unwrap_err()
            .contains("power of two"));
        assert!("w4:8".parse::<Scheme>().is_err());
        assert!("int4"
            .parse::<Scheme>()
            .unwrap_err()
            .contains("unknown scheme"));
    }

    #[test]
    fn activation_ranges_map_onto_int8() {
        // [-1, 3]: 4/255 per step; 0.0 lands on an integer zero point.
        let e = activation_encoding((-1.0, 3.0), false);
        assert_eq!(e.scale, 4.0 / 255.0);
        assert_eq!(e.zero_point, -64); // -128 + 1/(4/255) = -64.25 → -64
                                       // Ranges not containing 0 are widened to it.
        let e = activation_encoding((2.0, 4.0), false);
        assert_eq!((e.min, e.zero_point), (0.0, -128));
        let e = activation_encoding((-2.0, 1.0), true);
        assert_eq!((e.scale, e.zero_point), (2.0 / 127.0, 0));
        let e = activation_encoding((0.0, 0.0), false);
        assert_eq!((e.scale, e.zero_point), (1.0, -128));
        assert!(e.check().is_ok());
        let bad = ActEncoding {
            scale: -1.0,
            ..e.clone()
        };
        assert!(bad.check().unwrap_err().contains("scale -1"));
        let bad = ActEncoding {
            zero_point: 200,
            ..e
        };
        assert!(bad.check().unwrap_err().contains("zero point 200"));
    }

    #[test]
    fn int8_weights_per_channel_and_per_tensor() {
        // [2, 2] with channels on axis 1: columns (1, -4) and (0.5, 0.3).
        let w = [1.0, 0.5, -4.0, 0.3];
        let (q, s) = quantize_int8(&[2, 2], &w, Some(1));
        assert_eq!(s, vec![4.0 / 127.0, 0.5 / 127.0]);
        assert_eq!(q, vec![32, 127, -127, 76]); // 31.75 → 32, 76.2 → 76
        let (q, s) = quantize_int8(&[2, 2], &w, None);
        assert_eq!(s, vec![4.0 / 127.0]);
        assert_eq!(q, vec![32, 16, -127, 10]); // 15.875 → 16, 9.525 → 10
        let (q, s) = quantize_int8(&[1, 2], &[0.0, 0.0], Some(0));
        assert_eq!((q, s), (vec![0, 0], vec![1.0]));
    }

    #[test]
    fn int4_block_ranges_never_round_worse_than_the_full_range() {
        let sse = |vals: &[f32], (s, zp): (f32, f32)| -> f32 {
            vals.iter()
                .map(|&x| {
                    let q = ((x / s).round_ties_even() + zp).clamp(0.0, 15.0);
                    ((q - zp) * s - x).powi(2)
                })
                .sum()
        };
        // Pseudo-random blocks of 32 (a linear congruential generator).
        let mut state = 12345u32;
        let mut better = 0;
        for _ in 0..50 {
            let vals: Vec<f32> = (0..32)
                .map(|_| {
                    state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (state >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
                })
                .collect();
            let (lo, hi) = vals
                .iter()
                .fold((0f32, 0f32), |(l, h), &x| (l.min(x), h.max(x)));
            let full = {
                let s = (hi - lo) / 15.0;
                (s, (-lo / s).round_ties_even().clamp(0.0, 15.0))
            };
            let (e, f) = (
                sse(&vals, block_params(&vals, lo, hi, 4, false)),
                sse(&vals, full),
            );
            assert!(e <= f, "{e} > {f}");
            better += usize::from(e < f);
        }
        assert!(better > 0);
    }

    #[test]
    fn int4_blocks_pack_low_nibble_first() {
        // K = 3, N = 1, group 16: one block holding 0, 3, -1.5 and padding.
        let b = quantize_blocks(3, 1, &[0.0, 3.0, -1.5], 16, 4, false);
        assert_eq!(b.blocks, 1);
        assert_eq!(b.scales, vec![0.3]); // 4.5 / 15
        assert_eq!(b.zero_points, Some(vec![5])); // 1.5 / 0.3
                                                  // codes: 0 → 5, 3 → 10 + 5 = 15, -1.5 → -5 + 5 = 0; padding 5.
        assert_eq!(b.packed[0], 5 | (15 << 4));
        assert_eq!(b.packed[1], 5 << 4);
        assert!(b.packed[2..].iter().all(|&x| x == 0x55));
        // Symmetric: scale max/7, implied zero point 8, no zero points.
        let b = quantize_blocks(2, 2, &[7.0, 0.0, -7.0, 0.0], 16, 4, true);
        assert_eq!(b.scales, vec![1.0, 1.0]);
        assert_eq!(b.zero_points, None);
        assert_eq!(b.packed[0], 15 | (1 << 4));
        assert_eq!(b.packed[8], 8 | (8 << 4));
    }

    #[test]
    fn int8_blocks_are_one_byte_per_code() {
        // K = 3, N = 1, group 16: 0, 255·0.1, and padding at the zero point.
        let b = quantize_blocks(3, 1, &[0.0, 25.5, 12.8], 16, 8, false);
        assert_eq!((b.blocks, b.packed.len()), (1, 16));
        assert_eq!(b.scales, vec![0.1]);
        assert_eq!(b.zero_points, Some(vec![0]));
        assert_eq!(&b.packed[..3], &[0, 255, 128]);
        assert!(b.packed[3..].iter().all(|&x| x == 0));
        // Two blocks: one zero point byte each; symmetric: none, 128 implied.
        let b = quantize_blocks(32, 1, &[-1.0; 32], 16, 8, false);
        assert_eq!(b.zero_points.map(|z| z.len()), Some(2));
        let b = quantize_blocks(2, 1, &[-127.0, 1.0], 16, 8, true);
        assert_eq!(b.scales, vec![1.0]);
        assert_eq!(b.zero_points, None);
        assert_eq!(&b.packed[..3], &[1, 129, 128]);
    }
}
