//! The Mix Transformer (MiT) encoder: overlapping patch embeddings, efficient self-attention
//! with spatial reduction, the `mix_skip` Mix-FFN, and the four stages.

use candle_core::{Module, Tensor, D};
use candle_nn::{Conv2d, VarBuilder};
use meddino_backbone::stochastic::StochasticRng;

use super::{SegFormerConfig, ENCODER_CHANNELS, PATCH_EMBED, STAGES};
use crate::error::Result;
use crate::layers::{
    conv2d, depthwise_conv3x3, drop_path, from_tokens, to_tokens, ConvSpec, LayerNorm, Linear, WeightInit,
};

/// `OverlapPatchEmbeddings`: a strided convolution, then LayerNorm over the tokens.
#[derive(Debug, Clone)]
struct OverlapPatchEmbeddings {
    proj: Conv2d,
    norm: LayerNorm,
}

impl OverlapPatchEmbeddings {
    fn new(spec: ConvSpec, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            proj: conv2d(spec, WeightInit::XavierUniform, vb.pp("proj"))?,
            norm: LayerNorm::new(spec.out_channels, eps, vb.pp("norm"))?,
        })
    }

    /// `[B, C, H, W]` → tokens `[B, h·w, dim]` and the grid `(h, w)`.
    fn forward(&self, xs: &Tensor) -> Result<(Tensor, usize, usize)> {
        let xs = self.proj.forward(xs)?;
        let (_, _, h, w) = xs.dims4()?;
        Ok((self.norm.forward(&to_tokens(&xs)?)?, h, w))
    }
}

/// `EfficientSelfAtten`: multi-head attention whose keys and values come from tokens reduced
/// by a `sr`×`sr` strided convolution.
#[derive(Debug, Clone)]
struct EfficientSelfAtten {
    q: Linear,
    kv: Linear,
    proj: Linear,
    /// The reducing convolution and its LayerNorm, absent when the ratio is 1.
    sr: Option<(Conv2d, LayerNorm)>,
    head: usize,
    scale: f64,
}

