//! nnU-Net's 2-D training data loader (`nnUNetDataLoader` with a 2-D patch and the
//! trainer's transforms; nnU-Net v2 (<https://github.com/MIC-DKFZ/nnUNet>)): a batch of random
//! slices and patches, the last third forced to contain foreground, loaded at the
//! augmentation's enlarged size and augmented to the final patch (training), or loaded at the
//! final patch and only cleaned up (validation).

use ndarray::{s, Array3, Array4, Axis};

use crate::augment::Augmentation2d;
use crate::error::{Error, Result};
use crate::preprocess::store::PreprocessedCase;
use crate::random::RandomState;
use crate::sampling::{crop_patch, forced_foreground, patch_origin};

/// One batch: images (B, C, H, W) and labels (B, H, W), label −1 already mapped to 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch2d {
    /// Images.
    pub data: Array4<f32>,
    /// Labels.
    pub seg: Array3<i16>,
}

/// How batches are drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchSampler2d {
    /// Samples per batch (the plans' `batch_size`).
    pub batch_size: usize,
    /// The final patch and the image masking; `augment` decides whether the spatial and
    /// intensity transforms run.
    pub augmentation: Augmentation2d,
    /// Training batches are augmented; validation batches are not.
    pub augment: bool,
}

impl BatchSampler2d {
    /// The patch size loaded from the case before augmentation.
    pub fn loaded_patch(&self) -> [usize; 2] {
        if self.augment {
            self.augmentation.initial_patch()
        } else {
            self.augmentation.patch
        }
    }

    /// Draws one batch from `cases` (chosen uniformly with replacement), all randomness from
    /// `rng`.
    ///
    /// # Errors
    ///
    /// When there are no cases, a case is not 2-D-sliceable into this many channels, or a
    /// memory-mapped file changed.
    pub fn sample(&self, cases: &[PreprocessedCase], rng: &mut RandomState) -> Result<Batch2d> {
        let first = cases
            .first()
            .ok_or_else(|| Error::Split("no training cases to sample from".into()))?;
        let channels = first.data()?.dim().0;
        let [h, w] = self.augmentation.patch;
        let mut data = Array4::<f32>::zeros((self.batch_size, channels, h, w));
        let mut seg = Array3::<i16>::zeros((self.batch_size, h, w));
        let loaded = self.loaded_patch();
        let need_to_pad = [loaded[0] - h.min(loaded[0]), loaded[1] - w.min(loaded[1])];
        for j in 0..self.batch_size {
            let case = &cases[rng.integer(0, cases.len() as i64 - 1) as usize];
            let (case_data, case_seg) = (case.data()?, case.seg()?);
            if case_data.dim().0 != channels {
                return Err(Error::Preprocessed {
                    path: format!("{}.npy", case.id).into(),
                    message: format!("has {} channels, the first case {channels}", case_data.dim().0),
                });
            }
            let (_, z, y, x) = case_data.dim();
            let foreground = forced_foreground(j, self.batch_size).then_some(&case.class_locations[..]);
            let origin = patch_origin([z, y, x], &loaded, &need_to_pad, foreground, rng);
            let (patch_data, patch_seg) = crop_patch(case_data, case_seg, origin, &loaded);
            let patch_data: Array3<f32> = patch_data.index_axis_move(Axis(1), 0);
            let patch_seg = patch_seg.slice_move(s![0, 0, .., ..]);
            let (sample_data, sample_seg) = if self.augment {
                self.augmentation.apply(&patch_data, &patch_seg, rng)
            } else {
                self.augmentation.validation(&patch_data, &patch_seg)
            };
            data.index_axis_mut(Axis(0), j).assign(&sample_data);
            seg.index_axis_mut(Axis(0), j).assign(&sample_seg);
        }
        Ok(Batch2d { data, seg })
    }
}

#[cfg(test)]
mod tests {
    use ndarray::Array4;

    use super::*;
    use crate::preprocess::store::{class_locations, write_case};
    use crate::preprocess::{CaseProperties, Preprocessed};

    /// A case whose image is +1 inside a disc labelled 1 and −1 outside, so every label
    /// can be checked against the image it came with.
    fn disc_case(folder: &std::path::Path, id: &str) -> PreprocessedCase {
        let (z, y, x) = (3, 60, 70);
        let inside = |yy: usize, xx: usize| (yy as f64 - 35.0).powi(2) + (xx as f64 - 30.0).powi(2) < 100.0;
        let data = Array4::from_shape_fn((1, z, y, x), |(_, _, yy, xx)| if inside(yy, xx) { 1f32 } else { -1.0 });
        let seg = Array4::from_shape_fn((1, z, y, x), |(_, _, yy, xx)| i16::from(inside(yy, xx)));
        let properties = CaseProperties::uncropped([z, y, x], [1.0; 3]);
        let locations = class_locations(&seg, &[1]);
        let case = Preprocessed { data, seg, properties };
        write_case(folder, id, &case, &locations).expect("write");
        PreprocessedCase::open(folder, id).expect("open")
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("nnunet-data-batch-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn labels_stay_aligned_with_their_image_through_augmentation() {
        let dir = scratch("aligned");
        let cases = vec![disc_case(&dir, "a")];
        let sampler = BatchSampler2d {
            batch_size: 3,
            augmentation: Augmentation2d {
                patch: [32, 32],
                mask_image: false,
            },
            augment: true,
        };
        let (mut agree, mut total, mut foreground_batches) = (0usize, 0usize, 0usize);
        for seed in 0..30 {
            let batch = sampler.sample(&cases, &mut RandomState::new(seed)).expect("batch");
            assert_eq!(batch.data.dim(), (3, 1, 32, 32));
            assert_eq!(batch.seg.dim(), (3, 32, 32));
            assert!(batch.seg.iter().all(|&v| v == 0 || v == 1));
            // The last sample of 3 is forced to hold foreground.
            foreground_batches += usize::from(batch.seg.index_axis(Axis(0), 2).iter().any(|&v| v == 1));
            for (d, &s) in batch.data.iter().zip(batch.seg.iter()) {
                // Padding (image 0, label 0) and interpolated borders aside, bright means disc.
                if d.abs() > 0.5 {
                    total += 1;
                    agree += usize::from((*d > 0.0) == (s == 1));
                }
            }
            let again = sampler.sample(&cases, &mut RandomState::new(seed)).expect("batch");
            assert_eq!(batch, again, "seeded batches repeat");
        }
        assert_eq!(foreground_batches, 30, "forced samples contain foreground");
        // Intensity augmentations (gamma, contrast, noise) move values but keep their sign
        // almost everywhere; a misaligned label would agree about half the time.
        assert!(agree as f64 > 0.97 * total as f64, "{agree} of {total} pixels agree");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn validation_batches_are_plain_crops() {
        let dir = scratch("validation");
        let cases = vec![disc_case(&dir, "a")];
        let sampler = BatchSampler2d {
            batch_size: 2,
            augmentation: Augmentation2d {
                patch: [32, 32],
                mask_image: false,
            },
            augment: false,
        };
        let batch = sampler.sample(&cases, &mut RandomState::new(1)).expect("batch");
        assert!(batch.data.iter().all(|&v| v == 1.0 || v == -1.0 || v == 0.0));
        for (d, &s) in batch.data.iter().zip(batch.seg.iter()) {
            assert_eq!(*d == 1.0, s == 1, "exact alignment without augmentation");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
