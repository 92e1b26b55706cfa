//! nnU-Net's predictor (nnU-Net v2, <https://github.com/MIC-DKFZ/nnUNet>) for 2-D configurations:
//! each slice of the preprocessed volume is covered by patch-sized tiles (step half a patch),
//! each tile's logits weighted by a Gaussian importance map, optionally averaged over the
//! mirrored inputs (test-time augmentation) and over several networks (folds); the logits
//! are then resampled to the original geometry, argmaxed, un-cropped and transposed back.
//!
//! Deviations, on purpose: accumulators are f32 (nnU-Net keeps fp16 on the GPU), and tiles
//! are batched (nnU-Net runs them one by one) — both only change rounding.

use candle_core::{Device, Tensor};
use meddino_decoder::SegmentationNetwork;
use ndarray::{s, Array2, Array3, Array4, ArrayView4, Axis};
use nnunet_data::io::Volume;
use nnunet_data::preprocess::resample::{resample_probabilities, separate_z_axis};
use nnunet_data::preprocess::{preprocess_case, CaseProperties, PreprocessingPlan};
use nnunet_data::Plans;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// How tiles are run.
#[derive(Debug, Clone, PartialEq)]
pub struct SlidingWindowOptions {
    /// Tile step as a fraction of the patch (nnU-Net: 0.5).
    pub tile_step: f64,
    /// Average over the mirrored inputs (both in-plane axes: 4 passes).
    pub mirroring: bool,
    /// Tiles per forward pass.
    pub tile_batch: usize,
}

impl Default for SlidingWindowOptions {
    fn default() -> Self {
        Self {
            tile_step: 0.5,
            mirroring: true,
            tile_batch: 4,
        }
    }
}

/// The patch size of a resolved 2-D plans configuration.
///
/// # Errors
///
/// When `patch_size` is missing or not 2-D.
pub fn patch_size_2d(configuration: &Map<String, Value>) -> Result<[usize; 2]> {
    let patch: Vec<usize> = configuration
        .get("patch_size")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .ok_or_else(|| Error::Setup("no patch_size".into()))?;
    patch.try_into().map_err(|p: Vec<usize>| {
        Error::Setup(format!(
            "patch_size {p:?} is not 2-D; only 2-D configurations are supported"
        ))
    })
}

/// What predicting with a 2-D configuration needs from the plans: its preprocessing and its
/// patch size.
///
/// # Errors
///
/// When the configuration is missing or malformed, or not 2-D.
pub fn prediction_plan(plans: &Plans, configuration: &str) -> Result<(PreprocessingPlan, [usize; 2])> {
    let values = plans.configuration(configuration)?;
    let patch = patch_size_2d(&values).map_err(|e| Error::Setup(format!("configuration {configuration:?}: {e}")))?;
    Ok((PreprocessingPlan::from_plans(&plans.value, &values)?, patch))
}

