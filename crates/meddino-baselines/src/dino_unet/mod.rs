//! The Dino U-Net baseline (MedDINOv3's `dinoUNetTrainer.py`, `DinoUNet`,
//! <https://github.com/ricklisz/MedDINOv3>): a frozen DINOv3 ViT inside a
//! ViT-Adapter, whose four outputs are projected by `FAPM`, upsampled to full, 1/2, 1/4 and
//! 1/8 resolution and decoded by nnU-Net's U-Net decoder.
//!
//! - `encoder` (`DINOv3EncoderAdapter`): input channels to 3 (one repeated; two repeated and
//!   cut; more cut to the first three), `dinov3_adapter` (module `adapter`: the ViT at
//!   `encoder.dinov3_adapter.backbone.*`, the spatial prior, deformable-attention
//!   extractors, batch norms), `fapm` and `ups` (module `fapm`).
//! - `decoder`: [`UNetDecoder`] over 4 stages with widths `features_per_stage[:4]` of the
//!   plans, strides 2 and 3×3 kernels, `[n_conv_per_stage_decoder[0]] × 3` convolutions per
//!   stage and the plans' conv ops; only the full-resolution output (no deep supervision, as
//!   `dinoUNetTrainer` trains).
//! - The ViT is frozen: it runs in eval mode, its outputs are cut from the graph, and
//!   [`SegmentationNetwork::is_trainable`] is false for its variables (and for batch-norm
//!   running statistics). Drop path (the adapter's 0.3 on each `ConvFFN` residual) draws from
//!   one generator owned by the network ([`SegmentationNetwork::reseed`]).
//! - State-dict names are PyTorch's. PyTorch's decoder also holds the encoder, so its
//!   checkpoints name every encoder tensor twice (`decoder.encoder.*`); those second names
//!   are [`SegmentationNetwork::state_dict_aliases`].
//!
//! Layout NCHW, f32; input `[B, input_channels, H, W]`, logits `[B, num_classes, H, W]`.
//!
//! Deliberate differences from the reference:
//! - **Input sizes.** The reference needs H and W divisible by 32 (`DWConv` splits the
//!   1/8, 1/16, 1/32 query tokens as 16n / 4n / n) and fails on anything else. Here H and W
//!   need only be multiples of the ViT patch size (16: the data set's 80×80 patches): the
//!   input is zero-padded at the bottom and right to the next multiple of lcm(32, patch
//!   size) and the logits are cropped back. Sizes that are already multiples of 32 are not
//!   padded, so there the network computes what the reference does.
//! - The ViT runs in f32 and eval mode (the reference: bf16 autocast, and training mode
//!   whenever the network is, which turns on the hub ViT-B's RoPE coordinate rescaling).
//! - Initialisation of fresh weights follows the reference's final state: every
//!   convolution and transposed convolution He-normal (`InitWeights_He(1e-2)`, which the
//!   trainer applies to `decoder` and so, through `decoder.encoder`, to the whole encoder),
//!   adapter linears normal(0.02), deformable attention as `MSDeformAttn._reset_parameters`,
//!   `level_embed` standard normal. That sweep also reaches the frozen ViT's
//!   patch-embedding convolution (`patch_embed.proj`) after its pretrained weights were
//!   loaded, so the reference trains on a randomly initialised, frozen patch embedding; the
//!   ViT here is left as built (from its checkpoint).

mod adapter;
mod fapm;
mod names;

use candle_core::Tensor;
use candle_nn::VarBuilder;
use meddino_backbone::stochastic::StochasticRng;
use meddino_backbone::{Config, DinoVisionTransformer};
use meddino_decoder::SegmentationNetwork;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use self::adapter::DINOv3Adapter;
use self::fapm::{LearnableUpsampleBlock, FAPM};
use crate::error::{Error, Result};
use crate::layers::is_batch_norm_buffer;
use crate::unet::{ConvOps, Nonlin, NormOp, PlainConvUNetConfig, UNetDecoder, UNetDecoderConfig};

