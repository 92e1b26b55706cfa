//! DeepMind surface-distance's surface-element metrics (`compute_surface_distances`,
//! `compute_surface_dice_at_tolerance`, `compute_robust_hausdorff`,
//! `compute_average_surface_distance`).
//!
//! The surface lives on the voxel-corner grid: each corner gets the neighbour code of the
//! 2×2(×2) voxels around it (outside the array counts as background), corners whose code is
//! neither empty nor full are surface elements, and each weighs its marching-cubes area (3-D)
//! or contour length (2-D) for the given spacing.

use ndarray::ArrayViewD;

use super::nearest::{bounds, nearest_distances, Arithmetic, Point};
use super::surfel_normals::NEIGHBOUR_CODE_TO_NORMALS;
use super::{check_percentile, check_tolerance, class_boundary};
use crate::grid::{grids, Dims, Grid};
use crate::Result;

/// Directed surface-element distances (mm) with the elements' areas (mm², or mm in 2-D),
/// each direction sorted by distance.
#[derive(Debug, Clone, PartialEq)]
pub struct SurfelDistances {
    /// (distance to the prediction surface, area) for each reference surface element.
    pub reference_to_prediction: Vec<(f64, f64)>,
    /// (distance to the reference surface, area) for each prediction surface element.
    pub prediction_to_reference: Vec<(f64, f64)>,
}

impl SurfelDistances {
    /// Area-weighted surface Dice at `tolerance_mm`: 0 when one surface is empty, NaN when
    /// both are.
    ///
    /// # Errors
    ///
    /// When the tolerance is negative or not finite.
    pub fn surface_dice(&self, tolerance_mm: f64) -> Result<f64> {
        check_tolerance(tolerance_mm)?;
        let within = |v: &[(f64, f64)]| area(v.iter().filter(|(d, _)| *d <= tolerance_mm));
        let total = |v: &[(f64, f64)]| area(v.iter());
        let overlap = within(&self.reference_to_prediction) + within(&self.prediction_to_reference);
        Ok(overlap / (total(&self.reference_to_prediction) + total(&self.prediction_to_reference)))
    }

    /// The robust Hausdorff distance at `percentile` (100: the maximum): per direction, the
    /// smallest distance whose cumulative area fraction reaches the percentile; the larger of
    /// the two. +∞ when either surface is empty.
    ///
    /// # Errors
    ///
    /// When `percentile` is outside [0, 100].
    pub fn robust_hausdorff(&self, percentile: f64) -> Result<f64> {
        check_percentile(percentile)?;
        let directed = |v: &[(f64, f64)]| {
            if v.is_empty() {
                return f64::INFINITY;
            }
            let total = area(v.iter());
            let target = percentile / 100.0;
            let mut cumulative = 0.0;
            // np.searchsorted(cumsum / total, target, side='left').
            for (i, (d, a)) in v.iter().enumerate() {
                cumulative += a;
                if cumulative / total >= target || i + 1 == v.len() {
                    return *d;
                }
            }
            f64::INFINITY
        };
        Ok(directed(&self.reference_to_prediction).max(directed(&self.prediction_to_reference)))
    }

    /// Area-weighted mean distance of each direction: (reference → prediction, prediction →
    /// reference). NaN for an empty direction.
    pub fn average_distance(&self) -> (f64, f64) {
        let mean = |v: &[(f64, f64)]| v.iter().map(|(d, a)| d * a).fold(0.0, |sum, x| sum + x) / area(v.iter());
        (mean(&self.reference_to_prediction), mean(&self.prediction_to_reference))
    }
}

/// The total area of some (distance, area) pairs. Summed from +0 (`Iterator::sum` starts at
/// −0, which an empty prediction's NSD would carry into the CSV as `-0`).
fn area<'a>(pairs: impl Iterator<Item = &'a (f64, f64)>) -> f64 {
    pairs.fold(0.0, |sum, (_, a)| sum + a)
}

/// Surface area (3-D) or contour length (2-D) of each neighbour code for this spacing.
fn area_table(spacing: [f64; 3], dims: Dims) -> Vec<f64> {
    match dims {
        Dims::Three => NEIGHBOUR_CODE_TO_NORMALS
            .iter()
            .map(|normals| {
                let [s0, s1, s2] = spacing;
                normals
                    .iter()
                    .map(|n| ((n[0] * s1 * s2).powi(2) + (n[1] * s0 * s2).powi(2) + (n[2] * s0 * s1).powi(2)).sqrt())
                    .sum()
            })
            .collect(),
        Dims::Two => {
            let (vertical, horizontal) = (spacing[1], spacing[2]);
            let diagonal = 0.5 * vertical.hypot(horizontal);
            // Codes: 8·top-left + 4·top-right + 2·bottom-left + 1·bottom-right.
            (0..16u8)
                .map(|code| match code {
                    0 | 15 => 0.0,
                    3 | 12 => horizontal,
                    5 | 10 => vertical,
                    6 | 9 => 2.0 * diagonal,
                    _ => diagonal,
                })
                .collect()
        }
    }
}

