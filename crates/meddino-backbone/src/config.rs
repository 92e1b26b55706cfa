//! Constructor arguments of `DinoVisionTransformer`, with the reference defaults and the
//! named presets of `vision_transformer.py` and the DINOv3 hub.
//!
//! Field names are the upstream keyword arguments, so a JSON object of constructor
//! arguments (e.g. a `manifest.json` entry) deserialises directly; missing keys take the
//! upstream defaults and an explicit `null` clears an optional one.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Normalisation layer (`norm_layer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NormLayer {
    /// `"layernorm"`: LayerNorm, eps 1e-6.
    #[serde(rename = "layernorm")]
    LayerNorm,
    /// `"layernormbf16"`: LayerNorm, eps 1e-5 (the hub models).
    #[serde(rename = "layernormbf16")]
    LayerNormBf16,
    /// `"rmsnorm"`: RMSNorm, eps 1e-5, weight only.
    #[serde(rename = "rmsnorm")]
    RmsNorm,
}

impl NormLayer {
    /// The epsilon the reference uses for this layer.
    pub fn eps(self) -> f64 {
        match self {
            NormLayer::LayerNorm => 1e-6,
            NormLayer::LayerNormBf16 | NormLayer::RmsNorm => 1e-5,
        }
    }
}

/// Feed-forward layer (`ffn_layer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FfnLayer {
    /// `"mlp"`: Linear → exact GELU → Linear.
    #[serde(rename = "mlp")]
    Mlp,
    /// `"swiglu"`: SwiGLU, hidden size aligned to 8.
    #[serde(rename = "swiglu")]
    SwiGlu,
    /// `"swiglu32"`: SwiGLU aligned to 32.
    #[serde(rename = "swiglu32")]
    SwiGlu32,
    /// `"swiglu64"`: SwiGLU aligned to 64.
    #[serde(rename = "swiglu64")]
    SwiGlu64,
    /// `"swiglu128"`: SwiGLU aligned to 128.
    #[serde(rename = "swiglu128")]
    SwiGlu128,
}

impl FfnLayer {
    /// The hidden width of the layer for `embed_dim` and `ffn_ratio`, as the reference
    /// computes it (SwiGLU: two thirds, rounded up to the alignment).
    pub fn hidden_dim(self, embed_dim: usize, ffn_ratio: f64) -> usize {
        let hidden = (embed_dim as f64 * ffn_ratio) as usize;
        let align = match self {
            FfnLayer::Mlp => return hidden,
            FfnLayer::SwiGlu => 8,
            FfnLayer::SwiGlu32 => 32,
            FfnLayer::SwiGlu64 => 64,
            FfnLayer::SwiGlu128 => 128,
        };
        let d = hidden * 2 / 3;
        d.div_ceil(align) * align
    }
}

/// How RoPE coordinates are normalised (`pos_embed_rope_normalize_coords`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NormalizeCoords {
    /// Each axis by its own length.
    #[serde(rename = "separate")]
    Separate,
    /// Both axes by the larger length.
    #[serde(rename = "max")]
    Max,
    /// Both axes by the smaller length.
    #[serde(rename = "min")]
    Min,
}

/// The precision RoPE tables and rotated q/k are computed in (`pos_embed_rope_dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RopeDtype {
    /// bfloat16 with rounding after every operation (MedDINOv3's default).
    #[serde(rename = "bf16")]
    Bf16,
    /// float16 with rounding after every operation.
    #[serde(rename = "fp16")]
    Fp16,
    /// float32 (the hub models).
    #[serde(rename = "fp32")]
    Fp32,
}

