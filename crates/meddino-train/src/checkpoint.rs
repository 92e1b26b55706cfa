//! Training checkpoints: network weights, optimiser state and the trainer's bookkeeping in
//! one safetensors file (the role of nnU-Net's `checkpoint_{latest,best,final}.pth`).
//!
//! Tensors are stored as `network.<state-dict key>` and `optimizer.<state key>`; the
//! bookkeeping is JSON in the file's metadata under `meddino`. Files are written under a
//! temporary name and renamed, so a crash (even `kill -9`) mid-write leaves the previous
//! checkpoint intact.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The trainer's bookkeeping saved with a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// nnU-Net trainer name (e.g. `meddinov3_base_primus_multiscale_Trainer`).
    pub trainer_name: String,
    /// Plans configuration (e.g. `2d_896`).
    pub configuration: String,
    /// Fold trained.
    pub fold: String,
    /// Epochs completed.
    pub current_epoch: usize,
    /// Optimiser updates taken.
    pub optimizer_steps: usize,
    /// Best EMA pseudo Dice so far (selects `checkpoint_best`).
    pub best_ema_pseudo_dice: Option<f64>,
    /// Per-epoch logs (losses, pseudo Dice, learning rates, times), as JSON.
    pub logs: serde_json::Value,
    /// What rebuilding the network needs (nnU-Net's `init_args`): plans, dataset.json,
    /// backbone configuration, number of classes, mirroring axes, seed.
    #[serde(default)]
    pub init: serde_json::Value,
}

/// A checkpoint in memory.
#[derive(Debug, Clone)]
pub struct TrainingCheckpoint {
    /// Network state dict.
    pub network: HashMap<String, Tensor>,
    /// Optimiser state (e.g. `GroupedAdamW::state`).
    pub optimizer: HashMap<String, Tensor>,
    /// Bookkeeping.
    pub meta: CheckpointMeta,
}

const NETWORK: &str = "network.";
const OPTIMIZER: &str = "optimizer.";
const META_KEY: &str = "meddino";

impl TrainingCheckpoint {
    /// Writes the checkpoint to `path` atomically.
    ///
    /// # Errors
    ///
    /// When the file cannot be written (nothing is left at `path` then).
    pub fn save(&self, path: &Path) -> Result<()> {
        let fail = |message: String| Error::Checkpoint(format!("{}: {message}", path.display()));
        let meta = serde_json::to_string(&self.meta).map_err(|e| fail(e.to_string()))?;
        let tensors: Vec<(String, &Tensor)> = self
            .network
            .iter()
            .map(|(k, t)| (format!("{NETWORK}{k}"), t))
            .chain(self.optimizer.iter().map(|(k, t)| (format!("{OPTIMIZER}{k}"), t)))
            .collect();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temporary: PathBuf = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        // Streamed to the temporary file (no second copy in memory), synced so the rename
        // never publishes data still in the page cache, then renamed over `path`.
        let written =
            safetensors::serialize_to_file(tensors, Some(HashMap::from([(META_KEY.to_string(), meta)])), &temporary)
                .map_err(|e| fail(e.to_string()))
                .and_then(|()| {
                    std::fs::File::open(&temporary)
                        .and_then(|file| file.sync_all())
                        .map_err(|e| fail(format!("cannot sync {}: {e}", temporary.display())))
                })
                .and_then(|()| {
                    hold_before_rename();
                    std::fs::rename(&temporary, path).map_err(|e| fail(e.to_string()))
                });
        if written.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        written
    }

