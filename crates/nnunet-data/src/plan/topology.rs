//! nnU-Net's network topology arithmetic: `get_pool_and_conv_props` and
//! `PlainConvUNet.compute_conv_feature_map_size` (see nnU-Net v2 (<https://github.com/MIC-DKFZ/nnUNet>)).

/// Pooling, kernels and the padded patch for a spacing and patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Poolings per axis.
    pub num_pool: Vec<usize>,
    /// Stride per stage (the first is all ones).
    pub strides: Vec<Vec<usize>>,
    /// Kernel per stage (the last is the bottleneck's all threes).
    pub kernel_sizes: Vec<Vec<usize>>,
    /// The patch padded to a multiple of `2^num_pool` per axis.
    pub patch_size: Vec<usize>,
    /// `2^num_pool` per axis.
    pub divisor: Vec<usize>,
}

/// `get_pool_and_conv_props(spacing, patch, min_feature_map_size=4, max_numpool=∞)`.
pub fn pool_and_conv_props(spacing: &[f64], patch: &[usize]) -> Topology {
    const MIN_FM: f64 = 4.0;
    let dim = spacing.len();
    let mut current_spacing = spacing.to_vec();
    let mut current_size: Vec<f64> = patch.iter().map(|&p| p as f64).collect();
    let mut strides = vec![vec![1; dim]];
    let mut kernels = Vec::new();
    let mut num_pool = vec![0; dim];
    let mut kernel = vec![1; dim];
    loop {
        let valid: Vec<usize> = (0..dim).filter(|&i| current_size[i] >= 2.0 * MIN_FM).collect();
        if valid.is_empty() {
            break;
        }
        let min_valid = valid.iter().map(|&i| current_spacing[i]).fold(f64::INFINITY, f64::min);
        let valid: Vec<usize> = valid
            .into_iter()
            .filter(|&i| current_spacing[i] / min_valid < 2.0)
            .collect();
        if valid.is_empty() || (valid.len() == 1 && current_size[valid[0]] < 3.0 * MIN_FM) {
            break;
        }
        let min_all = current_spacing.iter().copied().fold(f64::INFINITY, f64::min);
        for d in 0..dim {
            if kernel[d] != 3 && current_spacing[d] / min_all < 2.0 {
                kernel[d] = 3;
            }
        }
        let mut stride = vec![1; dim];
        for &v in &valid {
            stride[v] = 2;
            num_pool[v] += 1;
            current_spacing[v] *= 2.0;
            current_size[v] = (current_size[v] / 2.0).ceil();
        }
        strides.push(stride);
        kernels.push(kernel.clone());
    }
    kernels.push(vec![3; dim]);
    let divisor: Vec<usize> = num_pool.iter().map(|&n| 1 << n).collect();
    let patch_size = patch
        .iter()
        .zip(&divisor)
        .map(|(&s, &d)| if s % d == 0 { s } else { s + d - s % d })
        .collect();
    Topology {
        num_pool,
        strides,
        kernel_sizes: kernels,
        patch_size,
        divisor,
    }
}

/// Features per stage: `min(max_features, 32 · 2^s)`.
pub fn features_per_stage(n_stages: usize, max_features: usize) -> Vec<usize> {
    (0..n_stages).map(|s| (32usize << s).min(max_features)).collect()
}

/// `PlainConvUNet.compute_conv_feature_map_size` for 2 convolutions per stage, no deep
/// supervision: elements of every feature map, encoder, decoder and the final layer.
pub fn feature_map_size(patch: &[usize], strides: &[Vec<usize>], features: &[usize], num_classes: usize) -> u64 {
    let prod = |size: &[usize]| size.iter().map(|&s| s as u64).product::<u64>();
    let mut total = 0u64;
    let mut size = patch.to_vec();
    let mut skips = Vec::new();
    for (s, stride) in strides.iter().enumerate() {
        size = size.iter().zip(stride).map(|(a, b)| a / b).collect();
        total += 2 * features[s] as u64 * prod(&size);
        if s + 1 < strides.len() {
            skips.push(size.clone());
        }
    }
    let n = strides.len() - 1;
    for s in 0..n {
        let skip = &skips[n - 1 - s];
        let f = features[n - 1 - s] as u64;
        total += 2 * f * prod(skip) + f * prod(skip);
        if s == n - 1 {
            total += num_classes as u64 * prod(skip);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lung_2d_worked_example() {
        // nnunet-reference.md §3.9: MSD Lung 2d, spacing (0.785, 0.785), patch 512² → 8 stages,
        // estimate 82,624,512 with 2 classes (background and tumour).
        let topology = pool_and_conv_props(&[0.785, 0.785], &[512, 512]);
        assert_eq!(topology.patch_size, [512, 512]);
        assert_eq!(topology.strides.len(), 8);
        let features = features_per_stage(8, 512);
        assert_eq!(features, [32, 64, 128, 256, 512, 512, 512, 512]);
        assert_eq!(
            feature_map_size(&topology.patch_size, &topology.strides, &features, 2),
            82_624_512
        );
    }
}
