//! SegFormer with a Mix Transformer (MiT) encoder and the all-MLP decoder, as MedDINOv3's
//! `segformerTrainer` builds it (`nnunetv2/training/nnUNetTrainer/segformerTrainer.py`,
//! `SegFormer(model_name='B2', …)` followed by `init_weights()` without a checkpoint), after
//! Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with
//! Transformers" (<https://arxiv.org/abs/2105.15203>). Spec: `shared/spec/meddinov3-reference.md`
//! §4.2.
//!
//! Layout: images are NCHW; tokens are `[B, H·W, C]` in row-major order. A one-channel input
//! is repeated to three channels before the encoder, as the reference does with CT slices.
//!
//! What the reference does, and this port with it:
//!
//! - Four stages, each an overlapping patch embedding (conv 7/4/3, then 3/2/1 three times,
//!   followed by a LayerNorm), transformer blocks and a stage LayerNorm. Every LayerNorm has
//!   PyTorch's default eps 1e-5.
//! - Efficient self-attention: `q` and `kv` linears with biases, keys and values from tokens
//!   reduced by a `sr` convolution (kernel = stride = SR ratio) and a LayerNorm `norm`; no
//!   reduction (and no `sr`, `norm`) where the ratio is 1. No attention or projection dropout.
//! - The reference's `mix_skip` Mix-FFN: `fc2(GELU(norm1(dwconv(fc1 x) + fc1 x)))` with the
//!   exact (erf) GELU. The module also holds `norm2` and `norm3`, which its forward never uses;
//!   they are kept so the state dict matches (and receive no gradient).
//! - No stochastic depth: the reference's blocks have no `DropPath`, so
//!   [`SegFormerConfig::mit_b2`] has `drop_path_rate` 0. A non-zero rate (other configurations)
//!   drops the attention and Mix-FFN branches per sample, rising linearly from 0 over the blocks.
//! - The decoder projects each scale to `decoder_embed_dim` (`linear_c*`), resizes the three
//!   coarser ones bilinearly (`align_corners=False`) to the first stage's size, concatenates
//!   them coarsest first (`[c4, c3, c2, c1]`), fuses with a 1×1 convolution without bias,
//!   `BatchNorm2d` (eps 1e-5, momentum 0.1) and ReLU, applies `Dropout2d(0.2)` in training and
//!   predicts with a 1×1 convolution; a 4×4 stride-4 transposed convolution (`conv_up`) returns
//!   to the input resolution.
//! - Initialisation from scratch: Xavier-uniform weights and zero biases for every `Linear`
//!   and `Conv2d` (PyTorch's fans: a depth-wise convolution's fan-out is `out·k²`), LayerNorms
//!   (1, 0), BatchNorm (1, 0) with running statistics (0, 1). `conv_up` is a `ConvTranspose2d`,
//!   which `init_weights` does not touch, so it keeps PyTorch's default: weight and bias uniform
//!   in ±1/√(C·16).
//!
//! Side lengths: the first stage has `⌈H/4⌉` rows and each later one half the previous
//! (rounded up); the decoder works at the first stage's size and `conv_up` multiplies it by 4,
//! so H and W must be multiples of 4 ([`SegmentationNetwork::input_multiple`]). Each stage must
//! also be at least as large as its SR ratio, or the reducing convolution has no output:
//! [`SegFormer::min_input_size`] (32 for MiT-B2; the phantom data set's 80×80 patch works).

use candle_core::{Module, Tensor, D};
use candle_nn::{Conv2d, VarBuilder};
use meddino_backbone::stochastic::StochasticRng;
use serde::{Deserialize, Serialize};

use super::layers::{
    conv2d, depthwise_conv3x3, drop_path, dropout2d, from_tokens, is_batch_norm_buffer, resize_bilinear,
    to_three_channels, to_tokens, BatchNorm2d, ConvSpec, LayerNorm, Linear, PixelConvTranspose2d, WeightInit,
};
use crate::error::{Error, Result};
use crate::network::SegmentationNetwork;

