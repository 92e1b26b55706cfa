//! transformers' `DINOv3ViTConfig` (a model's `config.json`) and the [`Config`] it describes.

use std::path::Path;

use serde::Deserialize;

use crate::config::{Config, FfnLayer, NormLayer, NormalizeCoords, RopeDtype};
use crate::error::{Error, Result};

/// The keys of transformers' `DINOv3ViTConfig` that shape the network, with the defaults of
/// transformers 5.25 (a key missing from `config.json` takes them, as `from_pretrained` does).
/// Keys that only matter to transformers (`out_indices`, `initializer_range`, …) are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct HfConfig {
    /// `"dinov3_vit"` for the models this reads.
    pub model_type: Option<String>,
    /// Patch size, square (an `[h, w]` pair must have equal sides).
    pub patch_size: OneOrPair,
    /// Token width.
    pub hidden_size: usize,
    /// FFN hidden width.
    pub intermediate_size: usize,
    /// Number of blocks.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// FFN activation: `"gelu"` (exact) for the MLP, `"silu"` for the gated one.
    pub hidden_act: String,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// RoPE base period.
    pub rope_theta: f64,
    /// Nominal image size.
    pub image_size: OneOrPair,
    /// Input channels.
    pub num_channels: usize,
    /// Whether the query projection has a bias.
    pub query_bias: bool,
    /// Whether the key projection has a bias.
    pub key_bias: bool,
    /// Whether the value projection has a bias.
    pub value_bias: bool,
    /// Whether the attention output projection has a bias.
    pub proj_bias: bool,
    /// Whether the FFN layers have biases.
    pub mlp_bias: bool,
    /// Initial LayerScale value (every block has LayerScale in this layout).
    pub layerscale_value: f64,
    /// Stochastic depth rate.
    pub drop_path_rate: f64,
    /// Whether the FFN is gated (SwiGLU).
    pub use_gated_mlp: bool,
    /// Register (storage) tokens.
    pub num_register_tokens: usize,
    /// Training-time RoPE coordinate shift.
    pub pos_embed_shift: Option<f64>,
    /// Training-time RoPE jitter.
    pub pos_embed_jitter: Option<f64>,
    /// Training-time RoPE rescale.
    pub pos_embed_rescale: Option<f64>,
    /// Not a transformers key: transformers computes RoPE in float32, MedDINOv3 in bfloat16.
    /// A `config.json` may name the precision with this key of ours; absent, it is `fp32`,
    /// as transformers computes it.
    pub pos_embed_rope_dtype: Option<RopeDtype>,
}

/// An integer or an `[h, w]` pair, as transformers accepts for sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrPair {
    /// The same size both ways.
    One(usize),
    /// Height and width.
    Pair([usize; 2]),
}

impl OneOrPair {
    fn square(self) -> Option<usize> {
        match self {
            OneOrPair::One(n) => Some(n),
            OneOrPair::Pair([h, w]) if h == w => Some(h),
            OneOrPair::Pair(_) => None,
        }
    }
}

impl Default for HfConfig {
    fn default() -> Self {
        Self {
            model_type: None,
            patch_size: OneOrPair::One(16),
            hidden_size: 384,
            intermediate_size: 1536,
            num_hidden_layers: 12,
            num_attention_heads: 6,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-5,
            rope_theta: 100.0,
            image_size: OneOrPair::One(224),
            num_channels: 3,
            query_bias: true,
            key_bias: false,
            value_bias: true,
            proj_bias: true,
            mlp_bias: true,
            layerscale_value: 1.0,
            drop_path_rate: 0.0,
            use_gated_mlp: false,
            num_register_tokens: 0,
            pos_embed_shift: None,
            pos_embed_jitter: None,
            pos_embed_rescale: Some(2.0),
            pos_embed_rope_dtype: None,
        }
    }
}

