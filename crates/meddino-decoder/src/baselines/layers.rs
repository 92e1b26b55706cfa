//! Building blocks the baselines share, as PyTorch defines them: convolutions with explicit
//! initialisation, transposed convolutions whose kernel equals their stride, instance and
//! batch norm (with running statistics), bilinear resizing, max pooling with padding and
//! channel dropout. Everything here is differentiable with candle's autograd: where candle's
//! own op has no backward (bilinear upsampling, max pooling with overlapping windows) the
//! layer is written from ops that have one.

use candle_core::{Module, Tensor, Var, D};
use candle_nn::{Conv2d, Conv2dConfig, Init, VarBuilder};
use meddino_backbone::stochastic::StochasticRng;

use crate::error::{Error, Result};

/// Initialisation of a convolution or linear weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightInit {
    /// He normal, `kaiming_normal_(a)` with fan-in: std = √(2 / (1 + a²)) / √fan_in
    /// (nnU-Net's `InitWeights_He(1e-2)`).
    HeNormal {
        /// Negative slope of the following leaky ReLU.
        a: f64,
    },
    /// Glorot, `xavier_uniform_`: bound √(6 / (fan_in + fan_out)).
    XavierUniform,
    /// `normal_(0, std)` (also `trunc_normal_(std)` with the default ±2 cut-off, which lies
    /// far beyond the small standard deviations used).
    Normal {
        /// Standard deviation.
        std: f64,
    },
    /// All zeros (`constant_(0)`).
    Zeros,
    /// PyTorch's default for `nn.Conv2d`/`nn.Linear`/`nn.ConvTranspose2d`:
    /// `kaiming_uniform_(a=√5)`, i.e. bound 1/√fan_in, and the bias uniform in the same
    /// bound. The other initialisers zero the bias.
    TorchDefault,
}

impl WeightInit {
    /// The candle initialiser for a weight with these fans.
    pub fn init(self, fan_in: usize, fan_out: usize) -> Init {
        match self {
            WeightInit::HeNormal { a } => Init::Randn {
                mean: 0.0,
                stdev: (2.0 / (1.0 + a * a)).sqrt() / (fan_in as f64).sqrt(),
            },
            WeightInit::XavierUniform => {
                let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
                Init::Uniform { lo: -bound, up: bound }
            }
            WeightInit::TorchDefault => {
                let bound = 1.0 / (fan_in as f64).sqrt();
                Init::Uniform { lo: -bound, up: bound }
            }
            WeightInit::Normal { std } => Init::Randn { mean: 0.0, stdev: std },
            WeightInit::Zeros => Init::Const(0.0),
        }
    }

    /// The candle initialiser of the bias that goes with this weight initialisation.
    pub fn bias_init(self, fan_in: usize) -> Init {
        match self {
            WeightInit::TorchDefault => self.init(fan_in, 0),
            WeightInit::HeNormal { .. } | WeightInit::XavierUniform | WeightInit::Normal { .. } | WeightInit::Zeros => {
                Init::Const(0.0)
            }
        }
    }
}

/// Shape of a 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Square kernel size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    /// Channel groups (`in_channels` for a depth-wise convolution).
    pub groups: usize,
    /// Whether the convolution has a bias.
    pub bias: bool,
}

impl ConvSpec {
    /// A `kernel`×`kernel` convolution with "same" padding (`(kernel − 1) / 2`), stride 1,
    /// one group and a bias.
    pub fn same(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel,
            stride: 1,
            padding: (kernel - 1) / 2,
            groups: 1,
            bias: true,
        }
    }

    /// This spec with another stride.
    pub fn stride(self, stride: usize) -> Self {
        Self { stride, ..self }
    }

    /// This spec with another padding.
    pub fn padding(self, padding: usize) -> Self {
        Self { padding, ..self }
    }

    /// This spec as a depth-wise convolution (one group per input channel).
    pub fn depthwise(self) -> Self {
        Self {
            groups: self.in_channels,
            ..self
        }
    }

    /// This spec without bias.
    pub fn no_bias(self) -> Self {
        Self { bias: false, ..self }
    }
}

