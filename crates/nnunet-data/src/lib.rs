//! nnU-Net v2's data side in Rust: the raw data set format, NIfTI I/O, the fingerprint,
//! planning (plans.json compatible, including MedDINOv3's `2d_896` configuration),
//! preprocessing, splits and patch sampling.
//!
//! Volumes are `ndarray` arrays in nnU-Net's (C, Z, Y, X) order, C-contiguous; NIfTI's
//! (x, y, z) order appears only at the I/O boundary. This crate knows nothing of candle.
//!
//! Precise behaviour: `shared/spec/nnunet-reference.md` §1–5.

#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

pub use ndarray;
