//! What the plans' `arch_kwargs` say about each convolution block (bias, norm,
//! nonlinearity), and the readers of its per-stage lists.

use candle_core::Tensor;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::layers::{WeightInit, BATCH_NORM_BUFFERS};

/// nnU-Net's `InitWeights_He(1e-2)`, applied to every convolution and transposed convolution.
pub const NNUNET_INIT: WeightInit = WeightInit::HeNormal { a: 1e-2 };

/// The class names accepted for each operation: the full module path nnU-Net writes to its
/// plans, and the short `torch.nn` spelling.
const CONV2D: [&str; 2] = ["torch.nn.modules.conv.Conv2d", "torch.nn.Conv2d"];
const INSTANCE_NORM2D: [&str; 2] = [
    "torch.nn.modules.instancenorm.InstanceNorm2d",
    "torch.nn.InstanceNorm2d",
];
const BATCH_NORM2D: [&str; 2] = ["torch.nn.modules.batchnorm.BatchNorm2d", "torch.nn.BatchNorm2d"];
const LEAKY_RELU: [&str; 2] = ["torch.nn.LeakyReLU", "torch.nn.modules.activation.LeakyReLU"];
const RELU: [&str; 2] = ["torch.nn.ReLU", "torch.nn.modules.activation.ReLU"];

/// The `arch_kwargs` keys of a PlainConvUNet that this port reads.
pub(super) const ARCH_KWARGS: [&str; 16] = [
    "n_stages",
    "features_per_stage",
    "conv_op",
    "kernel_sizes",
    "strides",
    "n_conv_per_stage",
    "n_conv_per_stage_decoder",
    "conv_bias",
    "norm_op",
    "norm_op_kwargs",
    "dropout_op",
    "dropout_op_kwargs",
    "nonlin",
    "nonlin_kwargs",
    "nonlin_first",
    "deep_supervision",
];

/// The normalisation after each convolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NormOp {
    /// `nn.InstanceNorm2d(affine=True)` ([`InstanceNorm2d`](crate::layers::InstanceNorm2d)).
    InstanceNorm2d {
        /// Added to the variance.
        eps: f64,
    },
    /// `nn.BatchNorm2d` with running statistics, momentum 0.1 ([`BatchNorm2d`](crate::layers::BatchNorm2d)).
    BatchNorm2d {
        /// Added to the variance.
        eps: f64,
    },
}

impl NormOp {
    /// The state-dict suffixes of this norm's tensors.
    pub(super) fn params(self) -> Vec<&'static str> {
        let mut params = vec!["weight", "bias"];
        if let NormOp::BatchNorm2d { .. } = self {
            params.extend(BATCH_NORM_BUFFERS);
        }
        params
    }
}

/// The nonlinearity after each norm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Nonlin {
    /// `nn.LeakyReLU(negative_slope)`.
    LeakyReLU {
        /// Slope for negative inputs (PyTorch's default 0.01).
        negative_slope: f64,
    },
    /// `nn.ReLU`.
    ReLU,
}

impl Nonlin {
    /// Applies the nonlinearity elementwise (differentiable).
    ///
    /// # Errors
    ///
    /// On a candle error.
    pub fn forward(self, xs: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Nonlin::ReLU => xs.relu()?,
            // max(x, s·x) is the leaky ReLU for 0 ≤ s ≤ 1, in two ops instead of four.
            Nonlin::LeakyReLU { negative_slope } if (0.0..=1.0).contains(&negative_slope) => {
                xs.maximum(&(xs * negative_slope)?)?
            }
            Nonlin::LeakyReLU { negative_slope } => candle_nn::ops::leaky_relu(xs, negative_slope)?,
        })
    }
}

/// What follows each convolution of a U-Net, and whether convolutions have a bias: the
/// operation part of a plans configuration's `arch_kwargs`. The default is what nnU-Net
/// plans: bias, `InstanceNorm2d(eps=1e-5, affine=True)`, `LeakyReLU(0.01)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvOps {
    /// Whether convolutions (and transposed convolutions) have a bias (`conv_bias`).
    pub conv_bias: bool,
    /// The norm after each convolution (`norm_op`, `norm_op_kwargs`); `None` for none.
    pub norm: Option<NormOp>,
    /// The nonlinearity after each norm (`nonlin`, `nonlin_kwargs`); `None` for none.
    pub nonlin: Option<Nonlin>,
}

impl Default for ConvOps {
    fn default() -> Self {
        Self {
            conv_bias: true,
            norm: Some(NormOp::InstanceNorm2d { eps: 1e-5 }),
            nonlin: Some(Nonlin::LeakyReLU { negative_slope: 1e-2 }),
        }
    }
}