/// The surface elements of one mask: their corners, and their areas.
///
/// A corner sits between voxels `u − 1` and `u` on each image axis (so `u` runs from 0 to the
/// axis length) and gets the neighbour code of the 2×2(×2) voxels around it, outside the
/// array counting as background; it is a surface element when the code is neither empty nor
/// full. Such a corner touches a boundary voxel of the class ([`super::boundary_voxels`]), so the
/// corners around those are all the candidates: the work follows the surface, not the mask's
/// bounding box.
struct Surface {
    points: Vec<Point>,
    areas: Vec<f64>,
}

impl Surface {
    fn around<L: Copy + PartialEq>(grid: &Grid<'_, L>, class: L, edge: &[Point], areas: &[f64]) -> Self {
        let data = grid.data.as_standard_layout();
        let m = data.as_slice().unwrap_or_default();
        let (nz, ny, nx) = data.dim();
        let in_class = |z: i32, y: i32, x: i32| {
            let inside = (0..nz as i32).contains(&z) && (0..ny as i32).contains(&y) && (0..nx as i32).contains(&x);
            inside && m[(z as usize * ny + y as usize) * nx + x as usize] == class
        };
        let (z_corners, full): (&[i32], u8) = match grid.dims {
            Dims::Three => (&[0, 1], 255),
            Dims::Two => (&[0], 15),
        };
        // Each candidate corner once, in C order (queries in that order walk the k-d tree
        // coherently): a bit per corner of the boundary voxels' box, read back word by word.
        if edge.is_empty() {
            return Self {
                points: Vec::new(),
                areas: Vec::new(),
            };
        }
        let (lo, hi) = bounds(edge.iter());
        let extent = [0, 1, 2].map(|a| (hi[a] - lo[a]) as usize + 1 + usize::from(a > 0 || z_corners.len() > 1));
        let mut candidates = vec![0u64; (extent.iter().product::<usize>()).div_ceil(64)];
        for &[z, y, x] in edge {
            for &a in z_corners {
                for corner in [
                    [z + a, y, x],
                    [z + a, y, x + 1],
                    [z + a, y + 1, x],
                    [z + a, y + 1, x + 1],
                ] {
                    let local = [0, 1, 2].map(|axis| (corner[axis] - lo[axis]) as usize);
                    let bit = (local[0] * extent[1] + local[1]) * extent[2] + local[2];
                    candidates[bit / 64] |= 1u64 << (bit % 64);
                }
            }
        }
        let corners = candidates.iter().enumerate().flat_map(|(word, &bits)| {
            let mut bits = bits;
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let bit = word * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let local = [
                        bit / (extent[1] * extent[2]),
                        bit / extent[2] % extent[1],
                        bit % extent[2],
                    ];
                    [0, 1, 2].map(|axis| lo[axis] + local[axis] as i32)
                })
            })
        });
        let code = |[z, y, x]: Point| -> u8 {
            let v = |a: i32, b: i32, c: i32| u8::from(in_class(z - 1 + a, y - 1 + b, x - 1 + c));
            match grid.dims {
                // Weight of voxel (z−1+a, y−1+b, x−1+c) is 2^(7 − (4a + 2b + c)).
                Dims::Three => (0..8).fold(0u8, |code, bit| {
                    let (a, b, c) = ((bit >> 2) & 1, (bit >> 1) & 1, bit & 1);
                    code | (v(a, b, c) << (7 - bit))
                }),
                // The plane's own index: 8·top-left + 4·top-right + 2·bottom-left + 1·bottom-right.
                Dims::Two => (v(1, 0, 0) << 3) | (v(1, 0, 1) << 2) | (v(1, 1, 0) << 1) | v(1, 1, 1),
            }
        };
        let (points, areas) = corners
            .filter_map(|corner| {
                let code = code(corner);
                (code != 0 && code != full).then(|| (corner, areas[usize::from(code)]))
            })
            .unzip();
        Self { points, areas }
    }
}

/// (distance, area) of each surface element of `from`, sorted by distance then area.
fn directed(from: &Surface, to: &Surface, spacing: [f64; 3]) -> Vec<(f64, f64)> {
    let distances = nearest_distances(&from.points, &to.points, spacing, Arithmetic::ScaledOffsets)
        .unwrap_or_else(|| vec![f64::INFINITY; from.points.len()]);
    let mut pairs: Vec<(f64, f64)> = distances.into_iter().zip(from.areas.iter().copied()).collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    pairs
}

/// Surface-element distances of one class from its boundary voxels in each map
/// ([`super::boundary_voxels`], array coordinates).
pub(crate) fn surfel_distances_between<L: Copy + PartialEq>(
    prediction: &Grid<'_, L>,
    reference: &Grid<'_, L>,
    class: L,
    prediction_edge: &[Point],
    reference_edge: &[Point],
) -> SurfelDistances {
    let areas = area_table(reference.spacing, reference.dims);
    let pred = Surface::around(prediction, class, prediction_edge, &areas);
    let gt = Surface::around(reference, class, reference_edge, &areas);
    SurfelDistances {
        reference_to_prediction: directed(&gt, &pred, reference.spacing),
        prediction_to_reference: directed(&pred, &gt, reference.spacing),
    }
}