/// The arguments of `DINOv3_Adapter` (names as upstream); [`Default`] is what
/// `DinoUNet._create_dinov3_encoder` passes, with the interaction blocks of ViT-B.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// ViT blocks whose normed patch tokens the four interactions read, increasing.
    pub interaction_indexes: Vec<usize>,
    /// Kept for completeness: the reference only uses it in a position-embedding helper it
    /// never calls.
    pub pretrain_size: usize,
    /// Width of the spatial prior's stem (stages: ×1, ×2, ×4, ×4).
    pub conv_inplane: usize,
    /// Sampling points per head.
    pub n_points: usize,
    /// Heads of the deformable attention.
    pub deform_num_heads: usize,
    /// Drop-path rate on every extractor's `ConvFFN` residual.
    pub drop_path_rate: f64,
    /// Accepted and unused, as in the reference (no injector, so no layer scale).
    pub init_values: f64,
    /// Whether extractors have a `ConvFFN`.
    pub with_cffn: bool,
    /// `ConvFFN` hidden width as a fraction of the ViT width.
    pub cffn_ratio: f64,
    /// Value width of the deformable attention as a fraction of the ViT width.
    pub deform_ratio: f64,
    /// Whether the ViT maps (bilinearly resized) are added to the four outputs.
    pub add_vit_feature: bool,
    /// Whether the last interaction has two extra extractors.
    pub use_extra_extractor: bool,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        Self {
            interaction_indexes: vec![2, 5, 8, 11],
            pretrain_size: 512,
            conv_inplane: 64,
            n_points: 4,
            deform_num_heads: 16,
            drop_path_rate: 0.3,
            init_values: 0.0,
            with_cffn: true,
            cffn_ratio: 0.25,
            deform_ratio: 0.5,
            add_vit_feature: true,
            use_extra_extractor: true,
        }
    }
}

impl AdapterConfig {
    /// The last block of each quarter of a `depth`-block ViT (`[2, 5, 8, 11]` for 12).
    ///
    /// # Errors
    ///
    /// When `depth < 4`.
    pub fn quarter_blocks(depth: usize) -> Result<Vec<usize>> {
        if depth < 4 {
            return Err(Error::Config(format!(
                "the adapter taps four ViT depths, the ViT has {depth} blocks"
            )));
        }
        Ok(meddino_decoder::quarter_blocks(depth))
    }
}

/// Name prefix of the ViT inside the network.
pub const BACKBONE_PREFIX: &str = "encoder.dinov3_adapter.backbone.";

/// `DINOv3EncoderAdapter`: channels to 3, the ViT-Adapter (`dinov3_adapter`), `fapm` to the
/// decoder widths, and `ups` to full, 1/2, 1/4, 1/8 resolution.
#[derive(Debug, Clone)]
struct DINOv3EncoderAdapter {
    dinov3_adapter: DINOv3Adapter,
    fapm: FAPM,
    ups: Vec<LearnableUpsampleBlock>,
}

impl DINOv3EncoderAdapter {
    fn new(
        backbone: DinoVisionTransformer,
        adapter: &AdapterConfig,
        rank: usize,
        target_channels: &[usize],
        ops: &ConvOps,
        vb: VarBuilder,
    ) -> Result<Self> {
        let in_channels = backbone.embed_dim();
        Ok(Self {
            dinov3_adapter: DINOv3Adapter::new(backbone, adapter, vb.pp("dinov3_adapter"))?,
            fapm: FAPM::new(in_channels, rank, target_channels, ops, vb.pp("fapm"))?,
            ups: target_channels
                .iter()
                .enumerate()
                .map(|(i, &c)| LearnableUpsampleBlock::new(c, vb.pp("ups").pp(i)))
                .collect::<Result<_>>()?,
        })
    }

    /// `[B, 3, H, W]` → skips `[B, f_i, H / 2^i, W / 2^i]`.
    fn forward_t(&self, xs: &Tensor, train: bool, rng: Option<&StochasticRng>) -> Result<Vec<Tensor>> {
        let (_, _, h, w) = xs.dims4()?;
        let levels = self.dinov3_adapter.forward_t(xs, train, rng)?;
        let mut skips = Vec::with_capacity(self.ups.len());
        for (i, (level, up)) in levels.iter().zip(&self.ups).enumerate() {
            let projected = self.fapm.forward_t(i, level, train)?;
            skips.push(up.forward(&projected, h >> i, w >> i)?);
        }
        Ok(skips)
    }
}

/// The reference's channel handling: one channel repeated to three, two repeated and cut to
/// three, more than three cut to the first three.
fn to_rgb(xs: &Tensor) -> Result<Tensor> {
    let c = xs.dim(1)?;
    Ok(match c {
        0 => return Err(Error::Input(format!("input {:?} has no channels", xs.dims()))),
        3 => xs.clone(),
        c if c < 3 => xs.repeat((1, 3usize.div_ceil(c), 1, 1))?.narrow(1, 0, 3)?,
        _ => xs.narrow(1, 0, 3)?,
    })
}

