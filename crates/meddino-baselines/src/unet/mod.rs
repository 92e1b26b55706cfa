//! nnU-Net's default network, `PlainConvUNet` from dynamic-network-architectures 0.4.x
//! (<https://github.com/MIC-DKFZ/dynamic-network-architectures>, `architectures/unet.py`,
//! `building_blocks/{plain_conv_encoder,unet_decoder,simple_conv_blocks}.py`), built from the
//! `arch_kwargs` of an nnU-Net plans configuration (nnU-Net v2, <https://github.com/MIC-DKFZ/nnUNet>).
//!
//! - Encoder: per stage, `n_conv_per_stage[s]` × [conv k×k, padding (k−1)/2 → norm →
//!   nonlinearity]; the first conv of stage `s` has stride `strides[s]` (no pooling layer).
//! - Decoder ([`UNetDecoder`], also usable behind other encoders): from the bottleneck up, a
//!   transposed conv with kernel = stride, concatenation **[upsampled, skip]**, a
//!   [`StackedConvBlocks`] from 2F to F, and a 1×1 segmentation conv per stage. Outputs come
//!   highest resolution first, one per decoder stage (deep supervision, §6.2).
//! - Initialisation as nnU-Net's `InitWeights_He(1e-2)`: He normal on every conv and
//!   transposed conv, biases zero.
//!
//! Tensors are NCHW. State-dict names are PyTorch's; each tensor is created once under its
//! canonical name (`encoder.stages.S.0.convs.N.conv.weight`, `decoder.stages.S.convs.N.norm.bias`,
//! `decoder.transpconvs.S.weight`, `decoder.seg_layers.S.bias`) and the second names PyTorch
//! also registers (`…convs.N.all_modules.{0,1}.*`, `decoder.encoder.*`) are reported by
//! [`SegmentationNetwork::state_dict_aliases`]. Decoder stage `S` counts from the bottleneck
//! (stage 0 upsamples the deepest features), as upstream.
//!
//! Deliberate limits, each refused with an error naming the `arch_kwargs` key: 2-D only
//! (`conv_op` Conv2d), square kernels and strides, no dropout (`dropout_op` null, as every
//! nnU-Net plan), norms with affine parameters only, `conv_bias` true (the transposed
//! convolutions, [`PixelConvTranspose2d`](crate::layers::PixelConvTranspose2d), always carry a
//! bias), and `nonlin_first` false.

mod blocks;
mod config;
mod decoder;
mod ops;

use candle_core::Tensor;
use candle_nn::VarBuilder;
use meddino_decoder::SegmentationNetwork;

use crate::error::{Error, Result};
use crate::layers::is_batch_norm_buffer;

pub use self::blocks::StackedConvBlocks;
pub use self::config::PlainConvUNetConfig;
pub use self::decoder::{UNetDecoder, UNetDecoderConfig};
pub use self::ops::{ConvOps, Nonlin, NormOp, NNUNET_INIT};

/// nnU-Net's `PlainConvUNet` with deep supervision: a conv encoder (`encoder.stages.S.0`)
/// and a [`UNetDecoder`] (`decoder`).
///
/// ```
/// use meddino_baselines::unet::{ConvOps, PlainConvUNet, PlainConvUNetConfig};
/// use meddino_baselines::candle::{DType, Device, Tensor};
/// use meddino_baselines::SegmentationNetwork;
/// use candle_nn::{VarBuilder, VarMap};
///
/// let cfg = PlainConvUNetConfig {
///     input_channels: 1,
///     n_stages: 3,
///     features_per_stage: vec![4, 8, 16],
///     kernel_sizes: vec![3; 3],
///     strides: vec![1, 2, 2],
///     n_conv_per_stage: vec![2; 3],
///     n_conv_per_stage_decoder: vec![2; 2],
///     ops: ConvOps::default(),
///     num_classes: 3,
/// };
/// let varmap = VarMap::new();
/// let network = PlainConvUNet::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
/// let logits = network.forward(&Tensor::zeros((1, 1, 16, 16), DType::F32, &Device::Cpu)?)?;
/// assert_eq!(logits.dims(), [1, 3, 16, 16]);
/// # Ok::<(), meddino_baselines::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct PlainConvUNet {
    encoder: Vec<StackedConvBlocks>,
    decoder: UNetDecoder,
    cfg: PlainConvUNetConfig,
}

