//! dynamic-network-architectures' `UNetDecoder`, usable behind any encoder.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, VarBuilder};

use super::blocks::{join, StackedConvBlocks};
use super::ops::{ConvOps, NNUNET_INIT};
use crate::error::{Error, Result};
use crate::layers::{conv2d, ConvSpec, PixelConvTranspose2d};

/// The shape of a [`UNetDecoder`]: what it needs to know about its encoder, and its own
/// settings. Lists over stages run highest resolution first (encoder order).
#[derive(Debug, Clone, PartialEq)]
pub struct UNetDecoderConfig {
    /// Channels of each encoder stage's output (the skips; the last is the bottleneck).
    pub encoder_channels: Vec<usize>,
    /// Square stride of each encoder stage; stage `s > 0` is undone by a transposed conv
    /// with kernel = stride = `strides[s]` (`strides[0]` is not used by the decoder).
    pub strides: Vec<usize>,
    /// Square kernel of each encoder stage; the decoder stage that produces resolution `s`
    /// uses `kernel_sizes[s]`.
    pub kernel_sizes: Vec<usize>,
    /// Convs per decoder stage, deepest decoder stage first (`n_stages − 1` entries, as
    /// `n_conv_per_stage_decoder` in the plans).
    pub n_conv_per_stage_decoder: Vec<usize>,
    /// Bias, norm and nonlinearity of the conv blocks.
    pub ops: ConvOps,
    /// Output classes of each segmentation layer.
    pub num_classes: usize,
}

