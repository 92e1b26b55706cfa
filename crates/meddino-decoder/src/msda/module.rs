//! `MSDeformAttn`: projections around the core op (DINOv3 ViT-Adapter's version, with the
//! value width scaled by `ratio`).

use candle_core::{Module, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder};

use super::ms_deform_attn;
use crate::error::{Error, Result};

/// Multi-scale deformable attention with its projections.
#[derive(Debug, Clone)]
pub struct MSDeformAttn {
    sampling_offsets: Linear,
    attention_weights: Linear,
    value_proj: Linear,
    output_proj: Linear,
    n_levels: usize,
    n_heads: usize,
    n_points: usize,
    value_dim: usize,
}

fn xavier(fan_in: usize, fan_out: usize) -> Init {
    let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
    Init::Uniform { lo: -bound, up: bound }
}

fn linear(in_dim: usize, out_dim: usize, init: Init, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
    Ok(Linear::new(
        weight,
        Some(vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?),
    ))
}

impl MSDeformAttn {
    /// `MSDeformAttn(d_model, n_levels, n_heads, n_points, ratio)`: value width
    /// `⌊d_model·ratio⌋`, split over the heads. Fresh weights follow the reference's
    /// initialisation except the sampling-offset bias, which starts at zero here (the
    /// reference seeds a per-head direction pattern; only relevant when training from
    /// scratch).
    ///
    /// # Errors
    ///
    /// When the value width is not divisible by the heads, or a weight is missing or
    /// mis-shaped.
    pub fn new(
        d_model: usize,
        n_levels: usize,
        n_heads: usize,
        n_points: usize,
        ratio: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let value_dim = (d_model as f64 * ratio) as usize;
        if n_heads == 0 || value_dim == 0 || value_dim % n_heads != 0 || n_levels == 0 || n_points == 0 {
            return Err(Error::Config(format!(
                "MSDeformAttn: d_model·ratio = {value_dim} must be a positive multiple of n_heads {n_heads}, with levels \
                 {n_levels} and points {n_points} positive"
            )));
        }
        let samples = n_heads * n_levels * n_points;
        Ok(Self {
            sampling_offsets: linear(d_model, samples * 2, Init::Const(0.0), vb.pp("sampling_offsets"))?,
            attention_weights: linear(d_model, samples, Init::Const(0.0), vb.pp("attention_weights"))?,
            value_proj: linear(d_model, value_dim, xavier(d_model, value_dim), vb.pp("value_proj"))?,
            output_proj: linear(value_dim, d_model, xavier(value_dim, d_model), vb.pp("output_proj"))?,
            n_levels,
            n_heads,
            n_points,
            value_dim,
        })
    }

    /// `query [N, Lq, C]`, `reference_points [N, Lq, L, 2]` ((x, y) in [0, 1]) or
    /// `[N, Lq, L, 4]` (boxes: centre and size), `input_flatten [N, S, C]` with its levels'
    /// `(H, W)` and first rows → `[N, Lq, C]`.
    ///
    /// # Errors
    ///
    /// On shapes that do not fit each other or the module.
    pub fn forward(
        &self,
        query: &Tensor,
        reference_points: &Tensor,
        input_flatten: &Tensor,
        spatial_shapes: &[(usize, usize)],
        level_start_index: &[usize],
    ) -> Result<Tensor> {
        let (n, lq, _) = query.dims3()?;
        let (_, s, _) = input_flatten.dims3()?;
        let (m, l, p) = (self.n_heads, self.n_levels, self.n_points);
        if spatial_shapes.len() != l {
            return Err(Error::Input(format!(
                "MSDeformAttn has {l} levels, got spatial shapes {spatial_shapes:?}"
            )));
        }
        let value = self
            .value_proj
            .forward(input_flatten)?
            .reshape((n, s, m, self.value_dim / m))?;
        let offsets = self.sampling_offsets.forward(query)?.reshape((n, lq, m, l, p, 2))?;
        let weights = candle_nn::ops::softmax(
            &self.attention_weights.forward(query)?.reshape((n, lq, m, l * p))?,
            D::Minus1,
        )?
        .reshape((n, lq, m, l, p))?;
        let device = query.device();
        let dtype = query.dtype();
        let reference = reference_points.to_dtype(dtype)?;
        let locations = match reference.dims() {
            [_, _, levels, 2] if *levels == l => {
                // Offsets are in pixels of each level: divide by (W_l, H_l).
                let normalizer: Vec<f64> = spatial_shapes.iter().flat_map(|&(h, w)| [w as f64, h as f64]).collect();
                let normalizer = Tensor::from_vec(normalizer, (1, 1, 1, l, 1, 2), device)?.to_dtype(dtype)?;
                reference
                    .reshape((n, lq, 1, l, 1, 2))?
                    .broadcast_add(&offsets.broadcast_div(&normalizer)?)?
            }
            [_, _, levels, 4] if *levels == l => {
                let centre = reference.narrow(D::Minus1, 0, 2)?.reshape((n, lq, 1, l, 1, 2))?;
                let size = reference.narrow(D::Minus1, 2, 2)?.reshape((n, lq, 1, l, 1, 2))?;
                centre.broadcast_add(&((offsets / p as f64)?.broadcast_mul(&size)? * 0.5)?)?
            }
            other => {
                return Err(Error::Input(format!(
                    "reference points must be [N, Lq, {l}, 2] or [N, Lq, {l}, 4], got {other:?}"
                )))
            }
        };
        let out = ms_deform_attn(&value, spatial_shapes, level_start_index, &locations, &weights)?;
        Ok(self.output_proj.forward(&out)?)
    }
}
