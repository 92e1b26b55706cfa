//! Command-line parsing and dispatch for the `meddino` binary.
//!
//! Each subcommand mirrors the nnU-Net / MedDINOv3 command it replaces.

mod budget;
mod convert;
mod demo;
mod evaluate;
mod features;
mod plan;
mod predict;
mod threads;
mod train;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{ArgAction, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Exit status for any failure (usage errors exit with 2, from clap).
pub const EXIT_FAILURE: u8 = 1;

/// MedDINOv3 in Rust: plan, train, predict and evaluate CT segmentation with DINOv3
/// backbones inside the nnU-Net pipeline.
#[derive(Debug, Parser)]
#[command(
    name = "meddino",
    version,
    propagate_version = true,
    after_help = "Exit status: 0 on success, 1 on failure, 2 on a usage error.\n\
                  Logging: -v info, -vv debug, -vvv trace; RUST_LOG overrides."
)]
pub struct Cli {
    /// More log output (repeat for more).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,

    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,

    /// Threads for all the work of the command (training, prediction, planning, metrics)
    /// [default: $RAYON_NUM_THREADS, else the cores this process may use, cgroup and
    /// affinity limits included].
    #[arg(
        short = 'j',
        long,
        global = true,
        value_name = "N",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    threads: Option<usize>,

    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// The log level the flags ask for.
    pub fn verbosity(&self) -> tracing::Level {
        match (self.quiet, self.verbose) {
            (true, _) => tracing::Level::ERROR,
            (false, 0) => tracing::Level::WARN,
            (false, 1) => tracing::Level::INFO,
            (false, 2) => tracing::Level::DEBUG,
            (false, _) => tracing::Level::TRACE,
        }
    }

    /// Sizes the process's worker pools from `--threads` (see [`threads`]); call it before
    /// anything starts a thread.
    ///
    /// # Errors
    ///
    /// When the pools were already started.
    pub fn install_thread_budget(&self) -> anyhow::Result<usize> {
        let threads = threads::resolve_from_env(self.threads);
        threads::install(threads)?;
        Ok(threads)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fingerprint, plan and preprocess an nnU-Net raw data set (nnUNetv2_plan_and_preprocess,
    /// plus MedDINOv3's 2d_896 configuration).
    #[command(long_about = "Fingerprint, plan and preprocess an nnU-Net raw data set as \
        nnUNetv2_plan_and_preprocess does (default ExperimentPlanner: 2d and 3d_fullres plans), \
        and derive MedDINOv3's 2d_896 configuration (-c 2d_896, or --patch-size N for 2d_N). \
        Reads $nnUNet_raw/DatasetXXX_Name, writes dataset_fingerprint.json, nnUNetPlans.json, \
        dataset.json, gt_segmentations/ and one folder per configuration's data_identifier \
        into $nnUNet_preprocessed/DatasetXXX_Name. Preprocessed cases are {id}.npy (float32 \
        C,Z,Y,X), {id}_seg.npy (int16) and {id}.json (properties, class locations); cases already \
        written are skipped unless --overwrite.")]
    PlanAndPreprocess(plan::PlanArgs),

    /// Fine-tune a MedDINOv3 / DINOv3 segmentation network on a preprocessed data set
    /// (nnUNetv2_train).
    #[command(
        long_about = "Fine-tune a MedDINOv3 / DINOv3 segmentation network on a preprocessed \
        data set, as nnUNetv2_train does with the MedDINOv3 trainers: epochs of training iterations \
        on augmented 2-D patches (foreground oversampling 0.33), validation iterations with the \
        pseudo Dice and its EMA, checkpoint_best / checkpoint_latest / checkpoint_final, a training \
        log and progress.png in $nnUNet_results/DatasetXXX/<trainer>__nnUNetPlans__<config>/fold_<f>/. \
        --continue resumes from checkpoint_latest after an interruption."
    )]
    Train(train::TrainArgs),

    /// Segment volumes with trained folds: sliding windows, Gaussian weighting, mirroring
    /// (nnUNetv2_predict).
    #[command(long_about = "Segment the volumes in a folder with one or more trained folds, as \
        nnUNetv2_predict does: each case is preprocessed with the plans (crop, normalise, resample), \
        each slice predicted with sliding patches (step 0.5, Gaussian importance, mirroring over both \
        in-plane axes unless --disable-tta), the folds' logits averaged, resampled back to the \
        original geometry and argmaxed; label maps are written with the input's exact geometry. \
        Reads checkpoints of `meddino train` (checkpoint_*.safetensors) or of the Python MedDINOv3 \
        trainers (checkpoint_*.pth, with plans.json and dataset.json beside the folds). The input \
        folder holds channel files {case}_{XXXX}{ending} and/or sub-folders of one DICOM series \
        each (a case named after the folder, read as `meddino convert dicom` reads it).")]
    Predict(predict::PredictArgs),

