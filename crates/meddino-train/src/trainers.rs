//! Trainers by their nnU-Net names (`-tr`): which network, which backbone and weights,
//! which optimiser and schedule (MedDINOv3, <https://github.com/ricklisz/MedDINOv3>). The registry is
//! open: the baselines add their trainers with [`TrainerRegistry::register`].

use candle_nn::VarBuilder;
use meddino_backbone::checkpoint::ENCODER_PREFIX;
use meddino_backbone::{Config, RopeDtype};
use meddino_baselines::dino_unet::{DinoUNet, DinoUNetConfig, BACKBONE_PREFIX};
use meddino_baselines::segformer::{SegFormer, SegFormerConfig};
use meddino_baselines::unet::{PlainConvUNet, PlainConvUNetConfig};
use meddino_decoder::{quarter_blocks, Primus, SegmentationNetwork};

use crate::error::{Error, Result};
use crate::optim::{GroupedAdamW, NamedVars, NesterovSgd, Optimizer};
use crate::schedule::Schedule;

/// How a trainer optimises.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerSpec {
    /// AdamW with a decoder group and a ViT (`dino_encoder.*`) group.
    AdamW {
        /// Learning rate of everything but the encoder.
        decoder_lr: f64,
        /// Learning rate of the encoder.
        encoder_lr: f64,
        /// Weight decay of both groups.
        weight_decay: f64,
        /// `(β1, β2)`.
        betas: (f64, f64),
    },
    /// nnU-Net's SGD with Nesterov momentum.
    Sgd {
        /// Learning rate.
        lr: f64,
        /// Momentum.
        momentum: f64,
        /// L2 weight decay.
        weight_decay: f64,
    },
}

impl OptimizerSpec {
    /// The optimiser over `vars`; AdamW puts `dino_encoder.*` in the encoder group.
    pub fn build(self, vars: &NamedVars) -> Box<dyn Optimizer> {
        match self {
            OptimizerSpec::AdamW {
                decoder_lr,
                encoder_lr,
                weight_decay,
                betas,
            } => {
                let (encoder, decoder): (NamedVars, NamedVars) = vars
                    .iter()
                    .cloned()
                    .partition(|(name, _)| name.starts_with(ENCODER_PREFIX));
                Box::new(GroupedAdamW::new(
                    vec![
                        ("decoder".into(), decoder, decoder_lr),
                        ("encoder".into(), encoder, encoder_lr),
                    ],
                    betas.0,
                    betas.1,
                    weight_decay,
                ))
            }
            OptimizerSpec::Sgd {
                lr,
                momentum,
                weight_decay,
            } => Box::new(NesterovSgd::new(vars.clone(), lr, momentum, weight_decay)),
        }
    }
}

/// Whether a trainer starts from pretrained backbone weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PretrainedWeights {
    /// `--pretrained` is required. `strict`: every tensor must match (MedDINOv3's teacher
    /// checkpoint); otherwise tensors the backbone does not have are skipped, as PyTorch's
    /// `strict=False` does for the DINOv3 trainers.
    Required {
        /// Strict loading.
        strict: bool,
    },
    /// Random initialisation; `--pretrained` is refused.
    Scratch,
}

/// The ViT of a trainer.
#[derive(Debug, Clone, Copy)]
pub struct BackboneSpec {
    /// The size preset used unless `--backbone` names another.
    pub preset: &'static str,
    /// The trainer's construction arguments, applied to the preset's size.
    pub construct: fn(Config) -> Config,
    /// Weights.
    pub weights: PretrainedWeights,
    /// Where the ViT's variables live in the network's state dict (`dino_encoder.` for the
    /// Primus networks); pretrained weights are copied there.
    pub prefix: &'static str,
}

