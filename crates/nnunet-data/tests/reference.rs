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
