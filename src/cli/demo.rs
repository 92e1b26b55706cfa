//! `meddino demo`: the whole pipeline on generated CT phantoms, within a time budget on the
//! CPU — generate a raw data set, plan and preprocess it, train a small Primus_Multiscale,
//! predict the held-out cases, score them, and draw the results.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::budget::EpochPlanner;

use anyhow::Context;
use meddino::data::io::{read_image, read_images, ImageWriter, NiftiIo};
use meddino::data::ndarray::{s, Array3, Axis};
use meddino::data::phantom::{write_dataset, PhantomOptions};
use meddino::eval::CaseOptions;
use meddino::train::candle::Device;
use meddino::train::evaluation::{evaluate_folder, foreground_classes};
use meddino::train::plot::{render_overlays, save_png, OverlayRow};
use meddino::train::predict::{predict_volume, prediction_plan, SlidingWindowOptions};
use meddino::train::{TrainOptions, Trainer, TrainerRegistry};

/// Arguments of `meddino demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Output folder (the nnU-Net folders, predictions, metrics and pictures go inside).
    #[arg(long, value_name = "DIR", default_value = "meddino-demo")]
    out: PathBuf,

    /// Time budget in minutes for the whole run (training gets what the other steps leave).
    #[arg(long, value_name = "M", default_value_t = 9.0)]
    minutes: f64,

    /// Training phantoms.
    #[arg(long, value_name = "N", default_value_t = 24)]
    train_cases: usize,

    /// Held-out phantoms, predicted and scored at the end.
    #[arg(long, value_name = "N", default_value_t = 6)]
    test_cases: usize,

    /// Seed of the phantoms and of training.
    #[arg(long, default_value_t = 7)]
    seed: u32,
}

const DATASET: &str = "Dataset990_Phantom";
const TRAINER: &str = "phantom_demo_Trainer";
/// Training iterations per epoch and validation iterations (small epochs: the budget is
/// spent in whole epochs, and the schedule and plots need several).
const ITERATIONS: usize = 80;
const VAL_ITERATIONS: usize = 4;
/// Batch size: the plans' (29 for 128² patches) would spend the budget on few steps; 4
/// with twice the steps beat 8 on the same budget (mean Dice 0.853 against 0.804).
const BATCH: usize = 4;

fn step(start: Instant, what: &str) {
    eprintln!("[{:>5.1} s] {what}", start.elapsed().as_secs_f64());
}

