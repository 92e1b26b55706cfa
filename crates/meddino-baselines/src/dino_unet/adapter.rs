//! `DINOv3_Adapter` (DINOv3's `eval/segmentation/models/backbone/dinov3_adapter.py`, the
//! ViT-Adapter without injectors): a convolutional spatial prior at 1/4…1/32 whose 1/8, 1/16
//! and 1/32 tokens query the frozen ViT's patch tokens through deformable attention, four
//! times, one ViT depth each.
//!
//! Layout: images and maps NCHW; token sequences `[B, N, D]`, the adapter's queries being the
//! 1/8, 1/16 and 1/32 grids concatenated in that order (row-major each). All f32.
//!
//! Deliberate differences from the reference:
//! - The ViT runs in eval mode in f32 (the reference runs it under `no_grad` with bf16
//!   autocast, and in training mode whenever the network is, which turns on the hub
//!   configuration's RoPE coordinate rescaling).
//! - `DWConv` splits the query tokens by the actual level sizes instead of `16n / 4n / n`
//!   with `n = N / 21`; the two agree whenever H and W are multiples of 32, the only sizes
//!   the reference accepts. The network pads other sizes to such a multiple (see the parent
//!   module).
//! - Depth-wise 3×3 convolutions are evaluated as nine shifted products (the same sums as a
//!   grouped convolution, which candle would run as one convolution per channel).

use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, Init, VarBuilder};
use meddino_backbone::stochastic::StochasticRng;
use meddino_backbone::{DinoVisionTransformer, IntermediateOptions, LayerSelection};
use meddino_decoder::msda::{level_start_index, MSDeformAttn};

use super::AdapterConfig;
use crate::error::{Error, Result};
use crate::layers::{
    conv2d, depthwise_conv3x3, drop_path, from_tokens, max_pool_3x3_stride2, resize_bilinear, to_tokens, BatchNorm2d,
    ConvSpec, LayerNorm, Linear, PixelConvTranspose2d, WeightInit,
};
use crate::unet::NNUNET_INIT;

/// Every convolution of the Dino U-Net ends up He-initialised: the trainer applies
/// `InitWeights_He(1e-2)` to the decoder, whose `encoder` attribute is the whole encoder.
pub(crate) const CONV_INIT: WeightInit = NNUNET_INIT;
/// `nn.SyncBatchNorm`'s default eps.
const BATCH_NORM_EPS: f64 = 1e-5;
/// The adapter's `partial(nn.LayerNorm, eps=1e-6)`.
const LAYER_NORM_EPS: f64 = 1e-6;

/// The adapter's `_init_weights` for its linears: `trunc_normal_(std=0.02)`, zero bias.
const ADAPTER_LINEAR_INIT: WeightInit = WeightInit::Normal { std: 0.02 };

/// Convolution → `SyncBatchNorm` → ReLU, as the spatial prior's `nn.Sequential` entries
/// `i`, `i + 1`, `i + 2`.
#[derive(Debug, Clone)]
struct ConvBnRelu {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl ConvBnRelu {
    fn new(spec: ConvSpec, vb: &VarBuilder, first: usize) -> Result<Self> {
        Ok(Self {
            conv: conv2d(spec, CONV_INIT, vb.pp(first))?,
            bn: BatchNorm2d::new(spec.out_channels, BATCH_NORM_EPS, vb.pp(first + 1))?,
        })
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.bn.forward_t(&self.conv.forward(xs)?, train)?.relu()?)
    }
}

/// The spatial prior's outputs: `c1` as a map, `c2`..`c4` as token sequences, with each
/// level's grid.
#[derive(Debug, Clone)]
pub(crate) struct SpatialPrior {
    /// `[B, D, H/4, W/4]`.
    pub(crate) c1: Tensor,
    /// `[B, (H/8)(W/8), D]`, `[B, (H/16)(W/16), D]`, `[B, (H/32)(W/32), D]`.
    pub(crate) tokens: [Tensor; 3],
    /// `(h, w)` of the 1/8, 1/16 and 1/32 levels.
    pub(crate) grids: [(usize, usize); 3],
}

