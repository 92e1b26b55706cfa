//! `meddino evaluate`: the reference numbers through the CSV, and malformed inputs.

use std::collections::HashMap;
use std::path::Path;

use meddino_testutil::reference_or_skip;
use ndarray::{Array3, ShapeBuilder};

use crate::util::Dir;

/// MONAI computes in float32 (shared/reference/README.md).
const TOLERANCE: f64 = 1e-4;

/// Parses `segmentation_metrics.csv`: file name → column → value (empty cell = NaN).
fn read_csv(path: &Path) -> HashMap<String, HashMap<String, f64>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    assert_eq!(header[0], "filename");
    lines
        .map(|line| {
            let cells: Vec<&str> = line.split(',').collect();
            assert_eq!(cells.len(), header.len(), "row {line}");
            let values = header[1..]
                .iter()
                .zip(&cells[1..])
                .map(|(h, c)| {
                    (
                        h.to_string(),
                        if c.is_empty() {
                            f64::NAN
                        } else {
                            c.parse().expect("number")
                        },
                    )
                })
                .collect();
            (cells[0].to_string(), values)
        })
        .collect()
}

fn expected_number(value: &serde_json::Value) -> f64 {
    meddino_testutil::json_f64(value).unwrap_or_else(|| panic!("not a number: {value}"))
}

/// Runs evaluate on the reference metrics folder and checks each CSV cell against
/// `expected.json` (`metric` there for each CSV metric).
fn check_reference_csv(extra_args: &[&str], metric_names: [(&str, &str); 3]) {
    let reference = reference_or_skip!();
    let folder = reference.file("metrics");
    let dir = Dir::new(&format!("evaluate-reference{}", extra_args.join("")));
    let out = dir.path().join("out");
    let path = |p: &Path| p.to_str().expect("UTF-8 path").to_string();
    let mut args = vec![
        "evaluate".to_string(),
        "--pred".into(),
        path(&folder.join("preds")),
        "--labels".into(),
        path(&folder.join("labelsTr")),
        "--dataset-json".into(),
        path(&folder.join("dataset.json")),
        "--out".into(),
        path(&out),
    ];
    args.extend(extra_args.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = dir.meddino(&args);
    let stdout = run.assert_code(0).stdout();
    assert!(stdout.contains("classwise_average"), "{stdout}");

    let rows = read_csv(&out.join("segmentation_metrics.csv"));
    let expected = reference.json("metrics/expected.json");
    let cases = expected["cases"].as_object().expect("cases");
    assert_eq!(rows.len(), cases.len(), "one row per case");
    for (case, entry) in cases {
        let row = &rows[&format!("{case}.nii.gz")];
        for (class, metrics) in entry["classes"].as_object().expect("classes") {
            for (column, metric) in metric_names {
                let got = row[&format!("{column}_class{class}")];
                let want = expected_number(&metrics[metric]);
                let ok = if want.is_finite() {
                    (got - want).abs() <= TOLERANCE * want.abs().max(1.0)
                } else {
                    got.is_nan() && want.is_nan() || got == want
                };
                assert!(
                    ok,
                    "{case} class {class} {column}: got {got}, expected {metric} = {want}"
                );
            }
        }
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).expect("summary.json")).expect("JSON");
    assert!(summary["classwise_average"]["dice"]["mean"].is_number(), "{summary}");
}

#[test]
fn reproduces_the_reference_numbers_through_the_csv() {
    check_reference_csv(&[], [("dice", "dice"), ("hd95", "hd95"), ("nsd", "nsd_1mm")]);
}

#[test]
fn tolerance_and_surfel_method_reach_the_csv() {
    check_reference_csv(
        &["--nsd-tolerance-mm", "2"],
        [("dice", "dice"), ("hd95", "hd95"), ("nsd", "nsd_2mm")],
    );
    check_reference_csv(
        &["--nsd-method", "surfel", "--threads", "1"],
        [("dice", "dice"), ("dice", "dice"), ("nsd", "nsd_surfel_1mm")],
    );
}

/// A small data set: `dataset.json`, and folders `pred/` and `labels/`.
struct Folders {
    dir: Dir,
}

impl Folders {
    fn new(name: &str) -> Self {
        let dir = Dir::new(name);
        for sub in ["pred", "labels"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("create");
        }
        let dataset = r#"{"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1},
                          "numTraining": 1, "file_ending": ".nii.gz"}"#;
        std::fs::write(dir.path().join("dataset.json"), dataset).expect("dataset.json");
        Self { dir }
    }

    /// Writes a (z, y, x) volume as NIfTI (x, y, z).
    fn write(&self, relative: &str, volume: &Array3<f32>) {
        let xyz = volume.view().reversed_axes();
        let fortran = Array3::from_shape_vec(xyz.raw_dim().f(), xyz.t().iter().copied().collect()).expect("shape");
        assert_eq!(fortran, xyz);
        nifti::writer::WriterOptions::new(self.dir.path().join(relative))
            .write_nifti(&fortran)
            .expect("write NIfTI");
    }

    fn evaluate(&self, extra: &[&str]) -> crate::util::TestOutput {
        let mut args = vec![
            "evaluate",
            "--pred",
            "pred",
            "--labels",
            "labels",
            "--dataset-json",
            "dataset.json",
        ];
        args.extend_from_slice(extra);
        self.dir.meddino(&args)
    }

    fn files_in(&self, sub: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path().join(sub))
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn organ(shape: (usize, usize, usize)) -> Array3<f32> {
    let mut v = Array3::zeros(shape);
    v.slice_mut(ndarray::s![1..3, 1..4, 1..4]).fill(1.0);
    v
}

