//! Fine-tuning MedDINOv3 segmentation networks the way the MedDINOv3 nnU-Net trainers do
//! (loss, optimiser groups, schedules, checkpoints, validation), and nnU-Net's
//! sliding-window predictor.
//!
//! Precise behaviour: `shared/spec/meddinov3-reference.md` §4 and
//! `shared/spec/nnunet-reference.md` §6–7.
//!
//! # Features
//!
//! - `cuda` (off by default): train and predict on an NVIDIA GPU.

#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

pub use candle_core as candle;
pub use meddino_decoder as decoder;
pub use meddino_eval as eval;
pub use nnunet_data as data;
