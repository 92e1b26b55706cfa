//! nnU-Net's `DefaultPreprocessor.run_case_npy` for one case: transpose, crop to nonzero,
//! normalise, resample to the configuration's spacing (nnU-Net v2, <https://github.com/MIC-DKFZ/nnUNet>).
//!
//! 2-D configurations never resample the slice axis: their target spacing is the case's own
//! slice spacing followed by the configuration's in-plane spacing.

pub mod normalize;
pub mod resample;
pub mod store;

use ndarray::{Array4, Axis, CowArray, Ix4};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::crop::{crop_to_nonzero_owned, Cropped};
use crate::error::{Error, Result};
use crate::fingerprint::IntensityProperties;
use crate::io::{ItkGeometry, Volume};
use normalize::Normalization;
use resample::{new_shape, resample_data, resample_seg, separate_z_axis};

/// The reader geometry nnU-Net keeps for export (`sitk_stuff`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SitkStuff {
    /// ITK spacing (x, y, z).
    pub spacing: Vec<f64>,
    /// ITK origin.
    pub origin: Vec<f64>,
    /// ITK direction, row-major.
    pub direction: Vec<f64>,
}

/// What nnU-Net stores about a preprocessed case (its `.pkl`), minus class locations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseProperties {
    /// Reader geometry.
    pub sitk_stuff: SitkStuff,
    /// Spacing in reader (Z, Y, X) order.
    pub spacing: [f64; 3],
    /// Transposed shape before cropping.
    pub shape_before_cropping: [usize; 3],
    /// `[start, end)` per transposed axis.
    pub bbox_used_for_cropping: [[usize; 2]; 3],
    /// Transposed shape after cropping.
    pub shape_after_cropping_and_before_resampling: [usize; 3],
}

/// A preprocessed case.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessed {
    /// (C, Z, Y, X) float32.
    pub data: Array4<f32>,
    /// (1, Z, Y, X): −1 outside the nonzero mask, 0, labels.
    pub seg: Array4<i16>,
    /// Geometry and crop bookkeeping.
    pub properties: CaseProperties,
}

/// A resolved plans configuration, as preprocessing needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessingPlan {
    /// `transpose_forward`.
    pub transpose_forward: [usize; 3],
    /// Target spacing (2 entries for 2-D configurations, 3 for 3-D), transposed order.
    pub spacing: Vec<f64>,
    /// Per channel scheme.
    pub normalization: Vec<Normalization>,
    /// Per channel `use_mask_for_norm`.
    pub use_mask_for_norm: Vec<bool>,
    /// Per channel data set intensity properties.
    pub intensity_properties: Vec<Option<IntensityProperties>>,
}

impl PreprocessingPlan {
    /// Reads what preprocessing needs from a plans document and one resolved configuration.
    ///
    /// # Errors
    ///
    /// When a key is missing or malformed (named in the message).
    pub fn from_plans(plans: &Value, configuration: &Map<String, Value>) -> Result<Self> {
        let fail = |key: &str| Error::Plan(format!("missing or malformed {key}"));
        let numbers = |v: &Value, key: &str| -> Result<Vec<f64>> {
            v.as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .ok_or_else(|| fail(key))
        };
        let tf = numbers(&plans["transpose_forward"], "transpose_forward")?;
        let transpose_forward: [usize; 3] = [0, 1, 2].map(|i| tf.get(i).copied().unwrap_or(i as f64) as usize);
        let spacing = numbers(configuration.get("spacing").ok_or_else(|| fail("spacing"))?, "spacing")?;
        let normalization = configuration
            .get("normalization_schemes")
            .and_then(Value::as_array)
            .ok_or_else(|| fail("normalization_schemes"))?
            .iter()
            .map(|n| Normalization::from_name(n.as_str().unwrap_or_default()))
            .collect::<Result<Vec<_>>>()?;
        let use_mask_for_norm = configuration
            .get("use_mask_for_norm")
            .and_then(Value::as_array)
            .ok_or_else(|| fail("use_mask_for_norm"))?
            .iter()
            .map(|v| v.as_bool().unwrap_or(false))
            .collect();
        let intensity_properties = (0..normalization.len())
            .map(|c| {
                serde_json::from_value(plans["foreground_intensity_properties_per_channel"][c.to_string()].clone()).ok()
            })
            .collect();
        Ok(Self {
            transpose_forward,
            spacing,
            normalization,
            use_mask_for_norm,
            intensity_properties,
        })
    }

    /// The spacing a case of (transposed) spacing `original` is resampled to: the
    /// configuration's, with the case's own slice spacing kept for 2-D configurations.
    ///
    /// # Errors
    ///
    /// When the configuration's spacing has neither 2 nor 3 entries.
    pub fn target_spacing(&self, original: [f64; 3]) -> Result<[f64; 3]> {
        match self.spacing[..] {
            [y, x] => Ok([original[0], y, x]),
            [z, y, x] => Ok([z, y, x]),
            _ => Err(Error::Plan(format!(
                "spacing {:?} must have 2 or 3 entries",
                self.spacing
            ))),
        }
    }
}

