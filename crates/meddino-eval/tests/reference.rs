//! Conformance with MONAI 1.6.1 and DeepMind surface-distance 0.1 as MedDINOv3's metrics
//! script calls them: every case and class of `metrics/expected.json` in the reference
//! folder (see `shared/reference/README.md`), read from the NIfTI files beside it.
//!
//! The reference was computed with the spacing `expected.json` records (float64 values that
//! the files store rounded to float32), so the cases are scored with that spacing: with it,
//! our MONAI numbers are MONAI's float32 numbers bit for bit.

use meddino_eval::{evaluate_case, CaseOptions, ClassScores, SurfaceMethod};
use meddino_testutil::{json_f64, reference_or_skip};
use nnunet_data::io::read_label_map;
use serde_json::Value;

/// MONAI's results are float32 and so are ours: at most one float32 step apart (two equally
/// near boundary voxels can give float64 distances a last bit apart, which a float32
/// rounding can carry). Measured on the shipped data: every value bit-equal.
const MONAI_TOLERANCE: f64 = f32::EPSILON as f64;
/// Dice is a float64 ratio of the same two counts on both sides.
const DICE_TOLERANCE: f64 = 4.0 * f64::EPSILON;
/// DeepMind's surface-element areas are float64 sums in another order: a few float64 steps
/// per element summed (10⁷ elements · 2⁻⁵² ≈ 2e-9). Measured on the shipped data: 1.1e-13.
const SURFEL_TOLERANCE: f64 = 1e-8;
/// The spacing the reference used, rounded to float32 as the NIfTI header stores it: half a
/// float32 step, relative.
const SPACING_TOLERANCE: f64 = f32::EPSILON as f64 / 2.0;

/// The expected value, or a panic naming it.
fn expected_value(value: &Value, what: &str) -> f64 {
    json_f64(value).unwrap_or_else(|| panic!("{what}: expected a number, null or \"inf\", got {value}"))
}

/// NaN and infinities must match exactly; finite values to `tolerance` relative.
fn agrees(got: f64, expected: f64, tolerance: f64) -> bool {
    if expected.is_nan() || expected.is_infinite() {
        got.to_bits() == expected.to_bits() || (got.is_nan() && expected.is_nan())
    } else {
        (got - expected).abs() <= tolerance * expected.abs().max(f64::MIN_POSITIVE)
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
    // Worst relative error per metric, and how many values were bit-equal.
    let mut worst = std::collections::BTreeMap::<&str, f64>::new();
    let (mut compared, mut identical) = (0, 0);
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
                (ours - theirs).abs() <= SPACING_TOLERANCE * theirs,
                "{case}: spacing {:?} read, the reference used {spacing_zyx:?}",
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
                &spacing_zyx,
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
                ("dice", monai_1mm[i].dice, DICE_TOLERANCE),
                ("hd95", monai_1mm[i].hd95, MONAI_TOLERANCE),
                ("hd100", monai_1mm[i].hd100, MONAI_TOLERANCE),
                ("nsd_1mm", monai_1mm[i].nsd, MONAI_TOLERANCE),
                ("nsd_2mm", monai_2mm[i].nsd, MONAI_TOLERANCE),
                ("nsd_surfel_1mm", surfel_1mm[i].nsd, SURFEL_TOLERANCE),
            ];
            for (metric, got, tolerance) in ours {
                let what = format!("{case} class {class} {metric}");
                let want = expected_value(&metrics[metric], &what);
                compared += 1;
                identical += usize::from(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()));
                let error = if want.is_finite() && got.is_finite() && want != 0.0 {
                    (got - want).abs() / want.abs()
                } else {
                    (got - want).abs()
                };
                let entry = worst.entry(metric).or_insert(0.0);
                if !error.is_nan() {
                    *entry = entry.max(error);
                }
                if !agrees(got, want, tolerance) {
                    failures.push(format!(
                        "{what}: got {got}, expected {want} (tolerance {tolerance:.1e})"
                    ));
                }
            }
        }
    }
    eprintln!(
        "{compared} values compared over {} cases, {identical} bit-equal; worst relative error: {}",
        cases.len(),
        worst
            .iter()
            .map(|(metric, error)| format!("{metric} {error:.1e}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(
        failures.is_empty(),
        "{} of {compared} values disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
