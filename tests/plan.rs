//! `meddino plan-and-preprocess`: the reference raw data set planned and preprocessed as
//! nnU-Net does, resumable, and refused with clear messages when broken.

use meddino_testutil::reference_or_skip;

use crate::util::{reference_dataset, Dir};

fn close(a: &serde_json::Value, b: &serde_json::Value, what: &str) {
    let (a, b) = (a.as_array().expect("list"), b.as_array().expect("list"));
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (x.as_f64().expect("number"), y.as_f64().expect("number"));
        assert!((x - y).abs() <= 1e-9 * y.abs().max(1.0), "{what}: {a:?} vs {b:?}");
    }
}

#[test]
fn plans_and_preprocesses_the_reference_data_set() {
    let reference = reference_or_skip!();
    let raw = reference.file("nnunet/raw");
    let name = reference_dataset(&reference);
    let derived = reference.json("nnunet/expected/2d_896/config.json");
    let patch = derived["patch_size"][0].as_u64().expect("patch");
    let dir = Dir::new("plan-reference");
    let out = dir.path().join("preprocessed");
    let config = format!("2d_{patch}");
    let args = [
        "plan-and-preprocess",
        "-d",
        &name,
        "-c",
        "2d",
        "-c",
        &config,
        "--verify",
        "--raw",
        raw.to_str().expect("utf-8"),
        "--preprocessed",
        out.to_str().expect("utf-8"),
    ];
    let first = dir.meddino(&args);
    assert!(first.assert_code(0).stderr().contains("verified"));

    let plans: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(&name).join("nnUNetPlans.json")).expect("plans"))
            .expect("json");
    let expected = reference.json("nnunet/expected/nnUNetPlans.json");
    for (key, value) in expected["configurations"]["2d"].as_object().expect("2d") {
        let ours = &plans["configurations"]["2d"][key];
        match key.as_str() {
            "spacing" | "median_image_size_in_voxels" => close(ours, value, key),
            _ => assert_eq!(ours, value, "2d.{key}"),
        }
    }
    for (key, value) in derived.as_object().expect("config") {
        let ours = &plans["configurations"][&config][key];
        if key == "spacing" {
            close(ours, value, "2d_896 spacing");
        } else {
            assert_eq!(ours, value, "{config}.{key}");
        }
    }
    // Every case written for both configurations, readable as NumPy arrays.
    let cases = reference.json("nnunet/expected/2d/cases.json");
    for id in cases.as_object().expect("cases").keys() {
        for identifier in ["nnUNetPlans_2d".to_string(), format!("nnUNetPlans_{config}")] {
            let folder = out.join(&name).join(&identifier);
            let data: ndarray::ArrayD<f32> = ndarray_npy::read_npy(folder.join(format!("{id}.npy"))).expect("data npy");
            assert_eq!(data.ndim(), 4, "{identifier}/{id}");
            let properties: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(folder.join(format!("{id}.json"))).expect("json"))
                    .expect("json");
            assert!(properties["class_locations"].is_object(), "{identifier}/{id}");
        }
        let shape: Vec<usize> = serde_json::from_value(cases[id]["shape"].clone()).expect("shape");
        let data: ndarray::ArrayD<f32> =
            ndarray_npy::read_npy(out.join(&name).join("nnUNetPlans_2d").join(format!("{id}.npy"))).expect("npy");
        assert_eq!(data.shape(), shape.as_slice(), "{id}");
    }
    // A second run resumes: nothing to redo.
    let second = dir.meddino(&args);
    assert!(
        second.assert_code(0).stderr().contains("0 case(s) preprocessed"),
        "{}",
        second.stderr()
    );
}

#[test]
fn broken_data_sets_are_refused() {
    let dir = Dir::new("plan-broken");
    let raw = dir.path().join("raw/Dataset007_Broken");
    std::fs::create_dir_all(raw.join("imagesTr")).expect("mkdir");
    std::fs::create_dir_all(raw.join("labelsTr")).expect("mkdir");
    std::fs::write(raw.join("dataset.json"), r#"{"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1}, "numTraining": 2, "file_ending": ".nii.gz"}"#).expect("json");
    let volume = ndarray::Array3::<f32>::from_elem((4, 5, 6), 1.0);
    nifti::writer::WriterOptions::new(raw.join("imagesTr/case_0000.nii.gz"))
        .write_nifti(&volume)
        .expect("nifti");
    let raw_root = dir.path().join("raw");
    let out = dir.path().join("pre");
    let args = [
        "plan-and-preprocess",
        "-d",
        "7",
        "--verify",
        "--raw",
        raw_root.to_str().expect("utf-8"),
        "--preprocessed",
        out.to_str().expect("utf-8"),
    ];
    let stderr = dir.meddino(&args).assert_code(1).stderr();
    assert!(stderr.contains("numTraining is 2 but 1 cases were found"), "{stderr}");
    assert!(stderr.contains("case: missing label"), "{stderr}");
    let stderr = dir
        .meddino(&[
            "plan-and-preprocess",
            "-d",
            "9",
            "--raw",
            raw_root.to_str().expect("utf-8"),
            "--preprocessed",
            out.to_str().expect("utf-8"),
        ])
        .assert_code(1)
        .stderr();
    assert!(stderr.contains("no data set \"9\""), "{stderr}");
}

#[test]
fn a_killed_preprocessing_run_completes_the_missing_cases_only() {
    let reference = reference_or_skip!();
    let raw = reference.file("nnunet/raw");
    let name = reference_dataset(&reference);
    let cases = std::fs::read_dir(raw.join(&name).join("labelsTr"))
        .expect("labels")
        .count();
    let dir = Dir::new("plan-kill");
    let out = dir.path().join("preprocessed");
    // One thread and the large derived configuration make each case take a while.
    let args = [
        "plan-and-preprocess",
        "-d",
        &name,
        "-c",
        "2d_896",
        "-j",
        "1",
        "--raw",
        raw.to_str().expect("utf-8"),
        "--preprocessed",
        out.to_str().expect("utf-8"),
    ];
    let mut child = dir.spawn_meddino(&args, &[]);
    let folder = out.join(&name).join("nnUNetPlans_2d_896");
    let done = |folder: &std::path::Path| {
        std::fs::read_dir(folder).map_or(0, |entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while done(&folder) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no case finished within 2 minutes"
        );
        assert!(
            child.try_wait().expect("poll").is_none(),
            "finished before it could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let finished = done(&folder);
    assert!(finished < cases, "killed mid-run ({finished} of {cases} done)");

    let stderr = dir.meddino(&args).assert_code(0).stderr();
    let expected = format!("{} case(s) preprocessed, {finished} already done", cases - finished);
    assert!(stderr.contains(&expected), "{expected:?} in {stderr}");
    assert_eq!(done(&folder), cases);
    // Nothing half-written survives: every array loads, no temporary file is left.
    for entry in std::fs::read_dir(&folder).expect("folder").filter_map(|e| e.ok()) {
        let file = entry.file_name().to_string_lossy().into_owned();
        assert!(!file.starts_with('.'), "temporary file left: {file}");
        if file.ends_with("_seg.npy") {
            let _: ndarray::Array4<i16> = ndarray_npy::read_npy(entry.path()).expect("a complete seg array");
        } else if file.ends_with(".npy") {
            let _: ndarray::Array4<f32> = ndarray_npy::read_npy(entry.path()).expect("a complete data array");
        }
    }
}
