//! Reading checkpoints and loading them strictly into a model.
//!
//! Formats, detected from the file:
//! - safetensors: a flat state dict;
//! - `.pth` (PyTorch zip format): a DINOv3 training checkpoint (`teacher` entry, keys
//!   prefixed `backbone.`, SSL heads `dino_head.*`/`ibot_head.*` dropped) as the MedDINOv3
//!   release ships it; an nnU-Net checkpoint (`network_weights`); a `state_dict` or `model`
//!   wrapper; or a flat state dict as the DINOv3 hub files are. A `module.` prefix (from
//!   DataParallel) is removed;
//! - Hugging Face transformers' DINOv3 layout (a `model.safetensors` or sharded folder with
//!   its `config.json`, or `hf:ORG/NAME[@REVISION]` in the hub cache): renamed into upstream
//!   DINOv3's layout, with the config it declares (see [`crate::hf`]).
//!
//! A segmentation network's state dict holds the backbone under `dino_encoder.`;
//! [`StateDict::backbone`] picks it out. Loading is strict: every missing, mis-shaped and
//! unexpected tensor is reported by name, all at once.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::hf::{self, HubCache, HubModel};
use crate::vit::DinoVisionTransformer;

/// The layout a checkpoint file had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// A safetensors file.
    Safetensors,
    /// A DINOv3 training checkpoint (`teacher`).
    Teacher,
    /// An nnU-Net training checkpoint (`network_weights`).
    NnUnet,
    /// A `.pth` with a `state_dict` or `model` entry.
    Wrapped,
    /// A flat `.pth` state dict.
    FlatPth,
    /// Hugging Face transformers' `DINOv3ViTModel` (safetensors and `config.json`).
    HuggingFace,
}

/// A state dict read from a file, keys normalised as described in the module docs.
#[derive(Debug, Clone)]
pub struct StateDict {
    path: PathBuf,
    format: CheckpointFormat,
    tensors: HashMap<String, Tensor>,
    /// The architecture the checkpoint declares (a transformers `config.json`).
    config: Option<Config>,
}

/// The prefix under which segmentation networks keep their backbone.
pub const ENCODER_PREFIX: &str = "dino_encoder.";

impl StateDict {
    /// Reads a checkpoint onto the CPU: a file in any format of the module docs, a
    /// Hugging Face model folder (or its shard index), or `hf:ORG/NAME[@REVISION]` (when no
    /// file has that name), resolved through [`HubCache::from_env`].
    ///
    /// # Errors
    ///
    /// When the file is missing, unreadable, or not a safetensors / PyTorch zip checkpoint
    /// holding tensors; a hub model that is neither cached nor downloadable. The error names
    /// the file or model.
    pub fn read(path: &Path) -> Result<Self> {
        let fail = |message: String| Error::Checkpoint {
            path: path.to_path_buf(),
            message,
        };
        if !path.exists() {
            if let Some(model) = path.to_str().and_then(HubModel::parse) {
                return Self::read_hf(&HubCache::from_env().resolve(&model?)?);
            }
        }
        let is_index = path.to_str().is_some_and(|p| p.ends_with(".safetensors.index.json"));
        if path.is_dir() || is_index {
            return Self::read_hf(path);
        }
        if !path.is_file() {
            return Err(fail("no such file".into()));
        }
        let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
        let (format, entries) = if is_safetensors {
            let tensors = candle_core::safetensors::load(path, &Device::Cpu)
                .map_err(|e| fail(format!("not a readable safetensors file: {e}")))?;
            if hf::is_hf_layout(tensors.keys()) {
                return Ok(Self::from_converted(hf::convert(path, tensors)?));
            }
            (CheckpointFormat::Safetensors, tensors.into_iter().collect::<Vec<_>>())
        } else {
            Self::read_pth(path)?
        };
        let mut tensors = HashMap::with_capacity(entries.len());
        for (name, tensor) in entries {
            if format == CheckpointFormat::Teacher && (name.contains("dino_head") || name.contains("ibot")) {
                continue;
            }
            let name = name.strip_prefix("module.").unwrap_or(&name);
            let name = if format == CheckpointFormat::Teacher {
                name.replace("backbone.", "")
            } else {
                name.to_string()
            };
            let _ = tensors.insert(name, tensor);
        }
        if tensors.is_empty() {
            return Err(fail("holds no tensors".into()));
        }
        Ok(Self {
            path: path.to_path_buf(),
            format,
            tensors,
            config: None,
        })
    }

    /// A transformers model folder, or a file in one.
    fn read_hf(path: &Path) -> Result<Self> {
        Ok(Self::from_converted(hf::read(path)?))
    }

