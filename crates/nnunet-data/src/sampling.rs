//! nnU-Net's patch sampling for training (nnU-Net v2, <https://github.com/MIC-DKFZ/nnUNet>): which
//! samples of a batch must contain foreground, where a patch box lies in a case (random, or
//! around a stored foreground location), and the crop with padding (data 0, seg −1).
//!
//! Boxes are in the case's axes; a 2-D patch `(Py, Px)` on a volume picks one slice (random,
//! or the slice of the chosen foreground voxel) and a box in-plane.

use ndarray::{s, Array4, ArrayView4};

use crate::random::RandomState;

/// nnU-Net's `oversample_foreground_percent`.
pub const OVERSAMPLE_FOREGROUND: f64 = 0.33;

/// Whether sample `index` of a batch of `batch` must contain foreground: the last
/// `batch − round(batch·(1 − 0.33))` ones.
pub fn forced_foreground(index: usize, batch: usize) -> bool {
    index as f64 >= (batch as f64 * (1.0 - OVERSAMPLE_FOREGROUND)).round_ties_even()
}

/// Lower corner `[z, y, x]` (may be negative: padding) of a box of `patch` (2 or 3 axes,
/// the trailing axes of the case) in a case of `shape` (Z, Y, X). `extra_padding` is
/// nnU-Net's `need_to_pad` (loaded patch minus final patch) per patch axis.
/// `foreground`: for forced samples, the stored locations per class (`[0, z, y, x]`).
pub fn patch_origin(
    shape: [usize; 3],
    patch: &[usize],
    extra_padding: &[usize],
    foreground: Option<&[Vec<[usize; 4]>]>,
    rng: &mut RandomState,
) -> [i64; 3] {
    let offset = 3 - patch.len();
    let classes: Vec<&Vec<[usize; 4]>> = foreground
        .map(|f| f.iter().filter(|l| !l.is_empty()).collect())
        .unwrap_or_default();
    let voxel = if classes.is_empty() {
        None
    } else {
        let class = classes[rng.integer(0, classes.len() as i64 - 1) as usize];
        Some(class[rng.integer(0, class.len() as i64 - 1) as usize])
    };
    let mut origin = [0i64; 3];
    if offset == 1 {
        // 2-D: one slice.
        origin[0] = match voxel {
            Some(v) => v[1] as i64,
            None => rng.integer(0, shape[0] as i64 - 1),
        };
    }
    for (i, (&p, &pad)) in patch.iter().zip(extra_padding).enumerate() {
        let axis = offset + i;
        let (size, p) = (shape[axis] as i64, p as i64);
        let pad = (pad as i64).max(p - size);
        let lower = -((pad + 1) / 2);
        let upper = size + (pad + 1) / 2 - p;
        origin[axis] = match voxel {
            Some(v) => lower.max(v[axis + 1] as i64 - p / 2),
            None => rng.integer(lower, upper.max(lower)),
        };
    }
    origin
}

/// The `patch` box at `origin` of (C, Z, Y, X) data and (1, Z, Y, X) seg; outside the case
/// data is 0 and seg −1. A 2-D patch gives Z = 1.
pub fn crop_patch(
    data: ArrayView4<'_, f32>,
    seg: ArrayView4<'_, i16>,
    origin: [i64; 3],
    patch: &[usize],
) -> (Array4<f32>, Array4<i16>) {
    let full: Vec<usize> = std::iter::repeat_n(1, 3 - patch.len())
        .chain(patch.iter().copied())
        .collect();
    let (channels, z, y, x) = data.dim();
    let shape = [z, y, x];
    let mut out_data = Array4::<f32>::zeros((channels, full[0], full[1], full[2]));
    let mut out_seg = Array4::<i16>::from_elem((1, full[0], full[1], full[2]), -1);
    // The overlap of the box with the case, in case and in patch coordinates.
    let range = |axis: usize| {
        let start = origin[axis].max(0);
        let end = (origin[axis] + full[axis] as i64).min(shape[axis] as i64);
        (start, end.max(start))
    };
    let [(z0, z1), (y0, y1), (x0, x1)] = [range(0), range(1), range(2)];
    let local = |v: i64, axis: usize| (v - origin[axis]) as usize;
    if z1 > z0 && y1 > y0 && x1 > x0 {
        let (zs, ys, xs) = (
            z0 as usize..z1 as usize,
            y0 as usize..y1 as usize,
            x0 as usize..x1 as usize,
        );
        let (lz, ly, lx) = (
            local(z0, 0)..local(z1, 0),
            local(y0, 1)..local(y1, 1),
            local(x0, 2)..local(x1, 2),
        );
        out_data
            .slice_mut(s![.., lz.clone(), ly.clone(), lx.clone()])
            .assign(&data.slice(s![.., zs.clone(), ys.clone(), xs.clone()]));
        out_seg
            .slice_mut(s![.., lz, ly, lx])
            .assign(&seg.slice(s![.., zs, ys, xs]));
    }
    (out_data, out_seg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_third_of_a_batch_is_forced() {
        let forced = |b: usize| (0..b).filter(|&j| forced_foreground(j, b)).count();
        assert_eq!(forced(12), 4);
        assert_eq!(forced(2), 1);
        assert_eq!(forced(1), 0);
    }

    #[test]
    fn random_boxes_stay_within_nnunets_bounds() {
        let mut rng = RandomState::new(7);
        for _ in 0..500 {
            let o = patch_origin([5, 20, 30], &[16, 16], &[4, 6], None, &mut rng);
            assert!((0..5).contains(&o[0]));
            assert!((-2..=20 + 2 - 16).contains(&o[1]), "{o:?}");
            assert!((-3..=30 + 3 - 16).contains(&o[2]), "{o:?}");
        }
    }

    #[test]
    fn forced_boxes_contain_the_chosen_voxel() {
        let mut rng = RandomState::new(3);
        let locations = vec![vec![], vec![[0, 2, 17, 25]]];
        for _ in 0..20 {
            let o = patch_origin([5, 20, 30], &[8, 8], &[0, 0], Some(&locations), &mut rng);
            assert_eq!(o[0], 2);
            assert!(o[1] <= 17 && 17 < o[1] + 8 && o[2] <= 25 && 25 < o[2] + 8, "{o:?}");
        }
    }

    #[test]
    fn crops_pad_data_with_zero_and_seg_with_minus_one() {
        let data = Array4::<f32>::ones((1, 1, 4, 4));
        let seg = Array4::<i16>::from_elem((1, 1, 4, 4), 2);
        let (d, s) = crop_patch(data.view(), seg.view(), [0, -1, 2], &[3, 3]);
        assert_eq!(d.dim(), (1, 1, 3, 3));
        assert_eq!(d.iter().filter(|&&v| v == 1.0).count(), 4);
        assert_eq!(s[[0, 0, 0, 0]], -1);
        assert_eq!(s[[0, 0, 1, 0]], 2);
        assert_eq!(s[[0, 0, 1, 2]], -1);
    }
}
