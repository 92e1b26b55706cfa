//! The catalogue of malformed inputs (`docs/reliability.md`): each one a command that exits
//! with status 1, a message naming the file, case or key and what was expected, and no
//! output left behind. The raw data sets are small phantoms, broken one way each.

use std::path::{Path, PathBuf};

use meddino::data::io::{write_label_map, ItkGeometry};
use meddino::data::ndarray::Array3;
use meddino::data::phantom::{write_dataset, PhantomOptions};

use crate::util::{Dir, TestOutput};

/// The phantom data set's folder name.
const DATASET: &str = "Dataset042_Broken";

/// Three small phantom cases under `dir/raw/Dataset042_Broken`; returns that folder.
fn raw_dataset(dir: &Dir) -> PathBuf {
    let folder = dir.path().join("raw").join(DATASET);
    let options = PhantomOptions {
        slices: 4,
        size: 32,
        ..PhantomOptions::default()
    };
    write_dataset(&folder, &options, 5, 3, 0).expect("phantom data set");
    folder
}

/// `meddino plan-and-preprocess -d 42 -c 2d` on `dir`'s raw data set into
/// `dir/preprocessed`, with `--verify` or not.
fn plan(dir: &Dir, verify: bool) -> TestOutput {
    plan_into(dir, &dir.path().join("preprocessed"), verify)
}

/// As [`plan`], into `preprocessed`.
fn plan_into(dir: &Dir, preprocessed: &Path, verify: bool) -> TestOutput {
    let raw = dir.path().join("raw");
    let mut args = vec![
        "plan-and-preprocess",
        "-d",
        "42",
        "-c",
        "2d",
        "--raw",
        raw.to_str().expect("utf-8"),
        "--preprocessed",
        preprocessed.to_str().expect("utf-8"),
    ];
    if verify {
        args.push("--verify");
    }
    dir.meddino(&args)
}

/// Every file under `folder` (recursively), relative to it.
fn files_under(folder: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![folder.to_path_buf()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(relative) = path.strip_prefix(folder) {
                found.push(relative.display().to_string());
            }
        }
    }
    found.sort();
    found
}

/// Asserts that planning fails with and without `--verify`, naming every `expected` part,
/// and that no preprocessed case was written.
fn refused(dir: &Dir, expected: &[&str]) {
    for verify in [true, false] {
        let stderr = plan(dir, verify).assert_code(1).stderr();
        for part in expected {
            assert!(stderr.contains(part), "verify {verify}: {part:?} not in {stderr}");
        }
        let written = files_under(&dir.path().join("preprocessed"));
        assert!(
            written
                .iter()
                .all(|f| !f.ends_with(".npy") && !f.ends_with(".pkl") && !f.contains(".tmp")),
            "verify {verify}: preprocessed output left behind: {written:?}"
        );
    }
}

/// The geometry of a (Z, Y, X) volume with `spacing` (Z, Y, X) and identity direction.
fn geometry(spacing: [f64; 3]) -> ItkGeometry {
    ItkGeometry {
        spacing: vec![spacing[2], spacing[1], spacing[0]],
        origin: vec![0.0; 3],
        direction: vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
    }
}

/// Replaces case 0's image by a float image of the phantom's size and spacing holding
/// `value` at one voxel.
fn poison_image(folder: &Path, value: f32) {
    let mut data = Array3::<f32>::zeros((32, 32, 4)); // nibabel's (x, y, z)
    data[[3, 2, 1]] = value;
    let header = nifti::NiftiHeader {
        pixdim: [1.0, 2.8, 2.8, 6.0, 1.0, 1.0, 1.0, 1.0],
        ..Default::default()
    };
    nifti::writer::WriterOptions::new(folder.join("imagesTr/phantom_000_0000.nii.gz"))
        .reference_header(&header)
        .write_nifti(&data)
        .expect("write image");
}

#[test]
fn images_with_nan_or_infinite_voxels_are_refused() {
    for (name, value) in [("nan", f32::NAN), ("inf", f32::INFINITY)] {
        let dir = Dir::new(&format!("malformed-{name}"));
        let folder = raw_dataset(&dir);
        poison_image(&folder, value);
        refused(&dir, &["phantom_000", "NaN or infinite"]);
    }
}

#[test]
fn labels_that_do_not_fit_their_image_are_refused() {
    let dir = Dir::new("malformed-label-shape");
    let folder = raw_dataset(&dir);
    let labels = Array3::<i32>::zeros((4, 30, 32));
    write_label_map(
        &folder.join("labelsTr/phantom_001.nii.gz"),
        labels.view().into_dyn(),
        &geometry([6.0, 2.8, 2.8]),
    )
    .expect("label");
    refused(&dir, &["phantom_001", "label shape [4, 30, 32]", "[4, 32, 32]"]);

    let dir = Dir::new("malformed-label-spacing");
    let folder = raw_dataset(&dir);
    let labels = Array3::<i32>::zeros((4, 32, 32));
    write_label_map(
        &folder.join("labelsTr/phantom_002.nii.gz"),
        labels.view().into_dyn(),
        &geometry([6.0, 2.8, 3.5]),
    )
    .expect("label");
    refused(&dir, &["phantom_002", "spacing"]);
}

