//! nnU-Net's intensity normalisation schemes, applied per channel to the cropped image
//! before resampling (nnU-Net v2, <https://github.com/MIC-DKFZ/nnUNet>), in f32 as nnU-Net computes.

use ndarray::{ArrayView3, ArrayViewMut3, Zip};

use crate::error::{Error, Result};
use crate::fingerprint::IntensityProperties;

const EPS: f32 = 1e-8;

/// A normalisation scheme by its nnU-Net class name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalization {
    /// `CTNormalization`: clip to the data set's 0.5/99.5 percentiles, subtract its mean,
    /// divide by its std.
    Ct,
    /// `ZScoreNormalization`: the image's own mean and std (inside the nonzero mask when
    /// `use_mask_for_norm`).
    ZScore,
    /// `NoNormalization`.
    NoNorm,
    /// `RescaleTo01Normalization`: min to 0, max to 1.
    RescaleTo01,
    /// `RGBTo01Normalization`: divide by 255.
    RgbTo01,
}

impl Normalization {
    /// The scheme of a plans entry.
    ///
    /// # Errors
    ///
    /// For a name nnU-Net does not define.
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "CTNormalization" => Self::Ct,
            "ZScoreNormalization" => Self::ZScore,
            "NoNormalization" => Self::NoNorm,
            "RescaleTo01Normalization" => Self::RescaleTo01,
            "RGBTo01Normalization" => Self::RgbTo01,
            other => return Err(Error::Plan(format!("unknown normalization scheme {other:?}"))),
        })
    }

    /// Normalises `channel` in place; `seg` (−1 outside the nonzero mask) restricts z-score
    /// statistics when `use_mask`; `properties` are the data set's (needed for CT).
    ///
    /// # Errors
    ///
    /// CT normalisation without intensity properties.
    pub fn apply(
        self,
        mut channel: ArrayViewMut3<'_, f32>,
        seg: ArrayView3<'_, i16>,
        use_mask: bool,
        properties: Option<&IntensityProperties>,
    ) -> Result<()> {
        match self {
            Self::Ct => {
                let p = properties.ok_or_else(|| {
                    Error::Plan("CTNormalization needs the fingerprint's intensity properties".into())
                })?;
                let (lo, hi, mean, std) = (
                    p.percentile_00_5 as f32,
                    p.percentile_99_5 as f32,
                    p.mean as f32,
                    p.std as f32,
                );
                channel.mapv_inplace(|v| (v.clamp(lo, hi) - mean) / std.max(EPS));
            }
            Self::ZScore => {
                let inside = |s: i16| !use_mask || s >= 0;
                let (mut sum, mut count) = (0f64, 0usize);
                Zip::from(&channel).and(&seg).for_each(|&v, &s| {
                    if inside(s) {
                        sum += f64::from(v);
                        count += 1;
                    }
                });
                let mean = sum / count.max(1) as f64;
                let mut squares = 0f64;
                Zip::from(&channel).and(&seg).for_each(|&v, &s| {
                    if inside(s) {
                        squares += (f64::from(v) - mean).powi(2);
                    }
                });
                let std = ((squares / count.max(1) as f64).sqrt() as f32).max(EPS);
                let mean = mean as f32;
                Zip::from(&mut channel).and(&seg).for_each(|v, &s| {
                    if inside(s) {
                        *v = (*v - mean) / std;
                    }
                });
            }
            Self::NoNorm => {}
            Self::RescaleTo01 => {
                let min = channel.iter().copied().fold(f32::INFINITY, f32::min);
                channel.mapv_inplace(|v| v - min);
                let max = channel.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                channel.mapv_inplace(|v| v / max.max(EPS));
            }
            Self::RgbTo01 => channel.mapv_inplace(|v| v / 255.0),
        }
        Ok(())
    }
}
