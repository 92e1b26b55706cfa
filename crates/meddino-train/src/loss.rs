//! nnU-Net's segmentation loss `DC_and_CE_loss`: cross-entropy plus soft Dice (softmax,
//! background excluded, smooth 1e-5), both weighted 1 — the loss the MedDINOv3 trainers
//! optimise. Built from differentiable candle ops only.

use candle_core::{DType, Tensor, D};

use crate::error::Result;

/// Whether soft Dice pools the batch before dividing (nnU-Net's `batch_dice`, set per
/// configuration in the plans: true for 2d).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiceReduction {
    /// One Dice per class over the whole batch.
    Batch,
    /// One Dice per class and sample, then averaged.
    PerSample,
}

/// `[B, K, ...]` one-hot of integer `target` (`[B, 1, ...]` or `[B, ...]`) for `classes`.
fn one_hot(target: &Tensor, classes: usize, like: &Tensor) -> Result<Tensor> {
    let target = if target.rank() == like.rank() {
        target.squeeze(1)?
    } else {
        target.clone()
    };
    let target = target.to_dtype(DType::U32)?.unsqueeze(1)?;
    let shape: Vec<usize> = std::iter::once(1)
        .chain(std::iter::once(classes))
        .chain(std::iter::repeat_n(1, like.rank() - 2))
        .collect();
    let ids = Tensor::arange(0u32, classes as u32, like.device())?.reshape(shape)?;
    Ok(target.broadcast_eq(&ids)?.to_dtype(like.dtype())?)
}

/// Mean cross-entropy of `logits` `[B, K, ...]` against integer labels.
///
/// # Errors
///
/// When the shapes do not fit.
pub fn cross_entropy(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let classes = logits.dim(1)?;
    let log_p = candle_nn::ops::log_softmax(logits, 1)?;
    let picked = (log_p * one_hot(target, classes, logits)?)?.sum_keepdim(1)?;
    Ok(picked.mean_all()?.neg()?)
}

/// nnU-Net's soft Dice loss (negative mean Dice over the foreground classes): softmax over
/// classes, background dropped, `(2·I + 1e-5) / max(P + G + 1e-5, 1e-8)` per class (and
/// sample, for [`DiceReduction::PerSample`]).
///
/// # Errors
///
/// When the shapes do not fit or there is no foreground class.
pub fn soft_dice_loss(logits: &Tensor, target: &Tensor, reduction: DiceReduction) -> Result<Tensor> {
    const SMOOTH: f64 = 1e-5;
    let classes = logits.dim(1)?;
    let probabilities = candle_nn::ops::softmax(logits, 1)?.narrow(1, 1, classes - 1)?;
    let truth = one_hot(target, classes, logits)?.narrow(1, 1, classes - 1)?;
    // Sum over the spatial axes, and the batch for batch Dice.
    let spatial = |t: Tensor| -> Result<Tensor> {
        let t = t.flatten_from(2)?.sum(D::Minus1)?;
        Ok(match reduction {
            DiceReduction::Batch => t.sum(0)?,
            DiceReduction::PerSample => t,
        })
    };
    let intersect = spatial((&probabilities * &truth)?)?;
    let denominator = (spatial(probabilities)? + spatial(truth)?)?;
    let dice = ((intersect * 2.0)? + SMOOTH)?.div(&(denominator + SMOOTH)?.clamp(1e-8, f64::INFINITY)?)?;
    Ok(dice.mean_all()?.neg()?)
}

/// `DC_and_CE_loss`: cross-entropy + soft Dice.
///
/// # Errors
///
/// As [`cross_entropy`] and [`soft_dice_loss`].
pub fn dice_and_ce_loss(logits: &Tensor, target: &Tensor, reduction: DiceReduction) -> Result<Tensor> {
    Ok((cross_entropy(logits, target)? + soft_dice_loss(logits, target, reduction)?)?)
}

/// nnU-Net's deep-supervision weights for `n` outputs: `1/2^i`, the last (lowest
/// resolution) 0, normalised to sum 1 (`[1, .5, .25, 0] / 1.75` for four outputs).
pub fn deep_supervision_weights(n: usize) -> Vec<f64> {
    let mut weights: Vec<f64> = (0..n).map(|i| 0.5f64.powi(i as i32)).collect();
    if n > 1 {
        weights[n - 1] = 0.0;
    }
    let total: f64 = weights.iter().sum();
    weights.iter().map(|w| w / total).collect()
}

/// Labels `[B, 1, H, W]` (or `[B, H, W]`) resized to `[B, 1, height, width]` with
/// `interpolate(mode="nearest-exact")`, as nnU-Net's `DownsampleSegForDSTransform`: output
/// pixel `i` takes source `⌊(i + 0.5)·H/height⌋`.
///
/// # Errors
///
/// When `labels` is not 3- or 4-D.
pub fn downsample_labels(labels: &Tensor, height: usize, width: usize) -> Result<Tensor> {
    let labels = if labels.rank() == 3 {
        labels.unsqueeze(1)?
    } else {
        labels.clone()
    };
    let (_, _, h, w) = labels.dims4()?;
    if (h, w) == (height, width) {
        return Ok(labels);
    }
    let indices = |from: usize, to: usize| -> Result<Tensor> {
        let scale = from as f64 / to as f64;
        let picked: Vec<u32> = (0..to)
            .map(|i| (((i as f64 + 0.5) * scale).floor() as usize).min(from - 1) as u32)
            .collect();
        Ok(Tensor::from_vec(picked, to, labels.device())?)
    };
    Ok(labels
        .index_select(&indices(h, height)?, 2)?
        .index_select(&indices(w, width)?, 3)?)
}

