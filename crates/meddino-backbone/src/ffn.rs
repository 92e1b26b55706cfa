//! Feed-forward layers: `Mlp` (Linear → exact GELU → Linear) and `SwiGLUFFN`.

use candle_core::{Module, Tensor};
use candle_nn::{linear_b, Linear, VarBuilder};

use crate::config::{Config, FfnLayer};
use crate::error::Result;
use crate::fused::{self, Activation};

/// The block's feed-forward layer, as `ffn_layer` selects.
#[derive(Debug, Clone)]
pub(crate) enum Ffn {
    /// `fc2(gelu(fc1(x)))` with PyTorch's exact (erf) GELU.
    Mlp { fc1: Linear, fc2: Linear },
    /// `w3(silu(w1(x)) · w2(x))`.
    SwiGlu { w1: Linear, w2: Linear, w3: Linear },
}

impl Ffn {
    pub(crate) fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (dim, bias) = (cfg.embed_dim, cfg.ffn_bias);
        let hidden = cfg.ffn_hidden();
        Ok(match cfg.ffn_layer {
            FfnLayer::Mlp => Ffn::Mlp {
                fc1: linear_b(dim, hidden, bias, vb.pp("fc1"))?,
                fc2: linear_b(hidden, dim, bias, vb.pp("fc2"))?,
            },
            _ => Ffn::SwiGlu {
                w1: linear_b(dim, hidden, bias, vb.pp("w1"))?,
                w2: linear_b(dim, hidden, bias, vb.pp("w2"))?,
                w3: linear_b(hidden, dim, bias, vb.pp("w3"))?,
            },
        })
    }
}

impl Module for Ffn {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Ffn::Mlp { fc1, fc2 }
                if fused::applies(
                    [xs, fc1.weight(), fc2.weight()]
                        .into_iter()
                        .chain(fc1.bias())
                        .chain(fc2.bias()),
                ) =>
            {
                let hidden = fused::linear(xs, fc1.weight(), fc1.bias(), Activation::Gelu)?;
                fused::linear(&hidden, fc2.weight(), fc2.bias(), Activation::None)
            }
            Ffn::Mlp { fc1, fc2 } => fc2.forward(&fc1.forward(xs)?.gelu_erf()?),
            Ffn::SwiGlu { w1, w2, w3 } => w3.forward(&(w1.forward(xs)?.silu()? * w2.forward(xs)?)?),
        }
    }
}
