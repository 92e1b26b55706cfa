//! Per-case tables and summaries in MedDINOv3's layouts.
//!
//! - [`write_csv`]: `segmentation_metrics.csv` with columns `filename`, then `dice_class{c}`,
//!   `hd95_class{c}`, `nsd_class{c}` for each class `c`; NaN as an empty cell, +∞ as `inf`.
//! - [`Summary`]: per class the mean and sample standard deviation over cases (NaN cases
//!   skipped, as pandas does), and the class-wise average of those (NaN classes dropped);
//!   [`Summary::to_json`] gives `summary.json` with NaN as `null` and ±∞ as `"inf"`/`"-inf"`.

use std::io::Write;

use serde_json::{json, Map, Value};

use crate::case::ClassScores;

/// A foreground class: its label value and its name from dataset.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelClass {
    /// The label value in the label maps.
    pub value: u32,
    /// The name in dataset.json.
    pub name: String,
}

/// The scores of one case, in the order of the classes evaluated.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseScores {
    /// The file name of the case (as in the predictions folder).
    pub filename: String,
    /// One entry per class.
    pub classes: Vec<ClassScores>,
}

/// Mean and sample standard deviation of one metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Statistic {
    /// Mean over the defined (non-NaN) values; NaN when there is none.
    pub mean: f64,
    /// Sample standard deviation (n − 1) over the defined values; NaN for fewer than two.
    pub std: f64,
}

impl Statistic {
    /// Statistics of `values`, NaNs skipped.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let values: Vec<f64> = values.into_iter().filter(|v| !v.is_nan()).collect();
        let n = values.len() as f64;
        let mean = if values.is_empty() {
            f64::NAN
        } else {
            values.iter().sum::<f64>() / n
        };
        let std = if values.len() < 2 {
            f64::NAN
        } else {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        };
        Self { mean, std }
    }
}

/// Dice, HD95 and NSD statistics of one class (or of the class-wise average).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassSummary {
    /// Dice.
    pub dice: Statistic,
    /// 95th-percentile Hausdorff distance (mm).
    pub hd95: Statistic,
    /// Normalised surface Dice.
    pub nsd: Statistic,
}

/// The summary of a folder: one entry per class, then the class-wise average.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Per class, in evaluation order.
    pub classes: Vec<(LabelClass, ClassSummary)>,
    /// Mean over classes of the per-class statistics, NaN classes dropped.
    pub classwise_average: ClassSummary,
}

impl Summary {
    /// Summarises `cases`, whose entries follow the order of `classes`.
    pub fn new(classes: &[LabelClass], cases: &[CaseScores]) -> Self {
        let per_class: Vec<(LabelClass, ClassSummary)> = classes
            .iter()
            .enumerate()
            .map(|(i, class)| {
                let column = |metric: fn(&ClassScores) -> f64| {
                    Statistic::of(cases.iter().filter_map(|case| case.classes.get(i)).map(metric))
                };
                let summary = ClassSummary {
                    dice: column(|s| s.dice),
                    hd95: column(|s| s.hd95),
                    nsd: column(|s| s.nsd),
                };
                (class.clone(), summary)
            })
            .collect();
        let average = |pick: fn(&ClassSummary) -> Statistic| {
            let mean = Statistic::of(per_class.iter().map(|(_, s)| pick(s).mean)).mean;
            let std = Statistic::of(per_class.iter().map(|(_, s)| pick(s).std)).mean;
            Statistic { mean, std }
        };
        let classwise_average = ClassSummary {
            dice: average(|s| s.dice),
            hd95: average(|s| s.hd95),
            nsd: average(|s| s.nsd),
        };
        Self {
            classes: per_class,
            classwise_average,
        }
    }

    /// `summary.json` in MedDINOv3's layout: `{"class_<name>": {"dice": {"mean", "std"},
    /// "hd95": …, "nsd": …}, …, "classwise_average": {…}}`.
    pub fn to_json(&self) -> Value {
        let entry = |s: &ClassSummary| {
            let stat = |s: Statistic| json!({"mean": json_number(s.mean), "std": json_number(s.std)});
            json!({"dice": stat(s.dice), "hd95": stat(s.hd95), "nsd": stat(s.nsd)})
        };
        let mut map = Map::new();
        for (class, summary) in &self.classes {
            let _ = map.insert(format!("class_{}", class.name), entry(summary));
        }
        let _ = map.insert("classwise_average".into(), entry(&self.classwise_average));
        Value::Object(map)
    }
}

/// NaN as `null`, ±∞ as the strings `"inf"` / `"-inf"`, anything else as a number.
pub fn json_number(value: f64) -> Value {
    if value.is_nan() {
        Value::Null
    } else if value.is_infinite() {
        Value::String(if value > 0.0 { "inf" } else { "-inf" }.into())
    } else {
        json!(value + 0.0) // −0 as 0
    }
}

