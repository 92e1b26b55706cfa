//! Surface-distance metrics: Hausdorff distances and normalised surface Dice (NSD).
//!
//! Two definitions of "surface", as the two reference libraries have them:
//!
//! - [`monai`]: MONAI's default (`compute_hausdorff_distance`, `compute_surface_dice` with
//!   `use_subvoxels=False`): the surface is the set of boundary voxels (`mask XOR
//!   erosion(mask)`, face neighbours, outside the array counts as background) and every
//!   boundary voxel weighs 1. This is what MedDINOv3's `compute_metrics.py` reports.
//! - [`surfel`]: DeepMind's surface-distance (`compute_surface_distances`): surface elements
//!   on the voxel-corner grid, weighted by their marching-cubes area (contour length in 2-D).
//!
//! Both crop the work to the bounding box of the two masks (plus a margin), which gives the
//! same result as the whole array and keeps large volumes with small organs cheap.

pub mod monai;
pub mod surfel;
mod surfel_normals;

use ndarray::{Array3, Zip};

use crate::edt::squared_distance_transform;

/// Distances in mm from each `true` point of `from` to the nearest `true` point of `to`
/// (both on the same grid), in C order of `from`. `None` when `to` has no point.
fn distances_to(from: &Array3<bool>, to: &Array3<bool>, spacing: [f64; 3]) -> Option<Vec<f64>> {
    if !to.iter().any(|&t| t) {
        return None;
    }
    let mut grid = to.mapv(|t| if t { 0.0 } else { f64::INFINITY });
    squared_distance_transform(&mut grid, spacing);
    let mut distances = Vec::new();
    Zip::from(from).and(&grid).for_each(|&f, &d| {
        if f {
            distances.push(d.sqrt());
        }
    });
    Some(distances)
}

/// Validates a tolerance in mm.
fn check_tolerance(tolerance_mm: f64) -> crate::Result<()> {
    if tolerance_mm.is_finite() && tolerance_mm >= 0.0 {
        Ok(())
    } else {
        Err(crate::Error::InvalidParameter {
            what: "tolerance",
            value: tolerance_mm,
            expected: "finite and >= 0 mm",
        })
    }
}

/// Validates a percentile.
fn check_percentile(percentile: f64) -> crate::Result<()> {
    if (0.0..=100.0).contains(&percentile) {
        Ok(())
    } else {
        Err(crate::Error::InvalidParameter {
            what: "percentile",
            value: percentile,
            expected: "in [0, 100]",
        })
    }
}
