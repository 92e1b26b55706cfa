//! Stateless operations (PyTorch's `torch.nn.functional` and friends): bilinear resizing,
//! max pooling with padding, channel dropout, stochastic depth and the token/image layout
//! conversions.

use candle_core::Tensor;
use meddino_backbone::stochastic::StochasticRng;

use crate::error::{Error, Result};

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
    use crate::layers::testutil::close;
    use candle_core::{Device, Var};

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
}