    fn from_converted(converted: hf::Converted) -> Self {
        Self {
            path: converted.path,
            format: CheckpointFormat::HuggingFace,
            tensors: converted.tensors,
            config: Some(converted.config),
        }
    }

    /// A PyTorch zip checkpoint: the first wrapper entry that exists, else the top level.
    fn read_pth(path: &Path) -> Result<(CheckpointFormat, Vec<(String, Tensor)>)> {
        let wrappers = [
            ("teacher", CheckpointFormat::Teacher),
            ("network_weights", CheckpointFormat::NnUnet),
            ("state_dict", CheckpointFormat::Wrapped),
            ("model", CheckpointFormat::Wrapped),
        ];
        for (key, format) in wrappers {
            if let Ok(entries) = candle_core::pickle::read_all_with_key(path, Some(key)) {
                if !entries.is_empty() {
                    return Ok((format, entries));
                }
            }
        }
        let entries = candle_core::pickle::read_all(path).map_err(|e| Error::Checkpoint {
            path: path.to_path_buf(),
            message: format!("not a readable PyTorch (zip) or safetensors checkpoint: {e}"),
        })?;
        Ok((CheckpointFormat::FlatPth, entries))
    }

    /// Wraps tensors already in memory (`path` names them in errors).
    pub fn from_tensors(path: impl Into<PathBuf>, tensors: HashMap<String, Tensor>) -> Self {
        Self {
            path: path.into(),
            format: CheckpointFormat::Safetensors,
            tensors,
            config: None,
        }
    }

    /// The state of a model built from a `VarMap` (its trainable variables) plus the
    /// buffers the model computed instead of registering (see
    /// [`DinoVisionTransformer::buffers`]): what a checkpoint of that model holds.
    pub fn from_varmap(
        path: impl Into<PathBuf>,
        varmap: &candle_nn::VarMap,
        buffers: impl IntoIterator<Item = (String, Tensor)>,
    ) -> Self {
        let data = varmap.data().lock().unwrap_or_else(PoisonError::into_inner);
        let mut tensors: HashMap<String, Tensor> =
            data.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
        tensors.extend(buffers);
        Self::from_tensors(path, tensors)
    }

    /// The file it came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The layout the file had.
    pub fn format(&self) -> CheckpointFormat {
        self.format
    }

    /// The architecture the checkpoint declares, when its format has a config (a
    /// transformers `config.json`); [`Config::infer`] returns it.
    pub fn declared_config(&self) -> Option<&Config> {
        self.config.as_ref()
    }

    /// All tensors by (normalised) name.
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    /// The backbone's tensors: those under `dino_encoder.` (prefix removed) when the state
    /// dict is a segmentation network's, else all of them.
    pub fn backbone(&self) -> StateDict {
        let encoder: HashMap<String, Tensor> = self
            .tensors
            .iter()
            .filter_map(|(k, t)| k.strip_prefix(ENCODER_PREFIX).map(|k| (k.to_string(), t.clone())))
            .collect();
        let tensors = if encoder.is_empty() {
            self.tensors.clone()
        } else {
            encoder
        };
        Self {
            path: self.path.clone(),
            format: self.format,
            tensors,
            config: self.config.clone(),
        }
    }

