//! `SelfAttention`: fused qkv projection (optionally with DINOv3's masked key bias), RoPE on
//! q and k, softmax attention, output projection.

use candle_core::{Module, Tensor, D};
use candle_nn::{linear_b, Init, Linear, VarBuilder};

use crate::config::Config;
use crate::error::Result;
use crate::flash;
use crate::fused::{self, Activation};
use crate::rope::{RopePositionEmbedding, RopeTables};

/// Multi-head self-attention over `[B, N, D]` tokens.
#[derive(Debug, Clone)]
pub(crate) struct SelfAttention {
    qkv_weight: Tensor,
    qkv_bias: Option<Tensor>,
    /// `LinearKMaskedBias`'s buffer: 1 for q and v, 0 for k. Loaded, never trained.
    bias_mask: Option<Tensor>,
    proj: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    pub(crate) fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.embed_dim;
        let qkv = vb.pp("qkv");
        let qkv_weight = qkv.get_with_hints((3 * dim, dim), "weight", Init::Randn { mean: 0.0, stdev: 0.02 })?;
        let qkv_bias = if cfg.qkv_bias {
            Some(qkv.get_with_hints(3 * dim, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        let bias_mask = if cfg.qkv_bias && cfg.mask_k_bias {
            let mask = if qkv.contains_tensor("bias_mask") {
                qkv.get(3 * dim, "bias_mask")?
            } else {
                // What upstream's init_weights writes: keys get no bias.
                let ones = Tensor::ones(dim, qkv_weight.dtype(), qkv_weight.device())?;
                Tensor::cat(&[&ones, &ones.zeros_like()?, &ones], 0)?
            };
            Some(mask.detach())
        } else {
            None
        };
        Ok(Self {
            qkv_weight,
            qkv_bias,
            bias_mask,
            proj: linear_b(dim, dim, cfg.proj_bias, vb.pp("proj"))?,
            num_heads: cfg.num_heads,
            head_dim: cfg.head_dim(),
        })
    }

    /// The `bias_mask` buffer, when the layer has one.
    pub(crate) fn bias_mask(&self) -> Option<&Tensor> {
        self.bias_mask.as_ref()
    }

    /// `xs`: `[B, N, D]`; `rope`: the module and this grid's tables (rotating the last H·W
    /// tokens).
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        rope: Option<(&RopePositionEmbedding, &RopeTables)>,
    ) -> candle_core::Result<Tensor> {
        let (b, n, d) = xs.dims3()?;
        let bias = match (&self.qkv_bias, &self.bias_mask) {
            (Some(bias), Some(mask)) => Some((bias * mask)?),
            (bias, _) => bias.clone(),
        };
        let parameters = [&self.qkv_weight, self.proj.weight()].into_iter();
        if fused::applies(parameters.chain(bias.as_ref()).chain(self.proj.bias()).chain([xs])) {
            let qkv = fused::linear(xs, &self.qkv_weight, bias.as_ref(), Activation::None)?;
            let out = fused::attention(&qkv, self.num_heads, rope.map(|(module, tables)| module.fused(tables)))?;
            return fused::linear(&out, self.proj.weight(), self.proj.bias(), Activation::None);
        }
        let mut qkv = xs.broadcast_matmul(&self.qkv_weight.t()?)?;
        if let Some(bias) = &bias {
            qkv = qkv.broadcast_add(bias)?;
        }
        // [B, N, 3, heads, head_dim] → [3, B, heads, N, head_dim]
        let qkv = qkv
            .reshape((b, n, 3, self.num_heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        let (mut q, mut k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?.contiguous()?);
        if let Some((module, tables)) = rope {
            q = module.apply(&q, tables)?;
            k = module.apply(&k, tables)?;
        }
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        if flash::applies(&q, &k, &v) {
            let out = flash::flash_attention(&q, &k, &v, scale)?;
            return self.proj.forward(&out.transpose(1, 2)?.reshape((b, n, d))?);
        }
        let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?;
        let weights = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let out = weights.matmul(&v)?.transpose(1, 2)?.reshape((b, n, d))?;
        self.proj.forward(&out)
    }
}
