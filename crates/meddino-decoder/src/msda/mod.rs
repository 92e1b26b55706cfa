//! Multi-scale deformable attention (Deformable DETR; the `MSDeformAttn` of DINOv3's
//! ViT-Adapter that MedDINOv3's Dino U-Net baseline uses).
//!
//! The core op samples, for every query, head, level and point, the value map of that level
//! bilinearly at a normalised location, and sums the samples weighted by the attention
//! weights:
//!
//! `out[n, q, m·D + c] = Σ_l Σ_p a[n,q,m,l,p] · bilinear(value_l[n, :, m, c], x, y)` with
//! `x = loc_x·W_l − 0.5`, `y = loc_y·H_l − 0.5` (`grid_sample(align_corners=False)`), corners
//! outside the map contributing zero.
//!
//! It is a candle `CustomOp3` over (value, sampling locations, attention weights) with a
//! backward for all three: direct parallel loops on the CPU (f32, f64), hand-written CUDA
//! kernels on the GPU (f32, f64, bf16 with f32 accumulation; `kernels/ms_deform_attn.cu`).

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod module;

pub use module::MSDeformAttn;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Storage, Tensor};

use crate::error::{Error, Result};

/// The sizes of one op application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub(crate) batch: usize,
    /// S: total value rows over all levels.
    pub(crate) spatial: usize,
    pub(crate) heads: usize,
    /// D: channels per head.
    pub(crate) channels: usize,
    pub(crate) queries: usize,
    pub(crate) points: usize,
    /// (H_l, W_l) per level.
    pub(crate) shapes: Vec<(usize, usize)>,
    /// First value row of each level.
    pub(crate) starts: Vec<usize>,
}

impl Geometry {
    pub(crate) fn levels(&self) -> usize {
        self.shapes.len()
    }

    /// Checks the tensors against each other and the level layout.
    fn of(
        value: &Tensor,
        spatial_shapes: &[(usize, usize)],
        level_start_index: &[usize],
        locations: &Tensor,
        weights: &Tensor,
    ) -> Result<Self> {
        let fail = |message: String| Err(Error::Input(format!("ms_deform_attn: {message}")));
        let &[batch, spatial, heads, channels] = value.dims() else {
            return fail(format!("value must be [N, S, M, D], got {:?}", value.dims()));
        };
        let levels = spatial_shapes.len();
        let &[n2, queries, m2, l2, points, two] = locations.dims() else {
            return fail(format!(
                "sampling locations must be [N, Lq, M, L, P, 2], got {:?}",
                locations.dims()
            ));
        };
        if (n2, m2, l2, two) != (batch, heads, levels, 2) {
            return fail(format!(
                "sampling locations {:?} do not fit value {:?} with {levels} levels",
                locations.dims(),
                value.dims()
            ));
        }
        if weights.dims() != [batch, queries, heads, levels, points] {
            return fail(format!(
                "attention weights must be [{batch}, {queries}, {heads}, {levels}, {points}], got {:?}",
                weights.dims()
            ));
        }
        let starts = self::level_start_index(spatial_shapes);
        let total: usize = spatial_shapes.iter().map(|&(h, w)| h * w).sum();
        if total != spatial || starts != level_start_index || spatial_shapes.iter().any(|&(h, w)| h == 0 || w == 0) {
            return fail(format!(
                "spatial shapes {spatial_shapes:?} and level starts {level_start_index:?} do not describe the {spatial} value rows"
            ));
        }
        let dtype = value.dtype();
        if locations.dtype() != dtype || weights.dtype() != dtype {
            return fail(format!(
                "value, locations and weights must share a dtype, got {:?}, {:?}, {:?}",
                dtype,
                locations.dtype(),
                weights.dtype()
            ));
        }
        if !locations.device().same_device(value.device()) || !weights.device().same_device(value.device()) {
            return fail("value, locations and weights must be on one device".into());
        }
        Ok(Self {
            batch,
            spatial,
            heads,
            channels,
            queries,
            points,
            shapes: spatial_shapes.to_vec(),
            starts,
        })
    }
}

/// The first value row of each level: the running sum of `H·W` (what the reference passes
/// as `level_start_index`).
pub fn level_start_index(spatial_shapes: &[(usize, usize)]) -> Vec<usize> {
    spatial_shapes
        .iter()
        .scan(0, |total, &(h, w)| {
            let start = *total;
            *total += h * w;
            Some(start)
        })
        .collect()
}

/// The core op: value `[N, S, M, D]`, sampling locations `[N, Lq, M, L, P, 2]` ((x, y) in
/// [0, 1]), attention weights `[N, Lq, M, L, P]` → `[N, Lq, M·D]`. Differentiable in all three
/// tensor inputs.
///
/// # Errors
///
/// When the shapes do not fit each other or the level layout (`level_start_index` must be
/// the running sum of `H·W`), dtypes differ, or the dtype is not f32/f64 (bf16 too on CUDA).
pub fn ms_deform_attn(
    value: &Tensor,
    spatial_shapes: &[(usize, usize)],
    level_start_index: &[usize],
    sampling_locations: &Tensor,
    attention_weights: &Tensor,
) -> Result<Tensor> {
    let geometry = Geometry::of(
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
    )?;
    let op = MsDeformAttnOp { geometry };
    Ok(value
        .contiguous()?
        .apply_op3(&sampling_locations.contiguous()?, &attention_weights.contiguous()?, op)?)
}

