//! The intensity part of nnU-Net's augmentation (steps 2–8 of the module docs), per channel
//! of (C, H, W) data.

use ndarray::{Array3, ArrayViewMut2, Axis};

use super::bg_contrast;
use crate::random::RandomState;

/// A normalised Gaussian kernel of length the odd integer nearest to `6σ + 0.5`.
pub fn gaussian_kernel(sigma: f64) -> Vec<f64> {
    let radius = ((6.0 * sigma + 0.5 - 1.0) / 2.0).round().max(0.0) as i64;
    let kernel: Vec<f64> = (-radius..=radius)
        .map(|x| (-(x * x) as f64 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f64 = kernel.iter().sum();
    kernel.into_iter().map(|k| k / sum).collect()
}

/// Reflect-padded index (`abcd|dcba`).
fn reflect(i: i64, n: i64) -> usize {
    let period = 2 * n;
    let m = i.rem_euclid(period);
    (if m < n { m } else { period - 1 - m }) as usize
}

/// Separable Gaussian blur of one channel with σ per axis, reflect padding.
pub fn gaussian_blur(mut channel: ArrayViewMut2<'_, f32>, sigmas: [f64; 2]) {
    for (axis, sigma) in sigmas.into_iter().enumerate() {
        let kernel = gaussian_kernel(sigma);
        let radius = (kernel.len() / 2) as i64;
        for mut lane in channel.lanes_mut(Axis(axis)) {
            let line: Vec<f64> = lane.iter().map(|&v| f64::from(v)).collect();
            let n = line.len() as i64;
            for (i, out) in lane.iter_mut().enumerate() {
                *out = kernel
                    .iter()
                    .enumerate()
                    .map(|(k, w)| w * line[reflect(i as i64 + k as i64 - radius, n)])
                    .sum::<f64>() as f32;
            }
        }
    }
}

/// Linear resampling of a line (`align_corners=False`, edge clamped).
fn linear(line: &[f32], out: usize) -> Vec<f32> {
    let n = line.len();
    let scale = n as f64 / out as f64;
    (0..out)
        .map(|o| {
            let p = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
            let i = (p.floor() as usize).min(n - 1);
            let t = p - i as f64;
            let j = (i + 1).min(n - 1);
            (f64::from(line[i]) * (1.0 - t) + f64::from(line[j]) * t) as f32
        })
        .collect()
}

/// Down-sampling with nearest-exact to `scale` of the size, then bilinear back.
fn simulate_low_resolution(channel: &mut ArrayViewMut2<'_, f32>, scale: f64) {
    let (h, w) = channel.dim();
    let small = [
        ((h as f64) * scale).round().max(1.0) as usize,
        ((w as f64) * scale).round().max(1.0) as usize,
    ];
    let nearest =
        |o: usize, out: usize, n: usize| (((o as f64 + 0.5) * n as f64 / out as f64).floor() as usize).min(n - 1);
    let low = ndarray::Array2::from_shape_fn((small[0], small[1]), |(i, j)| {
        channel[[nearest(i, small[0], h), nearest(j, small[1], w)]]
    });
    // Bilinear up: rows then columns.
    let rows: Vec<Vec<f32>> = low.outer_iter().map(|r| linear(&r.to_vec(), w)).collect();
    for j in 0..w {
        let column: Vec<f32> = rows.iter().map(|r| r[j]).collect();
        for (i, v) in linear(&column, h).into_iter().enumerate() {
            channel[[i, j]] = v;
        }
    }
}

/// Mean and unbiased std of a channel.
fn stats(channel: &ArrayViewMut2<'_, f32>) -> (f64, f64) {
    let n = channel.len() as f64;
    let mean = channel.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = channel.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// Gamma with retained statistics; `invert` applies it to −x.
fn gamma(channel: &mut ArrayViewMut2<'_, f32>, gamma: f64, invert: bool) {
    if invert {
        channel.mapv_inplace(|v| -v);
    }
    let (mean, std) = stats(channel);
    let (lo, hi) = channel
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let range = f64::from(hi - lo);
    channel.mapv_inplace(|v| ((f64::from(v - lo) / range.max(1e-7)).powf(gamma) * range + f64::from(lo)) as f32);
    let (new_mean, new_std) = stats(channel);
    channel.mapv_inplace(|v| ((f64::from(v) - new_mean) / new_std.max(1e-7) * std + mean) as f32);
    if invert {
        channel.mapv_inplace(|v| -v);
    }
}

/// Steps 2–8, each with nnU-Net's probabilities.
pub(crate) fn augment(data: &mut Array3<f32>, rng: &mut RandomState) {
    if rng.chance(0.1) {
        let std = rng.uniform_in(0.0, 0.1);
        // Box–Muller on the shared generator.
        data.mapv_inplace(|v| {
            let (u1, u2) = (rng.uniform().max(1e-300), rng.uniform());
            v + (std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        });
    }
    if rng.chance(0.2) {
        for channel in data.outer_iter_mut() {
            if rng.chance(0.5) {
                let sigmas = [rng.uniform_in(0.5, 1.0), rng.uniform_in(0.5, 1.0)];
                gaussian_blur(channel, sigmas);
            }
        }
    }
    if rng.chance(0.15) {
        for mut channel in data.outer_iter_mut() {
            let factor = bg_contrast(rng, 0.75, 1.25) as f32;
            channel.mapv_inplace(|v| v * factor);
        }
    }
    if rng.chance(0.15) {
        for mut channel in data.outer_iter_mut() {
            let factor = bg_contrast(rng, 0.75, 1.25) as f32;
            let (mean, _) = stats(&channel);
            let (lo, hi) = channel
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
            channel.mapv_inplace(|v| ((v - mean as f32) * factor + mean as f32).clamp(lo, hi));
        }
    }
    if rng.chance(0.25) {
        for mut channel in data.outer_iter_mut() {
            if rng.chance(0.5) {
                let scale = rng.uniform_in(0.5, 1.0);
                simulate_low_resolution(&mut channel, scale);
            }
        }
    }
    for (p, invert) in [(0.1, true), (0.3, false)] {
        if rng.chance(p) {
            for mut channel in data.outer_iter_mut() {
                let g = bg_contrast(rng, 0.7, 1.5);
                gamma(&mut channel, g, invert);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;

    use super::*;

    #[test]
    fn kernel_lengths_follow_six_sigma() {
        assert_eq!(gaussian_kernel(0.5).len(), 3);
        assert_eq!(gaussian_kernel(1.0).len(), 7);
        assert!((gaussian_kernel(0.8).iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn blur_keeps_a_constant_image() {
        let mut image = Array2::from_elem((6, 9), 3f32);
        gaussian_blur(image.view_mut(), [0.7, 0.9]);
        assert!(image.iter().all(|&v| (v - 3.0).abs() < 1e-5));
    }

    #[test]
    fn gamma_keeps_mean_and_std() {
        let mut image = Array2::from_shape_fn((8, 8), |(y, x)| (y * 8 + x) as f32 * 0.1 - 2.0);
        let before = stats(&image.view_mut());
        gamma(&mut image.view_mut(), 1.4, false);
        let after = stats(&image.view_mut());
        assert!(
            (before.0 - after.0).abs() < 1e-4 && (before.1 - after.1).abs() < 1e-4,
            "{before:?} {after:?}"
        );
    }

    #[test]
    fn low_resolution_keeps_the_shape_and_range() {
        let mut image = Array2::from_shape_fn((10, 12), |(y, x)| ((y + x) % 5) as f32);
        simulate_low_resolution(&mut image.view_mut(), 0.5);
        assert_eq!(image.dim(), (10, 12));
        assert!(image.iter().all(|&v| (0.0..=4.0).contains(&v)));
    }

    #[test]
    fn the_intensity_pipeline_keeps_values_finite_and_in_scale() {
        let original = Array3::from_shape_fn((1, 24, 24), |(_, y, x)| ((y * 24 + x) as f32 / 576.0) * 2.0 - 1.0);
        let (mut changed, mut max_abs) = (0, 0f32);
        for seed in 0..300 {
            let mut data = original.clone();
            augment(&mut data, &mut RandomState::new(seed));
            assert!(data.iter().all(|v| v.is_finite()), "seed {seed}");
            changed += usize::from(data != original);
            max_abs = data.iter().fold(max_abs, |m, v| m.max(v.abs()));
        }
        // Each transform fires rarely (p 0.1–0.3), so most but not all samples change; none
        // moves a [−1, 1] image far out of scale (brightness ≤ 1.25, noise std ≤ 0.1).
        assert!((150..300).contains(&changed), "{changed} of 300 changed");
        assert!(max_abs < 2.5, "largest magnitude {max_abs}");
    }
}
