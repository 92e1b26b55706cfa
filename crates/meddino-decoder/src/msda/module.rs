//! `MSDeformAttn`: projections around the core op (DINOv3 ViT-Adapter's version, with the
//! value width scaled by `ratio`).

use candle_core::{Module, Tensor, Var, D};
use candle_nn::VarBuilder;

use super::ms_deform_attn;
use crate::error::{Error, Result};
use crate::linear::{Linear, WeightInit};

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

/// The sampling-offset bias `_reset_parameters` starts from: head `h` points in direction
/// θ_h = 2πh / heads, scaled so its larger component is 1, times `point + 1`; the same for
/// every level. Layout `[heads, levels, points, 2]` flattened.
fn sampling_offset_grid(heads: usize, levels: usize, points: usize) -> Vec<f32> {
    let mut grid = Vec::with_capacity(heads * levels * points * 2);
    for h in 0..heads {
        let theta = (h as f64) * (2.0 * std::f64::consts::PI / heads as f64);
        let (x, y) = (theta.cos(), theta.sin());
        let scale = x.abs().max(y.abs());
        for _ in 0..levels {
            for p in 0..points {
                let k = (p + 1) as f64;
                grid.push((x / scale * k) as f32);
                grid.push((y / scale * k) as f32);
            }
        }
    }
    grid
}

impl MSDeformAttn {
    /// `MSDeformAttn(d_model, n_levels, n_heads, n_points, ratio)`: value width
    /// `⌊d_model·ratio⌋`, split over the heads. Fresh weights follow the reference's
    /// `_reset_parameters`: offsets and attention weights zero, the offset bias the per-head
    /// direction pattern (so a head's points start apart), value and output projections
    /// Xavier-uniform with zero biases. Weights that already exist are read as they are.
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
        let offsets_vb = vb.pp("sampling_offsets");
        let fresh_offsets = !offsets_vb.contains_tensor("bias");
        let sampling_offsets = Linear::new(d_model, samples * 2, true, WeightInit::Zeros, offsets_vb.clone())?;
        if fresh_offsets {
            // Variables are created with a constant or random fill; the pattern is written
            // after (a builder over a file hands out plain tensors, never fresh ones).
            let bias = offsets_vb.get(samples * 2, "bias")?;
            if bias.is_variable() {
                let grid = Tensor::from_vec(
                    sampling_offset_grid(n_heads, n_levels, n_points),
                    samples * 2,
                    bias.device(),
                )?
                .to_dtype(bias.dtype())?;
                Var::from_tensor(&bias)?.set(&grid)?;
            }
        }
        let xavier = WeightInit::XavierUniform;
        Ok(Self {
            sampling_offsets,
            attention_weights: Linear::new(d_model, samples, true, WeightInit::Zeros, vb.pp("attention_weights"))?,
            value_proj: Linear::new(d_model, value_dim, true, xavier, vb.pp("value_proj"))?,
            output_proj: Linear::new(value_dim, d_model, true, xavier, vb.pp("output_proj"))?,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_offset_grid_follows_the_reference_pattern() {
        // 4 heads: θ = 0, π/2, π, 3π/2 → (1, 0), (0, 1), (−1, 0), (0, −1); points ×1, ×2.
        let grid = sampling_offset_grid(4, 1, 2);
        let expected = [1., 0., 2., 0., 0., 1., 0., 2., -1., 0., -2., 0., 0., -1., 0., -2.];
        assert_eq!(grid.len(), expected.len());
        for (g, e) in grid.iter().zip(expected) {
            assert!((g - e).abs() < 1e-6, "{grid:?}");
        }
        // 8 heads: θ = π/4 → (cos, sin) / max = (1, 1).
        let grid = sampling_offset_grid(8, 1, 1);
        assert!((grid[2] - 1.0).abs() < 1e-6 && (grid[3] - 1.0).abs() < 1e-6, "{grid:?}");
    }
}
