//! The Dino U-Net baseline (MedDINOv3's `dinoUNetTrainer`, `shared/spec/meddinov3-reference.md`
//! §3.5 and §4.3).

mod adapter;
mod fapm;
mod names;
mod ops;

use candle_core::Tensor;
use candle_nn::VarBuilder;
use meddino_backbone::stochastic::StochasticRng;
use meddino_backbone::DinoVisionTransformer;
use serde::{Deserialize, Serialize};

use self::adapter::DINOv3Adapter;
use self::fapm::{LearnableUpsampleBlock, FAPM};
use self::ops::PlanOps;
use crate::error::{Error, Result};

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
        Ok((1..=4).map(|k| k * depth / 4 - 1).collect())
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
        ops: &PlanOps,
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;
    use meddino_backbone::Config;

    fn tiny_adapter() -> AdapterConfig {
        AdapterConfig {
            interaction_indexes: vec![0, 1, 2, 3],
            conv_inplane: 8,
            deform_num_heads: 4,
            ..AdapterConfig::default()
        }
    }

    #[test]
    fn dino_unet_encoder_skips_have_decoder_shapes() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let backbone = DinoVisionTransformer::new(&Config::vit_micro(), vb.pp(BACKBONE_PREFIX.trim_end_matches('.')))
            .expect("vit");
        let ops = PlanOps {
            conv_bias: true,
            nonlin: ops::Nonlin::LeakyRelu(0.01),
            instance: true,
        };
        let encoder =
            DINOv3EncoderAdapter::new(backbone, &tiny_adapter(), 16, &[8, 16, 32, 64], &ops, vb.pp("encoder"))
                .expect("encoder");
        let xs = Tensor::randn(0f32, 1.0, (2, 1, 64, 64), &Device::Cpu).expect("xs");
        let rng = StochasticRng::default();
        let skips = encoder
            .forward_t(&to_rgb(&xs).expect("rgb"), true, Some(&rng))
            .expect("forward");
        let dims: Vec<Vec<usize>> = skips.iter().map(|s| s.dims().to_vec()).collect();
        assert_eq!(
            dims,
            [[2, 8, 64, 64], [2, 16, 32, 32], [2, 32, 16, 16], [2, 64, 8, 8]].map(|d| d.to_vec())
        );
        let names: Vec<String> = varmap.data().lock().expect("vm").keys().cloned().collect();
        for name in [
            "encoder.dinov3_adapter.backbone.blocks.0.attn.qkv.weight",
            "encoder.dinov3_adapter.spm.stem.0.weight",
            "encoder.dinov3_adapter.interactions.3.extra_extractors.1.attn.value_proj.weight",
            "encoder.fapm.refinement_blocks.3.5.fc.2.weight",
            "encoder.ups.0.up2.weight",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} missing from {names:?}");
        }
    }
}