impl PlainConvUNet {
    /// Reads or creates the network's tensors in `vb`, He-normal initialised with zero
    /// biases (nnU-Net's `InitWeights_He(1e-2)`).
    ///
    /// # Errors
    ///
    /// As [`PlainConvUNetConfig::validate`]; a candle error when a tensor is missing or
    /// mis-shaped in `vb`.
    pub fn new(cfg: &PlainConvUNetConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let stages = vb.pp("encoder").pp("stages");
        let mut in_channels = cfg.input_channels;
        let mut encoder = Vec::with_capacity(cfg.n_stages);
        for s in 0..cfg.n_stages {
            let out_channels = cfg.features_per_stage[s];
            encoder.push(StackedConvBlocks::new(
                cfg.n_conv_per_stage[s],
                in_channels,
                out_channels,
                cfg.kernel_sizes[s],
                cfg.strides[s],
                &cfg.ops,
                stages.pp(s).pp(0),
            )?);
            in_channels = out_channels;
        }
        let decoder = UNetDecoder::new(&cfg.decoder(), vb.pp("decoder"))?;
        Ok(Self {
            encoder,
            decoder,
            cfg: cfg.clone(),
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &PlainConvUNetConfig {
        &self.cfg
    }

    /// The decoder.
    pub fn decoder(&self) -> &UNetDecoder {
        &self.decoder
    }

    /// Every encoder stage's output, highest resolution first (the skips of the decoder).
    ///
    /// # Errors
    ///
    /// [`Error::Input`] naming the shape when `xs` is not `[B, input_channels, H, W]` with
    /// H and W non-zero multiples of [`SegmentationNetwork::input_multiple`].
    pub fn encode(&self, xs: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        self.check_input(xs)?;
        let mut skips: Vec<Tensor> = Vec::with_capacity(self.encoder.len());
        let mut current = xs.clone();
        for stage in &self.encoder {
            current = stage.forward_t(&current, train)?;
            skips.push(current.clone());
        }
        Ok(skips)
    }

    fn check_input(&self, xs: &Tensor) -> Result<()> {
        let dims = xs.dims();
        let c_in = self.cfg.input_channels;
        let &[_, c, h, w] = dims else {
            return Err(Error::Input(format!(
                "PlainConvUNet expects input [B, {c_in}, H, W], got {dims:?}"
            )));
        };
        if c != c_in {
            return Err(Error::Input(format!(
                "PlainConvUNet expects {c_in} input channels, got input {dims:?}"
            )));
        }
        let m = self.cfg.input_multiple();
        if h == 0 || w == 0 || h % m != 0 || w % m != 0 {
            return Err(Error::Input(format!(
                "PlainConvUNet needs H and W to be non-zero multiples of {m}, got input {dims:?}"
            )));
        }
        Ok(())
    }
}

impl SegmentationNetwork for PlainConvUNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let skips = self.encode(xs, train)?;
        self.decoder.forward_highest(&skips, train)
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }

    fn input_channels(&self) -> usize {
        self.cfg.input_channels
    }

    fn input_multiple(&self) -> usize {
        self.cfg.input_multiple()
    }

    /// All `n_stages − 1` decoder outputs in training mode, highest resolution first.
    fn forward_deep_supervision(&self, xs: &Tensor) -> Result<Vec<Tensor>> {
        let skips = self.encode(xs, true)?;
        self.decoder.forward(&skips, true)
    }

    fn is_trainable(&self, name: &str) -> bool {
        !is_batch_norm_buffer(name)
    }

    fn state_dict_aliases(&self) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        for (s, stage) in self.encoder.iter().enumerate() {
            let prefix = format!("encoder.stages.{s}.0");
            let aliases = stage.state_dict_aliases(&prefix);
            // The decoder keeps a reference to the encoder, so PyTorch lists every encoder
            // tensor, under both of its names, again below `decoder.encoder`.
            for name in stage.tensor_names(&prefix) {
                pairs.push((format!("decoder.{name}"), name));
            }
            for (alias, name) in &aliases {
                pairs.push((format!("decoder.{alias}"), name.clone()));
            }
            pairs.extend(aliases);
        }
        pairs.extend(self.decoder.state_dict_aliases("decoder"));
        pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, D};
    use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
    use candle_nn::VarMap;
    use meddino_testutil::assert_gradients_reach;
    use serde_json::json;
    use serde_json::Value;

    fn tiny(ops: ConvOps) -> PlainConvUNetConfig {
        PlainConvUNetConfig {
            input_channels: 1,
            n_stages: 3,
            features_per_stage: vec![4, 8, 16],
            kernel_sizes: vec![3; 3],
            strides: vec![1, 2, 2],
            n_conv_per_stage: vec![2; 3],
            n_conv_per_stage_decoder: vec![2; 2],
            ops,
            num_classes: 3,
        }
    }

