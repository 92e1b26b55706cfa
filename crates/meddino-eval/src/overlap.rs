//! Voxel counts per class, and the overlap metrics built on them (Dice, IoU).
//!
//! One parallel pass over a prediction/reference pair gives, for every class at once, the
//! confusion counts and the bounding boxes that the surface metrics crop to.

use ndarray::Axis;
use rayon::prelude::*;

use crate::grid::{BoundingBox, Grid};

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

/// Counts and boxes for each of `classes` (in that order), in one parallel pass over rows.
pub(crate) fn class_stats<L: Copy + PartialEq + Sync>(
    prediction: &Grid<'_, L>,
    reference: &Grid<'_, L>,
    classes: &[L],
) -> Vec<ClassStats> {
    let (nz, ny, _) = reference.data.dim();
    let class_index = |v: L| classes.iter().position(|&c| c == v);
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
                // Labels come in runs: remember the last lookup (most voxels are background,
                // which is in no class, and would otherwise scan every class each time).
                let mut last: Option<(L, Option<usize>)> = None;
                let mut class_index = |v: L| match last {
                    Some((label, index)) if label == v => index,
                    _ => {
                        let index = class_index(v);
                        last = Some((v, index));
                        index
                    }
                };
                for (x, (&p, &r)) in p_row.iter().zip(r_row.iter()).enumerate() {
                    if p == r {
                        if let Some(c) = class_index(p) {
                            let s = &mut stats[c];
                            s.counts.true_positives += 1;
                            include(&mut s.prediction_box, [z, y, x]);
                            include(&mut s.reference_box, [z, y, x]);
                        }
                        continue;
                    }
                    if let Some(c) = class_index(p) {
                        stats[c].counts.false_positives += 1;
                        include(&mut stats[c].prediction_box, [z, y, x]);
                    }
                    if let Some(c) = class_index(r) {
                        stats[c].counts.false_negatives += 1;
                        include(&mut stats[c].reference_box, [z, y, x]);
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