impl EfficientSelfAtten {
    fn new(dim: usize, head: usize, sr_ratio: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let init = WeightInit::XavierUniform;
        let sr = if sr_ratio > 1 {
            let spec = ConvSpec::same(dim, dim, sr_ratio).stride(sr_ratio).padding(0);
            Some((
                conv2d(spec, init, vb.pp("sr"))?,
                LayerNorm::new(dim, eps, vb.pp("norm"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            q: Linear::new(dim, dim, true, init, vb.pp("q"))?,
            kv: Linear::new(dim, 2 * dim, true, init, vb.pp("kv"))?,
            proj: Linear::new(dim, dim, true, init, vb.pp("proj"))?,
            sr,
            head,
            scale: 1.0 / ((dim / head) as f64).sqrt(),
        })
    }

    /// Tokens `[B, N, C]` on an `h`×`w` grid → `[B, N, C]`.
    fn forward(&self, xs: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let (b, n, c) = xs.dims3()?;
        let d = c / self.head;
        let q = self
            .q
            .forward(xs)?
            .reshape((b, n, self.head, d))?
            .transpose(1, 2)?
            .contiguous()?;
        let source = match &self.sr {
            Some((sr, norm)) => norm.forward(&to_tokens(&sr.forward(&from_tokens(xs, h, w)?)?)?)?,
            None => xs.clone(),
        };
        let m = source.dim(1)?;
        let kv = self
            .kv
            .forward(&source)?
            .reshape((b, m, 2, self.head, d))?
            .permute((2, 0, 3, 1, 4))?;
        let k = kv.get(0)?.contiguous()?;
        let v = kv.get(1)?.contiguous()?;
        let attn = (q.matmul(&k.t()?.contiguous()?)? * self.scale)?;
        let attn = candle_nn::ops::softmax(&attn, D::Minus1)?;
        let out = attn.matmul(&v)?.transpose(1, 2)?.reshape((b, n, c))?;
        Ok(self.proj.forward(&out)?)
    }
}

/// `DWConv`: a 3×3 depth-wise convolution over the token grid.
#[derive(Debug, Clone)]
struct DWConv {
    dwconv: Conv2d,
}

impl DWConv {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let spec = ConvSpec::same(dim, dim, 3).depthwise();
        Ok(Self {
            dwconv: conv2d(spec, WeightInit::XavierUniform, vb.pp("dwconv"))?,
        })
    }

    fn forward(&self, xs: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        to_tokens(&depthwise_conv3x3(&from_tokens(xs, h, w)?, &self.dwconv)?)
    }
}

/// `MixFFN_skip`: `fc2(GELU(norm1(dwconv(fc1 x) + fc1 x)))`.
#[derive(Debug, Clone)]
struct MixFFNSkip {
    fc1: Linear,
    dwconv: DWConv,
    fc2: Linear,
    norm1: LayerNorm,
    /// Built by the reference but never used in its forward; kept for the state dict.
    _norm2: LayerNorm,
    /// As `_norm2`.
    _norm3: LayerNorm,
}

impl MixFFNSkip {
    fn new(dim: usize, hidden: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let init = WeightInit::XavierUniform;
        Ok(Self {
            fc1: Linear::new(dim, hidden, true, init, vb.pp("fc1"))?,
            dwconv: DWConv::new(hidden, vb.pp("dwconv"))?,
            fc2: Linear::new(hidden, dim, true, init, vb.pp("fc2"))?,
            norm1: LayerNorm::new(hidden, eps, vb.pp("norm1"))?,
            _norm2: LayerNorm::new(hidden, eps, vb.pp("norm2"))?,
            _norm3: LayerNorm::new(hidden, eps, vb.pp("norm3"))?,
        })
    }

    fn forward(&self, xs: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let hidden = self.fc1.forward(xs)?;
        let mixed = (self.dwconv.forward(&hidden, h, w)? + hidden)?;
        let activated = self.norm1.forward(&mixed)?.gelu_erf()?;
        Ok(self.fc2.forward(&activated)?)
    }
}

/// `TransformerBlock`: pre-norm attention and Mix-FFN, each a residual branch.
#[derive(Debug, Clone)]
struct TransformerBlock {
    norm1: LayerNorm,
    attn: EfficientSelfAtten,
    norm2: LayerNorm,
    mlp: MixFFNSkip,
    drop_path: f64,
}

impl TransformerBlock {
    fn forward(&self, xs: &Tensor, h: usize, w: usize, train: bool, rng: &StochasticRng) -> Result<Tensor> {
        let branch = |out: Tensor| -> Result<Tensor> {
            if train {
                drop_path(&out, self.drop_path, rng)
            } else {
                Ok(out)
            }
        };
        let xs = (xs + branch(self.attn.forward(&self.norm1.forward(xs)?, h, w)?)?)?;
        let out = (&xs + branch(self.mlp.forward(&self.norm2.forward(&xs)?, h, w)?)?)?;
        Ok(out)
    }
}

/// One MiT stage: patch embedding, blocks and the stage norm.
#[derive(Debug, Clone)]
struct Stage {
    patch_embed: OverlapPatchEmbeddings,
    blocks: Vec<TransformerBlock>,
    norm: LayerNorm,
}

impl Stage {
    /// `[B, C_in, H, W]` → `[B, dim, h, w]`.
    fn forward(&self, xs: &Tensor, train: bool, rng: &StochasticRng) -> Result<Tensor> {
        let (mut tokens, h, w) = self.patch_embed.forward(xs)?;
        for block in &self.blocks {
            tokens = block.forward(&tokens, h, w, train, rng)?;
        }
        from_tokens(&self.norm.forward(&tokens)?, h, w)
    }
}

/// `MiT`: the four-stage Mix Transformer encoder; state-dict names `patch_embed{i}`,
/// `block{i}.{j}`, `norm{i}` (1-based).
#[derive(Debug, Clone)]
pub(super) struct MiT {
    stages: Vec<Stage>,
}

impl MiT {
    pub(super) fn new(cfg: &SegFormerConfig, vb: VarBuilder) -> Result<Self> {
        let eps = cfg.layer_norm_eps;
        let rates = cfg.drop_path_rates();
        let mut stages = Vec::with_capacity(STAGES);
        let mut in_channels = ENCODER_CHANNELS;
        let mut block_index = 0;
        for (stage, &(kernel, stride, padding)) in PATCH_EMBED.iter().enumerate() {
            let dim = cfg.embed_dims[stage];
            let spec = ConvSpec::same(in_channels, dim, kernel).stride(stride).padding(padding);
            let patch_embed = OverlapPatchEmbeddings::new(spec, eps, vb.pp(format!("patch_embed{}", stage + 1)))?;
            let blocks_vb = vb.pp(format!("block{}", stage + 1));
            let mut blocks = Vec::with_capacity(cfg.depths[stage]);
            for j in 0..cfg.depths[stage] {
                let vb = blocks_vb.pp(j);
                blocks.push(TransformerBlock {
                    norm1: LayerNorm::new(dim, eps, vb.pp("norm1"))?,
                    attn: EfficientSelfAtten::new(dim, cfg.num_heads[stage], cfg.sr_ratios[stage], eps, vb.pp("attn"))?,
                    norm2: LayerNorm::new(dim, eps, vb.pp("norm2"))?,
                    mlp: MixFFNSkip::new(dim, cfg.hidden_dim(stage), eps, vb.pp("mlp"))?,
                    drop_path: rates.get(block_index).copied().unwrap_or(0.0),
                });
                block_index += 1;
            }
            let norm = LayerNorm::new(dim, eps, vb.pp(format!("norm{}", stage + 1)))?;
            stages.push(Stage {
                patch_embed,
                blocks,
                norm,
            });
            in_channels = dim;
        }
        Ok(Self { stages })
    }

    /// `[B, 3, H, W]` → the four stage outputs, finest first.
    pub(super) fn forward(&self, xs: &Tensor, train: bool, rng: &StochasticRng) -> Result<Vec<Tensor>> {
        let mut outs = Vec::with_capacity(STAGES);
        let mut current = xs.clone();
        for stage in &self.stages {
            current = stage.forward(&current, train, rng)?;
            outs.push(current.clone());
        }
        Ok(outs)
    }
}
