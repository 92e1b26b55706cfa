//! Voxel counts per class, and the overlap metrics built on them (Dice, IoU).
//!
//! One parallel pass over a prediction/reference pair gives, for every class at once, the
//! confusion counts and the bounding boxes that the surface metrics crop to.

use ndarray::Axis;
use rayon::prelude::*;

use crate::grid::{BoundingBox, ClassLookup, Grid, SKIP_CHUNK};

/// Confusion counts of one class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Voxels of the class in both prediction and reference.
    pub true_positives: u64,
    /// Voxels of the class in the prediction only.
    pub false_positives: u64,
    /// Voxels of the class in the reference only.
    pub false_negatives: u64,
    /// Voxels of the class in neither.
    pub true_negatives: u64,
}

impl Counts {
    /// Voxels of the class in the prediction (`TP + FP`).
    pub fn n_pred(&self) -> u64 {
        self.true_positives + self.false_positives
    }

    /// Voxels of the class in the reference (`TP + FN`).
    pub fn n_ref(&self) -> u64 {
        self.true_positives + self.false_negatives
    }

    /// `2TP / (2TP + FP + FN)`; NaN when the class is absent from both (as nnU-Net).
    pub fn dice(&self) -> f64 {
        let denominator = 2 * self.true_positives + self.false_positives + self.false_negatives;
        if denominator == 0 {
            f64::NAN
        } else {
            (2 * self.true_positives) as f64 / denominator as f64
        }
    }

    /// `TP / (TP + FP + FN)`; NaN when the class is absent from both (as nnU-Net).
    pub fn iou(&self) -> f64 {
        let denominator = self.true_positives + self.false_positives + self.false_negatives;
        if denominator == 0 {
            f64::NAN
        } else {
            self.true_positives as f64 / denominator as f64
        }
    }

    fn add(&mut self, other: &Counts) {
        self.true_positives += other.true_positives;
        self.false_positives += other.false_positives;
        self.false_negatives += other.false_negatives;
    }
}

/// Counts and bounding boxes of one class.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ClassStats {
    pub(crate) counts: Counts,
    pub(crate) prediction_box: Option<BoundingBox>,
    pub(crate) reference_box: Option<BoundingBox>,
}

impl ClassStats {
    fn merge(&mut self, other: &ClassStats) {
        self.counts.add(&other.counts);
        self.prediction_box = BoundingBox::union(self.prediction_box, other.prediction_box);
        self.reference_box = BoundingBox::union(self.reference_box, other.reference_box);
    }
}

fn include(bbox: &mut Option<BoundingBox>, index: [usize; 3]) {
    match bbox {
        Some(b) => b.include(index),
        None => *bbox = Some(BoundingBox::point(index)),
    }
}

/// A row as a slice: borrowed, or copied for views in another layout.
fn row_slice<L: Clone>(row: ndarray::ArrayView1<'_, L>) -> std::borrow::Cow<'_, [L]> {
    match row.to_slice() {
        Some(values) => std::borrow::Cow::Borrowed(values),
        None => std::borrow::Cow::Owned(row.to_vec()),
    }
}

/// Counts and boxes for each of `classes` (in that order), in one parallel pass over rows.
pub(crate) fn class_stats<L: Copy + PartialEq + Sync>(
    prediction: &Grid<'_, L>,
    reference: &Grid<'_, L>,
    classes: &[L],
) -> Vec<ClassStats> {
    let (nz, ny, _) = reference.data.dim();
    let mut stats = (0..nz * ny)
        .into_par_iter()
        .fold(
            || vec![ClassStats::default(); classes.len()],
            |mut stats, row| {
                let (z, y) = (row / ny, row % ny);
                let p_row = prediction.data.index_axis(Axis(0), z);
                let p_row = p_row.index_axis(Axis(0), y);
                let r_row = reference.data.index_axis(Axis(0), z);
                let r_row = r_row.index_axis(Axis(0), y);
                let mut lookup = ClassLookup::new(classes);
                let mut class_index = |v: L| lookup.index(v);
                let (p_row, r_row) = (row_slice(p_row), row_slice(r_row));
                let mut x = 0;
                while x < p_row.len() {
                    // Skip whole chunks of one label that is in no class (background),
                    // compared branch-free so that the check vectorises.
                    let end = (x + SKIP_CHUNK).min(p_row.len());
                    let first = p_row[x];
                    if end - x == SKIP_CHUNK
                        && class_index(first).is_none()
                        && p_row[x..end]
                            .iter()
                            .zip(&r_row[x..end])
                            .fold(true, |same, (&p, &r)| same & (p == first) & (r == first))
                    {
                        x = end;
                        continue;
                    }
                    let (p, r, here) = (p_row[x], r_row[x], x);
                    x += 1;
                    if p == r {
                        if let Some(c) = class_index(p) {
                            let s = &mut stats[c];
                            s.counts.true_positives += 1;
                            include(&mut s.prediction_box, [z, y, here]);
                            include(&mut s.reference_box, [z, y, here]);
                        }
                        continue;
                    }
                    if let Some(c) = class_index(p) {
                        stats[c].counts.false_positives += 1;
                        include(&mut stats[c].prediction_box, [z, y, here]);
                    }
                    if let Some(c) = class_index(r) {
                        stats[c].counts.false_negatives += 1;
                        include(&mut stats[c].reference_box, [z, y, here]);
                    }
                }
                stats
            },
        )
        .reduce(
            || vec![ClassStats::default(); classes.len()],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| a.merge(b));
                a
            },
        );
    let total = reference.data.len() as u64;
    for s in &mut stats {
        s.counts.true_negatives = total - s.counts.true_positives - s.counts.false_positives - s.counts.false_negatives;
    }
    stats
}

