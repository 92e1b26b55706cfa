//! nnU-Net's default `ExperimentPlanner` (plans name `nnUNetPlans`) for the `2d` and
//! `3d_fullres` configurations, `nnUNetPlans.json` with nnU-Net's structure and key order,
//! `inherits_from` resolution, and MedDINOv3's derived `2d_N` configurations (`2d_896`).
//!
//! The arithmetic follows nnU-Net v2 (<https://github.com/MIC-DKFZ/nnUNet>) (target spacing with the
//! anisotropy rule, transpose, median shapes, topology, VRAM-bounded patch and batch size);
//! Python's `round` (ties to even) is kept where nnU-Net uses it.

pub mod topology;

use std::io::Write;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::dataset::DatasetJson;
use crate::error::{Error, Result};
use crate::fingerprint::Fingerprint;
use crate::io::write_atomic;
use topology::{feature_map_size, features_per_stage, pool_and_conv_props};

const ANISO_THRESHOLD: f64 = 3.0;

/// NumPy's `percentile(values, q)` with linear interpolation.
fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = q / 100.0 * (sorted.len() - 1) as f64;
    let (below, above) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[below] + (sorted[above] - sorted[below]) * (rank - below as f64)
}

fn column(rows: &[[f64; 3]], axis: usize) -> Vec<f64> {
    rows.iter().map(|r| r[axis]).collect()
}

/// The 3-D target spacing (§3.1), in raw axis order.
fn target_spacing(fingerprint: &Fingerprint) -> [f64; 3] {
    let shapes: Vec<[f64; 3]> = fingerprint
        .shapes_after_crop
        .iter()
        .map(|s| s.map(|v| v as f64))
        .collect();
    let mut target = [0, 1, 2].map(|a| percentile(&column(&fingerprint.spacings, a), 50.0));
    let size = [0, 1, 2].map(|a| percentile(&column(&shapes, a), 50.0));
    let worst = (0..3).fold(0, |best, a| if target[a] > target[best] { a } else { best });
    let others: Vec<usize> = (0..3).filter(|&a| a != worst).collect();
    let max_other_spacing = others.iter().map(|&a| target[a]).fold(f64::NEG_INFINITY, f64::max);
    let min_other_size = others.iter().map(|&a| size[a]).fold(f64::INFINITY, f64::min);
    if target[worst] > ANISO_THRESHOLD * max_other_spacing && size[worst] * ANISO_THRESHOLD < min_other_size {
        let mut t = percentile(&column(&fingerprint.spacings, worst), 10.0);
        if t < max_other_spacing {
            t = max_other_spacing.max(t) + 1e-5;
        }
        target[worst] = t;
    }
    target
}

/// One configuration's planned values.
struct Planned {
    patch_size: Vec<usize>,
    batch_size: usize,
    strides: Vec<Vec<usize>>,
    kernel_sizes: Vec<Vec<usize>>,
    features: Vec<usize>,
}

/// §3.4–3.5 for one configuration.
fn plan_configuration(spacing: &[f64], median_shape: &[f64], dataset_voxels: f64, num_classes: usize) -> Planned {
    let dim = spacing.len();
    let max_features = if dim == 2 { 512 } else { 320 };
    let inverse: Vec<f64> = spacing.iter().map(|s| 1.0 / s).collect();
    let product: f64 = inverse.iter().product();
    let budget = if dim == 3 {
        (256f64.powi(3) / product).powf(1.0 / 3.0)
    } else {
        (2048f64.powi(2) / product).sqrt()
    };
    let initial: Vec<usize> = inverse
        .iter()
        .zip(median_shape)
        .map(|(r, &m)| ((r * budget).round_ties_even()).min(m) as usize)
        .collect();
    let mut topology = pool_and_conv_props(spacing, &initial);
    let estimate = |t: &topology::Topology| {
        feature_map_size(
            &t.patch_size,
            &t.strides,
            &features_per_stage(t.strides.len(), max_features),
            num_classes,
        )
    };
    let reference = if dim == 2 { 85_000_000.0 } else { 560_000_000.0 };
    let reference_batch = if dim == 2 { 12.0 } else { 2.0 };
    let mut e = estimate(&topology);
    while e as f64 / reference_batch * 2.0 > reference {
        let ratios: Vec<f64> = topology
            .patch_size
            .iter()
            .zip(median_shape)
            .map(|(&p, &m)| p as f64 / m)
            .collect();
        // np.argsort(...)[-1]: the last index among equal maxima.
        let axis = (0..dim).fold(0, |best, a| if ratios[a] >= ratios[best] { a } else { best });
        let mut shrunk = topology.patch_size.clone();
        shrunk[axis] -= topology.divisor[axis];
        let step = pool_and_conv_props(spacing, &shrunk).divisor[axis];
        let mut patch = topology.patch_size.clone();
        patch[axis] -= step;
        topology = pool_and_conv_props(spacing, &patch);
        e = estimate(&topology);
    }
    let batch = (reference / e as f64 * reference_batch).round_ties_even();
    let voxels: f64 = topology.patch_size.iter().map(|&p| p as f64).product();
    let cap = (dataset_voxels * 0.05 / voxels).round_ties_even();
    let batch_size = batch.min(cap).max(2.0) as usize;
    let features = features_per_stage(topology.strides.len(), max_features);
    Planned {
        patch_size: topology.patch_size,
        batch_size,
        strides: topology.strides,
        kernel_sizes: topology.kernel_sizes,
        features,
    }
}

