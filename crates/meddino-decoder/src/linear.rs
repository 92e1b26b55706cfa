//! `nn.Linear` and the weight initialisations PyTorch modules use, shared by the deformable
//! attention's projections here and by the layers of the `meddino-baselines` crate.

use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::error::Result;

/// Initialisation of a convolution or linear weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightInit {
    /// He normal, `kaiming_normal_(a)` with fan-in: std = √(2 / (1 + a²)) / √fan_in
    /// (nnU-Net's `InitWeights_He(1e-2)`).
    HeNormal {
        /// Negative slope of the following leaky ReLU.
        a: f64,
    },
    /// Glorot, `xavier_uniform_`: bound √(6 / (fan_in + fan_out)).
    XavierUniform,
    /// `normal_(0, std)` (also `trunc_normal_(std)` with the default ±2 cut-off, which lies
    /// far beyond the small standard deviations used).
    Normal {
        /// Standard deviation.
        std: f64,
    },
    /// All zeros (`constant_(0)`).
    Zeros,
    /// PyTorch's default for `nn.Conv2d`/`nn.Linear`/`nn.ConvTranspose2d`:
    /// `kaiming_uniform_(a=√5)`, i.e. bound 1/√fan_in, and the bias uniform in the same
    /// bound. The other initialisers zero the bias.
    TorchDefault,
}

impl WeightInit {
    /// The candle initialiser for a weight with these fans.
    pub fn init(self, fan_in: usize, fan_out: usize) -> Init {
        match self {
            WeightInit::HeNormal { a } => Init::Randn {
                mean: 0.0,
                stdev: (2.0 / (1.0 + a * a)).sqrt() / (fan_in as f64).sqrt(),
            },
            WeightInit::XavierUniform => {
                let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
                Init::Uniform { lo: -bound, up: bound }
            }
            WeightInit::TorchDefault => {
                let bound = 1.0 / (fan_in as f64).sqrt();
                Init::Uniform { lo: -bound, up: bound }
            }
            WeightInit::Normal { std } => Init::Randn { mean: 0.0, stdev: std },
            WeightInit::Zeros => Init::Const(0.0),
        }
    }

    /// The candle initialiser of the bias that goes with this weight initialisation.
    pub fn bias_init(self, fan_in: usize) -> Init {
        match self {
            WeightInit::TorchDefault => self.init(fan_in, 0),
            WeightInit::HeNormal { .. } | WeightInit::XavierUniform | WeightInit::Normal { .. } | WeightInit::Zeros => {
                Init::Const(0.0)
            }
        }
    }
}

/// `nn.Linear` (`weight` `[out, in]`, `bias` `[out]`), applied to the last axis of any rank.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Reads or creates the weights.
    ///
    /// # Errors
    ///
    /// When a tensor is missing or mis-shaped in `vb`.
    pub fn new(in_features: usize, out_features: usize, bias: bool, init: WeightInit, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(
            (out_features, in_features),
            "weight",
            init.init(in_features, out_features),
        )?;
        let bias = if bias {
            Some(vb.get_with_hints(out_features, "bias", init.bias_init(in_features))?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let dims = xs.dims().to_vec();
        let features = *dims.last().unwrap_or(&0);
        let rows = xs.reshape(((), features))?;
        let mut out = rows.matmul(&self.weight.t()?)?;
        if let Some(bias) = &self.bias {
            out = out.broadcast_add(bias)?;
        }
        let mut shape = dims;
        if let Some(last) = shape.last_mut() {
            *last = self.weight.dim(0)?;
        }
        out.reshape(shape)
    }
}