/// Runs `meddino demo`.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let budget = args.minutes * 60.0;
    anyhow::ensure!(args.train_cases >= 5, "--train-cases must be at least 5 (five folds)");
    anyhow::ensure!(args.test_cases >= 1, "--test-cases must be at least 1");
    let out = args.out.clone();
    let raw = out.join("nnUNet_raw");
    let preprocessed = out.join("nnUNet_preprocessed");
    let results = out.join("nnUNet_results");
    let dataset_folder = raw.join(DATASET);

    step(
        start,
        &format!(
            "generating {} + {} CT phantoms into {}",
            args.train_cases,
            args.test_cases,
            dataset_folder.display()
        ),
    );
    write_dataset(
        &dataset_folder,
        &PhantomOptions::default(),
        args.seed,
        args.train_cases,
        args.test_cases,
    )?;

    step(start, "planning and preprocessing (2d)");
    super::plan::run(super::plan::PlanArgs::new(
        DATASET,
        raw.clone(),
        preprocessed.clone(),
        &["2d"],
    ))?;

    let registry = TrainerRegistry::builtin();
    let mut options = TrainOptions::new(
        preprocessed.join(DATASET),
        results.join(DATASET),
        "2d",
        "0",
        registry.get(TRAINER)?.clone(),
    );
    options.iterations = ITERATIONS;
    options.val_iterations = VAL_ITERATIONS;
    options.batch_size = Some(BATCH);
    options.seed = u64::from(args.seed);
    options.epochs = 1000;
    let console = super::train::EpochBar::new(true);
    let mut trainer = Trainer::new(options, &console)?;
    step(
        start,
        &format!(
            "training {TRAINER} ({} parameters, Primus_Multiscale on vit_micro) on fold 0",
            trainer.parameter_count()
        ),
    );
    // The number of epochs is planned again after every epoch from the pace of the last
    // one, so a slower or busier machine trains fewer epochs instead of overrunning, and
    // the budget is used wherever it runs. Prediction, scoring and the figures take about
    // half an epoch and 5 s (8 s and 1 s beside 20-s epochs on 2 Xeon cores). The linear
    // schedule runs over the training time the plan gives, not over the epochs.
    let mut planner = EpochPlanner::new(budget, 5.0, 0.5);
    loop {
        let summary = trainer.run_epoch()?;
        let plan = planner.plan(trainer.epoch(), start.elapsed().as_secs_f64(), summary.seconds);
        trainer.set_epochs(plan.epochs);
        trainer.set_schedule_progress(plan.progress);
        if plan.changed {
            step(
                start,
                &format!(
                    "epochs take {:.1} s: {} epochs fit the budget (training until {:.0} s, {:.0} s kept \
                     for prediction and scoring); learning-rate schedule {:.0} % through",
                    plan.pace,
                    plan.epochs,
                    plan.train_until,
                    plan.reserve,
                    100.0 * plan.progress
                ),
            );
        }
        if trainer.epoch() >= plan.epochs {
            break;
        }
    }
    trainer.fit()?;
    console.bar.finish_and_clear();
    let network = trainer.network();

    step(start, "predicting the held-out phantoms");
    let plans = meddino::data::Plans::read(&preprocessed.join(DATASET).join("nnUNetPlans.json"))?;
    let (plan, patch) = prediction_plan(&plans, "2d")?;
    let predictions = out.join("predictions");
    std::fs::create_dir_all(&predictions).with_context(|| format!("cannot create {}", predictions.display()))?;
    let mut ids: Vec<String> = std::fs::read_dir(dataset_folder.join("labelsTs"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".nii.gz").map(str::to_string))
        .collect();
    ids.sort();
    let window = SlidingWindowOptions::default();
    let mut shown = Vec::new();
    for id in &ids {
        let volume = read_images(&[dataset_folder.join(format!("imagesTs/{id}_0000.nii.gz"))])?;
        let prediction = predict_volume(&[network], &volume, &plan, patch, &window, false, &Device::Cpu)?;
        NiftiIo.write_seg(
            prediction.labels.view(),
            &predictions.join(format!("{id}.nii.gz")),
            &volume.geometry,
        )?;
        shown.push((volume.data.index_axis(Axis(0), 0).to_owned(), prediction.labels));
    }

    step(start, "scoring (Dice, HD95, NSD 1 mm)");
    let dataset = meddino::data::DatasetJson::read(&dataset_folder.join("dataset.json"))?;
    let classes = foreground_classes(&dataset, &dataset_folder.join("dataset.json"))?;
    let scores = evaluate_folder(
        &predictions,
        &dataset_folder.join("labelsTs"),
        &classes,
        ".nii.gz",
        &CaseOptions::default(),
        &(),
    )?;
    scores.write(&out)?;
    let fold = trainer.output();
    std::fs::copy(fold.join("progress.png"), out.join("progress.png")).context("cannot copy progress.png")?;
    write_overlays(&out.join("overlays.png"), &dataset_folder, &ids, &shown)?;

    println!();
    super::evaluate::print_summary(&scores.summary, 1.0);
    let mean_dice = scores.summary.to_json()["classwise_average"]["dice"]["mean"].as_f64();
    println!(
        "\nclass-wise mean Dice over {} held-out phantoms: {}",
        ids.len(),
        mean_dice.map_or("n/a".into(), |d| format!("{d:.3}"))
    );
    println!(
        "finished in {:.1} min; results in {}:",
        start.elapsed().as_secs_f64() / 60.0,
        out.display()
    );
    for file in [
        "predictions/",
        "segmentation_metrics.csv",
        "summary.json",
        "progress.png",
        "overlays.png",
    ] {
        println!("  {file}");
    }
    Ok(())
}

/// `overlays.png`: for up to three held-out cases, the slice showing the most organs: image,
/// reference, prediction.
fn write_overlays(
    path: &Path,
    dataset: &Path,
    ids: &[String],
    shown: &[(Array3<f32>, Array3<i32>)],
) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for (id, (image, prediction)) in ids.iter().zip(shown).take(3) {
        let truth = read_image(&dataset.join(format!("labelsTs/{id}.nii.gz")))?;
        let truth = truth
            .data
            .mapv(|v| v as i32)
            .into_dimensionality::<meddino::data::ndarray::Ix3>()
            .context("a 3-D label map")?;
        // The slice showing the most organs, and of those the one whose smallest organ is
        // largest.
        let slice = (0..truth.dim().0)
            .max_by_key(|&z| {
                let mut voxels = std::collections::BTreeMap::<i32, usize>::new();
                for &label in truth.slice(s![z, .., ..]).iter().filter(|&&v| v > 0) {
                    *voxels.entry(label).or_default() += 1;
                }
                (voxels.len(), voxels.values().copied().min().unwrap_or(0))
            })
            .unwrap_or(0);
        rows.push((
            image.index_axis(Axis(0), slice).to_owned(),
            truth.index_axis(Axis(0), slice).to_owned(),
            prediction.index_axis(Axis(0), slice).to_owned(),
        ));
    }
    let rows: Vec<OverlayRow<'_>> = rows
        .iter()
        .map(|(image, truth, prediction)| OverlayRow {
            image: image.view(),
            truth: truth.view(),
            prediction: prediction.view(),
        })
        .collect();
    save_png(path, &render_overlays(&rows, 2))?;
    Ok(())
}
