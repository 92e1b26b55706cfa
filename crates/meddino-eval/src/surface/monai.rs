//! MONAI's boundary-voxel surface metrics, as MedDINOv3's metrics script calls them
//! (`compute_hausdorff_distance(percentile=95)`, `compute_surface_dice(use_subvoxels=False)`).
//!
//! MONAI 1.6 works in float32, and so does this module, bit for bit on CPU:
//! - a distance is scipy's `KDTree` distance between boundary voxels at coordinates
//!   `index · spacing` (float64), rounded to float32 (see the `nearest` module);
//! - the NSD tolerance is rounded to float32 and compared with the float32 distances, and
//!   the NSD itself is a float32 quotient of the two counts;
//! - percentiles are `torch.quantile` on the float32 distances: the rank
//!   `f64(f32(p/100)) · (n − 1)`, its fraction as a float32 weight, and `torch.lerp`'s
//!   float32 arithmetic with a fused multiply-add, as PyTorch's CPU kernels compute it.
//!
//! Why it matters: a NIfTI spacing such as 1.2 mm is the float32 1.2000000476837158, so a
//! boundary voxel ten voxels away is 12.000000476837158 mm from the other surface: above a
//! 12 mm tolerance in float64, exactly on it in float32. MONAI counts it; so do we.
//!
//! Deliberately reproduced quirks of MONAI 1.6:
//! - a direction whose target surface is empty yields +∞ for each source boundary voxel, and
//!   when the *source* is the empty one it yields +∞ for each target voxel instead; so an
//!   empty prediction gives NSD 0, HD100 +∞ and HD95 NaN (`torch.quantile` interpolates
//!   between infinities);
//! - both masks empty gives NaN for every metric.

use ndarray::ArrayViewD;

use super::nearest::{nearest_distances, Arithmetic, Point};
use super::{check_percentile, check_tolerance, class_boundary, class_region};
use crate::grid::{BoundingBox, Dims};
use crate::Result;

/// Directed boundary-voxel distances (mm, float32 as MONAI's) between a prediction and a
/// reference mask.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeDistances {
    /// From each prediction boundary voxel to the reference boundary (see the module docs
    /// for the lengths when a side is empty).
    pub prediction_to_reference: Vec<f32>,
    /// From each reference boundary voxel to the prediction boundary.
    pub reference_to_prediction: Vec<f32>,
}

impl EdgeDistances {
    /// The symmetric Hausdorff distance at `percentile` (100: the maximum): the larger of the
    /// two directed percentiles, each by linear interpolation as `torch.quantile`. NaN when
    /// both masks are empty. A float32 value, as MONAI's.
    ///
    /// # Errors
    ///
    /// When `percentile` is outside [0, 100].
    pub fn hausdorff(&self, percentile: f64) -> Result<f64> {
        check_percentile(percentile)?;
        let a = directed_percentile(&self.prediction_to_reference, percentile);
        let b = directed_percentile(&self.reference_to_prediction, percentile);
        // torch.max over the pair propagates NaN.
        Ok(f64::from(if a.is_nan() || b.is_nan() { f32::NAN } else { a.max(b) }))
    }

    /// Normalised surface Dice at `tolerance_mm`: boundary voxels within the tolerance of the
    /// other surface, over all boundary voxels; the tolerance, the comparison and the
    /// quotient in float32, as MONAI's. NaN when both masks are empty.
    ///
    /// # Errors
    ///
    /// When the tolerance is negative or not finite.
    pub fn surface_dice(&self, tolerance_mm: f64) -> Result<f64> {
        check_tolerance(tolerance_mm)?;
        let total = self.prediction_to_reference.len() + self.reference_to_prediction.len();
        if total == 0 {
            return Ok(f64::NAN);
        }
        // torch compares a float32 tensor with a Python float in float32.
        let tolerance = tolerance_mm as f32;
        let within = self
            .prediction_to_reference
            .iter()
            .chain(&self.reference_to_prediction)
            .filter(|&&d| d <= tolerance)
            .count();
        // An int64 count over a Python int: a float32 true division.
        Ok(f64::from(within as f32 / total as f32))
    }
}

/// `torch.quantile(d, p/100)` on float32 distances (see the module docs), or the maximum for
/// p = 100 (MONAI calls no quantile then); NaN for an empty vector.
fn directed_percentile(distances: &[f32], percentile: f64) -> f32 {
    if distances.is_empty() || distances.iter().any(|d| d.is_nan()) {
        return f32::NAN;
    }
    if percentile == 100.0 {
        return distances.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    }
    let mut sorted = distances.to_vec();
    sorted.sort_unstable_by(f32::total_cmp);
    let q = f64::from((percentile / 100.0) as f32);
    let rank = q * (sorted.len() - 1) as f64;
    let (below, above) = (rank.floor() as usize, rank.ceil() as usize);
    let weight = (rank - rank.floor()) as f32;
    let (start, end) = (sorted[below], sorted[above.min(sorted.len() - 1)]);
    // torch.lerp: the branch keeps the result exact at both ends; one rounding each.
    let difference = end - start;
    if weight.abs() < 0.5 {
        weight.mul_add(difference, start)
    } else {
        (-difference).mul_add(1.0 - weight, end)
    }
}

