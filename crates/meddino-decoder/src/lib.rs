//! MedDINOv3's segmentation heads on a DINOv3 backbone, and multi-scale deformable attention.
//!
//! - [`Primus`]: MedDINOv3's `Primus` (last block) and `Primus_Multiscale` (several blocks,
//!   each through the final norm, concatenated), decoded to full resolution by
//!   [`PatchDecode`]; generic over [`backbone::Backbone`], implementing
//!   [`SegmentationNetwork`] for training and prediction.
//! - [`msda`]: multi-scale deformable attention as a candle custom op with a backward, on
//!   the CPU and (feature `cuda`) with hand-written CUDA kernels from this crate's
//!   `kernels/` folder, compiled to PTX by its build script; and the
//!   `MSDeformAttn` module around it.
//! - [`SegmentationNetwork`]: the seam between networks and the trainer and predictor;
//!   the baselines (PlainConvUNet, SegFormer, the Dino U-Net) implement it in the
//!   `meddino-baselines` crate, which reuses [`MSDeformAttn`], [`Linear`] and [`WeightInit`].
//! - Precise behaviour: MedDINOv3 (<https://github.com/ricklisz/MedDINOv3>)
//!
//! ```no_run
//! use meddino_decoder::{backbone::Config, candle::Device, Interaction, Primus, SegmentationNetwork};
//!
//! let device = Device::Cpu;
//! let interaction = Interaction::Blocks(vec![2, 5, 8, 11]);
//! let path = "fold_0/checkpoint_final.pth".as_ref();
//! let network = Primus::load(&Config::meddinov3_vitb16(), 14, &interaction, path, &device)?;
//! # Ok::<(), meddino_decoder::Error>(())
//! ```
//!
//! # Features
//!
//! - `cuda` (off by default): candle's CUDA backend and this crate's kernels; needs `nvcc`
//!   at build time.

#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

// The README's example runs as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod error;
#[cfg(feature = "cuda")]
pub mod kernels;
pub mod linear;
pub mod msda;
mod network;
pub mod patch_decode;
pub mod primus;

pub use candle_core as candle;
pub use error::{Error, Result};
pub use linear::{Linear, WeightInit};
pub use meddino_backbone as backbone;
pub use msda::{level_start_index, ms_deform_attn, MSDeformAttn};
pub use network::SegmentationNetwork;
pub use patch_decode::PatchDecode;
pub use primus::{quarter_blocks, Interaction, Primus};
