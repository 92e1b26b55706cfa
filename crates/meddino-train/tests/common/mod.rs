//! A small synthetic preprocessed data set (discs and squares in noise), in nnU-Net's
//! preprocessed layout, for training tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use meddino_train::data::ndarray::Array4;
use meddino_train::data::preprocess::store::{class_locations, write_case};
use meddino_train::data::preprocess::{CaseProperties, Preprocessed};
use meddino_train::data::random::RandomState;
use serde_json::json;

/// A fresh scratch folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meddino-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// Writes `cases` synthetic cases of `slices` × `size`² into `<root>/Dataset900_Shapes`
/// (plans with a `2d` configuration of `patch`² patches, batch `batch`) and returns that
/// folder. Class 1: a bright disc; class 2: a dark square; both at random places.
pub fn shapes_dataset(root: &Path, cases: usize, slices: usize, size: usize, patch: usize, batch: usize) -> PathBuf {
    let folder = root.join("Dataset900_Shapes");
    let data_folder = folder.join("nnUNetPlans_2d");
    let mut rng = RandomState::new(42);
    for c in 0..cases {
        let mut data = Array4::<f32>::zeros((1, slices, size, size));
        let mut seg = Array4::<i16>::zeros((1, slices, size, size));
        for z in 0..slices {
            let s = size as f64;
            let (cy, cx, r) = (
                rng.uniform_in(0.3 * s, 0.7 * s),
                rng.uniform_in(0.3 * s, 0.7 * s),
                rng.uniform_in(0.12 * s, 0.2 * s),
            );
            let (sy, sx, half) = (
                rng.uniform_in(0.15 * s, 0.85 * s),
                rng.uniform_in(0.15 * s, 0.85 * s),
                rng.uniform_in(0.08 * s, 0.14 * s),
            );
            for y in 0..size {
                for x in 0..size {
                    let (fy, fx) = (y as f64, x as f64);
                    let noise = 0.3 * (rng.uniform() - 0.5);
                    let (value, label) = if ((fy - sy).abs() < half) && ((fx - sx).abs() < half) {
                        (-1.0, 2)
                    } else if (fy - cy).powi(2) + (fx - cx).powi(2) < r * r {
                        (1.0, 1)
                    } else {
                        (0.0, 0)
                    };
                    data[[0, z, y, x]] = (value + noise) as f32;
                    seg[[0, z, y, x]] = label;
                }
            }
        }
        let properties = CaseProperties::uncropped([slices, size, size], [1.0; 3]);
        let locations = class_locations(&seg, &[1, 2]);
        let case = Preprocessed { data, seg, properties };
        write_case(&data_folder, &format!("shape_{c:03}"), &case, &locations).expect("write case");
    }
    let plans = json!({
        "dataset_name": "Dataset900_Shapes",
        "plans_name": "nnUNetPlans",
        "configurations": {"2d": {
            "data_identifier": "nnUNetPlans_2d",
            "batch_size": batch,
            "patch_size": [patch, patch],
            "spacing": [1.0, 1.0],
            "use_mask_for_norm": [false],
            "batch_dice": true
        }}
    });
    std::fs::write(folder.join("nnUNetPlans.json"), plans.to_string()).expect("plans");
    let dataset = json!({
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "disc": 1, "square": 2},
        "numTraining": cases,
        "file_ending": ".nii.gz"
    });
    std::fs::write(folder.join("dataset.json"), dataset.to_string()).expect("dataset.json");
    folder
}

/// Random weights of a backbone in the safetensors layout a `--pretrained` file has, as a
/// stand-in for released weights (the tests have none).
pub fn random_backbone_weights(cfg: &meddino_backbone::Config, path: &Path) {
    use meddino_train::candle::{DType, Device};
    let varmap = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = meddino_backbone::DinoVisionTransformer::new(cfg, vb).expect("backbone");
    meddino_backbone::StateDict::from_varmap(path, &varmap, model.buffers().expect("buffers"))
        .save_safetensors(path)
        .expect("save weights");
}
