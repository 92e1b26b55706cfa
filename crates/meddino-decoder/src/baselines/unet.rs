//! nnU-Net's default network, `PlainConvUNet` from dynamic-network-architectures 0.4.x
//! (<https://github.com/MIC-DKFZ/dynamic-network-architectures>, `architectures/unet.py`,
//! `building_blocks/{plain_conv_encoder,unet_decoder,simple_conv_blocks}.py`), built from the
//! `arch_kwargs` of an nnU-Net plans configuration (`shared/spec/nnunet-reference.md` §3.6).
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
//! convolutions, [`PixelConvTranspose2d`], always carry a bias), and `nonlin_first` false.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, VarBuilder};
use serde_json::{Map, Value};

use super::layers::{
    conv2d, is_batch_norm_buffer, BatchNorm2d, ConvSpec, InstanceNorm2d, PixelConvTranspose2d, WeightInit,
    BATCH_NORM_BUFFERS,
};
use crate::error::{Error, Result};
use crate::network::SegmentationNetwork;

/// nnU-Net's `InitWeights_He(1e-2)`, applied to every convolution and transposed convolution.
pub const NNUNET_INIT: WeightInit = WeightInit::HeNormal { a: 1e-2 };

/// The class names accepted for each operation: the full module path nnU-Net writes to its
/// plans, and the short `torch.nn` spelling.
const CONV2D: [&str; 2] = ["torch.nn.modules.conv.Conv2d", "torch.nn.Conv2d"];
const INSTANCE_NORM2D: [&str; 2] = [
    "torch.nn.modules.instancenorm.InstanceNorm2d",
    "torch.nn.InstanceNorm2d",
];
const BATCH_NORM2D: [&str; 2] = ["torch.nn.modules.batchnorm.BatchNorm2d", "torch.nn.BatchNorm2d"];
const LEAKY_RELU: [&str; 2] = ["torch.nn.LeakyReLU", "torch.nn.modules.activation.LeakyReLU"];
const RELU: [&str; 2] = ["torch.nn.ReLU", "torch.nn.modules.activation.ReLU"];

/// The `arch_kwargs` keys of a PlainConvUNet that this port reads.
const ARCH_KWARGS: [&str; 16] = [
    "n_stages",
    "features_per_stage",
    "conv_op",
    "kernel_sizes",
    "strides",
    "n_conv_per_stage",
    "n_conv_per_stage_decoder",
    "conv_bias",
    "norm_op",
    "norm_op_kwargs",
    "dropout_op",
    "dropout_op_kwargs",
    "nonlin",
    "nonlin_kwargs",
    "nonlin_first",
    "deep_supervision",
];

/// The normalisation after each convolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NormOp {
    /// `nn.InstanceNorm2d(affine=True)` ([`InstanceNorm2d`]).
    InstanceNorm2d {
        /// Added to the variance.
        eps: f64,
    },
    /// `nn.BatchNorm2d` with running statistics, momentum 0.1 ([`BatchNorm2d`]).
    BatchNorm2d {
        /// Added to the variance.
        eps: f64,
    },
}

impl NormOp {
    /// The state-dict suffixes of this norm's tensors.
    fn params(self) -> Vec<&'static str> {
        let mut params = vec!["weight", "bias"];
        if let NormOp::BatchNorm2d { .. } = self {
            params.extend(BATCH_NORM_BUFFERS);
        }
        params
    }
}

/// The nonlinearity after each norm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Nonlin {
    /// `nn.LeakyReLU(negative_slope)`.
    LeakyReLU {
        /// Slope for negative inputs (PyTorch's default 0.01).
        negative_slope: f64,
    },
    /// `nn.ReLU`.
    ReLU,
}

impl Nonlin {
    /// Applies the nonlinearity elementwise (differentiable).
    ///
    /// # Errors
    ///
    /// On a candle error.
    pub fn forward(self, xs: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Nonlin::ReLU => xs.relu()?,
            // max(x, s·x) is the leaky ReLU for 0 ≤ s ≤ 1, in two ops instead of four.
            Nonlin::LeakyReLU { negative_slope } if (0.0..=1.0).contains(&negative_slope) => {
                xs.maximum(&(xs * negative_slope)?)?
            }
            Nonlin::LeakyReLU { negative_slope } => candle_nn::ops::leaky_relu(xs, negative_slope)?,
        })
    }
}

