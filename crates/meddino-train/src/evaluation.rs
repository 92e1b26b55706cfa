//! Scoring a folder of predicted label maps against reference labels, as MedDINOv3's
//! `compute_metrics.py` does, and writing `segmentation_metrics.csv` and `summary.json`.
//!
//! Cases are the prediction files (those ending in the data set's file ending), matched to
//! label files of the same name; labels without a prediction are ignored (a fold's
//! validation set is a subset), predictions without a label are an error listing them all.
//! Classes are the foreground labels of `dataset.json`. The spacing is the label's. Cases
//! are read and scored in parallel on the current rayon pool.

use std::path::Path;

use meddino_eval::{evaluate_case, write_csv, CaseOptions, CaseScores, LabelClass, Summary};
use nnunet_data::io::{read_label_map, write_atomic};
use nnunet_data::{DatasetJson, LabelValue};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// File name of the per-case table.
pub const METRICS_CSV: &str = "segmentation_metrics.csv";
/// File name of the summary.
pub const SUMMARY_JSON: &str = "summary.json";

/// The scores of a folder.
#[derive(Debug, Clone, PartialEq)]
pub struct FolderEvaluation {
    /// The classes scored, by label value.
    pub classes: Vec<LabelClass>,
    /// One entry per prediction file, sorted by file name.
    pub cases: Vec<CaseScores>,
    /// Per-class and class-wise statistics.
    pub summary: Summary,
}

impl FolderEvaluation {
    /// Writes `segmentation_metrics.csv` and `summary.json` into `folder` (created if
    /// missing), each atomically.
    ///
    /// # Errors
    ///
    /// When the folder cannot be created or a file cannot be written; the error names it.
    pub fn write(&self, folder: &Path) -> Result<()> {
        std::fs::create_dir_all(folder).map_err(|source| nnunet_data::Error::Io {
            path: folder.to_path_buf(),
            source,
        })?;
        write_atomic(&folder.join(METRICS_CSV), |out| {
            write_csv(out, &self.classes, &self.cases)
        })?;
        write_atomic(&folder.join(SUMMARY_JSON), |out| {
            serde_json::to_writer_pretty(&mut *out, &self.summary.to_json())?;
            writeln!(out)
        })?;
        Ok(())
    }
}

/// The foreground classes of a data set; regions are not label values and are refused.
///
/// # Errors
///
/// When a foreground entry is a region (region-based data sets are scored per region by
/// nnU-Net, not by MedDINOv3's script).
pub fn foreground_classes(dataset: &DatasetJson, path: &Path) -> Result<Vec<LabelClass>> {
    dataset
        .foreground()
        .map(|entry| match &entry.value {
            LabelValue::Label(value) => Ok(LabelClass {
                value: *value,
                name: entry.name.clone(),
            }),
            LabelValue::Region(values) => Err(Error::UnsupportedLabels {
                path: path.to_path_buf(),
                message: format!(
                    "label {:?} is a region {values:?}; only plain label values can be evaluated",
                    entry.name
                ),
            }),
        })
        .collect()
}

/// The prediction files of `folder` ending in `file_ending`, sorted.
fn prediction_files(folder: &Path, file_ending: &str) -> Result<Vec<String>> {
    let list_error = |source| Error::ListFolder {
        path: folder.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(folder).map_err(list_error)? {
        let entry = entry.map_err(list_error)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(file_ending) && !name.starts_with('.') && entry.path().is_file() {
            names.push(name);
        }
    }
    names.sort();
    if names.is_empty() {
        return Err(Error::NoPredictions {
            folder: folder.to_path_buf(),
            file_ending: file_ending.to_string(),
        });
    }
    Ok(names)
}

/// Hears how a folder evaluation advances, e.g. to drive a progress bar. Both methods
/// default to doing nothing; `()` is the silent observer.
pub trait Progress: Sync {
    /// The evaluation found `total` cases.
    fn start(&self, total: usize) {
        let _ = total;
    }

    /// One case finished (called from worker threads, in any order).
    fn case_done(&self, case: &str) {
        let _ = case;
    }
}

impl Progress for () {}

/// Scores every prediction in `predictions` against the same-named file in `labels`,
/// reporting to `progress` as cases finish.
///
/// # Errors
///
/// When a folder cannot be listed, a prediction has no label, a file cannot be read or is
/// not a label map, a prediction's shape differs from its label's, or the classes include a
/// region; errors name the file or case.
pub fn evaluate_folder(
    predictions: &Path,
    labels: &Path,
    classes: &[LabelClass],
    file_ending: &str,
    options: &CaseOptions,
    progress: &dyn Progress,
) -> Result<FolderEvaluation> {
    let files = prediction_files(predictions, file_ending)?;
    let missing: Vec<String> = files.iter().filter(|f| !labels.join(f).is_file()).cloned().collect();
    if !missing.is_empty() {
        return Err(Error::MissingLabels {
            labels: labels.to_path_buf(),
            files: missing,
        });
    }
    let values: Vec<u16> = classes
        .iter()
        .map(|c| {
            u16::try_from(c.value).map_err(|_| Error::LabelOutOfRange {
                name: c.name.clone(),
                value: c.value,
            })
        })
        .collect::<Result<_>>()?;

    progress.start(files.len());
    let cases = files
        .par_iter()
        .map(|file| {
            let reference = read_label_map(&labels.join(file))?;
            let prediction = read_label_map(&predictions.join(file))?;
            if prediction
                .spacing
                .iter()
                .zip(&reference.spacing)
                .any(|(p, r)| (p - r).abs() > 1e-3 * r)
            {
                tracing::warn!(case = %file, prediction = ?prediction.spacing, label = ?reference.spacing,
                    "prediction spacing differs from the label's; using the label's");
            }
            let scores = evaluate_case(
                prediction.data.view(),
                reference.data.view(),
                &reference.spacing,
                &values,
                options,
            )
            .map_err(|source| Error::Metrics {
                case: file.clone(),
                source,
            })?;
            progress.case_done(file);
            Ok(CaseScores {
                filename: file.clone(),
                classes: scores,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let summary = Summary::new(classes, &cases);
    Ok(FolderEvaluation {
        classes: classes.to_vec(),
        cases,
        summary,
    })
}
