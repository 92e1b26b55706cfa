//! transformers' DINOv3 tensor names and shapes, turned into this crate's (upstream DINOv3's).
//!
//! | transformers | here |
//! |---|---|
//! | `embeddings.cls_token` / `register_tokens` / `mask_token` `[1, 1, D]` | `cls_token` / `storage_tokens` / `mask_token` `[1, D]` |
//! | `embeddings.patch_embeddings.*` | `patch_embed.proj.*` |
//! | `layer.N.attention.{q,k,v}_proj.*` | `blocks.N.attn.qkv.*`, concatenated; a missing k bias is zeros under `bias_mask` |
//! | `layer.N.attention.o_proj.*` | `blocks.N.attn.proj.*` |
//! | `layer.N.layer_scale{1,2}.lambda1` | `blocks.N.ls{1,2}.gamma` |
//! | `layer.N.mlp.{up,down}_proj.*` | `blocks.N.mlp.{fc1,fc2}.*` |
//! | `layer.N.mlp.{gate,up,down}_proj.*` (gated) | `blocks.N.mlp.{w1,w2,w3}.*` |
//! | `layer.N.norm{1,2}.*`, `norm.*` | `blocks.N.norm{1,2}.*`, `norm.*` |
//!
//! The RoPE periods, which transformers recomputes instead of storing, are computed from the
//! config as the reference's `_init_weights` does.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use crate::config::Config;
use crate::error::Result;
use crate::rope::RopePositionEmbedding;

/// The key every transformers DINOv3 state dict has, after an optional prefix (`model.`,
/// `dinov3.`, … from wrappers and task heads).
pub(crate) const MARKER: &str = "embeddings.patch_embeddings.weight";

/// Whether these tensor names are transformers' DINOv3 layout.
pub(crate) fn is_hf_layout<'a>(mut names: impl Iterator<Item = &'a String>) -> bool {
    names.any(|name| name.ends_with(MARKER))
}

/// Renames and reshapes a transformers DINOv3 state dict into this crate's layout. Tensors it
/// does not know keep their names, so a strict load reports them as unexpected.
pub(crate) fn to_dinov3(tensors: HashMap<String, Tensor>, cfg: &Config) -> Result<HashMap<String, Tensor>> {
    let prefix = tensors
        .keys()
        .find_map(|name| name.strip_suffix(MARKER))
        .unwrap_or_default()
        .to_string();
    let mut qkv: HashMap<(usize, &'static str), [Option<Tensor>; 3]> = HashMap::new();
    let mut out = HashMap::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let Some(key) = name.strip_prefix(&prefix) else {
            let _ = out.insert(name, tensor);
            continue;
        };
        match rename(key, cfg) {
            Renamed::To(new) => {
                let _ = out.insert(new, tensor);
            }
            Renamed::Row(new) => {
                let n = tensor.elem_count();
                let _ = out.insert(new, tensor.reshape((1, n))?);
            }
            Renamed::Qkv { block, part, slot } => {
                qkv.entry((block, part)).or_default()[slot] = Some(tensor);
            }
            Renamed::Dropped => {}
            Renamed::Unknown => {
                let _ = out.insert(name, tensor);
            }
        }
    }
    for ((block, part), [q, k, v]) in qkv {
        let name = format!("blocks.{block}.attn.qkv.{part}");
        match (q, k, v) {
            (Some(q), Some(k), Some(v)) => {
                let _ = out.insert(name, Tensor::cat(&[&q, &k, &v], 0)?);
            }
            // DINOv3's masked k bias: stored as zeros under a mask that zeroes it anyway.
            (Some(q), None, Some(v)) if part == "bias" => {
                let _ = out.insert(name, Tensor::cat(&[&q, &q.zeros_like()?, &v], 0)?);
            }
            // Incomplete: keep the parts under their own names for the strict load to report.
            (q, k, v) => {
                for (slot, tensor) in [("q", q), ("k", k), ("v", v)] {
                    if let Some(tensor) = tensor {
                        let _ = out.insert(format!("{prefix}layer.{block}.attention.{slot}_proj.{part}"), tensor);
                    }
                }
            }
        }
    }
    add_buffers(&mut out, cfg)?;
    Ok(out)
}