/// What follows each convolution of a U-Net, and whether convolutions have a bias: the
/// operation part of a plans configuration's `arch_kwargs`. The default is what nnU-Net
/// plans: bias, `InstanceNorm2d(eps=1e-5, affine=True)`, `LeakyReLU(0.01)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvOps {
    /// Whether convolutions (and transposed convolutions) have a bias (`conv_bias`).
    pub conv_bias: bool,
    /// The norm after each convolution (`norm_op`, `norm_op_kwargs`); `None` for none.
    pub norm: Option<NormOp>,
    /// The nonlinearity after each norm (`nonlin`, `nonlin_kwargs`); `None` for none.
    pub nonlin: Option<Nonlin>,
}

impl Default for ConvOps {
    fn default() -> Self {
        Self {
            conv_bias: true,
            norm: Some(NormOp::InstanceNorm2d { eps: 1e-5 }),
            nonlin: Some(Nonlin::LeakyReLU { negative_slope: 1e-2 }),
        }
    }
}

impl ConvOps {
    /// Reads `conv_op`, `conv_bias`, `norm_op(_kwargs)`, `dropout_op`, `nonlin(_kwargs)` and
    /// `nonlin_first` from a plans configuration's `arch_kwargs`. Absent optional keys take
    /// dynamic-network-architectures' defaults (`conv_bias` false, no norm, no nonlinearity,
    /// `InstanceNorm2d` not affine, `LeakyReLU` slope 0.01).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the key and what was expected when `conv_op` is not Conv2d,
    /// `dropout_op` is not null, `nonlin_first` is true, the norm or nonlinearity is unknown,
    /// the norm is not affine, or a keyword argument is unknown or of the wrong type.
    pub fn from_arch_kwargs(kwargs: &Value) -> Result<Self> {
        let object = as_object(kwargs)?;
        match class_name(object, "conv_op")? {
            Some(name) if CONV2D.contains(&name) => {}
            Some(name) => {
                return Err(Error::Config(format!(
                    "arch_kwargs.conv_op: expected {} (2-D networks only), got {name}",
                    CONV2D[0]
                )))
            }
            None => return Err(Error::Config("arch_kwargs.conv_op is missing or null".into())),
        }
        if let Some(name) = class_name(object, "dropout_op")? {
            return Err(Error::Config(format!(
                "arch_kwargs.dropout_op: expected null (dropout is not supported), got {name}"
            )));
        }
        match object.get("nonlin_first") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(other) => {
                return Err(Error::Config(format!(
                    "arch_kwargs.nonlin_first: expected false (norm before nonlinearity), got {other}"
                )))
            }
        }
        let conv_bias = match object.get("conv_bias") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(Error::Config(format!(
                    "arch_kwargs.conv_bias: expected true or false, got {other}"
                )))
            }
        };
        Ok(Self {
            conv_bias,
            norm: parse_norm(object)?,
            nonlin: parse_nonlin(object)?,
        })
    }
}

fn as_object(kwargs: &Value) -> Result<&Map<String, Value>> {
    kwargs
        .as_object()
        .ok_or_else(|| Error::Config(format!("arch_kwargs: expected a JSON object, got {kwargs}")))
}

/// A class-name entry: `None` when absent or null.
fn class_name<'a>(object: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(name)) => Ok(Some(name)),
        Some(other) => Err(Error::Config(format!(
            "arch_kwargs.{key}: expected a class name or null, got {other}"
        ))),
    }
}

/// A keyword-argument dictionary: empty when absent or null.
fn op_kwargs<'a>(object: &'a Map<String, Value>, key: &str) -> Result<Option<&'a Map<String, Value>>> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(Error::Config(format!(
            "arch_kwargs.{key}: expected an object or null, got {other}"
        ))),
    }
}