/// The constructor arguments of `DinoVisionTransformer` that matter at inference and
/// fine-tuning. `Default` is the reference constructor's defaults (a ViT-B/16).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Nominal image size (bookkeeping only: any multiple of the patch size works).
    pub img_size: usize,
    /// Patch size in pixels.
    pub patch_size: usize,
    /// Input channels.
    pub in_chans: usize,
    /// RoPE base (exclusive with min/max period).
    pub pos_embed_rope_base: Option<f64>,
    /// RoPE minimum period (with `pos_embed_rope_max_period`).
    pub pos_embed_rope_min_period: Option<f64>,
    /// RoPE maximum period.
    pub pos_embed_rope_max_period: Option<f64>,
    /// RoPE coordinate normalisation.
    pub pos_embed_rope_normalize_coords: NormalizeCoords,
    /// Training-time RoPE coordinate shift (uniform in ±s).
    pub pos_embed_rope_shift_coords: Option<f64>,
    /// Training-time RoPE per-axis jitter factor.
    pub pos_embed_rope_jitter_coords: Option<f64>,
    /// Training-time RoPE rescale factor.
    pub pos_embed_rope_rescale_coords: Option<f64>,
    /// RoPE precision.
    pub pos_embed_rope_dtype: RopeDtype,
    /// Token width.
    pub embed_dim: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// FFN hidden width over the token width.
    pub ffn_ratio: f64,
    /// Whether the qkv projection has a bias.
    pub qkv_bias: bool,
    /// Stochastic depth rate (training only; the reference uses the same rate in every block).
    pub drop_path_rate: f64,
    /// LayerScale initial value; `None` (or 0) means no LayerScale.
    pub layerscale_init: Option<f64>,
    /// Normalisation layer.
    pub norm_layer: NormLayer,
    /// Feed-forward layer.
    pub ffn_layer: FfnLayer,
    /// The FFN hidden width when given explicitly (transformers' `intermediate_size`); `None`
    /// (upstream DINOv3, which has no such argument) derives it from `ffn_ratio` and
    /// `ffn_layer`. See [`Config::ffn_hidden_dim`].
    pub ffn_hidden_dim: Option<usize>,
    /// Whether FFN layers have biases.
    pub ffn_bias: bool,
    /// Whether the attention output projection has a bias.
    pub proj_bias: bool,
    /// Storage (register) tokens after the cls token.
    pub n_storage_tokens: usize,
    /// Whether the qkv bias is masked by the `bias_mask` buffer (keys get no bias).
    pub mask_k_bias: bool,
    /// A separate `cls_norm` for cls and storage tokens.
    pub untie_cls_and_patch_norms: bool,
    /// A `local_cls_norm` for local crops (used in SSL training only; loaded, not applied).
    pub untie_global_and_local_cls_norm: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            img_size: 224,
            patch_size: 16,
            in_chans: 3,
            pos_embed_rope_base: Some(100.0),
            pos_embed_rope_min_period: None,
            pos_embed_rope_max_period: None,
            pos_embed_rope_normalize_coords: NormalizeCoords::Separate,
            pos_embed_rope_shift_coords: None,
            pos_embed_rope_jitter_coords: None,
            pos_embed_rope_rescale_coords: None,
            pos_embed_rope_dtype: RopeDtype::Bf16,
            embed_dim: 768,
            depth: 12,
            num_heads: 12,
            ffn_ratio: 4.0,
            qkv_bias: true,
            drop_path_rate: 0.0,
            layerscale_init: None,
            norm_layer: NormLayer::LayerNorm,
            ffn_layer: FfnLayer::Mlp,
            ffn_hidden_dim: None,
            ffn_bias: true,
            proj_bias: true,
            n_storage_tokens: 0,
            mask_k_bias: false,
            untie_cls_and_patch_norms: false,
            untie_global_and_local_cls_norm: false,
        }
    }
}

impl Config {
    fn sized(embed_dim: usize, depth: usize, num_heads: usize, ffn_ratio: f64) -> Self {
        Self {
            embed_dim,
            depth,
            num_heads,
            ffn_ratio,
            ..Self::default()
        }
    }

    /// `vit_micro` (ours, not an upstream size): 64 / 4 blocks / 2 heads, about 0.2 M
    /// parameters. The DINOv3 architecture at a size that trains in minutes on a CPU: for
    /// smoke runs, tests and the phantom demo.
    pub fn vit_micro() -> Self {
        Self::sized(64, 4, 2, 4.0)
    }

    /// `vit_tiny` (ours, DeiT-Tiny's size): 192 / 12 blocks / 3 heads, about 5.5 M
    /// parameters; a ViT-B stand-in at a sixteenth of its compute.
    pub fn vit_tiny() -> Self {
        Self::sized(192, 12, 3, 4.0)
    }

    /// `vit_small`: 384 / 12 blocks / 6 heads.
    pub fn vit_small() -> Self {
        Self::sized(384, 12, 6, 4.0)
    }

    /// `vit_base`: 768 / 12 / 12.
    pub fn vit_base() -> Self {
        Self::sized(768, 12, 12, 4.0)
    }

    /// `vit_large`: 1024 / 24 / 16.
    pub fn vit_large() -> Self {
        Self::sized(1024, 24, 16, 4.0)
    }

    /// `vit_so400m`: 1152 / 27 / 18, FFN ratio 3.777….
    pub fn vit_so400m() -> Self {
        Self::sized(1152, 27, 18, 3.777777778)
    }

    /// `vit_huge2`: 1280 / 32 / 20.
    pub fn vit_huge2() -> Self {
        Self::sized(1280, 32, 20, 4.0)
    }

    /// `vit_giant2`: 1536 / 40 / 24.
    pub fn vit_giant2() -> Self {
        Self::sized(1536, 40, 24, 4.0)
    }

