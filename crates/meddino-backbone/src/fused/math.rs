//! Element-wise kernels over f32 rows: exp, erf, GELU, softmax and LayerNorm.
//!
//! The scalar bodies are branch-free arithmetic so the compiler vectorises them; each slice
//! kernel is compiled for AVX-512, AVX2+FMA and baseline x86-64 and picks one at run time.

use multiversion::multiversion;

/// `exp(x)` to about 2 ulp: `2^n · p(r)` with `x = n·ln2 + r`, `|r| ≤ ln2/2` (Cephes'
/// polynomial), saturating to 0 below −87.3 and to `f32::MAX`-scale above 88.7.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so `n · ln2` is exact in the high part.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Rounds to the nearest integer by adding and removing 1.5 · 2^23.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.7);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// `erf(x)` within 5e-7: an odd rational approximation on [−4, 4] (Eigen's
/// `generic_fast_erf_float` coefficients); |erf| rounds to 1 beyond.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906_3e-4;
    p = p * x2 + -2.954_600_2e-3;
    p = p * x2 + -1.609_603_3e-2;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 + -2.133_740_6e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329_2e-3;
    q = q * x2 + -1.426_474e-2;
    x * p / q
}

/// Rounds to the nearest bf16 (ties to even), as an f32; NaN stays NaN. Bit arithmetic
/// rather than `half`'s conversion, so loops over it vectorise.
#[inline(always)]
pub(crate) fn round_bf16(x: f32) -> f32 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000;
    let is_nan = (bits & 0x7fff_ffff) > 0x7f80_0000;
    f32::from_bits(if is_nan { bits | 0x0040_0000 } else { rounded })
}