/// The op recorded in the graph; its geometry travels with it to the backward pass.
#[derive(Debug, Clone)]
struct MsDeformAttnOp {
    geometry: Geometry,
}

/// A contiguous CPU slice of a storage, or an error naming what was wrong.
fn contiguous<'a, T>(data: &'a [T], layout: &Layout) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("ms_deform_attn: inputs must be contiguous"),
    }
}

impl CustomOp3 for MsDeformAttnOp {
    fn name(&self) -> &'static str {
        "ms_deform_attn"
    }

    fn cpu_fwd(
        &self,
        value: &CpuStorage,
        l1: &Layout,
        locations: &CpuStorage,
        l2: &Layout,
        weights: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.geometry;
        let shape = Shape::from((g.batch, g.queries, g.heads * g.channels));
        let out = match (value, locations, weights) {
            (CpuStorage::F32(v), CpuStorage::F32(s), CpuStorage::F32(a)) => CpuStorage::F32(cpu::forward(
                g,
                contiguous(v, l1)?,
                contiguous(s, l2)?,
                contiguous(a, l3)?,
            )),
            (CpuStorage::F64(v), CpuStorage::F64(s), CpuStorage::F64(a)) => CpuStorage::F64(cpu::forward(
                g,
                contiguous(v, l1)?,
                contiguous(s, l2)?,
                contiguous(a, l3)?,
            )),
            _ => candle_core::bail!("ms_deform_attn on the CPU takes f32 or f64 (got {:?})", value.dtype()),
        };
        Ok((out, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        value: &candle_core::CudaStorage,
        l1: &Layout,
        locations: &candle_core::CudaStorage,
        l2: &Layout,
        weights: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward(&self.geometry, (value, l1), (locations, l2), (weights, l3))
    }

    fn bwd(
        &self,
        value: &Tensor,
        locations: &Tensor,
        weights: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = MsDeformAttnBackward {
            geometry: self.geometry.clone(),
            grad: grad.contiguous()?,
        };
        // One flat buffer [value | locations | weights], in f32 or f64.
        let flat = value.apply_op3_no_bwd(locations, weights, &op)?;
        let mut offset = 0;
        let mut part = |like: &Tensor| -> candle_core::Result<Tensor> {
            let n = like.elem_count();
            let out = flat
                .narrow(0, offset, n)?
                .reshape(like.shape())?
                .to_dtype(like.dtype())?;
            offset += n;
            Ok(out)
        };
        Ok((Some(part(value)?), Some(part(locations)?), Some(part(weights)?)))
    }
}

/// The backward pass as an op of its own (value, locations, weights, with the upstream
/// gradient carried in the op), so CPU and CUDA share one path: it returns one flat
/// buffer holding the three gradients.
#[derive(Debug, Clone)]
struct MsDeformAttnBackward {
    geometry: Geometry,
    grad: Tensor,
}

impl CustomOp3 for MsDeformAttnBackward {
    fn name(&self) -> &'static str {
        "ms_deform_attn_backward"
    }

    fn cpu_fwd(
        &self,
        value: &CpuStorage,
        l1: &Layout,
        locations: &CpuStorage,
        l2: &Layout,
        weights: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (grad, lg) = self.grad.storage_and_layout();
        let Storage::Cpu(grad) = &*grad else {
            candle_core::bail!("ms_deform_attn backward: gradient not on the CPU")
        };
        fn concat<T: Clone>((a, b, c): (Vec<T>, Vec<T>, Vec<T>)) -> Vec<T> {
            let mut all = a;
            all.extend(b);
            all.extend(c);
            all
        }
        let g = &self.geometry;
        let flat = match (value, locations, weights, grad) {
            (CpuStorage::F32(v), CpuStorage::F32(s), CpuStorage::F32(a), CpuStorage::F32(d)) => {
                CpuStorage::F32(concat(cpu::backward(
                    g,
                    contiguous(v, l1)?,
                    contiguous(s, l2)?,
                    contiguous(a, l3)?,
                    contiguous(d, lg)?,
                )))
            }
            (CpuStorage::F64(v), CpuStorage::F64(s), CpuStorage::F64(a), CpuStorage::F64(d)) => {
                CpuStorage::F64(concat(cpu::backward(
                    g,
                    contiguous(v, l1)?,
                    contiguous(s, l2)?,
                    contiguous(a, l3)?,
                    contiguous(d, lg)?,
                )))
            }
            _ => candle_core::bail!("ms_deform_attn on the CPU takes f32 or f64 (got {:?})", value.dtype()),
        };
        let len = flat
            .as_slice::<f32>()
            .map(|s| s.len())
            .or_else(|_| flat.as_slice::<f64>().map(|s| s.len()))?;
        Ok((flat, Shape::from(len)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        value: &candle_core::CudaStorage,
        l1: &Layout,
        locations: &candle_core::CudaStorage,
        l2: &Layout,
        weights: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (grad, lg) = self.grad.storage_and_layout();
        let Storage::Cuda(grad) = &*grad else {
            candle_core::bail!("ms_deform_attn backward: gradient not on the GPU")
        };
        cuda::backward(
            &self.geometry,
            [(value, l1), (locations, l2), (weights, l3), (grad, lg)],
        )
    }
}
