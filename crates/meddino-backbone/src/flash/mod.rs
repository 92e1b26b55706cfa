//! Memory-efficient softmax attention, `softmax(q·kᵀ·scale)·v`, as a candle op whose forward
//! and backward never store the N×N matrices (the FlashAttention-2 recurrences: the forward
//! keeps each row's log-sum-exp, the backward recomputes the probabilities from it).
//!
//! On CUDA it runs `kernels/attention.cu`; the CPU implementation computes the same
//! quantities row by row, for tests and for graphs that move between devices. Everything is
//! computed in f32, whatever the input dtype (f32 or bf16): the forward returns O in the
//! input dtype, the gradients come back in it too.
//!
//! At 2d_896 a ViT-B sees 3,137 tokens: the composite path's f32 attention probabilities
//! alone take 472 MB per image per block, kept for the backward pass; this op keeps O (f32)
//! and one f32 per query row.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Storage, Tensor};

/// Head dimensions the kernels are instantiated for.
pub const HEAD_DIMS: [usize; 3] = [32, 64, 128];

/// Sizes of one call: `bh` = batch × heads rows of `n` tokens of `d` channels.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Geometry {
    bh: usize,
    n: usize,
    d: usize,
    scale: f32,
}

impl Geometry {
    /// log2(e)·scale: scores are kept in the log2 domain, so that exp2 does what exp would.
    fn scale_log2(&self) -> f32 {
        self.scale * std::f32::consts::LOG2_E
    }

    /// Elements of O (and of each of dq, dk, dv).
    fn out_len(&self) -> usize {
        self.bh * self.n * self.d
    }

    /// Elements of the forward's buffer `[O | lse2]`: O and one log-sum-exp per query row.
    fn saved_len(&self) -> usize {
        self.out_len() + self.bh * self.n
    }
}

/// Whether [`flash_attention`] takes these inputs: equal `[B, H, N, D]` shapes with D in
/// [`HEAD_DIMS`], f32 or bf16.
pub fn supports(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    let same = q.dims() == k.dims() && q.dims() == v.dims() && q.dtype() == k.dtype() && q.dtype() == v.dtype();
    same && q.rank() == 4
        && HEAD_DIMS.contains(&q.dims()[3])
        && matches!(q.dtype(), DType::F32 | DType::BF16)
        && q.dims()[2] > 0
}

/// Whether the backbone's attention takes this op for these inputs: on a GPU, for the shapes
/// and dtypes it [`supports`], unless `MEDDINO_FLASH_ATTENTION=0` asks for the composite path
/// (to compare the two). The CPU keeps its own paths (the fused inference kernels, and the
/// composite under autograd), which are faster there.
pub fn applies(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    let enabled = *ENABLED.get_or_init(|| std::env::var("MEDDINO_FLASH_ATTENTION").map_or(true, |v| v != "0"));
    enabled && q.device().is_cuda() && supports(q, k, v)
}

/// `softmax(q·kᵀ·scale)·v` over `[B, H, N, D]` tensors, differentiable in q, k and v.
///
/// # Errors
///
/// When the inputs are not as [`supports`] requires (the message names the shapes and
/// dtypes), or as the device fails.
pub fn flash_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    if !supports(q, k, v) {
        candle_core::bail!(
            "flash_attention takes equal [B, H, N, D] f32 or bf16 tensors with D in {HEAD_DIMS:?} \
             (got q {:?} {:?}, k {:?} {:?}, v {:?} {:?})",
            q.dims(),
            q.dtype(),
            k.dims(),
            k.dtype(),
            v.dims(),
            v.dtype()
        );
    }
    let (b, h, n, d) = q.dims4()?;
    let geometry = Geometry {
        bh: b * h,
        n,
        d,
        scale: scale as f32,
    };
    let flat = q
        .contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, FlashAttention { geometry })?;
    flat.narrow(0, 0, geometry.out_len())?
        .reshape((b, h, n, d))?
        .to_dtype(q.dtype())
}

