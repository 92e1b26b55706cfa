//! Launching the CUDA kernels of `kernels/ms_deform_attn.cu` on candle's CUDA device.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{builder_arg, CudaDevice, CudaStorage, DType, Layout, Shape};

use super::Geometry;

/// Module name under which candle caches the loaded PTX.
const MODULE: &str = "meddino_ms_deform_attn";
const THREADS: u32 = 256;

fn launch_config(threads: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((threads as u32).div_ceil(THREADS).max(1), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The level geometry as the kernels read it: H, W per level, then the first rows.
fn meta(device: &CudaDevice, g: &Geometry) -> candle_core::Result<CudaSlice<i32>> {
    let mut meta: Vec<i32> = g.shapes.iter().flat_map(|&(h, w)| [h as i32, w as i32]).collect();
    meta.extend(g.starts.iter().map(|&s| s as i32));
    device.clone_htod(&meta)
}

fn suffix(dtype: DType) -> candle_core::Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::BF16 => "bf16",
        other => candle_core::bail!("ms_deform_attn on CUDA takes f32, f64 or bf16 (got {other:?})"),
    })
}

/// The sizes as the kernels' int arguments, in their order.
fn sizes(g: &Geometry) -> [i32; 7] {
    [g.batch, g.spatial, g.heads, g.channels, g.levels(), g.queries, g.points].map(|v| v as i32)
}

/// The kernels index with 32-bit sizes and 64-bit offsets; refuse what would overflow.
fn check_sizes(g: &Geometry) -> candle_core::Result<()> {
    if [g.batch, g.spatial, g.heads, g.channels, g.queries, g.points, g.levels()]
        .iter()
        .any(|&v| v > i32::MAX as usize)
    {
        candle_core::bail!("ms_deform_attn: a dimension exceeds the kernels' 32-bit sizes ({g:?})");
    }
    Ok(())
}

/// Device views of contiguous inputs, each starting at its layout's offset.
fn contiguous_views<'a, T: CudaDType>(
    inputs: &[(&'a CudaStorage, &Layout)],
) -> candle_core::Result<Vec<CudaView<'a, T>>> {
    inputs
        .iter()
        .map(|(storage, layout)| match layout.contiguous_offsets() {
            Some((a, b)) => Ok(storage.as_cuda_slice::<T>()?.slice(a..b)),
            None => candle_core::bail!("ms_deform_attn: inputs must be contiguous"),
        })
        .collect()
}

/// Forward: `[N, Lq, M·D]` in the input dtype.
pub(crate) fn forward(
    g: &Geometry,
    (value, l1): (&CudaStorage, &Layout),
    (locations, l2): (&CudaStorage, &Layout),
    (weights, l3): (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)> {
    fn run<T: CudaDType + DeviceRepr + ValidAsZeroBits>(
        g: &Geometry,
        inputs: [(&CudaStorage, &Layout); 3],
        name: &str,
    ) -> candle_core::Result<CudaStorage> {
        let device = inputs[0].0.device().clone();
        let views = contiguous_views::<T>(&inputs)?;
        let meta = meta(&device, g)?;
        let total = g.batch * g.queries * g.heads * g.channels;
        let out = device.alloc_zeros::<T>(total)?;
        let func = device.get_or_load_custom_func(name, MODULE, crate::kernels::MS_DEFORM_ATTN)?;
        let mut builder = func.builder();
        builder.arg(&views[0]);
        builder.arg(&views[1]);
        builder.arg(&views[2]);
        builder.arg(&meta);
        builder.arg(&out);
        let [n, s, m, d, l, q, p] = sizes(g);
        builder_arg!(builder, n, s, m, d, l, q, p);
        // SAFETY: the kernel reads the three inputs and `meta` within the sizes passed and
        // writes `total` elements of `out`, all allocated above with those sizes.
        unsafe { builder.launch(launch_config(total)) }.w()?;
        Ok(T::wrap_cuda_slice(out, device))
    }
    check_sizes(g)?;
    let name = format!("ms_deform_attn_forward_{}", suffix(value.dtype())?);
    let inputs = [(value, l1), (locations, l2), (weights, l3)];
    let storage = match value.dtype() {
        DType::F32 => run::<f32>(g, inputs, &name)?,
        DType::F64 => run::<f64>(g, inputs, &name)?,
        DType::BF16 => run::<half::bf16>(g, inputs, &name)?,
        other => candle_core::bail!("ms_deform_attn on CUDA takes f32, f64 or bf16 (got {other:?})"),
    };
    Ok((storage, Shape::from((g.batch, g.queries, g.heads * g.channels))))
}

/// Backward: one flat buffer `[grad value | grad locations | grad weights]` in the
/// accumulation type (f32 for f32/bf16 inputs, f64 for f64).
pub(crate) fn backward(
    g: &Geometry,
    inputs: [(&CudaStorage, &Layout); 4],
) -> candle_core::Result<(CudaStorage, Shape)> {
    fn run<T: CudaDType + DeviceRepr, A: CudaDType + DeviceRepr + ValidAsZeroBits>(
        g: &Geometry,
        inputs: [(&CudaStorage, &Layout); 4],
        name: &str,
    ) -> candle_core::Result<(CudaStorage, usize)> {
        let device = inputs[0].0.device().clone();
        let views = contiguous_views::<T>(&inputs)?;
        let samples = g.batch * g.queries * g.heads * g.levels() * g.points;
        let value_len = g.batch * g.spatial * g.heads * g.channels;
        let (loc_offset, attn_offset) = (value_len, value_len + 2 * samples);
        let total = attn_offset + samples;
        let meta = meta(&device, g)?;
        let grads = device.alloc_zeros::<A>(total)?;
        let func = device.get_or_load_custom_func(name, MODULE, crate::kernels::MS_DEFORM_ATTN)?;
        let mut builder = func.builder();
        for view in &views {
            builder.arg(view);
        }
        builder.arg(&meta);
        builder.arg(&grads);
        builder_arg!(builder, loc_offset as i64, attn_offset as i64);
        let [n, s, m, d, l, q, p] = sizes(g);
        builder_arg!(builder, n, s, m, d, l, q, p);
        // SAFETY: one thread per sample reads the inputs within the sizes passed and writes
        // inside `grads`, whose three parts are laid out at the offsets passed.
        unsafe { builder.launch(launch_config(samples)) }.w()?;
        Ok((A::wrap_cuda_slice(grads, device), total))
    }
    check_sizes(g)?;
    let dtype = inputs[0].0.dtype();
    let name = format!("ms_deform_attn_backward_{}", suffix(dtype)?);
    let (storage, total) = match dtype {
        DType::F32 => run::<f32, f32>(g, inputs, &name)?,
        DType::F64 => run::<f64, f64>(g, inputs, &name)?,
        DType::BF16 => run::<half::bf16, f32>(g, inputs, &name)?,
        other => candle_core::bail!("ms_deform_attn on CUDA takes f32, f64 or bf16 (got {other:?})"),
    };
    Ok((storage, Shape::from(total)))
}
