//! DICOM series reading against SimpleITK 2.5.7's `ImageSeriesReader` (files listed by
//! `GetGDCMSeriesFileNames`): the series and `expected.json` in `tests/data/dicom/` are made by
//! `scripts/dicom/make_series.py` (pydicom 3.0.2). Every series listed must read with exactly
//! SimpleITK's voxels (as f32) and its geometry to `geometry_tolerance`; every refusal listed
//! must give its error variant. Names and values come from the JSON only.
#![cfg(feature = "dicom")]

use std::path::PathBuf;

use nnunet_data::io::dicom::{read_dicom_series, DicomIo};
use nnunet_data::io::{input_cases, CaseSource, ImageReader};
use nnunet_data::Error;
use serde_json::Value;

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/dicom")
}

fn expected() -> Value {
    let path = data().join("expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn numbers(value: &Value, what: &str) -> Vec<f64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("{what}: expected a list"))
        .iter()
        .map(|v| {
            v.as_f64()
                .unwrap_or_else(|| panic!("{what}: expected numbers, got {v}"))
        })
        .collect()
}

/// The variant's name, as expected.json spells it.
fn variant(error: &Error) -> &'static str {
    match error {
        Error::MixedSeries { .. } => "MixedSeries",
        Error::MissingTag { .. } => "MissingTag",
        Error::InvalidTag { .. } => "InvalidTag",
        Error::InconsistentOrientation { .. } => "InconsistentOrientation",
        Error::InconsistentSlices { .. } => "InconsistentSlices",
        Error::GantryTilt { .. } => "GantryTilt",
        Error::NonUniformSpacing { .. } => "NonUniformSpacing",
        Error::UnsupportedTransferSyntax { .. } => "UnsupportedTransferSyntax",
        Error::NoDicomFiles { .. } => "NoDicomFiles",
        Error::Dicom { .. } => "Dicom",
        _ => "other",
    }
}

#[test]
fn every_generated_series_reads_as_simpleitk_reads_it() {
    let expected = expected();
    let tolerance = expected["geometry_tolerance"].as_f64().expect("geometry_tolerance");
    let series = expected["series"].as_array().expect("series");
    assert!(!series.is_empty(), "expected.json lists series");
    for entry in series {
        let name = entry["name"].as_str().expect("name");
        let image = read_dicom_series(&data().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let shape: Vec<usize> = numbers(&entry["shape"], "shape").iter().map(|&v| v as usize).collect();
        assert_eq!(image.data.shape(), &shape[..], "{name}: shape (Z, Y, X)");
        let voxels = numbers(&entry["voxels"], "voxels");
        assert_eq!(voxels.len(), image.data.len(), "{name}: voxel count");
        for (i, (&got, &want)) in image.data.iter().zip(&voxels).enumerate() {
            // SimpleITK's values rounded to f32 are exact in the JSON: compare bit for bit.
            assert_eq!(
                got, want as f32,
                "{name}: voxel {i} (C order) is {got}, SimpleITK {want}"
            );
        }
        for (key, got) in [
            ("origin", &image.geometry.origin),
            ("spacing", &image.geometry.spacing),
            ("direction", &image.geometry.direction),
        ] {
            let want = numbers(&entry[key], key);
            assert_eq!(got.len(), want.len(), "{name}: {key} length");
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(
                worst <= tolerance,
                "{name}: {key} {got:?}, SimpleITK {want:?} (max |Δ| {worst:e})"
            );
        }
        let reversed: Vec<f64> = image.geometry.spacing.iter().rev().copied().collect();
        assert_eq!(image.spacing, reversed, "{name}: array spacing is (z, y, x)");
    }
}

#[test]
fn every_generated_refusal_gives_its_error() {
    let expected = expected();
    let refusals = expected["refusals"].as_array().expect("refusals");
    assert!(!refusals.is_empty(), "expected.json lists refusals");
    for entry in refusals {
        let name = entry["name"].as_str().expect("name");
        let want = entry["error"].as_str().expect("error");
        match read_dicom_series(&data().join(name)) {
            Ok(image) => panic!("{name}: read as {:?}, expected {want}", image.data.shape()),
            Err(error) => {
                assert_eq!(variant(&error), want, "{name}: {error}");
                let message = error.to_string();
                assert!(
                    message.contains(name),
                    "{name}: the message names the folder or a file: {message}"
                );
            }
        }
    }
}

#[test]
fn refusals_name_what_is_wrong() {
    let message = |name: &str| read_dicom_series(&data().join(name)).expect_err(name).to_string();
    let tilt = message("refuse_gantry_tilt");
    assert!(tilt.contains("15.000°"), "the tilt angle: {tilt}");
    let gap = message("refuse_nonuniform_gap");
    assert!(gap.contains("5.0000 mm apart, expected 2.5000 mm"), "the gap: {gap}");
    let missing = message("refuse_missing_position");
    assert!(
        missing.contains("ImagePositionPatient (0020,0032)"),
        "the tag: {missing}"
    );
    let jpeg = message("refuse_jpeg2000");
    assert!(jpeg.contains("1.2.840.10008.1.2.4.90"), "the transfer syntax: {jpeg}");
}

#[test]
fn a_prediction_folder_of_series_folders_gives_one_case_per_folder() {
    let expected = expected();
    let names: Vec<&str> = expected["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    // The fixtures folder: every series and refusal folder is a case; expected.json is not.
    let cases = input_cases(&data(), ".nii.gz", 1).expect("cases");
    for name in &names {
        assert_eq!(
            cases.get(*name),
            Some(&CaseSource::DicomSeries(data().join(name))),
            "{name}"
        );
    }
    let volume = cases[names[0]].read().expect("read");
    let direct = DicomIo::default().read_images(&[data().join(names[0])]).expect("read");
    assert_eq!(volume, direct);
    assert_eq!(volume.data.shape()[0], 1, "one channel");
    // A model of two channels cannot take a series folder.
    let error = input_cases(&data(), ".nii.gz", 2).expect_err("two channels");
    assert!(error.to_string().contains("channel (a DICOM series folder)"), "{error}");
}

#[test]
fn a_folder_without_dicom_files_is_refused() {
    let empty = std::env::temp_dir().join(format!("nnunet-data-dicom-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).expect("folder");
    std::fs::write(empty.join("notes.txt"), "not DICOM").expect("write");
    let error = read_dicom_series(&empty).expect_err("no DICOM");
    let _ = std::fs::remove_dir_all(&empty);
    assert!(matches!(error, Error::NoDicomFiles { .. }), "{error}");
}
