//! MedDINOv3's segmentation heads on a DINOv3 backbone, and multi-scale deformable attention.
//!
//! - `Primus` (last block) and `Primus_Multiscale` (several blocks, each through the final
//!   norm, concatenated) with `PatchDecode` upsampling, as in MedDINOv3 and
//!   dynamic-network-architectures.
//! - Multi-scale deformable attention as candle custom ops with hand-written CUDA kernels
//!   (forward and backward); the CUDA sources live in the repository's `kernels/` folder and
//!   are compiled to PTX by this crate's build script when the `cuda` feature is on (see
//!   [`kernels`]).
//! - Precise behaviour: `shared/spec/meddinov3-reference.md` §2 and §3.
//!
//! # Features
//!
//! - `cuda` (off by default): candle's CUDA backend and this crate's kernels; needs `nvcc`
//!   at build time.

#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

#[cfg(feature = "cuda")]
pub mod kernels;

pub use candle_core as candle;
pub use meddino_backbone as backbone;