/// `nn.Conv2d` (`weight` `[out, in / groups, k, k]`, `bias` `[out]`), initialised with
/// PyTorch's fans (in `in/groups·k²`, out `out·k²`).
///
/// # Errors
///
/// When a tensor is missing or mis-shaped in `vb`.
pub fn conv2d(spec: ConvSpec, init: WeightInit, vb: VarBuilder) -> Result<Conv2d> {
    let ConvSpec {
        in_channels,
        out_channels,
        kernel,
        stride,
        padding,
        groups,
        bias,
    } = spec;
    if groups == 0 || in_channels % groups != 0 || out_channels % groups != 0 {
        return Err(Error::Config(format!(
            "conv {in_channels}→{out_channels} cannot be split into {groups} groups"
        )));
    }
    let receptive = kernel * kernel;
    let fan_in = in_channels / groups * receptive;
    let weight = vb.get_with_hints(
        (out_channels, in_channels / groups, kernel, kernel),
        "weight",
        init.init(fan_in, out_channels * receptive),
    )?;
    let bias = if bias {
        Some(vb.get_with_hints(out_channels, "bias", init.bias_init(fan_in))?)
    } else {
        None
    };
    Ok(Conv2d::new(
        weight,
        bias,
        Conv2dConfig {
            padding,
            stride,
            dilation: 1,
            groups,
            cudnn_fwd_algo: None,
        },
    ))
}

/// A depth-wise 3×3 convolution with padding 1 (`weight` `[C, 1, 3, 3]`, optional bias
/// `[C]`) on `[B, C, H, W]`, as the sum of nine shifted, per-channel scaled copies: candle
/// runs a grouped convolution as one convolution per group, far slower for many channels.
///
/// # Errors
///
/// When `conv` is not a depth-wise 3×3 convolution over the input's channels.
pub fn depthwise_conv3x3(xs: &Tensor, conv: &Conv2d) -> Result<Tensor> {
    let (_, c, h, w) = xs.dims4()?;
    let weight = conv.weight();
    if weight.dims() != [c, 1, 3, 3] {
        return Err(Error::Input(format!(
            "depth-wise 3×3 convolution with weight {:?} cannot take input {:?}",
            weight.dims(),
            xs.dims()
        )));
    }
    let padded = xs.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
    let mut out: Option<Tensor> = None;
    for dy in 0..3 {
        let rows = padded.narrow(2, dy, h)?;
        for dx in 0..3 {
            let tap = weight.narrow(2, dy, 1)?.narrow(3, dx, 1)?.reshape((1, c, 1, 1))?;
            let term = rows.narrow(3, dx, w)?.broadcast_mul(&tap)?;
            out = Some(match out {
                None => term,
                Some(sum) => (sum + term)?,
            });
        }
    }
    let out = out.ok_or_else(|| Error::Input("empty convolution window".into()))?;
    Ok(match conv.bias() {
        Some(bias) => out.broadcast_add(&bias.reshape((1, c, 1, 1))?)?,
        None => out,
    })
}

/// `nn.Linear` (`weight` `[out, in]`, `bias` `[out]`), applied to the last axis of any rank.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Reads or creates the weights.
    ///
    /// # Errors
    ///
    /// When a tensor is missing or mis-shaped in `vb`.
    pub fn new(in_features: usize, out_features: usize, bias: bool, init: WeightInit, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(
            (out_features, in_features),
            "weight",
            init.init(in_features, out_features),
        )?;
        let bias = if bias {
            Some(vb.get_with_hints(out_features, "bias", init.bias_init(in_features))?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let dims = xs.dims().to_vec();
        let features = *dims.last().unwrap_or(&0);
        let rows = xs.reshape(((), features))?;
        let mut out = rows.matmul(&self.weight.t()?)?;
        if let Some(bias) = &self.bias {
            out = out.broadcast_add(bias)?;
        }
        let mut shape = dims;
        if let Some(last) = shape.last_mut() {
            *last = self.weight.dim(0)?;
        }
        out.reshape(shape)
    }
}

/// `nn.ConvTranspose2d` whose kernel equals its stride (every use in the baselines: 2×2 s2
/// upsampling, SegFormer's 4×4 s4 head). Windows then do not overlap, so it is one matmul
/// and a reshape — faster than a general transposed convolution and differentiable through
/// plain ops. `weight` is `[in, out, k, k]` as PyTorch stores it.
#[derive(Debug, Clone)]
pub struct PixelConvTranspose2d {
    weight: Tensor,
    bias: Option<Tensor>,
    kernel: usize,
}

impl PixelConvTranspose2d {
    /// Reads or creates the weights. `init` sees PyTorch's fans for this weight layout
    /// (fan-in `out·k²`, as `kaiming_normal_` computes it from dimension 1).
    ///
    /// # Errors
    ///
    /// When a tensor is missing or mis-shaped in `vb`.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        init: WeightInit,
        vb: VarBuilder,
    ) -> Result<Self> {
        let receptive = kernel * kernel;
        let weight = vb.get_with_hints(
            (in_channels, out_channels, kernel, kernel),
            "weight",
            init.init(out_channels * receptive, in_channels * receptive),
        )?;
        let bias = Some(vb.get_with_hints(out_channels, "bias", init.bias_init(out_channels * receptive))?);
        Ok(Self { weight, bias, kernel })
    }
}