/// The normalisation scheme nnU-Net picks for a channel name (§1.2).
fn normalization_scheme(channel_name: &str) -> &'static str {
    match channel_name.to_lowercase().as_str() {
        "ct" => "CTNormalization",
        "nonorm" => "NoNormalization",
        "rescale_to_0_1" => "RescaleTo01Normalization",
        "rgb_to_0_1" => "RGBTo01Normalization",
        _ => "ZScoreNormalization",
    }
}

fn resampling(is_seg: bool, order: u8) -> Value {
    json!({"is_seg": is_seg, "order": order, "order_z": 0, "force_separate_z": null})
}

/// The configuration dict as nnU-Net writes it.
fn configuration_json(
    name: &str,
    planned: &Planned,
    median_shape: &[f64],
    spacing: &[f64],
    dataset: &DatasetJson,
    fingerprint: &Fingerprint,
    batch_dice: bool,
) -> Value {
    let dim = spacing.len();
    let schemes: Vec<&str> = dataset
        .channel_names
        .values()
        .map(|n| normalization_scheme(n))
        .collect();
    let use_mask: Vec<bool> = schemes
        .iter()
        .map(|s| *s == "ZScoreNormalization" && fingerprint.median_relative_size_after_cropping < 0.75)
        .collect();
    let n_stages = planned.strides.len();
    let conv = if dim == 2 {
        "torch.nn.modules.conv.Conv2d"
    } else {
        "torch.nn.modules.conv.Conv3d"
    };
    let norm = if dim == 2 {
        "torch.nn.modules.instancenorm.InstanceNorm2d"
    } else {
        "torch.nn.modules.instancenorm.InstanceNorm3d"
    };
    json!({
        "data_identifier": format!("nnUNetPlans_{name}"),
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": planned.batch_size,
        "patch_size": planned.patch_size,
        "median_image_size_in_voxels": median_shape,
        "spacing": spacing,
        "normalization_schemes": schemes,
        "use_mask_for_norm": use_mask,
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": resampling(false, 3),
        "resampling_fn_seg_kwargs": resampling(true, 1),
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": resampling(false, 1),
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": n_stages,
                "features_per_stage": planned.features,
                "conv_op": conv,
                "kernel_sizes": planned.kernel_sizes,
                "strides": planned.strides,
                "n_conv_per_stage": vec![2; n_stages],
                "n_conv_per_stage_decoder": vec![2; n_stages - 1],
                "conv_bias": true,
                "norm_op": norm,
                "norm_op_kwargs": {"eps": 1e-5, "affine": true},
                "dropout_op": null,
                "dropout_op_kwargs": null,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": true}
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]
        },
        "batch_dice": batch_dice
    })
}

/// An `nnUNetPlans.json` document (key order as nnU-Net writes it).
#[derive(Debug, Clone, PartialEq)]
pub struct Plans {
    /// The whole document.
    pub value: Value,
}

impl Plans {
    /// Plans the `2d` and (for volumes) `3d_fullres` configurations of a data set.
    pub fn plan(dataset_name: &str, dataset: &DatasetJson, fingerprint: &Fingerprint) -> Self {
        let target = target_spacing(fingerprint);
        let worst = (0..3).fold(0, |best, a| if target[a] > target[best] { a } else { best });
        let forward: Vec<usize> = std::iter::once(worst).chain((0..3).filter(|&a| a != worst)).collect();
        let mut backward = vec![0; 3];
        forward.iter().enumerate().for_each(|(i, &f)| backward[f] = i);
        let new_shapes: Vec<[f64; 3]> = fingerprint
            .spacings
            .iter()
            .zip(&fingerprint.shapes_after_crop)
            .map(|(spacing, shape)| [0, 1, 2].map(|a| (spacing[a] / target[a] * shape[a] as f64).round_ties_even()))
            .collect();
        let median: Vec<f64> = forward
            .iter()
            .map(|&a| percentile(&column(&new_shapes, a), 50.0))
            .collect();
        let target_t: Vec<f64> = forward.iter().map(|&a| target[a]).collect();
        let num_training = dataset.num_training.unwrap_or(fingerprint.spacings.len() as u64) as f64;
        let dataset_voxels = median.iter().product::<f64>() * num_training;
        let num_classes = dataset.labels.len();

        let mut configurations = Map::new();
        let planned_2d = plan_configuration(&target_t[1..], &median[1..], dataset_voxels, num_classes);
        let _ = configurations.insert(
            "2d".into(),
            configuration_json(
                "2d",
                &planned_2d,
                &median[1..],
                &target_t[1..],
                dataset,
                fingerprint,
                true,
            ),
        );
        if median[0] != 1.0 {
            let planned = plan_configuration(&target_t, &median, dataset_voxels, num_classes);
            let _ = configurations.insert(
                "3d_fullres".into(),
                configuration_json("3d_fullres", &planned, &median, &target_t, dataset, fingerprint, false),
            );
        }
        let original_spacing: Vec<f64> = forward
            .iter()
            .map(|&a| percentile(&column(&fingerprint.spacings, a), 50.0))
            .collect();
        let shapes: Vec<[f64; 3]> = fingerprint
            .shapes_after_crop
            .iter()
            .map(|s| s.map(|v| v as f64))
            .collect();
        let original_shape: Vec<i64> = forward
            .iter()
            .map(|&a| percentile(&column(&shapes, a), 50.0).round_ties_even() as i64)
            .collect();
        let value = json!({
            "dataset_name": dataset_name,
            "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": original_spacing,
            "original_median_shape_after_transp": original_shape,
            "image_reader_writer": "SimpleITKIO",
            "transpose_forward": forward,
            "transpose_backward": backward,
            "configurations": configurations,
            "experiment_planner_used": "ExperimentPlanner",
            "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel":
                serde_json::to_value(&fingerprint.foreground_intensity_properties_per_channel).unwrap_or(Value::Null),
        });
        Self { value }
    }

