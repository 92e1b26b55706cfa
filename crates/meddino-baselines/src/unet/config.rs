//! [`PlainConvUNetConfig`]: a plans configuration's `arch_kwargs` read and checked.

use serde_json::Value;

use super::decoder::UNetDecoderConfig;
use super::ops::{as_object, per_stage, per_stage_square, positive, ConvOps, ARCH_KWARGS};
use crate::error::{Error, Result};

/// A PlainConvUNet's configuration: a plans configuration's `arch_kwargs` plus the input
/// channels (`channel_names` of dataset.json) and classes (its `labels`). Lists over stages
/// run highest resolution first.
#[derive(Debug, Clone, PartialEq)]
pub struct PlainConvUNetConfig {
    /// Input channels.
    pub input_channels: usize,
    /// Encoder stages (`n_stages`).
    pub n_stages: usize,
    /// Output channels of each encoder stage (`features_per_stage`).
    pub features_per_stage: Vec<usize>,
    /// Square kernel of each stage's convs (`kernel_sizes`).
    pub kernel_sizes: Vec<usize>,
    /// Square stride of each stage's first conv (`strides`).
    pub strides: Vec<usize>,
    /// Convs per encoder stage (`n_conv_per_stage`).
    pub n_conv_per_stage: Vec<usize>,
    /// Convs per decoder stage, deepest first (`n_conv_per_stage_decoder`, `n_stages − 1`
    /// entries).
    pub n_conv_per_stage_decoder: Vec<usize>,
    /// Bias, norm and nonlinearity of every conv block.
    pub ops: ConvOps,
    /// Output classes, background included.
    pub num_classes: usize,
}

impl PlainConvUNetConfig {
    /// Reads a plans configuration's `architecture.arch_kwargs` (see
    /// [`ConvOps::from_arch_kwargs`] for the operation keys). Per-stage entries may be lists
    /// or one value for every stage, as upstream; kernel sizes and strides are `[a, a]` or `a`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the key and what was expected when a key is missing,
    /// unknown, of the wrong type or length, non-square, or refused by
    /// [`ConvOps::from_arch_kwargs`] or [`Self::validate`].
    pub fn from_arch_kwargs(kwargs: &Value, input_channels: usize, num_classes: usize) -> Result<Self> {
        let object = as_object(kwargs)?;
        if let Some(key) = object.keys().find(|k| !ARCH_KWARGS.contains(&k.as_str())) {
            return Err(Error::Config(format!(
                "arch_kwargs.{key}: unknown argument for PlainConvUNet (known: {})",
                ARCH_KWARGS.join(", ")
            )));
        }
        let ops = ConvOps::from_arch_kwargs(kwargs)?;
        let n_stages = positive(
            object
                .get("n_stages")
                .ok_or_else(|| Error::Config("arch_kwargs.n_stages is missing".into()))?,
            "arch_kwargs.n_stages",
        )?;
        if n_stages < 2 {
            return Err(Error::Config(format!(
                "arch_kwargs.n_stages: expected at least 2 (one decoder stage), got {n_stages}"
            )));
        }
        let cfg = Self {
            input_channels,
            n_stages,
            features_per_stage: per_stage(object, "features_per_stage", n_stages, "n_stages")?,
            kernel_sizes: per_stage_square(object, "kernel_sizes", n_stages)?,
            strides: per_stage_square(object, "strides", n_stages)?,
            n_conv_per_stage: per_stage(object, "n_conv_per_stage", n_stages, "n_stages")?,
            n_conv_per_stage_decoder: per_stage(object, "n_conv_per_stage_decoder", n_stages - 1, "n_stages − 1")?,
            ops,
            num_classes,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks lengths and sizes.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the field when `n_stages < 2`, a list does not have
    /// `n_stages` (or `n_stages − 1`) entries, a size is zero, or the decoder is refused by
    /// [`UNetDecoderConfig::validate`].
    pub fn validate(&self) -> Result<()> {
        let n = self.n_stages;
        if n < 2 {
            return Err(Error::Config(format!(
                "n_stages: expected at least 2 (one decoder stage), got {n}"
            )));
        }
        for (name, list, expected) in [
            ("features_per_stage", &self.features_per_stage, n),
            ("kernel_sizes", &self.kernel_sizes, n),
            ("strides", &self.strides, n),
            ("n_conv_per_stage", &self.n_conv_per_stage, n),
            ("n_conv_per_stage_decoder", &self.n_conv_per_stage_decoder, n - 1),
        ] {
            if list.len() != expected {
                return Err(Error::Config(format!(
                    "{name} has {} entries ({list:?}), expected {expected} for n_stages = {n}",
                    list.len()
                )));
            }
            if list.contains(&0) {
                return Err(Error::Config(format!("{name} must be positive, got {list:?}")));
            }
        }
        if self.input_channels == 0 || self.num_classes == 0 {
            return Err(Error::Config(format!(
                "input channels and classes must be positive, got {} and {}",
                self.input_channels, self.num_classes
            )));
        }
        self.decoder().validate()
    }

    /// The decoder's configuration.
    pub fn decoder(&self) -> UNetDecoderConfig {
        UNetDecoderConfig {
            encoder_channels: self.features_per_stage.clone(),
            strides: self.strides.clone(),
            kernel_sizes: self.kernel_sizes.clone(),
            n_conv_per_stage_decoder: self.n_conv_per_stage_decoder.clone(),
            ops: self.ops,
            num_classes: self.num_classes,
        }
    }

    /// H and W must be multiples of this: the product of the strides.
    pub fn input_multiple(&self) -> usize {
        self.strides.iter().product()
    }
}
