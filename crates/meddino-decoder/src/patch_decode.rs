//! `PatchDecode` (MedDINOv3's local 2-D version in `primus.py`) and `LayerNormNd`.
//!
//! Stages `i = 0..n` (patch size `2ⁿ`): ConvTranspose2d(k=2, s=2) → LayerNormNd (eps 1e-6)
//! → exact GELU, halving the channels each time; then a 1×1 convolution to the classes.
//! Keys: `decode.{i}.0` (transposed conv), `decode.{i}.1` (norm), `decode.{n}` (1×1 conv).
//!
//! A stride-2, kernel-2 transposed convolution never overlaps its outputs, so it is one
//! matrix product per pixel followed by a pixel shuffle; written that way it is exact,
//! differentiable and runs on the fast matmul path. The 1×1 convolution is a matmul too.
//!
//! Internally the decoder works on pixel rows (channels last, `[B·H·W, C]`), and every
//! per-channel bias and scale is applied inside a matrix product (`[x | 1] @ [W; b]`): the
//! gradient of a broadcast over leading axes is a strided reduction in candle, which made
//! up most of the backward pass at full resolution, while the matrix product's gradient
//! runs on gemm.

use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::error::{Error, Result};

/// Channel-wise LayerNorm of `[B, C, H, W]` maps (DNA's `LayerNormNd`).
#[derive(Debug, Clone)]
pub(crate) struct LayerNormNd {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNormNd {
    pub(crate) fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(channels, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(channels, "bias", Init::Const(0.0))?,
            eps: 1e-6,
        })
    }
}

impl LayerNormNd {
    /// LayerNorm over the channels of pixel rows `[N, C]`.
    fn forward_rows(&self, rows: &Tensor) -> candle_core::Result<Tensor> {
        let centered = rows.broadcast_sub(&rows.mean_keepdim(1)?)?;
        let variance = centered.sqr()?.mean_keepdim(1)?;
        let normalized = centered.broadcast_div(&(variance + self.eps)?.sqrt()?)?;
        let c = self.weight.dim(0)?;
        let scale =
            Tensor::eye(c, self.weight.dtype(), self.weight.device())?.broadcast_mul(&self.weight.unsqueeze(0)?)?;
        affine_rows(&normalized, &scale, &self.bias)
    }
}

impl Module for LayerNormNd {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        from_rows(&self.forward_rows(&to_rows(xs)?)?, (b, h, w, c))
    }
}

/// `[B, C, H, W]` → pixel rows `[B·H·W, C]`.
fn to_rows(xs: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = xs.dims4()?;
    xs.permute((0, 2, 3, 1))?.reshape((b * h * w, c))
}

/// Pixel rows `[B·H·W, C]` → `[B, C, H, W]`.
fn from_rows(rows: &Tensor, (b, h, w, c): (usize, usize, usize, usize)) -> candle_core::Result<Tensor> {
    rows.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?.contiguous()
}

/// `x @ weight + bias` for rows `[N, C_in]`, `weight` `[C_in, C_out]`, `bias` `[C_out]`, as one
/// matrix product `[x | 1] @ [weight; bias]` (see the module docs for why).
fn affine_rows(rows: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    let ones = Tensor::ones((rows.dim(0)?, 1), rows.dtype(), rows.device())?;
    Tensor::cat(&[rows, &ones], 1)?.matmul(&Tensor::cat(&[weight, &bias.unsqueeze(0)?], 0)?)
}

/// He (Kaiming normal) init with leaky-ReLU slope 0.01, as `InitWeights_He(1e-2)`.
fn he_normal(fan_in: usize) -> Init {
    let gain = (2.0 / (1.0 + 0.01f64 * 0.01)).sqrt();
    Init::Randn {
        mean: 0.0,
        stdev: gain / (fan_in as f64).sqrt(),
    }
}

/// ConvTranspose2d with kernel 2 and stride 2: weight `[in, out, 2, 2]`, bias `[out]`.
#[derive(Debug, Clone)]
struct UpConv {
    weight: Tensor,
    bias: Tensor,
}

impl UpConv {
    fn new(c_in: usize, c_out: usize, vb: VarBuilder) -> Result<Self> {
        // torch's fan_in for a transposed conv weight [in, out, k, k] is out·k·k.
        let weight = vb.get_with_hints((c_in, c_out, 2, 2), "weight", he_normal(c_out * 4))?;
        Ok(Self {
            weight,
            bias: vb.get_with_hints(c_out, "bias", Init::Const(0.0))?,
        })
    }
}

impl UpConv {
    /// Pixel rows of a `b × h × w` map → the rows of the `b × 2h × 2w` output.
    fn forward_rows(&self, rows: &Tensor, (b, h, w): (usize, usize, usize)) -> candle_core::Result<Tensor> {
        let (c_in, c_out) = (self.weight.dim(0)?, self.weight.dim(1)?);
        // y[b, 2i+a, 2j+e, o] = bias[o] + Σ_c x[b, i, j, c] · W[c, o, a, e]: columns in (a, e, o) order.
        let weight = self.weight.permute((0, 2, 3, 1))?.reshape((c_in, 4 * c_out))?;
        let bias = self.bias.repeat(4)?;
        affine_rows(rows, &weight, &bias)?
            .reshape((b, h, w, 2, 2, c_out))?
            .permute((0, 1, 3, 2, 4, 5))?
            .reshape((b * 2 * h * 2 * w, c_out))
    }
}