impl BackboneSpec {
    /// The backbone configuration for `preset` (the trainer's own when `None`): the preset's
    /// size (width, depth, heads, FFN, patch size) with the trainer's construction arguments.
    ///
    /// # Errors
    ///
    /// When the preset is unknown.
    pub fn config(&self, preset: Option<&str>) -> Result<Config> {
        let size =
            Config::preset(preset.unwrap_or(self.preset)).map_err(|e| Error::Setup(format!("--backbone: {e}")))?;
        Ok((self.construct)(Config {
            embed_dim: size.embed_dim,
            depth: size.depth,
            num_heads: size.num_heads,
            ffn_ratio: size.ffn_ratio,
            ffn_layer: size.ffn_layer,
            patch_size: size.patch_size,
            ..Config::default()
        }))
    }
}

/// What a network is built for.
#[derive(Debug, Clone)]
pub struct NetworkRequest {
    /// The backbone configuration, for trainers with a ViT.
    pub backbone: Option<Config>,
    /// Output classes, background included.
    pub num_classes: usize,
    /// Input channels of the data set.
    pub input_channels: usize,
    /// The plans configuration (patch size, architecture entry for the nnU-Net baselines).
    pub configuration: serde_json::Map<String, serde_json::Value>,
}

/// Builds a trainer's network with its parameters under `vb`.
pub type BuildNetwork = fn(&NetworkRequest, VarBuilder) -> Result<Box<dyn SegmentationNetwork>>;

/// One trainer.
#[derive(Debug, Clone)]
pub struct TrainerSpec {
    /// The nnU-Net trainer name (`-tr`).
    pub name: &'static str,
    /// One line for `--help` and logs.
    pub summary: &'static str,
    /// The ViT, for trainers that have one.
    pub backbone: Option<BackboneSpec>,
    /// The network.
    pub build: BuildNetwork,
    /// The optimiser.
    pub optimizer: OptimizerSpec,
    /// The per-epoch learning-rate schedule.
    pub schedule: Schedule,
    /// Whether the loss is nnU-Net's deep-supervision sum over the network's
    /// [`SegmentationNetwork::forward_deep_supervision`] outputs.
    pub deep_supervision: bool,
}

fn primus_request(request: &NetworkRequest) -> Result<&Config> {
    if request.input_channels != 1 {
        return Err(Error::Setup(format!(
            "Primus networks take one input channel; the data set has {}",
            request.input_channels
        )));
    }
    request
        .backbone
        .as_ref()
        .ok_or_else(|| Error::Setup("Primus needs a backbone configuration".into()))
}

fn build_primus(request: &NetworkRequest, vb: VarBuilder) -> Result<Box<dyn SegmentationNetwork>> {
    let cfg = primus_request(request)?;
    Ok(Box::new(
        Primus::new(cfg, request.num_classes, vb).map_err(decoder_error)?,
    ))
}

fn build_primus_multiscale(request: &NetworkRequest, vb: VarBuilder) -> Result<Box<dyn SegmentationNetwork>> {
    let cfg = primus_request(request)?;
    let blocks = quarter_blocks(cfg.depth);
    Ok(Box::new(
        Primus::multiscale(cfg, request.num_classes, &blocks, vb).map_err(decoder_error)?,
    ))
}

/// The plans configuration's `architecture.arch_kwargs`, for networks built from them;
/// `network_class_name` must name `expected`.
fn arch_kwargs<'a>(request: &'a NetworkRequest, expected: &str) -> Result<&'a serde_json::Value> {
    let architecture = request
        .configuration
        .get("architecture")
        .ok_or_else(|| Error::Setup("the plans configuration has no `architecture` entry".into()))?;
    let class = architecture["network_class_name"].as_str().unwrap_or_default();
    if !class.ends_with(expected) {
        return Err(Error::Setup(format!(
            "architecture.network_class_name is {class:?}; this trainer builds {expected}"
        )));
    }
    architecture
        .get("arch_kwargs")
        .ok_or_else(|| Error::Setup("the plans configuration has no `architecture.arch_kwargs`".into()))
}

