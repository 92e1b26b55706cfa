//! Trained models for prediction: a network rebuilt from a training checkpoint (ours, which
//! carries the plans, data set and backbone configuration), or from an nnU-Net
//! `checkpoint_*.pth` written by the Python MedDINOv3 trainers (plans and data set then come
//! from the trainer folder, the backbone from the trainer's recipe).

use std::path::Path;

use candle_core::{DType, Device};
use meddino_backbone::{Config, StateDict};
use meddino_decoder::SegmentationNetwork;
use nnunet_data::{DatasetJson, Plans};
use serde_json::Value;

use crate::checkpoint::TrainingCheckpoint;
use crate::error::{Error, Result};
use crate::trainers::{NetworkRequest, TrainerRegistry, TrainerSpec};

/// A network ready to predict, with what preprocessing needs.
#[derive(Debug)]
pub struct TrainedModel {
    /// The network.
    pub network: Box<dyn SegmentationNetwork>,
    /// The trainer that trained it.
    pub trainer: String,
    /// The plans it was trained with.
    pub plans: Plans,
    /// The data set's `dataset.json`.
    pub dataset: DatasetJson,
    /// The configuration (`2d`, `2d_896`, …).
    pub configuration: String,
}

impl TrainedModel {
    /// Loads `path`: a `checkpoint_*.safetensors` of `meddino train`, or an nnU-Net
    /// `checkpoint_*.pth` of the Python trainers (then `trainer_folder` must hold
    /// `plans.json` and `dataset.json`, and `trainer`/`configuration` say what it is).
    ///
    /// # Errors
    ///
    /// When the file is unreadable, of an unknown trainer, or its tensors do not fit the
    /// network (every problem named).
    pub fn load(
        path: &Path,
        registry: &TrainerRegistry,
        trainer_folder: &Path,
        (trainer, configuration): (&str, &str),
        device: &Device,
    ) -> Result<Self> {
        if path.extension().is_some_and(|e| e == "pth") {
            return Self::load_pth(path, registry, trainer_folder, (trainer, configuration), device);
        }
        let checkpoint = TrainingCheckpoint::load(path, &Device::Cpu)?;
        if checkpoint.meta.trainer_name != trainer {
            return Err(Error::Checkpoint(format!(
                "{} was written by {}, not {trainer} (a checkpoint of another network in this trainer's folder?)",
                path.display(),
                checkpoint.meta.trainer_name
            )));
        }
        let init = &checkpoint.meta.init;
        let fail = |what: &str| Error::Checkpoint(format!("{}: the bookkeeping lacks {what}", path.display()));
        let spec = registry.get(&checkpoint.meta.trainer_name)?;
        let backbone: Option<Config> = match &init["backbone"] {
            Value::Null => None,
            value => Some(serde_json::from_value(value.clone()).map_err(|_| fail("a valid backbone"))?),
        };
        let plans = Plans {
            value: init.get("plans").cloned().ok_or_else(|| fail("the plans"))?,
        };
        let dataset = DatasetJson::parse(
            &init
                .get("dataset_json")
                .ok_or_else(|| fail("dataset.json"))?
                .to_string(),
            path,
        )?;
        let configuration = checkpoint.meta.configuration.clone();
        let num_classes = init["num_classes"].as_u64().ok_or_else(|| fail("num_classes"))? as usize;
        let input_channels = init["input_channels"].as_u64().unwrap_or(1) as usize;
        let request = NetworkRequest {
            backbone,
            num_classes,
            input_channels,
            configuration: plans.configuration(&configuration)?,
        };
        let state = StateDict::from_tensors(path, checkpoint.network);
        let network = build_strict(spec, &request, &state, device)?;
        Ok(Self {
            network,
            trainer: spec.name.to_string(),
            plans,
            dataset,
            configuration,
        })
    }

    fn load_pth(
        path: &Path,
        registry: &TrainerRegistry,
        trainer_folder: &Path,
        (trainer, configuration): (&str, &str),
        device: &Device,
    ) -> Result<Self> {
        let spec = registry.get(trainer)?;
        let plans = Plans::read(&trainer_folder.join("plans.json"))?;
        let dataset = DatasetJson::read(&trainer_folder.join("dataset.json"))?;
        let backbone = spec.backbone.map(|b| b.config(None)).transpose()?;
        let request = NetworkRequest {
            backbone,
            num_classes: dataset.foreground().count() + 1,
            input_channels: dataset.channel_names.len().max(1),
            configuration: plans.configuration(configuration)?,
        };
        let state = StateDict::read(path)?;
        let network = build_strict(spec, &request, &state, device)?;
        Ok(Self {
            network,
            trainer: spec.name.to_string(),
            plans,
            dataset,
            configuration: configuration.to_string(),
        })
    }
}

/// Builds `spec`'s network from `state`, strictly: every missing, mis-shaped or unexpected
/// tensor is reported.
fn build_strict(
    spec: &TrainerSpec,
    request: &NetworkRequest,
    state: &StateDict,
    device: &Device,
) -> Result<Box<dyn SegmentationNetwork>> {
    state.load_strict_aliased(
        spec.name,
        DType::F32,
        device,
        |vb| (spec.build)(request, vb),
        |network| network.state_dict_aliases(),
    )
}
