//! Segmentation metrics exactly as MedDINOv3 scores them: Dice, IoU, HD95/HD100 and
//! normalised surface Dice (MONAI's boundary-voxel variant and DeepMind's surface-element
//! variant), per case and summarised.
//!
//! - [`evaluate_case`] scores every foreground class of a prediction/reference pair of label
//!   maps in one call, with MedDINOv3's rules for absent classes (see [`case`]).
//! - [`surface::monai::edge_distances`] and [`surface::surfel::surfel_distances`] give the
//!   directed surface distances of one class, from which any percentile or tolerance follows.
//! - [`Summary`] and [`write_csv`] produce MedDINOv3's `summary.json` and
//!   `segmentation_metrics.csv`.
//!
//! Label maps are `ndarray` arrays, 2-D (Y, X) or 3-D (Z, Y, X), with the spacing in mm per
//! array axis (nnU-Net's order, i.e. SimpleITK's spacing reversed). Surface distances are the
//! exact distances between the two surfaces' points, in the reference libraries' own float64
//! arithmetic, found by a k-d tree or a feature transform as the sizes favour; so the cost
//! follows the surfaces, not the volume, and small organs in large volumes or predictions
//! strewn with small false positives stay cheap. MONAI's metrics are then float32 as MONAI's
//! are (see [`surface::monai`]). Work runs in parallel with rayon. No candle dependency.
//!
//! ```
//! use meddino_eval::{evaluate_case, CaseOptions};
//! use ndarray::Array3;
//!
//! let mut reference = Array3::<u8>::zeros((8, 16, 16));
//! reference.slice_mut(ndarray::s![2..6, 4..12, 4..12]).fill(1);
//! let prediction = reference.clone();
//! let scores = evaluate_case(prediction.view().into_dyn(), reference.view().into_dyn(), &[2.5, 0.8, 0.8], &[1], &CaseOptions::new())?;
//! assert_eq!((scores[0].dice, scores[0].hd95, scores[0].nsd), (1.0, 0.0, 1.0));
//! # Ok::<(), meddino_eval::Error>(())
//! ```
//!
//! Precise behaviour: MedDINOv3 (<https://github.com/ricklisz/MedDINOv3>) and
//! nnU-Net v2 (<https://github.com/MIC-DKFZ/nnUNet>).

#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

// The README's example runs as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod case;
mod edt;
mod error;
mod grid;
pub mod overlap;
pub mod summary;
pub mod surface;

pub use case::{evaluate_case, CaseOptions, ClassScores, SurfaceMethod};
pub use error::{Error, Result};
pub use ndarray;
pub use overlap::Counts;
pub use summary::{write_csv, CaseScores, ClassSummary, LabelClass, Statistic, Summary};