/// A Dino U-Net: the ViT, the adapter's arguments, and the plans' decoder settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DinoUNetConfig {
    /// The frozen DINOv3 ViT (the trainer uses the hub ViT-B/16, [`Config::vitb16`]).
    pub backbone: Config,
    /// `DINOv3_Adapter`'s arguments.
    pub adapter: AdapterConfig,
    /// FAPM's basis rank (`DINOv3EncoderAdapter`'s `rank`, 256).
    pub rank: usize,
    /// Decoder widths at full, 1/2, 1/4 and 1/8 resolution (the plans'
    /// `features_per_stage[:4]`).
    pub features_per_stage: Vec<usize>,
    /// Convolutions per decoder stage (the plans' `n_conv_per_stage_decoder[0]`, used for all
    /// three stages).
    pub n_conv_per_stage_decoder: usize,
    /// The plans' conv bias, norm and non-linearity, for FAPM and the decoder.
    pub ops: ConvOps,
    /// Output classes (background included).
    pub num_classes: usize,
    /// Input channels the network is given.
    pub input_channels: usize,
}

impl DinoUNetConfig {
    /// What `dinoUNetTrainer.build_network_architecture` builds from a plans configuration's
    /// `architecture.arch_kwargs` (`features_per_stage[:4]`, `[n_conv_per_stage_decoder[0]]
    /// × 3`, the conv ops), around `backbone` with the reference adapter arguments and the
    /// last block of each quarter of its depth as interaction blocks.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the key when `arch_kwargs` is not a valid PlainConvUNet
    /// configuration (see [`PlainConvUNetConfig::from_arch_kwargs`]) or has fewer than 4
    /// stages, and as [`Self::validate`].
    pub fn from_arch_kwargs(
        backbone: Config,
        arch_kwargs: &Value,
        input_channels: usize,
        num_classes: usize,
    ) -> Result<Self> {
        let plans = PlainConvUNetConfig::from_arch_kwargs(arch_kwargs, input_channels, num_classes)?;
        if plans.n_stages < 4 {
            return Err(Error::Config(format!(
                "arch_kwargs.n_stages: the Dino U-Net decodes 4 stages, the plans have {}",
                plans.n_stages
            )));
        }
        let n_conv =
            plans.n_conv_per_stage_decoder.first().copied().ok_or_else(|| {
                Error::Config("arch_kwargs.n_conv_per_stage_decoder: expected at least one entry".into())
            })?;
        let cfg = Self {
            adapter: AdapterConfig {
                interaction_indexes: AdapterConfig::quarter_blocks(backbone.depth)?,
                ..AdapterConfig::default()
            },
            backbone,
            rank: 256,
            features_per_stage: plans.features_per_stage[..4].to_vec(),
            n_conv_per_stage_decoder: n_conv,
            ops: plans.ops,
            num_classes,
            input_channels,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the sizes.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the field when `features_per_stage` does not have 4 entries,
    /// a size is zero, the ViT does not take 3 channels, or the decoder is refused by
    /// [`UNetDecoderConfig::validate`].
    pub fn validate(&self) -> Result<()> {
        if self.features_per_stage.len() != 4 || self.features_per_stage.contains(&0) {
            return Err(Error::Config(format!(
                "features_per_stage: expected 4 positive widths (full to 1/8 resolution), got {:?}",
                self.features_per_stage
            )));
        }
        if self.rank == 0 || self.input_channels == 0 {
            return Err(Error::Config(format!(
                "rank and input_channels must be positive, got {} and {}",
                self.rank, self.input_channels
            )));
        }
        if self.backbone.in_chans != 3 {
            return Err(Error::Config(format!(
                "backbone.in_chans: the adapter feeds the ViT 3 channels, got {}",
                self.backbone.in_chans
            )));
        }
        self.backbone.validate()?;
        self.decoder().validate()
    }

    /// The ops FAPM and the decoder use: the plans', with `BatchNorm2d` and `ReLU` where the
    /// plans have no norm or non-linearity (`DINOv3EncoderAdapter`'s defaults, which the
    /// decoder inherits from it).
    pub fn effective_ops(&self) -> ConvOps {
        ConvOps {
            conv_bias: self.ops.conv_bias,
            norm: Some(self.ops.norm.unwrap_or(NormOp::BatchNorm2d { eps: 1e-5 })),
            nonlin: Some(self.ops.nonlin.unwrap_or(Nonlin::ReLU)),
        }
    }

    /// The decoder: 4 stages of `features_per_stage`, strides 2, 3×3 kernels (the
    /// encoder adapter's `strides` and `kernel_sizes`).
    pub fn decoder(&self) -> UNetDecoderConfig {
        let n = self.features_per_stage.len();
        UNetDecoderConfig {
            encoder_channels: self.features_per_stage.clone(),
            strides: vec![2; n],
            kernel_sizes: vec![3; n],
            n_conv_per_stage_decoder: vec![self.n_conv_per_stage_decoder; n.saturating_sub(1)],
            ops: self.effective_ops(),
            num_classes: self.num_classes,
        }
    }
}

/// Sides are padded to a multiple of this (and of the patch size) before the adapter.
const ADAPTER_MULTIPLE: usize = 32;

fn lcm(a: usize, b: usize) -> usize {
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    a / gcd(a, b) * b
}

/// The Dino U-Net (`DinoUNet`): `encoder` (the frozen ViT in the ViT-Adapter, FAPM,
/// learnable upsampling) and `decoder` (nnU-Net's U-Net decoder).
///
/// ```
/// use candle_nn::{VarBuilder, VarMap};
/// use meddino_baselines::backbone::Config;
/// use meddino_baselines::dino_unet::{AdapterConfig, DinoUNet, DinoUNetConfig};
/// use meddino_baselines::unet::ConvOps;
/// use meddino_baselines::candle::{DType, Device, Tensor};
/// use meddino_baselines::SegmentationNetwork;
///
/// let cfg = DinoUNetConfig {
///     backbone: Config::vit_micro(),
///     adapter: AdapterConfig { interaction_indexes: vec![0, 1, 2, 3], conv_inplane: 8, ..AdapterConfig::default() },
///     rank: 16,
///     features_per_stage: vec![8, 16, 32, 64],
///     n_conv_per_stage_decoder: 1,
///     ops: ConvOps::default(),
///     num_classes: 3,
///     input_channels: 1,
/// };
/// let varmap = VarMap::new();
/// let network = DinoUNet::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
/// let logits = network.forward(&Tensor::zeros((1, 1, 80, 80), DType::F32, &Device::Cpu)?)?;
/// assert_eq!(logits.dims(), &[1, 3, 80, 80]);
/// # Ok::<(), meddino_baselines::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct DinoUNet {
    encoder: DINOv3EncoderAdapter,
    decoder: UNetDecoder,
    cfg: DinoUNetConfig,
    rng: StochasticRng,
    /// Every state-dict name under `encoder.` (variables and the ViT's computed buffers).
    encoder_names: Vec<String>,
}

impl DinoUNet {
    /// Reads or creates every tensor in `vb` (`encoder.*`, `decoder.*`); fresh weights are
    /// initialised as the reference's (see the module docs).
    ///
    /// # Errors
    ///
    /// As [`DinoUNetConfig::validate`], when the interaction blocks are not increasing blocks
    /// of the ViT (four of them with `add_vit_feature`), or when a tensor is missing or
    /// mis-shaped in `vb`.
    pub fn new(cfg: &DinoUNetConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let (recording, names) = names::recording(vb.clone());
        let encoder_vb = recording.pp("encoder");
        let backbone = DinoVisionTransformer::new(&cfg.backbone, encoder_vb.pp("dinov3_adapter").pp("backbone"))?;
        let buffers = backbone.buffers()?;
        let encoder = DINOv3EncoderAdapter::new(
            backbone,
            &cfg.adapter,
            cfg.rank,
            &cfg.features_per_stage,
            &cfg.effective_ops(),
            encoder_vb,
        )?;
        let decoder = UNetDecoder::new(&cfg.decoder(), vb.pp("decoder"))?;
        let mut encoder_names = names::recorded(&names);
        for (name, _) in buffers {
            let name = format!("{BACKBONE_PREFIX}{name}");
            if !encoder_names.contains(&name) {
                encoder_names.push(name);
            }
        }
        Ok(Self {
            encoder,
            decoder,
            cfg: cfg.clone(),
            rng: StochasticRng::default(),
            encoder_names,
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &DinoUNetConfig {
        &self.cfg
    }

    /// The frozen ViT.
    pub fn backbone(&self) -> &DinoVisionTransformer {
        self.encoder.dinov3_adapter.backbone()
    }

    /// The side multiple the adapter runs at: lcm(32, patch size).
    fn padded_multiple(&self) -> usize {
        lcm(ADAPTER_MULTIPLE, self.cfg.backbone.patch_size)
    }
}

impl SegmentationNetwork for DinoUNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let _span = tracing::trace_span!("dino_unet").entered();
        let p = self.cfg.backbone.patch_size;
        let &[_, c, h, w] = xs.dims() else {
            return Err(Error::Input(format!(
                "DinoUNet expects a [B, {}, H, W] batch, got shape {:?}",
                self.cfg.input_channels,
                xs.dims()
            )));
        };
        if c != self.cfg.input_channels || h == 0 || w == 0 || h % p != 0 || w % p != 0 {
            return Err(Error::Input(format!(
                "DinoUNet expects [B, {}, H, W] with H and W positive multiples of the patch size {p}, got shape {:?}",
                self.cfg.input_channels,
                xs.dims()
            )));
        }
        let m = self.padded_multiple();
        let (ph, pw) = (h.next_multiple_of(m), w.next_multiple_of(m));
        let rgb = to_rgb(xs)?;
        let rgb = if (ph, pw) == (h, w) {
            rgb
        } else {
            rgb.pad_with_zeros(2, 0, ph - h)?.pad_with_zeros(3, 0, pw - w)?
        };
        let skips = self.encoder.forward_t(&rgb, train, train.then_some(&self.rng))?;
        let logits = self.decoder.forward_highest(&skips, train)?;
        Ok(if (ph, pw) == (h, w) {
            logits
        } else {
            logits.narrow(2, 0, h)?.narrow(3, 0, w)?.contiguous()?
        })
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }

    fn input_channels(&self) -> usize {
        self.cfg.input_channels
    }

    fn input_multiple(&self) -> usize {
        self.cfg.backbone.patch_size
    }

    fn reseed(&self, seed: u64) {
        self.rng.reseed(seed);
    }

    fn buffers(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(self
            .backbone()
            .buffers()?
            .into_iter()
            .map(|(name, t)| (format!("{BACKBONE_PREFIX}{name}"), t))
            .collect())
    }

    fn is_trainable(&self, name: &str) -> bool {
        !name.starts_with(BACKBONE_PREFIX) && !is_batch_norm_buffer(name)
    }

    fn state_dict_aliases(&self) -> Vec<(String, String)> {
        let mut aliases = self.decoder.state_dict_aliases("decoder");
        aliases.extend(
            self.encoder_names
                .iter()
                .map(|name| (format!("decoder.{name}"), name.clone())),
        );
        aliases
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn dino_unet_default_interactions_are_the_quarter_ends() {
        assert_eq!(AdapterConfig::quarter_blocks(12).expect("12"), [2, 5, 8, 11]);
        assert_eq!(AdapterConfig::quarter_blocks(4).expect("4"), [0, 1, 2, 3]);
        assert_eq!(AdapterConfig::quarter_blocks(24).expect("24"), [5, 11, 17, 23]);
        assert!(AdapterConfig::quarter_blocks(3).is_err());
        assert_eq!(lcm(32, 16), 32);
        assert_eq!(lcm(32, 14), 224);
    }

    #[test]
    fn dino_unet_channels_follow_the_reference() {
        let xs = Tensor::arange(0f32, 2.0, &Device::Cpu)
            .and_then(|t| t.reshape((1, 2, 1, 1)))
            .expect("xs");
        let rgb: Vec<f32> = to_rgb(&xs).and_then(|t| Ok(t.flatten_all()?.to_vec1()?)).expect("rgb");
        assert_eq!(rgb, [0.0, 1.0, 0.0]);
        let xs = Tensor::arange(0f32, 5.0, &Device::Cpu)
            .and_then(|t| t.reshape((1, 5, 1, 1)))
            .expect("xs");
        let rgb: Vec<f32> = to_rgb(&xs).and_then(|t| Ok(t.flatten_all()?.to_vec1()?)).expect("rgb");
        assert_eq!(rgb, [0.0, 1.0, 2.0]);
    }

    #[test]
    fn dino_unet_encoder_skips_have_decoder_shapes() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let backbone = DinoVisionTransformer::new(&Config::vit_micro(), vb.pp(BACKBONE_PREFIX.trim_end_matches('.')))
            .expect("vit");
        let adapter = AdapterConfig {
            interaction_indexes: vec![0, 1, 2, 3],
            conv_inplane: 8,
            deform_num_heads: 4,
            ..AdapterConfig::default()
        };
        let encoder = DINOv3EncoderAdapter::new(
            backbone,
            &adapter,
            16,
            &[8, 16, 32, 64],
            &ConvOps::default(),
            vb.pp("encoder"),
        )
        .expect("encoder");
        let xs = Tensor::randn(0f32, 1.0, (2, 3, 64, 64), &Device::Cpu).expect("xs");
        let rng = StochasticRng::default();
        let skips = encoder.forward_t(&xs, true, Some(&rng)).expect("forward");
        let dims: Vec<Vec<usize>> = skips.iter().map(|s| s.dims().to_vec()).collect();
        assert_eq!(
            dims,
            [[2, 8, 64, 64], [2, 16, 32, 32], [2, 32, 16, 16], [2, 64, 8, 8]].map(|d| d.to_vec())
        );
    }
}
