//! An nnU-Net raw data set: `dataset.json`, `imagesTr/` and `labelsTr/` (or the explicit
//! `"dataset"` mapping in dataset.json), and its cases.
//!
//! Case ids are the image file names ending in the file ending, with the ending and the
//! 5-character channel suffix (`_0000`) removed, unique and sorted; a case's channel files
//! are the names matching `{id}_DDDD{ending}` exactly, in name order; its label is
//! `labelsTr/{id}{ending}`.

use std::path::{Path, PathBuf};

use crate::dataset::DatasetJson;
use crate::error::{Error, Result};

/// One training case: its id, channel files (in channel order) and label file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawCase {
    /// The case id (`case_001`).
    pub id: String,
    /// Channel files `imagesTr/{id}_0000{ending}`, …
    pub images: Vec<PathBuf>,
    /// `labelsTr/{id}{ending}`.
    pub label: PathBuf,
}

/// A raw data set folder.
#[derive(Debug, Clone)]
pub struct RawDataset {
    /// The folder (`DatasetXXX_Name`).
    pub folder: PathBuf,
    /// Its dataset.json.
    pub dataset_json: DatasetJson,
    /// The training cases, sorted by id.
    pub cases: Vec<RawCase>,
}

/// `{id}_DDDD{ending}` → `id`, for a name that has that form.
fn case_id_of<'a>(name: &'a str, ending: &str) -> Option<&'a str> {
    let stem = name.strip_suffix(ending)?;
    let (id, channel) = stem.rsplit_once('_')?;
    (channel.len() == 4 && channel.bytes().all(|b| b.is_ascii_digit())).then_some(id)
}

impl RawDataset {
    /// Opens a raw data set folder and lists its cases.
    ///
    /// # Errors
    ///
    /// When dataset.json is missing or malformed, `imagesTr` cannot be listed, or a mapping
    /// entry of `"dataset"` is malformed; errors name the file or key.
    pub fn open(folder: &Path) -> Result<Self> {
        let json_path = folder.join("dataset.json");
        let dataset_json = DatasetJson::read(&json_path)?;
        let ending = dataset_json.file_ending.clone().ok_or_else(|| Error::Json {
            path: json_path.clone(),
            message: "missing key \"file_ending\"".into(),
        })?;
        let cases = match dataset_json.raw.get("dataset") {
            Some(mapping) => Self::cases_from_mapping(folder, &json_path, mapping)?,
            None => Self::cases_from_folders(folder, &ending)?,
        };
        Ok(Self {
            folder: folder.to_path_buf(),
            dataset_json,
            cases,
        })
    }

    fn cases_from_folders(folder: &Path, ending: &str) -> Result<Vec<RawCase>> {
        let images = folder.join("imagesTr");
        let listing = std::fs::read_dir(&images).map_err(|source| Error::Io {
            path: images.clone(),
            source,
        })?;
        let mut names: Vec<String> = listing
            .filter_map(|entry| entry.ok().and_then(|e| e.file_name().into_string().ok()))
            .filter(|name| name.ends_with(ending))
            .collect();
        names.sort();
        let mut ids: Vec<&str> = names.iter().filter_map(|n| case_id_of(n, ending)).collect();
        ids.dedup();
        Ok(ids
            .iter()
            .map(|id| RawCase {
                id: (*id).to_string(),
                images: names
                    .iter()
                    .filter(|n| case_id_of(n, ending) == Some(id))
                    .map(|n| images.join(n))
                    .collect(),
                label: folder.join("labelsTr").join(format!("{id}{ending}")),
            })
            .collect())
    }

