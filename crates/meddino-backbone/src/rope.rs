//! `RopePositionEmbedding`: 2-D rotary position embedding of the patch tokens.
//!
//! Tables follow `dinov3/layers/rope_position_encoding.py` operation by operation. In
//! reduced precision (MedDINOv3's bf16) every operation is rounded to that precision, as
//! PyTorch does for bf16 tensors, which reproduces the reference tables bit for bit (for
//! grids up to 128×128 patches; beyond, torch's bf16 `arange` itself deviates from exact
//! `i + 0.5`). The tables are built on the host: they are small (HW × head_dim) and
//! per-element rounding is not something device kernels offer.
//!
//! Application: q and k are rounded to the RoPE precision, the prefix tokens (cls and
//! storage) pass unrotated, and each patch token becomes `x·cos + rotate_half(x)·sin` with
//! the NeoX "half" split (dim j pairs with j + head_dim/2), computed in that precision.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

use crate::config::{Config, NormalizeCoords, RopeDtype};
use crate::error::{Error, Result};
use crate::stochastic::StochasticRng;

/// sin and cos tables for one grid, `[H·W, head_dim]`, in the RoPE precision.
#[derive(Debug, Clone)]
pub struct RopeTables {
    /// `sin(angles)`.
    pub sin: Tensor,
    /// `cos(angles)`.
    pub cos: Tensor,
}

/// Training-time coordinate augmentation draws (uniform samples, before `exp`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CoordAugment {
    shift: Option<[f32; 2]>,
    jitter: Option<[f32; 2]>,
    rescale: Option<f32>,
}

/// The rotary embedding: periods and how to build and apply tables.
#[derive(Debug, Clone)]
pub struct RopePositionEmbedding {
    periods: Vec<f32>,
    dtype: RopeDtype,
    normalize: NormalizeCoords,
    shift: Option<f64>,
    jitter: Option<f64>,
    rescale: Option<f64>,
    head_dim: usize,
}

impl RopeDtype {
    /// Rounds an f32 value to this precision (round to nearest even).
    fn round(self, v: f32) -> f32 {
        match self {
            RopeDtype::Bf16 => half::bf16::from_f32(v).to_f32(),
            RopeDtype::Fp16 => half::f16::from_f32(v).to_f32(),
            RopeDtype::Fp32 => v,
        }
    }

    /// [`Self::round`] as a function, for the fused CPU attention.
    pub(crate) fn rounding(self) -> fn(f32) -> f32 {
        match self {
            RopeDtype::Bf16 => |v| half::bf16::from_f32(v).to_f32(),
            RopeDtype::Fp16 => |v| half::f16::from_f32(v).to_f32(),
            RopeDtype::Fp32 => |v| v,
        }
    }

    fn candle(self) -> DType {
        match self {
            RopeDtype::Bf16 => DType::BF16,
            RopeDtype::Fp16 => DType::F16,
            RopeDtype::Fp32 => DType::F32,
        }
    }
}

