//! Launching `kernels/attention.cu` on candle's CUDA device.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{builder_arg, CudaStorage, DType, Layout, Shape, WithDType};

use super::Geometry;

/// Module name under which candle caches the loaded PTX.
const MODULE: &str = "meddino_attention";
/// Threads per block of the row kernels: `ROWS` in the kernel file.
const ROWS: u32 = 64;

/// One block per 64 rows of each of the `bh` matrices.
fn row_blocks(g: &Geometry) -> candle_core::Result<LaunchConfig> {
    // The grid's y dimension holds batch × heads; x the row blocks.
    if g.bh > 65_535 || g.n > i32::MAX as usize {
        candle_core::bail!(
            "flash_attention: {} batch × heads or {} tokens exceed the kernels' grid",
            g.bh,
            g.n
        );
    }
    Ok(LaunchConfig {
        grid_dim: ((g.n as u32).div_ceil(ROWS), g.bh as u32, 1),
        block_dim: (ROWS, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Whether the forward runs on tensor cores (bf16 with a head size the kernel has: its
/// shared memory holds D ≤ 64), unless `MEDDINO_FLASH_TENSOR_CORES=0` asks for the scalar
/// kernel (read at every call, so that one process can compare the two).
fn uses_tensor_cores(dtype: DType, d: usize) -> bool {
    dtype == DType::BF16
        && matches!(d, 32 | 64)
        && std::env::var("MEDDINO_FLASH_TENSOR_CORES").map_or(true, |v| v != "0")
}

fn suffix(dtype: DType) -> candle_core::Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        other => candle_core::bail!("flash_attention on CUDA takes f32 or bf16 (got {other:?})"),
    })
}

/// A device view of a contiguous input, starting at its layout's offset.
fn view<'a, T: CudaDType>(storage: &'a CudaStorage, layout: &Layout) -> candle_core::Result<CudaView<'a, T>> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(storage.as_cuda_slice::<T>()?.slice(a..b)),
        None => candle_core::bail!("flash_attention: inputs must be contiguous"),
    }
}

/// Forward: the f32 buffer `[O | lse2]`.
pub(super) fn forward(g: &Geometry, inputs: [(&CudaStorage, &Layout); 3]) -> candle_core::Result<(CudaStorage, Shape)> {
    fn run<T: CudaDType + WithDType>(
        g: &Geometry,
        inputs: [(&CudaStorage, &Layout); 3],
    ) -> candle_core::Result<CudaStorage> {
        let device = inputs[0].0.device().clone();
        let [q, k, v] = [0, 1, 2].map(|i| view::<T>(inputs[i].0, inputs[i].1));
        let (q, k, v) = (q?, k?, v?);
        let out = device.alloc_zeros::<f32>(g.saved_len())?;
        let tensor_cores = uses_tensor_cores(T::DTYPE, g.d);
        let name = if tensor_cores {
            format!("attention_forward_tc_bf16_d{}", g.d)
        } else {
            format!("attention_forward_{}_d{}", suffix(T::DTYPE)?, g.d)
        };
        let func = device.get_or_load_custom_func(&name, MODULE, crate::kernels::ATTENTION)?;
        let mut builder = func.builder();
        builder.arg(&q);
        builder.arg(&k);
        builder.arg(&v);
        builder.arg(&out);
        let (bh, n, scale_log2) = (g.bh as i32, g.n as i32, g.scale_log2());
        builder_arg!(builder, bh, n, scale_log2);
        let config = if tensor_cores {
            // 4 warps of 16 rows: the same 64 rows per block.
            LaunchConfig {
                block_dim: (128, 1, 1),
                ..row_blocks(g)?
            }
        } else {
            row_blocks(g)?
        };
        // SAFETY: each block reads rows of q, k, v inside [bh, n, d] (the inputs' sizes) and
        // writes its rows of O and lse2 inside `out`, allocated with BH·N·D + BH·N elements.
        unsafe { builder.launch(config) }.w()?;
        Ok(f32::wrap_cuda_slice(out, device))
    }
    let storage = match inputs[0].0.dtype() {
        DType::F32 => run::<f32>(g, inputs)?,
        DType::BF16 => run::<half::bf16>(g, inputs)?,
        other => candle_core::bail!("flash_attention on CUDA takes f32 or bf16 (got {other:?})"),
    };
    Ok((storage, Shape::from(g.saved_len())))
}

