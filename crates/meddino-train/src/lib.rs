//! Fine-tuning MedDINOv3 segmentation networks the way the MedDINOv3 nnU-Net trainers do
//! (loss, optimiser groups, schedules, checkpoints, validation), nnU-Net's sliding-window
//! predictor, and scoring folders of predictions.
//!
//! - Training: [`trainers`] (the registry of trainers by nnU-Net name), [`trainer`] (the epoch
//!   loop: batches, loss, AdamW groups, pseudo Dice and EMA, checkpoints, `--continue`, final
//!   validation), [`loader`] (batches on background threads, seeded per step), [`init`]
//!   (seeded initialisation), [`loss`] (`DC_and_CE_loss`), [`optim`] (the `Optimizer` trait:
//!   grouped AdamW, Nesterov SGD; gradient clipping), [`schedule`], [`checkpoint`] (atomic
//!   training checkpoints), [`logs`], [`plot`] (`progress.png`, overlays).
//! - Prediction: [`predict`] (sliding windows with Gaussian importance, mirroring, fold
//!   averaging, export to the original geometry), [`model`] (trained networks from our
//!   checkpoints or the Python trainers' `.pth`).
//! - Scoring: [`evaluation`] (a folder of predictions → `segmentation_metrics.csv` and
//!   `summary.json`, as MedDINOv3's `compute_metrics.py`).
//!
//! Precise behaviour: MedDINOv3 (<https://github.com/ricklisz/MedDINOv3>) and
//! nnU-Net v2 (<https://github.com/MIC-DKFZ/nnUNet>).
//!
//! # Features
//!
//! - `cuda` (off by default): train and predict on an NVIDIA GPU.

#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

pub mod allocator;
pub mod checkpoint;
mod error;
pub mod evaluation;
pub mod init;
pub mod loader;
pub mod logs;
pub mod loss;
pub mod loss_scale;
pub mod model;
pub mod optim;
pub mod plot;
pub mod predict;
pub mod schedule;
mod splitmix;
pub mod trainer;
pub mod trainers;

// The README's example, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use candle_core as candle;
pub use error::{Error, Result};
pub use meddino_decoder as decoder;
pub use meddino_eval as eval;
pub use nnunet_data as data;
pub use trainer::{TrainOptions, Trainer, TrainingObserver};
pub use trainers::{TrainerRegistry, TrainerSpec};