/// A CSV cell: empty for NaN, `inf`/`-inf`, otherwise the shortest exact decimal (zero as
/// `0`, whatever its sign).
fn csv_cell(value: f64) -> String {
    if value.is_nan() {
        String::new()
    } else if value.is_infinite() {
        if value > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        // Adding +0 turns −0 into +0 and leaves every other value as it is.
        format!("{}", value + 0.0)
    }
}

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// Writes `segmentation_metrics.csv` rows for `cases` (MedDINOv3's columns).
///
/// # Errors
///
/// When writing fails.
pub fn write_csv(mut out: impl Write, classes: &[LabelClass], cases: &[CaseScores]) -> std::io::Result<()> {
    let mut header = vec!["filename".to_string()];
    for class in classes {
        header.extend(["dice", "hd95", "nsd"].map(|metric| format!("{metric}_class{}", class.value)));
    }
    writeln!(out, "{}", header.join(","))?;
    for case in cases {
        let mut row = vec![csv_field(&case.filename)];
        for scores in &case.classes {
            row.extend([scores.dice, scores.hd95, scores.nsd].map(csv_cell));
        }
        writeln!(out, "{}", row.join(","))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlap::Counts;

    fn scores(dice: f64, hd95: f64, nsd: f64) -> ClassScores {
        ClassScores {
            counts: Counts::default(),
            dice,
            iou: f64::NAN,
            hd95,
            hd100: f64::NAN,
            nsd,
        }
    }

    fn classes() -> Vec<LabelClass> {
        vec![
            LabelClass {
                value: 1,
                name: "liver".into(),
            },
            LabelClass {
                value: 3,
                name: "spleen".into(),
            },
        ]
    }

    fn cases() -> Vec<CaseScores> {
        vec![
            CaseScores {
                filename: "a.nii.gz".into(),
                classes: vec![scores(1.0, 0.0, 1.0), scores(f64::NAN, f64::NAN, f64::NAN)],
            },
            CaseScores {
                filename: "b.nii.gz".into(),
                classes: vec![scores(0.5, 2.0, 0.5), scores(0.0, f64::INFINITY, 0.0)],
            },
            CaseScores {
                filename: "c,d.nii.gz".into(),
                classes: vec![scores(0.0, f64::NAN, 0.0), scores(f64::NAN, f64::NAN, f64::NAN)],
            },
        ]
    }

    #[test]
    fn statistics_skip_nan_and_use_the_sample_std() {
        let s = Statistic::of([1.0, f64::NAN, 3.0]);
        assert_eq!(s.mean, 2.0);
        assert!((s.std - 2f64.sqrt()).abs() < 1e-15);
        assert!(Statistic::of([5.0]).std.is_nan());
        assert!(Statistic::of([f64::NAN]).mean.is_nan());
    }

    #[test]
    fn summary_json_layout() {
        let summary = Summary::new(&classes(), &cases());
        let json = summary.to_json();
        assert_eq!(json["class_liver"]["dice"]["mean"], json!(0.5));
        assert_eq!(json["class_liver"]["dice"]["std"], json!(0.5));
        assert_eq!(json["class_liver"]["hd95"]["mean"], json!(1.0));
        assert_eq!(json["class_spleen"]["dice"]["mean"], json!(0.0));
        assert_eq!(json["class_spleen"]["dice"]["std"], Value::Null);
        assert_eq!(json["class_spleen"]["hd95"]["mean"], json!("inf"));
        // Class-wise average: NaN classes dropped.
        assert_eq!(json["classwise_average"]["dice"]["mean"], json!(0.25));
        assert_eq!(json["classwise_average"]["dice"]["std"], json!(0.5));
        let keys: Vec<&String> = json.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["class_liver", "class_spleen", "classwise_average"]);
    }

    #[test]
    fn csv_columns_and_cells() {
        let mut out = Vec::new();
        write_csv(&mut out, &classes(), &cases()).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "filename,dice_class1,hd95_class1,nsd_class1,dice_class3,hd95_class3,nsd_class3"
        );
        assert_eq!(lines[1], "a.nii.gz,1,0,1,,,");
        assert_eq!(lines[2], "b.nii.gz,0.5,2,0.5,0,inf,0");
        assert_eq!(lines[3], "\"c,d.nii.gz\",0,,0,,,");
    }

    #[test]
    fn negative_zero_is_written_as_zero() {
        assert_eq!(csv_cell(-0.0), "0");
        assert_eq!(json_number(-0.0).to_string(), "0.0");
    }
}