impl ConvOps {
    /// Reads `conv_op`, `conv_bias`, `norm_op(_kwargs)`, `dropout_op`, `nonlin(_kwargs)` and
    /// `nonlin_first` from a plans configuration's `arch_kwargs`. Absent optional keys take
    /// dynamic-network-architectures' defaults (`conv_bias` false, no norm, no nonlinearity,
    /// `InstanceNorm2d` not affine, `LeakyReLU` slope 0.01).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the key and what was expected when `conv_op` is not Conv2d,
    /// `dropout_op` is not null, `nonlin_first` is true, the norm or nonlinearity is unknown,
    /// the norm is not affine, or a keyword argument is unknown or of the wrong type.
    pub fn from_arch_kwargs(kwargs: &Value) -> Result<Self> {
        let object = as_object(kwargs)?;
        match class_name(object, "conv_op")? {
            Some(name) if CONV2D.contains(&name) => {}
            Some(name) => {
                return Err(Error::Config(format!(
                    "arch_kwargs.conv_op: expected {} (2-D networks only), got {name}",
                    CONV2D[0]
                )))
            }
            None => return Err(Error::Config("arch_kwargs.conv_op is missing or null".into())),
        }
        if let Some(name) = class_name(object, "dropout_op")? {
            return Err(Error::Config(format!(
                "arch_kwargs.dropout_op: expected null (dropout is not supported), got {name}"
            )));
        }
        match object.get("nonlin_first") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(other) => {
                return Err(Error::Config(format!(
                    "arch_kwargs.nonlin_first: expected false (norm before nonlinearity), got {other}"
                )))
            }
        }
        let conv_bias = match object.get("conv_bias") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(Error::Config(format!(
                    "arch_kwargs.conv_bias: expected true or false, got {other}"
                )))
            }
        };
        Ok(Self {
            conv_bias,
            norm: parse_norm(object)?,
            nonlin: parse_nonlin(object)?,
        })
    }
}

pub(super) fn as_object(kwargs: &Value) -> Result<&Map<String, Value>> {
    kwargs
        .as_object()
        .ok_or_else(|| Error::Config(format!("arch_kwargs: expected a JSON object, got {kwargs}")))
}

/// A class-name entry: `None` when absent or null.
pub(super) fn class_name<'a>(object: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(name)) => Ok(Some(name)),
        Some(other) => Err(Error::Config(format!(
            "arch_kwargs.{key}: expected a class name or null, got {other}"
        ))),
    }
}

/// A keyword-argument dictionary: empty when absent or null.
pub(super) fn op_kwargs<'a>(object: &'a Map<String, Value>, key: &str) -> Result<Option<&'a Map<String, Value>>> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(Error::Config(format!(
            "arch_kwargs.{key}: expected an object or null, got {other}"
        ))),
    }
}

/// Whether the class `name` of `arch_kwargs.{key}` is one of `second`'s names rather than
/// one of `first`'s; any other class is refused, naming the key.
fn is_second_of(key: &str, name: &str, first: &[&str], second: &[&str]) -> Result<bool> {
    if first.contains(&name) {
        Ok(false)
    } else if second.contains(&name) {
        Ok(true)
    } else {
        Err(Error::Config(format!(
            "arch_kwargs.{key}: expected {} or {} (or null), got {name}",
            first[0], second[0]
        )))
    }
}

fn parse_norm(object: &Map<String, Value>) -> Result<Option<NormOp>> {
    let Some(name) = class_name(object, "norm_op")? else {
        return Ok(None);
    };
    let batch = is_second_of("norm_op", name, &INSTANCE_NORM2D, &BATCH_NORM2D)?;
    let mut eps = 1e-5;
    // PyTorch's defaults: InstanceNorm2d is not affine, BatchNorm2d is.
    let mut affine = batch;
    for (key, value) in op_kwargs(object, "norm_op_kwargs")?.into_iter().flatten() {
        let bad = |expected: &str| {
            Error::Config(format!(
                "arch_kwargs.norm_op_kwargs.{key}: expected {expected} for {name}, got {value}"
            ))
        };
        match key.as_str() {
            "eps" => {
                eps = value
                    .as_f64()
                    .filter(|e| e.is_finite() && *e > 0.0)
                    .ok_or_else(|| bad("a positive number"))?;
            }
            "affine" => affine = value.as_bool().ok_or_else(|| bad("true or false"))?,
            "momentum" if batch => {
                if value.as_f64() != Some(0.1) {
                    return Err(bad("0.1 (the only momentum BatchNorm2d here supports)"));
                }
            }
            // Without running statistics an instance norm never uses its momentum.
            "momentum" => {
                value.as_f64().ok_or_else(|| bad("a number"))?;
            }
            "track_running_stats" => {
                if value.as_bool() != Some(batch) {
                    return Err(bad(if batch { "true" } else { "false" }));
                }
            }
            _ => {
                return Err(Error::Config(format!(
                    "arch_kwargs.norm_op_kwargs.{key}: unknown argument for {name} (known: eps, affine, momentum, \
                     track_running_stats)"
                )))
            }
        }
    }
    if !affine {
        return Err(Error::Config(format!(
            "arch_kwargs.norm_op_kwargs.affine: expected true (norms here always have a weight and bias), got \
             false for {name}"
        )));
    }
    Ok(Some(if batch {
        NormOp::BatchNorm2d { eps }
    } else {
        NormOp::InstanceNorm2d { eps }
    }))
}

