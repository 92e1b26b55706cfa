//! DINOv3 checkpoints as Hugging Face transformers saves them (`DINOv3ViTModel`): a folder
//! with `config.json` and `model.safetensors` (or `model.safetensors.index.json` and its
//! shards), such as the hub's `facebook/dinov3-vit*16-pretrain-*` models, and `hf:ORG/NAME`
//! names of such folders in the hub's cache ([`HubModel`], [`HubCache`]).
//!
//! [`StateDict::read`](crate::StateDict::read) reads them: the tensors are renamed into
//! upstream DINOv3's layout ([`layout`] lists the mapping) and `config.json` gives the
//! [`Config`] ([`HfConfig::to_config`]), which [`Config::infer`] then returns. transformers
//! computes RoPE in float32, so that is the precision such a config asks for; MedDINOv3's
//! bfloat16 RoPE comes with its own config (a MedDINOv3 trainer's, or a `config.json` that
//! sets our `pos_embed_rope_dtype` key).

mod config;
mod hub;
pub mod layout;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

pub use self::config::{HfConfig, OneOrPair};
pub use self::hub::{HubCache, HubModel, SCHEME};
use crate::config::Config;
use crate::error::{Error, Result};

/// A transformers checkpoint turned into this crate's layout.
#[derive(Debug)]
pub(crate) struct Converted {
    /// The file errors name: the single weights file or the shard index.
    pub path: PathBuf,
    /// What `config.json` describes.
    pub config: Config,
    /// Tensors in upstream DINOv3's names.
    pub tensors: HashMap<String, Tensor>,
}

/// Reads a transformers model folder (the folder itself, its `config.json`, its weights file
/// or its shard index may be named).
pub(crate) fn read(path: &Path) -> Result<Converted> {
    let folder = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(Path::new("."))
    };
    let files = weights_files(folder)?;
    let mut tensors = HashMap::new();
    for file in &files {
        let shard = candle_core::safetensors::load(file, &Device::Cpu).map_err(|e| Error::Checkpoint {
            path: file.clone(),
            message: format!("not a readable safetensors file: {e}"),
        })?;
        tensors.extend(shard);
    }
    let weights = if files.len() == 1 {
        files[0].clone()
    } else {
        folder.join(WEIGHTS_INDEX)
    };
    convert(&weights, tensors)
}

/// Converts tensors read from `weights` (transformers' layout) with the `config.json`
/// beside it.
pub(crate) fn convert(weights: &Path, tensors: HashMap<String, Tensor>) -> Result<Converted> {
    let config_path = weights.with_file_name(CONFIG);
    if !config_path.is_file() {
        return Err(Error::Checkpoint {
            path: weights.to_path_buf(),
            message: format!(
                "this is Hugging Face transformers' DINOv3 layout, which needs the {CONFIG} saved with it; \
                 there is none at {}",
                config_path.display()
            ),
        });
    }
    let config = HfConfig::read(&config_path)?
        .to_config()
        .map_err(|e| Error::Checkpoint {
            path: config_path.clone(),
            message: e.to_string(),
        })?;
    let tensors = layout::to_dinov3(tensors, &config)?;
    Ok(Converted {
        path: weights.to_path_buf(),
        config,
        tensors,
    })
}

/// Whether these tensor names are transformers' DINOv3 layout.
pub(crate) fn is_hf_layout<'a>(names: impl Iterator<Item = &'a String>) -> bool {
    layout::is_hf_layout(names)
}

// What a model folder holds: the config, and the weights as one file or as shards and their
// index.
const CONFIG: &str = "config.json";
const WEIGHTS: &str = "model.safetensors";
const WEIGHTS_INDEX: &str = "model.safetensors.index.json";

/// The weights files of a model folder: `model.safetensors`, or the shards its index lists.
fn weights_files(folder: &Path) -> Result<Vec<PathBuf>> {
    let single = folder.join(WEIGHTS);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = folder.join(WEIGHTS_INDEX);
    if index.is_file() {
        return Ok(shard_names(&index)?.into_iter().map(|name| folder.join(name)).collect());
    }
    Err(Error::Checkpoint {
        path: folder.to_path_buf(),
        message: format!("a Hugging Face model folder needs {WEIGHTS} or {WEIGHTS_INDEX}; neither is there"),
    })
}

/// The shard file names a `model.safetensors.index.json` lists, each once, in order.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let fail = |message: String| Error::Checkpoint {
        path: index.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(index).map_err(|e| fail(format!("cannot read: {e}")))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| fail(format!("not JSON: {e}")))?;
    let Some(map) = json.get("weight_map").and_then(serde_json::Value::as_object) else {
        return Err(fail("no \"weight_map\" object".into()));
    };
    let mut names = Vec::new();
    for (tensor, file) in map {
        let Some(file) = file.as_str().filter(|f| !f.contains(['/', '\\'])) else {
            return Err(fail(format!(
                "weight_map[{tensor:?}] is not a file name in the folder: {file}"
            )));
        };
        if !names.iter().any(|n| n == file) {
            names.push(file.to_string());
        }
    }
    names.sort();
    Ok(names)
}
