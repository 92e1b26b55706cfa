//! `meddino predict`: nnUNetv2_predict with trained folds.

use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use meddino::data::io::{input_cases, write_atomic, ImageWriter, NiftiIo};
use meddino::train::model::TrainedModel;
use meddino::train::predict::{predict_volume, prediction_plan, SlidingWindowOptions};
use meddino::train::trainer::{CHECKPOINT_BEST, CHECKPOINT_FINAL};
use meddino::train::TrainerRegistry;

use super::train::DeviceArg;

/// Arguments of `meddino predict`.
#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    /// Input folder: files `{case}_{XXXX}{ending}`, one per channel, as imagesTs; and/or
    /// sub-folders each holding one DICOM series (a case named after the folder).
    #[arg(short = 'i', long = "input", value_name = "DIR")]
    input: PathBuf,

    /// Output folder (created): `{case}{ending}` label maps in the inputs' geometry (a DICOM
    /// series' case gets the geometry SimpleITK's series reader gives it).
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    output: PathBuf,

    /// Data set id or name under the results folder.
    #[arg(short = 'd', long = "dataset", value_name = "DATASET")]
    dataset: String,

    /// Configuration the model was trained on.
    #[arg(short = 'c', long = "configuration", value_name = "CONFIG")]
    configuration: String,

    /// Folds to ensemble (their logits are averaged) [default: 0 1 2 3 4, those present].
    #[arg(short = 'f', long = "folds", value_name = "FOLD", num_args = 1..)]
    folds: Vec<String>,

    /// Trainer, also as `-tr`.
    #[arg(
        long = "tr",
        visible_alias = "trainer",
        value_name = "TRAINER",
        default_value = "nnUNetTrainer"
    )]
    trainer: String,

    /// Plans identifier.
    #[arg(short = 'p', long = "plans", default_value = "nnUNetPlans")]
    plans: String,

    /// Which checkpoint of each fold.
    #[arg(long, value_enum, default_value = "final")]
    checkpoint: CheckpointArg,

    /// No mirroring test-time augmentation (4× faster).
    #[arg(long)]
    disable_tta: bool,

    /// Also write `{case}.npz` with the softmax `probabilities` (float32, K×Z×Y×X), as nnU-Net's
    /// --save_probabilities.
    #[arg(long)]
    save_probabilities: bool,

    /// Predict cases whose output exists again.
    #[arg(long)]
    overwrite: bool,

    /// Where to predict.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,

    /// Tiles per forward pass.
    #[arg(long, value_name = "N", default_value_t = 4)]
    tile_batch: usize,

    /// nnU-Net results folder [default: $nnUNet_results].
    #[arg(long, value_name = "DIR", env = "nnUNet_results")]
    results: PathBuf,
}

/// `--checkpoint`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CheckpointArg {
    /// `checkpoint_final`.
    Final,
    /// `checkpoint_best` (best EMA pseudo Dice).
    Best,
}

/// The checkpoint file of a fold: ours (safetensors) or the Python trainers' `.pth`.
fn checkpoint_file(fold: &Path, which: CheckpointArg) -> Option<PathBuf> {
    let ours = match which {
        CheckpointArg::Final => CHECKPOINT_FINAL,
        CheckpointArg::Best => CHECKPOINT_BEST,
    };
    let pth = ours.replace(".safetensors", ".pth");
    [fold.join(ours), fold.join(pth)].into_iter().find(|p| p.is_file())
}

/// Runs `meddino predict`.
pub fn run(args: PredictArgs) -> anyhow::Result<()> {
    let dataset_folder = super::find_dataset(&args.results, &args.dataset)?;
    let trainer_folder = dataset_folder.join(format!("{}__{}__{}", args.trainer, args.plans, args.configuration));
    anyhow::ensure!(
        trainer_folder.is_dir(),
        "no trained model {} (train with `meddino train … -tr {}` first)",
        trainer_folder.display(),
        args.trainer
    );
    let folds: Vec<String> = if args.folds.is_empty() {
        (0..5)
            .map(|f| f.to_string())
            .filter(|f| trainer_folder.join(format!("fold_{f}")).is_dir())
            .collect()
    } else {
        args.folds.clone()
    };
    anyhow::ensure!(!folds.is_empty(), "no fold_* folder in {}", trainer_folder.display());
    let device = args.device.device()?;
    let registry = TrainerRegistry::builtin();
    let mut models = Vec::new();
    for fold in &folds {
        let folder = trainer_folder.join(format!("fold_{fold}"));
        let path = checkpoint_file(&folder, args.checkpoint).with_context(|| {
            format!(
                "fold {fold}: no {:?} checkpoint in {}",
                args.checkpoint,
                folder.display()
            )
        })?;
        let model = TrainedModel::load(
            &path,
            &registry,
            &trainer_folder,
            (&args.trainer, &args.configuration),
            &device,
        )
        .with_context(|| format!("fold {fold}"))?;
        models.push(model);
    }
    let first = &models[0];
    let (plan, patch) = prediction_plan(&first.plans, &first.configuration)?;
    let ending = first.dataset.file_ending.clone().unwrap_or_else(|| ".nii.gz".into());
    let channels = first.dataset.channel_names.len().max(1);
    let cases = input_cases(&args.input, &ending, channels)?;
    std::fs::create_dir_all(&args.output).with_context(|| format!("cannot create {}", args.output.display()))?;

    let networks: Vec<&dyn meddino::decoder::SegmentationNetwork> = models.iter().map(|m| m.network.as_ref()).collect();
    let options = SlidingWindowOptions {
        mirroring: !args.disable_tta,
        tile_batch: args.tile_batch,
        ..SlidingWindowOptions::default()
    };
    let bar = ProgressBar::new(cases.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} {bar:30} {pos}/{len} {elapsed_precise} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix("predict");
    let mut skipped = 0;
    for (case, source) in &cases {
        let out = args.output.join(format!("{case}{ending}"));
        if out.is_file() && !args.overwrite {
            skipped += 1;
            bar.inc(1);
            continue;
        }
        bar.set_message(case.clone());
        let volume = source.read().with_context(|| format!("case {case}"))?;
        let prediction = predict_volume(
            &networks,
            &volume,
            &plan,
            patch,
            &options,
            args.save_probabilities,
            &device,
        )
        .with_context(|| format!("case {case}"))?;
        if let Some(probabilities) = &prediction.probabilities {
            let path = args.output.join(format!("{case}.npz"));
            // The zip writer seeks, so the archive is built in memory, then written atomically.
            let mut npz = ndarray_npy::NpzWriter::new_compressed(std::io::Cursor::new(Vec::new()));
            npz.add_array("probabilities", probabilities)
                .and_then(|()| npz.finish())
                .map(|cursor| cursor.into_inner())
                .with_context(|| format!("cannot encode {}", path.display()))
                .and_then(|bytes| Ok(write_atomic(&path, |w| w.write_all(&bytes))?))?;
        }
        NiftiIo.write_seg(prediction.labels.view(), &out, &volume.geometry)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    eprintln!(
        "{} case(s) predicted with {} fold(s) ({}), {skipped} already done, into {}",
        cases.len() - skipped,
        folds.len(),
        folds.join(", "),
        args.output.display()
    );
    Ok(())
}
