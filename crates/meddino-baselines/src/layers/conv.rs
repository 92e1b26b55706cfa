//! Convolutions as the baselines use them: `nn.Conv2d` with explicit initialisation, a fast
//! depth-wise 3×3 convolution, and transposed convolutions whose kernel equals their stride.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

use super::WeightInit;
use crate::error::{Error, Result};

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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

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