/// The buffers upstream DINOv3 stores and transformers recomputes.
fn add_buffers(out: &mut HashMap<String, Tensor>, cfg: &Config) -> Result<()> {
    let periods = RopePositionEmbedding::default_periods(cfg)?;
    let n = periods.len();
    let _ = out.insert("rope_embed.periods".into(), Tensor::from_vec(periods, n, &Device::Cpu)?);
    if cfg.qkv_bias && cfg.mask_k_bias {
        let d = cfg.embed_dim;
        let mask: Vec<f32> = (0..3 * d)
            .map(|i| if (d..2 * d).contains(&i) { 0.0 } else { 1.0 })
            .collect();
        let mask = Tensor::from_vec(mask, 3 * d, &Device::Cpu)?.to_dtype(DType::F32)?;
        for block in 0..cfg.depth {
            let _ = out.insert(format!("blocks.{block}.attn.qkv.bias_mask"), mask.clone());
        }
    }
    Ok(())
}

/// Where one transformers tensor goes.
#[derive(Debug, PartialEq, Eq)]
enum Renamed {
    /// This name, same shape.
    To(String),
    /// This name, `[1, 1, D]` → `[1, D]`.
    Row(String),
    /// One of q (slot 0), k (1), v (2) of a block's `weight` or `bias`.
    Qkv {
        block: usize,
        part: &'static str,
        slot: usize,
    },
    /// Not part of the network (an empty register tensor of a model without registers).
    Dropped,
    /// Not a DINOv3 tensor.
    Unknown,
}

fn rename(key: &str, cfg: &Config) -> Renamed {
    let to = |s: String| Renamed::To(s);
    match key {
        "embeddings.cls_token" => return to("cls_token".into()),
        "embeddings.mask_token" => return Renamed::Row("mask_token".into()),
        "embeddings.register_tokens" if cfg.n_storage_tokens == 0 => return Renamed::Dropped,
        "embeddings.register_tokens" => return to("storage_tokens".into()),
        _ => {}
    }
    if let Some(rest) = key.strip_prefix("embeddings.patch_embeddings.") {
        return to(format!("patch_embed.proj.{rest}"));
    }
    if let Some(rest) = key.strip_prefix("norm.") {
        return to(format!("norm.{rest}"));
    }
    // The encoder's blocks: `layer.N.` as saved, `model.layer.N.` as named in memory.
    let Some(rest) = key.strip_prefix("layer.").or_else(|| key.strip_prefix("model.layer.")) else {
        return Renamed::Unknown;
    };
    let Some((block, rest)) = rest.split_once('.') else {
        return Renamed::Unknown;
    };
    let Ok(block) = block.parse::<usize>() else {
        return Renamed::Unknown;
    };
    let gated = cfg.ffn_layer != crate::config::FfnLayer::Mlp;
    let (module, part) = match rest.rsplit_once('.') {
        Some(split) => split,
        None => return Renamed::Unknown,
    };
    let part: &'static str = match part {
        "weight" => "weight",
        "bias" => "bias",
        "lambda1" => "gamma",
        _ => return Renamed::Unknown,
    };
    let target = match module {
        "attention.q_proj" | "attention.k_proj" | "attention.v_proj" if part != "gamma" => {
            let slot = ["attention.q_proj", "attention.k_proj", "attention.v_proj"]
                .iter()
                .position(|m| *m == module)
                .unwrap_or_default();
            return Renamed::Qkv { block, part, slot };
        }
        "attention.o_proj" => "attn.proj",
        "layer_scale1" if part == "gamma" => "ls1",
        "layer_scale2" if part == "gamma" => "ls2",
        "norm1" => "norm1",
        "norm2" => "norm2",
        "mlp.up_proj" if gated => "mlp.w2",
        "mlp.gate_proj" if gated => "mlp.w1",
        "mlp.down_proj" if gated => "mlp.w3",
        "mlp.up_proj" => "mlp.fc1",
        "mlp.down_proj" => "mlp.fc2",
        _ => return Renamed::Unknown,
    };
    to(format!("blocks.{block}.{target}.{part}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ffn_kinds() {
        let mlp = Config::vits16();
        let gated = Config::vits16plus();
        assert_eq!(
            rename("layer.3.mlp.up_proj.weight", &mlp),
            Renamed::To("blocks.3.mlp.fc1.weight".into())
        );
        assert_eq!(
            rename("layer.3.mlp.up_proj.weight", &gated),
            Renamed::To("blocks.3.mlp.w2.weight".into())
        );
        assert_eq!(
            rename("model.layer.11.layer_scale2.lambda1", &mlp),
            Renamed::To("blocks.11.ls2.gamma".into())
        );
        assert_eq!(
            rename("layer.0.attention.k_proj.bias", &mlp),
            Renamed::Qkv {
                block: 0,
                part: "bias",
                slot: 1
            }
        );
        assert_eq!(rename("layer.0.attention.rope.weight", &mlp), Renamed::Unknown);
        assert_eq!(rename("classifier.weight", &mlp), Renamed::Unknown);
    }
}
