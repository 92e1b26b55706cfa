//! The `SegmentationNetwork` trait: what training and prediction need from a network.

use candle_core::Tensor;

use crate::error::Result;

/// A network mapping an image batch to per-pixel class logits. Object-safe, so trainers and
/// predictors can hold `Box<dyn SegmentationNetwork>`.
///
/// A minimal implementation (a per-pixel linear classifier over one input channel):
///
/// ```
/// use meddino_decoder::{candle::Tensor, Result, SegmentationNetwork};
///
/// #[derive(Debug)]
/// struct Threshold { weight: Tensor, bias: Tensor } // [K, 1, 1] each
///
/// impl SegmentationNetwork for Threshold {
///     fn forward_t(&self, xs: &Tensor, _train: bool) -> Result<Tensor> {
///         Ok(xs.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
///     }
///     fn num_classes(&self) -> usize { self.weight.dims()[0] }
///     fn input_channels(&self) -> usize { 1 }
///     fn input_multiple(&self) -> usize { 1 }
/// }
/// ```
pub trait SegmentationNetwork: std::fmt::Debug + Send + Sync {
    /// `[B, input_channels, H, W]` → logits `[B, num_classes, H, W]`; `train` turns on
    /// training-time behaviour (stochastic depth).
    ///
    /// # Errors
    ///
    /// When the input does not have the expected channels or H, W are not multiples of
    /// [`Self::input_multiple`].
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor>;

    /// Number of output classes (background included).
    fn num_classes(&self) -> usize;

    /// Channels the input must have.
    fn input_channels(&self) -> usize;

    /// H and W must be multiples of this.
    fn input_multiple(&self) -> usize;

    /// Restarts the generator behind training-mode randomness (stochastic depth, dropout)
    /// at `seed`, so a seeded training step repeats exactly. Networks without any ignore it.
    fn reseed(&self, _seed: u64) {}

    /// Tensors of the state dict that are not trainable variables (computed buffers such as
    /// the RoPE periods), with their state-dict names: a checkpoint holds the variables and
    /// these, so it loads strictly.
    ///
    /// # Errors
    ///
    /// On a device error.
    fn buffers(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }

    /// Eval-mode forward.
    ///
    /// # Errors
    ///
    /// As [`Self::forward_t`].
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_t(xs, false)
    }
}
