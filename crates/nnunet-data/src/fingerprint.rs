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

use ndarray::{s, Array4};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::crop::nonzero_bounding_box;
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
    /// Per channel, the sampled foreground values (none without foreground), or, while
    /// `drawn` is false, the foreground values they are to be drawn from (fewer than the
    /// draws, so they wait for the draws until every case is read).
    samples: Vec<Vec<f32>>,
    drawn: bool,
}

/// `draws` draws from `values` (with replacement), continuing `rng`.
fn draw(rng: &mut RandomState, values: &[f32], draws: usize) -> Vec<f32> {
    let max = (values.len() - 1) as u32;
    (0..draws).map(|_| values[rng.interval(max) as usize]).collect()
}

/// Crops a case as nnU-Net's fingerprint does (only the bounding box matters: the −1 that
/// cropping writes never marks foreground) and samples `draws` of its foreground voxels per
/// channel, or keeps their values when they are fewer than that, to draw from later (the same
/// draws: every case starts a fresh `RandomState(1234)`).
fn case_fingerprint(images: &Array4<f32>, label: &Array4<f32>, spacing: [f64; 3], draws: usize) -> CaseFingerprint {
    let bbox = nonzero_bounding_box(images.view());
    let [[z0, z1], [y0, y1], [x0, x1]] = bbox;
    let (z, y, x) = (z1 - z0, y1 - y0, x1 - x0);
    let before: usize = images.shape()[1..].iter().product();
    let seg = label.slice(s![0, z0..z1, y0..y1, x0..x1]);
    let is_foreground = |v: f32| v as i16 > 0;
    let foreground = seg.iter().filter(|&&v| is_foreground(v)).count();
    let foreground_values = |channel: usize| -> Vec<f32> {
        if foreground == 0 {
            return Vec::new();
        }
        let channel = images.slice(s![channel, z0..z1, y0..y1, x0..x1]);
        let mut values = Vec::with_capacity(foreground);
        values.extend(
            channel
                .iter()
                .zip(seg.iter())
                .filter(|(_, &s)| is_foreground(s))
                .map(|(&v, _)| v),
        );
        values
    };
    let channels = 0..images.dim().0;
    let drawn = foreground == 0 || foreground >= draws;
    let samples = if drawn {
        let mut rng = RandomState::new(1234);
        channels
            .map(|c| {
                let values = foreground_values(c);
                if values.is_empty() {
                    Vec::new()
                } else {
                    draw(&mut rng, &values, draws)
                }
            })
            .collect()
    } else {
        channels.map(foreground_values).collect()
    };
    CaseFingerprint {
        shape_after_crop: [z, y, x],
        spacing,
        relative_size: (z * y * x) as f64 / before as f64,
        samples,
        drawn,
    }
}

