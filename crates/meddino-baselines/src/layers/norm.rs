//! Normalisation layers as PyTorch defines them: instance norm, batch norm with running
//! statistics, and the token LayerNorm.

use candle_core::{Module, Tensor, Var, D};
use candle_nn::{Init, VarBuilder};

use crate::error::{Error, Result};

/// A norm's affine parameters: `weight` (ones) and `bias` (zeros) of `channels`.
fn affine(channels: usize, vb: &VarBuilder) -> Result<(Tensor, Tensor)> {
    Ok((
        vb.get_with_hints(channels, "weight", Init::Const(1.0))?,
        vb.get_with_hints(channels, "bias", Init::Const(0.0))?,
    ))
}

/// `nn.InstanceNorm2d(affine=True)`: each sample's channel normalised over H, W (biased
/// variance), then scaled and shifted per channel. No running statistics (PyTorch's
/// default), so training and evaluation agree.
#[derive(Debug, Clone)]
pub struct InstanceNorm2d {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl InstanceNorm2d {
    /// Reads or creates `weight` (ones) and `bias` (zeros).
    ///
    /// # Errors
    ///
    /// When a tensor is missing or mis-shaped in `vb`.
    pub fn new(channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let (weight, bias) = affine(channels, &vb)?;
        Ok(Self { weight, bias, eps })
    }
}

impl Module for InstanceNorm2d {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let flat = xs.reshape((b, c, h * w))?;
        let centered = flat.broadcast_sub(&flat.mean_keepdim(D::Minus1)?)?;
        let variance = centered.sqr()?.mean_keepdim(D::Minus1)?;
        centered
            .broadcast_div(&(variance + self.eps)?.sqrt()?)?
            .reshape((b, c, h, w))?
            .broadcast_mul(&self.weight.reshape((1, c, 1, 1))?)?
            .broadcast_add(&self.bias.reshape((1, c, 1, 1))?)
    }
}

/// `nn.BatchNorm2d` / `nn.SyncBatchNorm` (momentum 0.1): in training, batch statistics over
/// (B, H, W) with the biased variance, and the running mean and unbiased variance updated in
/// place; in evaluation, the running statistics. `running_mean`, `running_var` and
/// `num_batches_tracked` are variables so checkpoints carry them, but not trained (see
/// [`is_batch_norm_buffer`]).
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    num_batches_tracked: Var,
    eps: f64,
    momentum: f64,
}

/// The state-dict suffixes of a batch norm's running statistics.
pub const BATCH_NORM_BUFFERS: [&str; 3] = ["running_mean", "running_var", "num_batches_tracked"];

/// Whether `name` is a batch norm's running statistic (not a trained parameter).
pub fn is_batch_norm_buffer(name: &str) -> bool {
    name.rsplit('.')
        .next()
        .is_some_and(|last| BATCH_NORM_BUFFERS.contains(&last))
}

impl BatchNorm2d {
    /// Reads or creates the affine parameters (ones, zeros) and running statistics (zeros,
    /// ones, 0 batches).
    ///
    /// # Errors
    ///
    /// When a tensor is missing or mis-shaped in `vb`.
    pub fn new(channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        // A variable builder over a VarMap hands out its variables' tensors; wrapping them
        // shares their storage, so running-statistic updates reach the map (and checkpoints).
        let buffer = |name: &str, shape: &[usize], value: f64| -> Result<Var> {
            Ok(Var::from_tensor(&vb.get_with_hints(
                shape,
                name,
                Init::Const(value),
            )?)?)
        };
        let (weight, bias) = affine(channels, &vb)?;
        Ok(Self {
            weight,
            bias,
            running_mean: buffer("running_mean", &[channels], 0.0)?,
            running_var: buffer("running_var", &[channels], 1.0)?,
            num_batches_tracked: buffer("num_batches_tracked", &[], 0.0)?,
            eps,
            momentum: 0.1,
        })
    }