    /// Reads a checkpoint onto `device`.
    ///
    /// # Errors
    ///
    /// When the file is missing, not safetensors, or lacks the bookkeeping; the error names it.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let fail = |message: String| Error::Checkpoint(format!("{}: {message}", path.display()));
        let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| fail(format!("not a safetensors file: {e}")))?;
        let meta = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| fail("not a meddino training checkpoint (no bookkeeping metadata)".into()))?;
        let meta: CheckpointMeta = serde_json::from_str(meta).map_err(|e| fail(format!("bookkeeping: {e}")))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| fail(e.to_string()))?;
        let (mut network, mut optimizer) = (HashMap::new(), HashMap::new());
        for (name, tensor) in tensors {
            if let Some(key) = name.strip_prefix(NETWORK) {
                let _ = network.insert(key.to_string(), tensor);
            } else if let Some(key) = name.strip_prefix(OPTIMIZER) {
                let _ = optimizer.insert(key.to_string(), tensor);
            } else {
                return Err(fail(format!("unexpected tensor {name:?}")));
            }
        }
        Ok(Self {
            network,
            optimizer,
            meta,
        })
    }
}

/// Crash tests' hook: with `MEDDINO_CHECKPOINT_HOLD_MS` set, every checkpoint stays that
/// long in its complete temporary file before the rename, so a test can kill the process
/// while a checkpoint write is under way. Unset (always, outside tests) it costs nothing.
fn hold_before_rename() {
    if let Some(ms) = std::env::var("MEDDINO_CHECKPOINT_HOLD_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("meddino-train-ckpt-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch");
        dir
    }

    #[test]
    fn round_trips_tensors_and_bookkeeping() {
        let dir = scratch("round-trip");
        let path = dir.join("checkpoint_latest.safetensors");
        let device = Device::Cpu;
        let checkpoint = TrainingCheckpoint {
            network: HashMap::from([(
                "blocks.0.ls1.gamma".to_string(),
                Tensor::new(&[1f32, 2.0], &device).expect("t"),
            )]),
            optimizer: HashMap::from([(
                "m.blocks.0.ls1.gamma".to_string(),
                Tensor::new(&[0.5f32, 0.25], &device).expect("t"),
            )]),
            meta: CheckpointMeta {
                trainer_name: "meddinov3_base_primus_multiscale_Trainer".into(),
                configuration: "2d_896".into(),
                fold: "0".into(),
                current_epoch: 3,
                optimizer_steps: 750,
                best_ema_pseudo_dice: Some(0.41),
                // Many awkward doubles: a resumed run needs them back bit for bit.
                logs: serde_json::json!({"ema_fg_dice": (1..2000).map(|i| f64::from(i).sqrt() / 7.3 - 0.3).collect::<Vec<_>>()}),
                init: serde_json::json!({"num_classes": 4}),
            },
        };
        checkpoint.save(&path).expect("save");
        checkpoint.save(&path).expect("overwrite");
        let back = TrainingCheckpoint::load(&path, &device).expect("load");
        assert_eq!(back.meta, checkpoint.meta);
        let values: Vec<f32> = back.network["blocks.0.ls1.gamma"].to_vec1().expect("vec");
        assert_eq!(values, [1.0, 2.0]);
        let values: Vec<f32> = back.optimizer["m.blocks.0.ls1.gamma"].to_vec1().expect("vec");
        assert_eq!(values, [0.5, 0.25]);
        assert_eq!(
            std::fs::read_dir(&dir).expect("list").count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn other_files_are_refused_with_their_name() {
        let dir = scratch("refused");
        let path = dir.join("weights.safetensors");
        candle_core::safetensors::save(
            &HashMap::from([("x".to_string(), Tensor::new(&[1f32], &Device::Cpu).expect("t"))]),
            &path,
        )
        .expect("save");
        let error = TrainingCheckpoint::load(&path, &Device::Cpu)
            .expect_err("no bookkeeping")
            .to_string();
        assert!(
            error.contains("weights.safetensors") && error.contains("not a meddino training checkpoint"),
            "{error}"
        );
        std::fs::write(&path, b"garbage").expect("write");
        assert!(TrainingCheckpoint::load(&path, &Device::Cpu)
            .expect_err("garbage")
            .to_string()
            .contains("weights.safetensors"));
    }
}