#[test]
fn label_values_dataset_json_does_not_declare_are_refused() {
    let dir = Dir::new("malformed-undeclared-label");
    let folder = raw_dataset(&dir);
    let mut labels = Array3::<i32>::zeros((4, 32, 32));
    labels[[1, 5, 5]] = 7;
    write_label_map(
        &folder.join("labelsTr/phantom_000.nii.gz"),
        labels.view().into_dyn(),
        &geometry([6.0, 2.8, 2.8]),
    )
    .expect("label");
    refused(&dir, &["phantom_000", "label values [7]", "dataset.json"]);
}

/// Rewrites dataset.json through `edit`.
fn edit_dataset_json(folder: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = folder.join("dataset.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dataset.json")).expect("json");
    edit(&mut json);
    std::fs::write(&path, json.to_string()).expect("write dataset.json");
}

#[test]
fn non_consecutive_labels_are_refused() {
    let dir = Dir::new("malformed-label-gap");
    let folder = raw_dataset(&dir);
    edit_dataset_json(&folder, |json| {
        json["labels"] = serde_json::json!({"background": 0, "liver": 1, "kidney": 2, "spleen": 4});
    });
    refused(&dir, &["dataset.json", "consecutive", "[0, 1, 2, 4]"]);
}

#[test]
fn missing_and_extra_files_are_refused() {
    let dir = Dir::new("malformed-missing-label");
    let folder = raw_dataset(&dir);
    std::fs::remove_file(folder.join("labelsTr/phantom_002.nii.gz")).expect("remove");
    refused(&dir, &["labelsTr/phantom_002.nii.gz"]);

    let dir = Dir::new("malformed-extra-channel");
    let folder = raw_dataset(&dir);
    std::fs::copy(
        folder.join("imagesTr/phantom_001_0000.nii.gz"),
        folder.join("imagesTr/phantom_001_0001.nii.gz"),
    )
    .expect("copy");
    refused(&dir, &["phantom_001: 2 image channel(s), dataset.json declares 1"]);

    let dir = Dir::new("malformed-missing-image");
    let folder = raw_dataset(&dir);
    std::fs::remove_file(folder.join("imagesTr/phantom_001_0000.nii.gz")).expect("remove");
    refused(
        &dir,
        &["labelsTr/phantom_001.nii.gz: no image of this case in imagesTr"],
    );
}

#[test]
fn malformed_dataset_json_is_refused_naming_the_key() {
    /// A name, an edit of dataset.json, what the error must say.
    type Case = (&'static str, fn(&mut serde_json::Value), &'static [&'static str]);
    let cases: [Case; 3] = [
        (
            "no-labels",
            |json| {
                let _ = json.as_object_mut().expect("object").remove("labels");
            },
            &["dataset.json", "labels"],
        ),
        (
            "channels-not-an-object",
            |json| json["channel_names"] = serde_json::json!(["CT"]),
            &["dataset.json", "channel_names"],
        ),
        (
            "label-not-a-number",
            |json| json["labels"]["liver"] = serde_json::json!("one"),
            &["dataset.json", "liver"],
        ),
    ];
    for (name, edit, expected) in cases {
        let dir = Dir::new(&format!("malformed-dataset-json-{name}"));
        let folder = raw_dataset(&dir);
        edit_dataset_json(&folder, edit);
        refused(&dir, expected);
    }
    let dir = Dir::new("malformed-dataset-json-syntax");
    let folder = raw_dataset(&dir);
    std::fs::write(folder.join("dataset.json"), "{\"labels\": {").expect("write");
    refused(&dir, &["dataset.json"]);
}

#[test]
fn an_unwritable_output_folder_is_refused_naming_it() {
    let dir = Dir::new("malformed-output");
    let _ = raw_dataset(&dir);
    // The preprocessed folder's parent is a regular file.
    std::fs::write(dir.path().join("blocker"), "not a folder").expect("file");
    let preprocessed = dir.path().join("blocker").join("preprocessed");
    let stderr = plan_into(&dir, &preprocessed, false).assert_code(1).stderr();
    assert!(stderr.contains("blocker"), "{stderr}");

    // `meddino evaluate` with its output folder under the same file.
    let folder = dir.path().join("raw").join(DATASET);
    let labels = folder.join("labelsTr");
    let dataset_json = folder.join("dataset.json");
    let stderr = dir
        .meddino(&[
            "evaluate",
            "--pred",
            labels.to_str().expect("utf-8"),
            "--labels",
            labels.to_str().expect("utf-8"),
            "--dataset-json",
            dataset_json.to_str().expect("utf-8"),
            "--out",
            "blocker/metrics",
        ])
        .assert_code(1)
        .stderr();
    assert!(stderr.contains("blocker/metrics"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("blocker")).expect("file"),
        "not a folder"
    );
}
