//! `Primus` and `Primus_Multiscale` (MedDINOv3's `dinov3/models/primus.py`): a ViT encoder
//! whose patch features are decoded to full-resolution logits by [`PatchDecode`].
//!
//! - `Primus`: the last block's normed patch tokens → `PatchDecode(p, E, C)`.
//! - `Primus_Multiscale`: the normed patch tokens of the `interaction_indices` blocks
//!   (MedDINOv3's trainers pass `[2, 5, 8, 11]`; the class default is `[1, 2, 3, 4]`),
//!   concatenated on channels in that order → `PatchDecode(p, E·k, C)`.
//!
//! Input `[B, 1, H, W]` (the CT channel, repeated to the encoder's channels as the
//! reference does), output `[B, C, H, W]`; H and W multiples of the patch size. Keys:
//! `dino_encoder.*` and `up_projection.decode.*`, as nnU-Net checkpoints of the MedDINOv3
//! trainers hold them.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use meddino_backbone::{Backbone, Config, DinoVisionTransformer, IntermediateOptions, LayerSelection, StateDict};

use crate::error::{Error, Result};
use crate::network::SegmentationNetwork;
use crate::patch_decode::PatchDecode;

/// The encoder blocks a multi-scale head reads from a `depth`-block ViT: the last block of
/// each quarter (`[2, 5, 8, 11]` for 12 blocks, as the MedDINOv3 trainers and the Dino
/// U-Net's adapter pass), without repeats for very shallow ViTs.
pub fn quarter_blocks(depth: usize) -> Vec<usize> {
    let mut blocks: Vec<usize> = (1..=4).map(|q| (q * depth / 4).max(1) - 1).collect();
    blocks.dedup();
    blocks
}

/// Which encoder blocks feed the decoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interaction {
    /// The last block (`Primus`).
    LastBlock,
    /// These 0-based blocks, concatenated in this order (`Primus_Multiscale`).
    Blocks(Vec<usize>),
}

/// A Primus segmentation network over any [`Backbone`].
#[derive(Debug, Clone)]
pub struct Primus<B = DinoVisionTransformer> {
    dino_encoder: B,
    up_projection: PatchDecode,
    interaction: Interaction,
    num_classes: usize,
}

impl Primus<DinoVisionTransformer> {
    /// `Primus` with a DINOv3 encoder built from `cfg`, weights under `vb` (`dino_encoder.*`,
    /// `up_projection.*`).
    ///
    /// # Errors
    ///
    /// On an invalid config or missing / mis-shaped weights.
    pub fn new(cfg: &Config, num_classes: usize, vb: VarBuilder) -> Result<Self> {
        let encoder = DinoVisionTransformer::new(cfg, vb.pp("dino_encoder"))?;
        Self::with_backbone(encoder, num_classes, Interaction::LastBlock, vb.pp("up_projection"))
    }

    /// `Primus_Multiscale` with a DINOv3 encoder built from `cfg`.
    ///
    /// # Errors
    ///
    /// As [`Primus::new`], and when an interaction index is not a block of the encoder.
    pub fn multiscale(cfg: &Config, num_classes: usize, interaction_indices: &[usize], vb: VarBuilder) -> Result<Self> {
        let encoder = DinoVisionTransformer::new(cfg, vb.pp("dino_encoder"))?;
        let interaction = Interaction::Blocks(interaction_indices.to_vec());
        Self::with_backbone(encoder, num_classes, interaction, vb.pp("up_projection"))
    }

    /// Reads a checkpoint (safetensors, or an nnU-Net `checkpoint_*.pth` of the MedDINOv3
    /// trainers: its `network_weights`) and builds the network from it strictly.
    ///
    /// # Errors
    ///
    /// When the file is not a checkpoint, or any tensor is missing, mis-shaped or
    /// unexpected (each named).
    pub fn load(
        cfg: &Config,
        num_classes: usize,
        interaction: &Interaction,
        path: &Path,
        device: &Device,
    ) -> Result<Self> {
        let state = StateDict::read(path)?;
        let what = match interaction {
            Interaction::LastBlock => "Primus",
            Interaction::Blocks(_) => "Primus_Multiscale",
        };
        state.load_strict(what, DType::F32, device, |vb| {
            let encoder = DinoVisionTransformer::new(cfg, vb.pp("dino_encoder"))?;
            Self::with_backbone(encoder, num_classes, interaction.clone(), vb.pp("up_projection"))
        })
    }
}

