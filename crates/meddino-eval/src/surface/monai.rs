//! MONAI's boundary-voxel surface metrics, as MedDINOv3's metrics script calls them
//! (`compute_hausdorff_distance(percentile=95)`, `compute_surface_dice(use_subvoxels=False)`).
//!
//! Deliberately reproduced quirks of MONAI 1.6:
//! - a direction whose target surface is empty yields +∞ for each source boundary voxel, and
//!   when the *source* is the empty one it yields +∞ for each target voxel instead; so an
//!   empty prediction gives NSD 0, HD100 +∞ and HD95 NaN (`torch.quantile` interpolates
//!   between infinities);
//! - both masks empty gives NaN for every metric.

use ndarray::{Array3, ArrayViewD};
use rayon::prelude::*;

use super::{check_percentile, check_tolerance, class_region, distances_to};
use crate::grid::{crop_mask, BoundingBox, Dims, Grid};
use crate::Result;

/// Directed boundary-voxel distances (mm) between a prediction and a reference mask.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeDistances {
    /// From each prediction boundary voxel to the reference boundary (see the module docs
    /// for the lengths when a side is empty).
    pub prediction_to_reference: Vec<f64>,
    /// From each reference boundary voxel to the prediction boundary.
    pub reference_to_prediction: Vec<f64>,
}

impl EdgeDistances {
    /// The symmetric Hausdorff distance at `percentile` (100: the maximum): the larger of the
    /// two directed percentiles, each by linear interpolation as `torch.quantile`. NaN when
    /// both masks are empty.
    ///
    /// # Errors
    ///
    /// When `percentile` is outside [0, 100].
    pub fn hausdorff(&self, percentile: f64) -> Result<f64> {
        check_percentile(percentile)?;
        let a = directed_percentile(&self.prediction_to_reference, percentile);
        let b = directed_percentile(&self.reference_to_prediction, percentile);
        // torch.max over the pair propagates NaN.
        Ok(if a.is_nan() || b.is_nan() { f64::NAN } else { a.max(b) })
    }

    /// Normalised surface Dice at `tolerance_mm`: boundary voxels within the tolerance of the
    /// other surface, over all boundary voxels. NaN when both masks are empty.
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
        let within = self
            .prediction_to_reference
            .iter()
            .chain(&self.reference_to_prediction)
            .filter(|&&d| d <= tolerance_mm)
            .count();
        Ok(within as f64 / total as f64)
    }
}

/// `torch.quantile(d, p/100)` (linear interpolation, `torch.lerp` arithmetic), or the maximum
/// for p = 100; NaN for an empty vector.
fn directed_percentile(distances: &[f64], percentile: f64) -> f64 {
    if distances.is_empty() || distances.iter().any(|d| d.is_nan()) {
        return f64::NAN;
    }
    if percentile == 100.0 {
        // MONAI takes the plain maximum when no percentile is asked for.
        return distances.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    }
    let mut sorted = distances.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = percentile / 100.0 * (sorted.len() - 1) as f64;
    let (below, above) = (rank.floor() as usize, rank.ceil() as usize);
    let weight = rank - below as f64;
    let (start, end) = (sorted[below], sorted[above.min(sorted.len() - 1)]);
    if weight < 0.5 {
        start + weight * (end - start)
    } else {
        end - (end - start) * (1.0 - weight)
    }
}