    /// Writes the state dict as safetensors (the `convert` path), atomically: a temporary
    /// file beside `path` is renamed over it once complete.
    ///
    /// # Errors
    ///
    /// When the file cannot be written; nothing is left at `path` then.
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temporary = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let result = candle_core::safetensors::save(&self.tensors, &temporary)
            .map_err(|e| e.to_string())
            .and_then(|()| std::fs::rename(&temporary, path).map_err(|e| e.to_string()));
        result.map_err(|message| {
            let _ = std::fs::remove_file(&temporary);
            Error::Checkpoint {
                path: path.to_path_buf(),
                message: format!("cannot write safetensors: {message}"),
            }
        })
    }

    /// Builds something from this state dict strictly: `build` gets a `VarBuilder` that
    /// records every tensor asked for; afterwards every missing, mis-shaped or unused
    /// tensor is reported, naming it, as one error about `what`.
    ///
    /// # Errors
    ///
    /// [`Error::StateDict`] listing every problem, or what `build` returns.
    pub fn load_strict<T, E: From<Error>>(
        &self,
        what: &str,
        dtype: DType,
        device: &Device,
        build: impl FnOnce(VarBuilder) -> Result<T, E>,
    ) -> Result<T, E> {
        self.load_strict_aliased(what, dtype, device, build, |_| Vec::new())
    }

    /// As [`Self::load_strict`], for modules PyTorch registers under two paths: `aliases`
    /// gives the built value's `(alias, name)` pairs; an alias in the file is expected to
    /// have its tensor's shape and is otherwise ignored (the tensor is read once, by name).
    ///
    /// # Errors
    ///
    /// As [`Self::load_strict`]; a mis-shaped alias is reported too.
    pub fn load_strict_aliased<T, E: From<Error>>(
        &self,
        what: &str,
        dtype: DType,
        device: &Device,
        build: impl FnOnce(VarBuilder) -> Result<T, E>,
        aliases: impl FnOnce(&T) -> Vec<(String, String)>,
    ) -> Result<T, E> {
        let records = Arc::new(Mutex::new(Records::default()));
        let backend = StrictBackend {
            tensors: self.tensors.clone(),
            records: Arc::clone(&records),
        };
        let built = build(VarBuilder::from_backend(Box::new(backend), dtype, device.clone()));
        let mut records = std::mem::take(&mut *records.lock().unwrap_or_else(PoisonError::into_inner));
        if let Ok(value) = &built {
            for (alias, name) in aliases(value) {
                if let (Some(a), Some(t)) = (self.tensors.get(&alias), self.tensors.get(&name)) {
                    if a.shape() != t.shape() {
                        records.problems.push(format!(
                            "wrong shape: {alias} is {:?}, but it names {name}, which is {:?}",
                            a.dims(),
                            t.dims()
                        ));
                    }
                }
                let _ = records.used.insert(alias);
            }
        }
        let mut problems = records.problems;
        let mut unexpected: Vec<&String> = self.tensors.keys().filter(|k| !records.used.contains(*k)).collect();
        unexpected.sort();
        problems.extend(
            unexpected
                .into_iter()
                .map(|k| format!("unexpected: {k} {:?}", self.tensors[k].dims())),
        );
        if !problems.is_empty() {
            // Mis-shaped first (they say most about a wrong model size), then missing,
            // then unexpected; by name within each kind.
            let kind = |p: &String| {
                ["wrong shape", "missing", "unexpected"]
                    .iter()
                    .position(|k| p.starts_with(k))
            };
            problems.sort_by(|a, b| (kind(a), a).cmp(&(kind(b), b)));
            return Err(Error::StateDict {
                path: self.path.clone(),
                what: what.to_string(),
                problems,
            }
            .into());
        }
        built
    }
}

/// What a strict load saw.
#[derive(Debug, Default)]
struct Records {
    used: HashSet<String>,
    problems: Vec<String>,
}

/// A VarBuilder backend over a state dict that never fails mid-build: a missing or
/// mis-shaped tensor is recorded and replaced by zeros, so one load reports every problem.
struct StrictBackend {
    tensors: HashMap<String, Tensor>,
    records: Arc<Mutex<Records>>,
}

impl SimpleBackend for StrictBackend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = records.used.insert(name.to_string());
        match self.tensors.get(name) {
            Some(t) if t.shape() == &shape => t.to_dtype(dtype)?.to_device(dev),
            Some(t) => {
                records.problems.push(format!(
                    "wrong shape: {name} is {:?}, expected {:?}",
                    t.dims(),
                    shape.dims()
                ));
                Tensor::zeros(shape, dtype, dev)
            }
            None => {
                records.problems.push(format!("missing: {name} {:?}", shape.dims()));
                Tensor::zeros(shape, dtype, dev)
            }
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = records.used.insert(name.to_string());
        match self.tensors.get(name) {
            Some(t) => t.to_dtype(dtype)?.to_device(dev),
            None => {
                records.problems.push(format!("missing: {name}"));
                Err(candle_core::Error::CannotFindTensor { path: name.to_string() })
            }
        }
    }

    /// Strict: every optional tensor (buffers such as `rope_embed.periods`) is required.
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

impl DinoVisionTransformer {
    /// Builds the model from a state dict, strictly (see [`StateDict::load_strict`]); a
    /// segmentation network's state dict contributes its `dino_encoder.` part.
    ///
    /// # Errors
    ///
    /// [`Error::StateDict`] naming every missing, mis-shaped or unexpected tensor.
    pub fn from_state_dict(cfg: &Config, state: &StateDict, device: &Device) -> Result<Self> {
        state
            .backbone()
            .load_strict("backbone", DType::F32, device, |vb| Self::new(cfg, vb))
    }

    /// Reads a checkpoint (any format in the module docs) and builds the model from it.
    ///
    /// # Errors
    ///
    /// As [`StateDict::read`] and [`Self::from_state_dict`].
    pub fn load(cfg: &Config, path: &Path, device: &Device) -> Result<Self> {
        Self::from_state_dict(cfg, &StateDict::read(path)?, device)
    }
}

