//! `FAPM` (feature adaptive projection) and `LearnableUpsampleBlock`, the parts of
//! `dinoUNetTrainer.py`'s `DINOv3EncoderAdapter` between the ViT-Adapter and the U-Net
//! decoder: each adapter level (D channels) is projected to the decoder width of its stage
//! and brought to that stage's resolution (full, 1/2, 1/4, 1/8).
//!
//! Layout NCHW, f32. The norm and non-linearity are the plans' (`norm_op`, `nonlin`), as the
//! reference passes the encoder's ops to `FAPM` (the network substitutes `BatchNorm2d` and
//! `ReLU` when the plans have none, as `DINOv3EncoderAdapter` does).

use candle_core::{Module, Tensor, D};
use candle_nn::{Conv2d, VarBuilder};

use super::adapter::CONV_INIT;
use crate::error::{Error, Result};
use crate::layers::depthwise_conv3x3;
use crate::layers::{conv2d, resize_bilinear, BatchNorm2d, ConvSpec, InstanceNorm2d, PixelConvTranspose2d};
use crate::unet::{ConvOps, Nonlin, NormOp};

/// The plans' norm (`norm(oc, **norm_kwargs)`), or the identity without one.
#[derive(Debug, Clone)]
enum Norm {
    Identity,
    Instance(InstanceNorm2d),
    Batch(BatchNorm2d),
}

impl Norm {
    fn new(ops: &ConvOps, channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(match ops.norm {
            None => Norm::Identity,
            Some(NormOp::InstanceNorm2d { eps }) => Norm::Instance(InstanceNorm2d::new(channels, eps, vb)?),
            Some(NormOp::BatchNorm2d { eps }) => Norm::Batch(BatchNorm2d::new(channels, eps, vb)?),
        })
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Norm::Identity => Ok(xs.clone()),
            Norm::Instance(norm) => Ok(norm.forward(xs)?),
            Norm::Batch(norm) => norm.forward_t(xs, train),
        }
    }
}

/// The plans' non-linearity, or the identity without one.
fn activate(act: Option<Nonlin>, xs: &Tensor) -> Result<Tensor> {
    match act {
        None => Ok(xs.clone()),
        Some(nonlin) => nonlin.forward(xs),
    }
}

/// A 1×1 convolution `cin → cout`.
fn conv1x1(cin: usize, cout: usize, bias: bool, vb: VarBuilder) -> Result<Conv2d> {
    let spec = ConvSpec::same(cin, cout, 1);
    conv2d(if bias { spec } else { spec.no_bias() }, CONV_INIT, vb)
}

/// `SqueezeExcitation(channels, reduction=16)`: global average → `fc.0` (1×1, to
/// `max(1, C/16)`) → ReLU → `fc.2` (1×1, back to C) → sigmoid, scaling the channels.
#[derive(Debug, Clone)]
struct SqueezeExcitation {
    fc0: Conv2d,
    fc2: Conv2d,
}

impl SqueezeExcitation {
    fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let reduced = (channels / 16).max(1);
        Ok(Self {
            fc0: conv1x1(channels, reduced, true, vb.pp("fc").pp(0))?,
            fc2: conv1x1(reduced, channels, true, vb.pp("fc").pp(2))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let pooled = xs.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?;
        let gate = candle_nn::ops::sigmoid(&self.fc2.forward(&self.fc0.forward(&pooled)?.relu()?)?)?;
        Ok(xs.broadcast_mul(&gate)?)
    }
}

/// `DepthwiseSeparableConv(c, c, 3, padding=1)`: `depthwise` 3×3 → `pointwise` 1×1 → `bn`
/// (the plans' norm, whatever its kind) → the plans' non-linearity.
#[derive(Debug, Clone)]
struct DepthwiseSeparableConv {
    depthwise: Conv2d,
    pointwise: Conv2d,
    bn: Norm,
    act: Option<Nonlin>,
}

impl DepthwiseSeparableConv {
    fn new(channels: usize, ops: &ConvOps, vb: VarBuilder) -> Result<Self> {
        let spec = ConvSpec::same(channels, channels, 3).depthwise();
        Ok(Self {
            depthwise: conv2d(
                if ops.conv_bias { spec } else { spec.no_bias() },
                CONV_INIT,
                vb.pp("depthwise"),
            )?,
            pointwise: conv1x1(channels, channels, ops.conv_bias, vb.pp("pointwise"))?,
            bn: Norm::new(ops, channels, vb.pp("bn"))?,
            act: ops.nonlin,
        })
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let xs = self.pointwise.forward(&depthwise_conv3x3(xs, &self.depthwise)?)?;
        activate(self.act, &self.bn.forward_t(&xs, train)?)
    }
}

/// One scale's refinement, `nn.Sequential(reduce, norm, act, dw, refine, se)` at indices
/// 0, 1, (2), 3, 4, 5.
#[derive(Debug, Clone)]
struct Refinement {
    reduce: Conv2d,
    norm: Norm,
    act: Option<Nonlin>,
    dw: DepthwiseSeparableConv,
    refine: Conv2d,
    se: SqueezeExcitation,
}

impl Refinement {
    fn new(rank: usize, channels: usize, ops: &ConvOps, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            reduce: conv1x1(rank, channels, ops.conv_bias, vb.pp(0))?,
            norm: Norm::new(ops, channels, vb.pp(1))?,
            act: ops.nonlin,
            dw: DepthwiseSeparableConv::new(channels, ops, vb.pp(3))?,
            refine: conv1x1(channels, channels, ops.conv_bias, vb.pp(4))?,
            se: SqueezeExcitation::new(channels, vb.pp(5))?,
        })
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let xs = activate(self.act, &self.norm.forward_t(&self.reduce.forward(xs)?, train)?)?;
        let xs = self.refine.forward(&self.dw.forward_t(&xs, train)?)?;
        self.se.forward(&xs)
    }
}