impl<B: Backbone> Primus<B> {
    /// A Primus head on an already built encoder; `vb` holds the head's own weights
    /// (`decode.*`).
    ///
    /// # Errors
    ///
    /// When an interaction index is not a block of the encoder, the patch size is not a
    /// power of two, or a head weight is missing / mis-shaped.
    pub fn with_backbone(
        dino_encoder: B,
        num_classes: usize,
        interaction: Interaction,
        vb: VarBuilder,
    ) -> Result<Self> {
        let blocks = match &interaction {
            Interaction::LastBlock => 1,
            Interaction::Blocks(indices) => {
                let n = dino_encoder.n_blocks();
                if indices.is_empty() || indices.iter().any(|&i| i >= n) {
                    return Err(Error::Config(format!(
                        "interaction indices {indices:?} must name blocks of the {n}-block encoder"
                    )));
                }
                indices.len()
            }
        };
        if num_classes == 0 {
            return Err(Error::Config("num_classes must be at least 1".into()));
        }
        let up_projection = PatchDecode::new(
            dino_encoder.patch_size(),
            dino_encoder.embed_dim() * blocks,
            num_classes,
            vb,
        )?;
        Ok(Self {
            dino_encoder,
            up_projection,
            interaction,
            num_classes,
        })
    }

    /// The encoder.
    pub fn backbone(&self) -> &B {
        &self.dino_encoder
    }

    /// The encoder blocks feeding the decoder.
    pub fn interaction(&self) -> &Interaction {
        &self.interaction
    }
}

impl<B: Backbone> SegmentationNetwork for Primus<B> {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let (_, c, _, _) = xs
            .dims4()
            .map_err(|_| Error::Input(format!("expected a B×1×H×W batch, got shape {:?}", xs.dims())))?;
        if c != 1 {
            return Err(Error::Input(format!(
                "Primus takes one input channel, got shape {:?}",
                xs.dims()
            )));
        }
        let rgb = xs.repeat((1, self.dino_encoder.in_chans(), 1, 1))?;
        let selection = match &self.interaction {
            Interaction::LastBlock => LayerSelection::Last(1),
            Interaction::Blocks(indices) => LayerSelection::Indices(indices.clone()),
        };
        let options = IntermediateOptions::new().with_reshape(true).with_train(train);
        let layers = self.dino_encoder.intermediate_layers(&rgb, &selection, &options)?;
        let patches: Vec<&Tensor> = layers.iter().map(|l| &l.patches).collect();
        let features = if patches.len() == 1 {
            patches[0].clone()
        } else {
            Tensor::cat(&patches, 1)?
        };
        Ok(self.up_projection.forward(&features)?)
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn input_channels(&self) -> usize {
        1
    }

    fn input_multiple(&self) -> usize {
        self.dino_encoder.patch_size()
    }

    fn reseed(&self, seed: u64) {
        self.dino_encoder.reseed(seed);
    }

    fn buffers(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(self
            .dino_encoder
            .buffers()?
            .into_iter()
            .map(|(name, t)| (format!("{}{name}", meddino_backbone::checkpoint::ENCODER_PREFIX), t))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiscale_reads_the_last_block_of_each_quarter() {
        assert_eq!(quarter_blocks(12), [2, 5, 8, 11]);
        assert_eq!(quarter_blocks(4), [0, 1, 2, 3]);
        assert_eq!(quarter_blocks(24), [5, 11, 17, 23]);
        assert_eq!(quarter_blocks(2), [0, 1]);
    }
}
