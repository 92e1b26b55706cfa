//! The DINOv3 vision transformer as MedDINOv3 and the official DINOv3 release define it.
//!
//! - Paper: *MedDINOv3: How to adapt vision foundation models for medical image
//!   segmentation?* (arXiv:2509.02379); upstream: `ricklisz/MedDINOv3` (which vendors
//!   `facebookresearch/dinov3`).
//! - Precise behaviour: MedDINOv3 (<https://github.com/ricklisz/MedDINOv3>) (token layout, RoPE, blocks,
//!   norms, `get_intermediate_layers`, state-dict keys, checkpoint layouts, model sizes).
//!
//! ```no_run
//! use meddino_backbone::{candle::{Device, Tensor}, Config, DinoVisionTransformer};
//!
//! let device = Device::Cpu;
//! let model = DinoVisionTransformer::load(&Config::meddinov3_vitb16(), "model.pth".as_ref(), &device)?;
//! let image = Tensor::zeros((1, 3, 224, 224), meddino_backbone::candle::DType::F32, &device)?;
//! let features = model.forward_features(&image)?;
//! assert_eq!(features.x_norm_patchtokens.dims(), &[1, 196, 768]);
//! # Ok::<(), meddino_backbone::Error>(())
//! ```
//!
//! Every forward op is differentiable (LayerNorm, softmax and RoPE are composite), so the
//! model can be fine-tuned when built from a `VarMap`. At inference on the CPU (f32 weights
//! that track no gradient, as loaded from a checkpoint) the blocks run fused kernels instead:
//! one pass each for LayerNorm, linear + bias (+ GELU), the residual, and attention with RoPE.
//!
//! # Features
//!
//! - `cuda` (off by default): candle's CUDA backend.
//! - `hub` (off by default): downloads `hf:ORG/NAME` checkpoints missing from the Hugging Face
//!   cache (through `hf-hub`); without it, such names resolve from the cache only.

#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

// The README's example runs as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod attention;
mod backbone;
mod block;
pub mod checkpoint;
pub mod config;
mod error;
mod ffn;
pub mod flash;
pub mod fused;
pub mod hf;
#[cfg(feature = "cuda")]
pub mod kernels;
mod layer_scale;
mod norm;
mod patch_embed;
pub mod rope;
pub mod stochastic;
pub mod visualize;
pub mod vit;

pub use backbone::Backbone;
pub use candle_core as candle;
pub use candle_nn;
pub use checkpoint::{CheckpointFormat, StateDict};
pub use config::{Config, FfnLayer, NormLayer, NormalizeCoords, RopeDtype};
pub use error::{Error, Result};
pub use norm::layer_norm;
pub use vit::{DinoVisionTransformer, Features, IntermediateLayer, IntermediateOptions, LayerSelection};
