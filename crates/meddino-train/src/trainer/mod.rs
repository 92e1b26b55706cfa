//! nnU-Net's training loop with a registered trainer (nnU-Net v2 (<https://github.com/MIC-DKFZ/nnUNet>),
//! `meddinov3-reference.md` §4): epochs of training iterations on augmented batches,
//! validation iterations computing the pseudo Dice and its EMA, `checkpoint_best` /
//! `checkpoint_latest` / `checkpoint_final`, the training log and `progress.png`, and
//! `--continue` from the latest checkpoint.
//!
//! Output, as nnU-Net places it: `<results>/<Dataset>/<trainer>__<plans>__<configuration>/`
//! holds `plans.json`, `dataset.json` and `dataset_fingerprint.json`; its `fold_<f>/` holds
//! the checkpoints (`checkpoint_*.safetensors`), `training_log_*.txt`, `progress.png` and
//! `debug.json`.

mod options;
mod setup;
mod validation;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use candle_core::{DType, Tensor, Var};
use candle_nn::VarMap;
use meddino_decoder::SegmentationNetwork;
use nnunet_data::augment::Augmentation2d;
use nnunet_data::batch::{Batch2d, BatchSampler2d};
use nnunet_data::preprocess::store::PreprocessedCase;
use nnunet_data::{DatasetJson, LabelValue, Plans};
use serde_json::{json, Map, Value};

pub use self::options::{EpochSummary, Silent, TrainOptions, TrainingObserver};
use self::setup::{fold_cases, load_pretrained, open_cases, PlansConfiguration};
use crate::checkpoint::{CheckpointMeta, TrainingCheckpoint};
use crate::error::{Error, Result};
use crate::init::seeded_var_builder;
use crate::loader::{step_seed, BatchLoader, Phase};
use crate::logs::{PseudoDice, TrainingLogs};
use crate::loss::{deep_supervision_loss, dice_and_ce_loss, DiceReduction};
use crate::optim::{clip_grad_norm, named_vars, NamedVars, Optimizer};
use crate::plot::{render_progress, save_png};
use crate::trainers::{NetworkRequest, PretrainedWeights};

/// The checkpoint written after every epoch (removed once training finishes).
pub const CHECKPOINT_LATEST: &str = "checkpoint_latest.safetensors";
/// The checkpoint of the best EMA pseudo Dice.
pub const CHECKPOINT_BEST: &str = "checkpoint_best.safetensors";
/// The checkpoint at the end of training.
pub const CHECKPOINT_FINAL: &str = "checkpoint_final.safetensors";

/// nnU-Net's gradient-norm cap.
const MAX_GRAD_NORM: f64 = 12.0;

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A training run in progress.
pub struct Trainer<'o> {
    options: TrainOptions,
    observer: &'o dyn TrainingObserver,
    network: Box<dyn SegmentationNetwork>,
    /// Every variable: what checkpoints hold and `--continue` restores.
    vars: NamedVars,
    /// The variables the optimiser updates (frozen encoders and running statistics excluded).
    trainable: NamedVars,
    optimizer: Box<dyn Optimizer>,
    logs: TrainingLogs,
    best_ema: Option<f64>,
    epoch: usize,
    /// Where the learning-rate schedule stands when the caller drives it (a run bounded by
    /// time); `None`: epochs done over epochs planned.
    schedule_progress: Option<f64>,
    train_cases: Arc<Vec<PreprocessedCase>>,
    val_cases: Arc<Vec<PreprocessedCase>>,
    train_sampler: BatchSampler2d,
    val_sampler: BatchSampler2d,
    reduction: DiceReduction,
    num_classes: usize,
    init: Value,
    log_file: PathBuf,
    /// The plans configuration, for exporting validation predictions.
    configuration: Map<String, Value>,
    dataset: DatasetJson,
    dataset_path: PathBuf,
}

impl std::fmt::Debug for Trainer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("trainer", &self.options.trainer.name)
            .field("epoch", &self.epoch)
            .field("network", &self.network)
            .finish_non_exhaustive()
    }
}