impl UNetDecoderConfig {
    /// Checks lengths and sizes.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the field when there are fewer than two stages, a list has
    /// the wrong length, a size is zero, or `ops.conv_bias` is false.
    pub fn validate(&self) -> Result<()> {
        let n = self.encoder_channels.len();
        if n < 2 {
            return Err(Error::Config(format!(
                "UNetDecoder needs at least 2 encoder stages, got encoder_channels {:?}",
                self.encoder_channels
            )));
        }
        for (name, list, expected) in [
            ("strides", &self.strides, n),
            ("kernel_sizes", &self.kernel_sizes, n),
            ("n_conv_per_stage_decoder", &self.n_conv_per_stage_decoder, n - 1),
        ] {
            if list.len() != expected {
                return Err(Error::Config(format!(
                    "UNetDecoder {name} has {} entries ({list:?}), expected {expected} for {n} encoder stages",
                    list.len()
                )));
            }
        }
        for (name, list) in [
            ("encoder_channels", &self.encoder_channels),
            ("strides", &self.strides),
            ("kernel_sizes", &self.kernel_sizes),
            ("n_conv_per_stage_decoder", &self.n_conv_per_stage_decoder),
        ] {
            if list.contains(&0) {
                return Err(Error::Config(format!(
                    "UNetDecoder {name} must be positive, got {list:?}"
                )));
            }
        }
        if self.num_classes == 0 {
            return Err(Error::Config("UNetDecoder num_classes must be positive, got 0".into()));
        }
        if !self.ops.conv_bias {
            return Err(Error::Config(
                "conv_bias: expected true (the transposed convolutions, PixelConvTranspose2d, always have a bias), got \
                 false"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Which segmentation outputs a decoder pass computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outputs {
    /// Every decoder stage's (deep supervision).
    All,
    /// Only the highest-resolution one.
    Highest,
}

/// dynamic-network-architectures' `UNetDecoder`: from the bottleneck up, per stage a
/// transposed conv (`transpconvs.S`), concatenation [upsampled, skip], a
/// [`StackedConvBlocks`] (`stages.S`) and a 1×1 segmentation conv with bias (`seg_layers.S`).
/// Stage `S = 0` is the deepest.
#[derive(Debug, Clone)]
pub struct UNetDecoder {
    transpconvs: Vec<PixelConvTranspose2d>,
    stages: Vec<StackedConvBlocks>,
    seg_layers: Vec<Conv2d>,
    cfg: UNetDecoderConfig,
}

impl UNetDecoder {
    /// Reads or creates the decoder's tensors in `vb` (`transpconvs.*`, `stages.*`,
    /// `seg_layers.*`), He-normal initialised with zero biases.
    ///
    /// # Errors
    ///
    /// As [`UNetDecoderConfig::validate`]; a candle error when a tensor is missing or
    /// mis-shaped in `vb`.
    pub fn new(cfg: &UNetDecoderConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let n = cfg.encoder_channels.len();
        let (mut transpconvs, mut stages, mut seg_layers) = (Vec::new(), Vec::new(), Vec::new());
        for s in 0..n - 1 {
            // Decoder stage s turns encoder level n−1−s (below) into level n−2−s (the skip).
            let (below, skip) = (n - 1 - s, n - 2 - s);
            let (c_below, c_skip) = (cfg.encoder_channels[below], cfg.encoder_channels[skip]);
            let stride = cfg.strides[below];
            transpconvs.push(PixelConvTranspose2d::new(
                c_below,
                c_skip,
                stride,
                NNUNET_INIT,
                vb.pp("transpconvs").pp(s),
            )?);
            stages.push(StackedConvBlocks::new(
                cfg.n_conv_per_stage_decoder[s],
                2 * c_skip,
                c_skip,
                cfg.kernel_sizes[skip],
                1,
                &cfg.ops,
                vb.pp("stages").pp(s),
            )?);
            seg_layers.push(conv2d(
                ConvSpec::same(c_skip, cfg.num_classes, 1),
                NNUNET_INIT,
                vb.pp("seg_layers").pp(s),
            )?);
        }
        Ok(Self {
            transpconvs,
            stages,
            seg_layers,
            cfg: cfg.clone(),
        })
    }

    /// Segmentation logits of every decoder stage, highest resolution first (deep
    /// supervision order): output `i` is `[B, num_classes, H_i, W_i]` with `H_i, W_i` the
    /// size of `skips[i]`, for `i < n_stages − 1`.
    ///
    /// `skips` are the encoder's outputs, highest resolution first, the bottleneck last:
    /// `skips[s]` is `[B, encoder_channels[s], H_s, W_s]` with `H_s = H_{s+1} · strides[s+1]`.
    /// `train` makes batch norms use and record batch statistics.
    ///
    /// # Errors
    ///
    /// [`Error::Input`] naming the shapes when the number of skips, their channels or their
    /// sizes do not fit.
    pub fn forward(&self, skips: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        self.run(skips, train, Outputs::All)
    }

    /// Only the highest-resolution logits (what [`Self::forward`] returns first), without
    /// computing the other segmentation layers.
    ///
    /// # Errors
    ///
    /// As [`Self::forward`].
    pub fn forward_highest(&self, skips: &[Tensor], train: bool) -> Result<Tensor> {
        self.run(skips, train, Outputs::Highest)?
            .pop()
            .ok_or_else(|| Error::Input("UNetDecoder produced no output".into()))
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &UNetDecoderConfig {
        &self.cfg
    }

    /// PyTorch's second names for the decoder's tensors under `prefix` (the decoder's own
    /// path, e.g. `decoder`), as `(alias, name)`: the `all_modules` names of every conv
    /// block.
    pub fn state_dict_aliases(&self, prefix: &str) -> Vec<(String, String)> {
        self.stages
            .iter()
            .enumerate()
            .flat_map(|(s, stage)| stage.state_dict_aliases(&join(prefix, &format!("stages.{s}"))))
            .collect()
    }

    fn run(&self, skips: &[Tensor], train: bool, outputs: Outputs) -> Result<Vec<Tensor>> {
        let channels = &self.cfg.encoder_channels;
        let shapes: Vec<Vec<usize>> = skips.iter().map(|s| s.dims().to_vec()).collect();
        if skips.len() != channels.len() {
            return Err(Error::Input(format!(
                "UNetDecoder expects {} skips with channels {channels:?}, got {} of shapes {shapes:?}",
                channels.len(),
                skips.len()
            )));
        }
        for (i, (shape, c)) in shapes.iter().zip(channels).enumerate() {
            if shape.len() != 4 || shape[1] != *c {
                return Err(Error::Input(format!(
                    "UNetDecoder skip {i} should be [B, {c}, H, W], got {shape:?} (skips {shapes:?})"
                )));
            }
        }
        let Some((bottleneck, rest)) = skips.split_last() else {
            return Err(Error::Input("UNetDecoder got no skips".into()));
        };
        let mut below = bottleneck.clone();
        let mut segs = Vec::new();
        let last = self.stages.len().saturating_sub(1);
        let layers = self.transpconvs.iter().zip(&self.stages).zip(&self.seg_layers);
        for (s, (((up, stage), seg), skip)) in layers.zip(rest.iter().rev()).enumerate() {
            let upsampled = up.forward(&below)?;
            if upsampled.dims()[2..] != skip.dims()[2..] {
                return Err(Error::Input(format!(
                    "UNetDecoder stage {s} upsamples {:?} to {:?}, which does not match the skip {:?} (skips \
                     {shapes:?})",
                    below.dims(),
                    upsampled.dims(),
                    skip.dims()
                )));
            }
            let xs = stage.forward_t(&Tensor::cat(&[&upsampled, skip], 1)?, train)?;
            if outputs == Outputs::All || s == last {
                segs.push(seg.forward(&xs)?);
            }
            below = xs;
        }
        segs.reverse();
        Ok(segs)
    }
}
