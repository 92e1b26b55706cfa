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

    /// Training-mode outputs for deep supervision, highest resolution first: output `i` is
    /// `[B, num_classes, H / f_i, W / f_i]` for the network's downsampling factors `f_i`
    /// (nnU-Net's PlainConvUNet returns one per decoder stage). Networks without deep
    /// supervision return the one training-mode output.
    ///
    /// # Errors
    ///
    /// As [`Self::forward_t`].
    fn forward_deep_supervision(&self, xs: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![self.forward_t(xs, true)?])
    }

    /// Whether the variable called `name` is trained. Running statistics of batch norms and
    /// frozen encoders are variables (checkpoints carry them) but not trained.
    fn is_trainable(&self, _name: &str) -> bool {
        true
    }

    /// Extra state-dict names PyTorch gives to tensors registered under two module paths
    /// (dynamic-network-architectures' `convs.0.all_modules.0` for `convs.0.conv`, the
    /// decoder's `decoder.encoder.*` for `encoder.*`), as `(alias, name)` pairs. A PyTorch
    /// checkpoint holds both names; ours hold each tensor once.
    fn state_dict_aliases(&self) -> Vec<(String, String)> {
        Vec::new()
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