impl Module for PixelConvTranspose2d {
    /// `[B, in, H, W]` → `[B, out, H·k, W·k]`.
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c_in, h, w) = xs.dims4()?;
        let (_, c_out, k, _) = self.weight.dims4()?;
        debug_assert_eq!(k, self.kernel);
        let rows = xs.permute((0, 2, 3, 1))?.reshape((b * h * w, c_in))?;
        let out = rows.matmul(&self.weight.reshape((c_in, c_out * k * k))?)?;
        let out = out
            .reshape((b, h, w, c_out, k, k))?
            .permute((0, 3, 1, 4, 2, 5))?
            .reshape((b, c_out, h * k, w * k))?;
        match &self.bias {
            Some(bias) => out.broadcast_add(&bias.reshape((1, c_out, 1, 1))?),
            None => Ok(out),
        }
    }
}

/// A norm's affine parameters: `weight` (ones) and `bias` (zeros) of `channels`.
fn affine(channels: usize, vb: &VarBuilder) -> Result<(Tensor, Tensor)> {
    Ok((
        vb.get_with_hints(channels, "weight", Init::Const(1.0))?,
        vb.get_with_hints(channels, "bias", Init::Const(0.0))?,
    ))
}

/// `nn.InstanceNorm2d(affine=True)`: each sample's channel normalised over H, W (biased
/// variance), then scaled and shifted per channel. No running statistics (PyTorch's
/// default), so training and evaluation agree.
#[derive(Debug, Clone)]
pub struct InstanceNorm2d {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl InstanceNorm2d {
    /// Reads or creates `weight` (ones) and `bias` (zeros).
    ///
    /// # Errors
    ///
    /// When a tensor is missing or mis-shaped in `vb`.
    pub fn new(channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let (weight, bias) = affine(channels, &vb)?;
        Ok(Self { weight, bias, eps })
    }
}

impl Module for InstanceNorm2d {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let flat = xs.reshape((b, c, h * w))?;
        let centered = flat.broadcast_sub(&flat.mean_keepdim(D::Minus1)?)?;
        let variance = centered.sqr()?.mean_keepdim(D::Minus1)?;
        centered
            .broadcast_div(&(variance + self.eps)?.sqrt()?)?
            .reshape((b, c, h, w))?
            .broadcast_mul(&self.weight.reshape((1, c, 1, 1))?)?
            .broadcast_add(&self.bias.reshape((1, c, 1, 1))?)
    }
}

/// `nn.BatchNorm2d` / `nn.SyncBatchNorm` (momentum 0.1): in training, batch statistics over
/// (B, H, W) with the biased variance, and the running mean and unbiased variance updated in
/// place; in evaluation, the running statistics. `running_mean`, `running_var` and
/// `num_batches_tracked` are variables so checkpoints carry them, but not trained (see
/// [`is_batch_norm_buffer`]).
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    num_batches_tracked: Var,
    eps: f64,
    momentum: f64,
}

/// The state-dict suffixes of a batch norm's running statistics.
pub const BATCH_NORM_BUFFERS: [&str; 3] = ["running_mean", "running_var", "num_batches_tracked"];

/// Whether `name` is a batch norm's running statistic (not a trained parameter).
pub fn is_batch_norm_buffer(name: &str) -> bool {
    name.rsplit('.')
        .next()
        .is_some_and(|last| BATCH_NORM_BUFFERS.contains(&last))
}

