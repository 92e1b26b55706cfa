//! `DinoVisionTransformer`: patch embedding, cls and storage tokens, RoPE blocks, final
//! norm(s), `forward_features` and `get_intermediate_layers`.
//!
//! Token layout: `[cls, storage tokens (R), patch tokens (h·w, row-major)]`. Input
//! `[B, in_chans, H, W]` with H and W multiples of the patch size; all outputs f32.

use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::block::SelfAttentionBlock;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::norm::Norm;
use crate::patch_embed::PatchEmbed;
use crate::rope::{RopePositionEmbedding, RopeTables};
use crate::stochastic::StochasticRng;

/// The `forward_features` outputs.
#[derive(Debug, Clone)]
pub struct Features {
    /// Normalised cls token, `[B, D]`.
    pub x_norm_clstoken: Tensor,
    /// Normalised storage tokens, `[B, R, D]`.
    pub x_storage_tokens: Tensor,
    /// Normalised patch tokens, `[B, h·w, D]`.
    pub x_norm_patchtokens: Tensor,
    /// All tokens after the last block, before the final norm, `[B, 1 + R + h·w, D]`.
    pub x_prenorm: Tensor,
}

/// Which blocks `intermediate_layers` collects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerSelection {
    /// The last n blocks.
    Last(usize),
    /// These 0-based block indices (returned in block order).
    Indices(Vec<usize>),
}

/// Options of `intermediate_layers` (the reference's keyword arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntermediateOptions {
    /// Pass each collected output through the final norm (default true).
    pub norm: bool,
    /// Return patches as `[B, D, h, w]` instead of `[B, h·w, D]` (default false).
    pub reshape: bool,
    /// Training mode: stochastic depth and RoPE coordinate augmentation (default false).
    pub train: bool,
}

impl Default for IntermediateOptions {
    fn default() -> Self {
        Self {
            norm: true,
            reshape: false,
            train: false,
        }
    }
}

impl IntermediateOptions {
    /// Defaults: normed, not reshaped, eval mode.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets whether outputs go through the final norm.
    pub fn with_norm(mut self, norm: bool) -> Self {
        self.norm = norm;
        self
    }

    /// Sets whether patches are returned as `[B, D, h, w]`.
    pub fn with_reshape(mut self, reshape: bool) -> Self {
        self.reshape = reshape;
        self
    }

    /// Sets training mode.
    pub fn with_train(mut self, train: bool) -> Self {
        self.train = train;
        self
    }
}

/// One collected block output, split.
#[derive(Debug, Clone)]
pub struct IntermediateLayer {
    /// Patch tokens, `[B, h·w, D]` or `[B, D, h, w]` with `reshape`.
    pub patches: Tensor,
    /// The cls token, `[B, D]`.
    pub cls: Tensor,
    /// The storage tokens, `[B, R, D]`.
    pub storage: Tensor,
}

/// The DINOv3 vision transformer.
#[derive(Debug, Clone)]
pub struct DinoVisionTransformer {
    cfg: Config,
    patch_embed: PatchEmbed,
    cls_token: Tensor,
    storage_tokens: Option<Tensor>,
    mask_token: Tensor,
    rope_embed: RopePositionEmbedding,
    blocks: Vec<SelfAttentionBlock>,
    norm: Norm,
    cls_norm: Option<Norm>,
    /// Only used for local crops in SSL training; kept so checkpoints load strictly.
    _local_cls_norm: Option<Norm>,
    /// Training-mode randomness (stochastic depth, RoPE augmentation).
    rng: StochasticRng,
}