/// `v`'s bits as an unsigned key in the order of [`f32::total_cmp`].
fn total_order_key(v: f32) -> u32 {
    let bits = v.to_bits();
    if bits >> 31 == 1 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// The inverse of [`total_order_key`].
fn from_total_order_key(key: u32) -> f32 {
    f32::from_bits(if key >> 31 == 1 { key & 0x7fff_ffff } else { !key })
}

/// Counts per 16-bit digit (`digit` gives it, or `None` to skip a value) over all samples.
fn digit_counts(samples: &[&[f32]], digit: impl Fn(u32) -> Option<usize> + Sync) -> Vec<u64> {
    samples
        .par_iter()
        .fold(
            || vec![0u64; 1 << 16],
            |mut counts, values| {
                for &v in values.iter() {
                    if let Some(d) = digit(total_order_key(v)) {
                        counts[d] += 1;
                    }
                }
                counts
            },
        )
        .reduce(
            || vec![0u64; 1 << 16],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        )
}

/// The digit whose cumulative count passes `rank`, and the rank within it.
fn find_digit(counts: &[u64], rank: u64) -> (usize, u64) {
    let mut below = 0;
    for (digit, &count) in counts.iter().enumerate() {
        if rank < below + count {
            return (digit, rank - below);
        }
        below += count;
    }
    unreachable!("rank {rank} beyond the {below} values counted")
}

/// The values at `ranks` (each below the number of samples) in the [`f32::total_cmp`] order
/// of all samples together, as sorting their concatenation would give, without
/// concatenating: two counting passes over the keys' high and low 16 bits.
fn order_statistics(samples: &[&[f32]], ranks: &[usize]) -> Vec<f32> {
    let high = digit_counts(samples, |key| Some((key >> 16) as usize));
    let found: Vec<(usize, u64)> = ranks.iter().map(|&r| find_digit(&high, r as u64)).collect();
    let mut buckets: Vec<usize> = found.iter().map(|&(bucket, _)| bucket).collect();
    buckets.sort_unstable();
    buckets.dedup();
    // Low digits of the values in each bucket a rank falls in, side by side.
    let mut slot = vec![usize::MAX; 1 << 16];
    for (i, &bucket) in buckets.iter().enumerate() {
        slot[bucket] = i;
    }
    let width = 1usize << 16;
    let low: Vec<u64> = samples
        .par_iter()
        .fold(
            || vec![0u64; width * buckets.len()],
            |mut counts, values| {
                for &v in values.iter() {
                    let key = total_order_key(v);
                    let i = slot[(key >> 16) as usize];
                    if i != usize::MAX {
                        counts[i * width + (key & 0xffff) as usize] += 1;
                    }
                }
                counts
            },
        )
        .reduce(
            || vec![0u64; width * buckets.len()],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        );
    found
        .iter()
        .map(|&(bucket, rank)| {
            let i = slot[bucket];
            let (digit, _) = find_digit(&low[i * width..(i + 1) * width], rank);
            from_total_order_key(((bucket as u32) << 16) | digit as u32)
        })
        .collect()
}

/// NumPy's `percentile(values, q)` (linear interpolation) of `n` values, `value_at(r)` giving
/// the one at rank `r` of their [`f32::total_cmp`] order.
fn percentile(n: usize, q: f64, value_at: impl Fn(usize) -> f32) -> f64 {
    if n == 0 {
        return f64::NAN;
    }
    let rank = q / 100.0 * (n - 1) as f64;
    let below = rank.floor() as usize;
    let low = f64::from(value_at(below));
    if below + 1 >= n {
        return low;
    }
    let high = f64::from(value_at(below + 1));
    low + (high - low) * (rank - below as f64)
}

/// The intensity statistics of the concatenation of `samples` (in this order: the mean and
/// std are sums in that order).
fn intensity_properties(samples: &[&[f32]]) -> IntensityProperties {
    let all = || samples.iter().flat_map(|values| values.iter().copied());
    let count: usize = samples.iter().map(|values| values.len()).sum();
    let n = count as f64;
    let mean = all().map(f64::from).sum::<f64>() / n;
    let std = (all().map(|v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n).sqrt();
    let min = all().fold(f32::INFINITY, f32::min);
    let max = all().fold(f32::NEG_INFINITY, f32::max);
    let quantiles = [50.0, 0.5, 99.5];
    let mut ranks: Vec<usize> = Vec::new();
    if count > 0 {
        for q in quantiles {
            let below = (q / 100.0 * (count - 1) as f64).floor() as usize;
            ranks.extend([below, below + 1].into_iter().filter(|&r| r < count));
        }
    }
    ranks.sort_unstable();
    ranks.dedup();
    let values = order_statistics(samples, &ranks);
    let value_at = |r: usize| ranks.binary_search(&r).map_or(f32::NAN, |i| values[i]);
    let [median, percentile_00_5, percentile_99_5] = quantiles.map(|q| percentile(count, q, value_at));
    IntensityProperties {
        max: f64::from(max),
        mean,
        median,
        min: f64::from(min),
        percentile_00_5,
        percentile_99_5,
        std,
    }
}

impl Fingerprint {
    /// Extracts the fingerprint of a raw data set, cases in parallel on the current rayon
    /// pool. The samples take 4·⌊1e8 / cases⌋ bytes per case and channel (400 MB per channel
    /// in all), never copied; a case with fewer foreground voxels than that keeps only their
    /// values until every case is read.
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
        let mut cases = dataset
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
        // Drawn now, when the memory of the cases read is free again.
        cases.par_iter_mut().filter(|case| !case.drawn).for_each(|case| {
            let mut rng = RandomState::new(1234);
            case.samples = case
                .samples
                .iter()
                .map(|values| draw(&mut rng, values, draws))
                .collect();
            case.drawn = true;
        });
        let channels = cases.iter().map(|c| c.samples.len()).max().unwrap_or(0);
        let properties = (0..channels)
            .map(|c| {
                let samples: Vec<&[f32]> = cases.iter().map(|case| case.samples[c].as_slice()).collect();
                let properties = intensity_properties(&samples);
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

    /// The statistics as computed on the concatenated samples: sums over it, `select_nth`
    /// for the percentiles (NumPy's definition, which `intensity_properties` must equal).
    fn reference_properties(samples: &[&[f32]]) -> IntensityProperties {
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
        let mut all: Vec<f32> = samples.concat();
        let n = all.len() as f64;
        let mean = all.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let std = (all.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n).sqrt();
        let min = all.iter().copied().fold(f32::INFINITY, f32::min);
        let max = all.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        IntensityProperties {
            max: f64::from(max),
            mean,
            median: percentile(&mut all, 50.0),
            min: f64::from(min),
            percentile_00_5: percentile(&mut all, 0.5),
            percentile_99_5: percentile(&mut all, 99.5),
            std,
        }
    }

    fn same_bits(a: &IntensityProperties, b: &IntensityProperties) -> bool {
        let bits = |p: &IntensityProperties| {
            [
                p.max,
                p.mean,
                p.median,
                p.min,
                p.percentile_00_5,
                p.percentile_99_5,
                p.std,
            ]
            .map(f64::to_bits)
        };
        bits(a) == bits(b)
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let p = intensity_properties(&[&[4.0, 1.0], &[], &[3.0, 2.0]]);
        assert_eq!((p.median, p.min, p.max), (2.5, 1.0, 4.0));
        assert!((p.percentile_99_5 - 3.985).abs() < 1e-12);
        assert!((p.percentile_00_5 - 1.015).abs() < 1e-12);
        let value_at = |r: usize| [1.0, 2.0, 3.0, 4.0][r];
        assert_eq!(percentile(4, 0.0, value_at), 1.0);
        assert_eq!(percentile(4, 100.0, value_at), 4.0);
        assert!(intensity_properties(&[&[], &[]]).median.is_nan());
    }

    #[test]
    fn statistics_equal_those_of_the_concatenation_bit_for_bit() {
        let mut rng = RandomState::new(7);
        for trial in 0..60 {
            // Few distinct values (ties, as CT's integers give), signed zeros, wide ranges,
            // subnormals; split into uneven cases, some empty.
            let cases: Vec<Vec<f32>> = (0..1 + trial % 5)
                .map(|_| {
                    (0..rng.interval(300))
                        .map(|_| match trial % 4 {
                            0 => rng.integer(-3, 3) as f32,
                            1 => [0.0, -0.0, 1.5, -1.5, f32::MIN_POSITIVE / 4.0][rng.interval(4) as usize],
                            2 => (rng.uniform() * 2e4 - 1e4) as f32,
                            _ => f32::from_bits(rng.next_u32() & 0xbfff_ffff),
                        })
                        .collect()
                })
                .collect();
            let samples: Vec<&[f32]> = cases.iter().map(Vec::as_slice).collect();
            let (ours, expected) = (intensity_properties(&samples), reference_properties(&samples));
            assert!(same_bits(&ours, &expected), "trial {trial}: {ours:?} vs {expected:?}");
        }
    }

    #[test]
    fn total_order_keys_sort_as_total_cmp() {
        let values = [
            f32::NEG_INFINITY,
            -2.5,
            -f32::MIN_POSITIVE,
            -0.0,
            0.0,
            1e-42,
            3.0,
            f32::MAX,
        ];
        for pair in values.windows(2) {
            assert!(total_order_key(pair[0]) < total_order_key(pair[1]), "{pair:?}");
        }
        for v in values {
            assert_eq!(from_total_order_key(total_order_key(v)).to_bits(), v.to_bits());
        }
    }
}