impl BatchNorm2d {
    /// Reads or creates the affine parameters (ones, zeros) and running statistics (zeros,
    /// ones, 0 batches).
    ///
    /// # Errors
    ///
    /// When a tensor is missing or mis-shaped in `vb`.
    pub fn new(channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        // A variable builder over a VarMap hands out its variables' tensors; wrapping them
        // shares their storage, so running-statistic updates reach the map (and checkpoints).
        let buffer = |name: &str, shape: &[usize], value: f64| -> Result<Var> {
            Ok(Var::from_tensor(&vb.get_with_hints(
                shape,
                name,
                Init::Const(value),
            )?)?)
        };
        let (weight, bias) = affine(channels, &vb)?;
        Ok(Self {
            weight,
            bias,
            running_mean: buffer("running_mean", &[channels], 0.0)?,
            running_var: buffer("running_var", &[channels], 1.0)?,
            num_batches_tracked: buffer("num_batches_tracked", &[], 0.0)?,
            eps,
            momentum: 0.1,
        })
    }

    /// Normalises `xs` `[B, C, H, W]`; `train` uses (and records) batch statistics.
    ///
    /// # Errors
    ///
    /// On a shape mismatch, or a training batch with a single value per channel.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let per_channel = |t: &Tensor| t.reshape((1, c, 1, 1));
        let (mean, variance) = if train {
            let count = b * h * w;
            if count < 2 {
                return Err(Error::Input(format!(
                    "batch norm in training needs more than one value per channel, got input {:?}",
                    xs.dims()
                )));
            }
            let channels_first = xs.transpose(0, 1)?.reshape((c, count))?;
            let mean = channels_first.mean_keepdim(1)?;
            let variance = channels_first.broadcast_sub(&mean)?.sqr()?.mean_keepdim(1)?;
            let (mean, variance) = (mean.flatten_all()?, variance.flatten_all()?);
            self.record(&mean.detach(), &variance.detach(), count)?;
            (mean, variance)
        } else {
            (
                self.running_mean.as_tensor().clone(),
                self.running_var.as_tensor().clone(),
            )
        };
        let scale = (self.weight.clone() / (variance + self.eps)?.sqrt()?)?;
        let shift = (&self.bias - (&mean * &scale)?)?;
        Ok(xs
            .broadcast_mul(&per_channel(&scale)?)?
            .broadcast_add(&per_channel(&shift)?)?)
    }

    fn record(&self, mean: &Tensor, variance: &Tensor, count: usize) -> Result<()> {
        let m = self.momentum;
        let unbiased = (variance * (count as f64 / (count - 1) as f64))?;
        let dtype = self.running_mean.dtype();
        let blend = |running: &Var, batch: &Tensor| -> Result<()> {
            let next = ((running.as_tensor() * (1.0 - m))? + (batch.to_dtype(dtype)? * m)?)?;
            Ok(running.set(&next)?)
        };
        blend(&self.running_mean, mean)?;
        blend(&self.running_var, &unbiased)?;
        let tracked = (self.num_batches_tracked.as_tensor() + 1.0)?;
        Ok(self.num_batches_tracked.set(&tracked)?)
    }
}

/// Token LayerNorm (`nn.LayerNorm(dim, eps)`) over the last axis, with `weight` (ones) and
/// `bias` (zeros).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Reads or creates the parameters.
    ///
    /// # Errors
    ///
    /// When a tensor is missing or mis-shaped in `vb`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let (weight, bias) = affine(dim, &vb)?;
        Ok(Self { weight, bias, eps })
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        meddino_backbone::layer_norm(xs, &self.weight, &self.bias, self.eps)
    }
}

/// The `[out, in]` matrix of 1-D linear interpolation with `align_corners=False` (PyTorch's
/// `interpolate(mode="bilinear")` without antialiasing): source coordinate
/// `(i + 0.5)·in/out − 0.5`, clamped at 0, neighbours clamped at the last index.
fn interpolation_matrix(input: usize, output: usize) -> Vec<f32> {
    let mut m = vec![0f32; output * input];
    let scale = input as f64 / output as f64;
    for i in 0..output {
        let source = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
        let lo = (source.floor() as usize).min(input - 1);
        let hi = (lo + 1).min(input - 1);
        let frac = (source - lo as f64) as f32;
        m[i * input + lo] += 1.0 - frac;
        m[i * input + hi] += frac;
    }
    m
}

