//! nnU-Net's 2-D training augmentation (batchgeneratorsv2 as `nnUNetTrainer` configures it;
//! nnU-Net v2, <https://github.com/MIC-DKFZ/nnUNet>), per sample, in nnU-Net's order:
//!
//! 1. spatial transform to the final patch: rotation (p 0.2, ±180° for near-square
//!    patches, else ±15°) and scaling (p 0.2, U(0.7, 1.4), > 1 zooms out) about the centre,
//!    bilinear with zero padding; the segmentation by per-label bilinear one-hot and argmax,
//!    −1 outside; a plain centre crop when neither fires;
//! 2. Gaussian noise (p 0.1, std U(0, 0.1));
//! 3. Gaussian blur (p 0.2; per channel p 0.5, σ U(0.5, 1) per axis);
//! 4. multiplicative brightness (p 0.15, BGContrast(0.75, 1.25));
//! 5. contrast (p 0.15, BGContrast(0.75, 1.25), clipped to the original range);
//! 6. low-resolution simulation (p 0.25; per channel p 0.5, scale U(0.5, 1));
//! 7. inverted gamma (p 0.1) and 8. gamma (p 0.3), γ BGContrast(0.7, 1.5), statistics kept;
//! 9. mirroring of each axis with p 0.5;
//! 10. image 0 where the segmentation is −1 (when a channel uses the mask for normalisation);
//! 11. segmentation −1 → 0.
//!
//! Arrays: data (C, H, W) float32, seg (H, W) int16. All randomness comes from the
//! [`RandomState`] passed in, so a seed reproduces an augmentation exactly.

mod intensity;
mod spatial;

use ndarray::{Array2, Array3, Axis};

use crate::random::RandomState;
pub use intensity::{gaussian_blur, gaussian_kernel};
pub use spatial::{initial_patch_size_2d, spatial_transform_2d, SpatialParams};

/// nnU-Net's `BGContrast(lo, hi)`: with probability ½ a factor below 1 (U(lo, 1)), else above
/// (U(1, hi)).
pub fn bg_contrast(rng: &mut RandomState, lo: f64, hi: f64) -> f64 {
    if rng.chance(0.5) {
        rng.uniform_in(lo, 1.0)
    } else {
        rng.uniform_in(1.0, hi)
    }
}

/// Options of the 2-D pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Augmentation2d {
    /// The final patch (H, W).
    pub patch: [usize; 2],
    /// Whether to zero the image outside the nonzero mask (any `use_mask_for_norm`).
    pub mask_image: bool,
}

impl Augmentation2d {
    /// The maximal rotation nnU-Net allows for this patch: ±180° when the patch is nearly
    /// square (max/min ≤ 1.5), else ±15°.
    pub fn rotation_max(&self) -> f64 {
        let (lo, hi) = (
            self.patch[0].min(self.patch[1]) as f64,
            self.patch[0].max(self.patch[1]) as f64,
        );
        if hi / lo <= 1.5 {
            std::f64::consts::PI
        } else {
            15f64.to_radians()
        }
    }

    /// The patch size to load before augmenting (`get_patch_size` with scaling (0.85, 1.25)).
    pub fn initial_patch(&self) -> [usize; 2] {
        initial_patch_size_2d(self.patch, self.rotation_max())
    }

    /// Augments one training sample (data loaded at [`Self::initial_patch`] or larger).
    pub fn apply(&self, data: &Array3<f32>, seg: &Array2<i16>, rng: &mut RandomState) -> (Array3<f32>, Array2<i16>) {
        let rotation = rng
            .chance(0.2)
            .then(|| rng.uniform_in(-self.rotation_max(), self.rotation_max()));
        let scale = rng.chance(0.2).then(|| rng.uniform_in(0.7, 1.4));
        let params = SpatialParams {
            angle: rotation.unwrap_or(0.0),
            scale: scale.unwrap_or(1.0),
        };
        let (mut data, mut seg) = spatial_transform_2d(data, seg, self.patch, params);
        intensity::augment(&mut data, rng);
        for axis in 0..2 {
            if rng.chance(0.5) {
                data.invert_axis(Axis(axis + 1));
                seg.invert_axis(Axis(axis));
            }
        }
        if self.mask_image {
            for mut channel in data.outer_iter_mut() {
                ndarray::Zip::from(&mut channel).and(&seg).for_each(|v, &s| {
                    if s < 0 {
                        *v = 0.0;
                    }
                });
            }
        }
        seg.mapv_inplace(|s| s.max(0));
        (data, seg)
    }

    /// What validation batches get: a centre crop to the patch and seg −1 → 0.
    pub fn validation(&self, data: &Array3<f32>, seg: &Array2<i16>) -> (Array3<f32>, Array2<i16>) {
        let (data, mut seg) = spatial_transform_2d(data, seg, self.patch, SpatialParams::identity());
        seg.mapv_inplace(|s| s.max(0));
        (data, seg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Array3<f32>, Array2<i16>) {
        let data = Array3::from_shape_fn((1, 40, 40), |(_, y, x)| ((y * 40 + x) as f32 / 1600.0) * 4.0 - 2.0);
        let seg = Array2::from_shape_fn((40, 40), |(y, x)| {
            if (12..28).contains(&y) && (12..28).contains(&x) {
                2
            } else if y < 3 {
                -1
            } else {
                0
            }
        });
        (data, seg)
    }

    #[test]
    fn shapes_labels_and_determinism() {
        let options = Augmentation2d {
            patch: [32, 32],
            mask_image: true,
        };
        let (data, seg) = sample();
        for seed in 0..40 {
            let (a, b) = options.apply(&data, &seg, &mut RandomState::new(seed));
            assert_eq!(a.dim(), (1, 32, 32));
            assert_eq!(b.dim(), (32, 32));
            assert!(
                b.iter().all(|&v| v == 0 || v == 2),
                "labels stay the data set's, −1 becomes 0"
            );
            assert!(a.iter().all(|v| v.is_finite()));
            let (again, seg_again) = options.apply(&data, &seg, &mut RandomState::new(seed));
            assert_eq!((a, b), (again, seg_again), "seed {seed} reproduces");
        }
    }

    #[test]
    fn validation_is_a_centre_crop() {
        let options = Augmentation2d {
            patch: [32, 32],
            mask_image: false,
        };
        let (data, seg) = sample();
        let (a, b) = options.validation(&data, &seg);
        assert_eq!(a[[0, 0, 0]], data[[0, 4, 4]]);
        assert_eq!(b[[10, 10]], seg[[14, 14]]);
    }

    #[test]
    fn rotation_range_depends_on_the_patch_shape() {
        assert_eq!(
            Augmentation2d {
                patch: [512, 512],
                mask_image: false
            }
            .rotation_max(),
            std::f64::consts::PI
        );
        assert!(
            (Augmentation2d {
                patch: [256, 512],
                mask_image: false
            }
            .rotation_max()
                - 15f64.to_radians())
            .abs()
                < 1e-12
        );
    }
}
