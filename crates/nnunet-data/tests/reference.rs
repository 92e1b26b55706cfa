//! Conformance with nnunetv2 2.8.1 on the reference raw data set (`nnunet/` in the reference
//! folder, see `shared/reference/README.md`). Case ids come from the raw folder.

use meddino_testutil::reference_or_skip;
use nnunet_data::split::{crossval_split, read_splits, SPLIT_SEED};
use nnunet_data::DatasetJson;

/// The (single) raw data set of the reference folder and its folder name.
fn phantom(reference: &meddino_testutil::ReferenceDir) -> (nnunet_data::RawDataset, String) {
    let raw = reference.file("nnunet/raw");
    let folder = std::fs::read_dir(&raw)
        .expect("list raw")
        .next()
        .expect("one data set")
        .expect("entry")
        .path();
    let name = folder
        .file_name()
        .and_then(|n| n.to_str())
        .expect("folder name")
        .to_string();
    (
        nnunet_data::RawDataset::open(&folder).unwrap_or_else(|e| panic!("{e}")),
        name,
    )
}

#[test]
fn five_fold_split_equals_nnunets() {
    let reference = reference_or_skip!();
    let raw = reference.file("nnunet/raw");
    let datasets: Vec<_> = std::fs::read_dir(&raw)
        .expect("list raw")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(!datasets.is_empty(), "no data set in {}", raw.display());
    for dataset in datasets {
        let json = DatasetJson::read(&dataset.join("dataset.json")).unwrap_or_else(|e| panic!("{e}"));
        let ending = json.file_ending.clone().unwrap_or_else(|| ".nii.gz".into());
        let ids: Vec<String> = std::fs::read_dir(dataset.join("labelsTr"))
            .expect("labelsTr")
            .filter_map(|e| {
                e.expect("entry")
                    .file_name()
                    .to_str()?
                    .strip_suffix(&ending)
                    .map(str::to_string)
            })
            .collect();
        let expected = read_splits(&reference.file("nnunet/expected/splits_final.json")).expect("splits_final.json");
        let ours = crossval_split(&ids, SPLIT_SEED, expected.len()).expect("split");
        assert_eq!(ours, expected, "{}", dataset.display());
    }
}

#[test]
fn fingerprint_equals_nnunets() {
    let reference = reference_or_skip!();
    let (dataset, _) = phantom(&reference);
    let ours = nnunet_data::Fingerprint::extract(&dataset).unwrap_or_else(|e| panic!("{e}"));
    let expected: nnunet_data::Fingerprint =
        serde_json::from_value(reference.json("nnunet/expected/dataset_fingerprint.json")).expect("fingerprint layout");
    assert_eq!(ours.shapes_after_crop, expected.shapes_after_crop, "shapes after crop");
    assert_eq!(ours.spacings, expected.spacings, "spacings");
    assert!((ours.median_relative_size_after_cropping - expected.median_relative_size_after_cropping).abs() < 1e-12);
    for (channel, theirs) in &expected.foreground_intensity_properties_per_channel {
        let mine = ours
            .foreground_intensity_properties_per_channel
            .get(channel)
            .expect("channel");
        let pairs = [
            ("max", mine.max, theirs.max),
            ("mean", mine.mean, theirs.mean),
            ("median", mine.median, theirs.median),
            ("min", mine.min, theirs.min),
            ("percentile_00_5", mine.percentile_00_5, theirs.percentile_00_5),
            ("percentile_99_5", mine.percentile_99_5, theirs.percentile_99_5),
            ("std", mine.std, theirs.std),
        ];
        for (key, a, b) in pairs {
            eprintln!("channel {channel} {key}: ours {a}, nnU-Net {b}");
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "channel {channel} {key}: ours {a}, nnU-Net {b}"
            );
        }
    }
}