/// nnU-Net's `DeepSupervisionWrapper(DC_and_CE_loss)`: the loss of each output (highest
/// resolution first) against the labels downsampled to its size, weighted by
/// [`deep_supervision_weights`]. Outputs of weight 0 are skipped.
///
/// # Errors
///
/// When there are no outputs or the shapes do not fit.
pub fn deep_supervision_loss(outputs: &[Tensor], labels: &Tensor, reduction: DiceReduction) -> Result<Tensor> {
    let weights = deep_supervision_weights(outputs.len());
    let mut total: Option<Tensor> = None;
    for (output, weight) in outputs.iter().zip(weights) {
        if weight == 0.0 {
            continue;
        }
        let (_, _, h, w) = output.dims4()?;
        let loss = (dice_and_ce_loss(output, &downsample_labels(labels, h, w)?, reduction)? * weight)?;
        total = Some(match total {
            None => loss,
            Some(t) => (t + loss)?,
        });
    }
    total.ok_or_else(|| candle_core::Error::Msg("deep supervision needs at least one output".into()).into())
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn logits() -> Tensor {
        // B = 1, K = 2, 1×2 pixels: pixel 0 favours class 0, pixel 1 class 1.
        Tensor::new(&[[[[2f32, 0.0]], [[0.0, 1.0]]]], &Device::Cpu).expect("logits")
    }

    #[test]
    fn cross_entropy_matches_the_formula() {
        let target = Tensor::new(&[[[0u32, 1]]], &Device::Cpu).expect("target");
        let ce: f32 = cross_entropy(&logits(), &target)
            .and_then(|t| Ok(t.to_scalar()?))
            .expect("ce");
        let p0 = (2f32.exp() / (2f32.exp() + 1.0)).ln();
        let p1 = (1f32.exp() / (1.0 + 1f32.exp())).ln();
        assert!((ce + (p0 + p1) / 2.0).abs() < 1e-6, "{ce}");
    }

    #[test]
    fn soft_dice_matches_the_formula_and_excludes_background() {
        let target = Tensor::new(&[[[0u32, 1]]], &Device::Cpu).expect("target");
        let loss: f32 = soft_dice_loss(&logits(), &target, DiceReduction::Batch)
            .and_then(|t| Ok(t.to_scalar()?))
            .expect("dice");
        // Class 1 probabilities: pixel 0 1/(1+e²), pixel 1 e/(1+e).
        let (q0, q1) = (1.0 / (1.0 + 2f32.exp()), 1f32.exp() / (1.0 + 1f32.exp()));
        let dice = (2.0 * q1 + 1e-5) / (q0 + q1 + 1.0 + 1e-5);
        assert!((loss + dice).abs() < 1e-6, "{loss} vs {}", -dice);
    }

    #[test]
    fn deep_supervision_weights_and_downsampling_follow_nnunet() {
        let w = deep_supervision_weights(4);
        let expected = [1.0 / 1.75, 0.5 / 1.75, 0.25 / 1.75, 0.0];
        assert!(w.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-12), "{w:?}");
        assert_eq!(deep_supervision_weights(1), [1.0]);
        // nearest-exact picks the odd pixels when halving: 0..8 → 1, 3, 5, 7.
        let labels = Tensor::arange(0u32, 8, &Device::Cpu)
            .and_then(|t| t.reshape((1, 1, 1, 8)))
            .expect("labels");
        let half = downsample_labels(&labels, 1, 4).expect("downsample");
        assert_eq!(
            half.flatten_all().and_then(|t| t.to_vec1::<u32>()).expect("values"),
            [1, 3, 5, 7]
        );
        let outputs = [logits(), logits().narrow(3, 0, 1).expect("narrow")];
        let target = Tensor::new(&[[[[0u32, 1]]]], &Device::Cpu).expect("target");
        let loss: f32 = deep_supervision_loss(&outputs, &target, DiceReduction::Batch)
            .and_then(|t| Ok(t.to_scalar()?))
            .expect("ds loss");
        let single: f32 = dice_and_ce_loss(&logits(), &target, DiceReduction::Batch)
            .and_then(|t| Ok(t.to_scalar()?))
            .expect("loss");
        assert!(
            (loss - single).abs() < 1e-6,
            "the last output has weight 0: {loss} vs {single}"
        );
    }

    #[test]
    fn a_perfect_prediction_has_dice_near_one_and_gradients_flow() {
        let logits = Var::from_tensor(&(Tensor::new(&[[[[10f32, -10.0]], [[-10.0, 10.0]]]], &Device::Cpu).expect("l")))
            .expect("var");
        let target = Tensor::new(&[[[[0u32, 1]]]], &Device::Cpu).expect("target");
        let loss = dice_and_ce_loss(logits.as_tensor(), &target, DiceReduction::PerSample).expect("loss");
        let value: f32 = loss.to_scalar().expect("scalar");
        assert!((value + 1.0).abs() < 1e-3, "CE ≈ 0 and Dice ≈ 1: {value}");
        let grads = loss.backward().expect("backward");
        assert!(grads.get(logits.as_tensor()).is_some());
    }
}
