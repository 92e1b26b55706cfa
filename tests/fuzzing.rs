//! Crash regressions of the fuzz targets: every input under `fuzz/regressions/<target>/`
//! that once made a reader panic goes through the same entry point (`meddino::fuzzing`)
//! and must now return, accepted or refused. The file name's extension tells the format
//! (`.nii`, `.nii.gz`, `.json`, `.pth`, `.safetensors`).

use std::path::{Path, PathBuf};

/// The regression inputs of `target`, sorted.
fn inputs(target: &str) -> Vec<PathBuf> {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
        .map(|entries| entries.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[test]
fn fuzz_regressions_are_read_without_panicking() {
    let mut checked = 0;
    for path in inputs("nifti") {
        let bytes = std::fs::read(&path).expect("regression input");
        let _ = meddino::fuzzing::read_nifti(&bytes, name(&path).ends_with(".gz"));
        checked += 1;
    }
    for path in inputs("dataset_json") {
        let _ = meddino::fuzzing::read_dataset_json(&std::fs::read(&path).expect("regression input"));
        checked += 1;
    }
    for path in inputs("plans_json") {
        let _ = meddino::fuzzing::read_plans_json(&std::fs::read(&path).expect("regression input"));
        checked += 1;
    }
    for path in inputs("checkpoint") {
        let bytes = std::fs::read(&path).expect("regression input");
        let _ = meddino::fuzzing::read_checkpoint(&bytes, name(&path).ends_with(".pth"));
        checked += 1;
    }
    eprintln!("{checked} fuzz regression input(s) read");
}

#[test]
fn fuzz_entry_points_accept_well_formed_inputs() {
    // The entry points are not vacuous: well-formed inputs are accepted.
    let plans = serde_json::json!({
        "configurations": {"2d": {"patch_size": [64, 64], "spacing": [1.0, 1.0],
            "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [false],
            "resampling_fn_data_kwargs": {"is_seg": false, "order": 3, "order_z": 0, "force_separate_z": null},
            "resampling_fn_seg_kwargs": {"is_seg": true, "order": 1, "order_z": 0, "force_separate_z": null},
            "resampling_fn_probabilities_kwargs": {"is_seg": false, "order": 1, "order_z": 0, "force_separate_z": null}}},
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "foreground_intensity_properties_per_channel": {}
    });
    assert!(meddino::fuzzing::read_plans_json(plans.to_string().as_bytes()));
    assert!(!meddino::fuzzing::read_plans_json(b"{\"configurations\": 3}"));
    let dataset = br#"{"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1}, "numTraining": 1, "file_ending": ".nii.gz"}"#;
    assert!(meddino::fuzzing::read_dataset_json(dataset));
    assert!(!meddino::fuzzing::read_dataset_json(b"[]"));
    assert!(!meddino::fuzzing::read_nifti(b"not a nifti file", false));
    assert!(!meddino::fuzzing::read_checkpoint(b"not a checkpoint", true));

    let reference = meddino_testutil::reference_or_skip!();
    // The reference's 2-D and 3-D NIfTI files, as their expectations list them.
    let expected = reference.json("nifti/expected.json");
    let files = expected["files"].as_object().expect("nifti/expected.json: files");
    let mut accepted = 0;
    for (file, entry) in files {
        let rank = entry["shape"].as_array().map_or(0, Vec::len);
        if !(2..=3).contains(&rank) || entry["sitk"].get("error").is_some() {
            continue;
        }
        let bytes = std::fs::read(reference.file(format!("nifti/files/{file}"))).expect("reference NIfTI");
        assert!(meddino::fuzzing::read_nifti(&bytes, file.ends_with(".gz")), "{file}");
        accepted += 1;
    }
    assert!(accepted > 0, "some reference NIfTI files are 2-D or 3-D");
    for file in reference.list("models", ".pth") {
        let bytes = std::fs::read(reference.file(&file)).expect("reference checkpoint");
        assert!(meddino::fuzzing::read_checkpoint(&bytes, true), "{}", file.display());
    }
}