/// nnU-Net's `compute_gaussian` for a 2-D patch: a unit impulse at `⌊P/2⌋` smoothed by
/// scipy's `gaussian_filter` (σ = P/8 per axis, truncated at 4σ, zero outside), scaled to a
/// maximum of 10, zeros replaced by the smallest nonzero value.
pub fn gaussian_importance(patch: [usize; 2]) -> Array2<f32> {
    let axis = |p: usize| -> Vec<f64> {
        let sigma = p as f64 / 8.0;
        let radius = (4.0 * sigma + 0.5) as i64;
        let centre = (p / 2) as i64;
        let weights: Vec<f64> = (-radius..=radius)
            .map(|d| (-0.5 * (d as f64 / sigma).powi(2)).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        (0..p as i64)
            .map(|i| {
                let d = i - centre;
                if d.abs() <= radius {
                    weights[(d + radius) as usize] / total
                } else {
                    0.0
                }
            })
            .collect()
    };
    let (gy, gx) = (axis(patch[0]), axis(patch[1]));
    let max = gy.iter().copied().fold(0.0, f64::max) * gx.iter().copied().fold(0.0, f64::max);
    let mut map = Array2::from_shape_fn((patch[0], patch[1]), |(y, x)| (gy[y] * gx[x] / max * 10.0) as f32);
    let min_nonzero = map.iter().copied().filter(|&v| v > 0.0).fold(f32::INFINITY, f32::min);
    map.mapv_inplace(|v| if v > 0.0 { v } else { min_nonzero });
    map
}

/// Tile starts along an axis of length `size ≥ patch`: `n = ⌈(size − patch) / (patch·step)⌉ + 1`
/// tiles spread evenly, rounded half to even as NumPy does.
pub fn tile_starts(size: usize, patch: usize, step: f64) -> Vec<usize> {
    if size <= patch {
        return vec![0];
    }
    let span = (size - patch) as f64;
    let n = (span / (patch as f64 * step)).ceil() as usize + 1;
    let stride = span / (n - 1) as f64;
    (0..n).map(|i| (stride * i as f64).round_ties_even() as usize).collect()
}

/// The logits `[K, Z, Y, X]` of preprocessed data `[C, Z, Y, X]`, slice by slice with
/// sliding `patch` tiles, averaged over `networks`.
///
/// # Errors
///
/// When the networks disagree on classes, the data's channels do not fit, or a forward
/// pass fails.
pub fn sliding_window_logits(
    networks: &[&dyn SegmentationNetwork],
    data: ArrayView4<'_, f32>,
    patch: [usize; 2],
    options: &SlidingWindowOptions,
    device: &Device,
) -> Result<Array4<f32>> {
    let first = networks
        .first()
        .ok_or_else(|| Error::Setup("no network to predict with".into()))?;
    let classes = first.num_classes();
    if let Some(other) = networks.iter().find(|n| n.num_classes() != classes) {
        return Err(Error::Setup(format!(
            "the folds disagree on the number of classes ({classes} and {})",
            other.num_classes()
        )));
    }
    let (channels, z, y, x) = data.dim();
    if channels != first.input_channels() {
        return Err(Error::Setup(format!(
            "the network takes {} input channel(s), the case has {channels}",
            first.input_channels()
        )));
    }
    // Pad in-plane to at least the patch (zeros, centred, the odd voxel after).
    let (py, px) = (y.max(patch[0]), x.max(patch[1]));
    let (oy, ox) = ((py - y) / 2, (px - x) / 2);
    let mut padded = Array4::<f32>::zeros((channels, z, py, px));
    padded.slice_mut(s![.., .., oy..oy + y, ox..ox + x]).assign(&data);

    let importance = gaussian_importance(patch);
    let starts: Vec<(usize, usize)> = tile_starts(py, patch[0], options.tile_step)
        .into_iter()
        .flat_map(|sy| {
            tile_starts(px, patch[1], options.tile_step)
                .into_iter()
                .map(move |sx| (sy, sx))
        })
        .collect();
    // The weight of each in-plane position is the same for every slice.
    let mut weights = Array2::<f32>::zeros((py, px));
    for &(sy, sx) in &starts {
        let mut window = weights.slice_mut(s![sy..sy + patch[0], sx..sx + patch[1]]);
        window += &importance;
    }
    let importance_tensor = Tensor::from_slice(
        importance.as_standard_layout().as_slice().unwrap_or_default(),
        (1, 1, patch[0], patch[1]),
        device,
    )?;
    let tiles: Vec<(usize, usize, usize)> = (0..z)
        .flat_map(|zz| starts.iter().map(move |&(sy, sx)| (zz, sy, sx)))
        .collect();
    let mut logits = Array4::<f32>::zeros((classes, z, py, px));
    let batch = options.tile_batch.max(1);
    for group in tiles.chunks(batch) {
        let mut input = Array4::<f32>::zeros((group.len(), channels, patch[0], patch[1]));
        for (i, &(zz, sy, sx)) in group.iter().enumerate() {
            input
                .index_axis_mut(Axis(0), i)
                .assign(&padded.slice(s![.., zz, sy..sy + patch[0], sx..sx + patch[1]]));
        }
        let input = Tensor::from_slice(
            input.as_slice().unwrap_or_default(),
            (group.len(), channels, patch[0], patch[1]),
            device,
        )?;
        let mut sum: Option<Tensor> = None;
        for network in networks {
            let prediction = mirrored_logits(*network, &input, options.mirroring)?;
            sum = Some(match sum {
                Some(s) => (s + prediction)?,
                None => prediction,
            });
        }
        let Some(sum) = sum else { continue };
        let weighted = (sum / networks.len() as f64)?.broadcast_mul(&importance_tensor)?;
        let weighted: Vec<f32> = weighted.flatten_all()?.to_vec1()?;
        let weighted = Array4::from_shape_vec((group.len(), classes, patch[0], patch[1]), weighted)
            .map_err(|e| Error::Setup(format!("tile logits: {e}")))?;
        for (i, &(zz, sy, sx)) in group.iter().enumerate() {
            let mut window = logits.slice_mut(s![.., zz, sy..sy + patch[0], sx..sx + patch[1]]);
            window += &weighted.index_axis(Axis(0), i);
        }
    }
    for mut plane in logits.outer_iter_mut() {
        for mut slice in plane.outer_iter_mut() {
            slice /= &weights;
        }
    }
    Ok(logits.slice_move(s![.., .., oy..oy + y, ox..ox + x]))
}

/// Logits of `input` `[N, C, H, W]`, averaged over the 4 in-plane flips when `mirroring`.
fn mirrored_logits(network: &dyn SegmentationNetwork, input: &Tensor, mirroring: bool) -> Result<Tensor> {
    let plain = network.forward(input)?.detach();
    if !mirroring {
        return Ok(plain);
    }
    let mut sum = plain;
    for dims in [&[2usize][..], &[3], &[2, 3]] {
        let flipped = network.forward(&input.flip(dims)?)?.detach().contiguous()?.flip(dims)?;
        sum = (sum + flipped)?;
    }
    Ok((sum / 4.0)?)
}

/// A prediction in the input image's array order ((Z,) Y, X).
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Label map (argmax of the logits; background outside the crop).
    pub labels: Array3<i32>,
    /// Softmax probabilities `[K, Z, Y, X]` (background 1 outside the crop), when asked for.
    pub probabilities: Option<Array4<f32>>,
}