    /// Normalises `xs` `[B, C, H, W]`; `train` uses (and records) batch statistics.
    ///
    /// # Errors
    ///
    /// On a shape mismatch, or a training batch with a single value per channel.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let per_channel = |t: &Tensor| t.reshape((1, c, 1, 1));
        let (mean, variance) = if train {
            let count = b * h * w;
            if count < 2 {
                return Err(Error::Input(format!(
                    "batch norm in training needs more than one value per channel, got input {:?}",
                    xs.dims()
                )));
            }
            let channels_first = xs.transpose(0, 1)?.reshape((c, count))?;
            let mean = channels_first.mean_keepdim(1)?;
            let variance = channels_first.broadcast_sub(&mean)?.sqr()?.mean_keepdim(1)?;
            let (mean, variance) = (mean.flatten_all()?, variance.flatten_all()?);
            self.record(&mean.detach(), &variance.detach(), count)?;
            (mean, variance)
        } else {
            (
                self.running_mean.as_tensor().clone(),
                self.running_var.as_tensor().clone(),
            )
        };
        let scale = (self.weight.clone() / (variance + self.eps)?.sqrt()?)?;
        let shift = (&self.bias - (&mean * &scale)?)?;
        Ok(xs
            .broadcast_mul(&per_channel(&scale)?)?
            .broadcast_add(&per_channel(&shift)?)?)
    }

    fn record(&self, mean: &Tensor, variance: &Tensor, count: usize) -> Result<()> {
        let m = self.momentum;
        let unbiased = (variance * (count as f64 / (count - 1) as f64))?;
        let dtype = self.running_mean.dtype();
        let blend = |running: &Var, batch: &Tensor| -> Result<()> {
            let next = ((running.as_tensor() * (1.0 - m))? + (batch.to_dtype(dtype)? * m)?)?;
            Ok(running.set(&next)?)
        };
        blend(&self.running_mean, mean)?;
        blend(&self.running_var, &unbiased)?;
        let tracked = (self.num_batches_tracked.as_tensor() + 1.0)?;
        Ok(self.num_batches_tracked.set(&tracked)?)
    }
}

/// Token LayerNorm (`nn.LayerNorm(dim, eps)`) over the last axis, with `weight` (ones) and
/// `bias` (zeros).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Reads or creates the parameters.
    ///
    /// # Errors
    ///
    /// When a tensor is missing or mis-shaped in `vb`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let (weight, bias) = affine(dim, &vb)?;
        Ok(Self { weight, bias, eps })
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        meddino_backbone::layer_norm(xs, &self.weight, &self.bias, self.eps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testutil::close;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn batch_norm_tracks_running_statistics_like_torch() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let bn = BatchNorm2d::new(1, 1e-5, vb.pp("bn")).unwrap();
        // Values 1..=4: mean 2.5, biased variance 1.25, unbiased 5/3.
        let xs = Tensor::new(&[[[[1f32, 2.0], [3.0, 4.0]]]], &Device::Cpu).unwrap();
        let out = bn.forward_t(&xs, true).unwrap();
        let s = (1.25f32 + 1e-5).sqrt();
        close(&out, &[-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s]);
        let data = varmap.data().lock().unwrap();
        close(data["bn.running_mean"].as_tensor(), &[0.25]);
        close(data["bn.running_var"].as_tensor(), &[0.9 + 0.1 * 5.0 / 3.0]);
        close(data["bn.num_batches_tracked"].as_tensor(), &[1.0]);
        drop(data);
        // Evaluation uses the running statistics.
        let eval = bn.forward_t(&xs, false).unwrap();
        let s = (0.9f32 + 0.5 / 3.0 + 1e-5).sqrt();
        close(&eval, &[0.75 / s, 1.75 / s, 2.75 / s, 3.75 / s]);
        assert!(is_batch_norm_buffer("decoder.linear_fuse.bn.running_var"));
        assert!(!is_batch_norm_buffer("decoder.linear_fuse.bn.weight"));
    }

    #[test]
    fn instance_norm_normalises_each_sample_and_channel() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let norm = InstanceNorm2d::new(2, 1e-5, vb).unwrap();
        let xs = Tensor::randn(3f32, 2.0, (2, 2, 4, 4), &Device::Cpu).unwrap();
        let out = norm.forward(&xs).unwrap().reshape((4, 16)).unwrap();
        let mean: Vec<f32> = out.mean(1).unwrap().to_vec1().unwrap();
        let var: Vec<f32> = out.sqr().unwrap().mean(1).unwrap().to_vec1().unwrap();
        assert!(mean.iter().all(|m| m.abs() < 1e-4), "{mean:?}");
        assert!(var.iter().all(|v| (v - 1.0).abs() < 1e-3), "{var:?}");
    }
}
