//! `splits_final.json`: nnU-Net's cross-validation folds.
//!
//! Case ids are sorted, then split as scikit-learn's `KFold(n_splits, shuffle=True,
//! random_state=12345)` does: a legacy NumPy shuffle of `0..n`, consecutive validation blocks
//! of `n/k` (+1 for the first `n % k` folds), and both lists of every fold in ascending id
//! order. A fold number beyond the splits gets nnU-Net's random 80:20 split instead.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::random::RandomState;

/// The seed nnU-Net uses for its folds.
pub const SPLIT_SEED: u32 = 12345;

/// One fold: training and validation case ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fold {
    /// Training cases.
    pub train: Vec<String>,
    /// Validation cases.
    pub val: Vec<String>,
}

/// nnU-Net's `generate_crossval_split`: `n_splits` folds of the sorted `ids`.
///
/// # Errors
///
/// When there are fewer cases than folds (scikit-learn refuses that too) or fewer than two
/// folds.
pub fn crossval_split(ids: &[String], seed: u32, n_splits: usize) -> Result<Vec<Fold>> {
    let n = ids.len();
    if n_splits < 2 || n < n_splits {
        return Err(Error::Split(format!(
            "cannot make {n_splits} folds of {n} cases (need at least 2 folds and one case per fold)"
        )));
    }
    let mut sorted = ids.to_vec();
    sorted.sort();
    let mut order: Vec<usize> = (0..n).collect();
    RandomState::new(seed).shuffle(&mut order);
    let mut folds = Vec::with_capacity(n_splits);
    let mut start = 0;
    for fold in 0..n_splits {
        let size = n / n_splits + usize::from(fold < n % n_splits);
        let mut in_val = vec![false; n];
        order[start..start + size].iter().for_each(|&i| in_val[i] = true);
        start += size;
        let pick = |val: bool| {
            sorted
                .iter()
                .zip(&in_val)
                .filter(|(_, &v)| v == val)
                .map(|(id, _)| id.clone())
                .collect()
        };
        folds.push(Fold {
            train: pick(false),
            val: pick(true),
        });
    }
    Ok(folds)
}

/// nnU-Net's fallback for a fold number beyond the splits file: `RandomState(12345 + fold)`
/// picks `⌊0.8·n⌋` training cases without replacement (kept in draw order); validation is
/// the sorted rest.
pub fn random_split(ids: &[String], fold: u32) -> Fold {
    let mut sorted = ids.to_vec();
    sorted.sort();
    let n = sorted.len();
    // choice(n, k, replace=False) in legacy NumPy: the first k of a shuffled arange(n).
    let mut order: Vec<usize> = (0..n).collect();
    RandomState::new(SPLIT_SEED.wrapping_add(fold)).shuffle(&mut order);
    let k = (0.8 * n as f64) as usize;
    let train: Vec<String> = order[..k].iter().map(|&i| sorted[i].clone()).collect();
    let mut val: Vec<String> = order[k..].iter().map(|&i| sorted[i].clone()).collect();
    val.sort();
    Fold { train, val }
}

/// Reads `splits_final.json`.
///
/// # Errors
///
/// When the file cannot be read or is not a list of `{"train": [...], "val": [...]}`.
pub fn read_splits(path: &Path) -> Result<Vec<Fold>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: format!("expected a list of {{\"train\": [...], \"val\": [...]}} folds: {e}"),
    })
}

/// Writes `splits_final.json` atomically, indented as nnU-Net writes it.
///
/// # Errors
///
/// When the file cannot be written.
pub fn write_splits(path: &Path, folds: &[Fold]) -> Result<()> {
    write_atomic(path, |out: &mut dyn Write| {
        let mut serializer =
            serde_json::Serializer::with_formatter(&mut *out, serde_json::ser::PrettyFormatter::with_indent(b"    "));
        folds.serialize(&mut serializer).map_err(std::io::Error::other)?;
        writeln!(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("case_{i:03}")).collect()
    }

    #[test]
    fn twelve_cases_fold_zero_matches_numpy_and_sklearn() {
        // nnunet-reference.md §5: shuffle [8,0,3,7,11,10,6,9,4,1,5,2], fold 0 val = ids 0, 3, 8.
        let folds = crossval_split(&ids(12), SPLIT_SEED, 5).expect("split");
        assert_eq!(folds[0].val, ["case_000", "case_003", "case_008"]);
        let sizes: Vec<usize> = folds.iter().map(|f| f.val.len()).collect();
        assert_eq!(sizes, [3, 3, 2, 2, 2]);
        for fold in &folds {
            assert_eq!(fold.train.len() + fold.val.len(), 12);
            assert!(fold.train.windows(2).all(|w| w[0] < w[1]) && fold.val.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn every_case_is_validated_exactly_once() {
        let folds = crossval_split(&ids(37), SPLIT_SEED, 5).expect("split");
        let mut seen: Vec<String> = folds.iter().flat_map(|f| f.val.clone()).collect();
        seen.sort();
        assert_eq!(seen, ids(37));
    }

    #[test]
    fn too_few_cases_is_an_error() {
        assert!(crossval_split(&ids(3), SPLIT_SEED, 5).is_err());
    }

    #[test]
    fn random_split_is_eighty_twenty() {
        let fold = random_split(&ids(10), 7);
        assert_eq!((fold.train.len(), fold.val.len()), (8, 2));
        assert!(fold.val.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn splits_round_trip_through_json() {
        let path = std::env::temp_dir().join(format!("nnunet-data-splits-{}.json", std::process::id()));
        let folds = crossval_split(&ids(6), SPLIT_SEED, 5).expect("split");
        write_splits(&path, &folds).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("[\n    {\n        \"train\": ["), "{text}");
        assert_eq!(read_splits(&path).expect("read"), folds);
        let _ = std::fs::remove_file(&path);
    }
}