impl Module for UpConv {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (b, _, h, w) = xs.dims4()?;
        let c_out = self.weight.dim(1)?;
        from_rows(&self.forward_rows(&to_rows(xs)?, (b, h, w))?, (b, 2 * h, 2 * w, c_out))
    }
}

/// 1×1 convolution: weight `[out, in, 1, 1]`, bias `[out]`.
#[derive(Debug, Clone)]
struct PointwiseConv {
    weight: Tensor,
    bias: Tensor,
}

impl PointwiseConv {
    fn forward_rows(&self, rows: &Tensor) -> candle_core::Result<Tensor> {
        let (c_out, c_in) = (self.weight.dim(0)?, self.weight.dim(1)?);
        affine_rows(rows, &self.weight.reshape((c_out, c_in))?.t()?, &self.bias)
    }
}

impl Module for PointwiseConv {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (b, _, h, w) = xs.dims4()?;
        from_rows(&self.forward_rows(&to_rows(xs)?)?, (b, h, w, self.weight.dim(0)?))
    }
}

/// Upsamples `[B, E, h, w]` patch features by the patch size to `[B, classes, h·p, w·p]`.
#[derive(Debug, Clone)]
pub struct PatchDecode {
    stages: Vec<(UpConv, LayerNormNd)>,
    head: PointwiseConv,
}

impl PatchDecode {
    /// `patch_size` must be a power of two ≥ 2; channels halve per stage from `embed_dim`.
    ///
    /// # Errors
    ///
    /// On a patch size that is not a power of two, or missing / mis-shaped weights.
    pub fn new(patch_size: usize, embed_dim: usize, out_channels: usize, vb: VarBuilder) -> Result<Self> {
        if patch_size < 2 || !patch_size.is_power_of_two() {
            return Err(Error::Config(format!(
                "PatchDecode needs a power-of-two patch size ≥ 2, got {patch_size}"
            )));
        }
        let n = patch_size.trailing_zeros() as usize;
        let channels: Vec<usize> = (0..=n).map(|i| embed_dim >> i).collect();
        if channels[n] == 0 {
            return Err(Error::Config(format!(
                "embed_dim {embed_dim} cannot be halved {n} times"
            )));
        }
        let decode = vb.pp("decode");
        let stages = (0..n)
            .map(|i| {
                let stage = decode.pp(i);
                Ok((
                    UpConv::new(channels[i], channels[i + 1], stage.pp(0))?,
                    LayerNormNd::new(channels[i + 1], stage.pp(1))?,
                ))
            })
            .collect::<Result<_>>()?;
        let last = decode.pp(n);
        let head = PointwiseConv {
            weight: last.get_with_hints((out_channels, channels[n], 1, 1), "weight", he_normal(channels[n]))?,
            bias: last.get_with_hints(out_channels, "bias", Init::Const(0.0))?,
        };
        Ok(Self { stages, head })
    }
}

impl Module for PatchDecode {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (b, _, mut h, mut w) = xs.dims4()?;
        let mut rows = to_rows(xs)?;
        for (up, norm) in &self.stages {
            rows = norm.forward_rows(&up.forward_rows(&rows, (b, h, w))?)?.gelu_erf()?;
            (h, w) = (2 * h, 2 * w);
        }
        from_rows(&self.head.forward_rows(&rows)?, (b, h, w, self.head.weight.dim(0)?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    #[test]
    fn up_conv_matches_candles_transposed_convolution() {
        let dev = Device::Cpu;
        let weight = Tensor::randn(0f32, 1.0, (3, 5, 2, 2), &dev).expect("w");
        let bias = Tensor::randn(0f32, 1.0, 5, &dev).expect("b");
        let xs = Tensor::randn(0f32, 1.0, (2, 3, 4, 6), &dev).expect("x");
        let ours = UpConv {
            weight: weight.clone(),
            bias: bias.clone(),
        }
        .forward(&xs)
        .expect("ours");
        let theirs = xs
            .conv_transpose2d(&weight, 0, 0, 2, 1)
            .and_then(|y| y.broadcast_add(&bias.reshape((1, 5, 1, 1))?))
            .expect("candle");
        assert_eq!(ours.dims(), &[2, 5, 8, 12]);
        let diff: f32 = (ours - theirs)
            .and_then(|d| d.abs()?.max_all()?.to_scalar())
            .expect("diff");
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn pointwise_conv_matches_conv2d() {
        let dev = Device::Cpu;
        let weight = Tensor::randn(0f32, 1.0, (4, 3, 1, 1), &dev).expect("w");
        let bias = Tensor::zeros(4, DType::F32, &dev).expect("b");
        let xs = Tensor::randn(0f32, 1.0, (1, 3, 5, 5), &dev).expect("x");
        let ours = PointwiseConv {
            weight: weight.clone(),
            bias,
        }
        .forward(&xs)
        .expect("ours");
        let theirs = xs.conv2d(&weight, 0, 1, 1, 1).expect("candle");
        let diff: f32 = (ours - theirs)
            .and_then(|d| d.abs()?.max_all()?.to_scalar())
            .expect("diff");
        assert!(diff < 1e-5, "{diff}");
    }
}