/// nnU-Net's default network: the plans' PlainConvUNet, deep supervision on.
fn build_plain_conv_unet(request: &NetworkRequest, vb: VarBuilder) -> Result<Box<dyn SegmentationNetwork>> {
    let kwargs = arch_kwargs(request, "PlainConvUNet")?;
    let cfg = PlainConvUNetConfig::from_arch_kwargs(kwargs, request.input_channels, request.num_classes)
        .map_err(decoder_error)?;
    Ok(Box::new(PlainConvUNet::new(&cfg, vb).map_err(decoder_error)?))
}

/// `dinoUNetTrainer`'s Dino U-Net: the frozen ViT with the ViT-Adapter, FAPM and a U-Net
/// decoder from the plans.
fn build_dino_unet(request: &NetworkRequest, vb: VarBuilder) -> Result<Box<dyn SegmentationNetwork>> {
    let backbone = request
        .backbone
        .clone()
        .ok_or_else(|| Error::Setup("the Dino U-Net needs a backbone configuration".into()))?;
    let kwargs = arch_kwargs(request, "PlainConvUNet")?;
    let cfg = DinoUNetConfig::from_arch_kwargs(backbone, kwargs, request.input_channels, request.num_classes)
        .map_err(decoder_error)?;
    Ok(Box::new(DinoUNet::new(&cfg, vb).map_err(decoder_error)?))
}

/// `segformerTrainer`'s SegFormer MiT-B2, from scratch.
fn build_segformer(request: &NetworkRequest, vb: VarBuilder) -> Result<Box<dyn SegmentationNetwork>> {
    let cfg = SegFormerConfig::mit_b2(request.num_classes);
    Ok(Box::new(
        SegFormer::new(&cfg, request.input_channels, vb).map_err(decoder_error)?,
    ))
}

fn decoder_error(error: meddino_decoder::Error) -> Error {
    Error::Setup(format!("cannot build the network: {error}"))
}

/// MedDINOv3's backbone arguments: `vit_base(drop_path_rate=0.2, layerscale_init=1e-5,
/// n_storage_tokens=4, qkv_bias=False, mask_k_bias=True)`.
fn meddinov3_construct(size: Config) -> Config {
    Config {
        drop_path_rate: 0.2,
        layerscale_init: Some(1e-5),
        n_storage_tokens: 4,
        qkv_bias: false,
        mask_k_bias: true,
        ..size
    }
}

/// The demo's ViT: MedDINOv3's construction (storage tokens, masked k-bias) without what
/// suits fine-tuning a pretrained ViT-B but slows a 4-block ViT trained from scratch for
/// minutes: stochastic depth (0.2) and layer scale starting at 1e-5, which keeps each block
/// near the identity for its first epochs. RoPE in f32 rather than MedDINOv3's bf16
/// emulation: 17 % more steps per second on the CPU. On a 2-core Xeon, 5-minute demos:
/// class-wise mean Dice 0.790 with MedDINOv3's construction and AdamW 1e-3, 0.864 with this
/// one, 0.871 with this one and 2e-3 (docs/benchmarks.md).
fn phantom_demo_construct(size: Config) -> Config {
    Config {
        drop_path_rate: 0.0,
        layerscale_init: None,
        pos_embed_rope_dtype: RopeDtype::Fp32,
        ..meddinov3_construct(size)
    }
}

/// The DINOv3 trainers' `vit_base(drop_path_rate=0.2, layerscale_init=1e-5)`, otherwise the
/// constructor's defaults (no registers, qkv bias, no k-mask).
fn dinov3_construct(size: Config) -> Config {
    Config {
        drop_path_rate: 0.2,
        layerscale_init: Some(1e-5),
        ..size
    }
}

const MEDDINOV3_ADAMW: OptimizerSpec = OptimizerSpec::AdamW {
    decoder_lr: 3e-4,
    encoder_lr: 3e-5,
    weight_decay: 0.05,
    betas: (0.9, 0.98),
};

