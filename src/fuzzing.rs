//! Untrusted bytes through `meddino`'s readers, as the commands read files. The fuzz targets
//! (`fuzz/`, run by `scripts/fuzz.sh`) and the crash-regression tests (`tests/fuzzing.rs`,
//! over `fuzz/regressions/`) share these entry points. Each writes the bytes to a scratch
//! file (the readers take paths), reads it back, and says whether the reader accepted it.
//! None may panic, whatever the bytes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::baselines::unet::PlainConvUNetConfig;
use crate::data::preprocess::PreprocessingPlan;
use crate::data::{DatasetJson, Plans};
use crate::train::candle::Device;
use crate::train::checkpoint::TrainingCheckpoint;
use crate::train::predict::{patch_size_2d, prediction_plan};

/// A scratch file in the temporary folder, unique per process and call, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(bytes: &[u8], extension: &str) -> Option<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("meddino-fuzz-{}-{n}.{extension}", std::process::id()));
        std::fs::write(&path, bytes).ok()?;
        Some(Self(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A NIfTI file (`.nii.gz` when `gzipped`, else `.nii`) read as an image and as a label map.
pub fn read_nifti(bytes: &[u8], gzipped: bool) -> bool {
    let Some(file) = Scratch::new(bytes, if gzipped { "nii.gz" } else { "nii" }) else {
        return false;
    };
    let image = crate::data::io::read_image(&file.0).is_ok();
    let labels = crate::data::io::read_label_map(&file.0).is_ok();
    image || labels
}

/// A `dataset.json`, and the questions training asks of it.
pub fn read_dataset_json(bytes: &[u8]) -> bool {
    let Some(file) = Scratch::new(bytes, "json") else {
        return false;
    };
    match DatasetJson::read(&file.0) {
        Ok(dataset) => {
            let _ = (dataset.foreground().count(), dataset.ignore_label());
            true
        }
        Err(_) => false,
    }
}

/// A plans file: every configuration resolved (`inherits_from`) and turned into a
/// preprocessing plan, a 2-D patch size, a prediction plan and a PlainConvUNet
/// configuration.
pub fn read_plans_json(bytes: &[u8]) -> bool {
    let Some(file) = Scratch::new(bytes, "json") else {
        return false;
    };
    let Ok(plans) = Plans::read(&file.0) else {
        return false;
    };
    for name in plans.configuration_names() {
        let Ok(configuration) = plans.configuration(&name) else {
            continue;
        };
        let _ = PreprocessingPlan::from_plans(&plans.value, &configuration);
        let _ = patch_size_2d(&configuration);
        let _ = prediction_plan(&plans, &name);
        if let Some(kwargs) = configuration.get("architecture").and_then(|a| a.get("arch_kwargs")) {
            let _ = PlainConvUNetConfig::from_arch_kwargs(kwargs, 1, 2);
        }
    }
    true
}

/// A checkpoint: as `.pth` (zip + pickle) through the state-dict reader when `pth`, else as
/// safetensors through both the training-checkpoint loader and the state-dict reader.
pub fn read_checkpoint(bytes: &[u8], pth: bool) -> bool {
    let Some(file) = Scratch::new(bytes, if pth { "pth" } else { "safetensors" }) else {
        return false;
    };
    let state = crate::backbone::StateDict::read(&file.0).is_ok();
    if pth {
        state
    } else {
        TrainingCheckpoint::load(&file.0, &Device::Cpu).is_ok() || state
    }
}