/// One direction as MONAI's `get_surface_distance(source, target)` computes it.
fn directed(source: &[Point], target: &[Point], spacing: [f64; 3]) -> Vec<f32> {
    match nearest_distances(source, target, spacing, Arithmetic::ScaledCoordinates) {
        None => vec![f32::INFINITY; source.len()],
        Some(_) if source.is_empty() => vec![f32::INFINITY; target.len()],
        Some(distances) => distances.into_iter().map(|d| d as f32).collect(),
    }
}

/// Boundary distances of one class from its boundary voxels in each map (C order, array
/// coordinates) and the union box of both masks (`None` when the class is in neither).
pub(crate) fn edge_distances_between(
    prediction: &[Point],
    reference: &[Point],
    region: Option<BoundingBox>,
    dims: Dims,
    spacing: [f64; 3],
) -> EdgeDistances {
    let Some(region) = region else {
        return EdgeDistances {
            prediction_to_reference: Vec::new(),
            reference_to_prediction: Vec::new(),
        };
    };
    // MONAI measures in its crop, the union box grown by one voxel: coordinates relative to
    // that corner (which matters to the float64 products when the spacing is no float32).
    let corner = region.grown(dims.axes(), 1, 1).min;
    let local = |points: &[Point]| -> Vec<Point> {
        points
            .iter()
            .map(|p| [0, 1, 2].map(|a| (p[a] as isize - corner[a]) as i32))
            .collect()
    };
    let (prediction, reference) = (local(prediction), local(reference));
    EdgeDistances {
        prediction_to_reference: directed(&prediction, &reference, spacing),
        reference_to_prediction: directed(&reference, &prediction, spacing),
    }
}