const fn dinov3_adamw(encoder_lr: f64) -> OptimizerSpec {
    OptimizerSpec::AdamW {
        decoder_lr: 3e-4,
        encoder_lr,
        weight_decay: 0.05,
        betas: (0.9, 0.98),
    }
}

/// nnU-Net's `PolyLRScheduler`: `(1 − epoch / epochs)^0.9`, per epoch.
const NNUNET_POLY: Schedule = Schedule::Poly { exponent: 0.9 };

/// nnU-Net's SGD: lr 1e-2, Nesterov momentum 0.99, weight decay 3e-5.
const NNUNET_SGD: OptimizerSpec = OptimizerSpec::Sgd {
    lr: 1e-2,
    momentum: 0.99,
    weight_decay: 3e-5,
};

/// The trainers known by name.
#[derive(Debug, Clone)]
pub struct TrainerRegistry {
    specs: Vec<TrainerSpec>,
}

impl Default for TrainerRegistry {
    fn default() -> Self {
        Self::builtin()
    }
}

impl TrainerRegistry {
    /// The MedDINOv3 and DINOv3 Primus trainers and the baselines.
    pub fn builtin() -> Self {
        let dinov3 = |weights| BackboneSpec {
            preset: "vit_base",
            construct: dinov3_construct,
            weights,
            prefix: ENCODER_PREFIX,
        };
        Self {
            specs: vec![
                TrainerSpec {
                    name: "meddinov3_base_primus_multiscale_Trainer",
                    summary: "MedDINOv3 ViT-B/16 (teacher weights, strict) + Primus_Multiscale on blocks 2,5,8,11; \
                              AdamW 3e-4 / ViT 3e-5",
                    backbone: Some(BackboneSpec {
                        preset: "vit_base",
                        construct: meddinov3_construct,
                        weights: PretrainedWeights::Required { strict: true },
                        prefix: ENCODER_PREFIX,
                    }),
                    build: build_primus_multiscale,
                    optimizer: MEDDINOV3_ADAMW,
                    schedule: Schedule::Linear,
                    deep_supervision: false,
                },
                TrainerSpec {
                    name: "dinov3_base_primus_multiscale_Trainer",
                    summary:
                        "DINOv3 ViT-B/16 (official weights, strict=False) + Primus_Multiscale; AdamW 3e-4 / ViT 1e-4",
                    backbone: Some(dinov3(PretrainedWeights::Required { strict: false })),
                    build: build_primus_multiscale,
                    optimizer: dinov3_adamw(1e-4),
                    schedule: Schedule::Linear,
                    deep_supervision: false,
                },
                TrainerSpec {
                    name: "dinov3_base_primus_Trainer",
                    summary: "DINOv3 ViT-B/16 (official weights, strict=False) + Primus; AdamW 3e-4 / ViT 1e-4",
                    backbone: Some(dinov3(PretrainedWeights::Required { strict: false })),
                    build: build_primus,
                    optimizer: dinov3_adamw(1e-4),
                    schedule: Schedule::Linear,
                    deep_supervision: false,
                },
                TrainerSpec {
                    name: "dinov3_base_primus_Trainer_scratch",
                    summary: "ViT-B/16 from random initialisation + Primus; AdamW 3e-4 for all",
                    backbone: Some(dinov3(PretrainedWeights::Scratch)),
                    build: build_primus,
                    optimizer: dinov3_adamw(3e-4),
                    schedule: Schedule::Linear,
                    deep_supervision: false,
                },
                TrainerSpec {
                    name: "phantom_demo_Trainer",
                    summary: "ours, for `meddino demo`: Primus_Multiscale on a randomly initialised vit_micro \
                              (MedDINOv3's construction without stochastic depth or layer scale, RoPE in f32), \
                              AdamW 2e-3 for all",
                    backbone: Some(BackboneSpec {
                        preset: "vit_micro",
                        construct: phantom_demo_construct,
                        weights: PretrainedWeights::Scratch,
                        prefix: ENCODER_PREFIX,
                    }),
                    build: build_primus_multiscale,
                    optimizer: OptimizerSpec::AdamW {
                        decoder_lr: 2e-3,
                        encoder_lr: 2e-3,
                        weight_decay: 0.05,
                        betas: (0.9, 0.98),
                    },
                    schedule: Schedule::Linear,
                    deep_supervision: false,
                },
                TrainerSpec {
                    name: "nnUNetTrainer",
                    summary: "nnU-Net's default: the plans' PlainConvUNet with deep supervision; SGD 1e-2 (Nesterov \
                              0.99), poly schedule",
                    backbone: None,
                    build: build_plain_conv_unet,
                    optimizer: NNUNET_SGD,
                    schedule: NNUNET_POLY,
                    deep_supervision: true,
                },
                TrainerSpec {
                    name: "segformerTrainer",
                    summary: "SegFormer MiT-B2 from scratch (input repeated to 3 channels); AdamW 2e-5, poly schedule",
                    backbone: None,
                    build: build_segformer,
                    optimizer: OptimizerSpec::AdamW {
                        decoder_lr: 2e-5,
                        encoder_lr: 2e-5,
                        weight_decay: 0.05,
                        betas: (0.9, 0.98),
                    },
                    schedule: NNUNET_POLY,
                    deep_supervision: false,
                },
                TrainerSpec {
                    name: "dinoUNetTrainer",
                    summary: "Dino U-Net: frozen DINOv3 ViT-B/16 (hub weights, strict) + ViT-Adapter, FAPM and the \
                              plans' U-Net decoder; SGD 1e-3 (Nesterov 0.99), poly schedule",
                    backbone: Some(BackboneSpec {
                        preset: "vit_base",
                        construct: Config::with_hub_settings,
                        weights: PretrainedWeights::Required { strict: true },
                        prefix: BACKBONE_PREFIX,
                    }),
                    build: build_dino_unet,
                    optimizer: OptimizerSpec::Sgd {
                        lr: 1e-3,
                        momentum: 0.99,
                        weight_decay: 3e-5,
                    },
                    schedule: NNUNET_POLY,
                    deep_supervision: false,
                },
            ],
        }
    }

