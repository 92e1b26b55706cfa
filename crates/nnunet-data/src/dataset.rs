//! `dataset.json`, the description of an nnU-Net raw data set.
//!
//! nnU-Net's keys: `channel_names` (or the legacy `modality`), `labels` (name → value, or
//! name → list of values for a region), `numTraining`, `file_ending`, and optionally
//! `regions_class_order` and `dataset` (an explicit case → files mapping). A label named
//! `ignore` marks voxels excluded from training and evaluation.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// The value of one entry of `labels`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelValue {
    /// A single label value.
    Label(u32),
    /// A region: the union of several label values (region-based training).
    Region(Vec<u32>),
}

/// One entry of `labels`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelEntry {
    /// The label's name (the key in `labels`).
    pub name: String,
    /// Its value or region.
    pub value: LabelValue,
}

/// A parsed `dataset.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetJson {
    /// `channel_names` (or `modality`): channel index → name.
    pub channel_names: BTreeMap<String, String>,
    /// `labels`, ordered by value (regions by their first value).
    pub labels: Vec<LabelEntry>,
    /// `numTraining`, when present.
    pub num_training: Option<u64>,
    /// `file_ending` (e.g. `.nii.gz`), when present.
    pub file_ending: Option<String>,
    /// The whole document, for keys this struct does not model.
    pub raw: Value,
}

impl DatasetJson {
    /// Reads and checks `dataset.json`.
    ///
    /// # Errors
    ///
    /// When the file cannot be read, is not JSON, or `labels` is missing or malformed; the
    /// error names the file and the key.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses the text of `dataset.json`; `path` names it in errors.
    ///
    /// # Errors
    ///
    /// As [`DatasetJson::read`].
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let fail = |message: String| Error::Json {
            path: path.to_path_buf(),
            message,
        };
        let raw: Value = serde_json::from_str(text).map_err(|e| fail(format!("not valid JSON: {e}")))?;
        let object = raw.as_object().ok_or_else(|| fail("expected a JSON object".into()))?;

        let labels = object
            .get("labels")
            .ok_or_else(|| fail("missing key \"labels\"".into()))?;
        let labels = labels
            .as_object()
            .ok_or_else(|| fail("\"labels\" must be an object of name -> value".into()))?;
        let as_label = |name: &str, v: &Value| -> Result<u32> {
            v.as_u64().and_then(|v| u32::try_from(v).ok()).ok_or_else(|| {
                fail(format!(
                    "labels.{name}: expected a non-negative integer or a list of them, got {v}"
                ))
            })
        };
        let mut entries = labels
            .iter()
            .map(|(name, value)| {
                let value = match value {
                    Value::Array(values) => {
                        LabelValue::Region(values.iter().map(|v| as_label(name, v)).collect::<Result<_>>()?)
                    }
                    single => LabelValue::Label(as_label(name, single)?),
                };
                Ok(LabelEntry {
                    name: name.clone(),
                    value,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        entries.sort_by_key(|e| match &e.value {
            LabelValue::Label(v) => (*v, 0),
            LabelValue::Region(vs) => (vs.first().copied().unwrap_or(u32::MAX), 1),
        });

        let channels = object.get("channel_names").or_else(|| object.get("modality"));
        let channel_names = match channels {
            None => BTreeMap::new(),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| match v.as_str() {
                    Some(name) => Ok((k.clone(), name.to_string())),
                    None => Err(fail(format!("channel_names.{k}: expected a string, got {v}"))),
                })
                .collect::<Result<_>>()?,
            Some(other) => return Err(fail(format!("\"channel_names\" must be an object, got {other}"))),
        };
        let num_training = match object.get("numTraining") {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .ok_or_else(|| fail(format!("\"numTraining\" must be a non-negative integer, got {v}")))?,
            ),
        };
        let file_ending = match object.get("file_ending") {
            None => None,
            Some(v) => Some(
                v.as_str()
                    .ok_or_else(|| fail(format!("\"file_ending\" must be a string, got {v}")))?
                    .to_string(),
            ),
        };
        Ok(Self {
            channel_names,
            labels: entries,
            num_training,
            file_ending,
            raw,
        })
    }

    /// The value of the `ignore` label, if the data set has one.
    pub fn ignore_label(&self) -> Option<u32> {
        self.labels
            .iter()
            .find(|e| e.name == "ignore")
            .and_then(|e| match e.value {
                LabelValue::Label(v) => Some(v),
                LabelValue::Region(_) => None,
            })
    }

    /// The foreground entries: all but `background` (value 0) and `ignore`, ordered by value.
    pub fn foreground(&self) -> impl Iterator<Item = &LabelEntry> {
        self.labels
            .iter()
            .filter(|e| e.name != "ignore" && e.value != LabelValue::Label(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DatasetJson> {
        DatasetJson::parse(text, Path::new("dataset.json"))
    }

    #[test]
    fn parses_labels_regions_and_ignore() {
        let d = parse(
            r#"{"channel_names": {"0": "CT"}, "labels": {"background": 0, "spleen": 3, "liver": 1,
                "tumor_region": [2, 3], "ignore": 4}, "numTraining": 12, "file_ending": ".nii.gz"}"#,
        )
        .expect("valid");
        let names: Vec<&str> = d.labels.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["background", "liver", "tumor_region", "spleen", "ignore"]);
        assert_eq!(d.ignore_label(), Some(4));
        let foreground: Vec<&str> = d.foreground().map(|e| e.name.as_str()).collect();
        assert_eq!(foreground, ["liver", "tumor_region", "spleen"]);
        assert_eq!(d.num_training, Some(12));
        assert_eq!(d.file_ending.as_deref(), Some(".nii.gz"));
        assert_eq!(d.channel_names["0"], "CT");
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let message = |text: &str| parse(text).expect_err("invalid").to_string();
        assert!(message("{").contains("dataset.json: not valid JSON"));
        assert!(message("{}").contains("missing key \"labels\""));
        assert!(message(r#"{"labels": {"liver": -1}}"#).contains("labels.liver"));
        assert!(message(r#"{"labels": {"liver": 1}, "numTraining": "x"}"#).contains("numTraining"));
    }
}
