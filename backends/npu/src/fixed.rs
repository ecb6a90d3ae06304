//! The vector unit's integer arithmetic: operand pre-scaling, the
//! special-function unit (reciprocal, reciprocal square root, exp2) and
//! rounding shifts of wide reduction results. Every function is exactly
//! defined on integers, so the simulator and the reference kernels agree
//! bit for bit; the tests below check each against real arithmetic.

use crate::quant::multiply_by_quantized_multiplier;

/// Fractional bits of `exp2`'s input: it reads `x / 2^16`.
pub const EXP2_INPUT_FRAC: u32 = 16;

/// Q30 coefficients `round(ln(2)^k / k! * 2^30)`, k = 0..=10, of the
/// polynomial that evaluates `2^f` for `f` in `[0, 1)`.
const EXP2_POLY_Q30: [i64; 11] = [
    1_073_741_824,
    744_261_118,
    257_941_248,
    59_597_083,
    10_327_387,
    1_431_680,
    165_394,
    16_377,
    1_419,
    109,
    8,
];

/// A per-operand affine rescale `MBQM(x + offset, multiplier, shift)`; a
/// multiplier of 0 bypasses the multiply (the result is `x + offset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prescale {
    /// Added first (e.g. minus the operand's zero point), wrapping.
    pub offset: i32,
    /// Q31 multiplier; 0 = bypass.
    pub multiplier: i32,
    /// Power-of-two exponent as in TFLite (-31..=30).
    pub shift: i32,
}

impl Prescale {
    /// The identity: no offset, no multiply.
    pub const IDENTITY: Prescale = Prescale {
        offset: 0,
        multiplier: 0,
        shift: 0,
    };

    /// Applies the rescale to one value.
    pub fn apply(&self, x: i32) -> i32 {
        rescale(x.wrapping_add(self.offset), self.multiplier, self.shift)
    }
}

/// `MBQM(x, multiplier, shift)`, or `x` unchanged when `multiplier` is 0.
pub fn rescale(x: i32, multiplier: i32, shift: i32) -> i32 {
    if multiplier == 0 {
        x
    } else {
        multiply_by_quantized_multiplier(x, multiplier, shift)
    }
}

/// `x / 2^shift` rounded to nearest, ties away from zero, saturated to int32.
pub fn round_shift_saturate(x: i128, shift: u32) -> i32 {
    let q = if shift == 0 {
        x
    } else {
        let half = 1i128 << (shift - 1);
        if x >= 0 {
            (x + half) >> shift
        } else {
            -((-x + half) >> shift)
        }
    };
    q.clamp(i32::MIN as i128, i32::MAX as i128) as i32
}

/// `round(2^frac / x)` (ties up), saturated to int32; odd in `x`; `x = 0`
/// gives `i32::MAX`. `frac` is at most 63.
pub fn reciprocal(x: i64, frac: u32) -> i32 {
    if x == 0 {
        return i32::MAX;
    }
    let d = x.unsigned_abs() as u128;
    let q = ((1u128 << frac) + d / 2) / d;
    let q = q.min(i32::MAX as u128) as i32;
    if x < 0 {
        -q
    } else {
        q
    }
}

/// `floor(2^frac / sqrt(x))`, saturated to int32; `x <= 0` gives `i32::MAX`.
/// `frac` is at most 63.
pub fn rsqrt(x: i64, frac: u32) -> i32 {
    if x <= 0 {
        return i32::MAX;
    }
    // floor(sqrt(floor(z))) = floor(sqrt(z)) for real z >= 0.
    let q = ((1u128 << (2 * frac)) / x as u128).isqrt();
    q.min(i32::MAX as u128) as i32
}

/// `2^(x / 2^16)` in Q`frac`, saturated to `0..=i32::MAX`: the integer part
/// of the exponent shifts, the fraction goes through a degree-10 Q30
/// polynomial (Horner, round-half-up at each step). `frac` is at most 63.
pub fn exp2(x: i64, frac: u32) -> i32 {
    let n = x >> EXP2_INPUT_FRAC;
    let f = (x & ((1 << EXP2_INPUT_FRAC) - 1)) << (30 - EXP2_INPUT_FRAC);
    let mut m = EXP2_POLY_Q30[10];
    for &c in EXP2_POLY_Q30[..10].iter().rev() {
        m = c + ((m * f + (1 << 29)) >> 30);
    }
    // m ~ 2^f * 2^30 in [2^30, 2^31]; the result is m * 2^(n + frac - 30).
    let e = n + frac as i64 - 30;
    if e >= 0 {
        if e >= 32 || m > (i32::MAX as i64) >> e {
            i32::MAX
        } else {
            (m << e) as i32
        }
    } else if e < -62 {
        0
    } else {
        round_shift_saturate(m as i128, (-e) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn polynomial_coefficients_are_the_taylor_series_of_2_pow_f() {
        let mut term = 1.0f64;
        for (k, &c) in EXP2_POLY_Q30.iter().enumerate() {
            if k > 0 {
                term *= std::f64::consts::LN_2 / k as f64;
            }
            assert_eq!(c, (term * (1u64 << 30) as f64).round() as i64);
        }
    }

    proptest! {
        #[test]
        fn exp2_is_within_one_unit_plus_1e7_relative(x in -40i64 << 16..=1 << 16, frac in 0u32..=30) {
            let exact = (x as f64 / 65536.0 + frac as f64).exp2();
            let got = exp2(x, frac) as f64;
            if exact < i32::MAX as f64 {
                prop_assert!((got - exact).abs() <= 1.0 + 1e-7 * exact, "x={x} frac={frac}: {got} vs {exact}");
            }
        }

        #[test]
        fn reciprocal_is_the_rounded_quotient(x in -(1i64 << 40)..(1i64 << 40), frac in 0u32..=62) {
            prop_assume!(x != 0);
            let exact = (frac as f64).exp2() / x as f64;
            let got = reciprocal(x, frac) as f64;
            if exact.abs() < i32::MAX as f64 {
                prop_assert!((got - exact).abs() <= 0.5 + 1e-9 * exact.abs());
            }
        }

        #[test]
        fn rsqrt_is_the_floored_root(x in 1i64..(1i64 << 40), frac in 0u32..=40) {
            let r = rsqrt(x, frac) as u128;
            if r < i32::MAX as u128 {
                // r = floor(2^frac / sqrt(x))  <=>  r^2 x <= 4^frac < (r+1)^2 x.
                let four = 1u128 << (2 * frac);
                prop_assert!(r * r * x as u128 <= four && four < (r + 1) * (r + 1) * x as u128);
            }
        }
    }

    #[test]
    fn special_values() {
        assert_eq!(exp2(0, 30), 1 << 30);
        assert_eq!(exp2(-(1 << 16), 30), 1 << 29);
        assert_eq!(exp2(1 << 16, 30), i32::MAX);
        assert_eq!(exp2(-64 << 16, 30), 0);
        assert_eq!(reciprocal(0, 10), i32::MAX);
        assert_eq!(reciprocal(-3, 4), -5);
        assert_eq!(rsqrt(0, 8), i32::MAX);
        assert_eq!(rsqrt(4, 8), 128);
        assert_eq!(round_shift_saturate(-5, 1), -3);
        assert_eq!(round_shift_saturate(1 << 40, 0), i32::MAX);
        assert_eq!(Prescale::IDENTITY.apply(i32::MAX), i32::MAX);
    }
}