    /// Reads a plans file.
    ///
    /// # Errors
    ///
    /// When the file cannot be read or is not a JSON object with `configurations`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            message: format!("not valid JSON: {e}"),
        })?;
        if !value["configurations"].is_object() {
            return Err(Error::Json {
                path: path.to_path_buf(),
                message: "missing key \"configurations\"".into(),
            });
        }
        Ok(Self { value })
    }

    /// Writes the plans atomically, indented by 4 as nnU-Net writes them (keys not sorted).
    ///
    /// # Errors
    ///
    /// When the file cannot be written.
    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomic(path, |out: &mut dyn Write| {
            let mut serializer = serde_json::Serializer::with_formatter(
                &mut *out,
                serde_json::ser::PrettyFormatter::with_indent(b"    "),
            );
            serde::Serialize::serialize(&self.value, &mut serializer).map_err(std::io::Error::other)
        })
    }

    /// A configuration with `inherits_from` resolved (parent copied, then a shallow update
    /// with the child's keys), as nnU-Net's `PlansManager.get_configuration`.
    ///
    /// # Errors
    ///
    /// When the configuration or a parent is missing, or inheritance is circular.
    pub fn configuration(&self, name: &str) -> Result<Map<String, Value>> {
        let mut chain = vec![name.to_string()];
        let mut resolved = Map::new();
        let mut layers = Vec::new();
        let mut current = name.to_string();
        loop {
            let config = self.value["configurations"][&current].as_object().ok_or_else(|| {
                Error::Plan(format!(
                    "no configuration {current:?} in the plans (known: {})",
                    self.configuration_names().join(", ")
                ))
            })?;
            layers.push(config.clone());
            match config.get("inherits_from").and_then(Value::as_str) {
                Some(parent) if chain.iter().any(|c| c == parent) => {
                    return Err(Error::Plan(format!(
                        "circular inherits_from: {} -> {parent}",
                        chain.join(" -> ")
                    )))
                }
                Some(parent) => {
                    chain.push(parent.to_string());
                    current = parent.to_string();
                }
                None => break,
            }
        }
        for layer in layers.into_iter().rev() {
            resolved.extend(layer);
        }
        Ok(resolved)
    }

    /// The configuration names, in file order.
    pub fn configuration_names(&self) -> Vec<String> {
        self.value["configurations"]
            .as_object()
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Adds MedDINOv3's derived configuration `2d_{patch}`: inherits `2d`, patch `patch²`,
    /// spacing `2d spacing × 2d patch / patch`, its own data identifier. Returns its name.
    ///
    /// # Errors
    ///
    /// When the plans have no `2d` configuration with a 2-D spacing and patch size.
    pub fn add_derived_2d(&mut self, patch: usize) -> Result<String> {
        let base = self.configuration("2d")?;
        let numbers = |key: &str| -> Result<Vec<f64>> {
            base.get(key)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_f64).collect::<Vec<_>>())
                .filter(|v| v.len() == 2)
                .ok_or_else(|| Error::Plan(format!("configuration 2d needs a 2-entry {key}")))
        };
        let (spacing, patch_2d) = (numbers("spacing")?, numbers("patch_size")?);
        let name = format!("2d_{patch}");
        let derived = json!({
            "inherits_from": "2d",
            "data_identifier": format!("nnUNetPlans_{name}"),
            "preprocessor_name": "DefaultPreprocessor",
            "patch_size": [patch, patch],
            "spacing": [spacing[0] * patch_2d[0] / patch as f64, spacing[1] * patch_2d[1] / patch as f64],
        });
        if let Some(configurations) = self.value["configurations"].as_object_mut() {
            let _ = configurations.insert(name.clone(), derived);
        }
        Ok(name)
    }
}
