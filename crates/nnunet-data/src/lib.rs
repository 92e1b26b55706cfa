//! nnU-Net v2's data side in Rust: the raw data set format, NIfTI I/O, the fingerprint,
//! planning (plans.json compatible, including MedDINOv3's `2d_896` configuration),
//! preprocessing, splits and patch sampling.
//!
//! Volumes are `ndarray` arrays in nnU-Net's (C, Z, Y, X) order, C-contiguous; NIfTI's
//! (x, y, z) order appears only at the I/O boundary. This crate knows nothing of candle.
//!
//! Landed so far: [`dataset`] (`dataset.json`), [`io::nifti`] (reading images and label
//! maps with their spacing), [`split`] (`splits_final.json`, bit-exact folds), [`raw`] (case discovery), [`crop`]
//! (`crop_to_nonzero`), [`fingerprint`] (`dataset_fingerprint.json`), [`plan`] (`2d` and
//! `3d_fullres` planning, `nnUNetPlans.json`, `2d_N` derivation), [`io::case`] (a prediction
//! folder's cases). Precise behaviour: nnU-Net v2, <https://github.com/MIC-DKFZ/nnUNet>.
//!
//! Features:
//! - `dicom` (default on): `io::dicom`, DICOM series read as SimpleITK's `ImageSeriesReader`
//!   reads them, through dicom-rs with pure-Rust decoders only; `io::input_cases` then also
//!   takes series folders. Off: NIfTI only, no dicom-rs in the build.

#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

// The README's example, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod augment;
pub mod batch;
pub mod crop;
pub mod dataset;
mod error;
pub mod fingerprint;
pub mod io;
pub mod phantom;
pub mod plan;
pub mod preprocess;
pub mod random;
pub mod raw;
pub mod sampling;
pub mod split;

pub use dataset::{DatasetJson, LabelEntry, LabelValue};
pub use error::{Error, Result};
pub use fingerprint::Fingerprint;
pub use ndarray;
pub use plan::Plans;
pub use raw::{RawCase, RawDataset};
pub use split::{crossval_split, Fold};