/// nnU-Net's `convert_predicted_logits_to_segmentation_with_correct_shape`: logits
/// `[K, z, y, x]` in the preprocessed geometry → labels (and probabilities) in the original
/// image's geometry and array order.
///
/// # Errors
///
/// When the logits' shape does not fit the case's bookkeeping.
pub fn logits_to_labels(
    logits: &Array4<f32>,
    properties: &CaseProperties,
    plan: &PreprocessingPlan,
    with_probabilities: bool,
) -> Result<Prediction> {
    let tf = plan.transpose_forward;
    let original = tf.map(|a| properties.spacing[a]);
    let current = plan.target_spacing(original)?;
    let shape = properties.shape_after_cropping_and_before_resampling;
    let separate = separate_z_axis(current, original);
    let classes = logits.dim().0;
    let resampled: Vec<Array3<f32>> = logits
        .outer_iter()
        .map(|channel| resample_probabilities(channel, shape, separate))
        .collect();
    let [bz, by, bx] = properties.bbox_used_for_cropping;
    let full = properties.shape_before_cropping;
    if (bz[1] - bz[0], by[1] - by[0], bx[1] - bx[0]) != (shape[0], shape[1], shape[2]) {
        return Err(Error::Setup(format!(
            "crop box {:?} does not fit the cropped shape {shape:?}",
            properties.bbox_used_for_cropping
        )));
    }
    let mut labels = Array3::<i32>::zeros(full);
    let mut crop = labels.slice_mut(s![bz[0]..bz[1], by[0]..by[1], bx[0]..bx[1]]);
    ndarray::Zip::indexed(&mut crop).for_each(|(zz, yy, xx), label| {
        let mut best = (0usize, f32::NEG_INFINITY);
        for (k, channel) in resampled.iter().enumerate() {
            let v = channel[[zz, yy, xx]];
            if v > best.1 {
                best = (k, v);
            }
        }
        *label = best.0 as i32;
    });
    let probabilities = with_probabilities.then(|| {
        let mut probabilities = Array4::<f32>::zeros((classes, full[0], full[1], full[2]));
        probabilities.index_axis_mut(Axis(0), 0).fill(1.0);
        let mut region = probabilities.slice_mut(s![.., bz[0]..bz[1], by[0]..by[1], bx[0]..bx[1]]);
        for zz in 0..shape[0] {
            for yy in 0..shape[1] {
                for xx in 0..shape[2] {
                    let max = resampled
                        .iter()
                        .map(|c| c[[zz, yy, xx]])
                        .fold(f32::NEG_INFINITY, f32::max);
                    let exps: Vec<f32> = resampled.iter().map(|c| (c[[zz, yy, xx]] - max).exp()).collect();
                    let total: f32 = exps.iter().sum();
                    for (k, e) in exps.iter().enumerate() {
                        region[[k, zz, yy, xx]] = e / total;
                    }
                }
            }
        }
        probabilities
    });
    // Back to the image's axis order.
    let mut backward = [0usize; 3];
    for (i, &a) in tf.iter().enumerate() {
        backward[a] = i;
    }
    let labels = labels.permuted_axes(backward).as_standard_layout().into_owned();
    let probabilities = probabilities.map(|p| {
        p.permuted_axes([0, 1 + backward[0], 1 + backward[1], 1 + backward[2]])
            .as_standard_layout()
            .into_owned()
    });
    Ok(Prediction { labels, probabilities })
}