/// PyTorch's exact GELU, `x/2 · (1 + erf(x/√2))`, in place.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma", "x86_64+avx2+fma"))]
pub fn gelu_in_place(values: &mut [f32]) {
    for v in values {
        let x = *v;
        *v = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// Independent accumulators in the reductions below: floating-point sums are not
/// reassociated by the compiler, so one accumulator would serialise the loop.
const LANES: usize = 16;

/// `Σ values`, in [`LANES`] partial sums.
#[inline(always)]
fn sum(values: &[f32]) -> f32 {
    let mut partial = [0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (p, &v) in partial.iter_mut().zip(chunk) {
            *p += v;
        }
    }
    partial.iter().sum::<f32>() + tail
}

/// `max values` (−∞ for none), in [`LANES`] partial maxima.
#[inline(always)]
fn max(values: &[f32]) -> f32 {
    let mut partial = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for chunk in chunks {
        for (p, &v) in partial.iter_mut().zip(chunk) {
            *p = if v > *p { v } else { *p };
        }
    }
    partial.iter().copied().fold(tail, f32::max)
}

/// Softmax of one row in place: `exp(x − max) / Σ`.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma", "x86_64+avx2+fma"))]
pub(crate) fn softmax_in_place(row: &mut [f32]) {
    let max = max(row);
    for v in row.iter_mut() {
        *v = exp(*v - max);
    }
    let inv = 1.0 / sum(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// LayerNorm of one row into `out`: `(x − μ) / sqrt(σ² + eps) · weight + bias`, biased
/// variance from the centred values (as the composite version computes it).
#[multiversion(targets("x86_64+avx512f+avx512vl+fma", "x86_64+avx2+fma"))]
pub fn layer_norm_row(row: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    let n = row.len() as f32;
    let mean = sum(row) / n;
    for (o, &x) in out.iter_mut().zip(row) {
        *o = (x - mean) * (x - mean);
    }
    let inv = 1.0 / (sum(out) / n + eps).sqrt();
    for (((o, &x), &w), &b) in out.iter_mut().zip(row).zip(weight).zip(bias) {
        *o = (x - mean) * inv * w + b;
    }
}

/// `out = x + gamma · y` over rows of `gamma.len()` (the residual with LayerScale); no
/// `gamma` means a factor of 1.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma", "x86_64+avx2+fma"))]
pub(crate) fn scaled_residual(x: &[f32], y: &[f32], gamma: Option<&[f32]>, out: &mut [f32]) {
    match gamma {
        Some(gamma) => {
            let width = gamma.len();
            for ((o, x), y) in out.chunks_mut(width).zip(x.chunks(width)).zip(y.chunks(width)) {
                for (((o, &x), &y), &g) in o.iter_mut().zip(x).zip(y).zip(gamma) {
                    *o = x + g * y;
                }
            }
        }
        None => {
            for ((o, &x), &y) in out.iter_mut().zip(x).zip(y) {
                *o = x + y;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf from its Taylor series and continued fraction, in f64, as the truth.
    fn erf_f64(x: f64) -> f64 {
        libm::erf(x)
    }

    #[test]
    fn exp_is_within_a_few_ulp_of_std() {
        let mut worst: f32 = 0.0;
        for i in -87_000..88_000 {
            let x = i as f32 * 1e-3 + 1.234e-4;
            let (ours, truth) = (exp(x), (x as f64).exp());
            worst = worst.max(((ours as f64 - truth) / truth).abs() as f32);
        }
        assert!(worst < 4.0 * f32::EPSILON, "worst relative error {worst:e}");
        assert_eq!(exp(-200.0), exp(-87.3), "saturates below");
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn erf_is_within_half_a_millionth_of_libm() {
        let mut worst: f64 = 0.0;
        for i in -60_000..60_000 {
            let x = i as f32 * 1e-4;
            worst = worst.max((erf(x) as f64 - erf_f64(x as f64)).abs());
        }
        assert!(worst < 1e-6, "worst absolute error {worst:e}");
        assert_eq!(erf(10.0), erf(4.0));
    }

    #[test]
    fn bf16_rounding_matches_half() {
        for bits in (0..u32::MAX)
            .step_by(9973)
            .chain([0x7f80_0000, 0xff80_0000, 0x3f80_8000, 0x3f81_8000])
        {
            let x = f32::from_bits(bits);
            let (ours, theirs) = (round_bf16(x), half::bf16::from_f32(x).to_f32());
            assert!(
                ours.to_bits() == theirs.to_bits() || (ours.is_nan() && theirs.is_nan()),
                "{x:e}: {ours:e} vs {theirs:e}"
            );
        }
    }

    #[test]
    fn long_rows_reduce_like_short_ones() {
        let row: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.1).collect();
        assert_eq!(max(&row), row.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        let truth: f64 = row.iter().map(|&v| v as f64).sum();
        assert!((sum(&row) as f64 - truth).abs() < 1e-3);
        let mut softmax = row.clone();
        softmax_in_place(&mut softmax);
        assert!((sum(&softmax) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn row_kernels_match_their_definitions() {
        let mut row = vec![1.0f32, 2.0, 3.0, -50.0];
        softmax_in_place(&mut row);
        let denominator: f64 = [1.0f64, 2.0, 3.0, -50.0].iter().map(|v| (v - 3.0).exp()).sum();
        for (ours, x) in row.iter().zip([1.0f64, 2.0, 3.0, -50.0]) {
            assert!((*ours as f64 - (x - 3.0).exp() / denominator).abs() < 1e-7);
        }
        let mut out = vec![0.0; 3];
        layer_norm_row(&[1.0, 2.0, 4.0], &[1.0, 2.0, 0.5], &[0.0, 1.0, 0.0], 1e-6, &mut out);
        let (mean, std) = (7.0f32 / 3.0, (14.0f32 / 9.0 + 1e-6).sqrt());
        let expected = [
            (1.0 - mean) / std,
            (2.0 - mean) / std * 2.0 + 1.0,
            (4.0 - mean) / std * 0.5,
        ];
        for (a, b) in out.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{out:?} vs {expected:?}");
        }
        let mut values = vec![-3.0f32, -0.5, 0.0, 0.7, 2.0];
        gelu_in_place(&mut values);
        for (ours, x) in values.iter().zip([-3.0f64, -0.5, 0.0, 0.7, 2.0]) {
            let truth = 0.5 * x * (1.0 + erf_f64(x / std::f64::consts::SQRT_2));
            assert!(
                (*ours as f64 - truth).abs() < 1e-6,
                "gelu({x}) = {ours}, expected {truth}"
            );
        }
        let mut out = vec![0.0; 4];
        scaled_residual(
            &[1.0, 2.0, 3.0, 4.0],
            &[1.0, 1.0, 2.0, 2.0],
            Some(&[0.5, 2.0]),
            &mut out,
        );
        assert_eq!(out, [1.5, 4.0, 4.0, 8.0]);
    }
}
