//! Conformance with nnunetv2 2.8.1 on the reference raw data set (`nnunet/` in the reference
//! folder, see `shared/reference/README.md`). Case ids come from the raw folder.

use meddino_testutil::reference_or_skip;
use nnunet_data::split::{crossval_split, read_splits, SPLIT_SEED};
use nnunet_data::DatasetJson;

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
    let raw = reference.file("nnunet/raw");
    let folder = std::fs::read_dir(&raw)
        .expect("list raw")
        .next()
        .expect("one data set")
        .expect("entry")
        .path();
    let dataset = nnunet_data::RawDataset::open(&folder).unwrap_or_else(|e| panic!("{e}"));
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