    /// Score a folder of predictions with Dice, HD95 and NSD as MedDINOv3 does.
    #[command(long_about = "Score a folder of predicted label maps against reference labels \
        with Dice, HD95 and NSD, as MedDINOv3's compute_metrics.py does (MONAI's definitions; \
        `--nsd-method surfel` for DeepMind surface-distance's). Writes segmentation_metrics.csv \
        (one row per case, NaN as empty cells) and summary.json (per class mean and sample std, \
        and their class-wise average; NaN as null) and prints the summary. A class absent from \
        a case's label is NaN for that case and skipped in the means.")]
    Evaluate(evaluate::EvaluateArgs),

    /// Convert images into the formats the pipeline reads: `convert dicom DIR OUT.nii.gz`.
    #[command(long_about = "Convert images into the formats the pipeline reads. `convert dicom \
        DIR OUT.nii.gz` writes the DICOM series in DIR as one NIfTI image with SimpleITK's \
        geometry.")]
    Convert(convert::ConvertArgs),

    /// Show a backbone's patch features of a CT slice: PCA colours and patch similarity.
    #[command(long_about = "Load a DINOv3 / MedDINOv3 backbone checkpoint, extract the patch \
        features of one CT slice (MedDINOv3's demo normalisation: HU clipped to [-1000, 1000], \
        standardised, repeated to 3 channels, resized to --size) and write DIR/pca.png (the \
        first three principal components as colours, beside the slice) and, with --point, \
        DIR/similarity.png (cosine similarity of that pixel's patch to every patch).")]
    Features(features::FeaturesArgs),

    /// Run the whole pipeline on generated CT phantoms: plan, preprocess, train, predict,
    /// evaluate (about 9 minutes on 2 cores).
    #[command(
        long_about = "Run the whole pipeline with nothing downloaded: generate abdominal CT \
        phantoms (liver, kidneys, spleen among unlabelled structures of overlapping Hounsfield \
        units) in nnU-Net raw format, plan and preprocess them (2d), train a small \
        Primus_Multiscale (a 4-block DINOv3 ViT) within the time budget on the CPU, predict the \
        held-out phantoms, score them (Dice, HD95, NSD 1 mm) and print the table. Writes into \
        --out: nnUNet_raw/, nnUNet_preprocessed/, nnUNet_results/, predictions/ (NIfTI), \
        segmentation_metrics.csv, summary.json, progress.png and overlays.png."
    )]
    Demo(demo::DemoArgs),
}

/// The folder of a data set given by id (`1`, `001`, `Dataset001`) or name, under `base`
/// (the raw, preprocessed or results folder).
pub(crate) fn find_dataset(base: &Path, wanted: &str) -> anyhow::Result<PathBuf> {
    let entries = std::fs::read_dir(base).with_context(|| format!("cannot list {}", base.display()))?;
    let names: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    let by_id = wanted
        .trim_start_matches("Dataset")
        .parse::<u32>()
        .ok()
        .map(|id| format!("Dataset{id:03}_"));
    let matches: Vec<&String> = names
        .iter()
        .filter(|n| *n == wanted || by_id.as_ref().is_some_and(|prefix| n.starts_with(prefix)))
        .collect();
    match matches[..] {
        [one] => Ok(base.join(one)),
        [] => bail!(
            "no data set {wanted:?} in {} (expected a folder DatasetXXX_Name)",
            base.display()
        ),
        _ => bail!("data set {wanted:?} is ambiguous in {}: {matches:?}", base.display()),
    }
}

/// The error and its causes, one `: `-joined line, leaving out a cause whose text the line
/// already holds: our errors quote their source in their own message (so a library user
/// sees it too), which `{:#}` would print a second time.
pub fn describe_error(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

/// nnU-Net's multi-letter single-dash flags (`-tr`), which clap's short options (one letter)
/// cannot express, rewritten to their long form.
pub fn nnunet_style_flag(arg: std::ffi::OsString) -> std::ffi::OsString {
    match arg.to_str() {
        Some("-tr") => "--tr".into(),
        Some(other) if other.starts_with("-tr=") => format!("-{other}").into(),
        _ => arg,
    }
}

/// Sends `tracing` output to stderr at `level`, unless `RUST_LOG` says otherwise.
pub fn init_logging(level: tracing::Level) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level.as_str()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Runs the parsed command.
///
/// # Errors
///
/// Whatever the command fails with.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let command = cli.command;
    tracing::debug!(?command, "dispatching");
    match command {
        Command::Evaluate(args) => evaluate::run(args),
        Command::PlanAndPreprocess(args) => plan::run(args),
        Command::Features(args) => features::run(args),
        Command::Train(args) => train::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Convert(args) => convert::run(args),
    }
}
