//! `SelfAttentionBlock`: pre-norm attention and FFN residual branches with LayerScale and
//! DINOv3's batch-subset stochastic depth.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::attention::SelfAttention;
use crate::config::Config;
use crate::error::Result;
use crate::ffn::Ffn;
use crate::fused;
use crate::layer_scale::LayerScale;
use crate::norm::Norm;
use crate::rope::{RopePositionEmbedding, RopeTables};
use crate::stochastic::StochasticRng;

/// One transformer block.
#[derive(Debug, Clone)]
pub(crate) struct SelfAttentionBlock {
    norm1: Norm,
    attn: SelfAttention,
    ls1: Option<LayerScale>,
    norm2: Norm,
    mlp: Ffn,
    ls2: Option<LayerScale>,
    drop_path_rate: f64,
}

impl SelfAttentionBlock {
    pub(crate) fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let layer_scale = |name: &str| -> Result<Option<LayerScale>> {
            match cfg.layerscale_init {
                Some(init) if init != 0.0 => Ok(Some(LayerScale::new(cfg.embed_dim, init, vb.pp(name))?)),
                _ => Ok(None),
            }
        };
        Ok(Self {
            norm1: Norm::new(cfg.norm_layer, cfg.embed_dim, vb.pp("norm1"))?,
            attn: SelfAttention::new(cfg, vb.pp("attn"))?,
            ls1: layer_scale("ls1")?,
            norm2: Norm::new(cfg.norm_layer, cfg.embed_dim, vb.pp("norm2"))?,
            mlp: Ffn::new(cfg, vb.pp("mlp"))?,
            ls2: layer_scale("ls2")?,
            drop_path_rate: cfg.drop_path_rate,
        })
    }

    pub(crate) fn attn(&self) -> &SelfAttention {
        &self.attn
    }

    fn scaled(ls: &Option<LayerScale>, xs: Tensor) -> candle_core::Result<Tensor> {
        match ls {
            Some(ls) => ls.forward(&xs),
            None => Ok(xs),
        }
    }

    /// `xs + ls(branch)`, fused on the CPU at inference.
    fn residual(xs: &Tensor, ls: &Option<LayerScale>, branch: Tensor) -> candle_core::Result<Tensor> {
        let gamma = ls.as_ref().map(LayerScale::gamma);
        if fused::applies([xs, &branch].into_iter().chain(gamma)) {
            return fused::scaled_residual(xs, &branch, gamma);
        }
        xs + Self::scaled(ls, branch)?
    }

    /// `xs`: `[B, N, D]`. In training (`train` gives the generator) with a drop-path rate,
    /// each branch runs on a random subset of `max(⌊B·(1 − r)⌋, 1)` samples and is added back scaled by B / subset.
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        rope: Option<(&RopePositionEmbedding, &RopeTables)>,
        train: Option<&StochasticRng>,
    ) -> candle_core::Result<Tensor> {
        let attn = |x: &Tensor| Self::scaled(&self.ls1, self.attn.forward(&self.norm1.forward(x)?, rope)?);
        let ffn = |x: &Tensor| Self::scaled(&self.ls2, self.mlp.forward(&self.norm2.forward(x)?)?);
        match train {
            Some(rng) if self.drop_path_rate > 0.0 => {
                let xs = drop_add_residual(xs, self.drop_path_rate, rng, attn)?;
                drop_add_residual(&xs, self.drop_path_rate, rng, ffn)
            }
            _ => {
                let xs = Self::residual(xs, &self.ls1, self.attn.forward(&self.norm1.forward(xs)?, rope)?)?;
                Self::residual(&xs, &self.ls2, self.mlp.forward(&self.norm2.forward(&xs)?)?)
            }
        }
    }
}

/// DINOv3's `drop_add_residual_stochastic_depth`: the residual of a random subset of the
/// batch, added back with scale `B / subset`; the other samples pass unchanged.
fn drop_add_residual(
    xs: &Tensor,
    rate: f64,
    rng: &StochasticRng,
    residual: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let b = xs.dim(0)?;
    let keep = (((b as f64) * (1.0 - rate)) as usize).max(1);
    if keep == b {
        return xs + residual(xs)?;
    }
    let xs = &xs.contiguous()?; // index_select and index_add need contiguous inputs.
    let order = rng.permutation(b);
    let subset = Tensor::new(&order[..keep], xs.device())?;
    let update = (residual(&xs.index_select(&subset, 0)?)? * (b as f64 / keep as f64))?;
    xs.index_add(&subset, &update, 0)
}