impl<'o> Trainer<'o> {
    /// Reads the plans, data set and fold, builds the network (pretrained weights loaded),
    /// the optimiser and the loaders, prepares the output folder, and with
    /// [`TrainOptions::resume`] restores the latest checkpoint.
    ///
    /// # Errors
    ///
    /// On unreadable or inconsistent inputs, a trainer that needs `--pretrained` without it
    /// (or a scratch trainer given one), weights that do not fit, or an unwritable output.
    pub fn new(options: TrainOptions, observer: &'o dyn TrainingObserver) -> Result<Self> {
        let plans_path = options.preprocessed.join(format!("{}.json", options.plans));
        let plans = Plans::read(&plans_path)?;
        let dataset_path = options.preprocessed.join("dataset.json");
        let dataset = DatasetJson::read(&dataset_path)?;
        let configuration = PlansConfiguration::read(&plans, &options.configuration, &plans_path)?;
        if dataset.ignore_label().is_some() {
            return Err(Error::Setup(format!(
                "{}: data sets with an ignore label are not supported yet",
                dataset_path.display()
            )));
        }
        if dataset.foreground().any(|e| matches!(e.value, LabelValue::Region(_))) {
            return Err(Error::Setup(format!(
                "{}: region-based training is not supported",
                dataset_path.display()
            )));
        }
        let num_classes = dataset.foreground().count() + 1;
        let input_channels = dataset.channel_names.len().max(1);

        let data_folder = options.preprocessed.join(&configuration.data_identifier);
        let (train_ids, val_ids) = fold_cases(&options.preprocessed, &data_folder, &options.fold)?;
        let train_cases = open_cases(&data_folder, &train_ids)?;
        let val_cases = open_cases(&data_folder, &val_ids)?;

        let spec = &options.trainer;
        let backbone = match &spec.backbone {
            Some(b) => Some(b.config(options.backbone.as_deref())?),
            None if options.backbone.is_some() => {
                return Err(Error::Setup(format!(
                    "{} has no ViT backbone to resize (--backbone)",
                    spec.name
                )))
            }
            None => None,
        };
        match (spec.backbone.map(|b| b.weights), &options.pretrained) {
            (Some(PretrainedWeights::Required { .. }), None) => {
                return Err(Error::Setup(format!(
                    "{} fine-tunes pretrained weights: pass --pretrained PATH (a {} checkpoint{})",
                    spec.name,
                    if spec.name.starts_with("meddinov3") {
                        "MedDINOv3 `teacher`"
                    } else {
                        "DINOv3"
                    },
                    if options.backbone.is_some() {
                        " of the --backbone preset"
                    } else {
                        ""
                    }
                )))
            }
            (Some(PretrainedWeights::Scratch) | None, Some(path)) => {
                return Err(Error::Setup(format!(
                    "{} trains from scratch; it takes no --pretrained ({})",
                    spec.name,
                    path.display()
                )))
            }
            _ => {}
        }
        let request = NetworkRequest {
            backbone: backbone.clone(),
            num_classes,
            input_channels,
            configuration: configuration.values.clone(),
        };
        let varmap = VarMap::new();
        let network = (spec.build)(
            &request,
            seeded_var_builder(&varmap, options.seed, DType::F32, &options.device),
        )?;
        let multiple = network.input_multiple();
        if configuration.patch.iter().any(|p| p % multiple != 0) {
            return Err(Error::Setup(format!(
                "patch size {:?} of configuration {:?} is not a multiple of the network's {multiple}",
                configuration.patch, options.configuration
            )));
        }
        let vars = named_vars(&varmap);
        let trainable: NamedVars = vars
            .iter()
            .filter(|(name, _)| network.is_trainable(name))
            .cloned()
            .collect();
        let mut skipped = Vec::new();
        if let (Some(cfg), Some(path), Some(backbone_spec)) = (&backbone, &options.pretrained, spec.backbone) {
            let strict = matches!(backbone_spec.weights, PretrainedWeights::Required { strict: true });
            let buffers: Vec<String> = network
                .buffers()?
                .into_iter()
                .filter_map(|(name, _)| name.strip_prefix(backbone_spec.prefix).map(str::to_string))
                .collect();
            let encoder = (backbone_spec.prefix, cfg);
            skipped = load_pretrained(&vars, &buffers, encoder, path, strict)?;
        }
        let optimizer = spec.optimizer.build(&trainable);

        let batch_size = options.batch_size.unwrap_or(configuration.batch_size).max(1);
        let augmentation = Augmentation2d {
            patch: configuration.patch,
            mask_image: configuration.mask_image,
        };
        let train_sampler = BatchSampler2d {
            batch_size,
            augmentation: augmentation.clone(),
            augment: true,
        };
        let val_sampler = BatchSampler2d {
            augment: false,
            ..train_sampler.clone()
        };

        let fold_folder = options.fold_folder();
        std::fs::create_dir_all(&fold_folder).map_err(|source| Error::Write {
            path: fold_folder.clone(),
            source,
        })?;
        // A run killed while writing a checkpoint leaves its temporary file; the checkpoint
        // itself is the previous one, whole.
        let stale = nnunet_data::io::remove_stale_temporaries(&fold_folder)?;
        let trainer_folder = options.trainer_folder();
        for (name, from) in [
            ("plans.json", plans_path.clone()),
            ("dataset.json", dataset_path.clone()),
            (
                "dataset_fingerprint.json",
                options.preprocessed.join("dataset_fingerprint.json"),
            ),
        ] {
            if from.is_file() {
                let bytes = std::fs::read(&from).map_err(|source| Error::Write {
                    path: from.clone(),
                    source,
                })?;
                nnunet_data::io::write_atomic(&trainer_folder.join(name), |out: &mut dyn Write| out.write_all(&bytes))?;
            }
        }
        let stamp = jiff::Zoned::now().strftime("%Y_%-m_%-d_%H_%M_%S").to_string();
        let log_file = fold_folder.join(format!("training_log_{stamp}.txt"));

        let init = json!({
            "plans": plans.value,
            "plans_name": options.plans,
            "dataset_json": dataset.raw,
            "backbone": backbone,
            "num_classes": num_classes,
            "input_channels": input_channels,
            "patch_size": configuration.patch,
            "inference_allowed_mirroring_axes": [0, 1],
            "seed": options.seed,
        });
        let mut trainer = Self {
            reduction: if configuration.batch_dice {
                DiceReduction::Batch
            } else {
                DiceReduction::PerSample
            },
            options,
            observer,
            network,
            vars,
            trainable,
            optimizer,
            logs: TrainingLogs::default(),
            best_ema: None,
            epoch: 0,
            schedule_progress: None,
            train_cases,
            val_cases,
            train_sampler,
            val_sampler,
            num_classes,
            init,
            log_file,
            configuration: configuration.values.clone(),
            dataset,
            dataset_path,
        };
        trainer.write_debug(&train_ids, &val_ids)?;
        trainer.log(&format!(
            "{}: {} training / {} validation cases of fold {}, patch {:?}, batch {batch_size}, {} parameters",
            trainer.options.trainer.name,
            train_ids.len(),
            val_ids.len(),
            trainer.options.fold,
            trainer.train_sampler.augmentation.patch,
            trainer.parameter_count()
        ))?;
        if stale > 0 {
            trainer.log(&format!(
                "removed {stale} temporary file(s) an interrupted run left in {}",
                fold_folder.display()
            ))?;
        }
        if !skipped.is_empty() {
            trainer.log(&format!(
                "pretrained tensors the backbone does not have were skipped (strict=False): {}",
                skipped.join(", ")
            ))?;
        }
        if trainer.options.resume {
            trainer.resume()?;
        }
        Ok(trainer)
    }