/// Bilinear resize of `[B, C, H, W]` to `[B, C, height, width]` with `align_corners=False`,
/// as `F.interpolate(mode="bilinear")`. Written as two matmuls with interpolation matrices,
/// so it has a backward (candle's `upsample_bilinear2d` has none).
///
/// # Errors
///
/// When `xs` is not 4-D or a size is zero.
pub fn resize_bilinear(xs: &Tensor, height: usize, width: usize) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    if h == 0 || w == 0 || height == 0 || width == 0 {
        return Err(Error::Input(format!(
            "cannot resize {:?} to {height}×{width}",
            xs.dims()
        )));
    }
    if (h, w) == (height, width) {
        return Ok(xs.clone());
    }
    let (device, dtype) = (xs.device(), xs.dtype());
    let rows = Tensor::from_vec(interpolation_matrix(h, height), (height, h), device)?.to_dtype(dtype)?;
    let columns = Tensor::from_vec(interpolation_matrix(w, width), (width, w), device)?
        .to_dtype(dtype)?
        .t()?;
    let xs = if w == width {
        xs.clone()
    } else {
        xs.broadcast_matmul(&columns)?
    };
    Ok(if h == height { xs } else { rows.broadcast_matmul(&xs)? })
}

/// `nn.MaxPool2d(kernel_size=3, stride=2, padding=1)` (padding never wins: it is −∞). Built
/// from strided selections and `maximum`, because candle's max pool has no backward for
/// overlapping windows.
///
/// # Errors
///
/// When `xs` is not 4-D.
pub fn max_pool_3x3_stride2(xs: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = xs.dims4()?;
    let (out_h, out_w) = (h.div_ceil(2), w.div_ceil(2));
    let dtype = xs.dtype();
    // Pad by one on each side (and one more where the size is odd) with the lowest value.
    let pad = |t: &Tensor, axis: usize, before: usize, after: usize| -> candle_core::Result<Tensor> {
        let mut shape = t.dims().to_vec();
        let mut parts = Vec::new();
        shape[axis] = before;
        parts.push(Tensor::full(f32::MIN, shape.as_slice(), t.device())?.to_dtype(dtype)?);
        parts.push(t.clone());
        shape[axis] = after;
        parts.push(Tensor::full(f32::MIN, shape.as_slice(), t.device())?.to_dtype(dtype)?);
        Tensor::cat(&parts, axis)
    };
    let padded = pad(&pad(xs, 2, 1, 1 + h % 2)?, 3, 1, 1 + w % 2)?;
    let device = xs.device();
    // Window offset d of output position i reads padded position d + 2i.
    let taps = |offset: u32, n: usize| Tensor::from_vec((0..n as u32).map(|i| offset + 2 * i).collect(), n, device);
    let columns = (0..3u32)
        .map(|dx| taps(dx, out_w))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let mut pooled: Option<Tensor> = None;
    for dy in 0..3u32 {
        let selected_rows = padded.index_select(&taps(dy, out_h)?, 2)?;
        for columns in &columns {
            let window = selected_rows.index_select(columns, 3)?;
            pooled = Some(match pooled {
                None => window,
                Some(p) => p.maximum(&window)?,
            });
        }
    }
    let pooled = pooled.ok_or_else(|| Error::Input("empty pooling window".into()))?;
    debug_assert_eq!(pooled.dims(), [b, c, out_h, out_w]);
    Ok(pooled)
}

/// `nn.Dropout2d(p)` in training: whole channels zeroed with probability `p`, survivors
/// scaled by `1 / (1 − p)`, drawn from the model's seedable generator.
///
/// # Errors
///
/// When `xs` is not 4-D.
pub fn dropout2d(xs: &Tensor, p: f64, rng: &StochasticRng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(xs.clone());
    }
    let (b, c, _, _) = xs.dims4()?;
    let keep: Vec<f32> = rng
        .uniform(0.0, 1.0, b * c)
        .into_iter()
        .map(|u| {
            if f64::from(u) < p {
                0.0
            } else {
                (1.0 / (1.0 - p)) as f32
            }
        })
        .collect();
    let mask = Tensor::from_vec(keep, (b, c, 1, 1), xs.device())?.to_dtype(xs.dtype())?;
    Ok(xs.broadcast_mul(&mask)?)
}