/// Predicts a volume read from disk: preprocessing with the plans, sliding windows,
/// export to the volume's own geometry.
///
/// # Errors
///
/// When the volume does not fit the plans (channels), holds NaN or infinite values, or
/// prediction fails.
pub fn predict_volume(
    networks: &[&dyn SegmentationNetwork],
    volume: &Volume,
    plan: &PreprocessingPlan,
    patch: [usize; 2],
    options: &SlidingWindowOptions,
    with_probabilities: bool,
    device: &Device,
) -> Result<Prediction> {
    let bad = volume.data.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        return Err(Error::Input(format!(
            "the image holds {bad} NaN or infinite voxel(s); predicting it would give arbitrary labels"
        )));
    }
    let preprocessed = preprocess_case(volume, None, plan)?;
    let logits = sliding_window_logits(networks, preprocessed.data.view(), patch, options, device)?;
    logits_to_labels(&logits, &preprocessed.properties, plan, with_probabilities)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_axis_with_half_patch_steps() {
        assert_eq!(tile_starts(80, 80, 0.5), [0]);
        assert_eq!(tile_starts(50, 80, 0.5), [0]);
        assert_eq!(tile_starts(100, 64, 0.5), [0, 18, 36]);
        assert_eq!(tile_starts(512, 224, 0.5), [0, 96, 192, 288]);
    }

    #[test]
    fn the_importance_map_peaks_at_ten_in_the_centre() {
        let map = gaussian_importance([16, 24]);
        assert_eq!(map[[8, 12]], 10.0);
        assert!(map.iter().all(|&v| v > 0.0 && v <= 10.0));
        // σ = 2 along y: one σ from the centre the weight is e^{-1/2} of the peak.
        assert!((map[[10, 12]] / 10.0 - (-0.5f32).exp()).abs() < 1e-6);
        assert!(map[[0, 0]] < map[[1, 1]]);
    }

    /// Networks whose outputs are known in closed form.
    #[derive(Debug)]
    enum Probe {
        /// Class 1 = the input, class 0 = 0.
        Identity,
        /// Class 1 = the tile's mean input, everywhere in the tile.
        TileMean,
        /// Class 1 = the column within the tile (0 … P−1).
        Column,
    }

    impl SegmentationNetwork for Probe {
        fn forward_t(&self, xs: &Tensor, _train: bool) -> meddino_decoder::Result<Tensor> {
            let (n, _, h, w) = xs.dims4()?;
            let one = match self {
                Probe::Identity => xs.clone(),
                Probe::TileMean => xs
                    .mean_keepdim(3)?
                    .mean_keepdim(2)?
                    .broadcast_as((n, 1, h, w))?
                    .contiguous()?,
                Probe::Column => Tensor::arange(0f32, w as f32, xs.device())?
                    .reshape((1, 1, 1, w))?
                    .broadcast_as((n, 1, h, w))?
                    .contiguous()?,
            };
            Ok(Tensor::cat(&[&one.zeros_like()?, &one], 1)?)
        }
        fn num_classes(&self) -> usize {
            2
        }
        fn input_channels(&self) -> usize {
            1
        }
        fn input_multiple(&self) -> usize {
            1
        }
    }

    fn ramp(z: usize, y: usize, x: usize) -> Array4<f32> {
        Array4::from_shape_fn((1, z, y, x), |(_, zz, yy, xx)| (zz * 1000 + yy * 10 + xx) as f32 * 0.01)
    }

    fn run(network: &Probe, data: &Array4<f32>, patch: [usize; 2], mirroring: bool) -> Array4<f32> {
        let options = SlidingWindowOptions {
            mirroring,
            tile_batch: 3,
            ..SlidingWindowOptions::default()
        };
        sliding_window_logits(&[network], data.view(), patch, &options, &Device::Cpu).expect("prediction")
    }

    #[test]
    fn an_identity_network_gives_back_its_input_including_padding_and_cropping() {
        // 13 × 11 slices under a 8 × 16 patch: tiles along y, padding along x.
        let data = ramp(2, 13, 11);
        for mirroring in [false, true] {
            let logits = run(&Probe::Identity, &data, [8, 16], mirroring);
            assert_eq!(logits.dim(), (2, 2, 13, 11));
            for (a, b) in logits.index_axis(Axis(0), 1).iter().zip(data.iter()) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
            assert!(logits.index_axis(Axis(0), 0).iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn constant_tiles_are_blended_by_the_gaussian_weights() {
        let (y, x, patch) = (20, 12, [8, 12]);
        let data = ramp(1, y, x);
        let logits = run(&Probe::TileMean, &data, patch, true);
        // By hand: tiles start at y = 0, 4, 8, 12 (4 tiles, stride 4), x = 0; each tile's
        // value is its mean input; a pixel gets Σ g·value / Σ g over the tiles covering it.
        let starts = tile_starts(y, patch[0], 0.5);
        assert_eq!(starts, [0, 4, 8, 12]);
        let g = gaussian_importance(patch);
        for yy in 0..y {
            for xx in 0..x {
                let (mut num, mut den) = (0f64, 0f64);
                for &sy in &starts {
                    if (sy..sy + patch[0]).contains(&yy) {
                        let tile = data.slice(s![0, 0, sy..sy + patch[0], ..]);
                        let mean = f64::from(tile.sum()) / tile.len() as f64;
                        let weight = f64::from(g[[yy - sy, xx]]);
                        num += weight * mean;
                        den += weight;
                    }
                }
                let expected = num / den;
                let got = f64::from(logits[[1, 0, yy, xx]]);
                assert!((got - expected).abs() < 1e-4, "({yy}, {xx}): {got} vs {expected}");
            }
        }
    }

    #[test]
    fn folds_are_averaged_in_logit_space() {
        let data = ramp(1, 16, 16);
        let options = SlidingWindowOptions {
            mirroring: false,
            ..SlidingWindowOptions::default()
        };
        let folds: [&dyn SegmentationNetwork; 2] = [&Probe::Identity, &Probe::Column];
        let logits = sliding_window_logits(&folds, data.view(), [16, 16], &options, &Device::Cpu).expect("ensemble");
        for ((y, x), &v) in logits.index_axis(Axis(0), 1).index_axis(Axis(0), 0).indexed_iter() {
            let expected = (data[[0, 0, y, x]] + x as f32) / 2.0;
            assert!((v - expected).abs() < 1e-5, "({y}, {x}): {v} vs {expected}");
        }
    }

    #[test]
    fn mirroring_averages_the_four_flips() {
        let data = ramp(1, 16, 16);
        // Without mirroring a single tile shows the column ramp; with it, columns x and
        // P−1−x are averaged: (P−1)/2 everywhere.
        let plain = run(&Probe::Column, &data, [16, 16], false);
        assert_eq!(plain[[1, 0, 3, 5]], 5.0);
        let mirrored = run(&Probe::Column, &data, [16, 16], true);
        assert!(mirrored.index_axis(Axis(0), 1).iter().all(|&v| (v - 7.5).abs() < 1e-5));
    }
}