    /// Changes the number of epochs (e.g. to fit a time budget once an epoch's duration is
    /// known); the learning-rate schedule follows the new total from the next epoch on,
    /// unless [`Self::set_schedule_progress`] drives it.
    pub fn set_epochs(&mut self, epochs: usize) {
        self.options.epochs = epochs.max(self.epoch);
    }

    /// Drives the learning-rate schedule by `progress` (0 at the start of the run, 1 at its
    /// end) instead of by epochs: the next epoch trains at the schedule's factor for it. For
    /// a run bounded by time, where the progress is the share of the training time spent
    /// and the number of epochs is only known at the end.
    pub fn set_schedule_progress(&mut self, progress: f64) {
        self.schedule_progress = Some(progress);
    }

    /// Trainable parameters.
    pub fn parameter_count(&self) -> usize {
        self.trainable.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Epochs completed.
    pub fn epoch(&self) -> usize {
        self.epoch
    }

    /// The logs so far.
    pub fn logs(&self) -> &TrainingLogs {
        &self.logs
    }

    /// The network being trained.
    pub fn network(&self) -> &dyn SegmentationNetwork {
        self.network.as_ref()
    }

    /// The fold's output folder.
    pub fn output(&self) -> PathBuf {
        self.options.fold_folder()
    }

    /// Appends a timestamped line to the training log and passes it to the observer.
    fn log(&self, line: &str) -> Result<()> {
        self.observer.log(line);
        let stamp = jiff::Zoned::now().strftime("%Y-%m-%d %H:%M:%S%.6f");
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .map_err(|source| Error::Write {
                path: self.log_file.clone(),
                source,
            })?;
        writeln!(file, "{stamp}: {line}").map_err(|source| Error::Write {
            path: self.log_file.clone(),
            source,
        })
    }

    /// `debug.json`: the run's settings, for the record.
    fn write_debug(&self, train: &[String], val: &[String]) -> Result<()> {
        let debug = json!({
            "trainer_name": self.options.trainer.name,
            "configuration": self.options.configuration,
            "fold": self.options.fold,
            "num_epochs": self.options.epochs,
            "num_iterations_per_epoch": self.options.iterations,
            "num_val_iterations_per_epoch": self.options.val_iterations,
            "batch_size": self.train_sampler.batch_size,
            "patch_size": self.train_sampler.augmentation.patch,
            "initial_patch_size": self.train_sampler.loaded_patch(),
            "optimizer": format!("{:?}", self.options.trainer.optimizer),
            "schedule": format!("{:?}", self.options.trainer.schedule),
            "backbone": self.init["backbone"],
            "pretrained": self.options.pretrained,
            "seed": self.options.seed,
            "device": format!("{:?}", self.options.device),
            "train_cases": train,
            "val_cases": val,
        });
        let path = self.options.fold_folder().join("debug.json");
        nnunet_data::io::write_atomic(&path, |out: &mut dyn Write| {
            serde_json::to_writer_pretty(&mut *out, &debug).map_err(std::io::Error::other)
        })?;
        Ok(())
    }

    /// Restores network, optimiser and bookkeeping from `checkpoint_latest` (or reports a
    /// finished run); without a checkpoint, training starts anew, as nnU-Net's `--c` does.
    fn resume(&mut self) -> Result<()> {
        let folder = self.options.fold_folder();
        let latest = folder.join(CHECKPOINT_LATEST);
        let path = if latest.is_file() {
            latest
        } else if folder.join(CHECKPOINT_FINAL).is_file() {
            folder.join(CHECKPOINT_FINAL)
        } else {
            return self.log("no checkpoint to continue from; starting a new training");
        };
        let checkpoint = TrainingCheckpoint::load(&path, &self.options.device)?;
        if checkpoint.meta.trainer_name != self.options.trainer.name {
            return Err(Error::Checkpoint(format!(
                "{} was written by {}, not {}",
                path.display(),
                checkpoint.meta.trainer_name,
                self.options.trainer.name
            )));
        }
        let mut problems = Vec::new();
        for (name, var) in &self.vars {
            match checkpoint.network.get(name) {
                Some(t) if t.shape() == var.shape() => var.set(&t.to_device(var.device())?)?,
                Some(t) => problems.push(format!("{name}: {:?}, expected {:?}", t.dims(), var.dims())),
                None => problems.push(format!("{name} is missing")),
            }
        }
        if !problems.is_empty() {
            return Err(Error::Checkpoint(format!(
                "{} does not fit the network (another --backbone?): {}",
                path.display(),
                problems.join("; ")
            )));
        }
        self.optimizer
            .load_state(&checkpoint.optimizer, checkpoint.meta.optimizer_steps)?;
        self.logs = serde_json::from_value(checkpoint.meta.logs.clone())
            .map_err(|e| Error::Checkpoint(format!("{}: logs: {e}", path.display())))?;
        self.epoch = checkpoint.meta.current_epoch;
        self.logs.truncate(self.epoch);
        self.best_ema = checkpoint.meta.best_ema_pseudo_dice;
        self.log(&format!("continuing from {} at epoch {}", path.display(), self.epoch))
    }

    fn checkpoint(&self) -> Result<TrainingCheckpoint> {
        let mut network: HashMap<String, Tensor> = self
            .vars
            .iter()
            .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
            .collect();
        network.extend(self.network.buffers()?);
        let (optimizer, steps) = self.optimizer.state();
        Ok(TrainingCheckpoint {
            network,
            optimizer,
            meta: CheckpointMeta {
                trainer_name: self.options.trainer.name.to_string(),
                configuration: self.options.configuration.clone(),
                fold: self.options.fold.clone(),
                current_epoch: self.epoch,
                optimizer_steps: steps,
                best_ema_pseudo_dice: self.best_ema,
                logs: serde_json::to_value(&self.logs).unwrap_or(Value::Null),
                init: self.init.clone(),
            },
        })
    }

    fn save(&self, name: &str) -> Result<()> {
        self.checkpoint()?.save(&self.options.fold_folder().join(name))
    }

    fn to_tensors(&self, batch: &Batch2d) -> Result<(Tensor, Tensor)> {
        let device = &self.options.device;
        let data = batch.data.as_standard_layout();
        let images = Tensor::from_slice(data.as_slice().unwrap_or_default(), data.shape(), device)?;
        let (b, h, w) = batch.seg.dim();
        let labels: Vec<u32> = batch.seg.iter().map(|&v| v.max(0) as u32).collect();
        let labels = Tensor::from_vec(labels, (b, 1, h, w), device)?;
        Ok((images, labels))
    }

    fn loader(&self, phase: Phase) -> BatchLoader {
        let (cases, sampler, count) = match phase {
            Phase::Train => (&self.train_cases, &self.train_sampler, self.options.iterations),
            Phase::Validation => (&self.val_cases, &self.val_sampler, self.options.val_iterations),
        };
        BatchLoader::start(
            Arc::clone(cases),
            sampler.clone(),
            (self.options.seed, self.epoch, phase),
            count,
            self.options.workers,
        )
    }

    /// One training epoch; returns the mean loss.
    fn train_epoch(&mut self) -> Result<f64> {
        let mut total = 0.0;
        let mut steps = 0usize;
        for (index, batch) in self.loader(Phase::Train).enumerate() {
            let (images, labels) = self.to_tensors(&batch?)?;
            self.network
                .reseed(step_seed(self.options.seed ^ 0x5EED, self.epoch, Phase::Train, index));
            let loss = if self.options.trainer.deep_supervision {
                let outputs = self.network.forward_deep_supervision(&images)?;
                deep_supervision_loss(&outputs, &labels, self.reduction)?
            } else {
                let logits = self.network.forward_t(&images, true)?;
                dice_and_ce_loss(&logits, &labels, self.reduction)?
            };
            let value = f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
            if !value.is_finite() {
                return Err(Error::Setup(format!(
                    "epoch {}, iteration {index}: the loss is {value}; stopping (lower the learning rate?)",
                    self.epoch
                )));
            }
            let mut grads = loss.backward()?;
            let vars: Vec<Var> = self.trainable.iter().map(|(_, v)| v.clone()).collect();
            let _ = clip_grad_norm(&mut grads, &vars, MAX_GRAD_NORM)?;
            self.optimizer.step(&grads)?;
            self.observer.iteration(value);
            total += value;
            steps += 1;
        }
        Ok(total / steps.max(1) as f64)
    }

    /// The validation iterations: mean loss and pseudo Dice.
    fn validate(&self) -> Result<(f64, PseudoDice)> {
        let mut dice = PseudoDice::new(self.num_classes);
        let mut total = 0.0;
        let mut steps = 0usize;
        for batch in self.loader(Phase::Validation) {
            let (images, labels) = self.to_tensors(&batch?)?;
            let logits = self.network.forward(&images)?.detach();
            let loss = dice_and_ce_loss(&logits, &labels, self.reduction)?;
            total += f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
            dice.add(&logits, &labels)?;
            steps += 1;
        }
        Ok((total / steps.max(1) as f64, dice))
    }

    /// Runs one epoch: schedule, training, validation, logs, checkpoints, plot.
    ///
    /// # Errors
    ///
    /// On a failed step or an unwritable output.
    pub fn run_epoch(&mut self) -> Result<EpochSummary> {
        let started = Instant::now();
        let epoch = self.epoch;
        let schedule = self.options.trainer.schedule;
        let factor = match self.schedule_progress {
            Some(progress) => schedule.factor_at(progress),
            None => schedule.factor(epoch, self.options.epochs),
        };
        self.optimizer.scale_learning_rates(factor);
        let lr = self.optimizer.learning_rates().first().map_or(0.0, |(_, lr)| *lr);
        self.observer
            .epoch_started(epoch, self.options.epochs, self.options.iterations);
        self.log(&format!("Epoch {epoch}"))?;
        self.log(&format!("Current learning rate: {lr:.5e}"))?;
        let start_time = now_seconds();
        let train_loss = self.train_epoch()?;
        let (val_loss, dice) = self.validate()?;
        let pseudo_dice = dice.per_class();
        let mean = dice.mean();
        let ema = self.logs.next_ema(mean);
        self.logs.train_losses.push(train_loss);
        self.logs.val_losses.push(val_loss);
        self.logs.lrs.push(lr);
        self.logs.mean_fg_dice.push(mean);
        self.logs.ema_fg_dice.push(ema);
        self.logs
            .dice_per_class_or_region
            .push(pseudo_dice.iter().map(|d| (!d.is_nan()).then_some(*d)).collect());
        self.logs.epoch_start_timestamps.push(start_time);
        self.logs.epoch_end_timestamps.push(now_seconds());
        self.epoch += 1;
        let rounded: Vec<String> = pseudo_dice.iter().map(|d| format!("{d:.4}")).collect();
        self.log(&format!("train_loss {train_loss:.4}"))?;
        self.log(&format!("val_loss {val_loss:.4}"))?;
        self.log(&format!("Pseudo dice [{}]", rounded.join(", ")))?;
        self.log(&format!("Epoch time: {:.2} s", started.elapsed().as_secs_f64()))?;
        let new_best = !ema.is_nan() && self.best_ema.is_none_or(|best| ema > best);
        if new_best {
            self.best_ema = Some(ema);
            self.log(&format!("Yayy! New best EMA pseudo Dice: {ema:.4}"))?;
            self.save(CHECKPOINT_BEST)?;
        }
        self.save(CHECKPOINT_LATEST)?;
        save_png(
            &self.options.fold_folder().join("progress.png"),
            &render_progress(&self.logs),
        )?;
        Ok(EpochSummary {
            epoch,
            train_loss,
            val_loss,
            pseudo_dice,
            ema,
            new_best,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Trains the remaining epochs, then writes `checkpoint_final` and removes
    /// `checkpoint_latest`, as nnU-Net does.
    ///
    /// # Errors
    ///
    /// As [`Self::run_epoch`].
    pub fn fit(&mut self) -> Result<()> {
        while self.epoch < self.options.epochs {
            let _ = self.run_epoch()?;
        }
        self.save(CHECKPOINT_FINAL)?;
        let latest = self.options.fold_folder().join(CHECKPOINT_LATEST);
        if latest.is_file() {
            std::fs::remove_file(&latest).map_err(|source| Error::Write { path: latest, source })?;
        }
        self.log(&format!("Training done after {} epochs", self.epoch))
    }
}
