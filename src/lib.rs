//! MedDINOv3 in Rust: one crate that re-exports the workspace's libraries.
//!
//! | module | crate | what it does |
//! |---|---|---|
//! | [`backbone`] | `meddino-backbone` | the DINOv3 ViT, presets, checkpoint loading |
//! | [`decoder`] | `meddino-decoder` | Primus heads, multi-scale deformable attention |
//! | [`baselines`] | `meddino-baselines` | PlainConvUNet, SegFormer, the Dino U-Net |
//! | [`data`] | `nnunet-data` | nnU-Net raw data, NIfTI I/O, planning, preprocessing |
//! | [`eval`] | `meddino-eval` | Dice, HD95, NSD as MedDINOv3 scores them |
//! | [`train`] | `meddino-train` | trainers and the sliding-window predictor |
//!
//! [`fuzzing`] feeds untrusted bytes to the readers, for the fuzz targets and their
//! regression tests.
//!
//! The `meddino` binary puts them behind one command line; run `meddino --help`.
//!
//! # Features
//!
//! - `cuda` (off by default): every crate's CUDA support; needs `nvcc` at build time.

#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

pub mod fuzzing;

pub use meddino_backbone as backbone;
pub use meddino_baselines as baselines;
pub use meddino_decoder as decoder;
pub use meddino_eval as eval;
pub use meddino_train as train;
pub use nnunet_data as data;
