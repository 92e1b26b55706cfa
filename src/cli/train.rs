//! `meddino train`: nnUNetv2_train with the MedDINOv3 trainers.

use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use meddino::train::candle::Device;
use meddino::train::trainer::TrainingObserver;
use meddino::train::{TrainOptions, Trainer, TrainerRegistry};

/// Arguments of `meddino train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Data set: its id (`1`, `001`) or folder name under the preprocessed folder.
    #[arg(value_name = "DATASET")]
    dataset: String,

    /// Plans configuration, e.g. `2d` or `2d_896`.
    #[arg(value_name = "CONFIG")]
    configuration: String,

    /// Fold of splits_final.json (0–4), or `all` to train and validate on every case.
    #[arg(value_name = "FOLD")]
    fold: String,

    /// Trainer, also as `-tr`: `meddinov3_base_primus_multiscale_Trainer`, `dinov3_base_primus_multiscale_Trainer`,
    /// `dinov3_base_primus_Trainer`, `dinov3_base_primus_Trainer_scratch`, or a baseline: `nnUNetTrainer` (the
    /// default), `segformerTrainer`, `dinoUNetTrainer`.
    #[arg(
        long = "tr",
        visible_alias = "trainer",
        value_name = "TRAINER",
        default_value = "nnUNetTrainer"
    )]
    trainer: String,

    /// Pretrained backbone weights: MedDINOv3's `model.pth` (teacher), a DINOv3 `.pth` /
    /// safetensors file (the official hub file for `dinoUNetTrainer`), a Hugging Face
    /// transformers model folder, or `hf:ORG/NAME[@REVISION]` from the Hugging Face cache
    /// (downloaded when missing, unless HF_HUB_OFFLINE is set); must match the backbone (see
    /// --backbone).
    #[arg(long, value_name = "PATH")]
    pretrained: Option<PathBuf>,

    /// Replace the trainer's ViT-B by another size preset, keeping the trainer's
    /// construction arguments: `vit_micro` (64 wide, 4 blocks; smoke runs), `vit_tiny`,
    /// `vit_small`, `vit_large`, ….
    #[arg(long, value_name = "PRESET")]
    backbone: Option<String>,

    /// Epochs [default: 1000].
    #[arg(long, value_name = "N", default_value_t = 1000)]
    epochs: usize,

    /// Training iterations per epoch [default: 250].
    #[arg(long = "iters", value_name = "N", default_value_t = 250)]
    iterations: usize,

    /// Validation iterations per epoch [default: 50].
    #[arg(long = "val-iters", value_name = "N", default_value_t = 50)]
    val_iterations: usize,

    /// Batch size instead of the plans' one.
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,

    /// Where to train.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,

    /// Continue from checkpoint_latest (after an interruption).
    #[arg(long = "continue", visible_alias = "c")]
    resume: bool,

    /// Seed of initialisation, batches and stochastic depth.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Skip the final validation (predicting and scoring the fold's validation cases).
    #[arg(long)]
    skip_validation: bool,

    /// Batch-building threads.
    #[arg(long, value_name = "N", default_value_t = 2)]
    workers: usize,

    /// nnU-Net preprocessed folder [default: $nnUNet_preprocessed].
    #[arg(long, value_name = "DIR", env = "nnUNet_preprocessed")]
    preprocessed: PathBuf,

    /// nnU-Net results folder [default: $nnUNet_results].
    #[arg(long, value_name = "DIR", env = "nnUNet_results")]
    results: PathBuf,
}

/// `--device`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DeviceArg {
    /// The CPU.
    Cpu,
    /// The first CUDA GPU (needs a build with `--features cuda`).
    Cuda,
}

impl DeviceArg {
    /// The candle device.
    pub fn device(self) -> anyhow::Result<Device> {
        match self {
            DeviceArg::Cpu => Ok(Device::Cpu),
            DeviceArg::Cuda => Device::new_cuda(0).context("cannot use CUDA (is this a build with --features cuda?)"),
        }
    }
}

/// A progress bar per epoch; log lines printed above it (to stderr when it is hidden, as
/// when stderr is not a terminal), all of them or only the per-epoch summary.
pub(crate) struct EpochBar {
    pub(crate) bar: ProgressBar,
    pub(crate) summary_only: bool,
}

impl EpochBar {
    /// A bar on stderr.
    pub(crate) fn new(summary_only: bool) -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>16} {bar:30} {pos}/{len} {elapsed_precise} {per_sec} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self { bar, summary_only }
    }
}

impl TrainingObserver for EpochBar {
    fn epoch_started(&self, epoch: usize, epochs: usize, iterations: usize) {
        self.bar.reset();
        self.bar.set_length(iterations as u64);
        self.bar.set_prefix(format!("epoch {epoch}/{epochs}"));
    }

    fn iteration(&self, loss: f64) {
        self.bar.set_message(format!("loss {loss:.4}"));
        self.bar.inc(1);
    }

    fn log(&self, line: &str) {
        let summary = ["Epoch ", "Pseudo dice", "Yayy", "train_loss"]
            .iter()
            .any(|p| line.starts_with(p));
        if self.summary_only && !summary {
            return;
        }
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }
}

/// Runs `meddino train`.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let registry = TrainerRegistry::builtin();
    let spec = registry.get(&args.trainer)?.clone();
    let preprocessed = super::find_dataset(&args.preprocessed, &args.dataset)?;
    let name = preprocessed
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut options = TrainOptions::new(
        preprocessed,
        args.results.join(&name),
        &args.configuration,
        &args.fold,
        spec,
    );
    options.backbone = args.backbone;
    options.pretrained = args.pretrained;
    options.epochs = args.epochs;
    options.iterations = args.iterations;
    options.val_iterations = args.val_iterations;
    options.batch_size = args.batch_size;
    options.seed = args.seed;
    options.device = args.device.device()?;
    options.workers = args.workers;
    options.resume = args.resume;
    let observer = EpochBar::new(false);
    let mut trainer = Trainer::new(options, &observer)?;
    trainer.fit()?;
    observer.bar.finish_and_clear();
    if !args.skip_validation {
        if let Some(scores) = trainer.validate_final()? {
            super::evaluate::print_summary(&scores.summary, 1.0);
        }
    }
    eprintln!("results in {}", trainer.output().display());
    Ok(())
}