#[test]
fn plans_equal_nnunets() {
    let reference = reference_or_skip!();
    let (dataset, name) = phantom(&reference);
    // Plan from nnU-Net's own fingerprint, so this test checks the planner alone.
    let fingerprint: nnunet_data::Fingerprint =
        serde_json::from_value(reference.json("nnunet/expected/dataset_fingerprint.json")).expect("fingerprint");
    let mut plans = nnunet_data::Plans::plan(&name, &dataset.dataset_json, &fingerprint);
    let expected = reference.json("nnunet/expected/nnUNetPlans.json");
    for key in [
        "dataset_name",
        "plans_name",
        "original_median_shape_after_transp",
        "image_reader_writer",
        "transpose_forward",
        "transpose_backward",
        "label_manager",
    ] {
        assert_eq!(plans.value[key], expected[key], "{key}");
    }
    let close = |a: &serde_json::Value, b: &serde_json::Value, what: &str| {
        let (a, b) = (a.as_array().expect("list"), b.as_array().expect("list"));
        assert_eq!(a.len(), b.len(), "{what}");
        for (x, y) in a.iter().zip(b) {
            let (x, y) = (x.as_f64().expect("number"), y.as_f64().expect("number"));
            assert!((x - y).abs() <= 1e-9 * y.abs().max(1.0), "{what}: {a:?} vs {b:?}");
        }
    };
    close(
        &plans.value["original_median_spacing_after_transp"],
        &expected["original_median_spacing_after_transp"],
        "median spacing",
    );
    let names = plans.configuration_names();
    let expected_names: Vec<String> = expected["configurations"]
        .as_object()
        .expect("configurations")
        .keys()
        .cloned()
        .collect();
    assert_eq!(names, expected_names);
    for config in &names {
        let (ours, theirs) = (
            &plans.value["configurations"][config],
            &expected["configurations"][config],
        );
        for key in theirs.as_object().expect("config").keys() {
            match key.as_str() {
                "spacing" | "median_image_size_in_voxels" => {
                    close(&ours[key], &theirs[key], &format!("{config}.{key}"))
                }
                _ => assert_eq!(ours[key], theirs[key], "{config}.{key}"),
            }
        }
    }
    // The derived 2d_896 entry, with its patch size from the reference's config.
    let derived = reference.json("nnunet/expected/2d_896/config.json");
    let patch = derived["patch_size"][0].as_u64().expect("patch") as usize;
    let added = plans.add_derived_2d(patch).expect("derive");
    let ours = &plans.value["configurations"][&added];
    for key in derived.as_object().expect("object").keys() {
        if key == "spacing" {
            close(&ours[key], &derived[key], "2d_896 spacing");
        } else {
            assert_eq!(ours[key], derived[key], "2d_896 {key}");
        }
    }
    // Inheritance resolves to the parent's network with the child's patch.
    let resolved = plans.configuration(&added).expect("resolve");
    assert_eq!(
        resolved["architecture"],
        plans.value["configurations"]["2d"]["architecture"]
    );
    assert_eq!(resolved["patch_size"], derived["patch_size"]);
}

#[test]
fn preprocessed_2d_cases_equal_nnunets() {
    let reference = reference_or_skip!();
    let (dataset, _) = phantom(&reference);
    let plans = nnunet_data::Plans::read(&reference.file("nnunet/expected/nnUNetPlans.json")).expect("plans");
    let configuration = plans.configuration("2d").expect("2d");
    let plan = nnunet_data::preprocess::PreprocessingPlan::from_plans(&plans.value, &configuration).expect("plan");
    let cases = reference.json("nnunet/expected/2d/cases.json");
    let mut worst_data = 0f64;
    for case in &dataset.cases {
        let images = nnunet_data::io::read_images(&case.images).unwrap_or_else(|e| panic!("{e}"));
        let label = nnunet_data::io::read_images(std::slice::from_ref(&case.label)).unwrap_or_else(|e| panic!("{e}"));
        let ours =
            nnunet_data::preprocess::preprocess_case(&images, Some(&label), &plan).unwrap_or_else(|e| panic!("{e}"));
        let expected = reference.npz(format!("nnunet/expected/2d/{}.npz", case.id));
        let (data, seg) = (expected.get("data"), expected.get("seg"));
        assert_eq!(ours.data.shape(), data.shape(), "{}: data shape", case.id);
        let max_abs = ours
            .data
            .iter()
            .zip(data.iter())
            .map(|(&a, &b)| (f64::from(a) - b).abs())
            .fold(0.0, f64::max);
        worst_data = worst_data.max(max_abs);
        let differing: Vec<_> = ours
            .seg
            .indexed_iter()
            .zip(seg.iter())
            .filter(|((_, &a), &b)| f64::from(a) != b)
            .map(|((index, &a), &b)| (index, a, b))
            .collect();
        eprintln!(
            "{}: data max |Δ| {max_abs:.2e}, seg differs at {} of {} voxels",
            case.id,
            differing.len(),
            seg.len()
        );
        assert!(max_abs <= 1e-3, "{}: data max |Δ| {max_abs}", case.id);
        // Bit-equal: the segmentation resampling reproduces nnU-Net's arithmetic and its
        // tie-break (see `preprocess::resample`), so no voxel may differ.
        assert!(
            differing.is_empty(),
            "{}: seg differs at {} voxels, first (index, ours, nnU-Net): {:?}",
            case.id,
            differing.len(),
            &differing[..differing.len().min(8)]
        );
        let properties = serde_json::to_value(&ours.properties).expect("json");
        let theirs = &cases[&case.id]["properties"];
        for key in [
            "shape_before_cropping",
            "bbox_used_for_cropping",
            "shape_after_cropping_and_before_resampling",
            "spacing",
        ] {
            assert_eq!(properties[key], theirs[key], "{}: {key}", case.id);
        }
        for key in ["spacing", "origin", "direction"] {
            let (a, b) = (&properties["sitk_stuff"][key], &theirs["sitk_stuff"][key]);
            let close = a.as_array().zip(b.as_array()).is_some_and(|(a, b)| {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|(x, y)| (x.as_f64().unwrap_or(f64::NAN) - y.as_f64().unwrap_or(0.0)).abs() < 1e-6)
            });
            assert!(close, "{}: sitk_stuff.{key} {a} vs {b}", case.id);
        }
    }
    eprintln!("worst data max |Δ| over cases: {worst_data:.2e}");
}

