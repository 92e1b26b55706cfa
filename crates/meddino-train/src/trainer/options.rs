//! What a training run is told (`TrainOptions`) and what it tells its observers.

use std::path::PathBuf;

use candle_core::Device;

use crate::trainers::TrainerSpec;

/// Everything `meddino train` decides.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The data set's folder in `nnUNet_preprocessed`.
    pub preprocessed: PathBuf,
    /// Plans identifier (`nnUNetPlans`).
    pub plans: String,
    /// Configuration (`2d`, `2d_896`, …).
    pub configuration: String,
    /// Fold: `0`…`4` (splits_final.json), or `all` (train and validate on every case).
    pub fold: String,
    /// The trainer.
    pub trainer: TrainerSpec,
    /// The data set's folder in `nnUNet_results` (the trainer folder is made inside).
    pub results: PathBuf,
    /// Another backbone size preset than the trainer's.
    pub backbone: Option<String>,
    /// Pretrained backbone weights.
    pub pretrained: Option<PathBuf>,
    /// Epochs (nnU-Net: 1000).
    pub epochs: usize,
    /// Training iterations per epoch (250).
    pub iterations: usize,
    /// Validation iterations per epoch (50).
    pub val_iterations: usize,
    /// Batch size instead of the plans'.
    pub batch_size: Option<usize>,
    /// Seed of initialisation, batches and stochastic depth.
    pub seed: u64,
    /// Where the network runs.
    pub device: Device,
    /// Batch-building threads.
    pub workers: usize,
    /// Resume from `checkpoint_latest` when there is one.
    pub resume: bool,
}

impl TrainOptions {
    /// nnU-Net's defaults for `trainer` on a data set: 1000 × 250 iterations, 50 validation
    /// iterations, seed 0, CPU, two loader threads.
    pub fn new(preprocessed: PathBuf, results: PathBuf, configuration: &str, fold: &str, trainer: TrainerSpec) -> Self {
        Self {
            preprocessed,
            plans: "nnUNetPlans".into(),
            configuration: configuration.into(),
            fold: fold.into(),
            trainer,
            results,
            backbone: None,
            pretrained: None,
            epochs: 1000,
            iterations: 250,
            val_iterations: 50,
            batch_size: None,
            seed: 0,
            device: Device::Cpu,
            workers: 2,
            resume: false,
        }
    }

    /// `<results>/<trainer>__<plans>__<configuration>`.
    pub fn trainer_folder(&self) -> PathBuf {
        self.results
            .join(format!("{}__{}__{}", self.trainer.name, self.plans, self.configuration))
    }

    /// `<trainer folder>/fold_<fold>`.
    pub fn fold_folder(&self) -> PathBuf {
        self.trainer_folder().join(format!("fold_{}", self.fold))
    }
}

/// One finished epoch, as reported to observers.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochSummary {
    /// 0-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Mean validation loss.
    pub val_loss: f64,
    /// Pseudo Dice per foreground class.
    pub pseudo_dice: Vec<f64>,
    /// Its EMA.
    pub ema: f64,
    /// Whether the EMA improved (and `checkpoint_best` was written).
    pub new_best: bool,
    /// Seconds the epoch took.
    pub seconds: f64,
}

/// Progress callbacks (a progress bar in the CLI). Log lines also go to the log file.
pub trait TrainingObserver {
    /// An epoch begins with `iterations` training iterations.
    fn epoch_started(&self, _epoch: usize, _epochs: usize, _iterations: usize) {}
    /// One training iteration finished with this loss.
    fn iteration(&self, _loss: f64) {}
    /// A log line (also written to the training log).
    fn log(&self, _line: &str) {}
}

/// An observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl TrainingObserver for Silent {}
