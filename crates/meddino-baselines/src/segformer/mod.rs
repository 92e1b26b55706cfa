//! SegFormer with a Mix Transformer (MiT) encoder and the all-MLP decoder, as MedDINOv3's
//! `segformerTrainer` builds it (`nnunetv2/training/nnUNetTrainer/segformerTrainer.py`,
//! `SegFormer(model_name='B2', …)` followed by `init_weights()` without a checkpoint), after
//! Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with
//! Transformers" (<https://arxiv.org/abs/2105.15203>). Upstream:
//! <https://github.com/ricklisz/MedDINOv3>.
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

mod config;
mod mit;

use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, VarBuilder};
use meddino_backbone::stochastic::StochasticRng;
use meddino_decoder::SegmentationNetwork;

use crate::error::{Error, Result};
use crate::layers::{
    conv2d, dropout2d, from_tokens, is_batch_norm_buffer, resize_bilinear, to_three_channels, to_tokens, BatchNorm2d,
    ConvSpec, Linear, PixelConvTranspose2d, WeightInit,
};

pub use self::config::SegFormerConfig;
use self::mit::MiT;

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