    /// The phantom's 2d `arch_kwargs` (`shared/reference/nnunet/expected/nnUNetPlans.json`)
    /// shrunk to three stages.
    fn tiny_kwargs() -> Value {
        json!({
            "n_stages": 3,
            "features_per_stage": [4, 8, 16],
            "conv_op": "torch.nn.modules.conv.Conv2d",
            "kernel_sizes": [[3, 3], [3, 3], [3, 3]],
            "strides": [[1, 1], [2, 2], [2, 2]],
            "n_conv_per_stage": [2, 2, 2],
            "n_conv_per_stage_decoder": [2, 2],
            "conv_bias": true,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": true},
            "dropout_op": null,
            "dropout_op_kwargs": null,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": true}
        })
    }

    fn build(cfg: &PlainConvUNetConfig) -> (VarMap, PlainConvUNet) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let network = PlainConvUNet::new(cfg, vb).expect("build");
        (varmap, network)
    }

    fn config_error(kwargs: &Value) -> String {
        match PlainConvUNetConfig::from_arch_kwargs(kwargs, 1, 3) {
            Err(Error::Config(message)) => message,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    fn with(key: &str, value: Value) -> Value {
        let mut kwargs = tiny_kwargs();
        kwargs[key] = value;
        kwargs
    }

    #[test]
    fn arch_kwargs_parse_to_the_tiny_config() {
        let cfg = PlainConvUNetConfig::from_arch_kwargs(&tiny_kwargs(), 1, 3).expect("parse");
        assert_eq!(cfg, tiny(ConvOps::default()));
        // Scalars stand for every stage, as upstream.
        let mut kwargs = with("kernel_sizes", json!(3));
        kwargs["n_conv_per_stage"] = json!(2);
        assert_eq!(
            PlainConvUNetConfig::from_arch_kwargs(&kwargs, 1, 3).expect("parse"),
            tiny(ConvOps::default())
        );
        let leaky = with("nonlin_kwargs", json!({"inplace": true, "negative_slope": 0.2}));
        assert_eq!(
            ConvOps::from_arch_kwargs(&leaky).expect("parse").nonlin,
            Some(Nonlin::LeakyReLU { negative_slope: 0.2 })
        );
        let mut relu = with("nonlin", json!("torch.nn.ReLU"));
        relu["nonlin_kwargs"] = json!({"inplace": false});
        assert_eq!(
            ConvOps::from_arch_kwargs(&relu).expect("parse").nonlin,
            Some(Nonlin::ReLU)
        );
        let mut batch = with("norm_op", json!("torch.nn.modules.batchnorm.BatchNorm2d"));
        batch["norm_op_kwargs"] = json!({"eps": 1e-3});
        assert_eq!(
            ConvOps::from_arch_kwargs(&batch).expect("parse").norm,
            Some(NormOp::BatchNorm2d { eps: 1e-3 })
        );
    }

    #[test]
    fn config_errors_name_the_key_and_the_expectation() {
        let message = config_error(&with("conv_op", json!("torch.nn.modules.conv.Conv3d")));
        assert!(
            message.contains("arch_kwargs.conv_op") && message.contains("Conv3d"),
            "{message}"
        );
        assert!(message.contains("torch.nn.modules.conv.Conv2d"), "{message}");
        let message = config_error(&with("features_per_stage", json!([4, 8])));
        assert!(
            message.contains("arch_kwargs.features_per_stage") && message.contains("n_stages = 3"),
            "{message}"
        );
        let message = config_error(&with("n_conv_per_stage_decoder", json!([2, 2, 2])));
        assert!(message.contains("n_conv_per_stage_decoder"), "{message}");
        let message = config_error(&with("dropout_op", json!("torch.nn.modules.dropout.Dropout2d")));
        assert!(
            message.contains("arch_kwargs.dropout_op") && message.contains("null"),
            "{message}"
        );
        let message = config_error(&with("norm_op", json!("torch.nn.GroupNorm")));
        assert!(
            message.contains("arch_kwargs.norm_op") && message.contains("GroupNorm"),
            "{message}"
        );
        let message = config_error(&with("nonlin", json!("torch.nn.GELU")));
        assert!(
            message.contains("arch_kwargs.nonlin") && message.contains("GELU"),
            "{message}"
        );
        let message = config_error(&with("strides", json!([[1, 1], [2, 1], [2, 2]])));
        assert!(
            message.contains("arch_kwargs.strides[1]") && message.contains("square"),
            "{message}"
        );
        let message = config_error(&with("kernel_sizes", json!([[3, 3, 3], [3, 3], [3, 3]])));
        assert!(message.contains("arch_kwargs.kernel_sizes[0]"), "{message}");
        let message = config_error(&with("norm_op_kwargs", json!({"eps": 1e-5})));
        assert!(message.contains("arch_kwargs.norm_op_kwargs.affine"), "{message}");
        let message = config_error(&with("conv_bias", json!(false)));
        assert!(message.contains("conv_bias"), "{message}");
        let message = config_error(&with("block", json!("BasicBlockD")));
        assert!(message.contains("arch_kwargs.block"), "{message}");
        let message = config_error(&with("n_stages", json!(0)));
        assert!(message.contains("arch_kwargs.n_stages"), "{message}");
        let mut missing = tiny_kwargs();
        missing.as_object_mut().expect("object").remove("strides");
        let message = config_error(&missing);
        assert!(message.contains("arch_kwargs.strides is missing"), "{message}");
    }

    #[test]
    fn forward_and_deep_supervision_shapes() {
        let (_, network) = build(&tiny(ConvOps::default()));
        assert_eq!(network.input_multiple(), 4);
        assert_eq!((network.input_channels(), network.num_classes()), (1, 3));
        let xs = Tensor::randn(0f32, 1.0, (2, 1, 16, 24), &Device::Cpu).expect("input");
        let logits = network.forward(&xs).expect("forward");
        assert_eq!(logits.dims(), [2, 3, 16, 24]);
        let outputs = network.forward_deep_supervision(&xs).expect("deep supervision");
        let shapes: Vec<&[usize]> = outputs.iter().map(|o| o.dims()).collect();
        assert_eq!(shapes, [&[2, 3, 16, 24][..], &[2, 3, 8, 12][..]]);
        // The first deep-supervision output is the training-mode forward.
        let train = network.forward_t(&xs, true).expect("forward");
        let diff: f32 = (&outputs[0] - &train)
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar())
            .expect("diff");
        assert!(diff < 1e-6, "{diff}");
        // The decoder alone, given the encoder's skips.
        let skips = network.encode(&xs, false).expect("encode");
        let all = network.decoder().forward(&skips, false).expect("decode");
        assert_eq!(all.len(), 2);
        assert!(network.decoder().forward(&skips[1..], false).is_err());
    }

    #[test]
    fn bad_inputs_are_refused_with_their_shape() {
        let (_, network) = build(&tiny(ConvOps::default()));
        for shape in [[1usize, 2, 16, 16], [1, 1, 16, 18]] {
            let xs = Tensor::zeros(&shape[..], DType::F32, &Device::Cpu).expect("input");
            match network.forward(&xs) {
                Err(Error::Input(message)) => assert!(message.contains(&format!("{shape:?}")), "{message}"),
                other => panic!("{shape:?}: expected an input error, got {other:?}"),
            }
        }
        let xs = Tensor::zeros((1, 16, 16), DType::F32, &Device::Cpu).expect("input");
        assert!(matches!(network.forward(&xs), Err(Error::Input(_))));
    }

    #[test]
    fn gradients_reach_every_weight() {
        let (varmap, network) = build(&tiny(ConvOps::default()));
        let xs = Tensor::randn(0f32, 1.0, (2, 1, 16, 16), &Device::Cpu).expect("input");
        let outputs = network.forward_deep_supervision(&xs).expect("forward");
        let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu).expect("zero");
        for output in &outputs {
            loss = (loss + output.sqr().and_then(|o| o.mean_all()).expect("mean")).expect("sum");
        }
        let grads = loss.backward().expect("backward");
        let data = varmap.data().lock().expect("varmap");
        assert!(data.contains_key("encoder.stages.0.0.convs.0.conv.weight"));
        // A bias followed by an instance norm is cancelled by its mean subtraction.
        let checked = assert_gradients_reach(data.iter(), &grads, |name| name.ends_with("conv.bias"));
        assert!(checked > 10);
    }

    #[test]
    fn a_few_adamw_steps_reduce_cross_entropy() {
        let (varmap, network) = build(&tiny(ConvOps::default()));
        let (b, h, w) = (2usize, 16usize, 16usize);
        // A smooth image; the class is the intensity band.
        let values: Vec<f32> = (0..b * h * w)
            .map(|i| {
                let (n, y, x) = (i / (h * w), (i / w) % h, i % w);
                ((x as f32 * 0.4 + n as f32).sin() + (y as f32 * 0.3).cos()) * 0.8
            })
            .collect();
        let labels: Vec<u32> = values
            .iter()
            .map(|v| match *v {
                v if v < -0.4 => 0,
                v if v < 0.4 => 1,
                _ => 2,
            })
            .collect();
        let xs = Tensor::from_vec(values, (b, 1, h, w), &Device::Cpu).expect("input");
        let target = Tensor::from_vec(labels, b * h * w, &Device::Cpu).expect("target");
        let params = ParamsAdamW {
            lr: 1e-2,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        };
        let mut optimizer = AdamW::new(varmap.all_vars(), params).expect("optimizer");
        let mut losses = Vec::new();
        for _ in 0..25 {
            let logits = network.forward_t(&xs, true).expect("forward");
            let rows = logits
                .permute((0, 2, 3, 1))
                .and_then(|l| l.reshape(((), network.num_classes())))
                .expect("rows");
            let loss = candle_nn::loss::cross_entropy(&rows, &target).expect("loss");
            losses.push(loss.to_scalar::<f32>().expect("scalar"));
            optimizer.backward_step(&loss).expect("step");
        }
        let (first, last) = (losses[0], losses[losses.len() - 1]);
        assert!(
            last < 0.75 * first,
            "cross entropy went from {first} to {last}: {losses:?}"
        );
    }

    #[test]
    fn batch_norm_statistics_are_recorded_but_not_trained() {
        let ops = ConvOps {
            norm: Some(NormOp::BatchNorm2d { eps: 1e-5 }),
            nonlin: Some(Nonlin::ReLU),
            ..ConvOps::default()
        };
        let (varmap, network) = build(&tiny(ops));
        let name = "encoder.stages.0.0.convs.0.norm.running_mean";
        let before: f32 = varmap.data().lock().expect("varmap")[name]
            .as_tensor()
            .abs()
            .and_then(|t| t.sum_all())
            .and_then(|t| t.to_scalar())
            .expect("sum");
        let xs = Tensor::randn(1f32, 1.0, (2, 1, 8, 8), &Device::Cpu).expect("input");
        let outputs = network.forward_deep_supervision(&xs).expect("forward");
        assert_eq!(outputs.len(), 2);
        let after: f32 = varmap.data().lock().expect("varmap")[name]
            .as_tensor()
            .abs()
            .and_then(|t| t.sum_all())
            .and_then(|t| t.to_scalar())
            .expect("sum");
        assert!(before == 0.0 && after > 0.0, "{before} → {after}");
        assert!(!network.is_trainable(name));
        assert!(network.is_trainable("encoder.stages.0.0.convs.0.norm.weight"));
        let aliases = network.state_dict_aliases();
        assert!(aliases.contains(&(
            "decoder.encoder.stages.0.0.convs.0.all_modules.1.num_batches_tracked".to_string(),
            "encoder.stages.0.0.convs.0.norm.num_batches_tracked".to_string()
        )));
        // Evaluation uses the running statistics and is finite.
        let eval = network.forward(&xs).expect("eval");
        let max: f32 = eval
            .abs()
            .and_then(|t| t.max_keepdim(D::Minus1))
            .and_then(|t| t.max_all())
            .and_then(|t| t.to_scalar())
            .expect("max");
        assert!(max.is_finite());
    }

    #[test]
    fn aliases_point_at_variables_and_cover_pytorch_names() {
        let (varmap, network) = build(&tiny(ConvOps::default()));
        let data = varmap.data().lock().expect("varmap");
        let aliases = network.state_dict_aliases();
        for (alias, name) in &aliases {
            assert!(data.contains_key(name), "{alias} → {name}: no such variable");
            assert!(!data.contains_key(alias), "{alias} is also a variable");
        }
        // Encoder tensors: 3 stages × 2 convs × 4 tensors, named three more times; decoder
        // conv blocks: 2 stages × 2 convs × 4 tensors, named once more.
        assert_eq!(aliases.len(), 3 * 2 * 4 * 3 + 2 * 2 * 4);
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert!(aliases.contains(&pair(
            "decoder.stages.1.convs.0.all_modules.0.weight",
            "decoder.stages.1.convs.0.conv.weight"
        )));
        assert!(aliases.contains(&pair(
            "decoder.encoder.stages.2.0.convs.1.conv.bias",
            "encoder.stages.2.0.convs.1.conv.bias"
        )));
        // Shapes: transposed convs `[in, out, k, k]` and 1×1 segmentation layers.
        assert_eq!(data["decoder.transpconvs.0.weight"].dims(), [16, 8, 2, 2]);
        assert_eq!(data["decoder.seg_layers.1.weight"].dims(), [3, 4, 1, 1]);
        assert_eq!(data["decoder.stages.0.convs.0.conv.weight"].dims(), [8, 16, 3, 3]);
    }
}
