//! Segmentation metrics exactly as MedDINOv3 scores them: Dice, IoU, HD95/HD100 and
//! normalised surface Dice (MONAI's boundary-voxel variant and DeepMind's surface-element
//! variant), per case and summarised.
//!
//! Works on `ndarray` label maps with per-axis spacing; no candle dependency.
//!
//! Precise behaviour: `shared/spec/meddinov3-reference.md` §5 and
//! `shared/spec/nnunet-reference.md` §8.

#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

pub use ndarray;
