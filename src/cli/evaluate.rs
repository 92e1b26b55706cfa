//! `meddino evaluate`: score a folder of predictions as MedDINOv3's `compute_metrics.py`.

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use meddino::data::DatasetJson;
use meddino::eval::{CaseOptions, ClassSummary, Statistic, SurfaceMethod};
use meddino::train::evaluation::{evaluate_folder, foreground_classes, Progress, METRICS_CSV, SUMMARY_JSON};

/// Arguments of `meddino evaluate`.
#[derive(Debug, clap::Args)]
pub struct EvaluateArgs {
    /// Folder of predicted label maps (the cases are its files with the data set's file ending).
    #[arg(long, value_name = "DIR")]
    pred: PathBuf,

    /// Folder of reference label maps, named as the predictions (e.g. the raw labelsTr).
    #[arg(long, value_name = "DIR")]
    labels: PathBuf,

    /// The data set's dataset.json: the classes scored (foreground labels) and the file ending.
    #[arg(long, value_name = "FILE")]
    dataset_json: PathBuf,

    /// NSD tolerance in mm.
    #[arg(long, value_name = "MM", default_value_t = 1.0, value_parser = non_negative_mm)]
    nsd_tolerance_mm: f64,

    /// Surface definition for HD95 and NSD: `monai` (boundary voxels; MedDINOv3's numbers) or
    /// `surfel` (DeepMind surface-distance's area-weighted surface elements).
    #[arg(long, value_name = "METHOD", default_value = "monai")]
    nsd_method: SurfaceMethod,

    /// Where to write segmentation_metrics.csv and summary.json [default: the predictions folder].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// A tolerance: finite and not negative.
fn non_negative_mm(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(mm) if mm.is_finite() && mm >= 0.0 => Ok(mm),
        _ => Err(format!("expected a finite distance >= 0 in mm, got {text:?}")),
    }
}

/// A progress bar over cases, drawn only on a terminal.
struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&self, total: usize) {
        self.0.set_length(total as u64);
    }

    fn case_done(&self, case: &str) {
        self.0.set_message(case.to_string());
        self.0.inc(1);
    }
}

/// Runs `meddino evaluate`.
pub fn run(args: EvaluateArgs) -> anyhow::Result<()> {
    let dataset = DatasetJson::read(&args.dataset_json)?;
    let classes = foreground_classes(&dataset, &args.dataset_json)?;
    anyhow::ensure!(
        !classes.is_empty(),
        "{}: no foreground label to evaluate",
        args.dataset_json.display()
    );
    let file_ending = dataset.file_ending.clone().unwrap_or_else(|| ".nii.gz".into());
    let options = CaseOptions::new()
        .with_method(args.nsd_method)
        .with_nsd_tolerance_mm(args.nsd_tolerance_mm);

    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} cases {elapsed_precise} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let bar = Bar(bar);
    let evaluation = evaluate_folder(&args.pred, &args.labels, &classes, &file_ending, &options, &bar)?;
    bar.0.finish_and_clear();

    let out = args.out.unwrap_or_else(|| args.pred.clone());
    evaluation.write(&out)?;
    print_summary(&evaluation.summary, args.nsd_tolerance_mm);
    eprintln!(
        "{} cases scored; wrote {} and {}",
        evaluation.cases.len(),
        out.join(METRICS_CSV).display(),
        out.join(SUMMARY_JSON).display()
    );
    Ok(())
}

/// The summary as a table on stdout.
pub(crate) fn print_summary(summary: &meddino::eval::Summary, tolerance_mm: f64) {
    let cell = |s: Statistic, digits: usize| format!("{:.digits$} ± {:.digits$}", s.mean, s.std);
    let row = |name: &str, s: &ClassSummary| {
        println!(
            "{name:<24} {:>18} {:>20} {:>18}",
            cell(s.dice, 4),
            cell(s.hd95, 2),
            cell(s.nsd, 4)
        );
    };
    println!(
        "{:<24} {:>18} {:>20} {:>18}",
        "class",
        "dice",
        "hd95 (mm)",
        format!("nsd@{tolerance_mm}mm")
    );
    for (class, s) in &summary.classes {
        row(&format!("{} ({})", class.name, class.value), s);
    }
    row("classwise_average", &summary.classwise_average);
}
