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
//! Both start from the classes' boundary voxels, found in one pass over each label map
//! (`boundary_voxels`), and measure distances between the two surfaces' points only
//! (module `nearest`), so after that pass the cost follows the surfaces rather than the volume:
//! cheap for small organs in large volumes, and for predictions strewn with small false
//! positives.

pub mod monai;
mod nearest;
pub mod surfel;
mod surfel_normals;

use ndarray::ArrayViewD;
use rayon::prelude::*;

use crate::grid::{grids, BoundingBox, ClassLookup, Dims, Grid, SKIP_CHUNK};
use crate::overlap::class_stats;
use nearest::Point;

/// Both label maps as grids, and the union box of `class` in them (`None` when absent
/// from both): what every single-class surface computation starts from.
#[allow(clippy::type_complexity)]
fn class_region<'a, 'b, L: Copy + PartialEq + Sync>(
    prediction: ArrayViewD<'a, L>,
    reference: ArrayViewD<'b, L>,
    class: L,
    spacing: &[f64],
) -> crate::Result<(Grid<'a, L>, Grid<'b, L>, Option<BoundingBox>)> {
    let (prediction, reference) = grids(prediction, reference, spacing)?;
    let stats = class_stats(&prediction, &reference, &[class]);
    let region = stats
        .first()
        .and_then(|s| BoundingBox::union(s.prediction_box, s.reference_box));
    Ok((prediction, reference, region))
}

/// The boundary voxels of each of `classes`, in C order: voxels of the class with a face
/// neighbour (on the image's axes) of another label or outside the array. They are MONAI's
/// surface (`mask XOR erosion(mask)`), and every surface element of DeepMind's touches one
/// (face neighbours connect the 2×2(×2) voxels around a corner, so where the class meets
/// another label there, two face neighbours differ). One parallel pass over planes for all
/// classes at once, so the cost of a volume is paid once however many classes spread over
/// it, and what follows costs what the surfaces cost.
pub(crate) fn boundary_voxels<L: Copy + PartialEq + Sync>(grid: &Grid<'_, L>, classes: &[L]) -> Vec<Vec<Point>> {
    let data = grid.data.as_standard_layout();
    let (nz, ny, nx) = data.dim();
    let m = data.as_slice().unwrap_or_default();
    let plane = ny * nx;
    let through_planes = grid.dims == Dims::Three;
    let per_plane: Vec<Vec<Vec<Point>>> = (0..nz)
        .into_par_iter()
        .map(|z| {
            let mut points = vec![Vec::new(); classes.len()];
            let mut lookup = ClassLookup::new(classes);
            for y in 0..ny {
                let row = z * plane + y * nx;
                let mut x = 0;
                while x < nx {
                    let i = row + x;
                    let v = m[i];
                    let Some(class) = lookup.index(v) else {
                        // Not a class (background): skip its run a chunk at a time.
                        let end = (x + SKIP_CHUNK).min(nx);
                        let run = m[i..row + end].iter().fold(true, |same, &w| same & (w == v));
                        x = if run { end } else { x + 1 };
                        continue;
                    };
                    let in_plane_edge = x == 0
                        || x + 1 == nx
                        || m[i - 1] != v
                        || m[i + 1] != v
                        || y == 0
                        || y + 1 == ny
                        || m[i - nx] != v
                        || m[i + nx] != v;
                    let across_planes =
                        through_planes && (z == 0 || z + 1 == nz || m[i - plane] != v || m[i + plane] != v);
                    if in_plane_edge || across_planes {
                        points[class].push([z, y, x].map(|i| i as i32));
                    }
                    x += 1;
                }
            }
            points
        })
        .collect();
    (0..classes.len())
        .map(|class| per_plane.iter().flat_map(|plane| &plane[class]).copied().collect())
        .collect()
}

/// The boundary voxels of one class (see `boundary_voxels`).
fn class_boundary<L: Copy + PartialEq + Sync>(grid: &Grid<'_, L>, class: L) -> Vec<Point> {
    boundary_voxels(grid, &[class]).pop().unwrap_or_default()
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

/// The spec's test configurations (nnunet-reference.md §8.3), shared by both definitions.
#[cfg(test)]
mod fixtures {
    use ndarray::{s, Array2, Array3, ArrayD};

    /// 20×20: gt[5:12, 5:12], pred[6:14, 5:11], as (prediction, reference).
    pub(super) fn squares_2d() -> (ArrayD<bool>, ArrayD<bool>) {
        let square = |rows: std::ops::Range<usize>, cols: std::ops::Range<usize>| {
            let mut m = Array2::from_elem((20, 20), false);
            m.slice_mut(s![rows, cols]).fill(true);
            m.into_dyn()
        };
        (square(6..14, 5..11), square(5..12, 5..12))
    }

    /// 10×12×14: gt[2:7, 3:9, 4:10], pred[3:8, 3:10, 5:10], as (prediction, reference).
    pub(super) fn boxes_3d() -> (ArrayD<bool>, ArrayD<bool>) {
        let mut gt = Array3::from_elem((10, 12, 14), false);
        gt.slice_mut(s![2..7, 3..9, 4..10]).fill(true);
        let mut pred = Array3::from_elem((10, 12, 14), false);
        pred.slice_mut(s![3..8, 3..10, 5..10]).fill(true);
        (pred.into_dyn(), gt.into_dyn())
    }

    /// 8×8 with gt[2:5, 2:5] and an empty mask, as (empty, gt).
    pub(super) fn empty_and_square() -> (ArrayD<bool>, ArrayD<bool>) {
        let mut gt = Array2::from_elem((8, 8), false);
        gt.slice_mut(s![2..5, 2..5]).fill(true);
        (Array2::from_elem((8, 8), false).into_dyn(), gt.into_dyn())
    }
}