/// Stochastic depth on a residual branch (`DropPath(p)` in training): each sample's branch
/// output is zeroed with probability `p`, survivors scaled by `1 / (1 − p)`.
///
/// # Errors
///
/// When `branch` has no batch axis.
pub fn drop_path(branch: &Tensor, p: f64, rng: &StochasticRng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(branch.clone());
    }
    let b = branch.dim(0)?;
    let keep: Vec<f32> = rng
        .uniform(0.0, 1.0, b)
        .into_iter()
        .map(|u| {
            if f64::from(u) < p {
                0.0
            } else {
                (1.0 / (1.0 - p)) as f32
            }
        })
        .collect();
    let mut shape = vec![1usize; branch.rank()];
    shape[0] = b;
    let mask = Tensor::from_vec(keep, shape, branch.device())?.to_dtype(branch.dtype())?;
    Ok(branch.broadcast_mul(&mask)?)
}

/// `[B, C, H, W]` → tokens `[B, H·W, C]`.
///
/// # Errors
///
/// When `xs` is not 4-D.
pub fn to_tokens(xs: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = xs.dims4()?;
    Ok(xs.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?)
}

/// Tokens `[B, H·W, C]` → `[B, C, H, W]`.
///
/// # Errors
///
/// When the token count is not `h·w`.
pub fn from_tokens(tokens: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, n, c) = tokens.dims3()?;
    if n != h * w {
        return Err(Error::Input(format!("{n} tokens do not form a {h}×{w} grid")));
    }
    Ok(tokens.transpose(1, 2)?.reshape((b, c, h, w))?)
}