impl CaseProperties {
    /// The bookkeeping of a case that was neither cropped nor resampled: `shape` (Z, Y, X)
    /// at `spacing`, identity direction, origin 0 (synthetic and test data).
    pub fn uncropped(shape: [usize; 3], spacing: [f64; 3]) -> Self {
        Self {
            sitk_stuff: SitkStuff {
                spacing: vec![spacing[2], spacing[1], spacing[0]],
                origin: vec![0.0; 3],
                direction: vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            },
            spacing,
            shape_before_cropping: shape,
            bbox_used_for_cropping: [[0, shape[0]], [0, shape[1]], [0, shape[2]]],
            shape_after_cropping_and_before_resampling: shape,
        }
    }
}

/// Preprocesses one case (images and, for training, its label as read).
///
/// # Errors
///
/// When the plan's channels do not match the image's or the spacing is malformed.
pub fn preprocess_case(images: &Volume, label: Option<&Volume>, plan: &PreprocessingPlan) -> Result<Preprocessed> {
    let seg = label.map(|label| label.data.mapv(|v| v as i16));
    preprocess_arrays(
        CowArray::from(images.data.view()),
        seg,
        images.spacing,
        &images.geometry,
        plan,
    )
}

/// [`preprocess_case`] of volumes the caller gives up, with the same result: each array is
/// dropped as soon as it is used, and what needs no change (the transpose, crop or resampling
/// of most CT) is kept instead of copied, so a case needs little more than its own size.
///
/// # Errors
///
/// As [`preprocess_case`].
pub fn preprocess_case_owned(images: Volume, label: Option<Volume>, plan: &PreprocessingPlan) -> Result<Preprocessed> {
    let seg = label.map(|label| label.data.mapv(|v| v as i16));
    let Volume {
        data,
        spacing,
        geometry,
    } = images;
    preprocess_arrays(CowArray::from(data), seg, spacing, &geometry, plan)
}

/// `array` with its axes permuted by `order`, in standard layout (copied only when needed).
fn transposed<A: Clone>(array: CowArray<'_, A, Ix4>, order: [usize; 4]) -> Array4<A> {
    let permuted = array.permuted_axes(order);
    if permuted.is_standard_layout() {
        permuted.into_owned()
    } else {
        permuted.as_standard_layout().into_owned()
    }
}

/// The steps of [`preprocess_case`] on the image data (C, Z, Y, X) and the label converted
/// to i16, both in reader order.
fn preprocess_arrays(
    data: CowArray<'_, f32, Ix4>,
    seg: Option<Array4<i16>>,
    spacing: [f64; 3],
    geometry: &ItkGeometry,
    plan: &PreprocessingPlan,
) -> Result<Preprocessed> {
    let channels = data.dim().0;
    if plan.normalization.len() != channels {
        return Err(Error::Plan(format!(
            "the configuration normalises {} channel(s), the case has {channels}",
            plan.normalization.len()
        )));
    }
    let tf = plan.transpose_forward;
    let order = [0, 1 + tf[0], 1 + tf[1], 1 + tf[2]];
    let data = transposed(data, order);
    let seg = match seg {
        Some(seg) => transposed(CowArray::from(seg), order),
        None => {
            let (_, z, y, x) = data.dim();
            Array4::<i16>::zeros((1, z, y, x))
        }
    };
    let original_spacing = spacing;
    let spacing = tf.map(|a| original_spacing[a]);
    let shape_before = [data.dim().1, data.dim().2, data.dim().3];
    let Cropped {
        data: mut cropped,
        seg: cropped_seg,
        bbox,
    } = crop_to_nonzero_owned(data, seg);
    let shape_after = [cropped.dim().1, cropped.dim().2, cropped.dim().3];
    let target = plan.target_spacing(spacing)?;
    let shape = new_shape(shape_after, spacing, target);
    if shape.contains(&0) {
        return Err(Error::Plan(format!(
            "cropped to its nonzero region ({shape_after:?} voxels at {spacing:?} mm) and resampled to {target:?} mm, \
             the image has no voxels left ({shape:?})"
        )));
    }
    let seg0 = cropped_seg.index_axis(Axis(0), 0);
    for (c, mut channel) in cropped.outer_iter_mut().enumerate() {
        plan.normalization[c].apply(
            channel.view_mut(),
            seg0,
            plan.use_mask_for_norm.get(c).copied().unwrap_or(false),
            plan.intensity_properties.get(c).and_then(Option::as_ref),
        )?;
    }
    let separate = separate_z_axis(spacing, target);
    // Resampling to the same shape gives its input back (data and seg alike).
    let data = if shape == shape_after {
        cropped
    } else {
        let mut out = Array4::<f32>::zeros((channels, shape[0], shape[1], shape[2]));
        for (mut target, channel) in out.outer_iter_mut().zip(cropped.outer_iter()) {
            target.assign(&resample_data(channel, shape, separate));
        }
        drop(cropped);
        out
    };
    let seg = if shape == shape_after && cropped_seg.dim().0 == 1 {
        cropped_seg
    } else {
        resample_seg(seg0, shape, separate).insert_axis(Axis(0))
    };
    Ok(Preprocessed {
        data,
        seg,
        properties: CaseProperties {
            sitk_stuff: SitkStuff {
                spacing: geometry.spacing.clone(),
                origin: geometry.origin.clone(),
                direction: geometry.direction.clone(),
            },
            spacing: original_spacing,
            shape_before_cropping: shape_before,
            bbox_used_for_cropping: bbox,
            shape_after_cropping_and_before_resampling: shape_after,
        },
    })
}
