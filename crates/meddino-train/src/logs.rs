//! What the trainer records per epoch (nnU-Net's `nnUNetLogger` fields) and the validation
//! pseudo Dice with its exponential moving average, which selects `checkpoint_best`.

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Per-epoch logs, one entry per completed epoch in every list.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainingLogs {
    /// Mean foreground pseudo Dice (NaN-skipping mean over classes).
    pub mean_fg_dice: Vec<f64>,
    /// Its EMA: `0.9·previous + 0.1·current`, the first epoch's value as is.
    pub ema_fg_dice: Vec<f64>,
    /// Pseudo Dice per foreground class (NaN as `null` where a class never occurred).
    pub dice_per_class_or_region: Vec<Vec<Option<f64>>>,
    /// Mean training loss.
    pub train_losses: Vec<f64>,
    /// Mean validation loss.
    pub val_losses: Vec<f64>,
    /// Learning rate of the first parameter group.
    pub lrs: Vec<f64>,
    /// Epoch start, seconds since the Unix epoch.
    pub epoch_start_timestamps: Vec<f64>,
    /// Epoch end, seconds since the Unix epoch.
    pub epoch_end_timestamps: Vec<f64>,
}

impl TrainingLogs {
    /// Completed epochs.
    pub fn epochs(&self) -> usize {
        self.epoch_end_timestamps.len()
    }

    /// The EMA after an epoch with mean pseudo Dice `mean`.
    pub fn next_ema(&self, mean: f64) -> f64 {
        match self.ema_fg_dice.last() {
            Some(&previous) if !previous.is_nan() => 0.9 * previous + 0.1 * mean,
            _ => mean,
        }
    }

    /// Drops entries beyond `epochs` complete epochs (an epoch interrupted after logging
    /// some of its values).
    pub fn truncate(&mut self, epochs: usize) {
        for list in [
            &mut self.mean_fg_dice,
            &mut self.ema_fg_dice,
            &mut self.train_losses,
            &mut self.val_losses,
            &mut self.lrs,
            &mut self.epoch_start_timestamps,
            &mut self.epoch_end_timestamps,
        ] {
            list.truncate(epochs);
        }
        self.dice_per_class_or_region.truncate(epochs);
    }
}

/// True positives, false positives and false negatives per foreground class, summed over
/// validation batches (nnU-Net's `validation_step` on the argmax).
#[derive(Debug, Clone, PartialEq)]
pub struct PseudoDice {
    tp: Vec<f64>,
    fp: Vec<f64>,
    fn_: Vec<f64>,
}

impl PseudoDice {
    /// Counters for `num_classes` classes (background included, then dropped).
    pub fn new(num_classes: usize) -> Self {
        let n = num_classes.saturating_sub(1);
        Self {
            tp: vec![0.0; n],
            fp: vec![0.0; n],
            fn_: vec![0.0; n],
        }
    }

    /// Adds a batch: `logits` `[B, K, H, W]`, `target` `[B, 1, H, W]` or `[B, H, W]` labels.
    ///
    /// # Errors
    ///
    /// On shape mismatches.
    pub fn add(&mut self, logits: &Tensor, target: &Tensor) -> Result<()> {
        let classes = logits.dim(1)?;
        let prediction = logits.argmax_keepdim(1)?.to_dtype(DType::U32)?;
        let target = if target.rank() == logits.rank() {
            target.to_dtype(DType::U32)?
        } else {
            target.to_dtype(DType::U32)?.unsqueeze(1)?
        };
        let ids = Tensor::arange(1u32, classes as u32, logits.device())?.reshape((1, classes - 1, 1, 1))?;
        let p = prediction.broadcast_eq(&ids)?.to_dtype(DType::F32)?;
        let y = target.broadcast_eq(&ids)?.to_dtype(DType::F32)?;
        let per_class = |t: Tensor| -> Result<Vec<f32>> { Ok(t.sum(0)?.flatten_from(1)?.sum(D::Minus1)?.to_vec1()?) };
        let tp = per_class((&p * &y)?)?;
        let predicted = per_class(p)?;
        let truth = per_class(y)?;
        for c in 0..classes - 1 {
            self.tp[c] += f64::from(tp[c]);
            self.fp[c] += f64::from(predicted[c] - tp[c]);
            self.fn_[c] += f64::from(truth[c] - tp[c]);
        }
        Ok(())
    }

    /// `2TP / (2TP + FP + FN)` per class (NaN for a class neither predicted nor present).
    pub fn per_class(&self) -> Vec<f64> {
        (0..self.tp.len())
            .map(|c| {
                let denominator = 2.0 * self.tp[c] + self.fp[c] + self.fn_[c];
                if denominator == 0.0 {
                    f64::NAN
                } else {
                    2.0 * self.tp[c] / denominator
                }
            })
            .collect()
    }

    /// The mean over classes that are not NaN (NaN when all are).
    pub fn mean(&self) -> f64 {
        let values: Vec<f64> = self.per_class().into_iter().filter(|v| !v.is_nan()).collect();
        if values.is_empty() {
            f64::NAN
        } else {
            values.iter().sum::<f64>() / values.len() as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn pseudo_dice_counts_the_argmax() {
        // 1 sample, 3 classes, 4 pixels: prediction [1, 1, 2, 0], truth [1, 2, 2, 0].
        let logits = Tensor::new(
            &[[[[0f32, 0.0, 0.0, 5.0]], [[5.0, 5.0, 0.0, 0.0]], [[0.0, 0.0, 5.0, 0.0]]]],
            &Device::Cpu,
        )
        .expect("logits");
        let target = Tensor::new(&[[[1u32, 2, 2, 0]]], &Device::Cpu).expect("target");
        let mut dice = PseudoDice::new(3);
        dice.add(&logits, &target).expect("add");
        let per_class = dice.per_class();
        assert!((per_class[0] - 2.0 / 3.0).abs() < 1e-12, "class 1: TP 1, FP 1, FN 0");
        assert!((per_class[1] - 2.0 / 3.0).abs() < 1e-12, "class 2: TP 1, FP 0, FN 1");
        assert!((dice.mean() - 2.0 / 3.0).abs() < 1e-12);
        assert!(PseudoDice::new(3).mean().is_nan());
    }

    #[test]
    fn ema_starts_at_the_first_value() {
        let mut logs = TrainingLogs::default();
        assert_eq!(logs.next_ema(0.5), 0.5);
        logs.ema_fg_dice.push(0.5);
        assert!((logs.next_ema(1.0) - 0.55).abs() < 1e-12);
    }
}