/// Backward: the f32 buffer `[dq | dk | dv]`.
pub(super) fn backward(
    g: &Geometry,
    inputs: [(&CudaStorage, &Layout); 3],
    saved: (&CudaStorage, &Layout),
    grad: (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)> {
    fn run<T: CudaDType + WithDType>(
        g: &Geometry,
        inputs: [(&CudaStorage, &Layout); 3],
        saved: (&CudaStorage, &Layout),
        grad: (&CudaStorage, &Layout),
    ) -> candle_core::Result<CudaStorage> {
        let device = inputs[0].0.device().clone();
        let [q, k, v] = [0, 1, 2].map(|i| view::<T>(inputs[i].0, inputs[i].1));
        let (q, k, v) = (q?, k?, v?);
        let saved = view::<f32>(saved.0, saved.1)?;
        let grad = view::<f32>(grad.0, grad.1)?;
        let (out_len, rows) = (g.out_len(), g.bh * g.n);
        if saved.len() != g.saved_len() || grad.len() != out_len {
            candle_core::bail!(
                "flash_attention backward: saved {} / gradient {} elements, expected {} / {out_len}",
                saved.len(),
                grad.len(),
                g.saved_len()
            );
        }
        let (o, lse2) = (saved.slice(0..out_len), saved.slice(out_len..));

        let deltas = device.alloc_zeros::<f32>(rows)?;
        let func =
            device.get_or_load_custom_func(&format!("attention_delta_d{}", g.d), MODULE, crate::kernels::ATTENTION)?;
        let mut builder = func.builder();
        builder.arg(&grad);
        builder.arg(&o);
        builder.arg(&deltas);
        let rows_arg = rows as i64;
        builder_arg!(builder, rows_arg);
        let threads = 256u32;
        let config = LaunchConfig {
            grid_dim: ((rows as u32).div_ceil(threads), 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: one thread per row reads D values of dO and O and writes one delta, all
        // inside buffers of BH·N·D and BH·N elements.
        unsafe { builder.launch(config) }.w()?;

        let mut out = device.alloc_zeros::<f32>(3 * out_len)?;
        let suffix = suffix(T::DTYPE)?;
        let (n, scale_log2, scale) = (g.n as i32, g.scale_log2(), g.scale);
        for (part, kernel) in ["grad_q", "grad_k", "grad_v"].into_iter().enumerate() {
            let name = format!("attention_{kernel}_{suffix}_d{}", g.d);
            let func = device.get_or_load_custom_func(&name, MODULE, crate::kernels::ATTENTION)?;
            let mut target = out.slice_mut(part * out_len..(part + 1) * out_len);
            let mut builder = func.builder();
            builder.arg(&q);
            builder.arg(&k);
            builder.arg(&v);
            builder.arg(&lse2);
            builder.arg(&grad);
            builder.arg(&deltas);
            builder.arg(&mut target);
            builder_arg!(builder, n, scale_log2, scale);
            // SAFETY: each block reads rows inside the [bh, n, d] inputs, lse2 and deltas
            // (BH·N each), and writes its rows of one BH·N·D part of `out`.
            unsafe { builder.launch(row_blocks(g)?) }.w()?;
        }
        Ok(f32::wrap_cuda_slice(out, device))
    }
    let storage = match inputs[0].0.dtype() {
        DType::F32 => run::<f32>(g, inputs, saved, grad)?,
        DType::BF16 => run::<half::bf16>(g, inputs, saved, grad)?,
        other => candle_core::bail!("flash_attention on CUDA takes f32 or bf16 (got {other:?})"),
    };
    Ok((storage, Shape::from(3 * g.out_len())))
}
