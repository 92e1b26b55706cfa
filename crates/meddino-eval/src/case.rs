//! Scoring one case the way MedDINOv3's `compute_metrics.py` does: for each foreground class,
//! Dice, IoU and the confusion counts, the 95th-percentile and maximum Hausdorff distances and
//! the NSD at a tolerance.
//!
//! MedDINOv3's policy for absent classes is applied here: a class absent from the reference
//! gets NaN for every metric (and is skipped in means); a class absent from the prediction
//! only is scored normally (Dice 0, NSD 0, Hausdorff as the surface definition gives).

use ndarray::ArrayViewD;
use rayon::prelude::*;

use crate::grid::{grids, BoundingBox};
use crate::overlap::{class_stats, Counts};
use crate::surface::{boundary_voxels, monai, surfel};
use crate::Result;

/// The surface definition behind HD and NSD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SurfaceMethod {
    /// MONAI's boundary voxels, each weighing 1 (what MedDINOv3 reports).
    #[default]
    Monai,
    /// DeepMind surface-distance's surface elements, weighted by area.
    Surfel,
}

impl std::str::FromStr for SurfaceMethod {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "monai" => Ok(Self::Monai),
            "surfel" => Ok(Self::Surfel),
            other => Err(format!("unknown surface method {other:?}: expected monai or surfel")),
        }
    }
}

impl std::fmt::Display for SurfaceMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Monai => "monai",
            Self::Surfel => "surfel",
        })
    }
}

/// How a case is scored.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseOptions {
    /// Surface definition for HD and NSD (default MONAI's).
    pub method: SurfaceMethod,
    /// NSD tolerance in mm (default 1.0, as MedDINOv3).
    pub nsd_tolerance_mm: f64,
}

impl Default for CaseOptions {
    fn default() -> Self {
        Self {
            method: SurfaceMethod::Monai,
            nsd_tolerance_mm: 1.0,
        }
    }
}

impl CaseOptions {
    /// Default options: MONAI surfaces, NSD at 1 mm.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `method` for HD and NSD.
    pub fn with_method(mut self, method: SurfaceMethod) -> Self {
        self.method = method;
        self
    }

    /// Scores NSD at `tolerance_mm`.
    pub fn with_nsd_tolerance_mm(mut self, tolerance_mm: f64) -> Self {
        self.nsd_tolerance_mm = tolerance_mm;
        self
    }
}

/// The scores of one class in one case. NaN marks "not defined" (class absent from the
/// reference); +∞ a distance to an empty surface.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassScores {
    /// Confusion counts (always defined).
    pub counts: Counts,
    /// Dice coefficient.
    pub dice: f64,
    /// Intersection over union.
    pub iou: f64,
    /// 95th-percentile symmetric Hausdorff distance in mm.
    pub hd95: f64,
    /// Maximum symmetric Hausdorff distance in mm.
    pub hd100: f64,
    /// Normalised surface Dice at the tolerance.
    pub nsd: f64,
}

/// Scores each of `classes` between a prediction and a reference label map (2-D or 3-D, same
/// shape) with `spacing` in mm per array axis. Classes are scored in parallel.
///
/// # Errors
///
/// When the shapes differ, the maps are not 2-D or 3-D, the spacing does not fit, or the
/// tolerance is invalid.
pub fn evaluate_case<L: Copy + PartialEq + Send + Sync>(
    prediction: ArrayViewD<'_, L>,
    reference: ArrayViewD<'_, L>,
    spacing: &[f64],
    classes: &[L],
    options: &CaseOptions,
) -> Result<Vec<ClassScores>> {
    let (prediction, reference) = grids(prediction, reference, spacing)?;
    let stats = class_stats(&prediction, &reference, classes);
    // The boundary voxels of every class, in one pass over each map.
    let (pred_edges, ref_edges) = rayon::join(
        || boundary_voxels(&prediction, classes),
        || boundary_voxels(&reference, classes),
    );
    classes
        .par_iter()
        .zip(stats.par_iter())
        .enumerate()
        .map(|(index, (&class, stats))| {
            let counts = stats.counts;
            let undefined = ClassScores {
                counts,
                dice: f64::NAN,
                iou: f64::NAN,
                hd95: f64::NAN,
                hd100: f64::NAN,
                nsd: f64::NAN,
            };
            if stats.reference_box.is_none() {
                return Ok(undefined);
            }
            let region = BoundingBox::union(stats.prediction_box, stats.reference_box);
            let (hd95, hd100, nsd) = match options.method {
                SurfaceMethod::Monai => {
                    let d = monai::edge_distances_between(
                        &pred_edges[index],
                        &ref_edges[index],
                        region,
                        reference.dims,
                        reference.spacing,
                    );
                    (
                        d.hausdorff(95.0)?,
                        d.hausdorff(100.0)?,
                        d.surface_dice(options.nsd_tolerance_mm)?,
                    )
                }
                SurfaceMethod::Surfel => {
                    let d = surfel::surfel_distances_between(
                        &prediction,
                        &reference,
                        class,
                        &pred_edges[index],
                        &ref_edges[index],
                    );
                    (
                        d.robust_hausdorff(95.0)?,
                        d.robust_hausdorff(100.0)?,
                        d.surface_dice(options.nsd_tolerance_mm)?,
                    )
                }
            };
            Ok(ClassScores {
                counts,
                dice: counts.dice(),
                iou: counts.iou(),
                hd95,
                hd100,
                nsd,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use ndarray::{s, Array3};

    use super::*;

    #[test]
    fn absent_classes_follow_meddinov3() {
        let mut reference = Array3::<u8>::zeros((6, 8, 8));
        reference.slice_mut(s![1..4, 2..6, 2..6]).fill(1);
        let mut prediction = reference.clone();
        prediction.slice_mut(s![4..5, 0..2, 0..2]).fill(2); // class 2 only in the prediction
        let scores = evaluate_case(
            prediction.view().into_dyn(),
            reference.view().into_dyn(),
            &[2.0, 1.0, 1.0],
            &[1, 2, 3],
            &CaseOptions::new(),
        )
        .expect("valid");
        // Perfect class 1.
        assert_eq!(
            (scores[0].dice, scores[0].hd95, scores[0].hd100, scores[0].nsd),
            (1.0, 0.0, 0.0, 1.0)
        );
        // Absent from the reference: NaN everywhere, even though predicted.
        for class in &scores[1..] {
            assert!(class.dice.is_nan() && class.iou.is_nan() && class.hd95.is_nan() && class.nsd.is_nan());
        }
        assert_eq!(scores[1].counts.false_positives, 4);
    }

    #[test]
    fn missed_class_scores_zero() {
        let mut reference = Array3::<u8>::zeros((4, 6, 6));
        reference.slice_mut(s![1..3, 1..4, 1..4]).fill(1);
        let prediction = Array3::<u8>::zeros((4, 6, 6));
        for method in [SurfaceMethod::Monai, SurfaceMethod::Surfel] {
            let options = CaseOptions::new().with_method(method);
            let scores = evaluate_case(
                prediction.view().into_dyn(),
                reference.view().into_dyn(),
                &[1.0; 3],
                &[1],
                &options,
            )
            .expect("valid");
            assert_eq!(
                (scores[0].dice, scores[0].nsd, scores[0].hd100),
                (0.0, 0.0, f64::INFINITY),
                "{method}"
            );
        }
    }

    #[test]
    fn parses_method_names() {
        assert_eq!("surfel".parse::<SurfaceMethod>(), Ok(SurfaceMethod::Surfel));
        assert!("hausdorff".parse::<SurfaceMethod>().is_err());
    }
}
