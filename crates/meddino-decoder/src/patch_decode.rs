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
//!
//! At inference on the CPU (weights that track no gradient) the decoder takes a fused path
//! instead: the norm's scale is applied element-wise, and the sub-pixel shuffle, LayerNorm
//! and GELU are one pass per stage.

use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};
use meddino_backbone::fused::{self, math, Activation, WeightLayout};
use rayon::prelude::*;

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

impl PatchDecode {
    /// Whether inference can take the fused CPU path (see `meddino_backbone::fused`).
    fn fused_applies(&self, xs: &Tensor) -> bool {
        let weights = self
            .stages
            .iter()
            .flat_map(|(up, norm)| [&up.weight, &up.bias, &norm.weight, &norm.bias])
            .chain([&self.head.weight, &self.head.bias]);
        fused::applies(std::iter::once(xs).chain(weights))
    }

    /// Inference on the CPU: per stage one matrix product with the bias, then one pass that
    /// moves the 2×2 sub-pixels into place, normalises and applies GELU; then the 1×1 head.
    fn forward_fused(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (b, _, mut h, mut w) = xs.dims4()?;
        let mut rows = to_rows(xs)?.contiguous()?;
        for (up, norm) in &self.stages {
            let (c_in, c_out) = (up.weight.dim(0)?, up.weight.dim(1)?);
            // The weight's own layout `[in, out·2·2]`: columns in (o, a, e) order.
            let weight = up.weight.reshape((c_in, 4 * c_out))?;
            let bias = up.bias.unsqueeze(1)?.repeat((1, 4))?.flatten_all()?;
            let sub_pixels = fused::matmul_bias(&rows, &weight, WeightLayout::InOut, Some(&bias), Activation::None)?;
            rows = shuffle_norm_gelu(&sub_pixels, (b, h, w, c_out), norm)?;
            (h, w) = (2 * h, 2 * w);
        }
        let (c_out, c_in) = (self.head.weight.dim(0)?, self.head.weight.dim(1)?);
        let logits = fused::linear(
            &rows,
            &self.head.weight.reshape((c_out, c_in))?,
            Some(&self.head.bias),
            Activation::None,
        )?;
        from_rows(&logits, (b, h, w, c_out))
    }
}

/// Pixel rows of the `b × 2h × 2w` map from a transposed convolution's sub-pixel rows
/// (`[b·h·w, c·2·2]`, columns in (o, a, e) order), each normalised and through GELU.
fn shuffle_norm_gelu(
    sub_pixels: &Tensor,
    (b, h, w, c): (usize, usize, usize, usize),
    norm: &LayerNormNd,
) -> candle_core::Result<Tensor> {
    let mut out = vec![0f32; b * 4 * h * w * c];
    fused::with_data(sub_pixels, |y| {
        fused::with_data(&norm.weight, |weight| {
            fused::with_data(&norm.bias, |bias| {
                // One task per output image row: row 2i + a of sample s reads input row i.
                out.par_chunks_mut(2 * w * c).enumerate().for_each(|(row, out_row)| {
                    let (sample, i, a) = (row / (2 * h), row % (2 * h) / 2, row % 2);
                    let mut pixel = vec![0f32; c];
                    for (x, out_pixel) in out_row.chunks_exact_mut(c).enumerate() {
                        let (j, e) = (x / 2, x % 2);
                        let src = &y[((sample * h + i) * w + j) * 4 * c..][..4 * c];
                        for (o, value) in pixel.iter_mut().enumerate() {
                            *value = src[o * 4 + a * 2 + e];
                        }
                        math::layer_norm_row(&pixel, weight, bias, norm.eps as f32, out_pixel);
                        math::gelu_in_place(out_pixel);
                    }
                });
                Ok(())
            })
        })
    })?;
    Tensor::from_vec(out, (b * 4 * h * w, c), &candle_core::Device::Cpu)
}

impl Module for PatchDecode {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        if self.fused_applies(xs) {
            return self.forward_fused(xs);
        }
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
    fn fused_inference_matches_the_differentiable_path() {
        let dev = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        let composite =
            PatchDecode::new(4, 16, 3, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).expect("decoder");
        // Random norms and biases too, so every term shows; then the same values as plain
        // tensors, which take the fused path.
        let weights: std::collections::HashMap<String, Tensor> = varmap
            .data()
            .lock()
            .expect("varmap")
            .iter()
            .map(|(name, var)| {
                let value = var.as_tensor().randn_like(0.0, 0.5).expect("random");
                var.set(&value).expect("set");
                (name.clone(), value)
            })
            .collect();
        let fused = PatchDecode::new(4, 16, 3, VarBuilder::from_tensors(weights, DType::F32, &dev)).expect("decoder");
        let xs = Tensor::randn(0f32, 1.0, (2, 16, 3, 5), &dev).expect("x");
        assert!(fused.fused_applies(&xs) && !composite.fused_applies(&xs));
        let (a, b) = (
            composite.forward(&xs).expect("composite"),
            fused.forward(&xs).expect("fused"),
        );
        assert_eq!(b.dims(), &[2, 3, 12, 20]);
        let diff: f32 = (a - b).and_then(|d| d.abs()?.max_all()?.to_scalar()).expect("diff");
        assert!(diff < 1e-4, "{diff}");
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
