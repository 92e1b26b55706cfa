//! TEMPORARY stand-in for the plans' convolution ops until `baselines::unet::ConvOps` lands.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::baselines::layers::{BatchNorm2d, InstanceNorm2d};
use crate::error::Result;

/// The plans' norm.
#[derive(Debug, Clone)]
pub(crate) enum Norm {
    Instance(InstanceNorm2d),
    Batch(BatchNorm2d),
}

impl Norm {
    pub(crate) fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Norm::Instance(n) => Ok(n.forward(xs)?),
            Norm::Batch(n) => n.forward_t(xs, train),
        }
    }
}

/// The plans' non-linearity.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Nonlin {
    LeakyRelu(f64),
}

impl Nonlin {
    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Nonlin::LeakyRelu(slope) => Ok(candle_nn::ops::leaky_relu(xs, *slope)?),
        }
    }
}

/// The plans' ops.
#[derive(Debug, Clone)]
pub(crate) struct PlanOps {
    pub(crate) conv_bias: bool,
    pub(crate) nonlin: Nonlin,
    pub(crate) instance: bool,
}

impl PlanOps {
    pub(crate) fn norm(&self, channels: usize, vb: VarBuilder) -> Result<Norm> {
        Ok(if self.instance {
            Norm::Instance(InstanceNorm2d::new(channels, 1e-5, vb)?)
        } else {
            Norm::Batch(BatchNorm2d::new(channels, 1e-5, vb)?)
        })
    }
}
