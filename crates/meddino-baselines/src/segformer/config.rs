//! SegFormer's hyper-parameters ([`SegFormerConfig`]) and the stage arithmetic derived from
//! them.

use serde::{Deserialize, Serialize};

use super::{PATCH_EMBED, STAGES};
use crate::error::{Error, Result};

/// SegFormer hyper-parameters. Field names follow the official SegFormer/mmseg keywords;
/// MedDINOv3's trainer hard-codes the B2 values ([`Self::mit_b2`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegFormerConfig {
    /// Channels of the four stages.
    pub embed_dims: Vec<usize>,
    /// Transformer blocks per stage.
    pub depths: Vec<usize>,
    /// Attention heads per stage (each must divide the stage's channels).
    pub num_heads: Vec<usize>,
    /// Spatial-reduction ratio of keys and values per stage (1: no reduction).
    pub sr_ratios: Vec<usize>,
    /// Mix-FFN hidden width over channels per stage (`int(dim · ratio)`).
    pub mlp_ratios: Vec<f64>,
    /// Channels of the all-MLP decoder.
    pub decoder_embed_dim: usize,
    /// Largest stochastic-depth rate, reached by the last block (linear from 0).
    pub drop_path_rate: f64,
    /// `Dropout2d` probability before the prediction convolution.
    pub dropout_ratio: f64,
    /// Output classes (background included).
    pub num_classes: usize,
    /// Eps of every LayerNorm.
    pub layer_norm_eps: f64,
}

impl SegFormerConfig {
    /// MiT-B2 as `segformerTrainer.build_network_architecture` builds it
    /// (`segformer_settings['B2']`, heads `[1, 2, 5, 8]`, SR ratios `[8, 4, 2, 1]`, MLP ratio
    /// 4, decoder 768, `Dropout2d(0.2)`, no stochastic depth, LayerNorm eps 1e-5).
    pub fn mit_b2(num_classes: usize) -> Self {
        Self {
            embed_dims: vec![64, 128, 320, 512],
            depths: vec![3, 4, 6, 3],
            num_heads: vec![1, 2, 5, 8],
            sr_ratios: vec![8, 4, 2, 1],
            mlp_ratios: vec![4.0; STAGES],
            decoder_embed_dim: 768,
            drop_path_rate: 0.0,
            dropout_ratio: 0.2,
            num_classes,
            layer_norm_eps: 1e-5,
        }
    }

    /// A tiny configuration with B2's structure (same SR ratios, one block per stage, narrow
    /// channels) and stochastic depth switched on, for tests and examples on the CPU.
    pub fn tiny(num_classes: usize) -> Self {
        Self {
            embed_dims: vec![8, 16, 24, 32],
            depths: vec![1, 1, 1, 1],
            num_heads: vec![1, 2, 3, 4],
            sr_ratios: vec![8, 4, 2, 1],
            mlp_ratios: vec![2.0; STAGES],
            decoder_embed_dim: 16,
            drop_path_rate: 0.1,
            dropout_ratio: 0.2,
            num_classes,
            layer_norm_eps: 1e-5,
        }
    }

    /// Checks the configuration.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when a per-stage list does not have four entries, a head count does
    /// not divide its stage's channels, a size or ratio is zero or a rate is outside `[0, 1)`.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Config(format!("segformer: {what}")));
        for (name, len) in [
            ("embed_dims", self.embed_dims.len()),
            ("depths", self.depths.len()),
            ("num_heads", self.num_heads.len()),
            ("sr_ratios", self.sr_ratios.len()),
            ("mlp_ratios", self.mlp_ratios.len()),
        ] {
            if len != STAGES {
                return bad(format!("{name} needs {STAGES} entries, got {len}"));
            }
        }
        for stage in 0..STAGES {
            let (dim, heads) = (self.embed_dims[stage], self.num_heads[stage]);
            if dim == 0 || heads == 0 || dim % heads != 0 {
                return bad(format!("stage {stage}: {heads} heads cannot split {dim} channels"));
            }
            if self.sr_ratios[stage] == 0 {
                return bad(format!("stage {stage}: sr ratio must be at least 1"));
            }
            if self.hidden_dim(stage) == 0 {
                return bad(format!(
                    "stage {stage}: mlp ratio {} gives no hidden channels",
                    self.mlp_ratios[stage]
                ));
            }
        }
        if self.decoder_embed_dim == 0 || self.num_classes == 0 {
            return bad(format!(
                "decoder_embed_dim {} and num_classes {} must be positive",
                self.decoder_embed_dim, self.num_classes
            ));
        }
        for (name, rate) in [
            ("drop_path_rate", self.drop_path_rate),
            ("dropout_ratio", self.dropout_ratio),
        ] {
            if !(0.0..1.0).contains(&rate) {
                return bad(format!("{name} {rate} is outside [0, 1)"));
            }
        }
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps <= 0.0 {
            return bad(format!("layer_norm_eps {} must be positive", self.layer_norm_eps));
        }
        Ok(())
    }

    /// Hidden channels of a stage's Mix-FFN (`int(dim · ratio)`, truncated as Python does).
    pub(super) fn hidden_dim(&self, stage: usize) -> usize {
        let ratio = self.mlp_ratios.get(stage).copied().unwrap_or(0.0);
        let dim = self.embed_dims.get(stage).copied().unwrap_or(0);
        if ratio.is_finite() && ratio > 0.0 {
            (dim as f64 * ratio) as usize
        } else {
            0
        }
    }

    /// Stochastic-depth rate of every block, stage by stage: `linspace(0, rate, Σ depths)`.
    pub(super) fn drop_path_rates(&self) -> Vec<f64> {
        let total: usize = self.depths.iter().sum();
        (0..total)
            .map(|i| {
                if total > 1 {
                    self.drop_path_rate * i as f64 / (total - 1) as f64
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// Row (or column) counts of the four stages for an input side of `side` pixels.
    pub(super) fn stage_sides(side: usize) -> [usize; STAGES] {
        let mut sides = [0; STAGES];
        let mut current = side;
        for (stage, &(kernel, stride, padding)) in PATCH_EMBED.iter().enumerate() {
            // Convolution output: ⌊(n + 2p − k) / s⌋ + 1 (zero when the kernel does not fit).
            current = (current + 2 * padding)
                .checked_sub(kernel)
                .map_or(0, |span| span / stride + 1);
            sides[stage] = current;
        }
        sides
    }
}