/// `SpatialPriorModule(inplanes, embed_dim)`: a ResNet-like stem to 1/4 (`stem`), three
/// stride-2 stages to 1/8, 1/16, 1/32 (`conv2`..`conv4`), and 1×1 projections of each to the
/// ViT width (`fc1`..`fc4`).
#[derive(Debug, Clone)]
pub(crate) struct SpatialPriorModule {
    stem: [ConvBnRelu; 3],
    conv2: ConvBnRelu,
    conv3: ConvBnRelu,
    conv4: ConvBnRelu,
    fc1: Conv2d,
    fc2: Conv2d,
    fc3: Conv2d,
    fc4: Conv2d,
}

impl SpatialPriorModule {
    /// Reads or creates the weights (`stem.{0,3,6}` convolutions with batch norms at
    /// `stem.{1,4,7}`, `conv{2,3,4}.{0,1}`, `fc{1..4}`).
    pub(crate) fn new(inplanes: usize, embed_dim: usize, vb: VarBuilder) -> Result<Self> {
        let conv3x3 = |cin: usize, cout: usize, stride: usize| ConvSpec::same(cin, cout, 3).stride(stride).no_bias();
        let stem = vb.pp("stem");
        let fc = |cin: usize, name: &str| conv2d(ConvSpec::same(cin, embed_dim, 1), CONV_INIT, vb.pp(name));
        Ok(Self {
            stem: [
                ConvBnRelu::new(conv3x3(3, inplanes, 2), &stem, 0)?,
                ConvBnRelu::new(conv3x3(inplanes, inplanes, 1), &stem, 3)?,
                ConvBnRelu::new(conv3x3(inplanes, inplanes, 1), &stem, 6)?,
            ],
            conv2: ConvBnRelu::new(conv3x3(inplanes, 2 * inplanes, 2), &vb.pp("conv2"), 0)?,
            conv3: ConvBnRelu::new(conv3x3(2 * inplanes, 4 * inplanes, 2), &vb.pp("conv3"), 0)?,
            conv4: ConvBnRelu::new(conv3x3(4 * inplanes, 4 * inplanes, 2), &vb.pp("conv4"), 0)?,
            fc1: fc(inplanes, "fc1")?,
            fc2: fc(2 * inplanes, "fc2")?,
            fc3: fc(4 * inplanes, "fc3")?,
            fc4: fc(4 * inplanes, "fc4")?,
        })
    }

    /// `[B, 3, H, W]` → the four levels.
    pub(crate) fn forward_t(&self, xs: &Tensor, train: bool) -> Result<SpatialPrior> {
        let mut c1 = xs.clone();
        for layer in &self.stem {
            c1 = layer.forward_t(&c1, train)?;
        }
        let c1 = max_pool_3x3_stride2(&c1)?;
        let c2 = self.conv2.forward_t(&c1, train)?;
        let c3 = self.conv3.forward_t(&c2, train)?;
        let c4 = self.conv4.forward_t(&c3, train)?;
        let (c2, c3, c4) = (self.fc2.forward(&c2)?, self.fc3.forward(&c3)?, self.fc4.forward(&c4)?);
        let grid = |t: &Tensor| -> Result<(usize, usize)> {
            let (_, _, h, w) = t.dims4()?;
            Ok((h, w))
        };
        Ok(SpatialPrior {
            c1: self.fc1.forward(&c1)?,
            grids: [grid(&c2)?, grid(&c3)?, grid(&c4)?],
            tokens: [to_tokens(&c2)?, to_tokens(&c3)?, to_tokens(&c4)?],
        })
    }
}

/// `DWConv(dim)`: one depth-wise 3×3 convolution (`dwconv`) applied to each level of the
/// query tokens.
#[derive(Debug, Clone)]
struct DWConv {
    dwconv: Conv2d,
}

