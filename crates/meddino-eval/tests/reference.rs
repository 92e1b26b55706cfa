//! Conformance with MONAI 1.6.1 and DeepMind surface-distance 0.1 as MedDINOv3's metrics
//! script calls them: every case and class of `metrics/expected.json` in the reference
//! folder (see `shared/reference/README.md`), read from the NIfTI files beside it.

use meddino_eval::{evaluate_case, CaseOptions, ClassScores, SurfaceMethod};
use meddino_testutil::{json_f64, reference_or_skip};
use nnunet_data::io::read_label_map;
use serde_json::Value;

/// MONAI computes in float32; the README quotes 1e-4 relative.
const TOLERANCE: f64 = 1e-4;

/// The expected value, or a panic naming it.
fn expected_value(value: &Value, what: &str) -> f64 {
    json_f64(value).unwrap_or_else(|| panic!("{what}: expected a number, null or \"inf\", got {value}"))
}

/// NaN and infinities must match exactly; finite values to `TOLERANCE` relative.
fn agrees(got: f64, expected: f64) -> bool {
    if expected.is_nan() || expected.is_infinite() {
        got.to_bits() == expected.to_bits() || (got.is_nan() && expected.is_nan())
    } else {
        (got - expected).abs() <= TOLERANCE * expected.abs().max(1.0)
    }
}

#[test]
fn every_case_matches_monai_and_surface_distance() {
    let reference = reference_or_skip!();
    let expected = reference.json("metrics/expected.json");
    let cases = expected["cases"]
        .as_object()
        .expect("expected.json: \"cases\" is an object");
    assert!(!cases.is_empty(), "expected.json lists no case");
    let folder = reference.file("metrics");

    let mut failures = Vec::new();
    let mut worst = 0.0f64;
    let mut compared = 0;
    for (case, entry) in cases {
        let file = format!("{case}.nii.gz");
        let label = read_label_map(&folder.join("labelsTr").join(&file)).unwrap_or_else(|e| panic!("{e}"));
        let prediction = read_label_map(&folder.join("preds").join(&file)).unwrap_or_else(|e| panic!("{e}"));

        // Geometry as the reference saw it: shape (z, y, x), spacing (x, y, z).
        let shape: Vec<usize> = serde_json::from_value(entry["shape_zyx"].clone()).expect("shape_zyx");
        assert_eq!(label.data.shape(), shape.as_slice(), "{case}: label shape");
        let spacing_xyz: Vec<f64> = serde_json::from_value(entry["spacing_xyz"].clone()).expect("spacing_xyz");
        let spacing_zyx: Vec<f64> = spacing_xyz.iter().rev().copied().collect();
        for (ours, theirs) in label.spacing.iter().zip(&spacing_zyx) {
            assert!(
                (ours - theirs).abs() < 1e-5 * theirs,
                "{case}: spacing {:?} vs {spacing_zyx:?}",
                label.spacing
            );
        }

        let class_entries = entry["classes"].as_object().expect("classes");
        let classes: Vec<u16> = class_entries
            .keys()
            .map(|k| k.parse().expect("class keys are labels"))
            .collect();
        let score = |options: CaseOptions| -> Vec<ClassScores> {
            evaluate_case(
                prediction.data.view(),
                label.data.view(),
                &label.spacing,
                &classes,
                &options,
            )
            .unwrap_or_else(|e| panic!("{case}: {e}"))
        };
        let monai_1mm = score(CaseOptions::new());
        let monai_2mm = score(CaseOptions::new().with_nsd_tolerance_mm(2.0));
        let surfel_1mm = score(CaseOptions::new().with_method(SurfaceMethod::Surfel));

        for (i, (class, metrics)) in class_entries.iter().enumerate() {
            let ours = [
                ("dice", monai_1mm[i].dice),
                ("hd95", monai_1mm[i].hd95),
                ("hd100", monai_1mm[i].hd100),
                ("nsd_1mm", monai_1mm[i].nsd),
                ("nsd_2mm", monai_2mm[i].nsd),
                ("nsd_surfel_1mm", surfel_1mm[i].nsd),
            ];
            for (metric, got) in ours {
                let what = format!("{case} class {class} {metric}");
                let want = expected_value(&metrics[metric], &what);
                compared += 1;
                if want.is_finite() && got.is_finite() {
                    worst = worst.max((got - want).abs() / want.abs().max(1.0));
                }
                if !agrees(got, want) {
                    failures.push(format!("{what}: got {got}, expected {want}"));
                }
            }
        }
    }
    eprintln!(
        "{compared} values compared over {} cases; worst relative error {worst:.3e}",
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {compared} values disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