fn parse_norm(object: &Map<String, Value>) -> Result<Option<NormOp>> {
    let Some(name) = class_name(object, "norm_op")? else {
        return Ok(None);
    };
    let batch = if INSTANCE_NORM2D.contains(&name) {
        false
    } else if BATCH_NORM2D.contains(&name) {
        true
    } else {
        return Err(Error::Config(format!(
            "arch_kwargs.norm_op: expected {} or {} (or null), got {name}",
            INSTANCE_NORM2D[0], BATCH_NORM2D[0]
        )));
    };
    let mut eps = 1e-5;
    // PyTorch's defaults: InstanceNorm2d is not affine, BatchNorm2d is.
    let mut affine = batch;
    for (key, value) in op_kwargs(object, "norm_op_kwargs")?.into_iter().flatten() {
        let bad = |expected: &str| {
            Error::Config(format!(
                "arch_kwargs.norm_op_kwargs.{key}: expected {expected} for {name}, got {value}"
            ))
        };
        match key.as_str() {
            "eps" => {
                eps = value
                    .as_f64()
                    .filter(|e| e.is_finite() && *e > 0.0)
                    .ok_or_else(|| bad("a positive number"))?;
            }
            "affine" => affine = value.as_bool().ok_or_else(|| bad("true or false"))?,
            "momentum" if batch => {
                if value.as_f64() != Some(0.1) {
                    return Err(bad("0.1 (the only momentum BatchNorm2d here supports)"));
                }
            }
            // Without running statistics an instance norm never uses its momentum.
            "momentum" => {
                value.as_f64().ok_or_else(|| bad("a number"))?;
            }
            "track_running_stats" => {
                if value.as_bool() != Some(batch) {
                    return Err(bad(if batch { "true" } else { "false" }));
                }
            }
            _ => {
                return Err(Error::Config(format!(
                    "arch_kwargs.norm_op_kwargs.{key}: unknown argument for {name} (known: eps, affine, momentum, \
                     track_running_stats)"
                )))
            }
        }
    }
    if !affine {
        return Err(Error::Config(format!(
            "arch_kwargs.norm_op_kwargs.affine: expected true (norms here always have a weight and bias), got \
             false for {name}"
        )));
    }
    Ok(Some(if batch {
        NormOp::BatchNorm2d { eps }
    } else {
        NormOp::InstanceNorm2d { eps }
    }))
}

fn parse_nonlin(object: &Map<String, Value>) -> Result<Option<Nonlin>> {
    let Some(name) = class_name(object, "nonlin")? else {
        return Ok(None);
    };
    let leaky = if LEAKY_RELU.contains(&name) {
        true
    } else if RELU.contains(&name) {
        false
    } else {
        return Err(Error::Config(format!(
            "arch_kwargs.nonlin: expected {} or {} (or null), got {name}",
            LEAKY_RELU[0], RELU[0]
        )));
    };
    let mut negative_slope = 1e-2;
    for (key, value) in op_kwargs(object, "nonlin_kwargs")?.into_iter().flatten() {
        match key.as_str() {
            // In-place or not, the result is the same.
            "inplace" if value.is_boolean() => {}
            "negative_slope" if leaky => {
                negative_slope = value.as_f64().filter(|s| s.is_finite()).ok_or_else(|| {
                    Error::Config(format!(
                        "arch_kwargs.nonlin_kwargs.negative_slope: expected a number, got {value}"
                    ))
                })?;
            }
            _ => {
                return Err(Error::Config(format!(
                    "arch_kwargs.nonlin_kwargs.{key}: unknown or mistyped argument for {name} (got {value}; known: \
                     inplace{})",
                    if leaky { ", negative_slope" } else { "" }
                )))
            }
        }
    }
    Ok(Some(if leaky {
        Nonlin::LeakyReLU { negative_slope }
    } else {
        Nonlin::ReLU
    }))
}

/// A positive integer.
fn positive(value: &Value, what: &str) -> Result<usize> {
    value
        .as_u64()
        .and_then(|v| usize::try_from(v).ok())
        .filter(|v| *v > 0)
        .ok_or_else(|| Error::Config(format!("{what}: expected a positive integer, got {value}")))
}

/// A per-stage list of positive integers (or one integer for every stage), of length `n`.
fn per_stage(object: &Map<String, Value>, key: &str, n: usize, n_name: &str) -> Result<Vec<usize>> {
    let value = object
        .get(key)
        .ok_or_else(|| Error::Config(format!("arch_kwargs.{key} is missing")))?;
    match value {
        Value::Array(items) => {
            if items.len() != n {
                return Err(Error::Config(format!(
                    "arch_kwargs.{key} has {} entries, expected {n_name} = {n}",
                    items.len()
                )));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, v)| positive(v, &format!("arch_kwargs.{key}[{i}]")))
                .collect()
        }
        other => Ok(vec![positive(other, &format!("arch_kwargs.{key}"))?; n]),
    }
}