impl DWConv {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            dwconv: conv2d(ConvSpec::same(dim, dim, 3).depthwise(), CONV_INIT, vb.pp("dwconv"))?,
        })
    }

    /// `[B, Σ h·w, C]` over `grids` → the same shape.
    fn forward(&self, xs: &Tensor, grids: &[(usize, usize)]) -> Result<Tensor> {
        let mut start = 0;
        let mut levels = Vec::with_capacity(grids.len());
        for &(h, w) in grids {
            let level = from_tokens(&xs.narrow(1, start, h * w)?, h, w)?;
            levels.push(to_tokens(&depthwise_conv3x3(&level, &self.dwconv)?)?);
            start += h * w;
        }
        Ok(Tensor::cat(&levels, 1)?)
    }
}

/// `ConvFFN(in, hidden)`: `fc1` → `DWConv` → exact GELU → `fc2` (dropout 0).
#[derive(Debug, Clone)]
struct ConvFFN {
    fc1: Linear,
    dwconv: DWConv,
    fc2: Linear,
}

impl ConvFFN {
    fn new(dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: Linear::new(dim, hidden, true, ADAPTER_LINEAR_INIT, vb.pp("fc1"))?,
            dwconv: DWConv::new(hidden, vb.pp("dwconv"))?,
            fc2: Linear::new(hidden, dim, true, ADAPTER_LINEAR_INIT, vb.pp("fc2"))?,
        })
    }

    fn forward(&self, xs: &Tensor, grids: &[(usize, usize)]) -> Result<Tensor> {
        let hidden = self.dwconv.forward(&self.fc1.forward(xs)?, grids)?.gelu_erf()?;
        Ok(self.fc2.forward(&hidden)?)
    }
}

/// Where the queries sit and what they attend to, shared by every extractor of a forward
/// pass.
#[derive(Debug, Clone)]
pub(crate) struct DeformInputs {
    /// Centres of the 1/8, 1/16, 1/32 query grids, `[B, Lq, 1, 2]` as normalised (x, y).
    reference_points: Tensor,
    /// The ViT token grid `[(h/p, w/p)]`: the one level attended to.
    spatial_shapes: Vec<(usize, usize)>,
    /// `[0]`.
    level_start_index: Vec<usize>,
    /// The query levels' grids (for `DWConv`).
    query_grids: [(usize, usize); 3],
}

impl DeformInputs {
    /// `deform_inputs(x, patch_size)[1]` for a batch of `b`.
    fn new(b: usize, query_grids: [(usize, usize); 3], vit_grid: (usize, usize), like: &Tensor) -> Result<Self> {
        let mut points = Vec::new();
        for &(h, w) in &query_grids {
            for i in 0..h {
                for j in 0..w {
                    points.push((j as f32 + 0.5) / w as f32);
                    points.push((i as f32 + 0.5) / h as f32);
                }
            }
        }
        let lq = points.len() / 2;
        let reference_points = Tensor::from_vec(points, (1, lq, 1, 2), like.device())?
            .to_dtype(like.dtype())?
            .repeat((b, 1, 1, 1))?;
        let spatial_shapes = vec![vit_grid];
        Ok(Self {
            reference_points,
            level_start_index: level_start_index(&spatial_shapes),
            spatial_shapes,
            query_grids,
        })
    }
}

/// `Extractor`: the queries attend to the ViT tokens (`query_norm`, `feat_norm`, `attn`),
/// then, with `with_cffn`, a `ConvFFN` residual (`ffn_norm`, `ffn`) under drop path.
#[derive(Debug, Clone)]
struct Extractor {
    query_norm: LayerNorm,
    feat_norm: LayerNorm,
    attn: MSDeformAttn,
    ffn: Option<(LayerNorm, ConvFFN)>,
    drop_path: f64,
}