/// Number of encoder stages (and decoder inputs).
const STAGES: usize = 4;
/// Kernel, stride and padding of each stage's patch embedding.
const PATCH_EMBED: [(usize, usize, usize); STAGES] = [(7, 4, 3), (3, 2, 1), (3, 2, 1), (3, 2, 1)];
/// Factor between the first stage and the input, undone by `conv_up`.
const FIRST_STRIDE: usize = 4;
/// Channels the encoder sees (one-channel inputs are repeated).
const ENCODER_CHANNELS: usize = 3;
/// `nn.BatchNorm2d`'s default eps.
const BATCH_NORM_EPS: f64 = 1e-5;

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
    fn hidden_dim(&self, stage: usize) -> usize {
        let ratio = self.mlp_ratios.get(stage).copied().unwrap_or(0.0);
        let dim = self.embed_dims.get(stage).copied().unwrap_or(0);
        if ratio.is_finite() && ratio > 0.0 {
            (dim as f64 * ratio) as usize
        } else {
            0
        }
    }

    /// Stochastic-depth rate of every block, stage by stage: `linspace(0, rate, Σ depths)`.
    fn drop_path_rates(&self) -> Vec<f64> {
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
    fn stage_sides(side: usize) -> [usize; STAGES] {
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
struct MiT {
    stages: Vec<Stage>,
}

impl MiT {
    fn new(cfg: &SegFormerConfig, vb: VarBuilder) -> Result<Self> {
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
    fn forward(&self, xs: &Tensor, train: bool, rng: &StochasticRng) -> Result<Vec<Tensor>> {
        let mut outs = Vec::with_capacity(STAGES);
        let mut current = xs.clone();
        for stage in &self.stages {
            current = stage.forward(&current, train, rng)?;
            outs.push(current.clone());
        }
        Ok(outs)
    }
}

/// `ConvModule`: 1×1 convolution without bias, `BatchNorm2d`, ReLU.
#[derive(Debug, Clone)]
struct ConvModule {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl ConvModule {
    fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.bn.forward_t(&self.conv.forward(xs)?, train)?.relu()?)
    }
}

/// The all-MLP `Decoder` and the final transposed convolution.
#[derive(Debug, Clone)]
struct Decoder {
    /// `linear_c1` … `linear_c4` (`MLP.proj`), finest first.
    linear_c: Vec<Linear>,
    linear_fuse: ConvModule,
    linear_pred: Conv2d,
    conv_up: PixelConvTranspose2d,
    dropout: f64,
}

impl Decoder {
    fn new(cfg: &SegFormerConfig, vb: VarBuilder) -> Result<Self> {
        let init = WeightInit::XavierUniform;
        let embed = cfg.decoder_embed_dim;
        let classes = cfg.num_classes;
        let linear_c = cfg
            .embed_dims
            .iter()
            .enumerate()
            .map(|(i, &dim)| Linear::new(dim, embed, true, init, vb.pp(format!("linear_c{}", i + 1)).pp("proj")))
            .collect::<Result<Vec<_>>>()?;
        let fuse_vb = vb.pp("linear_fuse");
        let linear_fuse = ConvModule {
            conv: conv2d(
                ConvSpec::same(embed * STAGES, embed, 1).no_bias(),
                init,
                fuse_vb.pp("conv"),
            )?,
            bn: BatchNorm2d::new(embed, BATCH_NORM_EPS, fuse_vb.pp("bn"))?,
        };
        let linear_pred = conv2d(ConvSpec::same(embed, classes, 1), init, vb.pp("linear_pred"))?;
        // init_weights skips ConvTranspose2d: PyTorch's default initialisation, bias included.
        let conv_up = PixelConvTranspose2d::new(
            classes,
            classes,
            FIRST_STRIDE,
            WeightInit::TorchDefault,
            vb.pp("conv_up"),
        )?;
        Ok(Self {
            linear_c,
            linear_fuse,
            linear_pred,
            conv_up,
            dropout: cfg.dropout_ratio,
        })
    }

    /// The four stage outputs → logits `[B, K, 4·h1, 4·w1]`.
    fn forward(&self, features: &[Tensor], train: bool, rng: &StochasticRng) -> Result<Tensor> {
        let first = features
            .first()
            .ok_or_else(|| Error::Input("segformer decoder got no features".into()))?;
        let (_, _, h1, w1) = first.dims4()?;
        let mut projected = Vec::with_capacity(STAGES);
        for (linear, xs) in self.linear_c.iter().zip(features) {
            let (_, _, h, w) = xs.dims4()?;
            let tokens = linear.forward(&to_tokens(xs)?)?;
            projected.push(resize_bilinear(&from_tokens(&tokens, h, w)?, h1, w1)?);
        }
        // The reference concatenates coarsest first.
        projected.reverse();
        let fused = self.linear_fuse.forward(&Tensor::cat(&projected, 1)?, train)?;
        let fused = if train {
            dropout2d(&fused, self.dropout, rng)?
        } else {
            fused
        };
        Ok(self.conv_up.forward(&self.linear_pred.forward(&fused)?)?)
    }
}

/// SegFormer (MiT encoder, all-MLP decoder, 4× transposed-convolution head) as MedDINOv3's
/// `segformerTrainer` trains it from scratch. State-dict names are PyTorch's:
/// `backbone.patch_embed1.proj.weight`, `backbone.block1.0.attn.q.weight`,
/// `decoder.linear_c1.proj.weight`, `decoder.linear_fuse.bn.running_mean`,
/// `decoder.conv_up.weight`, ….
#[derive(Debug, Clone)]
pub struct SegFormer {
    backbone: MiT,
    decoder: Decoder,
    cfg: SegFormerConfig,
    input_channels: usize,
    rng: StochasticRng,
}

impl SegFormer {
    /// Builds the network for a data set with `input_channels` channels (1, repeated to
    /// three as the reference does, or 3), reading or creating its variables in `vb`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid `cfg` or a channel count other than 1 or 3; an error
    /// when a tensor is missing or mis-shaped in `vb`.
    pub fn new(cfg: &SegFormerConfig, input_channels: usize, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        if input_channels != 1 && input_channels != ENCODER_CHANNELS {
            return Err(Error::Config(format!(
                "segformer takes 1 input channel (repeated to 3) or 3, got {input_channels}"
            )));
        }
        Ok(Self {
            backbone: MiT::new(cfg, vb.pp("backbone"))?,
            decoder: Decoder::new(cfg, vb.pp("decoder"))?,
            cfg: cfg.clone(),
            input_channels,
            rng: StochasticRng::default(),
        })
    }

    /// The configuration the network was built with.
    pub fn config(&self) -> &SegFormerConfig {
        &self.cfg
    }

    /// The smallest side (a multiple of [`SegmentationNetwork::input_multiple`]) for which
    /// every stage is at least as large as its SR ratio: 32 for MiT-B2.
    pub fn min_input_size(&self) -> usize {
        let mut side = FIRST_STRIDE;
        while !self.side_fits(side) {
            side += FIRST_STRIDE;
        }
        side
    }

    /// Whether every stage of an input side `side` covers its SR ratio.
    fn side_fits(&self, side: usize) -> bool {
        SegFormerConfig::stage_sides(side)
            .iter()
            .zip(&self.cfg.sr_ratios)
            .all(|(&n, &sr)| n >= sr.max(1))
    }

    fn check_input(&self, xs: &Tensor) -> Result<()> {
        let shape = xs.dims();
        let [_, c, h, w] = shape else {
            return Err(Error::Input(format!("segformer expects [B, C, H, W], got {shape:?}")));
        };
        if *c != self.input_channels {
            return Err(Error::Input(format!(
                "segformer expects {} input channel(s), got input {shape:?}",
                self.input_channels
            )));
        }
        if h % FIRST_STRIDE != 0 || w % FIRST_STRIDE != 0 {
            return Err(Error::Input(format!(
                "segformer needs H and W multiples of {FIRST_STRIDE}, got input {shape:?}"
            )));
        }
        if !self.side_fits(*h) || !self.side_fits(*w) {
            return Err(Error::Input(format!(
                "segformer needs H and W of at least {} (stage sizes {:?} × {:?} against sr ratios {:?}), got input {shape:?}",
                self.min_input_size(),
                SegFormerConfig::stage_sides(*h),
                SegFormerConfig::stage_sides(*w),
                self.cfg.sr_ratios
            )));
        }
        Ok(())
    }
}

impl SegmentationNetwork for SegFormer {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let _span = tracing::trace_span!("segformer").entered();
        self.check_input(xs)?;
        let xs = to_three_channels(xs)?;
        let features = self.backbone.forward(&xs, train, &self.rng)?;
        self.decoder.forward(&features, train, &self.rng)
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }

    fn input_channels(&self) -> usize {
        self.input_channels
    }

    fn input_multiple(&self) -> usize {
        FIRST_STRIDE
    }

    fn reseed(&self, seed: u64) {
        self.rng.reseed(seed);
    }

    fn is_trainable(&self, name: &str) -> bool {
        !is_batch_norm_buffer(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::{Optimizer, VarMap};
    use meddino_testutil::assert_gradients_reach;

    fn tiny(varmap: &VarMap, channels: usize) -> SegFormer {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, &Device::Cpu);
        SegFormer::new(&SegFormerConfig::tiny(3), channels, vb).expect("tiny segformer")
    }

    fn image(b: usize, c: usize, h: usize, w: usize) -> Tensor {
        Tensor::randn(0f32, 1.0, (b, c, h, w), &Device::Cpu).expect("image")
    }

    #[test]
    fn forward_restores_the_input_resolution() {
        let varmap = VarMap::new();
        let net = tiny(&varmap, 1);
        for side in [64, 80] {
            for train in [false, true] {
                let out = net.forward_t(&image(2, 1, side, side), train).expect("forward");
                assert_eq!(out.dims(), [2, 3, side, side], "side {side}, train {train}");
            }
        }
        let out = net.forward(&image(1, 1, 64, 80)).expect("forward");
        assert_eq!(out.dims(), [1, 3, 64, 80]);
    }

    #[test]
    fn b2_arithmetic_fits_the_phantom_patch() {
        assert_eq!(SegFormerConfig::stage_sides(80), [20, 10, 5, 3]);
        assert_eq!(SegFormerConfig::stage_sides(448), [112, 56, 28, 14]);
        assert_eq!(SegFormerConfig::stage_sides(32), [8, 4, 2, 1]);
        let varmap = VarMap::new();
        let net = tiny(&varmap, 1);
        // Same SR ratios as B2.
        assert_eq!(net.config().sr_ratios, SegFormerConfig::mit_b2(4).sr_ratios);
        assert_eq!(net.min_input_size(), 32);
        assert_eq!(net.input_multiple(), 4);
        assert!(net.forward(&image(1, 1, 32, 36)).is_ok());
    }

    #[test]
    fn bad_inputs_are_errors_naming_the_shape() {
        let varmap = VarMap::new();
        let net = tiny(&varmap, 1);
        for (dims, needle) in [
            (vec![1, 3, 64, 64], "[1, 3, 64, 64]"),
            (vec![1, 1, 66, 64], "[1, 1, 66, 64]"),
            (vec![1, 1, 28, 28], "[1, 1, 28, 28]"),
        ] {
            let xs = Tensor::zeros(dims.as_slice(), DType::F32, &Device::Cpu).expect("zeros");
            match net.forward(&xs) {
                Err(Error::Input(message)) => assert!(message.contains(needle), "{message}"),
                other => panic!("{dims:?}: expected an input error, got {other:?}"),
            }
        }
        let xs = Tensor::zeros((1, 64, 64), DType::F32, &Device::Cpu).expect("zeros");
        assert!(matches!(net.forward(&xs), Err(Error::Input(_))));
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let refused = SegFormer::new(&SegFormerConfig::tiny(3), 2, vb.pp("other"));
        assert!(
            matches!(refused, Err(Error::Config(ref m)) if m.contains("got 2")),
            "{refused:?}"
        );
        let mut cfg = SegFormerConfig::tiny(3);
        cfg.num_heads[2] = 5;
        assert!(matches!(cfg.validate(), Err(Error::Config(_))));
    }

    #[test]
    fn three_channel_data_is_accepted() {
        let varmap = VarMap::new();
        let net = tiny(&varmap, 3);
        assert_eq!(net.input_channels(), 3);
        let out = net.forward(&image(1, 3, 32, 32)).expect("forward");
        assert_eq!(out.dims(), [1, 3, 32, 32]);
    }

    #[test]
    fn gradients_reach_every_used_variable() {
        let varmap = VarMap::new();
        let net = tiny(&varmap, 1);
        net.reseed(3);
        // At 32×32 the first stage reduces its keys to a single one, which leaves `q` without
        // a gradient (softmax over one key is constant); 64×64 gives four.
        let out = net.forward_t(&image(2, 1, 64, 64), true).expect("forward");
        let loss = out.sqr().and_then(|t| t.mean_all()).expect("loss");
        let grads = loss.backward().expect("backward");
        let data = varmap.data().lock().expect("varmap");
        let first = grads
            .get(data["backbone.patch_embed1.proj.weight"].as_tensor())
            .expect("patch_embed1 gradient");
        let norm = first.abs().and_then(|g| g.sum_all()).and_then(|s| s.to_scalar::<f32>());
        assert!(norm.expect("norm") > 0.0);
        let _ = assert_gradients_reach(data.iter(), &grads, |name| {
            // The reference builds mlp.norm2/norm3 but never uses them.
            !net.is_trainable(name) || name.contains("mlp.norm2") || name.contains("mlp.norm3")
        });
        assert!(!net.is_trainable("decoder.linear_fuse.bn.running_mean"));
        assert!(net.is_trainable("decoder.linear_fuse.bn.weight"));
    }

    #[test]
    fn initialisation_follows_init_weights() {
        let varmap = VarMap::new();
        let net = tiny(&varmap, 1);
        let data = varmap.data().lock().expect("varmap");
        let values = |name: &str| -> Vec<f32> {
            data.get(name)
                .unwrap_or_else(|| panic!("no variable {name}"))
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .expect("values")
        };
        let within = |name: &str, bound: f64| {
            let v = values(name);
            let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            // Uniform draws fill most of the interval.
            assert!(
                f64::from(max) <= bound && f64::from(max) > 0.5 * bound,
                "{name}: max {max}, bound {bound}"
            );
        };
        let cfg = net.config();
        let (dim, hidden) = (cfg.embed_dims[0], cfg.hidden_dim(0));
        // Xavier uniform with PyTorch's fans.
        within("backbone.block1.0.attn.q.weight", (6.0 / (2 * dim) as f64).sqrt());
        within("backbone.block1.0.mlp.fc1.weight", (6.0 / (dim + hidden) as f64).sqrt());
        within(
            "backbone.patch_embed1.proj.weight",
            (6.0 / ((3 + dim) * 49) as f64).sqrt(),
        );
        within(
            "backbone.block1.0.mlp.dwconv.dwconv.weight",
            (6.0 / (9 + 9 * hidden) as f64).sqrt(),
        );
        // ConvTranspose2d keeps PyTorch's default: weight and bias in ±1/√(C·16).
        let k = cfg.num_classes;
        within("decoder.conv_up.weight", 1.0 / ((k * 16) as f64).sqrt());
        // Only `k` draws: in the interval and not the zeros `conv2d` would give.
        let bias = values("decoder.conv_up.bias");
        let bound = 1.0 / ((k * 16) as f64).sqrt();
        assert!(bias.iter().all(|b| f64::from(b.abs()) <= bound), "{bias:?}");
        assert!(bias.iter().any(|b| *b != 0.0), "{bias:?}");
        for (name, expected) in [
            ("backbone.block1.0.attn.q.bias", 0.0),
            ("backbone.patch_embed1.proj.bias", 0.0),
            ("decoder.linear_pred.bias", 0.0),
            ("backbone.norm1.weight", 1.0),
            ("backbone.norm1.bias", 0.0),
            ("backbone.block1.0.mlp.norm1.weight", 1.0),
            ("decoder.linear_fuse.bn.weight", 1.0),
            ("decoder.linear_fuse.bn.running_var", 1.0),
            ("decoder.linear_fuse.bn.running_mean", 0.0),
        ] {
            assert!(values(name).iter().all(|v| *v == expected), "{name}");
        }
    }

    #[test]
    fn reseeding_repeats_a_training_forward() {
        let varmap = VarMap::new();
        let net = tiny(&varmap, 1);
        let xs = image(2, 1, 32, 32);
        let run = |seed: u64| -> Vec<f32> {
            net.reseed(seed);
            net.forward_t(&xs, true)
                .and_then(|t| Ok(t.flatten_all()?.to_vec1()?))
                .expect("forward")
        };
        let a = run(11);
        let b = run(11);
        let c = run(12);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn a_few_steps_lower_the_cross_entropy() {
        let varmap = VarMap::new();
        let net = tiny(&varmap, 1);
        // Class = which horizontal band of the image a pixel lies in; the image is the band's
        // intensity plus noise.
        let (b, side) = (2, 32);
        let labels: Vec<u32> = (0..b * side * side)
            .map(|i| ((i / side) % side * 3 / side) as u32)
            .collect();
        let labels = Tensor::from_vec(labels, (b, side, side), &Device::Cpu).expect("labels");
        let xs = (labels.to_dtype(DType::F32).expect("f32") + image(b, 1, side, side).squeeze(1).expect("noise") * 0.1)
            .and_then(|t| t.unsqueeze(1))
            .expect("image");
        let targets = labels.flatten_all().expect("targets");
        let params: Vec<_> = {
            let data = varmap.data().lock().expect("varmap");
            data.iter()
                .filter(|(name, _)| net.is_trainable(name))
                .map(|(_, var)| var.clone())
                .collect()
        };
        let mut opt = candle_nn::AdamW::new(
            params,
            candle_nn::ParamsAdamW {
                lr: 3e-3,
                ..Default::default()
            },
        )
        .expect("optimizer");
        let loss_at = |train: bool| -> Tensor {
            let logits = net.forward_t(&xs, train).expect("forward");
            let logits = logits
                .permute((0, 2, 3, 1))
                .and_then(|t| t.reshape(((), 3)))
                .expect("rows");
            candle_nn::loss::cross_entropy(&logits, &targets).expect("loss")
        };
        let mut losses = Vec::new();
        for step in 0..6 {
            net.reseed(step);
            let loss = loss_at(true);
            losses.push(loss.to_scalar::<f32>().expect("scalar"));
            opt.backward_step(&loss).expect("step");
        }
        let first = losses[0];
        let last = losses[losses.len() - 1];
        assert!(last < first, "losses {losses:?}");
    }
}