/// Surface-element distances of `class` between two 2-D or 3-D label maps with `spacing`
/// (mm, array order). Pass boolean masks with `class = true` to score a single structure.
///
/// # Errors
///
/// When the shapes differ, the maps are not 2-D or 3-D, or the spacing does not fit.
pub fn surfel_distances<L: Copy + PartialEq + Sync>(
    prediction: ArrayViewD<'_, L>,
    reference: ArrayViewD<'_, L>,
    class: L,
    spacing: &[f64],
) -> Result<SurfelDistances> {
    let (prediction, reference) = grids(prediction, reference, spacing)?;
    Ok(surfel_distances_between(
        &prediction,
        &reference,
        class,
        &class_boundary(&prediction, class),
        &class_boundary(&reference, class),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::*;

    fn distances(pair: &(ndarray::ArrayD<bool>, ndarray::ArrayD<bool>), spacing: &[f64]) -> SurfelDistances {
        surfel_distances(pair.0.view(), pair.1.view(), true, spacing).expect("valid")
    }

    /// The spec's DeepMind test vectors (nnunet-reference.md §8.3), computed with the real
    /// library.
    #[test]
    fn spec_vectors() {
        let d = distances(&fixtures::squares_2d(), &[1.0, 1.0]);
        assert!((d.surface_dice(1.0).expect("tolerance") - 0.811369479535685).abs() < 1e-12);
        assert_eq!(d.robust_hausdorff(95.0).expect("percentile"), 2.0);
        let d = distances(&fixtures::squares_2d(), &[2.0, 0.5]);
        assert!((d.surface_dice(1.0).expect("tolerance") - 0.7877345986541083).abs() < 1e-12);
        assert_eq!(d.robust_hausdorff(95.0).expect("percentile"), 4.0);
        let d = distances(&fixtures::boxes_3d(), &[3.0, 1.0, 0.8]);
        let area = |v: &[(f64, f64)]| v.iter().map(|(_, a)| a).sum::<f64>();
        assert!((area(&d.reference_to_prediction) - 347.0058503876).abs() < 1e-8);
        assert!((area(&d.prediction_to_reference) - 351.3558760098).abs() < 1e-8);
        assert!((d.surface_dice(2.0).expect("tolerance") - 0.8555965153198288).abs() < 1e-12);
        assert_eq!(d.robust_hausdorff(95.0).expect("percentile"), 3.0);
    }

    #[test]
    fn empty_sides() {
        let (empty, gt) = fixtures::empty_and_square();
        let d = distances(&(empty.clone(), gt), &[1.0, 1.0]);
        assert_eq!(
            d.surface_dice(1.0).expect("tolerance").to_bits(),
            0.0f64.to_bits(),
            "+0, not -0"
        );
        assert_eq!(d.robust_hausdorff(95.0).expect("percentile"), f64::INFINITY);
        let d = distances(&(empty.clone(), empty), &[1.0, 1.0]);
        assert!(d.surface_dice(1.0).expect("tolerance").is_nan());
        assert_eq!(d.robust_hausdorff(95.0).expect("percentile"), f64::INFINITY);
    }

    #[test]
    fn objects_on_the_border_have_surface_there() {
        // A full 4×4 image: the outside counts as background, so the contour runs around the
        // border: 3 straight elements per side (length 1) and 4 corner elements (half a
        // diagonal each), as DeepMind's marching squares weigh them.
        let full = ndarray::Array2::from_elem((4, 4), true);
        let d = surfel_distances(full.view().into_dyn(), full.view().into_dyn(), true, &[1.0, 1.0]).expect("valid");
        let length: f64 = d.reference_to_prediction.iter().map(|(_, a)| a).sum();
        assert!((length - (12.0 + 2.0 * 2f64.sqrt())).abs() < 1e-12, "{length}");
        assert_eq!(d.reference_to_prediction.len(), 16);
        assert_eq!(d.robust_hausdorff(100.0).expect("percentile"), 0.0);
    }

    #[test]
    fn lone_voxel_surface_is_symmetric_and_scales_with_spacing() {
        let mut voxel = ndarray::Array3::from_elem((3, 3, 3), false);
        voxel[[1, 1, 1]] = true;
        let area = |spacing: &[f64]| {
            let d = surfel_distances(voxel.view().into_dyn(), voxel.view().into_dyn(), true, spacing).expect("valid");
            assert_eq!(d.robust_hausdorff(100.0).expect("percentile"), 0.0);
            assert_eq!(d.reference_to_prediction, d.prediction_to_reference);
            d.reference_to_prediction.iter().map(|(_, a)| a).sum::<f64>()
        };
        // Areas scale with the square of an isotropic spacing.
        let (unit, doubled) = (area(&[1.0, 1.0, 1.0]), area(&[2.0, 2.0, 2.0]));
        assert!(unit > 0.0 && (doubled - 4.0 * unit).abs() < 1e-12, "{unit} {doubled}");
    }
}
