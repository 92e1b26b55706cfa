//! `PatchEmbed`: a stride-p convolution turning `[B, C, H, W]` into `[B, H/p · W/p, D]`.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Init, VarBuilder};

use crate::config::Config;
use crate::error::{Error, Result};

/// The patch projection.
#[derive(Debug, Clone)]
pub(crate) struct PatchEmbed {
    proj: Conv2d,
    patch_size: usize,
    in_chans: usize,
}

impl PatchEmbed {
    pub(crate) fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (p, c, d) = (cfg.patch_size, cfg.in_chans, cfg.embed_dim);
        let bound = (1.0 / (c * p * p) as f64).sqrt();
        let init = Init::Uniform { lo: -bound, up: bound };
        let vb = vb.pp("proj");
        let weight = vb.get_with_hints((d, c, p, p), "weight", init)?;
        let bias = vb.get_with_hints(d, "bias", init)?;
        let conv = Conv2dConfig {
            stride: p,
            ..Default::default()
        };
        Ok(Self {
            proj: Conv2d::new(weight, Some(bias), conv),
            patch_size: p,
            in_chans: c,
        })
    }

    /// The patch grid `(h, w)` of an input, checking its shape.
    pub(crate) fn grid(&self, xs: &Tensor) -> Result<(usize, usize)> {
        let (_, c, h, w) = xs
            .dims4()
            .map_err(|_| Error::Input(format!("expected a B×C×H×W image batch, got shape {:?}", xs.dims())))?;
        let p = self.patch_size;
        if c != self.in_chans || h % p != 0 || w % p != 0 || h == 0 || w == 0 {
            return Err(Error::Input(format!(
                "expected {} channels and a height and width that are positive multiples of the patch size {p}, got shape {:?}",
                self.in_chans,
                xs.dims()
            )));
        }
        Ok((h / p, w / p))
    }

    /// `[B, C, H, W]` → `[B, h·w, D]`, tokens row-major.
    pub(crate) fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.proj.forward(xs)?.flatten_from(2)?.transpose(1, 2)
    }
}
