//! dynamic-network-architectures' conv blocks: conv → norm → nonlinearity, stacked.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, VarBuilder};

use super::ops::{ConvOps, Nonlin, NormOp, NNUNET_INIT};
use crate::error::{Error, Result};
use crate::layers::{conv2d, BatchNorm2d, ConvSpec, InstanceNorm2d};

/// `prefix.rest`, or `rest` for an empty prefix.
pub(super) fn join(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_string()
    } else {
        format!("{prefix}.{rest}")
    }
}

/// The norm of one block.
#[derive(Debug, Clone)]
enum Norm {
    Instance(InstanceNorm2d),
    Batch(BatchNorm2d),
}

/// dynamic-network-architectures' `ConvDropoutNormReLU` without dropout: conv → norm →
/// nonlinearity.
#[derive(Debug, Clone)]
struct ConvNormNonlin {
    conv: Conv2d,
    norm: Option<Norm>,
    nonlin: Option<Nonlin>,
}

impl ConvNormNonlin {
    fn new(spec: ConvSpec, ops: &ConvOps, vb: VarBuilder) -> Result<Self> {
        let spec = if ops.conv_bias { spec } else { spec.no_bias() };
        let conv = conv2d(spec, NNUNET_INIT, vb.pp("conv"))?;
        let norm = match ops.norm {
            None => None,
            Some(NormOp::InstanceNorm2d { eps }) => Some(Norm::Instance(InstanceNorm2d::new(
                spec.out_channels,
                eps,
                vb.pp("norm"),
            )?)),
            Some(NormOp::BatchNorm2d { eps }) => {
                Some(Norm::Batch(BatchNorm2d::new(spec.out_channels, eps, vb.pp("norm"))?))
            }
        };
        Ok(Self {
            conv,
            norm,
            nonlin: ops.nonlin,
        })
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let xs = self.conv.forward(xs)?;
        let xs = match &self.norm {
            None => xs,
            Some(Norm::Instance(norm)) => norm.forward(&xs)?,
            Some(Norm::Batch(norm)) => norm.forward_t(&xs, train)?,
        };
        match self.nonlin {
            None => Ok(xs),
            Some(nonlin) => nonlin.forward(&xs),
        }
    }
}

/// dynamic-network-architectures' `StackedConvBlocks`: `n` × [conv k×k with padding
/// (k−1)/2 → norm → nonlinearity], the first conv with the stage's stride. Variables are
/// `convs.{i}.conv.{weight,bias}` and `convs.{i}.norm.*`.
#[derive(Debug, Clone)]
pub struct StackedConvBlocks {
    convs: Vec<ConvNormNonlin>,
    ops: ConvOps,
    out_channels: usize,
}

impl StackedConvBlocks {
    /// Reads or creates `n_convs` blocks, `in_channels → out_channels` for the first (with
    /// stride `first_stride`) and `out_channels → out_channels` for the others, He-normal
    /// initialised.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when a count or size is zero; a candle error when a tensor is
    /// missing or mis-shaped in `vb`.
    pub fn new(
        n_convs: usize,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        first_stride: usize,
        ops: &ConvOps,
        vb: VarBuilder,
    ) -> Result<Self> {
        if n_convs == 0 || in_channels == 0 || out_channels == 0 || kernel == 0 || first_stride == 0 {
            return Err(Error::Config(format!(
                "StackedConvBlocks needs positive sizes, got {n_convs} convs, {in_channels}→{out_channels} \
                 channels, kernel {kernel}, stride {first_stride}"
            )));
        }
        let vb = vb.pp("convs");
        let convs = (0..n_convs)
            .map(|i| {
                let spec = if i == 0 {
                    ConvSpec::same(in_channels, out_channels, kernel).stride(first_stride)
                } else {
                    ConvSpec::same(out_channels, out_channels, kernel)
                };
                ConvNormNonlin::new(spec, ops, vb.pp(i))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            convs,
            ops: *ops,
            out_channels,
        })
    }

    /// `[B, in, H, W]` → `[B, out, H / stride, W / stride]` (rounded up); `train` makes
    /// batch norms use and record batch statistics.
    ///
    /// # Errors
    ///
    /// On a shape mismatch.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut xs = xs.clone();
        for conv in &self.convs {
            xs = conv.forward_t(&xs, train)?;
        }
        Ok(xs)
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// The state-dict names of this block's tensors under `prefix` (the block's own path,
    /// e.g. `encoder.stages.0.0`), as created in the variable builder.
    pub fn tensor_names(&self, prefix: &str) -> Vec<String> {
        self.name_pairs(prefix).into_iter().map(|(_, name)| name).collect()
    }

    /// PyTorch's second names for this block's tensors under `prefix`, as `(alias, name)`:
    /// `convs.{i}.all_modules.0.*` for `convs.{i}.conv.*` and `convs.{i}.all_modules.1.*`
    /// for `convs.{i}.norm.*`.
    pub fn state_dict_aliases(&self, prefix: &str) -> Vec<(String, String)> {
        self.name_pairs(prefix)
    }

    fn name_pairs(&self, prefix: &str) -> Vec<(String, String)> {
        let conv_params: &[&str] = if self.ops.conv_bias {
            &["weight", "bias"]
        } else {
            &["weight"]
        };
        let norm_params = self.ops.norm.map_or_else(Vec::new, NormOp::params);
        let mut pairs = Vec::new();
        for i in 0..self.convs.len() {
            let block = join(prefix, &format!("convs.{i}"));
            for p in conv_params {
                pairs.push((format!("{block}.all_modules.0.{p}"), format!("{block}.conv.{p}")));
            }
            for p in &norm_params {
                pairs.push((format!("{block}.all_modules.1.{p}"), format!("{block}.norm.{p}")));
            }
        }
        pairs
    }
}