/// The op in the graph: returns one f32 buffer `[O (BH·N·D) | lse2 (BH·N)]`, lse2 being each
/// query row's log2-sum-exp2 of its scaled scores.
#[derive(Debug, Clone)]
struct FlashAttention {
    geometry: Geometry,
}

/// The f32 data of a contiguous CPU storage (bf16 widened).
fn cpu_f32(storage: &CpuStorage, layout: &Layout) -> candle_core::Result<Vec<f32>> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("flash_attention: inputs must be contiguous")
    };
    Ok(match storage {
        CpuStorage::F32(data) => data[start..end].to_vec(),
        CpuStorage::BF16(data) => data[start..end].iter().map(|x| x.to_f32()).collect(),
        other => candle_core::bail!("flash_attention takes f32 or bf16 (got {:?})", other.dtype()),
    })
}

/// A tensor's contiguous f32 CPU data.
fn tensor_f32(tensor: &Tensor) -> candle_core::Result<Vec<f32>> {
    let (storage, layout) = tensor.storage_and_layout();
    match &*storage {
        Storage::Cpu(storage) => cpu_f32(storage, layout),
        _ => candle_core::bail!("flash_attention backward: a saved tensor is not on the CPU"),
    }
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "flash_attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        lq: &Layout,
        k: &CpuStorage,
        lk: &Layout,
        v: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let flat = cpu::forward(&self.geometry, &cpu_f32(q, lq)?, &cpu_f32(k, lk)?, &cpu_f32(v, lv)?);
        let len = flat.len();
        Ok((CpuStorage::F32(flat), Shape::from(len)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        lq: &Layout,
        k: &candle_core::CudaStorage,
        lk: &Layout,
        v: &candle_core::CudaStorage,
        lv: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward(&self.geometry, [(q, lq), (k, lk), (v, lv)])
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.geometry;
        let op = FlashAttentionBackward {
            geometry: g,
            saved: res.contiguous()?,
            grad: grad.narrow(0, 0, g.out_len())?.to_dtype(DType::F32)?.contiguous()?,
        };
        // One f32 buffer [dq | dk | dv].
        let flat = q.apply_op3_no_bwd(k, v, &op)?;
        let part = |index: usize, like: &Tensor| -> candle_core::Result<Tensor> {
            flat.narrow(0, index * g.out_len(), g.out_len())?
                .reshape(like.shape())?
                .to_dtype(like.dtype())
        };
        Ok((Some(part(0, q)?), Some(part(1, k)?), Some(part(2, v)?)))
    }
}

/// The backward pass as an op of its own over (q, k, v), the forward's buffer and the
/// upstream gradient of O carried in it, so that CPU and CUDA share one path.
#[derive(Debug, Clone)]
struct FlashAttentionBackward {
    geometry: Geometry,
    /// The forward's `[O | lse2]`, f32.
    saved: Tensor,
    /// dO, f32 `[BH·N·D]`.
    grad: Tensor,
}

impl CustomOp3 for FlashAttentionBackward {
    fn name(&self) -> &'static str {
        "flash_attention_backward"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        lq: &Layout,
        k: &CpuStorage,
        lk: &Layout,
        v: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let flat = cpu::backward(
            &self.geometry,
            [&cpu_f32(q, lq)?, &cpu_f32(k, lk)?, &cpu_f32(v, lv)?],
            &tensor_f32(&self.saved)?,
            &tensor_f32(&self.grad)?,
        );
        let len = flat.len();
        Ok((CpuStorage::F32(flat), Shape::from(len)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        lq: &Layout,
        k: &candle_core::CudaStorage,
        lk: &Layout,
        v: &candle_core::CudaStorage,
        lv: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (saved, ls) = self.saved.storage_and_layout();
        let (grad, lg) = self.grad.storage_and_layout();
        let (Storage::Cuda(saved), Storage::Cuda(grad)) = (&*saved, &*grad) else {
            candle_core::bail!("flash_attention backward: saved tensors not on the GPU")
        };
        cuda::backward(&self.geometry, [(q, lq), (k, lk), (v, lv)], (saved, ls), (grad, lg))
    }
}

#[cfg(test)]
mod tests;
