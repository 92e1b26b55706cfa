//! `dataset_fingerprint.json`: what nnU-Net's `DatasetFingerprintExtractor` records of a raw
//! data set — per case the shape after cropping to nonzero, the spacing and the relative
//! size of the crop; per channel the foreground intensity statistics.
//!
//! Foreground intensities are sampled as nnU-Net samples them, draw for draw: for each case
//! a fresh legacy `RandomState(1234)` draws `⌊1e8 / cases⌋` foreground voxels per channel with
//! replacement (channels one after another from that one generator). Statistics over all
//! cases' samples: mean, population std, min, max, and the 0.5th, 50th and 99.5th percentiles
//! with linear interpolation (NumPy's default).

use std::io::Write;
use std::path::Path;

use ndarray::Array4;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::crop::crop_to_nonzero;
use crate::error::Result;
use crate::io::{read_images, write_atomic};
use crate::random::RandomState;
use crate::raw::RawDataset;

/// Intensity statistics of one channel's foreground.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IntensityProperties {
    /// Largest value.
    pub max: f64,
    /// Mean.
    pub mean: f64,
    /// 50th percentile.
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// 0.5th percentile.
    pub percentile_00_5: f64,
    /// 99.5th percentile.
    pub percentile_99_5: f64,
    /// Population standard deviation.
    pub std: f64,
}

/// The fingerprint, with nnU-Net's key names (written with sorted keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Per channel index (as a string key).
    pub foreground_intensity_properties_per_channel: std::collections::BTreeMap<String, IntensityProperties>,
    /// Median over cases of (cropped voxels / voxels).
    pub median_relative_size_after_cropping: f64,
    /// Per case (sorted ids), the (Z, Y, X) shape after cropping.
    pub shapes_after_crop: Vec<[usize; 3]>,
    /// Per case, the (Z, Y, X) spacing.
    pub spacings: Vec<[f64; 3]>,
}

/// What one case contributes.
struct CaseFingerprint {
    shape_after_crop: [usize; 3],
    spacing: [f64; 3],
    relative_size: f64,
    /// Per channel, the sampled foreground values.
    samples: Vec<Vec<f32>>,
}

/// NumPy's `percentile(values, q)` (linear interpolation) of an unsorted sample; reorders it.
fn percentile(values: &mut [f32], q: f64) -> f64 {
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    let rank = q / 100.0 * (n - 1) as f64;
    let below = rank.floor() as usize;
    let (_, &mut low, upper) = values.select_nth_unstable_by(below, f32::total_cmp);
    let low = f64::from(low);
    if below + 1 >= n {
        return low;
    }
    let high = f64::from(upper.iter().copied().fold(f32::INFINITY, f32::min));
    low + (high - low) * (rank - below as f64)
}

fn case_fingerprint(images: &Array4<f32>, seg: &Array4<f32>, spacing: [f64; 3], draws: usize) -> CaseFingerprint {
    let seg = seg.mapv(|v| v as i16);
    let cropped = crop_to_nonzero(images.view(), seg.view());
    let (_, z, y, x) = cropped.data.dim();
    let before: usize = images.shape()[1..].iter().product();
    let foreground: Vec<bool> = cropped.seg.iter().map(|&v| v > 0).collect();
    let mut rng = RandomState::new(1234);
    let samples = cropped
        .data
        .outer_iter()
        .map(|channel| {
            let values: Vec<f32> = channel
                .iter()
                .zip(&foreground)
                .filter(|(_, &f)| f)
                .map(|(&v, _)| v)
                .collect();
            if values.is_empty() {
                return Vec::new();
            }
            let max = (values.len() - 1) as u32;
            (0..draws).map(|_| values[rng.interval(max) as usize]).collect()
        })
        .collect();
    CaseFingerprint {
        shape_after_crop: [z, y, x],
        spacing,
        relative_size: (z * y * x) as f64 / before as f64,
        samples,
    }
}

impl Fingerprint {
    /// Extracts the fingerprint of a raw data set, cases in parallel on the current rayon
    /// pool (each holds about 4·⌊1e8 / cases⌋ bytes of samples per channel).
    ///
    /// Every case is checked on the way ([`RawDataset::case_problems`]): a data set that would
    /// preprocess into garbage (NaN voxels, labels off their image or undeclared) is refused
    /// here, with or without `--verify`.
    ///
    /// # Errors
    ///
    /// When dataset.json's labels are not consecutive, or a case's images or label cannot be
    /// read or do not fit together ([`crate::Error::InvalidCase`] lists its problems).
    pub fn extract(dataset: &RawDataset) -> Result<Self> {
        let declarations = dataset.declaration_problems();
        if !declarations.is_empty() {
            return Err(crate::Error::Plan(declarations.join("; ")));
        }
        let n_cases = dataset.cases.len().max(1);
        let draws = (1e8 as usize) / n_cases;
        let cases = dataset
            .cases
            .par_iter()
            .map(|case| {
                let images = read_images(&case.images)?;
                let label = read_images(std::slice::from_ref(&case.label))?;
                let problems = dataset.case_problems(case, &images, &label);
                if !problems.is_empty() {
                    return Err(crate::Error::InvalidCase {
                        path: dataset.folder.clone(),
                        problems,
                    });
                }
                Ok(case_fingerprint(&images.data, &label.data, images.spacing, draws))
            })
            .collect::<Result<Vec<_>>>()?;
        let channels = cases.iter().map(|c| c.samples.len()).max().unwrap_or(0);
        let properties = (0..channels)
            .map(|c| {
                let mut all: Vec<f32> = cases.iter().flat_map(|case| case.samples[c].iter().copied()).collect();
                let n = all.len() as f64;
                let mean = all.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
                let std = (all.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n).sqrt();
                let min = all.iter().copied().fold(f32::INFINITY, f32::min);
                let max = all.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let properties = IntensityProperties {
                    max: f64::from(max),
                    mean,
                    median: percentile(&mut all, 50.0),
                    min: f64::from(min),
                    percentile_00_5: percentile(&mut all, 0.5),
                    percentile_99_5: percentile(&mut all, 99.5),
                    std,
                };
                (c.to_string(), properties)
            })
            .collect();
        let mut relative: Vec<f64> = cases.iter().map(|c| c.relative_size).collect();
        relative.sort_by(f64::total_cmp);
        let median = match relative.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => relative[n / 2],
            n => (relative[n / 2 - 1] + relative[n / 2]) / 2.0,
        };
        Ok(Self {
            foreground_intensity_properties_per_channel: properties,
            median_relative_size_after_cropping: median,
            shapes_after_crop: cases.iter().map(|c| c.shape_after_crop).collect(),
            spacings: cases.iter().map(|c| c.spacing).collect(),
        })
    }

    /// Writes `dataset_fingerprint.json` atomically (indent 4, keys sorted, as nnU-Net).
    ///
    /// # Errors
    ///
    /// When the file cannot be written.
    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomic(path, |out: &mut dyn Write| {
            let mut serializer = serde_json::Serializer::with_formatter(
                &mut *out,
                serde_json::ser::PrettyFormatter::with_indent(b"    "),
            );
            self.serialize(&mut serializer).map_err(std::io::Error::other)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let mut v = vec![4.0f32, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&mut v, 50.0), 2.5);
        assert_eq!(percentile(&mut v, 0.0), 1.0);
        assert_eq!(percentile(&mut v, 100.0), 4.0);
        assert!((percentile(&mut v, 99.5) - 3.985).abs() < 1e-12);
    }
}