impl Extractor {
    fn new(dim: usize, cfg: &AdapterConfig, vb: VarBuilder) -> Result<Self> {
        let ffn = if cfg.with_cffn {
            let hidden = (dim as f64 * cfg.cffn_ratio) as usize;
            if hidden == 0 {
                return Err(Error::Config(format!(
                    "cffn_ratio {} leaves no hidden features of width {dim}",
                    cfg.cffn_ratio
                )));
            }
            Some((
                LayerNorm::new(dim, LAYER_NORM_EPS, vb.pp("ffn_norm"))?,
                ConvFFN::new(dim, hidden, vb.pp("ffn"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            query_norm: LayerNorm::new(dim, LAYER_NORM_EPS, vb.pp("query_norm"))?,
            feat_norm: LayerNorm::new(dim, LAYER_NORM_EPS, vb.pp("feat_norm"))?,
            attn: MSDeformAttn::new(
                dim,
                1,
                cfg.deform_num_heads,
                cfg.n_points,
                cfg.deform_ratio,
                vb.pp("attn"),
            )?,
            ffn,
            drop_path: cfg.drop_path_rate,
        })
    }

    /// Queries `[B, Lq, D]` attending to `feat` `[B, h·w, D]` → updated queries.
    fn forward(
        &self,
        query: &Tensor,
        feat: &Tensor,
        inputs: &DeformInputs,
        rng: Option<&StochasticRng>,
    ) -> Result<Tensor> {
        let attended = self.attn.forward(
            &self.query_norm.forward(query)?,
            &inputs.reference_points,
            &self.feat_norm.forward(feat)?,
            &inputs.spatial_shapes,
            &inputs.level_start_index,
        )?;
        let query = (query + attended)?;
        let Some((ffn_norm, ffn)) = &self.ffn else {
            return Ok(query);
        };
        let branch = ffn.forward(&ffn_norm.forward(&query)?, &inputs.query_grids)?;
        let branch = match rng {
            Some(rng) => drop_path(&branch, self.drop_path, rng)?,
            None => branch,
        };
        Ok((query + branch)?)
    }
}

/// `InteractionBlockWithCls`: an `extractor`, and for the last block (with
/// `use_extra_extractor`) two `extra_extractors`. The ViT tokens and cls token pass through
/// unchanged (this adapter has no injector), so only the queries are returned.
#[derive(Debug, Clone)]
struct InteractionBlockWithCls {
    extractor: Extractor,
    extra_extractors: Vec<Extractor>,
}

impl InteractionBlockWithCls {
    fn new(dim: usize, cfg: &AdapterConfig, extra_extractor: bool, vb: VarBuilder) -> Result<Self> {
        let extra_extractors = if extra_extractor {
            (0..2)
                .map(|i| Extractor::new(dim, cfg, vb.pp("extra_extractors").pp(i)))
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        Ok(Self {
            extractor: Extractor::new(dim, cfg, vb.pp("extractor"))?,
            extra_extractors,
        })
    }

    fn forward(&self, x: &Tensor, c: &Tensor, inputs: &DeformInputs, rng: Option<&StochasticRng>) -> Result<Tensor> {
        let mut c = self.extractor.forward(c, x, inputs, rng)?;
        for extractor in &self.extra_extractors {
            c = extractor.forward(&c, x, inputs, rng)?;
        }
        Ok(c)
    }
}

/// `DINOv3_Adapter`: the frozen ViT (`backbone`), the spatial prior (`spm`), `level_embed`
/// `[3, D]`, the `interactions`, the 2×2 transposed convolution `up` (1/8 → 1/4) and the
/// output batch norms `norm1`..`norm4`.
#[derive(Debug, Clone)]
pub(crate) struct DINOv3Adapter {
    backbone: DinoVisionTransformer,
    level_embed: Tensor,
    spm: SpatialPriorModule,
    interactions: Vec<InteractionBlockWithCls>,
    up: PixelConvTranspose2d,
    norms: [BatchNorm2d; 4],
    interaction_indexes: Vec<usize>,
    add_vit_feature: bool,
}

impl DINOv3Adapter {
    /// The adapter around `backbone`; `vb` holds the adapter's own weights.
    pub(crate) fn new(backbone: DinoVisionTransformer, cfg: &AdapterConfig, vb: VarBuilder) -> Result<Self> {
        let dim = backbone.embed_dim();
        let depth = backbone.n_blocks();
        let indexes = &cfg.interaction_indexes;
        if indexes.is_empty() || indexes.windows(2).any(|w| w[0] >= w[1]) || indexes.iter().any(|&i| i >= depth) {
            return Err(Error::Config(format!(
                "interaction_indexes {indexes:?} must be increasing blocks of the {depth}-block ViT"
            )));
        }
        if cfg.add_vit_feature && indexes.len() != 4 {
            return Err(Error::Config(format!(
                "add_vit_feature adds one ViT depth to each of the 4 outputs, got interaction_indexes {indexes:?}"
            )));
        }
        if backbone.config().in_chans != 3 {
            return Err(Error::Config(format!(
                "the adapter's spatial prior takes 3 channels, the ViT takes {}",
                backbone.config().in_chans
            )));
        }
        let last = indexes.len() - 1;
        let interactions = (0..indexes.len())
            .map(|i| {
                let extra = i == last && cfg.use_extra_extractor;
                InteractionBlockWithCls::new(dim, cfg, extra, vb.pp("interactions").pp(i))
            })
            .collect::<Result<_>>()?;
        let norm = |i: usize| BatchNorm2d::new(dim, BATCH_NORM_EPS, vb.pp(format!("norm{i}")));
        Ok(Self {
            level_embed: vb.get_with_hints((3, dim), "level_embed", Init::Randn { mean: 0.0, stdev: 1.0 })?,
            spm: SpatialPriorModule::new(cfg.conv_inplane, dim, vb.pp("spm"))?,
            interactions,
            up: PixelConvTranspose2d::new(dim, dim, 2, CONV_INIT, vb.pp("up"))?,
            norms: [norm(1)?, norm(2)?, norm(3)?, norm(4)?],
            interaction_indexes: indexes.clone(),
            add_vit_feature: cfg.add_vit_feature,
            backbone,
        })
    }

    /// The frozen ViT.
    pub(crate) fn backbone(&self) -> &DinoVisionTransformer {
        &self.backbone
    }

    /// `[B, 3, H, W]` (H, W multiples of 32 and of the patch size) → the 1/4, 1/8, 1/16 and
    /// 1/32 maps, `[B, D, H/s, W/s]` each. `rng` turns on drop path.
    pub(crate) fn forward_t(&self, xs: &Tensor, train: bool, rng: Option<&StochasticRng>) -> Result<[Tensor; 4]> {
        let (b, _, h, w) = xs.dims4()?;
        let p = self.backbone.patch_size();
        let vit_grid = (h / p, w / p);
        let dim = self.backbone.embed_dim();

        let prior = self.spm.forward_t(xs, train)?;
        let tokens: Vec<Tensor> = prior
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| Ok(t.broadcast_add(&self.level_embed.get(i)?)?))
            .collect::<Result<_>>()?;
        let mut c = Tensor::cat(&tokens, 1)?;
        let inputs = DeformInputs::new(b, prior.grids, vit_grid, xs)?;

        // The frozen ViT: eval mode, and cut from the graph so no gradient reaches it.
        let selection = LayerSelection::Indices(self.interaction_indexes.clone());
        let layers = self
            .backbone
            .intermediate_layers(xs, &selection, &IntermediateOptions::new())?;
        let mut vit_maps = Vec::with_capacity(layers.len());
        for (interaction, layer) in self.interactions.iter().zip(&layers) {
            let patches = layer.patches.detach();
            c = interaction.forward(&patches, &c, &inputs, rng)?;
            vit_maps.push(from_tokens(&patches, vit_grid.0, vit_grid.1)?);
        }

        let mut start = 0;
        let mut maps = Vec::with_capacity(4);
        for &(gh, gw) in &prior.grids {
            maps.push(from_tokens(&c.narrow(1, start, gh * gw)?, gh, gw)?);
            start += gh * gw;
        }
        let c1 = (self.up.forward(&maps[0])? + &prior.c1)?;
        maps.insert(0, c1);
        if self.add_vit_feature {
            for (map, vit) in maps.iter_mut().zip(&vit_maps) {
                let (_, _, mh, mw) = map.dims4()?;
                *map = (&*map + resize_bilinear(vit, mh, mw)?)?;
            }
        }
        debug_assert!(maps.iter().all(|m| m.dim(1).ok() == Some(dim)));
        let mut out = Vec::with_capacity(4);
        for (map, norm) in maps.iter().zip(&self.norms) {
            out.push(norm.forward_t(map, train)?);
        }
        out.try_into()
            .map_err(|_| Error::Input("the adapter produces four levels".into()))
    }
}