/// The shape-visible structure of a backbone: what a state dict can tell about its config.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Structure {
    embed_dim: usize,
    depth: usize,
    head_dim: usize,
    patch_size: usize,
    in_chans: usize,
    n_storage_tokens: usize,
    qkv_bias: bool,
    mask_k_bias: bool,
    swiglu: bool,
    ffn_hidden: usize,
    layer_scale: bool,
    untie_cls_and_patch_norms: bool,
    untie_global_and_local_cls_norm: bool,
}

impl Structure {
    fn of_config(cfg: &Config) -> Self {
        Self {
            embed_dim: cfg.embed_dim,
            depth: cfg.depth,
            head_dim: cfg.head_dim(),
            patch_size: cfg.patch_size,
            in_chans: cfg.in_chans,
            n_storage_tokens: cfg.n_storage_tokens,
            qkv_bias: cfg.qkv_bias,
            mask_k_bias: cfg.qkv_bias && cfg.mask_k_bias,
            swiglu: cfg.ffn_layer != crate::config::FfnLayer::Mlp,
            ffn_hidden: cfg.ffn_hidden(),
            layer_scale: cfg.has_layer_scale(),
            untie_cls_and_patch_norms: cfg.untie_cls_and_patch_norms,
            untie_global_and_local_cls_norm: cfg.untie_global_and_local_cls_norm,
        }
    }

    fn of_state(state: &StateDict) -> Result<Self> {
        let t = state.tensors();
        let dims = |name: &str| -> Result<Vec<usize>> {
            t.get(name).map(|x| x.dims().to_vec()).ok_or_else(|| Error::Checkpoint {
                path: state.path().to_path_buf(),
                message: format!("cannot infer the architecture: no tensor {name}"),
            })
        };
        let patch = dims("patch_embed.proj.weight")?;
        let [embed_dim, in_chans, patch_size, _] = patch[..] else {
            return Err(Error::Checkpoint {
                path: state.path().to_path_buf(),
                message: format!("patch_embed.proj.weight has shape {patch:?}, expected [D, C, p, p]"),
            });
        };
        let depth = t
            .keys()
            .filter_map(|k| k.strip_prefix("blocks.")?.split('.').next()?.parse::<usize>().ok())
            .max()
            .map_or(0, |m| m + 1);
        let periods = dims("rope_embed.periods")?;
        let swiglu = t.contains_key("blocks.0.mlp.w1.weight");
        let hidden = dims(if swiglu {
            "blocks.0.mlp.w1.weight"
        } else {
            "blocks.0.mlp.fc1.weight"
        })?;
        Ok(Self {
            embed_dim,
            depth,
            head_dim: 4 * periods.first().copied().unwrap_or(0),
            patch_size,
            in_chans,
            n_storage_tokens: t
                .get("storage_tokens")
                .map_or(0, |s| s.dims().get(1).copied().unwrap_or(0)),
            qkv_bias: t.contains_key("blocks.0.attn.qkv.bias"),
            mask_k_bias: t.contains_key("blocks.0.attn.qkv.bias_mask"),
            swiglu,
            ffn_hidden: hidden.first().copied().unwrap_or(0),
            layer_scale: t.contains_key("blocks.0.ls1.gamma"),
            untie_cls_and_patch_norms: t.contains_key("cls_norm.weight"),
            untie_global_and_local_cls_norm: t.contains_key("local_cls_norm.weight"),
        })
    }
}

impl Config {
    /// The architecture a checkpoint declares ([`StateDict::declared_config`]), else the
    /// preset whose architecture a backbone state dict has, when exactly one fits.
    ///
    /// Shapes tell widths, depth, heads (from the RoPE periods), storage tokens, biases and
    /// the FFN, but not the norm epsilon or the RoPE precision: those come from the preset,
    /// which is why a state dict matching several presets (or none) is refused.
    ///
    /// # Errors
    ///
    /// When no preset or several fit (the message names them), or the state dict lacks the
    /// tensors the inference reads.
    pub fn infer(state: &StateDict) -> Result<Self> {
        if let Some(config) = state.declared_config() {
            return Ok(config.clone());
        }
        let state = state.backbone();
        let structure = Structure::of_state(&state)?;
        let matches: Vec<&str> = Config::PRESETS
            .into_iter()
            .filter(|name| Config::preset(name).is_ok_and(|cfg| Structure::of_config(&cfg) == structure))
            .collect();
        match matches[..] {
            [name] => Config::preset(name),
            [] => Err(Error::Checkpoint {
                path: state.path().to_path_buf(),
                message: format!("no preset has this architecture ({structure:?}); give the config explicitly"),
            }),
            _ => Err(Error::Checkpoint {
                path: state.path().to_path_buf(),
                message: format!(
                    "the architecture fits several presets ({}); choose one",
                    matches.join(", ")
                ),
            }),
        }
    }
}
