//! Looking at patch features: MedDINOv3's demo normalisation of CT slices, the PCA colour
//! map and the patch-similarity map of the MedDINOv3 README figure.
//!
//! Features are row-major `[n, d]` slices (`n` patches of width `d`), as
//! `x_norm_patchtokens` of one image flattens.

/// MedDINOv3 demo normalisation of CT intensities in HU: clip to [−1000, 1000], subtract
/// 65.1084213256836 and divide by 178.01663208007812 + 1e-8 (statistics of its training CT).
pub fn ct_demo_normalize(hu: &mut [f32]) {
    const MEAN: f32 = 65.108_42;
    const STD: f32 = 178.016_63 + 1e-8;
    for v in hu {
        *v = (v.clamp(-1000.0, 1000.0) - MEAN) / STD;
    }
}

/// The first three principal components of the patch features, each scaled to [0, 1] over
/// the patches: an RGB colour per patch.
///
/// Power iteration with deflation on the d × d covariance: three components of a matrix
/// this size need no LAPACK, and a fixed seed vector makes the result deterministic (up to
/// each component's sign, which only flips its colour ramp).
pub fn pca_rgb(features: &[f32], n: usize, d: usize) -> Vec<[f32; 3]> {
    if n == 0 || d == 0 || features.len() != n * d {
        return vec![[0.0; 3]; n];
    }
    let mean: Vec<f64> = (0..d)
        .map(|j| (0..n).map(|i| f64::from(features[i * d + j])).sum::<f64>() / n as f64)
        .collect();
    let centered: Vec<f64> = (0..n * d).map(|k| f64::from(features[k]) - mean[k % d]).collect();
    let mut covariance = vec![0.0f64; d * d];
    for row in centered.chunks_exact(d) {
        for (a, &x) in row.iter().enumerate() {
            let target = &mut covariance[a * d..(a + 1) * d];
            for (c, &y) in target.iter_mut().zip(row) {
                *c += x * y;
            }
        }
    }
    let mut components: Vec<Vec<f64>> = Vec::with_capacity(3);
    for k in 0..3 {
        let mut v: Vec<f64> = (0..d).map(|j| 1.0 + ((j * 7 + k * 13) % 11) as f64 / 11.0).collect();
        for _ in 0..200 {
            let mut next: Vec<f64> = (0..d)
                .map(|a| (0..d).map(|b| covariance[a * d + b] * v[b]).sum())
                .collect();
            // Deflation: stay orthogonal to the components found so far.
            for u in &components {
                let dot: f64 = next.iter().zip(u).map(|(x, y)| x * y).sum();
                next.iter_mut().zip(u).for_each(|(x, y)| *x -= dot * y);
            }
            let norm = next.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm == 0.0 {
                break;
            }
            next.iter_mut().for_each(|x| *x /= norm);
            v = next;
        }
        components.push(v);
    }
    let projections: Vec<Vec<f64>> = components
        .iter()
        .map(|u| {
            centered
                .chunks_exact(d)
                .map(|row| row.iter().zip(u).map(|(x, y)| x * y).sum())
                .collect()
        })
        .collect();
    let scaled: Vec<Vec<f32>> = projections
        .iter()
        .map(|p| {
            let (lo, hi) = p.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                (lo.min(x), hi.max(x))
            });
            p.iter()
                .map(|&x| if hi > lo { ((x - lo) / (hi - lo)) as f32 } else { 0.5 })
                .collect()
        })
        .collect();
    (0..n).map(|i| [scaled[0][i], scaled[1][i], scaled[2][i]]).collect()
}

/// Cosine similarity of patch `query` to every patch, in [−1, 1]; zero for zero vectors.
pub fn cosine_similarity(features: &[f32], n: usize, d: usize, query: usize) -> Vec<f32> {
    if query >= n || features.len() != n * d {
        return vec![0.0; n];
    }
    let norm = |row: &[f32]| row.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let q = &features[query * d..(query + 1) * d];
    let q_norm = norm(q);
    features
        .chunks_exact(d)
        .map(|row| {
            let denominator = q_norm * norm(row);
            let dot: f64 = row.iter().zip(q).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
            if denominator > 0.0 {
                (dot / denominator) as f32
            } else {
                0.0
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_clips_then_standardises() {
        let mut v = [-3000.0, 65.108_42, 5000.0];
        ct_demo_normalize(&mut v);
        assert!((v[0] - (-1000.0 - 65.108_42) / 178.016_63).abs() < 1e-5);
        assert!(v[1].abs() < 1e-6);
        assert!((v[2] - (1000.0 - 65.108_42) / 178.016_63).abs() < 1e-5);
    }

    #[test]
    fn pca_finds_the_dominant_direction() {
        // Points along (1, 2, 0) with small noise on the other axes: component 1 orders them.
        let (n, d) = (6, 3);
        let features: Vec<f32> = (0..n)
            .flat_map(|i| {
                let t = i as f32;
                [t, 2.0 * t + 0.01 * (i % 2) as f32, 0.02 * ((i * 5) % 3) as f32]
            })
            .collect();
        let rgb = pca_rgb(&features, n, d);
        let first: Vec<f32> = rgb.iter().map(|c| c[0]).collect();
        let increasing = first.windows(2).all(|w| w[0] < w[1]);
        let decreasing = first.windows(2).all(|w| w[0] > w[1]);
        assert!(increasing || decreasing, "{first:?}");
        assert!(rgb.iter().flatten().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn cosine_similarity_of_a_patch_to_itself_is_one() {
        let features = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let s = cosine_similarity(&features, 3, 2, 0);
        assert!(
            (s[0] - 1.0).abs() < 1e-6 && s[1].abs() < 1e-6 && (s[2] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6,
            "{s:?}"
        );
    }
}