impl RopePositionEmbedding {
    /// Reads the `periods` buffer under `vb` when present (a checkpoint's values win, rounded
    /// into the RoPE precision as the reference's buffer copy does), else computes it from the
    /// config.
    pub(crate) fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let head_dim = cfg.head_dim();
        let n = head_dim / 4;
        let dtype = cfg.pos_embed_rope_dtype;
        let periods: Vec<f32> = if vb.contains_tensor("periods") {
            vb.get(n, "periods")?.to_dtype(DType::F32)?.to_vec1()?
        } else {
            Self::default_periods(cfg)?
        };
        let periods = periods.into_iter().map(|p| dtype.round(p)).collect();
        Ok(Self {
            periods,
            dtype,
            normalize: cfg.pos_embed_rope_normalize_coords,
            shift: cfg.pos_embed_rope_shift_coords,
            jitter: cfg.pos_embed_rope_jitter_coords,
            rescale: cfg.pos_embed_rope_rescale_coords,
            head_dim,
        })
    }

    /// The periods `_init_weights` computes: `base^(2i / (head_dim/2))`, or
    /// `max · (max/min)^(linspace(0, 1) − 1)`.
    pub(crate) fn default_periods(cfg: &Config) -> Result<Vec<f32>> {
        let n = cfg.head_dim() / 4;
        match (
            cfg.pos_embed_rope_base,
            cfg.pos_embed_rope_min_period,
            cfg.pos_embed_rope_max_period,
        ) {
            (Some(base), _, _) => Ok((0..n)
                .map(|i| base.powf(2.0 * i as f64 / (cfg.head_dim() / 2) as f64) as f32)
                .collect()),
            (None, Some(min), Some(max)) => Ok((0..n)
                .map(|i| {
                    let t = if n > 1 { i as f64 / (n - 1) as f64 } else { 0.0 };
                    (max * (max / min).powf(t - 1.0)) as f32
                })
                .collect()),
            _ => Err(Error::Config("RoPE needs a base or min and max periods".into())),
        }
    }

    /// The periods as used (rounded to the RoPE precision).
    pub fn periods(&self) -> &[f32] {
        &self.periods
    }

    /// Draws this forward pass's coordinate augmentation (training only; none configured
    /// for MedDINOv3).
    pub(crate) fn draw_augment(&self, rng: &StochasticRng) -> Result<CoordAugment> {
        let uniform = |lo: f64, hi: f64, n: usize| -> Result<Vec<f32>> { Ok(rng.uniform(lo, hi, n)) };
        let mut augment = CoordAugment::default();
        if let Some(s) = self.shift {
            let v = uniform(-s, s, 2)?;
            augment.shift = Some([v[0], v[1]]);
        }
        if let Some(j) = self.jitter {
            let v = uniform(-j.ln(), j.ln(), 2)?;
            augment.jitter = Some([v[0], v[1]]);
        }
        if let Some(r) = self.rescale {
            augment.rescale = Some(uniform(-r.ln(), r.ln(), 1)?[0]);
        }
        Ok(augment)
    }

    /// sin and cos values for an `h × w` patch grid, row-major `[h·w][head_dim]`, each value
    /// rounded as the reference's tensor ops round it.
    pub(crate) fn table_values(&self, h: usize, w: usize, augment: CoordAugment) -> (Vec<f32>, Vec<f32>) {
        let r = |v: f32| self.dtype.round(v);
        let (div_h, div_w) = match self.normalize {
            NormalizeCoords::Separate => (h as f32, w as f32),
            NormalizeCoords::Max => (h.max(w) as f32, h.max(w) as f32),
            NormalizeCoords::Min => (h.min(w) as f32, h.min(w) as f32),
        };
        let axis = |n: usize, div: f32| -> Vec<f32> { (0..n).map(|i| r(r(i as f32 + 0.5) / div)).collect() };
        let (coords_h, coords_w) = (axis(h, div_h), axis(w, div_w));
        // Augmentation draws are made in the RoPE precision, as torch.empty(.., dtype) is.
        let exp_r = |v: f32| r(r(v).exp());
        let two_pi = std::f64::consts::TAU as f32;
        let n = self.periods.len();
        let mut sin = Vec::with_capacity(h * w * self.head_dim);
        let mut cos = Vec::with_capacity(h * w * self.head_dim);
        let mut angles = vec![0f32; 2 * n];
        for &ch in &coords_h {
            for &cw in &coords_w {
                let mut c = [r(r(2.0 * ch) - 1.0), r(r(2.0 * cw) - 1.0)];
                if let Some(shift) = augment.shift {
                    c = [r(c[0] + r(shift[0])), r(c[1] + r(shift[1]))];
                }
                if let Some(jitter) = augment.jitter {
                    c = [r(c[0] * exp_r(jitter[0])), r(c[1] * exp_r(jitter[1]))];
                }
                if let Some(rescale) = augment.rescale {
                    let factor = exp_r(rescale);
                    c = [r(c[0] * factor), r(c[1] * factor)];
                }
                for (a, &coord) in c.iter().enumerate() {
                    for (i, &period) in self.periods.iter().enumerate() {
                        angles[a * n + i] = r(r(coord * two_pi) / period);
                    }
                }
                // [h-angles, w-angles] tiled twice.
                for _ in 0..2 {
                    sin.extend(angles.iter().map(|&x| r((x as f64).sin() as f32)));
                    cos.extend(angles.iter().map(|&x| r((x as f64).cos() as f32)));
                }
            }
        }
        (sin, cos)
    }

    /// The tables for an `h × w` grid on `device`, in the RoPE precision.
    ///
    /// # Errors
    ///
    /// On a device error.
    pub fn tables(&self, h: usize, w: usize, device: &Device) -> Result<RopeTables> {
        self.tables_with(h, w, CoordAugment::default(), device)
    }

    pub(crate) fn tables_with(&self, h: usize, w: usize, augment: CoordAugment, device: &Device) -> Result<RopeTables> {
        let (sin, cos) = self.table_values(h, w, augment);
        let shape = (h * w, self.head_dim);
        let dtype = self.dtype.candle();
        Ok(RopeTables {
            sin: Tensor::from_vec(sin, shape, device)?.to_dtype(dtype)?,
            cos: Tensor::from_vec(cos, shape, device)?.to_dtype(dtype)?,
        })
    }

    /// The tables and rounding for the fused CPU attention.
    pub(crate) fn fused<'a>(&self, tables: &'a RopeTables) -> crate::fused::FusedRope<'a> {
        crate::fused::FusedRope {
            sin: &tables.sin,
            cos: &tables.cos,
            dtype: self.dtype,
        }
    }

    /// Rotates the last `h·w` tokens of `xs` (`[B, heads, N, head_dim]`), leaving the prefix
    /// as is, in the RoPE precision; the result has `xs`' dtype.
    pub(crate) fn apply(&self, xs: &Tensor, tables: &RopeTables) -> candle_core::Result<Tensor> {
        let dtype = xs.dtype();
        let xs = xs.to_dtype(self.dtype.candle())?;
        let n = xs.dim(2)?;
        let patches = tables.sin.dim(0)?;
        let prefix = n - patches;
        let rotated = {
            let x = xs.narrow(2, prefix, patches)?;
            let half = self.head_dim / 2;
            let rotate_half = Tensor::cat(
                &[&x.narrow(D::Minus1, half, half)?.neg()?, &x.narrow(D::Minus1, 0, half)?],
                D::Minus1,
            )?;
            (x.broadcast_mul(&tables.cos)? + rotate_half.broadcast_mul(&tables.sin)?)?
        };
        let out = if prefix > 0 {
            Tensor::cat(&[&xs.narrow(2, 0, prefix)?, &rotated], 2)?
        } else {
            rotated
        };
        out.to_dtype(dtype)
    }
}