impl DinoVisionTransformer {
    /// Builds the model from `vb` (a checkpoint, or a `VarMap` for training from scratch,
    /// with the reference's initialisations).
    ///
    /// # Errors
    ///
    /// When the config is invalid or a tensor is missing or mis-shaped in `vb`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.embed_dim;
        let normal = Init::Randn { mean: 0.0, stdev: 0.02 };
        let storage_tokens = match cfg.n_storage_tokens {
            0 => None,
            r => Some(vb.get_with_hints((1, r, d), "storage_tokens", normal)?),
        };
        let optional_norm = |present: bool, name: &str| -> Result<Option<Norm>> {
            Ok(if present {
                Some(Norm::new(cfg.norm_layer, d, vb.pp(name))?)
            } else {
                None
            })
        };
        Ok(Self {
            patch_embed: PatchEmbed::new(cfg, vb.pp("patch_embed"))?,
            cls_token: vb.get_with_hints((1, 1, d), "cls_token", normal)?,
            storage_tokens,
            mask_token: vb.get_with_hints((1, d), "mask_token", Init::Const(0.0))?,
            rope_embed: RopePositionEmbedding::new(cfg, vb.pp("rope_embed"))?,
            blocks: (0..cfg.depth)
                .map(|i| SelfAttentionBlock::new(cfg, vb.pp("blocks").pp(i)))
                .collect::<Result<_>>()?,
            norm: Norm::new(cfg.norm_layer, d, vb.pp("norm"))?,
            cls_norm: optional_norm(cfg.untie_cls_and_patch_norms, "cls_norm")?,
            _local_cls_norm: optional_norm(cfg.untie_global_and_local_cls_norm, "local_cls_norm")?,
            cfg: cfg.clone(),
            rng: StochasticRng::default(),
        })
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Restarts the generator behind training-mode randomness (stochastic depth subsets,
    /// RoPE coordinate augmentation) at `seed`: the same seed and inputs give the same
    /// training forward pass. Clones share the generator.
    pub fn reseed(&self, seed: u64) {
        self.rng.reseed(seed);
    }

    /// The RoPE module (periods and tables).
    pub fn rope_embed(&self) -> &RopePositionEmbedding {
        &self.rope_embed
    }

    /// The non-trainable buffers of the state dict (`rope_embed.periods`, every
    /// `blocks.i.attn.qkv.bias_mask`) with their reference names: a model built from a
    /// `VarMap` computes them instead of registering them, so a checkpoint written from the
    /// VarMap needs these added to load strictly.
    ///
    /// # Errors
    ///
    /// On a device error.
    pub fn buffers(&self) -> Result<Vec<(String, Tensor)>> {
        let periods = self.rope_embed.periods().to_vec();
        let n = periods.len();
        let mut buffers = vec![(
            "rope_embed.periods".to_string(),
            Tensor::from_vec(periods, n, self.cls_token.device())?,
        )];
        for (i, block) in self.blocks.iter().enumerate() {
            if let Some(mask) = block.attn().bias_mask() {
                buffers.push((format!("blocks.{i}.attn.qkv.bias_mask"), mask.clone()));
            }
        }
        Ok(buffers)
    }

    fn prefix_len(&self) -> usize {
        1 + self.cfg.n_storage_tokens
    }

    /// Embedded tokens `[B, 1 + R + h·w, D]`, the grid and its RoPE tables.
    fn prepare(&self, xs: &Tensor, train: bool) -> Result<(Tensor, (usize, usize), RopeTables)> {
        let (h, w) = self.patch_embed.grid(xs)?;
        let b = xs.dim(0)?;
        let patches = self.patch_embed.forward(xs)?;
        let d = self.cfg.embed_dim;
        // `cls_token + 0 · mask_token`: numerically the cls token, as the reference writes it.
        let cls = self
            .cls_token
            .broadcast_add(&(self.mask_token.unsqueeze(0)? * 0.0)?)?
            .expand((b, 1, d))?;
        let mut parts = vec![cls];
        if let Some(storage) = &self.storage_tokens {
            parts.push(storage.expand((b, self.cfg.n_storage_tokens, d))?);
        }
        parts.push(patches);
        let tokens = Tensor::cat(&parts, 1)?;
        let augment = if train {
            self.rope_embed.draw_augment(&self.rng)?
        } else {
            Default::default()
        };
        let tables = self.rope_embed.tables_with(h, w, augment, xs.device())?;
        Ok((tokens, (h, w), tables))
    }

    /// The final norm(s) over all tokens: `cls_norm` on cls and storage tokens when untied.
    fn final_norm(&self, tokens: &Tensor) -> candle_core::Result<Tensor> {
        match &self.cls_norm {
            None => self.norm.forward(tokens),
            Some(cls_norm) => {
                let p = self.prefix_len();
                let n = tokens.dim(1)?;
                Tensor::cat(
                    &[
                        cls_norm.forward(&tokens.narrow(1, 0, p)?)?,
                        self.norm.forward(&tokens.narrow(1, p, n - p)?)?,
                    ],
                    1,
                )
            }
        }
    }

    /// `forward_features` in eval mode.
    ///
    /// # Errors
    ///
    /// When `xs` is not `[B, in_chans, H, W]` with H, W multiples of the patch size.
    pub fn forward_features(&self, xs: &Tensor) -> Result<Features> {
        self.forward_features_t(xs, false)
    }

    /// `forward_features`, in training mode when `train` (stochastic depth, RoPE
    /// augmentation).
    ///
    /// # Errors
    ///
    /// As [`Self::forward_features`].
    pub fn forward_features_t(&self, xs: &Tensor, train: bool) -> Result<Features> {
        let (mut tokens, _, tables) = self.prepare(xs, train)?;
        for block in &self.blocks {
            tokens = block.forward(&tokens, Some((&self.rope_embed, &tables)), train.then_some(&self.rng))?;
        }
        let normed = self.final_norm(&tokens)?;
        let (p, n) = (self.prefix_len(), tokens.dim(1)?);
        Ok(Features {
            x_norm_clstoken: normed.narrow(1, 0, 1)?.squeeze(1)?,
            x_storage_tokens: normed.narrow(1, 1, p - 1)?,
            x_norm_patchtokens: normed.narrow(1, p, n - p)?,
            x_prenorm: tokens,
        })
    }

    /// `get_intermediate_layers`: the outputs of the selected blocks, split into patches,
    /// cls and storage tokens.
    ///
    /// # Errors
    ///
    /// As [`Self::forward_features`], and when a selected block does not exist.
    pub fn intermediate_layers(
        &self,
        xs: &Tensor,
        layers: &LayerSelection,
        options: &IntermediateOptions,
    ) -> Result<Vec<IntermediateLayer>> {
        let depth = self.blocks.len();
        let wanted: Vec<usize> = match layers {
            LayerSelection::Last(n) if *n <= depth => (depth - n..depth).collect(),
            LayerSelection::Indices(indices) if indices.iter().all(|&i| i < depth) => indices.clone(),
            other => {
                return Err(Error::Input(format!(
                    "cannot select blocks {other:?} of a {depth}-block model"
                )))
            }
        };
        let (mut tokens, (h, w), tables) = self.prepare(xs, options.train)?;
        let mut collected = Vec::with_capacity(wanted.len());
        let last = wanted.iter().copied().max().map_or(0, |m| m + 1);
        for (i, block) in self.blocks.iter().enumerate().take(last) {
            tokens = block.forward(
                &tokens,
                Some((&self.rope_embed, &tables)),
                options.train.then_some(&self.rng),
            )?;
            if wanted.contains(&i) {
                collected.push(tokens.clone());
            }
        }
        let (p, b, d) = (self.prefix_len(), xs.dim(0)?, self.cfg.embed_dim);
        collected
            .into_iter()
            .map(|out| {
                let out = if options.norm { self.final_norm(&out)? } else { out };
                let patches = out.narrow(1, p, h * w)?;
                let patches = if options.reshape {
                    patches.reshape((b, h, w, d))?.permute((0, 3, 1, 2))?.contiguous()?
                } else {
                    patches
                };
                Ok(IntermediateLayer {
                    patches,
                    cls: out.narrow(1, 0, 1)?.squeeze(1)?,
                    storage: out.narrow(1, 1, p - 1)?,
                })
            })
            .collect()
    }
}