/// Repeats a one-channel image to three channels, as the baselines built for RGB encoders
/// do with CT slices; other channel counts are refused.
///
/// # Errors
///
/// When `xs` does not have one or three channels.
pub fn to_three_channels(xs: &Tensor) -> Result<Tensor> {
    match xs.dim(1)? {
        1 => Ok(xs.repeat((1, 3, 1, 1))?),
        3 => Ok(xs.clone()),
        c => Err(Error::Input(format!("expected 1 or 3 input channels, got {c}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn close(a: &Tensor, b: &[f32]) {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn bilinear_resize_matches_torch_align_corners_false() {
        // torch.nn.functional.interpolate(torch.tensor([[[[0.,1.,2.]]]]), size=(1,5),
        // mode="bilinear", align_corners=False) = [0, 0.4, 1.0, 1.6, 2.0].
        let xs = Tensor::new(&[[[[0f32, 1.0, 2.0]]]], &Device::Cpu).unwrap();
        close(&resize_bilinear(&xs, 1, 5).unwrap(), &[0.0, 0.4, 1.0, 1.6, 2.0]);
        // Downsampling 4 → 2 averages neighbours (no antialias): [0.5, 2.5].
        let xs = Tensor::new(&[[[[0f32], [1.0], [2.0], [3.0]]]], &Device::Cpu).unwrap();
        close(&resize_bilinear(&xs, 2, 1).unwrap(), &[0.5, 2.5]);
        // Upsampling by 2 in both axes.
        let xs = Tensor::new(&[[[[0f32, 2.0], [4.0, 6.0]]]], &Device::Cpu).unwrap();
        let up = resize_bilinear(&xs, 4, 4).unwrap();
        close(&up.narrow(2, 0, 1).unwrap(), &[0.0, 0.5, 1.5, 2.0]);
        close(&up.narrow(2, 1, 1).unwrap(), &[1.0, 1.5, 2.5, 3.0]);
    }

    #[test]
    fn max_pool_matches_torch_windows_and_has_a_gradient() {
        let values: Vec<f32> = (0..25).map(|v| ((v * 7) % 11) as f32).collect();
        let xs = Var::from_vec(values.clone(), (1, 1, 5, 5), &Device::Cpu).unwrap();
        let pooled = max_pool_3x3_stride2(xs.as_tensor()).unwrap();
        assert_eq!(pooled.dims(), [1, 1, 3, 3]);
        let at = |y: isize, x: isize| {
            if (0..5).contains(&y) && (0..5).contains(&x) {
                values[(y * 5 + x) as usize]
            } else {
                f32::MIN
            }
        };
        let mut expected = Vec::new();
        for oy in 0..3isize {
            for ox in 0..3isize {
                let mut m = f32::MIN;
                for dy in -1..=1 {
                    for dx in -1..=1 {
                        m = m.max(at(2 * oy + dy, 2 * ox + dx));
                    }
                }
                expected.push(m);
            }
        }
        close(&pooled, &expected);
        let grads = pooled.sum_all().unwrap().backward().unwrap();
        let g = grads.get(xs.as_tensor()).expect("gradient");
        assert!(g.sum_all().unwrap().to_scalar::<f32>().unwrap() >= 9.0);
    }

    #[test]
    fn pixel_conv_transpose_matches_a_general_transposed_convolution() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let up = PixelConvTranspose2d::new(3, 2, 2, WeightInit::XavierUniform, vb.pp("up")).unwrap();
        let bias = Tensor::new(&[0.25f32, -0.5], &Device::Cpu).unwrap();
        varmap.data().lock().unwrap()["up.bias"].set(&bias).unwrap();
        let xs = Tensor::randn(0f32, 1.0, (2, 3, 4, 5), &Device::Cpu).unwrap();
        let ours = up.forward(&xs).unwrap();
        let general = xs
            .conv_transpose2d(&up.weight, 0, 0, 2, 1)
            .unwrap()
            .broadcast_add(&bias.reshape((1, 2, 1, 1)).unwrap())
            .unwrap();
        assert_eq!(ours.dims(), [2, 2, 8, 10]);
        let diff = (ours - general)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn batch_norm_tracks_running_statistics_like_torch() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let bn = BatchNorm2d::new(1, 1e-5, vb.pp("bn")).unwrap();
        // Values 1..=4: mean 2.5, biased variance 1.25, unbiased 5/3.
        let xs = Tensor::new(&[[[[1f32, 2.0], [3.0, 4.0]]]], &Device::Cpu).unwrap();
        let out = bn.forward_t(&xs, true).unwrap();
        let s = (1.25f32 + 1e-5).sqrt();
        close(&out, &[-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s]);
        let data = varmap.data().lock().unwrap();
        close(data["bn.running_mean"].as_tensor(), &[0.25]);
        close(data["bn.running_var"].as_tensor(), &[0.9 + 0.1 * 5.0 / 3.0]);
        close(data["bn.num_batches_tracked"].as_tensor(), &[1.0]);
        drop(data);
        // Evaluation uses the running statistics.
        let eval = bn.forward_t(&xs, false).unwrap();
        let s = (0.9f32 + 0.5 / 3.0 + 1e-5).sqrt();
        close(&eval, &[0.75 / s, 1.75 / s, 2.75 / s, 3.75 / s]);
        assert!(is_batch_norm_buffer("decoder.linear_fuse.bn.running_var"));
        assert!(!is_batch_norm_buffer("decoder.linear_fuse.bn.weight"));
    }

    #[test]
    fn instance_norm_normalises_each_sample_and_channel() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let norm = InstanceNorm2d::new(2, 1e-5, vb).unwrap();
        let xs = Tensor::randn(3f32, 2.0, (2, 2, 4, 4), &Device::Cpu).unwrap();
        let out = norm.forward(&xs).unwrap().reshape((4, 16)).unwrap();
        let mean: Vec<f32> = out.mean(1).unwrap().to_vec1().unwrap();
        let var: Vec<f32> = out.sqr().unwrap().mean(1).unwrap().to_vec1().unwrap();
        assert!(mean.iter().all(|m| m.abs() < 1e-4), "{mean:?}");
        assert!(var.iter().all(|v| (v - 1.0).abs() < 1e-3), "{var:?}");
    }

    #[test]
    fn depthwise_conv_matches_a_grouped_convolution() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let conv = conv2d(
            ConvSpec::same(5, 5, 3).depthwise(),
            WeightInit::HeNormal { a: 1e-2 },
            vb.pp("dw"),
        )
        .expect("conv");
        let bias = Tensor::randn(0f32, 1.0, 5, &Device::Cpu).expect("bias");
        varmap.data().lock().expect("varmap")["dw.bias"]
            .set(&bias)
            .expect("set");
        let xs = Tensor::randn(0f32, 1.0, (2, 5, 6, 7), &Device::Cpu).expect("xs");
        let ours = depthwise_conv3x3(&xs, &conv).expect("ours");
        let grouped = conv.forward(&xs).expect("grouped");
        let diff: f32 = (ours - grouped)
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar())
            .expect("diff");
        assert!(diff < 1e-5, "max |Δ| {diff}");
    }
}