/// A per-stage list of square 2-D sizes (`[a, a]` or `a` per stage, or one `a` for all).
fn per_stage_square(object: &Map<String, Value>, key: &str, n: usize) -> Result<Vec<usize>> {
    let value = object
        .get(key)
        .ok_or_else(|| Error::Config(format!("arch_kwargs.{key} is missing")))?;
    let square = |v: &Value, what: String| -> Result<usize> {
        match v {
            Value::Array(axes) => match axes.as_slice() {
                [a, b] => {
                    let (a, b) = (positive(a, &what)?, positive(b, &what)?);
                    if a == b {
                        Ok(a)
                    } else {
                        Err(Error::Config(format!(
                            "{what}: expected a square 2-D size [a, a], got [{a}, {b}] (non-square sizes are not \
                             supported)"
                        )))
                    }
                }
                _ => Err(Error::Config(format!(
                    "{what}: expected 2 entries for a 2-D convolution, got {v}"
                ))),
            },
            other => positive(other, &what),
        }
    };
    match value {
        Value::Array(items) => {
            if items.len() != n {
                return Err(Error::Config(format!(
                    "arch_kwargs.{key} has {} entries, expected n_stages = {n}",
                    items.len()
                )));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, v)| square(v, format!("arch_kwargs.{key}[{i}]")))
                .collect()
        }
        other => Ok(vec![square(other, format!("arch_kwargs.{key}"))?; n]),
    }
}

/// `prefix.rest`, or `rest` for an empty prefix.
fn join(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_string()
    } else {
        format!("{prefix}.{rest}")
    }
}

/// The norm of one block.
#[derive(Debug, Clone)]
enum Norm {
    Instance(InstanceNorm2d),
    Batch(BatchNorm2d),
}

/// dynamic-network-architectures' `ConvDropoutNormReLU` without dropout: conv → norm →
/// nonlinearity.
#[derive(Debug, Clone)]
struct ConvNormNonlin {
    conv: Conv2d,
    norm: Option<Norm>,
    nonlin: Option<Nonlin>,
}

impl ConvNormNonlin {
    fn new(spec: ConvSpec, ops: &ConvOps, vb: VarBuilder) -> Result<Self> {
        let spec = if ops.conv_bias { spec } else { spec.no_bias() };
        let conv = conv2d(spec, NNUNET_INIT, vb.pp("conv"))?;
        let norm = match ops.norm {
            None => None,
            Some(NormOp::InstanceNorm2d { eps }) => Some(Norm::Instance(InstanceNorm2d::new(
                spec.out_channels,
                eps,
                vb.pp("norm"),
            )?)),
            Some(NormOp::BatchNorm2d { eps }) => {
                Some(Norm::Batch(BatchNorm2d::new(spec.out_channels, eps, vb.pp("norm"))?))
            }
        };
        Ok(Self {
            conv,
            norm,
            nonlin: ops.nonlin,
        })
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let xs = self.conv.forward(xs)?;
        let xs = match &self.norm {
            None => xs,
            Some(Norm::Instance(norm)) => norm.forward(&xs)?,
            Some(Norm::Batch(norm)) => norm.forward_t(&xs, train)?,
        };
        match self.nonlin {
            None => Ok(xs),
            Some(nonlin) => nonlin.forward(&xs),
        }
    }
}

/// dynamic-network-architectures' `StackedConvBlocks`: `n` × [conv k×k with padding
/// (k−1)/2 → norm → nonlinearity], the first conv with the stage's stride. Variables are
/// `convs.{i}.conv.{weight,bias}` and `convs.{i}.norm.*`.
#[derive(Debug, Clone)]
pub struct StackedConvBlocks {
    convs: Vec<ConvNormNonlin>,
    ops: ConvOps,
    out_channels: usize,
}

