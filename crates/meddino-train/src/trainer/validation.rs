//! nnU-Net's final validation of a trained fold.

use nnunet_data::io::{ImageWriter, ItkGeometry, NiftiIo};
use nnunet_data::preprocess::PreprocessingPlan;

use super::Trainer;
use crate::error::{Error, Result};
use crate::evaluation::{evaluate_folder, foreground_classes, FolderEvaluation};
use crate::predict::{logits_to_labels, sliding_window_logits, SlidingWindowOptions};

impl Trainer<'_> {
    /// nnU-Net's final validation: every validation case is predicted from its preprocessed
    /// data (sliding windows with mirroring), exported in its original geometry to
    /// `fold_<f>/validation/{id}{file_ending}`, and scored against the data set's
    /// `gt_segmentations` (Dice, HD95, NSD 1 mm) into `validation/segmentation_metrics.csv`
    /// and `validation/summary.json`. Returns the scores, or `None` when there is no
    /// `gt_segmentations` folder to score against.
    ///
    /// # Errors
    ///
    /// When a prediction or a file write fails.
    pub fn validate_final(&self) -> Result<Option<FolderEvaluation>> {
        let folder = self.options.fold_folder().join("validation");
        std::fs::create_dir_all(&folder).map_err(|source| Error::Write {
            path: folder.clone(),
            source,
        })?;
        let ending = self.dataset.file_ending.clone().unwrap_or_else(|| ".nii.gz".into());
        let plan = PreprocessingPlan::from_plans(&self.init["plans"], &self.configuration)?;
        let options = SlidingWindowOptions::default();
        for (i, case) in self.val_cases.iter().enumerate() {
            let path = folder.join(format!("{}{ending}", case.id));
            let logits = sliding_window_logits(
                &[self.network.as_ref()],
                case.data()?,
                self.train_sampler.augmentation.patch,
                &options,
                &self.options.device,
            )?;
            let prediction = logits_to_labels(&logits, &case.properties, &plan, false)?;
            let stuff = &case.properties.sitk_stuff;
            let geometry = ItkGeometry {
                spacing: stuff.spacing.clone(),
                origin: stuff.origin.clone(),
                direction: stuff.direction.clone(),
            };
            NiftiIo.write_seg(prediction.labels.view(), &path, &geometry)?;
            self.log(&format!(
                "validation: predicted {} ({}/{})",
                case.id,
                i + 1,
                self.val_cases.len()
            ))?;
        }
        let gt = self.options.preprocessed.join("gt_segmentations");
        if !gt.is_dir() {
            self.log(&format!(
                "{} is missing: validation predictions are not scored",
                gt.display()
            ))?;
            return Ok(None);
        }
        let classes = foreground_classes(&self.dataset, &self.dataset_path)?;
        let scores = evaluate_folder(&folder, &gt, &classes, &ending, &Default::default(), &())?;
        scores.write(&folder)?;
        let mean = |metric: &str| scores.summary.to_json()["classwise_average"][metric]["mean"].as_f64();
        self.log(&format!(
            "validation: mean Dice {}, HD95 {}, NSD {} (class-wise average over {} cases)",
            mean("dice").map_or("n/a".into(), |v| format!("{v:.4}")),
            mean("hd95").map_or("n/a".into(), |v| format!("{v:.2}")),
            mean("nsd").map_or("n/a".into(), |v| format!("{v:.4}")),
            scores.cases.len()
        ))?;
        Ok(Some(scores))
    }
}