/// MONAI's boundary voxels: in the mask, with a face neighbour (on the image's axes) outside
/// it. The crop carries a background margin, so the array border never needs a special case.
/// Planes run in parallel, each as flat slices (index arithmetic per voxel was the cost).
fn boundary(mask: &Array3<bool>, dims: Dims) -> Array3<bool> {
    let (nz, ny, nx) = mask.dim();
    let mask = mask.as_standard_layout();
    let m = mask.as_slice().unwrap_or_default();
    let plane = ny * nx;
    let mut out = vec![false; m.len()];
    let through_planes = dims == Dims::Three;
    out.par_chunks_mut(plane.max(1)).enumerate().for_each(|(z, out_plane)| {
        let base = z * plane;
        for y in 0..ny {
            for x in 0..nx {
                let i = base + y * nx + x;
                if !m[i] {
                    continue;
                }
                let in_plane_edge = x == 0
                    || x + 1 == nx
                    || !m[i - 1]
                    || !m[i + 1]
                    || y == 0
                    || y + 1 == ny
                    || !m[i - nx]
                    || !m[i + nx];
                let across_planes = through_planes && (z == 0 || z + 1 == nz || !m[i - plane] || !m[i + plane]);
                out_plane[y * nx + x] = in_plane_edge || across_planes;
            }
        }
    });
    Array3::from_shape_vec((nz, ny, nx), out).unwrap_or_else(|_| Array3::from_elem((nz, ny, nx), false))
}

/// One direction as MONAI's `get_surface_distance(source, target)` computes it.
fn directed(source: &Array3<bool>, target: &Array3<bool>, spacing: [f64; 3]) -> Vec<f64> {
    let count = |m: &Array3<bool>| m.iter().filter(|&&v| v).count();
    match distances_to(source, target, spacing) {
        None => vec![f64::INFINITY; count(source)],
        Some(_) if count(source) == 0 => vec![f64::INFINITY; count(target)],
        Some(distances) => distances,
    }
}

/// Boundary distances of one class inside `region` (the union box of both masks).
pub(crate) fn edge_distances_in<L: Copy + PartialEq>(
    prediction: &Grid<'_, L>,
    reference: &Grid<'_, L>,
    class: L,
    region: Option<BoundingBox>,
) -> EdgeDistances {
    let Some(region) = region else {
        return EdgeDistances {
            prediction_to_reference: Vec::new(),
            reference_to_prediction: Vec::new(),
        };
    };
    let dims = reference.dims;
    // A background margin of one voxel: boundary voxels on the array border stay boundary.
    let region = region.grown(dims.axes(), 1, 1);
    let pred_edges = boundary(&crop_mask(prediction.data, class, region), dims);
    let ref_edges = boundary(&crop_mask(reference.data, class, region), dims);
    EdgeDistances {
        prediction_to_reference: directed(&pred_edges, &ref_edges, reference.spacing),
        reference_to_prediction: directed(&ref_edges, &pred_edges, reference.spacing),
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
    Ok(edge_distances_in(&prediction, &reference, class, region))
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;

    use super::super::fixtures;
    use super::*;

    fn distances(pair: &(ndarray::ArrayD<bool>, ndarray::ArrayD<bool>), spacing: &[f64]) -> EdgeDistances {
        edge_distances(pair.0.view(), pair.1.view(), true, spacing).expect("valid")
    }

    /// The spec's MONAI test vectors (nnunet-reference.md §8.3; numpy re-implementation).
    #[test]
    fn spec_vectors() {
        let d = distances(&fixtures::squares_2d(), &[1.0, 1.0]);
        assert!((d.surface_dice(1.0).expect("tolerance") - 0.8125).abs() < 1e-12);
        assert_eq!(d.hausdorff(95.0).expect("percentile"), 2.0);
        let d = distances(&fixtures::squares_2d(), &[2.0, 0.5]);
        assert!((d.surface_dice(1.0).expect("tolerance") - 0.6666666666666666).abs() < 1e-12);
        assert_eq!(d.hausdorff(95.0).expect("percentile"), 4.0);
        let d = distances(&fixtures::boxes_3d(), &[3.0, 1.0, 0.8]);
        assert!((d.surface_dice(2.0).expect("tolerance") - 0.7290076335877863).abs() < 1e-12);
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
        assert!(directed_percentile(&[f64::INFINITY, f64::INFINITY], 95.0).is_nan());
        assert_eq!(
            directed_percentile(&[f64::INFINITY, f64::INFINITY], 100.0),
            f64::INFINITY
        );
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
