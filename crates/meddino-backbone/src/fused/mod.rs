//! Fused CPU kernels for inference: LayerNorm, linear layers with their bias (and GELU),
//! the residual with LayerScale, and attention with RoPE, each one pass over its data. The
//! decoders use the same kernels (public here for them).
//!
//! Why by hand: candle runs every tensor op as its own pass into a freshly allocated buffer,
//! and on the CPU its element-wise thread pool spins while gemm's rayon pool works. A ViT-B
//! forward at 448² spent as long on bias adds, GELU, softmax, RoPE and layout copies as on
//! its matrix products; no crate offers fused transformer kernels over candle tensors.
//!
//! The modules use these kernels only when every input is a contiguous f32 CPU tensor that
//! tracks no gradient ([`applies`]): training keeps candle's differentiable ops and GPUs
//! keep candle's kernels, so autograd and the CUDA path are untouched. Setting
//! `MEDDINO_FUSED_KERNELS=0` turns them off (for before/after measurements).

mod attention;
mod gemm;
pub mod math;

use std::sync::OnceLock;

use candle_core::{DType, Device, Result, Storage, Tensor};
use rayon::prelude::*;

pub(crate) use attention::{attention, FusedRope};
use gemm::MatRef;

/// Rows handed to one rayon task at least, so tiny rows do not drown in scheduling.
const MIN_ROWS_PER_TASK: usize = 16;

/// Whether the fused kernels may run on these tensors: all contiguous f32 on the CPU, none
/// tracking a gradient, and not turned off by `MEDDINO_FUSED_KERNELS=0`.
pub fn applies<'a>(tensors: impl IntoIterator<Item = &'a Tensor>) -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    let enabled = *ENABLED.get_or_init(|| std::env::var("MEDDINO_FUSED_KERNELS").map_or(true, |v| v != "0"));
    enabled
        && tensors
            .into_iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous() && !t.track_op())
}

/// Runs `f` on the f32 data of a contiguous CPU tensor.
///
/// # Errors
///
/// When the tensor is not a contiguous f32 CPU tensor, or as `f` fails.
pub fn with_data<R>(tensor: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = tensor.storage_and_layout();
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fused kernels need contiguous tensors".into()))?;
    match &*storage {
        Storage::Cpu(cpu) => f(&cpu.as_slice::<f32>()?[start..end]),
        _ => Err(candle_core::Error::Msg("fused kernels run on the CPU only".into())),
    }
}

/// LayerNorm over the last axis (see [`crate::layer_norm`]).
///
/// # Errors
///
/// When the inputs are not contiguous f32 CPU tensors or the widths disagree.
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let width = xs.dim(candle_core::D::Minus1)?;
    let mut out = vec![0f32; xs.elem_count()];
    with_data(xs, |x| {
        with_data(weight, |w| {
            with_data(bias, |b| {
                if w.len() != width || b.len() != width {
                    return Err(candle_core::Error::Msg(format!(
                        "LayerNorm of width {width} with {} weights and {} biases",
                        w.len(),
                        b.len()
                    )));
                }
                out.par_chunks_mut(width)
                    .zip(x.par_chunks(width))
                    .with_min_len(MIN_ROWS_PER_TASK)
                    .for_each(|(o, row)| math::layer_norm_row(row, w, b, eps as f32, o));
                Ok(())
            })
        })
    })?;
    Tensor::from_vec(out, xs.shape(), &Device::Cpu)
}

/// What follows a linear layer's matrix product and bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Nothing.
    None,
    /// PyTorch's exact (erf) GELU.
    Gelu,
}

/// How a weight matrix is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[out, in]`, as `nn.Linear` stores it.
    OutIn,
    /// `[in, out]`.
    InOut,
}

/// `activation(xs · weightᵀ + bias)` over the last axis of `xs`; `weight` is `[out, in]`.
///
/// # Errors
///
/// When the inputs are not contiguous f32 CPU tensors or their shapes disagree.
pub fn linear(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>, activation: Activation) -> Result<Tensor> {
    matmul_bias(xs, weight, WeightLayout::OutIn, bias, activation)
}

/// `activation(xs · W + bias)` over the last axis of `xs`, `W` stored as `layout` says.
///
/// # Errors
///
/// When the inputs are not contiguous f32 CPU tensors or their shapes disagree.
pub fn matmul_bias(
    xs: &Tensor,
    weight: &Tensor,
    layout: WeightLayout,
    bias: Option<&Tensor>,
    activation: Activation,
) -> Result<Tensor> {
    let (out_features, in_features) = match layout {
        WeightLayout::OutIn => weight.dims2()?,
        WeightLayout::InOut => {
            let (i, o) = weight.dims2()?;
            (o, i)
        }
    };
    let mut dims = xs.dims().to_vec();
    match dims.last_mut() {
        Some(last) if *last == in_features => *last = out_features,
        _ => {
            return Err(candle_core::Error::Msg(format!(
                "linear layer of {in_features} inputs applied to {:?}",
                xs.dims()
            )))
        }
    }
    let rows = xs.elem_count() / in_features.max(1);
    let mut out = match bias {
        Some(bias) => with_data(bias, |b| {
            if b.len() != out_features {
                return Err(candle_core::Error::Msg(format!(
                    "linear layer of {out_features} outputs with {} biases",
                    b.len()
                )));
            }
            Ok(b.repeat(rows))
        })?,
        None => vec![0f32; rows * out_features],
    };
    with_data(xs, |x| {
        with_data(weight, |w| {
            let lhs = MatRef::row_major(x, 0, rows, in_features);
            let rhs = match layout {
                WeightLayout::OutIn => MatRef::row_major(w, 0, out_features, in_features).t(),
                WeightLayout::InOut => MatRef::row_major(w, 0, in_features, out_features),
            };
            gemm::matmul(&mut out, 0, out_features, lhs, rhs, bias.is_some(), true)
        })
    })?;
    if activation == Activation::Gelu {
        out.par_chunks_mut(1 << 14).for_each(math::gelu_in_place);
    }
    Tensor::from_vec(out, dims, &Device::Cpu)
}

/// `xs + gamma · branch`, `gamma` over the last axis (LayerScale), or `xs + branch`.
pub(crate) fn scaled_residual(xs: &Tensor, branch: &Tensor, gamma: Option<&Tensor>) -> Result<Tensor> {
    if xs.shape() != branch.shape() {
        return Err(candle_core::Error::ShapeMismatchBinaryOp {
            lhs: xs.shape().clone(),
            rhs: branch.shape().clone(),
            op: "scaled_residual",
        }
        .bt());
    }
    let width = xs.dim(candle_core::D::Minus1)?.max(1);
    // Whole rows per task, so LayerScale's factors line up with each chunk.
    let chunk = width * (4096 / width).max(1);
    // LayerScale's D factors: a copy costs nothing next to the B·N·D pass.
    let gamma = gamma.map(|g| g.flatten_all()?.to_vec1::<f32>()).transpose()?;
    if gamma.as_ref().is_some_and(|g| g.len() != width) {
        return Err(candle_core::Error::Msg(format!(
            "LayerScale of the wrong width for {width}"
        )));
    }
    let mut out = vec![0f32; xs.elem_count()];
    with_data(xs, |x| {
        with_data(branch, |y| {
            out.par_chunks_mut(chunk)
                .zip(x.par_chunks(chunk).zip(y.par_chunks(chunk)))
                .for_each(|(o, (x, y))| math::scaled_residual(x, y, gamma.as_deref(), o));
            Ok(())
        })
    })?;
    Tensor::from_vec(out, xs.shape(), &Device::Cpu)
}
