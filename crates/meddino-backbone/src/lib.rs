//! The DINOv3 vision transformer as MedDINOv3 and the official DINOv3 release define it.
//!
//! - Paper: *MedDINOv3: How to adapt vision foundation models for medical image
//!   segmentation?* (arXiv:2509.02379); upstream: `ricklisz/MedDINOv3` (which vendors
//!   `facebookresearch/dinov3`).
//! - Precise behaviour: `shared/spec/meddinov3-reference.md` §1 (token layout, RoPE, blocks,
//!   norms, `get_intermediate_layers`, state-dict keys, checkpoint layouts, model sizes).
//!
//! Planned modules (one per upstream Python module): `patch_embed`, `rope`, `attention`,
//! `ffn`, `layer_scale`, `norm`, `block`, `vit`, `checkpoint`, with the `Backbone` trait that
//! the decoder heads are generic over. See `docs/architecture.md` in the repository.
//!
//! # Features
//!
//! - `cuda` (off by default): candle's CUDA backend.

#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

pub use candle_core as candle;
