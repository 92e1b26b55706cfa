//! `meddino plan-and-preprocess`: nnUNetv2_plan_and_preprocess, plus MedDINOv3's `2d_896`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use meddino::data::io::{read_images, remove_stale_temporaries, write_atomic};
use meddino::data::preprocess::store::{class_locations, is_done, write_case};
use meddino::data::preprocess::{preprocess_case_owned, PreprocessingPlan};
use meddino::data::{Fingerprint, LabelValue, Plans, RawDataset};
use rayon::prelude::*;

/// Arguments of `meddino plan-and-preprocess`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Data set: its id (`1`, `001`) or folder name (`Dataset001_Phantom`) under the raw folder.
    #[arg(short = 'd', long = "dataset", value_name = "ID")]
    dataset: String,

    /// Configurations to preprocess (repeat): `2d`, `3d_fullres`, or `2d_N` for a derived
    /// 2-D configuration with N×N patches (MedDINOv3's `2d_896`) [default: 2d].
    #[arg(short = 'c', long = "configuration", value_name = "NAME")]
    configurations: Vec<String>,

    /// Also derive (and preprocess) `2d_N` for this patch size (repeat for several).
    #[arg(long = "patch-size", value_name = "N")]
    patch_sizes: Vec<usize>,

    /// Check the raw data set as nnU-Net's --verify_dataset_integrity does, and stop on problems.
    #[arg(long)]
    verify: bool,

    /// Recompute the fingerprint even if dataset_fingerprint.json exists.
    #[arg(long)]
    clean: bool,

    /// Preprocess cases again even if their output exists.
    #[arg(long)]
    overwrite: bool,

    /// nnU-Net raw folder [default: $nnUNet_raw].
    #[arg(long, value_name = "DIR", env = "nnUNet_raw")]
    raw: PathBuf,

    /// nnU-Net preprocessed folder [default: $nnUNet_preprocessed].
    #[arg(long, value_name = "DIR", env = "nnUNet_preprocessed")]
    preprocessed: PathBuf,
}

impl PlanArgs {
    /// Arguments for planning and preprocessing `configurations` of data set `dataset`.
    pub(crate) fn new(dataset: &str, raw: PathBuf, preprocessed: PathBuf, configurations: &[&str]) -> Self {
        Self {
            dataset: dataset.to_string(),
            configurations: configurations.iter().map(|c| c.to_string()).collect(),
            patch_sizes: Vec::new(),
            verify: false,
            clean: false,
            overwrite: false,
            raw,
            preprocessed,
        }
    }
}

