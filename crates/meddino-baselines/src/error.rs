//! Errors of the baselines: `meddino-decoder`'s [`Error`], re-exported.
//!
//! The baselines report through the decoder's error because every network returns it from
//! [`SegmentationNetwork`](meddino_decoder::SegmentationNetwork), the seam the trainer and the
//! predictor call; a second enum would only wrap it. Configuration problems are
//! [`Error::Config`], bad inputs [`Error::Input`].

pub use meddino_decoder::{Error, Result};
