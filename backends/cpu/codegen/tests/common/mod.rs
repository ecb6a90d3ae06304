//! Test support: deterministic data, the reference matmul and the f32
//! error bound kernels are checked against.

/// `len` pseudo-random floats in [-1, 1) from `seed` (xorshift64*).
pub fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let bits = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
            (bits as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `C0 + A·B` (row-major) in f64, with `Σ|a·b| + |c0|` per element for the
/// error bound.
pub fn reference(
    a: &[f32],
    b: &[f32],
    c0: &[f32],
    m: usize,
    k: usize,
    n: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut exact = vec![0.0; m * n];
    let mut magnitude = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let (mut sum, mut abs) = (f64::from(c0[i * n + j]), f64::from(c0[i * n + j]).abs());
            for p in 0..k {
                let term = f64::from(a[i * k + p]) * f64::from(b[p * n + j]);
                sum += term;
                abs += term.abs();
            }
            exact[i * n + j] = sum;
            magnitude[i * n + j] = abs;
        }
    }
    (exact, magnitude)
}

/// Checks `actual` against the reference with the worst-case bound of an
/// f32 sum of `terms` products in any order (Higham, Accuracy and Stability
/// of Numerical Algorithms, §3.1): `|ĉ − c| ≤ γ(terms)·Σ|a·b|` with
/// `γ(t) = t·u / (1 − t·u)` and `u = 2⁻²⁴`. FMA only tightens this, so a
/// kernel that violates it is wrong, not unlucky.
pub fn assert_close(actual: &[f32], exact: &[f64], magnitude: &[f64], terms: usize) {
    let u = f64::from(f32::EPSILON) / 2.0;
    let t = terms as f64 * u;
    let gamma = t / (1.0 - t);
    assert_eq!(actual.len(), exact.len());
    for (i, ((&got, &want), &mag)) in actual.iter().zip(exact).zip(magnitude).enumerate() {
        let bound = gamma * mag + f64::from(f32::MIN_POSITIVE);
        let err = (f64::from(got) - want).abs();
        assert!(
            err <= bound,
            "element {i}: got {got}, want {want}, error {err:e} > bound {bound:e}"
        );
    }
}
