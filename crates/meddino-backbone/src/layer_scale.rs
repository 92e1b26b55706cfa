//! `LayerScale`: a learned per-channel factor on each residual branch.

use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::error::Result;

/// `x · gamma`, with `gamma` of width D.
#[derive(Debug, Clone)]
pub(crate) struct LayerScale {
    gamma: Tensor,
}

impl LayerScale {
    pub(crate) fn new(dim: usize, init: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            gamma: vb.get_with_hints(dim, "gamma", Init::Const(init))?,
        })
    }
}

impl LayerScale {
    /// The factors, of width D.
    pub(crate) fn gamma(&self) -> &Tensor {
        &self.gamma
    }
}

impl Module for LayerScale {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        xs.broadcast_mul(&self.gamma)
    }
}
