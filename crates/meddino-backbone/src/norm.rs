//! LayerNorm and RMSNorm written from differentiable tensor ops.
//!
//! candle-nn's fused LayerNorm/RMSNorm kernels have no backward and silently cut the
//! autograd graph, so training would leave everything before them untouched; these
//! composite versions are exact and keep gradients flowing.

use candle_core::{DType, Module, Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::config::NormLayer;
use crate::error::Result;

/// A normalisation over the last axis, as `norm_layer` selects.
#[derive(Debug, Clone)]
pub(crate) enum Norm {
    LayerNorm { weight: Tensor, bias: Tensor, eps: f64 },
    RmsNorm { weight: Tensor, eps: f64 },
}

impl Norm {
    /// `weight` (and `bias`) of width `dim` under `vb`.
    pub(crate) fn new(kind: NormLayer, dim: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        Ok(match kind {
            NormLayer::RmsNorm => Norm::RmsNorm {
                weight,
                eps: kind.eps(),
            },
            NormLayer::LayerNorm | NormLayer::LayerNormBf16 => Norm::LayerNorm {
                weight,
                bias: vb.get_with_hints(dim, "bias", Init::Const(0.0))?,
                eps: kind.eps(),
            },
        })
    }
}

/// LayerNorm over the last axis, `(x − μ) / sqrt(σ² + eps) · weight + bias` with the
/// biased variance, from differentiable ops (statistics in f32 for reduced-precision
/// inputs, as torch computes them).
///
/// # Errors
///
/// When `weight`/`bias` do not broadcast against the last axis of `xs`.
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    if crate::fused::applies([xs, weight, bias]) {
        return crate::fused::layer_norm(xs, weight, bias, eps);
    }
    let dtype = xs.dtype();
    let xs = at_least_f32(xs)?;
    let centered = xs.broadcast_sub(&xs.mean_keepdim(D::Minus1)?)?;
    let variance = centered.sqr()?.mean_keepdim(D::Minus1)?;
    // Scale and shift in the statistics' precision too, whatever the weights' dtype.
    centered
        .broadcast_div(&(variance + eps)?.sqrt()?)?
        .broadcast_mul(&weight.to_dtype(xs.dtype())?)?
        .broadcast_add(&bias.to_dtype(xs.dtype())?)?
        .to_dtype(dtype)
}

/// Statistics in f32 at least, as torch does for reduced-precision inputs.
fn at_least_f32(xs: &Tensor) -> candle_core::Result<Tensor> {
    if xs.dtype() == DType::F64 {
        Ok(xs.clone())
    } else {
        xs.to_dtype(DType::F32)
    }
}

impl Module for Norm {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Norm::LayerNorm { weight, bias, eps } => layer_norm(xs, weight, bias, *eps),
            Norm::RmsNorm { weight, eps } => {
                let x = at_least_f32(xs)?;
                let mean_square = x.sqr()?.mean_keepdim(D::Minus1)?;
                x.broadcast_div(&(mean_square + *eps)?.sqrt()?)?
                    .broadcast_mul(&weight.to_dtype(x.dtype())?)?
                    .to_dtype(xs.dtype())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn layer_norm_matches_the_formula_and_has_gradients() {
        let dev = Device::Cpu;
        let xs = candle_core::Var::from_tensor(&Tensor::new(&[[1f32, 2.0, 4.0], [0.0, -1.0, 3.0]], &dev).expect("x"))
            .expect("var");
        let norm = Norm::LayerNorm {
            weight: Tensor::new(&[1f32, 2.0, 0.5], &dev).expect("w"),
            bias: Tensor::new(&[0f32, 1.0, 0.0], &dev).expect("b"),
            eps: 1e-6,
        };
        let out = norm.forward(xs.as_tensor()).expect("forward");
        let row: Vec<f32> = out.get(0).and_then(|r| r.to_vec1()).expect("row");
        // mean 7/3, var 14/9: (x − mean)/sqrt(var + eps) · w + b
        let (mean, std) = (7.0f32 / 3.0, (14.0f32 / 9.0 + 1e-6).sqrt());
        let expected = [
            (1.0 - mean) / std,
            (2.0 - mean) / std * 2.0 + 1.0,
            (4.0 - mean) / std * 0.5,
        ];
        for (a, b) in row.iter().zip(expected) {
            assert!((a - b).abs() < 1e-5, "{row:?} vs {expected:?}");
        }
        let grads = out
            .sqr()
            .and_then(|o| o.sum_all())
            .and_then(|l| l.backward())
            .expect("backward");
        assert!(grads.get(xs.as_tensor()).is_some(), "the graph reaches the input");
    }

    #[test]
    fn reduced_precision_weights_normalise_in_f32() {
        let dev = Device::Cpu;
        let xs = Tensor::new(&[[1f32, 2.0, 4.0]], &dev)
            .and_then(|x| x.to_dtype(DType::F16))
            .expect("x");
        let half = |v: &[f32]| Tensor::new(v, &dev).and_then(|t| t.to_dtype(DType::F16)).expect("half");
        for norm in [
            Norm::LayerNorm {
                weight: half(&[1.0, 2.0, 0.5]),
                bias: half(&[0.0, 1.0, 0.0]),
                eps: 1e-6,
            },
            Norm::RmsNorm {
                weight: half(&[1.0, 2.0, 0.5]),
                eps: 1e-6,
            },
        ] {
            let out = norm.forward(&xs).expect("f16 weights and input");
            assert_eq!(out.dtype(), DType::F16, "{norm:?}");
        }
    }
}