/// Runs `meddino plan-and-preprocess`.
pub fn run(args: PlanArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let folder = super::find_dataset(&args.raw, &args.dataset)?;
    let name = folder
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let dataset = RawDataset::open(&folder)?;
    anyhow::ensure!(
        !dataset.cases.is_empty(),
        "{}: no training cases in imagesTr",
        folder.display()
    );

    if args.verify {
        let problems = dataset.verify();
        if !problems.is_empty() {
            bail!(
                "{}: the data set has {} problem(s):\n  {}",
                folder.display(),
                problems.len(),
                problems.join("\n  ")
            );
        }
        eprintln!("{name}: {} cases verified", dataset.cases.len());
    }

    let out = args.preprocessed.join(&name);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let fingerprint_path = out.join("dataset_fingerprint.json");
    let fingerprint = if fingerprint_path.is_file() && !args.clean {
        let text = std::fs::read_to_string(&fingerprint_path)?;
        serde_json::from_str(&text).with_context(|| format!("{}: not a fingerprint", fingerprint_path.display()))?
    } else {
        let fingerprint = Fingerprint::extract(&dataset)?;
        fingerprint.write(&fingerprint_path)?;
        fingerprint
    };

    // Plan; configurations of an existing plans file that this planner does not make survive.
    let plans_path = out.join("nnUNetPlans.json");
    let mut plans = Plans::plan(&name, &dataset.dataset_json, &fingerprint);
    if plans_path.is_file() {
        let existing = Plans::read(&plans_path)?;
        for config in existing.configuration_names() {
            if plans.value["configurations"].get(&config).is_none() {
                if let Some(configurations) = plans.value["configurations"].as_object_mut() {
                    let _ = configurations.insert(config.clone(), existing.value["configurations"][&config].clone());
                }
            }
        }
    }
    let mut wanted = if args.configurations.is_empty() {
        vec!["2d".to_string()]
    } else {
        args.configurations.clone()
    };
    for patch in &args.patch_sizes {
        wanted.push(format!("2d_{patch}"));
    }
    for config in &wanted {
        if let Some(patch) = config.strip_prefix("2d_").and_then(|p| p.parse::<usize>().ok()) {
            let _ = plans.add_derived_2d(patch)?;
        }
    }
    plans.write(&plans_path)?;
    std::fs::copy(folder.join("dataset.json"), out.join("dataset.json")).context("cannot copy dataset.json")?;
    // A split placed in the raw folder is taken over (an existing one is kept).
    let splits = folder.join("splits_final.json");
    if splits.is_file() && !out.join("splits_final.json").exists() {
        let folds = meddino::data::split::read_splits(&splits)?;
        meddino::data::split::write_splits(&out.join("splits_final.json"), &folds)?;
    }

    let classes: Vec<i16> = dataset
        .dataset_json
        .foreground()
        .filter_map(|e| match e.value {
            LabelValue::Label(v) => i16::try_from(v).ok(),
            LabelValue::Region(_) => None,
        })
        .collect();
    for config in &wanted {
        let configuration = plans.configuration(config)?;
        let plan = PreprocessingPlan::from_plans(&plans.value, &configuration)?;
        let identifier = configuration
            .get("data_identifier")
            .and_then(|v| v.as_str())
            .unwrap_or(config)
            .to_string();
        let target = out.join(&identifier);
        // A killed earlier run may have left half-written temporaries; its finished cases stay.
        let _ = remove_stale_temporaries(&target)?;
        let bar = ProgressBar::new(dataset.cases.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>12} {bar:30} {pos}/{len} {elapsed_precise} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(config.clone());
        let done = dataset
            .cases
            .par_iter()
            .map(|case| -> anyhow::Result<bool> {
                if !args.overwrite && is_done(&target, &case.id) {
                    bar.inc(1);
                    return Ok(false);
                }
                let images = read_images(&case.images)?;
                let label = read_images(std::slice::from_ref(&case.label))?;
                // Handed over: each array is dropped as soon as preprocessing is done with it.
                let preprocessed =
                    preprocess_case_owned(images, Some(label), &plan).with_context(|| format!("case {}", case.id))?;
                let locations = class_locations(&preprocessed.seg, &classes);
                write_case(&target, &case.id, &preprocessed, &locations)?;
                bar.set_message(case.id.clone());
                bar.inc(1);
                Ok(true)
            })
            .collect::<anyhow::Result<Vec<bool>>>()?;
        bar.finish_and_clear();
        let written = done.iter().filter(|&&d| d).count();
        eprintln!(
            "{config}: {written} case(s) preprocessed, {} already done, into {}",
            done.len() - written,
            target.display()
        );
    }

    // nnU-Net evaluates final validation against these copies.
    let ending = dataset
        .dataset_json
        .file_ending
        .clone()
        .unwrap_or_else(|| ".nii.gz".into());
    let gt = out.join("gt_segmentations");
    std::fs::create_dir_all(&gt).with_context(|| format!("cannot create {}", gt.display()))?;
    for case in &dataset.cases {
        let copy = gt.join(format!("{}{ending}", case.id));
        if !copy.is_file() || args.overwrite {
            let bytes = std::fs::read(&case.label).with_context(|| format!("cannot read {}", case.label.display()))?;
            write_atomic(&copy, |w| w.write_all(&bytes))?;
        }
    }
    eprintln!(
        "{name}: planned and preprocessed in {:.1} s; plans at {}",
        start.elapsed().as_secs_f64(),
        plans_path.display()
    );
    Ok(())
}