    /// `vit_7b`: 4096 / 40 / 32, FFN ratio 3.
    pub fn vit_7b() -> Self {
        Self::sized(4096, 40, 32, 3.0)
    }

    /// MedDINOv3's backbone: `vit_base(drop_path_rate=0.2, layerscale_init=1e-5,
    /// n_storage_tokens=4, qkv_bias=False, mask_k_bias=True)` (bf16 RoPE, LayerNorm 1e-6).
    pub fn meddinov3_vitb16() -> Self {
        Self {
            drop_path_rate: 0.2,
            layerscale_init: Some(1e-5),
            n_storage_tokens: 4,
            qkv_bias: false,
            mask_k_bias: true,
            ..Self::vit_base()
        }
    }

    /// This size with the settings every official DINOv3 hub model shares: RoPE coordinate
    /// rescaling 2 in fp32, LayerScale 1e-5, LayerNorm eps 1e-5, 4 registers, masked k-bias.
    pub fn with_hub_settings(self) -> Self {
        Self {
            pos_embed_rope_rescale_coords: Some(2.0),
            pos_embed_rope_dtype: RopeDtype::Fp32,
            layerscale_init: Some(1e-5),
            norm_layer: NormLayer::LayerNormBf16,
            n_storage_tokens: 4,
            mask_k_bias: true,
            ..self
        }
    }

    fn hub(embed_dim: usize, depth: usize, num_heads: usize, ffn_ratio: f64, ffn_layer: FfnLayer) -> Self {
        Self {
            ffn_layer,
            ..Self::sized(embed_dim, depth, num_heads, ffn_ratio)
        }
        .with_hub_settings()
    }

    /// Hub `dinov3_vits16`.
    pub fn vits16() -> Self {
        Self::hub(384, 12, 6, 4.0, FfnLayer::Mlp)
    }

    /// Hub `dinov3_vits16plus`.
    pub fn vits16plus() -> Self {
        Self::hub(384, 12, 6, 6.0, FfnLayer::SwiGlu)
    }

    /// Hub `dinov3_vitb16`.
    pub fn vitb16() -> Self {
        Self::hub(768, 12, 12, 4.0, FfnLayer::Mlp)
    }

    /// Hub `dinov3_vitl16`.
    pub fn vitl16() -> Self {
        Self::hub(1024, 24, 16, 4.0, FfnLayer::Mlp)
    }

    /// Hub `dinov3_vitl16plus`.
    pub fn vitl16plus() -> Self {
        Self::hub(1024, 24, 16, 6.0, FfnLayer::SwiGlu)
    }

    /// Hub `dinov3_vith16plus`.
    pub fn vith16plus() -> Self {
        Self::hub(1280, 32, 20, 6.0, FfnLayer::SwiGlu)
    }

    /// Hub `dinov3_vit7b16`.
    pub fn vit7b16() -> Self {
        Self {
            qkv_bias: false,
            untie_global_and_local_cls_norm: true,
            ..Self::hub(4096, 40, 32, 3.0, FfnLayer::SwiGlu64)
        }
    }

    /// The names [`Config::preset`] accepts.
    pub const PRESETS: [&'static str; 17] = [
        "vit_micro",
        "vit_tiny",
        "vit_small",
        "vit_base",
        "vit_large",
        "vit_so400m",
        "vit_huge2",
        "vit_giant2",
        "vit_7b",
        "vits16",
        "vits16plus",
        "vitb16",
        "vitl16",
        "vitl16plus",
        "vith16plus",
        "vit7b16",
        "meddinov3_vitb16",
    ];

    /// A preset by its upstream name (also accepting the hub's `dinov3_` prefix).
    ///
    /// # Errors
    ///
    /// When the name is unknown; the message lists the known ones.
    pub fn preset(name: &str) -> Result<Self> {
        Ok(match name.strip_prefix("dinov3_").unwrap_or(name) {
            "vit_micro" => Self::vit_micro(),
            "vit_tiny" => Self::vit_tiny(),
            "vit_small" => Self::vit_small(),
            "vit_base" => Self::vit_base(),
            "vit_large" => Self::vit_large(),
            "vit_so400m" => Self::vit_so400m(),
            "vit_huge2" => Self::vit_huge2(),
            "vit_giant2" => Self::vit_giant2(),
            "vit_7b" => Self::vit_7b(),
            "vits16" => Self::vits16(),
            "vits16plus" => Self::vits16plus(),
            "vitb16" => Self::vitb16(),
            "vitl16" => Self::vitl16(),
            "vitl16plus" => Self::vitl16plus(),
            "vith16plus" => Self::vith16plus(),
            "vit7b16" => Self::vit7b16(),
            "meddinov3_vitb16" => Self::meddinov3_vitb16(),
            other => {
                return Err(Error::Config(format!(
                    "unknown preset {other:?}; known: {}",
                    Self::PRESETS.join(", ")
                )))
            }
        })
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads.max(1)
    }