#[test]
fn preprocessed_2d_896_cases_equal_nnunets() {
    let reference = reference_or_skip!();
    let (dataset, _) = phantom(&reference);
    let mut plans = nnunet_data::Plans::read(&reference.file("nnunet/expected/nnUNetPlans.json")).expect("plans");
    let derived = reference.json("nnunet/expected/2d_896/config.json");
    let name = plans
        .add_derived_2d(derived["patch_size"][0].as_u64().expect("patch") as usize)
        .expect("derive");
    let configuration = plans.configuration(&name).expect("resolve");
    let plan = nnunet_data::preprocess::PreprocessingPlan::from_plans(&plans.value, &configuration).expect("plan");
    let all_cases = reference.json("nnunet/expected/2d_896/all_cases.json");
    let sliced = reference.list("nnunet/expected/2d_896", "_slices.npz");
    for case in &dataset.cases {
        let Some(expected) = all_cases.get(&case.id) else {
            continue;
        };
        let images = nnunet_data::io::read_images(&case.images).unwrap_or_else(|e| panic!("{e}"));
        let label = nnunet_data::io::read_images(std::slice::from_ref(&case.label)).unwrap_or_else(|e| panic!("{e}"));
        let ours =
            nnunet_data::preprocess::preprocess_case(&images, Some(&label), &plan).unwrap_or_else(|e| panic!("{e}"));
        let shape: Vec<usize> = serde_json::from_value(expected["shape"].clone()).expect("shape");
        assert_eq!(ours.data.shape(), shape.as_slice(), "{}: shape", case.id);
        let n = ours.data.len() as f64;
        let mean = ours.data.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let std = (ours.data.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n).sqrt();
        for (what, a, b) in [("mean", mean, &expected["mean"]), ("std", std, &expected["std"])] {
            let b = b.as_f64().expect("number");
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "{}: {what} {a} vs {b}",
                case.id
            );
        }
        // Every case's label counts are exact (the segmentation is bit-equal, see the 2d test).
        let mut counts = std::collections::BTreeMap::<i16, u64>::new();
        ours.seg.iter().for_each(|&v| *counts.entry(v).or_default() += 1);
        let theirs: std::collections::BTreeMap<i16, u64> = expected["seg_counts"]
            .as_object()
            .expect("seg_counts")
            .iter()
            .map(|(label, count)| (label.parse().expect("label"), count.as_u64().expect("count")))
            .collect();
        assert_eq!(counts, theirs, "{}: seg_counts", case.id);
        eprintln!(
            "{}: shape {:?}, mean {mean:.6}, std {std:.6}",
            case.id,
            ours.data.shape()
        );
        // Where nnU-Net's slices were stored, compare them voxel by voxel.
        if let Some(file) = sliced
            .iter()
            .find(|f| f.to_string_lossy().ends_with(&format!("{}_slices.npz", case.id)))
        {
            let slices = reference.npz(file);
            let indices: Vec<usize> = slices.get("slice_index").iter().map(|&v| v as usize).collect();
            let (data, seg) = (slices.get("data"), slices.get("seg"));
            for (k, &z) in indices.iter().enumerate() {
                let ours_slice = ours.data.index_axis(ndarray::Axis(1), z);
                let theirs_slice = data.index_axis(ndarray::Axis(1), k);
                let max_abs = ours_slice
                    .iter()
                    .zip(theirs_slice.iter())
                    .map(|(&a, &b)| (f64::from(a) - b).abs())
                    .fold(0.0, f64::max);
                let seg_ours = ours.seg.index_axis(ndarray::Axis(1), z);
                let seg_theirs = seg.index_axis(ndarray::Axis(1), k);
                let differing = seg_ours
                    .iter()
                    .zip(seg_theirs.iter())
                    .filter(|(&a, &b)| f64::from(a) != b)
                    .count();
                eprintln!(
                    "{} slice {z}: data max |Δ| {max_abs:.2e}, seg differs at {differing} of {} voxels",
                    case.id,
                    seg_theirs.len()
                );
                assert!(max_abs <= 1e-3, "{} slice {z}: data {max_abs}", case.id);
                assert_eq!(differing, 0, "{} slice {z}: seg voxels differing", case.id);
            }
        }
    }
}