#[cfg(test)]
mod tests {
    use ndarray::arr2;

    use super::*;
    use crate::grid::grids;

    /// Counts and boxes by visiting every voxel, for comparison.
    fn brute_force(
        p: &ndarray::Array3<u8>,
        r: &ndarray::Array3<u8>,
        classes: &[u8],
    ) -> Vec<(Counts, [Option<BoundingBox>; 2])> {
        classes
            .iter()
            .map(|&c| {
                let (mut counts, mut boxes) = (Counts::default(), [None, None]);
                for ((z, y, x), &pv) in p.indexed_iter() {
                    let rv = r[[z, y, x]];
                    match (pv == c, rv == c) {
                        (true, true) => counts.true_positives += 1,
                        (true, false) => counts.false_positives += 1,
                        (false, true) => counts.false_negatives += 1,
                        (false, false) => counts.true_negatives += 1,
                    }
                    for (k, inside) in [pv == c, rv == c].into_iter().enumerate() {
                        if inside {
                            include(&mut boxes[k], [z, y, x]);
                        }
                    }
                }
                (counts, boxes)
            })
            .collect()
    }

    #[test]
    fn long_rows_with_background_runs_and_other_layouts_count_every_voxel() {
        // Background runs longer and shorter than the skipped chunks, labels outside the
        // classes (7), and a transposed (non-contiguous) view.
        let label = |z: usize, y: usize, x: usize, shift: usize| -> u8 {
            match (x * 7 + y * 13 + z * 5 + shift) % 97 {
                0..=60 => 0,
                61..=70 => 1,
                71..=80 => 2,
                81..=90 => 7,
                _ => 3,
            }
        };
        let p = ndarray::Array3::from_shape_fn((3, 5, 150), |(z, y, x)| if x < 70 { 0 } else { label(z, y, x, 0) });
        let r = ndarray::Array3::from_shape_fn((3, 5, 150), |(z, y, x)| if x < 40 { 0 } else { label(z, y, x, 3) });
        let classes = [1u8, 2, 3];
        for (p, r) in [
            (p.clone(), r.clone()),
            (
                p.clone().reversed_axes().as_standard_layout().into_owned(),
                r.clone().reversed_axes().as_standard_layout().into_owned(),
            ),
        ] {
            let expected = brute_force(&p, &r, &classes);
            // The same maps as views of reversed storage: rows are not contiguous.
            let (p_t, r_t) = (
                p.t().as_standard_layout().into_owned(),
                r.t().as_standard_layout().into_owned(),
            );
            for (pv, rv) in [(p.view(), r.view()), (p_t.t(), r_t.t())] {
                let (pg, rg) = grids(pv.into_dyn(), rv.into_dyn(), &[1.0, 1.0, 1.0]).expect("valid");
                let stats = class_stats(&pg, &rg, &classes);
                for (s, (counts, boxes)) in stats.iter().zip(&expected) {
                    assert_eq!(s.counts, *counts);
                    assert_eq!([s.prediction_box, s.reference_box], *boxes);
                }
            }
        }
    }

    #[test]
    fn counts_and_boxes_per_class() {
        let pred = arr2(&[[0u8, 1, 1], [2, 2, 0], [0, 0, 0]]).into_dyn();
        let gt = arr2(&[[0u8, 1, 0], [2, 0, 0], [0, 0, 1]]).into_dyn();
        let (p, r) = grids(pred.view(), gt.view(), &[1.0, 1.0]).expect("valid");
        let stats = class_stats(&p, &r, &[1, 2, 3]);
        let c1 = stats[0].counts;
        assert_eq!(
            (
                c1.true_positives,
                c1.false_positives,
                c1.false_negatives,
                c1.true_negatives
            ),
            (1, 1, 1, 6)
        );
        assert_eq!(c1.dice(), 0.5);
        assert!((c1.iou() - 1.0 / 3.0).abs() < 1e-15);
        assert_eq!(
            stats[0].prediction_box,
            Some(BoundingBox {
                min: [0, 0, 1],
                max: [0, 0, 2]
            })
        );
        assert_eq!(
            stats[0].reference_box,
            Some(BoundingBox {
                min: [0, 0, 1],
                max: [0, 2, 2]
            })
        );
        let c2 = stats[1].counts;
        assert_eq!((c2.true_positives, c2.false_positives, c2.false_negatives), (1, 1, 0));
        // Absent from both: NaN, as nnU-Net.
        assert!(stats[2].counts.dice().is_nan() && stats[2].counts.iou().is_nan());
        assert_eq!(stats[2].prediction_box, None);
    }
}
