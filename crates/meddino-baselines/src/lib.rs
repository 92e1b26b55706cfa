//! The networks MedDINOv3 is compared against, trained by the same nnU-Net pipeline:
//! nnU-Net's PlainConvUNet ([`unet`]), SegFormer MiT-B2 ([`segformer`]) and the Dino U-Net
//! ([`dino_unet`]: a frozen DINOv3 ViT with a ViT-Adapter, FAPM and a U-Net decoder), with
//! the PyTorch building blocks they share ([`layers`]).
//!
//! Each network implements `meddino-decoder`'s [`SegmentationNetwork`] with PyTorch's
//! state-dict names, so checkpoints of the Python trainers (MedDINOv3's `nnUNetTrainer`,
//! `segformerTrainer` and `dinoUNetTrainer`) load; `meddino-train` registers a trainer for
//! each. Upstream: <https://github.com/ricklisz/MedDINOv3>; the papers are linked from each
//! module. Where a port differs from the reference and why: the repository's
//! `docs/baselines.md`.
//!
//! Layout: images are NCHW `[B, C, H, W]` in f32; logits `[B, classes, H, W]`.
//!
//! ```
//! use meddino_baselines::candle::{DType, Device, Tensor};
//! use meddino_baselines::candle_nn::{VarBuilder, VarMap};
//! use meddino_baselines::{SegFormer, SegFormerConfig, SegmentationNetwork};
//!
//! // A randomly initialised SegFormer with three classes, on one-channel 32×32 images.
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let network = SegFormer::new(&SegFormerConfig::tiny(3), 1, vb)?;
//! let logits = network.forward(&Tensor::zeros((1, 1, 32, 32), DType::F32, &Device::Cpu)?)?;
//! assert_eq!(logits.dims(), [1, 3, 32, 32]);
//! # Ok::<(), meddino_baselines::Error>(())
//! ```
//!
//! # Features
//!
//! - `cuda` (off by default): candle's CUDA backend and `meddino-decoder`'s kernels (the Dino
//!   U-Net's deformable attention runs on them); needs `nvcc` at build time.

#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

// The README's example runs as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod dino_unet;
mod error;
pub mod layers;
pub mod segformer;
pub mod unet;

pub use candle_nn;
pub use dino_unet::{DinoUNet, DinoUNetConfig};
pub use error::{Error, Result};
pub use meddino_decoder as decoder;
pub use meddino_decoder::{backbone, candle, SegmentationNetwork};
pub use segformer::{SegFormer, SegFormerConfig};
pub use unet::{PlainConvUNet, PlainConvUNetConfig};
