//! Multi-head softmax attention straight from the fused qkv projection, with RoPE.
//!
//! Per (sample, head), in parallel: q and k are gathered out of `qkv` and rotated (q also
//! scaled), then blocks of query rows go through scores, softmax and the product with v,
//! which is read in place from `qkv`. Each head's output lands in its columns of `[B, N, D]`,
//! so neither the `[3, B, heads, N, hd]` permutation nor the transpose back is copied.

use candle_core::{DType, Device, Result, Tensor};
use multiversion::multiversion;
use rayon::prelude::*;

use super::gemm::{matmul, MatRef};
use super::{math, with_data};
use crate::config::RopeDtype;

/// Query rows per block: a block's scores (`QUERY_BLOCK × N`) stay in the L2 cache.
const QUERY_BLOCK: usize = 64;

/// RoPE for [`attention`]: the sin/cos tables `[H·W, head_dim]` for the last H·W tokens and
/// the RoPE precision, whose rounding follows every operation as in the composite version.
pub(crate) struct FusedRope<'a> {
    pub sin: &'a Tensor,
    pub cos: &'a Tensor,
    pub dtype: RopeDtype,
}

/// [`FusedRope`]'s tables as f32 values.
struct Tables {
    sin: Vec<f32>,
    cos: Vec<f32>,
    dtype: RopeDtype,
}

/// `softmax(q·kᵀ / √hd) · v` for every head, from `qkv` `[B, N, 3·D]` (q, k, v each `D =
/// heads · hd` wide, head-major); returns `[B, N, D]`.
pub(crate) fn attention(qkv: &Tensor, num_heads: usize, rope: Option<FusedRope>) -> Result<Tensor> {
    let (batch, tokens, three_d) = qkv.dims3()?;
    let dim = three_d / 3;
    if three_d % 3 != 0 || num_heads == 0 || dim % num_heads != 0 {
        return Err(candle_core::Error::Msg(format!(
            "attention: qkv of width {three_d} does not split into 3 × {num_heads} heads"
        )));
    }
    let head_dim = dim / num_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut out = vec![0f32; batch * tokens * dim];
    let heads: Vec<Vec<f32>> = with_data(qkv, |qkv| {
        let tables = match &rope {
            Some(rope) => {
                let values = |t: &Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
                Some(Tables {
                    sin: values(rope.sin)?,
                    cos: values(rope.cos)?,
                    dtype: rope.dtype,
                })
            }
            None => None,
        };
        let patches = tables.as_ref().map_or(0, |t| t.sin.len() / head_dim.max(1));
        if patches > tokens || tables.as_ref().is_some_and(|t| t.sin.len() != t.cos.len()) {
            return Err(candle_core::Error::Msg(format!(
                "attention: RoPE tables for {patches} tokens, {tokens} tokens given"
            )));
        }
        let layout = HeadLayout {
            tokens,
            dim,
            head_dim,
            prefix: tokens - patches,
        };
        (0..batch * num_heads)
            .into_par_iter()
            .map(|task| {
                let (sample, head) = (task / num_heads, task % num_heads);
                let q = layout.gather(qkv, sample, 0, head, tables.as_ref(), scale);
                let k = layout.gather(qkv, sample, 1, head, tables.as_ref(), 1.0);
                let v = MatRef {
                    data: qkv,
                    offset: layout.column(sample, 2, head),
                    rows: tokens,
                    cols: head_dim,
                    row_stride: 3 * dim,
                    col_stride: 1,
                };
                head_attention(&q, &k, v, head_dim)
            })
            .collect()
    })?;
    for (task, head_out) in heads.iter().enumerate() {
        let (sample, head) = (task / num_heads, task % num_heads);
        for (i, row) in head_out.chunks_exact(head_dim).enumerate() {
            let start = (sample * tokens + i) * dim + head * head_dim;
            out[start..start + head_dim].copy_from_slice(row);
        }
    }
    Tensor::from_vec(out, (batch, tokens, dim), &Device::Cpu)
}

/// Where q, k and v of each head sit in a `[B, N, 3·D]` qkv buffer.
struct HeadLayout {
    tokens: usize,
    dim: usize,
    head_dim: usize,
    /// Leading tokens RoPE leaves alone (cls and storage tokens).
    prefix: usize,
}