fn parse_nonlin(object: &Map<String, Value>) -> Result<Option<Nonlin>> {
    let Some(name) = class_name(object, "nonlin")? else {
        return Ok(None);
    };
    let leaky = !is_second_of("nonlin", name, &LEAKY_RELU, &RELU)?;
    let mut negative_slope = 1e-2;
    for (key, value) in op_kwargs(object, "nonlin_kwargs")?.into_iter().flatten() {
        match key.as_str() {
            // In-place or not, the result is the same.
            "inplace" if value.is_boolean() => {}
            "negative_slope" if leaky => {
                negative_slope = value.as_f64().filter(|s| s.is_finite()).ok_or_else(|| {
                    Error::Config(format!(
                        "arch_kwargs.nonlin_kwargs.negative_slope: expected a number, got {value}"
                    ))
                })?;
            }
            _ => {
                return Err(Error::Config(format!(
                    "arch_kwargs.nonlin_kwargs.{key}: unknown or mistyped argument for {name} (got {value}; known: \
                     inplace{})",
                    if leaky { ", negative_slope" } else { "" }
                )))
            }
        }
    }
    Ok(Some(if leaky {
        Nonlin::LeakyReLU { negative_slope }
    } else {
        Nonlin::ReLU
    }))
}

/// A positive integer.
pub(super) fn positive(value: &Value, what: &str) -> Result<usize> {
    value
        .as_u64()
        .and_then(|v| usize::try_from(v).ok())
        .filter(|v| *v > 0)
        .ok_or_else(|| Error::Config(format!("{what}: expected a positive integer, got {value}")))
}

/// A per-stage list of positive integers (or one integer for every stage), of length `n`.
pub(super) fn per_stage(object: &Map<String, Value>, key: &str, n: usize, n_name: &str) -> Result<Vec<usize>> {
    let value = object
        .get(key)
        .ok_or_else(|| Error::Config(format!("arch_kwargs.{key} is missing")))?;
    match value {
        Value::Array(items) => {
            if items.len() != n {
                return Err(Error::Config(format!(
                    "arch_kwargs.{key} has {} entries, expected {n_name} = {n}",
                    items.len()
                )));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, v)| positive(v, &format!("arch_kwargs.{key}[{i}]")))
                .collect()
        }
        other => Ok(vec![positive(other, &format!("arch_kwargs.{key}"))?; n]),
    }
}

/// A per-stage list of square 2-D sizes (`[a, a]` or `a` per stage, or one `a` for all).
pub(super) fn per_stage_square(object: &Map<String, Value>, key: &str, n: usize) -> Result<Vec<usize>> {
    let value = object
        .get(key)
        .ok_or_else(|| Error::Config(format!("arch_kwargs.{key} is missing")))?;
    let square = |v: &Value, what: String| -> Result<usize> {
        match v {
            Value::Array(axes) => match axes.as_slice() {
                [a, b] => {
                    let (a, b) = (positive(a, &what)?, positive(b, &what)?);
                    if a == b {
                        Ok(a)
                    } else {
                        Err(Error::Config(format!(
                            "{what}: expected a square 2-D size [a, a], got [{a}, {b}] (non-square sizes are not \
                             supported)"
                        )))
                    }
                }
                _ => Err(Error::Config(format!(
                    "{what}: expected 2 entries for a 2-D convolution, got {v}"
                ))),
            },
            other => positive(other, &what),
        }
    };
    match value {
        Value::Array(items) => {
            if items.len() != n {
                return Err(Error::Config(format!(
                    "arch_kwargs.{key} has {} entries, expected n_stages = {n}",
                    items.len()
                )));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, v)| square(v, format!("arch_kwargs.{key}[{i}]")))
                .collect()
        }
        other => Ok(vec![square(other, format!("arch_kwargs.{key}"))?; n]),
    }
}
