//! The spatial part of nnU-Net's 2-D augmentation: the patch size to load, and rotation /
//! scaling about the centre to the final patch.

use ndarray::{s, Array2, Array3};

/// Rotation and scaling of one sample (`angle` in radians, `scale` > 1 zooms out).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpatialParams {
    /// Rotation angle.
    pub angle: f64,
    /// Scaling factor.
    pub scale: f64,
}

impl SpatialParams {
    /// No rotation, no scaling: a centre crop.
    pub fn identity() -> Self {
        Self { angle: 0.0, scale: 1.0 }
    }
}

/// batchgenerators' `get_patch_size` for 2-D patches with scaling (0.85, 1.25): the patch
/// rotated by up to `rotation` (at most 90°), at least the patch, divided by 0.85, truncated.
pub fn initial_patch_size_2d(patch: [usize; 2], rotation: f64) -> [usize; 2] {
    let angle = rotation.abs().min(std::f64::consts::FRAC_PI_2);
    let (c0, c1) = (patch[0] as f64, patch[1] as f64);
    // A row vector times [[cos, −sin], [sin, cos]].
    let rotated = [
        (c0 * angle.cos() + c1 * angle.sin()).abs(),
        (-c0 * angle.sin() + c1 * angle.cos()).abs(),
    ];
    [0, 1].map(|i| (rotated[i].max(patch[i] as f64) / 0.85) as usize)
}

/// Rotates and scales `data` (C, H, W) and `seg` (H, W) about their centres into `patch`:
/// bilinear sampling with zero padding for the image; for the segmentation, the label whose
/// one-hot map interpolates highest (the lowest label on ties), −1 where no input pixel
/// contributes. Without rotation or scaling this is an integer centre crop.
pub fn spatial_transform_2d(
    data: &Array3<f32>,
    seg: &Array2<i16>,
    patch: [usize; 2],
    params: SpatialParams,
) -> (Array3<f32>, Array2<i16>) {
    let (channels, h, w) = data.dim();
    if params.angle == 0.0 && params.scale == 1.0 && h >= patch[0] && w >= patch[1] {
        let (y0, x0) = ((h - patch[0]) / 2, (w - patch[1]) / 2);
        return (
            data.slice(s![.., y0..y0 + patch[0], x0..x0 + patch[1]]).to_owned(),
            seg.slice(s![y0..y0 + patch[0], x0..x0 + patch[1]]).to_owned(),
        );
    }
    let mut labels: Vec<i16> = seg.iter().copied().collect();
    labels.sort_unstable();
    labels.dedup();
    let (sin, cos) = params.angle.sin_cos();
    let (cy_out, cx_out) = ((patch[0] as f64 - 1.0) / 2.0, (patch[1] as f64 - 1.0) / 2.0);
    let (cy_in, cx_in) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    let mut out_data = Array3::<f32>::zeros((channels, patch[0], patch[1]));
    let mut out_seg = Array2::<i16>::from_elem((patch[0], patch[1]), -1);
    let mut votes = vec![0f64; labels.len()];
    let mut values = vec![0f64; channels];
    for i in 0..patch[0] {
        for j in 0..patch[1] {
            let (dy, dx) = ((i as f64 - cy_out) * params.scale, (j as f64 - cx_out) * params.scale);
            let (y, x) = (cos * dy - sin * dx + cy_in, sin * dy + cos * dx + cx_in);
            let (y0, x0) = (y.floor(), x.floor());
            let (ly, lx) = (y - y0, x - x0);
            let corners = [
                (y0, x0, (1.0 - ly) * (1.0 - lx)),
                (y0, x0 + 1.0, (1.0 - ly) * lx),
                (y0 + 1.0, x0, ly * (1.0 - lx)),
                (y0 + 1.0, x0 + 1.0, ly * lx),
            ];
            votes.iter_mut().for_each(|v| *v = 0.0);
            values.iter_mut().for_each(|v| *v = 0.0);
            let mut any = false;
            for (cy, cx, weight) in corners {
                if cy < 0.0 || cx < 0.0 || cy >= h as f64 || cx >= w as f64 || weight == 0.0 {
                    continue;
                }
                let (cy, cx) = (cy as usize, cx as usize);
                any = true;
                for (c, value) in values.iter_mut().enumerate() {
                    *value += weight * f64::from(data[[c, cy, cx]]);
                }
                if let Ok(k) = labels.binary_search(&seg[[cy, cx]]) {
                    votes[k] += weight;
                }
            }
            for (c, &value) in values.iter().enumerate() {
                out_data[[c, i, j]] = value as f32;
            }
            if any {
                let best = (0..labels.len()).fold(0, |best, k| if votes[k] > votes[best] { k } else { best });
                out_seg[[i, j]] = labels[best];
            }
        }
    }
    (out_data, out_seg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_patch_sizes_match_nnunet() {
        // nnunet-reference.md §6.4: 512² → 602², 896² → 1054², (256, 512) ±15° → (446, 602).
        assert_eq!(initial_patch_size_2d([512, 512], std::f64::consts::PI), [602, 602]);
        assert_eq!(initial_patch_size_2d([896, 896], std::f64::consts::PI), [1054, 1054]);
        assert_eq!(initial_patch_size_2d([256, 512], 15f64.to_radians()), [446, 602]);
    }

    #[test]
    fn half_turn_flips_both_axes() {
        let data = Array3::from_shape_fn((1, 4, 4), |(_, y, x)| (y * 4 + x) as f32);
        let seg = Array2::from_shape_fn((4, 4), |(y, x)| i16::from(y == 0 && x == 0));
        let (d, s) = spatial_transform_2d(
            &data,
            &seg,
            [4, 4],
            SpatialParams {
                angle: std::f64::consts::PI,
                scale: 1.0,
            },
        );
        assert!(
            (d[[0, 0, 0]] - 15.0).abs() < 1e-4 && (d[[0, 3, 3]] - 0.0).abs() < 1e-4,
            "{d:?}"
        );
        assert_eq!(s[[3, 3]], 1);
        assert_eq!(s[[0, 0]], 0);
    }

    #[test]
    fn zooming_out_pads_image_with_zero_and_seg_with_minus_one() {
        let data = Array3::from_elem((1, 8, 8), 1f32);
        let seg = Array2::from_elem((8, 8), 1i16);
        let (d, s) = spatial_transform_2d(&data, &seg, [8, 8], SpatialParams { angle: 0.0, scale: 1.4 });
        assert_eq!(d[[0, 0, 0]], 0.0);
        assert_eq!(s[[0, 0]], -1);
        assert_eq!((d[[0, 4, 4]], s[[4, 4]]), (1.0, 1));
    }
}