impl HeadLayout {
    /// Offset of token 0 of `head` in part `part` (0 q, 1 k, 2 v) of `sample`.
    fn column(&self, sample: usize, part: usize, head: usize) -> usize {
        sample * self.tokens * 3 * self.dim + part * self.dim + head * self.head_dim
    }

    /// One head's q or k as a dense `[N, hd]` matrix, rotated and multiplied by `scale`.
    fn gather(
        &self,
        qkv: &[f32],
        sample: usize,
        part: usize,
        head: usize,
        rope: Option<&Tables>,
        scale: f32,
    ) -> Vec<f32> {
        let base = self.column(sample, part, head);
        let mut out = vec![0f32; self.tokens * self.head_dim];
        for (i, row) in out.chunks_exact_mut(self.head_dim).enumerate() {
            let x = &qkv[base + i * 3 * self.dim..][..self.head_dim];
            match rope {
                Some(tables) if i >= self.prefix => {
                    let at = (i - self.prefix) * self.head_dim;
                    let (sin, cos) = (&tables.sin[at..][..self.head_dim], &tables.cos[at..][..self.head_dim]);
                    rotate_row(x, sin, cos, scale, tables.dtype, row);
                }
                Some(tables) => {
                    let round = tables.dtype.rounding();
                    row.iter_mut().zip(x).for_each(|(o, &v)| *o = round(v) * scale);
                }
                None => row.iter_mut().zip(x).for_each(|(o, &v)| *o = v * scale),
            }
        }
        out
    }
}

/// [`rotate`] in `dtype`'s rounding.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma", "x86_64+avx2+fma"))]
fn rotate_row(x: &[f32], sin: &[f32], cos: &[f32], scale: f32, dtype: RopeDtype, out: &mut [f32]) {
    match dtype {
        RopeDtype::Bf16 => rotate(x, sin, cos, scale, math::round_bf16, out),
        RopeDtype::Fp16 => rotate(x, sin, cos, scale, |v| half::f16::from_f32(v).to_f32(), out),
        RopeDtype::Fp32 => rotate(x, sin, cos, scale, |v| v, out),
    }
}

/// `out = (x·cos + rotate_half(x)·sin) · scale` with NeoX halves (dimension j pairs with
/// j ± hd/2, the first half negated), rounding after every operation as RoPE's dtype does.
#[inline(always)]
fn rotate(x: &[f32], sin: &[f32], cos: &[f32], scale: f32, round: impl Fn(f32) -> f32, out: &mut [f32]) {
    let half = x.len() / 2;
    let (x_lo, x_hi) = x.split_at(half);
    let (out_lo, out_hi) = out.split_at_mut(half);
    for j in 0..half {
        let (lo, hi) = (round(x_lo[j]), round(x_hi[j]));
        out_lo[j] = round(round(lo * cos[j]) + round(-hi * sin[j])) * scale;
        out_hi[j] = round(round(hi * cos[half + j]) + round(lo * sin[half + j])) * scale;
    }
}

/// `softmax(q · kᵀ) · v` for one head (q already scaled), `[N, hd]`, in blocks of query rows.
fn head_attention(q: &[f32], k: &[f32], v: MatRef, head_dim: usize) -> Result<Vec<f32>> {
    let tokens = v.rows;
    let keys_t = MatRef::row_major(k, 0, tokens, head_dim).t();
    let mut scores = vec![0f32; QUERY_BLOCK.min(tokens) * tokens];
    let mut out = vec![0f32; tokens * head_dim];
    for start in (0..tokens).step_by(QUERY_BLOCK) {
        let rows = QUERY_BLOCK.min(tokens - start);
        let block = &mut scores[..rows * tokens];
        let queries = MatRef::row_major(q, start * head_dim, rows, head_dim);
        matmul(block, 0, tokens, queries, keys_t, false, false)?;
        block.chunks_exact_mut(tokens).for_each(math::softmax_in_place);
        let weights = MatRef::row_major(block, 0, rows, tokens);
        matmul(&mut out, start * head_dim, head_dim, weights, v, false, false)?;
    }
    Ok(out)
}