#[test]
fn scores_a_small_folder_and_writes_into_the_predictions_folder() {
    let f = Folders::new("evaluate-small");
    f.write("labels/a.nii.gz", &organ((4, 5, 6)));
    f.write("pred/a.nii.gz", &organ((4, 5, 6)));
    f.write("labels/unpredicted.nii.gz", &organ((4, 5, 6)));
    f.evaluate(&[]).assert_code(0);
    assert_eq!(
        f.files_in("pred"),
        ["a.nii.gz", "segmentation_metrics.csv", "summary.json"]
    );
    let rows = read_csv(&f.dir.path().join("pred/segmentation_metrics.csv"));
    assert_eq!(rows.len(), 1, "labels without a prediction are not cases");
    assert_eq!(rows["a.nii.gz"]["dice_class1"], 1.0);
    // A second run ignores the files the first one wrote.
    f.evaluate(&[]).assert_code(0);
}

#[test]
fn shape_mismatch_names_the_case() {
    let f = Folders::new("evaluate-shape");
    f.write("labels/a.nii.gz", &organ((4, 5, 6)));
    f.write("pred/a.nii.gz", &organ((4, 5, 7)));
    let err = f.evaluate(&["--out", "out"]).assert_code(1).stderr();
    assert!(err.contains("a.nii.gz") && err.contains("shape mismatch"), "{err}");
    assert!(!f.dir.path().join("out").exists(), "nothing written on failure");
}

#[test]
fn missing_labels_are_listed() {
    let f = Folders::new("evaluate-missing");
    f.write("labels/a.nii.gz", &organ((4, 5, 6)));
    for name in ["a", "b", "c"] {
        f.write(&format!("pred/{name}.nii.gz"), &organ((4, 5, 6)));
    }
    let err = f.evaluate(&[]).assert_code(1).stderr();
    assert!(
        err.contains("2 prediction(s) have no label file") && err.contains("b.nii.gz, c.nii.gz"),
        "{err}"
    );
}

#[test]
fn truncated_file_is_named() {
    let f = Folders::new("evaluate-truncated");
    f.write("labels/a.nii.gz", &organ((4, 5, 6)));
    f.write("pred/a.nii.gz", &organ((4, 5, 6)));
    let path = f.dir.path().join("pred/a.nii.gz");
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
    let err = f.evaluate(&[]).assert_code(1).stderr();
    assert!(err.contains("pred/a.nii.gz"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn non_label_values_are_refused() {
    let f = Folders::new("evaluate-float");
    f.write("labels/a.nii.gz", &organ((4, 5, 6)));
    f.write("pred/a.nii.gz", &(organ((4, 5, 6)) * 0.5));
    let err = f.evaluate(&[]).assert_code(1).stderr();
    assert!(
        err.contains("pred/a.nii.gz") && err.contains("not a label map"),
        "{err}"
    );
}

#[test]
fn output_under_a_regular_file_is_an_error_naming_the_path() {
    let f = Folders::new("evaluate-out-file");
    f.write("labels/a.nii.gz", &organ((4, 5, 6)));
    f.write("pred/a.nii.gz", &organ((4, 5, 6)));
    std::fs::write(f.dir.path().join("blocker"), "x").expect("blocker");
    let err = f.evaluate(&["--out", "blocker/out"]).assert_code(1).stderr();
    assert!(err.contains("blocker/out"), "{err}");
    assert_eq!(
        std::fs::read_to_string(f.dir.path().join("blocker")).expect("read"),
        "x"
    );
}

#[test]
fn bad_arguments_are_refused() {
    let f = Folders::new("evaluate-args");
    f.write("labels/a.nii.gz", &organ((4, 5, 6)));
    f.write("pred/a.nii.gz", &organ((4, 5, 6)));
    assert!(f
        .evaluate(&["--threads", "0"])
        .assert_code(2)
        .stderr()
        .contains("--threads"));
    assert!(f
        .evaluate(&["--nsd-method", "chamfer"])
        .assert_code(2)
        .stderr()
        .contains("chamfer"));
    assert!(f
        .evaluate(&["--nsd-tolerance-mm=-1"])
        .assert_code(2)
        .stderr()
        .contains("nsd-tolerance-mm"));
    assert!(f
        .evaluate(&["--nsd-tolerance-mm", "inf"])
        .assert_code(2)
        .stderr()
        .contains("nsd-tolerance-mm"));
    std::fs::write(f.dir.path().join("dataset.json"), "{").expect("corrupt");
    assert!(f.evaluate(&[]).assert_code(1).stderr().contains("dataset.json"));
}