/// Boundary-voxel distances of `class` between two 2-D or 3-D label maps with `spacing` (mm,
/// array order). Pass boolean masks with `class = true` to score a single structure.
///
/// # Errors
///
/// When the shapes differ, the maps are not 2-D or 3-D, or the spacing does not fit.
pub fn edge_distances<L: Copy + PartialEq + Sync>(
    prediction: ArrayViewD<'_, L>,
    reference: ArrayViewD<'_, L>,
    class: L,
    spacing: &[f64],
) -> Result<EdgeDistances> {
    let (prediction, reference, region) = class_region(prediction, reference, class, spacing)?;
    Ok(edge_distances_between(
        &class_boundary(&prediction, class),
        &class_boundary(&reference, class),
        region,
        reference.dims,
        reference.spacing,
    ))
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;

    use super::super::fixtures;
    use super::*;

    fn distances(pair: &(ndarray::ArrayD<bool>, ndarray::ArrayD<bool>), spacing: &[f64]) -> EdgeDistances {
        edge_distances(pair.0.view(), pair.1.view(), true, spacing).expect("valid")
    }

    /// The spec's MONAI test vectors (nnunet-reference.md §8.3; a numpy re-implementation in
    /// float64, so our float32 NSD is that value rounded to float32).
    #[test]
    fn spec_vectors() {
        let float32 = |v: f64| f64::from(v as f32);
        let d = distances(&fixtures::squares_2d(), &[1.0, 1.0]);
        assert_eq!(d.surface_dice(1.0).expect("tolerance"), 0.8125);
        assert_eq!(d.hausdorff(95.0).expect("percentile"), 2.0);
        let d = distances(&fixtures::squares_2d(), &[2.0, 0.5]);
        assert_eq!(d.surface_dice(1.0).expect("tolerance"), float32(0.6666666666666666));
        assert_eq!(d.hausdorff(95.0).expect("percentile"), 4.0);
        let d = distances(&fixtures::boxes_3d(), &[3.0, 1.0, 0.8]);
        assert_eq!(d.surface_dice(2.0).expect("tolerance"), float32(0.7290076335877863));
        assert_eq!(d.hausdorff(95.0).expect("percentile"), 3.0);
    }

    #[test]
    fn empty_prediction_and_both_empty() {
        let (empty, gt) = fixtures::empty_and_square();
        let d = distances(&(empty.clone(), gt), &[1.0, 1.0]);
        assert_eq!(d.surface_dice(1.0).expect("tolerance"), 0.0);
        assert_eq!(d.hausdorff(100.0).expect("percentile"), f64::INFINITY);
        assert!(d.hausdorff(95.0).expect("percentile").is_nan());
        let d = distances(&(empty.clone(), empty), &[1.0, 1.0]);
        assert!(d.surface_dice(1.0).expect("tolerance").is_nan());
        assert!(d.hausdorff(95.0).expect("percentile").is_nan());
    }

    #[test]
    fn objects_on_the_border_have_boundary_there() {
        // A full image: every voxel on the array border is a boundary voxel.
        let full = Array2::from_elem((4, 4), true);
        let d = edge_distances(full.view().into_dyn(), full.view().into_dyn(), true, &[1.0, 1.0]).expect("valid");
        assert_eq!(d.prediction_to_reference.len(), 12);
        assert_eq!(d.hausdorff(100.0).expect("percentile"), 0.0);
    }

    #[test]
    fn one_voxel_objects() {
        let mut a = Array2::from_elem((5, 5), false);
        a[[1, 1]] = true;
        let mut b = Array2::from_elem((5, 5), false);
        b[[4, 1]] = true;
        let d = edge_distances(a.view().into_dyn(), b.view().into_dyn(), true, &[2.0, 1.0]).expect("valid");
        assert_eq!(d.hausdorff(95.0).expect("percentile"), 6.0);
        assert_eq!(d.surface_dice(6.0).expect("tolerance"), 1.0);
        assert_eq!(d.surface_dice(5.9).expect("tolerance"), 0.0);
    }

    #[test]
    fn quantile_interpolates_like_torch() {
        assert_eq!(directed_percentile(&[0.0, 10.0], 95.0), 9.5);
        assert_eq!(directed_percentile(&[3.0, 1.0, 2.0], 50.0), 2.0);
        assert!(directed_percentile(&[f32::INFINITY, f32::INFINITY], 95.0).is_nan());
        assert_eq!(
            directed_percentile(&[f32::INFINITY, f32::INFINITY], 100.0),
            f32::INFINITY
        );
    }

    /// Values of `torch.quantile(torch.tensor(x, dtype=torch.float32), q)` (torch 2.15 CPU):
    /// the rank, weight and fused lerp in float32 pick these exact float32 values.
    #[test]
    fn quantile_rounds_like_torch_float32() {
        // torch's `.item()` values: float32 numbers printed as float64.
        let cases: [(&[f32], f64); 3] = [
            (&[0.1, 0.7, 2.3], 2.1399998664855957),
            (&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0], 8.550000190734863),
            (&[20.9, 3.3, 1.0, 8.2, 7.1], 18.35999870300293),
        ];
        for (x, torch) in cases {
            assert_eq!(f64::from(directed_percentile(x, 95.0)), torch, "{x:?}");
        }
    }

    /// MONAI 1.6.1's answers for float32 spacings that are not exact decimals (issue 17):
    /// whole-voxel distances land exactly on the tolerance in float32.
    #[test]
    fn tolerance_ties_in_float32() {
        // 60×80, spacing (0.85, 1.2) mm as NIfTI stores them; two boxes, the prediction
        // shifted by 10 columns (12 mm); NSD at 12 mm is 1.0 for both classes in MONAI.
        let spacing = [0.85f32 as f64, 1.2f32 as f64];
        let mut label = Array2::<u8>::zeros((60, 80));
        label.slice_mut(ndarray::s![10..40, 10..30]).fill(1);
        label.slice_mut(ndarray::s![12..30, 40..60]).fill(2);
        let mut prediction = Array2::<u8>::zeros((60, 80));
        prediction
            .slice_mut(ndarray::s![.., 10..])
            .assign(&label.slice(ndarray::s![.., ..70]));
        for class in [1, 2] {
            let d =
                edge_distances(prediction.view().into_dyn(), label.view().into_dyn(), class, &spacing).expect("valid");
            assert_eq!(d.surface_dice(12.0).expect("tolerance"), 1.0, "class {class}");
        }
        // 0.2 mm pixels, a 5-pixel shift, the default 1 mm tolerance: MONAI 1.0.
        let spacing = [0.2f32 as f64, 0.2f32 as f64];
        let mut label = Array2::from_elem((40, 40), false);
        label.slice_mut(ndarray::s![10..30, 8..20]).fill(true);
        let mut prediction = Array2::from_elem((40, 40), false);
        prediction.slice_mut(ndarray::s![10..30, 13..25]).fill(true);
        let d = edge_distances(prediction.view().into_dyn(), label.view().into_dyn(), true, &spacing).expect("valid");
        assert_eq!(d.surface_dice(1.0).expect("tolerance"), 1.0);
        assert_eq!(d.hausdorff(100.0).expect("percentile"), f64::from(1.0f32));
    }

    #[test]
    fn rejects_bad_parameters() {
        let d = EdgeDistances {
            prediction_to_reference: vec![1.0],
            reference_to_prediction: vec![1.0],
        };
        assert!(d.hausdorff(101.0).is_err());
        assert!(d.surface_dice(-1.0).is_err());
        assert!(d.surface_dice(f64::NAN).is_err());
    }
}