/// `FAPM(in_ch, rank, out_ch_list)`: per scale i, a shared 1×1 basis (`shared_basis`) and a
/// scale-specific one (`specific_bases.i`) to `rank` channels; FiLM γ, β from the shared
/// branch (`film_generators.i`, 1×1 to 2·rank, split in halves) modulate the specific
/// branch; then `refinement_blocks.i` plus a shortcut (`shortcut_projections.i`, a 1×1
/// convolution when `rank ≠ out`, else the identity).
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone)]
pub(crate) struct FAPM {
    shared_basis: Conv2d,
    specific_bases: Vec<Conv2d>,
    film_generators: Vec<Conv2d>,
    refinement_blocks: Vec<Refinement>,
    shortcut_projections: Vec<Option<Conv2d>>,
    rank: usize,
}

impl FAPM {
    /// Reads or creates the weights for `out_channels.len()` scales.
    pub(crate) fn new(
        in_channels: usize,
        rank: usize,
        out_channels: &[usize],
        ops: &ConvOps,
        vb: VarBuilder,
    ) -> Result<Self> {
        if rank == 0 || out_channels.contains(&0) {
            return Err(Error::Config(format!(
                "FAPM needs a positive rank and widths, got rank {rank} and {out_channels:?}"
            )));
        }
        let bias = ops.conv_bias;
        let per_scale = |name: &str, i: usize| vb.pp(name).pp(i);
        let mut specific_bases = Vec::new();
        let mut film_generators = Vec::new();
        let mut refinement_blocks = Vec::new();
        let mut shortcut_projections = Vec::new();
        for (i, &oc) in out_channels.iter().enumerate() {
            specific_bases.push(conv1x1(in_channels, rank, bias, per_scale("specific_bases", i))?);
            film_generators.push(conv1x1(rank, 2 * rank, bias, per_scale("film_generators", i))?);
            refinement_blocks.push(Refinement::new(rank, oc, ops, per_scale("refinement_blocks", i))?);
            shortcut_projections.push(if rank == oc {
                None
            } else {
                Some(conv1x1(rank, oc, bias, per_scale("shortcut_projections", i))?)
            });
        }
        Ok(Self {
            shared_basis: conv1x1(in_channels, rank, bias, vb.pp("shared_basis"))?,
            specific_bases,
            film_generators,
            refinement_blocks,
            shortcut_projections,
            rank,
        })
    }

    /// Scale `i` of `[B, in, h, w]` → `[B, out_i, h, w]`.
    pub(crate) fn forward_t(&self, scale: usize, xs: &Tensor, train: bool) -> Result<Tensor> {
        let (Some(specific), Some(film), Some(refinement), Some(shortcut)) = (
            self.specific_bases.get(scale),
            self.film_generators.get(scale),
            self.refinement_blocks.get(scale),
            self.shortcut_projections.get(scale),
        ) else {
            return Err(Error::Input(format!(
                "FAPM has {} scales, asked for scale {scale}",
                self.specific_bases.len()
            )));
        };
        let shared = self.shared_basis.forward(xs)?;
        let gamma_beta = film.forward(&shared)?;
        let gamma = gamma_beta.narrow(1, 0, self.rank)?;
        let beta = gamma_beta.narrow(1, self.rank, self.rank)?;
        let modulated = ((gamma * specific.forward(xs)?)? + beta)?;
        let refined = refinement.forward_t(&modulated, train)?;
        let shortcut = match shortcut {
            Some(conv) => conv.forward(&modulated)?,
            None => modulated,
        };
        Ok((refined + shortcut)?)
    }
}

/// `LearnableUpsampleBlock(channels)`: one 2×2 stride-2 transposed convolution (`up2`)
/// applied while doubling both sides stays within the target, then a bilinear resize to
/// the exact target when it was not reached.
#[derive(Debug, Clone)]
pub(crate) struct LearnableUpsampleBlock {
    up2: PixelConvTranspose2d,
}

impl LearnableUpsampleBlock {
    /// Reads or creates `up2.weight` `[C, C, 2, 2]` and `up2.bias`.
    pub(crate) fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            up2: PixelConvTranspose2d::new(channels, channels, 2, CONV_INIT, vb.pp("up2"))?,
        })
    }

    /// `[B, C, h, w]` → `[B, C, height, width]`.
    pub(crate) fn forward(&self, xs: &Tensor, height: usize, width: usize) -> Result<Tensor> {
        let (_, _, mut h, mut w) = xs.dims4()?;
        let mut out = xs.clone();
        while h > 0 && w > 0 && h * 2 <= height && w * 2 <= width {
            out = self.up2.forward(&out)?;
            (h, w) = (h * 2, w * 2);
        }
        if (h, w) != (height, width) {
            out = resize_bilinear(&out, height, width)?;
        }
        Ok(out)
    }
}