impl StackedConvBlocks {
    /// Reads or creates `n_convs` blocks, `in_channels → out_channels` for the first (with
    /// stride `first_stride`) and `out_channels → out_channels` for the others, He-normal
    /// initialised.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when a count or size is zero; a candle error when a tensor is
    /// missing or mis-shaped in `vb`.
    pub fn new(
        n_convs: usize,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        first_stride: usize,
        ops: &ConvOps,
        vb: VarBuilder,
    ) -> Result<Self> {
        if n_convs == 0 || in_channels == 0 || out_channels == 0 || kernel == 0 || first_stride == 0 {
            return Err(Error::Config(format!(
                "StackedConvBlocks needs positive sizes, got {n_convs} convs, {in_channels}→{out_channels} \
                 channels, kernel {kernel}, stride {first_stride}"
            )));
        }
        let vb = vb.pp("convs");
        let convs = (0..n_convs)
            .map(|i| {
                let spec = if i == 0 {
                    ConvSpec::same(in_channels, out_channels, kernel).stride(first_stride)
                } else {
                    ConvSpec::same(out_channels, out_channels, kernel)
                };
                ConvNormNonlin::new(spec, ops, vb.pp(i))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            convs,
            ops: *ops,
            out_channels,
        })
    }

    /// `[B, in, H, W]` → `[B, out, H / stride, W / stride]` (rounded up); `train` makes
    /// batch norms use and record batch statistics.
    ///
    /// # Errors
    ///
    /// On a shape mismatch.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut xs = xs.clone();
        for conv in &self.convs {
            xs = conv.forward_t(&xs, train)?;
        }
        Ok(xs)
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// The state-dict names of this block's tensors under `prefix` (the block's own path,
    /// e.g. `encoder.stages.0.0`), as created in the variable builder.
    pub fn tensor_names(&self, prefix: &str) -> Vec<String> {
        self.name_pairs(prefix).into_iter().map(|(_, name)| name).collect()
    }

    /// PyTorch's second names for this block's tensors under `prefix`, as `(alias, name)`:
    /// `convs.{i}.all_modules.0.*` for `convs.{i}.conv.*` and `convs.{i}.all_modules.1.*`
    /// for `convs.{i}.norm.*`.
    pub fn state_dict_aliases(&self, prefix: &str) -> Vec<(String, String)> {
        self.name_pairs(prefix)
    }

    fn name_pairs(&self, prefix: &str) -> Vec<(String, String)> {
        let conv_params: &[&str] = if self.ops.conv_bias {
            &["weight", "bias"]
        } else {
            &["weight"]
        };
        let norm_params = self.ops.norm.map_or_else(Vec::new, NormOp::params);
        let mut pairs = Vec::new();
        for i in 0..self.convs.len() {
            let block = join(prefix, &format!("convs.{i}"));
            for p in conv_params {
                pairs.push((format!("{block}.all_modules.0.{p}"), format!("{block}.conv.{p}")));
            }
            for p in &norm_params {
                pairs.push((format!("{block}.all_modules.1.{p}"), format!("{block}.norm.{p}")));
            }
        }
        pairs
    }
}

/// The shape of a [`UNetDecoder`]: what it needs to know about its encoder, and its own
/// settings. Lists over stages run highest resolution first (encoder order).
#[derive(Debug, Clone, PartialEq)]
pub struct UNetDecoderConfig {
    /// Channels of each encoder stage's output (the skips; the last is the bottleneck).
    pub encoder_channels: Vec<usize>,
    /// Square stride of each encoder stage; stage `s > 0` is undone by a transposed conv
    /// with kernel = stride = `strides[s]` (`strides[0]` is not used by the decoder).
    pub strides: Vec<usize>,
    /// Square kernel of each encoder stage; the decoder stage that produces resolution `s`
    /// uses `kernel_sizes[s]`.
    pub kernel_sizes: Vec<usize>,
    /// Convs per decoder stage, deepest decoder stage first (`n_stages − 1` entries, as
    /// `n_conv_per_stage_decoder` in the plans).
    pub n_conv_per_stage_decoder: Vec<usize>,
    /// Bias, norm and nonlinearity of the conv blocks.
    pub ops: ConvOps,
    /// Output classes of each segmentation layer.
    pub num_classes: usize,
}