    /// Adds (or replaces) a trainer.
    pub fn register(&mut self, spec: TrainerSpec) {
        self.specs.retain(|s| s.name != spec.name);
        self.specs.push(spec);
    }

    /// The trainer called `name`.
    ///
    /// # Errors
    ///
    /// When no trainer has that name; the message lists those that exist.
    pub fn get(&self, name: &str) -> Result<&TrainerSpec> {
        self.specs.iter().find(|s| s.name == name).ok_or_else(|| {
            Error::Setup(format!(
                "unknown trainer {name:?}; known trainers: {}",
                self.names().join(", ")
            ))
        })
    }

    /// All trainer names, in registration order.
    pub fn names(&self) -> Vec<&'static str> {
        self.specs.iter().map(|s| s.name).collect()
    }

    /// All trainers.
    pub fn specs(&self) -> &[TrainerSpec] {
        &self.specs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backbone_override_keeps_the_trainers_arguments() {
        let registry = TrainerRegistry::builtin();
        let meddino = registry.get("meddinov3_base_primus_multiscale_Trainer").expect("known");
        let spec = meddino.backbone.expect("has a ViT");
        assert_eq!(spec.config(None).expect("base"), Config::meddinov3_vitb16());
        let small = spec.config(Some("vit_micro")).expect("micro");
        assert_eq!((small.embed_dim, small.depth, small.n_storage_tokens), (64, 4, 4));
        assert!(small.mask_k_bias && !small.qkv_bias);
        let error = spec.config(Some("vit_enormous")).expect_err("unknown").to_string();
        assert!(error.contains("vit_enormous") && error.contains("vit_micro"), "{error}");
        let error = registry.get("nope").expect_err("unknown").to_string();
        assert!(error.contains("dinov3_base_primus_Trainer_scratch"), "{error}");
    }
}
