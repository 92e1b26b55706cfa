//! DICOM series as input: `meddino convert dicom` on nnunet-data's generated series
//! (`crates/nnunet-data/tests/data/dicom`, made by `scripts/dicom/make_series.py` with
//! SimpleITK 2.5.7's readings in `expected.json`), and `meddino predict` on a folder of series
//! folders.

use std::path::PathBuf;

use meddino_testutil::reference_or_skip;
use serde_json::Value;

use crate::train::{predict_args, preprocessed_phantom, train_args};
use crate::util::Dir;

/// The NIfTI header stores the geometry in float32.
const GEOMETRY_TOLERANCE: f64 = 1e-5;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crates/nnunet-data/tests/data/dicom")
}

fn expected() -> Value {
    let path = fixtures().join("expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn numbers(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .expect("a list")
        .iter()
        .map(|v| v.as_f64().expect("a number"))
        .collect()
}

#[test]
fn convert_dicom_writes_each_series_as_simpleitk_reads_it() {
    let dir = Dir::new("convert-dicom");
    for entry in expected()["series"].as_array().expect("series") {
        let name = entry["name"].as_str().expect("name");
        let out = dir.path().join(format!("{name}.nii.gz"));
        let series = fixtures().join(name);
        let run = dir.meddino(&[
            "convert",
            "dicom",
            series.to_str().expect("utf-8"),
            out.to_str().expect("utf-8"),
        ]);
        assert!(run.assert_code(0).stderr().contains("written to"), "{name}");
        let image = meddino::data::io::read_image(&out).unwrap_or_else(|e| panic!("{name}: {e}"));
        let shape: Vec<usize> = numbers(&entry["shape"]).iter().map(|&v| v as usize).collect();
        assert_eq!(image.data.shape(), &shape[..], "{name}");
        for (i, (&got, want)) in image.data.iter().zip(numbers(&entry["voxels"])).enumerate() {
            assert_eq!(got, want as f32, "{name}: voxel {i}");
        }
        for (key, got) in [
            ("origin", &image.geometry.origin),
            ("spacing", &image.geometry.spacing),
            ("direction", &image.geometry.direction),
        ] {
            let want = numbers(&entry[key]);
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(
                got.len() == want.len() && worst <= GEOMETRY_TOLERANCE,
                "{name}: {key} {got:?}, SimpleITK {want:?}"
            );
        }
    }
}

#[test]
fn convert_dicom_refuses_tilted_and_gapped_series_naming_the_problem() {
    let dir = Dir::new("convert-dicom-refusals");
    for (name, says) in [
        ("refuse_gantry_tilt", "tilted 15.000°"),
        ("refuse_nonuniform_gap", "5.0000 mm apart, expected 2.5000 mm"),
        ("refuse_mixed_series", "more than one DICOM series"),
    ] {
        let series = fixtures().join(name);
        let run = dir.meddino(&["convert", "dicom", series.to_str().expect("utf-8"), "out.nii.gz"]);
        let stderr = run.assert_code(1).stderr();
        assert!(stderr.contains(says), "{name}: {stderr}");
        assert!(!dir.path().join("out.nii.gz").exists(), "{name}: nothing written");
    }
    // A looser tolerance reads the tilted series (into a geometry that ignores the tilt).
    let series = fixtures().join("refuse_gantry_tilt");
    let run = dir.meddino(&[
        "convert",
        "dicom",
        series.to_str().expect("utf-8"),
        "tilted.nii.gz",
        "--relative-tolerance",
        "0.3",
    ]);
    let _ = run.assert_code(0);
}

#[test]
fn predict_writes_a_label_map_per_dicom_series_folder() {
    let reference = reference_or_skip!();
    let dir = Dir::new("predict-dicom");
    let (name, configuration) = preprocessed_phantom(&dir, &reference);
    let trainer = "dinov3_base_primus_Trainer_scratch";
    let mut args = train_args(&dir, &name, &configuration, "results");
    args.extend(["-tr", trainer, "--epochs", "1", "--iters", "1"].map(String::from));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let _ = dir.meddino(&argv).assert_code(0);

    // Two series folders as two cases, named after the folders.
    let input = dir.path().join("series");
    let cases = ["axial", "coronal"];
    for case in cases {
        let folder = input.join(case);
        std::fs::create_dir_all(&folder).expect("case folder");
        for file in std::fs::read_dir(fixtures().join(case)).expect("fixture") {
            let file = file.expect("entry").path();
            std::fs::copy(&file, folder.join(file.file_name().expect("name"))).expect("copy");
        }
    }
    let mut args = predict_args(&input, "predicted", &name, &configuration, trainer);
    args.push("--disable-tta".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = dir.meddino(&argv).assert_code(0).stderr();
    assert!(stderr.contains("2 case(s) predicted"), "{stderr}");
    for case in cases {
        let series = meddino::data::io::dicom::read_dicom_series(&input.join(case)).expect("series");
        let labels = meddino::data::io::read_image(&dir.path().join("predicted").join(format!("{case}.nii.gz")))
            .expect("a label map per case");
        assert_eq!(labels.data.shape(), series.data.shape(), "{case}");
        for (a, b) in labels.geometry.origin.iter().zip(&series.geometry.origin) {
            assert!((a - b).abs() <= GEOMETRY_TOLERANCE, "{case}: origin");
        }
        assert_eq!(
            labels.geometry.direction, series.geometry.direction,
            "{case}: direction"
        );
    }
}
