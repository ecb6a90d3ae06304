//! Integer requantisation with TFLite's exact rounding: an int32
//! accumulator is scaled by `multiplier * 2^shift / 2^31` using
//! `SaturatingRoundingDoublingHighMul` then `RoundingDivideByPOT`.

/// Per-tensor requantisation parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requant {
    /// Q31 fixed-point multiplier (TFLite's `quantized_multiplier`).
    pub multiplier: i32,
    /// Power-of-two exponent: positive shifts left, negative rounds right.
    pub shift: i32,
    /// Output zero point, added after scaling.
    pub zero_point: i32,
    /// Lower clamp (activation minimum).
    pub clamp_min: i8,
    /// Upper clamp (activation maximum).
    pub clamp_max: i8,
}

/// The valid range of [`Requant::shift`].
pub const SHIFT_RANGE: std::ops::RangeInclusive<i32> = -31..=30;

/// `(a * b * 2) >> 32` rounded to nearest (ties upwards, as gemmlowp's nudge
/// then truncation gives), saturating
/// the single overflow case `i32::MIN * i32::MIN`.
pub fn saturating_rounding_doubling_high_mul(a: i32, b: i32) -> i32 {
    if a == i32::MIN && b == i32::MIN {
        return i32::MAX;
    }
    let ab = a as i64 * b as i64;
    let nudge = if ab >= 0 {
        1i64 << 30
    } else {
        1 - (1i64 << 30)
    };
    ((ab + nudge) / (1i64 << 31)) as i32
}

/// `x / 2^exponent` rounded to nearest, ties away from zero (`exponent` in 0..=31).
pub fn rounding_divide_by_pot(x: i32, exponent: u32) -> i32 {
    let mask = ((1i64 << exponent) - 1) as i32;
    let remainder = x & mask;
    let threshold = (mask >> 1) + i32::from(x < 0);
    (x >> exponent) + i32::from(remainder > threshold)
}

/// TFLite's `MultiplyByQuantizedMultiplier`; the left shift wraps like the
/// hardware's 32-bit shifter.
pub fn multiply_by_quantized_multiplier(x: i32, multiplier: i32, shift: i32) -> i32 {
    let left = shift.max(0) as u32;
    let right = (-shift).max(0) as u32;
    rounding_divide_by_pot(
        saturating_rounding_doubling_high_mul(x.wrapping_shl(left), multiplier),
        right,
    )
}

impl Requant {
    /// Scales one value by `multiplier * 2^shift / 2^31` (TFLite's
    /// `MultiplyByQuantizedMultiplier`); a multiplier of 0 bypasses the
    /// scaling, which the vector unit uses for plain integer results.
    pub fn rescale(&self, x: i32) -> i32 {
        crate::fixed::rescale(x, self.multiplier, self.shift)
    }

    /// Scales one accumulator value (bias already added) to int8.
    pub fn apply(&self, acc: i32) -> i8 {
        let scaled = self.rescale(acc) as i64;
        (scaled + self.zero_point as i64).clamp(self.clamp_min as i64, self.clamp_max as i64) as i8
    }

    /// The multiplier/shift pair closest to the real scale `scale` (> 0), as
    /// TFLite's `QuantizeMultiplier` computes it.
    pub fn quantize_scale(scale: f64) -> Option<(i32, i32)> {
        if !(scale > 0.0 && scale.is_finite()) {
            return None;
        }
        let mut shift = 0i32;
        let mut q = scale;
        while q >= 1.0 {
            q /= 2.0;
            shift += 1;
        }
        while q < 0.5 {
            q *= 2.0;
            shift -= 1;
        }
        let mut m = (q * (1i64 << 31) as f64).round() as i64;
        if m == 1i64 << 31 {
            m /= 2;
            shift += 1;
        }
        SHIFT_RANGE.contains(&shift).then_some((m as i32, shift))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Exact rational rounding, ties away from zero: the independent truth.
    fn round_div(num: i128, den: i128) -> i128 {
        let q = num / den;
        let r = num % den;
        if 2 * r.abs() >= den {
            q + num.signum()
        } else {
            q
        }
    }

    proptest! {
        #[test]
        fn srdhm_is_rounded_product(a: i32, b: i32) {
            // Ties round upwards (towards +infinity), as in TFLite/gemmlowp.
            let exact = (a as i128 * b as i128 + (1i128 << 30)).div_euclid(1i128 << 31).min(i32::MAX as i128);
            prop_assert_eq!(saturating_rounding_doubling_high_mul(a, b) as i128, exact);
        }

        #[test]
        fn rdbpot_is_rounded_quotient(x: i32, e in 0u32..=31) {
            prop_assert_eq!(rounding_divide_by_pot(x, e) as i128, round_div(x as i128, 1i128 << e));
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(
            saturating_rounding_doubling_high_mul(i32::MIN, i32::MIN),
            i32::MAX
        );
        assert_eq!(saturating_rounding_doubling_high_mul(-3, 1 << 30), -1);
        assert_eq!(saturating_rounding_doubling_high_mul(3, 1 << 30), 2);
        assert_eq!(rounding_divide_by_pot(-5, 1), -3);
        assert_eq!(rounding_divide_by_pot(5, 1), 3);
        assert_eq!(rounding_divide_by_pot(-6, 2), -2);
        // 0.5 scale: multiplier 2^30 with shift 0.
        assert_eq!(multiply_by_quantized_multiplier(7, 1 << 30, 0), 4);
        assert_eq!(Requant::quantize_scale(0.5), Some((1 << 30, 0)));
        let (m, s) = Requant::quantize_scale(0.0123).unwrap();
        assert!((m as f64 / 2f64.powi(31) * 2f64.powi(s) - 0.0123).abs() < 1e-9);
    }
}
