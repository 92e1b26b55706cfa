//! The `Backbone` trait: what a segmentation head needs from a ViT encoder.

use candle_core::Tensor;

use crate::error::Result;
use crate::vit::{DinoVisionTransformer, IntermediateLayer, IntermediateOptions, LayerSelection};

/// A ViT encoder a decoder head can sit on. Object-safe, so heads can hold
/// `Box<dyn Backbone>` / `Arc<dyn Backbone>`.
///
/// A minimal implementation delegates to a model:
///
/// ```
/// use meddino_backbone::{Backbone, DinoVisionTransformer, IntermediateLayer, IntermediateOptions, LayerSelection, Result};
/// use meddino_backbone::candle::Tensor;
///
/// #[derive(Debug)]
/// struct Frozen(DinoVisionTransformer);
///
/// impl Backbone for Frozen {
///     fn embed_dim(&self) -> usize { self.0.embed_dim() }
///     fn patch_size(&self) -> usize { self.0.patch_size() }
///     fn n_blocks(&self) -> usize { self.0.n_blocks() }
///     fn in_chans(&self) -> usize { self.0.config().in_chans }
///     fn intermediate_layers(&self, xs: &Tensor, layers: &LayerSelection, options: &IntermediateOptions)
///         -> Result<Vec<IntermediateLayer>> {
///         // Never train the encoder, whatever the head asks.
///         self.0.intermediate_layers(xs, layers, &options.with_train(false))
///     }
/// }
/// ```
pub trait Backbone: std::fmt::Debug + Send + Sync {
    /// Token width D.
    fn embed_dim(&self) -> usize;
    /// Patch size p: inputs must be multiples of it, features are 1/p of the input size.
    fn patch_size(&self) -> usize;
    /// Number of blocks.
    fn n_blocks(&self) -> usize;
    /// Channels the input image must have.
    fn in_chans(&self) -> usize;
    /// Outputs of the selected blocks (see [`DinoVisionTransformer::intermediate_layers`]).
    ///
    /// # Errors
    ///
    /// On a bad input shape or block selection.
    fn intermediate_layers(
        &self,
        xs: &Tensor,
        layers: &LayerSelection,
        options: &IntermediateOptions,
    ) -> Result<Vec<IntermediateLayer>>;

    /// Restarts the generator behind training-mode randomness at `seed` (a backbone without
    /// any ignores it).
    fn reseed(&self, _seed: u64) {}

    /// Non-trainable tensors of the state dict that the model computes rather than
    /// registering as parameters (see [`DinoVisionTransformer::buffers`]).
    ///
    /// # Errors
    ///
    /// On a device error.
    fn buffers(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }
}

impl DinoVisionTransformer {
    /// Token width D.
    pub fn embed_dim(&self) -> usize {
        self.config().embed_dim
    }

    /// Patch size.
    pub fn patch_size(&self) -> usize {
        self.config().patch_size
    }

    /// Number of blocks.
    pub fn n_blocks(&self) -> usize {
        self.config().depth
    }
}

impl Backbone for DinoVisionTransformer {
    fn embed_dim(&self) -> usize {
        DinoVisionTransformer::embed_dim(self)
    }

    fn patch_size(&self) -> usize {
        DinoVisionTransformer::patch_size(self)
    }

    fn n_blocks(&self) -> usize {
        DinoVisionTransformer::n_blocks(self)
    }

    fn in_chans(&self) -> usize {
        self.config().in_chans
    }

    fn intermediate_layers(
        &self,
        xs: &Tensor,
        layers: &LayerSelection,
        options: &IntermediateOptions,
    ) -> Result<Vec<IntermediateLayer>> {
        DinoVisionTransformer::intermediate_layers(self, xs, layers, options)
    }

    fn reseed(&self, seed: u64) {
        DinoVisionTransformer::reseed(self, seed);
    }

    fn buffers(&self) -> Result<Vec<(String, Tensor)>> {
        DinoVisionTransformer::buffers(self)
    }
}
