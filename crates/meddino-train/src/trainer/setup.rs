//! Preparing a run: the plans entries training needs, the fold's cases, pretrained weights.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Var};
use meddino_backbone::{Config, StateDict};
use nnunet_data::preprocess::store::PreprocessedCase;
use nnunet_data::split::{crossval_split, read_splits, write_splits, SPLIT_SEED};
use nnunet_data::Plans;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::optim::NamedVars;
use crate::predict::patch_size_2d;

/// The plans entries training needs.
#[derive(Debug, Clone)]
pub(super) struct PlansConfiguration {
    pub(super) patch: [usize; 2],
    pub(super) batch_size: usize,
    pub(super) batch_dice: bool,
    pub(super) data_identifier: String,
    pub(super) mask_image: bool,
    pub(super) values: Map<String, Value>,
}

impl PlansConfiguration {
    pub(super) fn read(plans: &Plans, name: &str, path: &Path) -> Result<Self> {
        let values = plans.configuration(name)?;
        let fail = |message: String| Error::Setup(format!("{}: configuration {name:?}: {message}", path.display()));
        let patch = patch_size_2d(&values).map_err(|e| fail(e.to_string()))?;
        let batch_size = values
            .get("batch_size")
            .and_then(Value::as_u64)
            .ok_or_else(|| fail("no batch_size".into()))? as usize;
        let data_identifier = values
            .get("data_identifier")
            .and_then(Value::as_str)
            .ok_or_else(|| fail("no data_identifier".into()))?
            .to_string();
        let mask_image = values
            .get("use_mask_for_norm")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v.as_bool() == Some(true)));
        Ok(Self {
            patch,
            batch_size,
            batch_dice: values.get("batch_dice").and_then(Value::as_bool).unwrap_or(true),
            data_identifier,
            mask_image,
            values,
        })
    }
}

/// The fold's training and validation case ids, creating `splits_final.json` (5 folds,
/// nnU-Net's seed) when the data set has none.
pub(super) fn fold_cases(preprocessed: &Path, data_folder: &Path, fold: &str) -> Result<(Vec<String>, Vec<String>)> {
    let mut ids: Vec<String> = std::fs::read_dir(data_folder)
        .map_err(|source| Error::ListFolder {
            path: data_folder.to_path_buf(),
            source,
        })?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".json").map(str::to_string)
        })
        .collect();
    ids.sort();
    if ids.is_empty() {
        return Err(Error::Setup(format!(
            "{}: no preprocessed cases (run `meddino plan-and-preprocess` first)",
            data_folder.display()
        )));
    }
    if fold == "all" {
        return Ok((ids.clone(), ids));
    }
    let index: usize = fold
        .parse()
        .map_err(|_| Error::Setup(format!("fold must be a number or `all`, not {fold:?}")))?;
    let path = preprocessed.join("splits_final.json");
    let folds = if path.is_file() {
        read_splits(&path)?
    } else {
        let folds = crossval_split(&ids, SPLIT_SEED, 5)?;
        write_splits(&path, &folds)?;
        folds
    };
    let chosen = folds.get(index).ok_or_else(|| {
        Error::Setup(format!(
            "{}: no fold {index} (the file has {})",
            path.display(),
            folds.len()
        ))
    })?;
    if let Some(missing) = chosen.train.iter().chain(&chosen.val).find(|id| !ids.contains(id)) {
        return Err(Error::Setup(format!(
            "{}: case {missing:?} of fold {index} is not in {}",
            path.display(),
            data_folder.display()
        )));
    }
    Ok((chosen.train.clone(), chosen.val.clone()))
}

pub(super) fn open_cases(folder: &Path, ids: &[String]) -> Result<Arc<Vec<PreprocessedCase>>> {
    let cases = ids
        .iter()
        .map(|id| PreprocessedCase::open(folder, id))
        .collect::<nnunet_data::Result<Vec<_>>>()?;
    Ok(Arc::new(cases))
}

/// Copies pretrained backbone weights into the network's variables under `prefix`
/// (`dino_encoder.` for Primus). Strict: every backbone variable must be in the file and
/// nothing else may be (buffers the model computes excepted); otherwise tensors the backbone
/// lacks are skipped and listed. Mis-shaped tensors are refused either way. Returns the
/// names of skipped tensors.
pub(super) fn load_pretrained(
    vars: &NamedVars,
    buffers: &[String],
    (prefix, cfg): (&str, &Config),
    path: &Path,
    strict: bool,
) -> Result<Vec<String>> {
    let state = StateDict::read(path)
        .map_err(|e| Error::Setup(format!("--pretrained: {e}")))?
        .backbone();
    if strict {
        // The strict loader reports every missing, mis-shaped and unexpected tensor at once.
        let _ = state
            .load_strict("backbone", DType::F32, &Device::Cpu, |vb| {
                meddino_backbone::DinoVisionTransformer::new(cfg, vb)
            })
            .map_err(|e| Error::Setup(format!("--pretrained does not fit the backbone {}: {e}", describe(cfg))))?;
    }
    let encoder: HashMap<&str, &Var> = vars
        .iter()
        .filter_map(|(name, var)| name.strip_prefix(prefix).map(|n| (n, var)))
        .collect();
    let mut skipped = Vec::new();
    let mut problems = Vec::new();
    for (name, tensor) in state.tensors() {
        match encoder.get(name.as_str()) {
            Some(var) if var.shape() == tensor.shape() => {
                var.set(&tensor.to_dtype(DType::F32)?.to_device(var.device())?)?;
            }
            Some(var) => problems.push(format!(
                "{name}: {:?} in the file, {:?} in the model",
                tensor.dims(),
                var.dims()
            )),
            // Buffers the model computes itself (RoPE periods, k-bias mask) are not weights.
            None if buffers.contains(name) => {}
            None => skipped.push(name.clone()),
        }
    }
    let missing: Vec<&&str> = encoder.keys().filter(|k| !state.tensors().contains_key(**k)).collect();
    if !problems.is_empty() {
        problems.sort();
        return Err(Error::Setup(format!(
            "{}: tensors do not fit the backbone {}: {}",
            path.display(),
            describe(cfg),
            problems.join("; ")
        )));
    }
    if !missing.is_empty() && missing.len() == encoder.len() {
        return Err(Error::Setup(format!(
            "{}: none of the backbone's tensors are in the file (not a DINOv3 checkpoint?)",
            path.display()
        )));
    }
    skipped.sort();
    Ok(skipped)
}

fn describe(cfg: &Config) -> String {
    format!(
        "(width {}, {} blocks, {} heads, {} registers)",
        cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.n_storage_tokens
    )
}