    /// The FFN hidden width: [`Config::ffn_hidden_dim`] when given, else what the reference
    /// derives from `ffn_ratio` and `ffn_layer`.
    pub fn ffn_hidden(&self) -> usize {
        self.ffn_hidden_dim
            .unwrap_or_else(|| self.ffn_layer.hidden_dim(self.embed_dim, self.ffn_ratio))
    }

    /// Whether LayerScale is present.
    pub fn has_layer_scale(&self) -> bool {
        self.layerscale_init.is_some_and(|v| v != 0.0)
    }

    /// Checks the arguments the way the reference constructor would fail on them.
    ///
    /// # Errors
    ///
    /// On a zero size, heads that do not divide the width, a head width RoPE cannot split
    /// into four, or RoPE periods given both ways (or neither).
    pub fn validate(&self) -> Result<()> {
        let fail = |message: String| Err(Error::Config(message));
        if self.patch_size == 0 || self.in_chans == 0 || self.embed_dim == 0 || self.num_heads == 0 {
            return fail(format!(
                "patch_size ({}), in_chans ({}), embed_dim ({}) and num_heads ({}) must be positive",
                self.patch_size, self.in_chans, self.embed_dim, self.num_heads
            ));
        }
        if self.embed_dim % (4 * self.num_heads) != 0 {
            return fail(format!(
                "embed_dim {} must be a multiple of 4 × num_heads = {} for RoPE",
                self.embed_dim,
                4 * self.num_heads
            ));
        }
        let periods = (self.pos_embed_rope_min_period, self.pos_embed_rope_max_period);
        match (self.pos_embed_rope_base, periods) {
            (Some(base), (None, None)) if base > 0.0 => {}
            (None, (Some(min), Some(max))) if min > 0.0 && max > 0.0 => {}
            _ => {
                return fail(format!(
                    "RoPE needs either pos_embed_rope_base or both min and max periods (all positive), got base {:?}, \
                     min {:?}, max {:?}",
                    self.pos_embed_rope_base, periods.0, periods.1
                ))
            }
        }
        if !(0.0..1.0).contains(&self.drop_path_rate) {
            return fail(format!("drop_path_rate {} must be in [0, 1)", self.drop_path_rate));
        }
        if self.ffn_hidden_dim == Some(0) {
            return fail("ffn_hidden_dim must be positive".into());
        }
        if !self.ffn_ratio.is_finite() || self.ffn_ratio <= 0.0 {
            return fail(format!("ffn_ratio {} must be positive", self.ffn_ratio));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_with_missing_and_null_keys() {
        let cfg: Config = serde_json::from_str(
            r#"{"embed_dim": 128, "depth": 2, "num_heads": 2, "ffn_ratio": 3.0, "pos_embed_rope_base": null,
                "pos_embed_rope_min_period": 0.5, "pos_embed_rope_max_period": 90.0, "ffn_layer": "swiglu64",
                "norm_layer": "layernormbf16", "pos_embed_rope_dtype": "fp32"}"#,
        )
        .expect("valid config");
        assert_eq!(cfg.pos_embed_rope_base, None);
        assert_eq!(cfg.patch_size, 16);
        assert!(cfg.qkv_bias);
        cfg.validate().expect("valid");
        assert_eq!(cfg.ffn_layer.hidden_dim(128, 3.0), 256);
    }

    #[test]
    fn hub_ffn_widths_match_the_reference() {
        for (cfg, hidden) in [
            (Config::vits16(), 1536),
            (Config::vits16plus(), 1536),
            (Config::vitl16plus(), 4096),
            (Config::vith16plus(), 5120),
            (Config::vit7b16(), 8192),
        ] {
            assert_eq!(
                cfg.ffn_layer.hidden_dim(cfg.embed_dim, cfg.ffn_ratio),
                hidden,
                "{cfg:?}"
            );
        }
    }

    #[test]
    fn every_preset_validates() {
        for name in Config::PRESETS {
            Config::preset(name)
                .and_then(|c| c.validate())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(Config::preset("dinov3_vitb16").is_ok());
        assert!(Config::preset("vit_enormous")
            .expect_err("unknown")
            .to_string()
            .contains("vit_small"));
    }

    #[test]
    fn invalid_configs_are_refused() {
        let both = Config {
            pos_embed_rope_min_period: Some(1.0),
            pos_embed_rope_max_period: Some(2.0),
            ..Config::default()
        };
        assert!(both.validate().is_err());
        let heads = Config {
            num_heads: 5,
            ..Config::default()
        };
        assert!(heads.validate().expect_err("heads").to_string().contains("num_heads"));
    }
}