    fn cases_from_mapping(folder: &Path, json_path: &Path, mapping: &serde_json::Value) -> Result<Vec<RawCase>> {
        let fail = |message: String| Error::Json {
            path: json_path.to_path_buf(),
            message,
        };
        let object = mapping
            .as_object()
            .ok_or_else(|| fail("\"dataset\" must map case ids to {images, label}".into()))?;
        let path = |v: &serde_json::Value, key: &str| -> Result<PathBuf> {
            let text = v
                .as_str()
                .ok_or_else(|| fail(format!("dataset.{key}: expected a path string, got {v}")))?;
            Ok(folder.join(expand_env(text)))
        };
        let mut cases = object
            .iter()
            .map(|(id, entry)| {
                let images = entry["images"]
                    .as_array()
                    .ok_or_else(|| fail(format!("dataset.{id}.images: expected a list of paths")))?
                    .iter()
                    .map(|v| path(v, &format!("{id}.images")))
                    .collect::<Result<_>>()?;
                Ok(RawCase {
                    id: id.clone(),
                    images,
                    label: path(&entry["label"], &format!("{id}.label"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        cases.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(cases)
    }
}

/// `$VAR` and `${VAR}` replaced by their values (unset variables stay as written), as
/// Python's `os.path.expandvars`.
fn expand_env(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, tail) = if let Some(inner) = after.strip_prefix('{') {
            match inner.find('}') {
                Some(end) => (&inner[..end], &inner[end + 1..]),
                None => ("", after),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        match (name.is_empty(), std::env::var(name)) {
            (false, Ok(value)) => out.push_str(&value),
            _ => out.push_str(&rest[at..at + 1 + (after.len() - tail.len())]),
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

impl RawDataset {
    /// nnU-Net's `verify_dataset_integrity`: every problem found, one line each (empty when
    /// the data set is sound). Reads every image and label.
    ///
    /// Checks: `numTraining` equals the cases found; each case has its label file; the
    /// declarations and each case pass
    /// [`Self::declaration_problems`] and [`Self::case_problems`].
    pub fn verify(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(n) = self.dataset_json.num_training {
            if n as usize != self.cases.len() {
                problems.push(format!(
                    "dataset.json: numTraining is {n} but {} cases were found",
                    self.cases.len()
                ));
            }
        }
        problems.extend(self.declaration_problems());
        for case in &self.cases {
            if !case.label.is_file() {
                problems.push(format!("{}: missing label {}", case.id, case.label.display()));
                continue;
            }
            let read = crate::io::read_images(&case.images)
                .and_then(|images| Ok((images, crate::io::read_images(std::slice::from_ref(&case.label))?)));
            match read {
                Ok((images, label)) => problems.extend(self.case_problems(case, &images, &label)),
                Err(e) => problems.push(format!("{}: {e}", case.id)),
            }
        }
        problems
    }

    /// The plain label values dataset.json declares, sorted (regions excluded).
    fn declared_labels(&self) -> Vec<u32> {
        let mut declared: Vec<u32> = self
            .dataset_json
            .labels
            .iter()
            .filter_map(|e| match &e.value {
                crate::dataset::LabelValue::Label(v) => Some(*v),
                crate::dataset::LabelValue::Region(_) => None,
            })
            .collect();
        declared.sort_unstable();
        declared
    }

    /// Problems of the data set as a whole: dataset.json's labels must be consecutive from 0,
    /// and every label file in `labelsTr` must belong to a case with images.
    pub fn declaration_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let declared = self.declared_labels();
        if declared.iter().enumerate().any(|(i, &v)| v != i as u32) {
            problems.push(format!(
                "dataset.json: labels must be consecutive from 0, got {declared:?}"
            ));
        }
        let ending = self.dataset_json.file_ending.as_deref().unwrap_or(".nii.gz");
        let mut orphans: Vec<String> = std::fs::read_dir(self.folder.join("labelsTr"))
            .into_iter()
            .flatten()
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| {
                name.strip_suffix(ending)
                    .is_some_and(|id| !self.cases.iter().any(|case| case.id == id))
            })
            .map(|name| format!("labelsTr/{name}: no image of this case in imagesTr"))
            .collect();
        orphans.sort();
        problems.extend(orphans);
        problems
    }

    /// Problems of one case as read: the image has one channel per `channel_names` entry, no
    /// NaN or infinity; the label has the image's shape and spacing and only values that
    /// dataset.json declares. Each line starts with the case id.
    pub fn case_problems(&self, case: &RawCase, images: &crate::io::Volume, label: &crate::io::Volume) -> Vec<String> {
        let mut problems = Vec::new();
        let channels = self.dataset_json.channel_names.len();
        if images.data.dim().0 != channels {
            problems.push(format!(
                "{}: {} image channel(s), dataset.json declares {channels}",
                case.id,
                images.data.dim().0
            ));
        }
        if images.data.iter().any(|v| !v.is_finite()) {
            problems.push(format!("{}: image holds NaN or infinite values", case.id));
        }
        if label.data.shape()[1..] != images.data.shape()[1..]
            || label
                .spacing
                .iter()
                .zip(&images.spacing)
                .any(|(a, b)| (a - b).abs() > 1e-5 * b.abs())
        {
            problems.push(format!(
                "{}: label shape {:?} spacing {:?} differs from the image's {:?} {:?}",
                case.id,
                &label.data.shape()[1..],
                label.spacing,
                &images.data.shape()[1..],
                images.spacing
            ));
        }
        // One pass over the voxels, no copy: fingerprinting runs this on every case.
        let declared = self.declared_labels();
        let undeclared: Vec<i64> = label
            .data
            .iter()
            .map(|&v| v as i64)
            .filter(|&v| u32::try_from(v).map_or(true, |v| declared.binary_search(&v).is_err()))
            .collect::<std::collections::BTreeSet<i64>>()
            .into_iter()
            .collect();
        if !undeclared.is_empty() {
            problems.push(format!(
                "{}: label values {undeclared:?} are not declared in dataset.json",
                case.id
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_ids_need_a_four_digit_channel() {
        assert_eq!(case_id_of("liver_3_0000.nii.gz", ".nii.gz"), Some("liver_3"));
        assert_eq!(case_id_of("liver_3.nii.gz", ".nii.gz"), None);
        assert_eq!(case_id_of("liver_000a.nii.gz", ".nii.gz"), None);
        assert_eq!(case_id_of("liver_0000.nii", ".nii.gz"), None);
    }

    #[test]
    fn environment_variables_expand() {
        std::env::set_var("NNUNET_DATA_TEST_ROOT", "/data");
        assert_eq!(
            expand_env("$NNUNET_DATA_TEST_ROOT/a/${NNUNET_DATA_TEST_ROOT}"),
            "/data/a//data"
        );
        assert_eq!(
            expand_env("$NNUNET_DATA_UNSET_VARIABLE/x"),
            "$NNUNET_DATA_UNSET_VARIABLE/x"
        );
        assert_eq!(expand_env("cost $5"), "cost $5");
    }
}