impl UNetDecoderConfig {
    /// Checks lengths and sizes.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the field when there are fewer than two stages, a list has
    /// the wrong length, a size is zero, or `ops.conv_bias` is false.
    pub fn validate(&self) -> Result<()> {
        let n = self.encoder_channels.len();
        if n < 2 {
            return Err(Error::Config(format!(
                "UNetDecoder needs at least 2 encoder stages, got encoder_channels {:?}",
                self.encoder_channels
            )));
        }
        for (name, list, expected) in [
            ("strides", &self.strides, n),
            ("kernel_sizes", &self.kernel_sizes, n),
            ("n_conv_per_stage_decoder", &self.n_conv_per_stage_decoder, n - 1),
        ] {
            if list.len() != expected {
                return Err(Error::Config(format!(
                    "UNetDecoder {name} has {} entries ({list:?}), expected {expected} for {n} encoder stages",
                    list.len()
                )));
            }
        }
        for (name, list) in [
            ("encoder_channels", &self.encoder_channels),
            ("strides", &self.strides),
            ("kernel_sizes", &self.kernel_sizes),
            ("n_conv_per_stage_decoder", &self.n_conv_per_stage_decoder),
        ] {
            if list.contains(&0) {
                return Err(Error::Config(format!(
                    "UNetDecoder {name} must be positive, got {list:?}"
                )));
            }
        }
        if self.num_classes == 0 {
            return Err(Error::Config("UNetDecoder num_classes must be positive, got 0".into()));
        }
        if !self.ops.conv_bias {
            return Err(Error::Config(
                "conv_bias: expected true (the transposed convolutions, PixelConvTranspose2d, always have a bias), got \
                 false"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Which segmentation outputs a decoder pass computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outputs {
    /// Every decoder stage's (deep supervision).
    All,
    /// Only the highest-resolution one.
    Highest,
}

/// dynamic-network-architectures' `UNetDecoder`: from the bottleneck up, per stage a
/// transposed conv (`transpconvs.S`), concatenation [upsampled, skip], a
/// [`StackedConvBlocks`] (`stages.S`) and a 1×1 segmentation conv with bias (`seg_layers.S`).
/// Stage `S = 0` is the deepest.
#[derive(Debug, Clone)]
pub struct UNetDecoder {
    transpconvs: Vec<PixelConvTranspose2d>,
    stages: Vec<StackedConvBlocks>,
    seg_layers: Vec<Conv2d>,
    cfg: UNetDecoderConfig,
}

impl UNetDecoder {
    /// Reads or creates the decoder's tensors in `vb` (`transpconvs.*`, `stages.*`,
    /// `seg_layers.*`), He-normal initialised with zero biases.
    ///
    /// # Errors
    ///
    /// As [`UNetDecoderConfig::validate`]; a candle error when a tensor is missing or
    /// mis-shaped in `vb`.
    pub fn new(cfg: &UNetDecoderConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let n = cfg.encoder_channels.len();
        let (mut transpconvs, mut stages, mut seg_layers) = (Vec::new(), Vec::new(), Vec::new());
        for s in 0..n - 1 {
            // Decoder stage s turns encoder level n−1−s (below) into level n−2−s (the skip).
            let (below, skip) = (n - 1 - s, n - 2 - s);
            let (c_below, c_skip) = (cfg.encoder_channels[below], cfg.encoder_channels[skip]);
            let stride = cfg.strides[below];
            transpconvs.push(PixelConvTranspose2d::new(
                c_below,
                c_skip,
                stride,
                NNUNET_INIT,
                vb.pp("transpconvs").pp(s),
            )?);
            stages.push(StackedConvBlocks::new(
                cfg.n_conv_per_stage_decoder[s],
                2 * c_skip,
                c_skip,
                cfg.kernel_sizes[skip],
                1,
                &cfg.ops,
                vb.pp("stages").pp(s),
            )?);
            seg_layers.push(conv2d(
                ConvSpec::same(c_skip, cfg.num_classes, 1),
                NNUNET_INIT,
                vb.pp("seg_layers").pp(s),
            )?);
        }
        Ok(Self {
            transpconvs,
            stages,
            seg_layers,
            cfg: cfg.clone(),
        })
    }

    /// Segmentation logits of every decoder stage, highest resolution first (deep
    /// supervision order): output `i` is `[B, num_classes, H_i, W_i]` with `H_i, W_i` the
    /// size of `skips[i]`, for `i < n_stages − 1`.
    ///
    /// `skips` are the encoder's outputs, highest resolution first, the bottleneck last:
    /// `skips[s]` is `[B, encoder_channels[s], H_s, W_s]` with `H_s = H_{s+1} · strides[s+1]`.
    /// `train` makes batch norms use and record batch statistics.
    ///
    /// # Errors
    ///
    /// [`Error::Input`] naming the shapes when the number of skips, their channels or their
    /// sizes do not fit.
    pub fn forward(&self, skips: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        self.run(skips, train, Outputs::All)
    }

    /// Only the highest-resolution logits (what [`Self::forward`] returns first), without
    /// computing the other segmentation layers.
    ///
    /// # Errors
    ///
    /// As [`Self::forward`].
    pub fn forward_highest(&self, skips: &[Tensor], train: bool) -> Result<Tensor> {
        self.run(skips, train, Outputs::Highest)?
            .pop()
            .ok_or_else(|| Error::Input("UNetDecoder produced no output".into()))
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &UNetDecoderConfig {
        &self.cfg
    }

    /// PyTorch's second names for the decoder's tensors under `prefix` (the decoder's own
    /// path, e.g. `decoder`), as `(alias, name)`: the `all_modules` names of every conv
    /// block.
    pub fn state_dict_aliases(&self, prefix: &str) -> Vec<(String, String)> {
        self.stages
            .iter()
            .enumerate()
            .flat_map(|(s, stage)| stage.state_dict_aliases(&join(prefix, &format!("stages.{s}"))))
            .collect()
    }

    fn run(&self, skips: &[Tensor], train: bool, outputs: Outputs) -> Result<Vec<Tensor>> {
        let channels = &self.cfg.encoder_channels;
        let shapes: Vec<Vec<usize>> = skips.iter().map(|s| s.dims().to_vec()).collect();
        if skips.len() != channels.len() {
            return Err(Error::Input(format!(
                "UNetDecoder expects {} skips with channels {channels:?}, got {} of shapes {shapes:?}",
                channels.len(),
                skips.len()
            )));
        }
        for (i, (shape, c)) in shapes.iter().zip(channels).enumerate() {
            if shape.len() != 4 || shape[1] != *c {
                return Err(Error::Input(format!(
                    "UNetDecoder skip {i} should be [B, {c}, H, W], got {shape:?} (skips {shapes:?})"
                )));
            }
        }
        let Some((bottleneck, rest)) = skips.split_last() else {
            return Err(Error::Input("UNetDecoder got no skips".into()));
        };
        let mut below = bottleneck.clone();
        let mut segs = Vec::new();
        let last = self.stages.len().saturating_sub(1);
        let layers = self.transpconvs.iter().zip(&self.stages).zip(&self.seg_layers);
        for (s, (((up, stage), seg), skip)) in layers.zip(rest.iter().rev()).enumerate() {
            let upsampled = up.forward(&below)?;
            if upsampled.dims()[2..] != skip.dims()[2..] {
                return Err(Error::Input(format!(
                    "UNetDecoder stage {s} upsamples {:?} to {:?}, which does not match the skip {:?} (skips \
                     {shapes:?})",
                    below.dims(),
                    upsampled.dims(),
                    skip.dims()
                )));
            }
            let xs = stage.forward_t(&Tensor::cat(&[&upsampled, skip], 1)?, train)?;
            if outputs == Outputs::All || s == last {
                segs.push(seg.forward(&xs)?);
            }
            below = xs;
        }
        segs.reverse();
        Ok(segs)
    }
}

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

/// nnU-Net's `PlainConvUNet` with deep supervision: a conv encoder (`encoder.stages.S.0`)
/// and a [`UNetDecoder`] (`decoder`).
///
/// ```
/// use meddino_decoder::baselines::unet::{ConvOps, PlainConvUNet, PlainConvUNetConfig};
/// use meddino_decoder::candle::{DType, Device, Tensor};
/// use meddino_decoder::SegmentationNetwork;
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
/// # Ok::<(), meddino_decoder::Error>(())
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