impl HfConfig {
    /// Reads a `config.json`.
    ///
    /// # Errors
    ///
    /// When the file cannot be read or parsed, or is not a `dinov3_vit` config; the error
    /// names the file.
    pub fn read(path: &Path) -> Result<Self> {
        let fail = |message: String| Error::Checkpoint {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let config: Self =
            serde_json::from_str(&text).map_err(|e| fail(format!("not a transformers DINOv3 config.json: {e}")))?;
        match config.model_type.as_deref() {
            None | Some("dinov3_vit") => Ok(config),
            Some(other) => Err(fail(format!(
                "model_type is {other:?}; this reads transformers' DINOv3 ViT (\"dinov3_vit\")"
            ))),
        }
    }

    /// The [`Config`] of the same network.
    ///
    /// # Errors
    ///
    /// When the config describes something the DINOv3 architecture does not have (a
    /// non-square patch, another activation, a LayerNorm epsilon other than DINOv3's 1e-6 or
    /// 1e-5, q and v biases that differ); the message names the key.
    pub fn to_config(&self) -> Result<Config> {
        let fail = |message: String| Err(Error::Config(format!("config.json: {message}")));
        let Some(patch_size) = self.patch_size.square() else {
            return fail(format!("patch_size {:?} is not square", self.patch_size));
        };
        let expected_act = if self.use_gated_mlp { "silu" } else { "gelu" };
        if self.hidden_act != expected_act {
            return fail(format!(
                "hidden_act {:?} with use_gated_mlp={}: DINOv3 uses {expected_act:?} there",
                self.hidden_act, self.use_gated_mlp
            ));
        }
        let norm_layer = if self.layer_norm_eps == NormLayer::LayerNorm.eps() {
            NormLayer::LayerNorm
        } else if self.layer_norm_eps == NormLayer::LayerNormBf16.eps() {
            NormLayer::LayerNormBf16
        } else {
            return fail(format!(
                "layer_norm_eps {} is neither of DINOv3's LayerNorm epsilons (1e-6, 1e-5)",
                self.layer_norm_eps
            ));
        };
        // One qkv projection: q and v share a bias switch; the k bias is either there or
        // masked to zero (DINOv3's `mask_k_bias`).
        let (qkv_bias, mask_k_bias) = match (self.query_bias, self.key_bias, self.value_bias) {
            (true, false, true) => (true, true),
            (true, true, true) => (true, false),
            (false, false, false) => (false, false),
            (q, k, v) => {
                return fail(format!(
                    "query_bias={q}, key_bias={k}, value_bias={v}: DINOv3's fused qkv projection has q and v \
                     biases both or neither, and a k bias only with them"
                ))
            }
        };
        let (ffn_layer, ffn_ratio) = if self.use_gated_mlp {
            // The ratio the reference would need before SwiGLU's two thirds (informative:
            // the width is given).
            (
                FfnLayer::SwiGlu,
                1.5 * self.intermediate_size as f64 / self.hidden_size.max(1) as f64,
            )
        } else {
            (
                FfnLayer::Mlp,
                self.intermediate_size as f64 / self.hidden_size.max(1) as f64,
            )
        };
        let config = Config {
            img_size: self.image_size.square().unwrap_or(224),
            patch_size,
            in_chans: self.num_channels,
            pos_embed_rope_base: Some(self.rope_theta),
            pos_embed_rope_min_period: None,
            pos_embed_rope_max_period: None,
            pos_embed_rope_normalize_coords: NormalizeCoords::Separate,
            pos_embed_rope_shift_coords: self.pos_embed_shift,
            pos_embed_rope_jitter_coords: self.pos_embed_jitter,
            pos_embed_rope_rescale_coords: self.pos_embed_rescale,
            pos_embed_rope_dtype: self.pos_embed_rope_dtype.unwrap_or(RopeDtype::Fp32),
            embed_dim: self.hidden_size,
            depth: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            ffn_ratio,
            qkv_bias,
            drop_path_rate: self.drop_path_rate,
            // Every block of this layout has LayerScale; the value only initialises it.
            layerscale_init: Some(if self.layerscale_value == 0.0 {
                1.0
            } else {
                self.layerscale_value
            }),
            norm_layer,
            ffn_layer,
            ffn_hidden_dim: Some(self.intermediate_size),
            ffn_bias: self.mlp_bias,
            proj_bias: self.proj_bias,
            n_storage_tokens: self.num_register_tokens,
            mask_k_bias,
            untie_cls_and_patch_norms: false,
            untie_global_and_local_cls_norm: false,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hub models' `config.json`s, reduced to the keys that differ between sizes (the
    /// rest are transformers' defaults: 4 registers, q and v biases, RoPE base 100, eps 1e-5).
    fn hub_config(hidden: usize, layers: usize, heads: usize, intermediate: usize, gated: bool) -> HfConfig {
        HfConfig {
            model_type: Some("dinov3_vit".into()),
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: intermediate,
            use_gated_mlp: gated,
            hidden_act: if gated { "silu" } else { "gelu" }.into(),
            num_register_tokens: 4,
            ..HfConfig::default()
        }
    }

    #[test]
    fn hub_sizes_map_to_the_presets() {
        let no_bias = |c: HfConfig| HfConfig {
            query_bias: false,
            value_bias: false,
            ..c
        };
        for (hf, preset) in [
            (hub_config(384, 12, 6, 1536, false), Config::vits16()),
            (hub_config(384, 12, 6, 1536, true), Config::vits16plus()),
            (hub_config(768, 12, 12, 3072, false), Config::vitb16()),
            (hub_config(1024, 24, 16, 4096, false), Config::vitl16()),
            (hub_config(1024, 24, 16, 4096, true), Config::vitl16plus()),
            (hub_config(1280, 32, 20, 5120, true), Config::vith16plus()),
            (no_bias(hub_config(4096, 40, 32, 8192, true)), Config::vit7b16()),
        ] {
            let cfg = hf.to_config().expect("valid");
            let shape = |c: &Config| {
                (
                    c.embed_dim,
                    c.depth,
                    c.num_heads,
                    c.ffn_hidden(),
                    c.ffn_layer == FfnLayer::Mlp,
                    c.qkv_bias,
                    c.qkv_bias && c.mask_k_bias,
                    c.n_storage_tokens,
                    c.patch_size,
                )
            };
            assert_eq!(shape(&cfg), shape(&preset), "{preset:?}");
            let numerics = |c: &Config| {
                (
                    c.norm_layer,
                    c.pos_embed_rope_base,
                    c.pos_embed_rope_dtype,
                    c.pos_embed_rope_rescale_coords,
                    c.pos_embed_rope_normalize_coords,
                )
            };
            assert_eq!(numerics(&cfg), numerics(&preset), "{preset:?}");
        }
    }

    #[test]
    fn what_dinov3_lacks_is_refused_by_key() {
        let refused = |c: HfConfig| c.to_config().expect_err("refused").to_string();
        let base = HfConfig::default();
        assert!(refused(HfConfig {
            hidden_act: "relu".into(),
            ..base.clone()
        })
        .contains("hidden_act"));
        assert!(refused(HfConfig {
            layer_norm_eps: 1e-12,
            ..base.clone()
        })
        .contains("layer_norm_eps"));
        assert!(refused(HfConfig {
            value_bias: false,
            ..base.clone()
        })
        .contains("value_bias=false"));
        assert!(refused(HfConfig {
            patch_size: OneOrPair::Pair([16, 8]),
            ..base.clone()
        })
        .contains("patch_size"));
        // MedDINOv3's precision, named with our key.
        let bf16: HfConfig =
            serde_json::from_str(r#"{"pos_embed_rope_dtype": "bf16", "patch_size": [16, 16]}"#).expect("json");
        assert_eq!(bf16.to_config().expect("valid").pos_embed_rope_dtype, RopeDtype::Bf16);
    }
}
