//! nnU-Net's `resample_data_or_seg_to_shape`, reproduced numerically.
//!
//! nnU-Net resizes with `skimage.transform.resize(order, mode='edge', anti_aliasing=False)`,
//! which is `scipy.ndimage.zoom(grid_mode=True, mode='nearest')`: a sample of output index
//! `o` sits at input position `(o + 0.5)·in/out − 0.5`; order 3 is a cubic B-spline whose
//! coefficients come from the recursive prefilter on the input padded by 12 edge values;
//! order 1 is linear; positions beyond the ends use the nearest sample; the result is clipped
//! to the input's range. A zoom is separable, so for data each axis is one 1-D pass (exact
//! for a tensor-product spline up to rounding). Arithmetic in f64, as nnU-Net's float64
//! resampling.
//!
//! Separate z (§3.8): when one axis is more than 3× coarser than the finest (in the current,
//! else the target spacing), slices are resized in-plane and that axis by nearest slice.
//!
//! # Segmentations
//!
//! nnU-Net 2.8.1 resizes a label map with batchgenerators' `resize_segmentation`, and what
//! that does depends on the batchgenerators release it is installed with
//! (`batchgenerators>=0.25.1`). Up to 0.25.3 each label's one-hot mask, resized with order
//! 1, claimed the voxels where it reached 0.5, in ascending label order. 0.25.5, which a
//! fresh install of nnunetv2 2.8.1 pulls and which made the reference data, takes the
//! **argmax** over the labels' resized masks instead (`_resample_seg_by_argmax`,
//! `seg_tiebreak='nearest'`): the label with the largest interpolated indicator wins; an
//! exact tie goes to the order-0 (nearest neighbour) sample's label if that is one of the
//! tied labels, else to the smallest tied label. The two rules differ only at exact ties,
//! which are common: wherever a sample position falls exactly halfway between two input
//! voxels of different labels, both score exactly 0.5. The old rule gave such a voxel the
//! larger label; the new one gives it the label of the voxel at `floor(position + 0.5)`, the
//! upper one. That was the 0.03–0.08 % (`2d`) and 0.002 % (`2d_896`) of label-border voxels
//! this crate used to get wrong.
//!
//! Because ties are decided by exact equality of float64 scores, and near ties by which
//! score is larger, [`resample_seg`] computes every score with the very operations of
//! scipy's `NI_ZoomShift` for order 1, not with the separable passes used for data (which
//! are equal in exact arithmetic but round differently):
//!
//! - per axis and output index `k`: `zoom = in as f64 / out as f64`,
//!   `cc = (k + 0.5)·zoom − 0.5`, `x = cc − floor(cc)`, `w_lo = 1 − x`, `w_hi = 1 − w_lo`
//!   (scipy makes the last weight one minus the others, so `w_hi` need not equal `x`); taps
//!   `floor(cc)` and `floor(cc) + 1`, clamped to the axis (mode `'nearest'`); the order-0
//!   sample is `floor(cc + 0.5)`, clamped;
//! - per output voxel, the corners in C order (last axis fastest), each weighted
//!   `(w_axis0·w_axis1)·w_axis2` (scipy's `coeff *= w` per axis on a 0/1 mask value), and a
//!   label's score is `0.0 +` its corners' weights summed in that order (the other labels'
//!   corners add `+0.0`, which changes nothing); then clipped to at most 1 (skimage's
//!   `clip=True`).
//!
//! The separable passes happened to pick the same labels on the reference set and on random
//! label maps tried while this was written; doing scipy's operations makes equality a
//! property of the code rather than of the data.
//!
//! An axis whose length does not change has `zoom = 1`, so `cc = k`, `w_lo = 1`, `w_hi = 0`:
//! its upper tap only adds zeros and is skipped, and a factor 1 leaves a product unchanged.
//! So a slice resized in-plane (a `(1, Y, X)` array here) scores exactly like nnU-Net's 2-D
//! `resize` of that slice. Labels absent from a voxel's corners score exactly 0 and cannot
//! win, so the argmax runs over at most 8 corner labels per voxel, in one pass for all
//! labels: faster than the one resize per label that nnU-Net (and this crate before) does.

use ndarray::{Array3, ArrayView1, ArrayView3, Axis, Zip};

/// Edge padding scipy adds before prefiltering for `mode='nearest'`.
const PREFILTER_PAD: usize = 12;

/// Cubic B-spline interpolation coefficients of a line (mirror boundary), `f64`.
fn cubic_coefficients(line: &[f64]) -> Vec<f64> {
    let n = line.len();
    if n < 2 {
        return line.to_vec();
    }
    let z = 3f64.sqrt() - 2.0;
    let mut c: Vec<f64> = line.iter().map(|v| v * 6.0).collect();
    // Causal initialisation for a mirror-symmetric extension (exact sum).
    let zn = z.powi(n as i32 - 1);
    let mut sum = c[0] + zn * c[n - 1];
    let z2n = zn * zn;
    let mut zk = z;
    for &ck in &c[1..n - 1] {
        sum += (zk + z2n / zk) * ck;
        zk *= z;
    }
    c[0] = sum / (1.0 - z2n);
    for k in 1..n {
        c[k] += z * c[k - 1];
    }
    c[n - 1] = (z / (z * z - 1.0)) * (c[n - 1] + z * c[n - 2]);
    for k in (0..n - 1).rev() {
        c[k] = z * (c[k + 1] - c[k]);
    }
    c
}

/// Resamples one line to `out_len` samples with spline order 1 or 3.
fn resample_line(line: ArrayView1<'_, f64>, out_len: usize, order: u8, out: &mut [f64]) {
    let n = line.len();
    let scale = n as f64 / out_len as f64;
    if order >= 3 {
        let mut padded = Vec::with_capacity(n + 2 * PREFILTER_PAD);
        padded.extend(std::iter::repeat_n(line[0], PREFILTER_PAD));
        padded.extend(line.iter().copied());
        padded.extend(std::iter::repeat_n(line[n - 1], PREFILTER_PAD));
        let coefficients = cubic_coefficients(&padded);
        let last = coefficients.len() as isize - 1;
        let tap = |i: isize| coefficients[i.clamp(0, last) as usize];
        for (o, out) in out.iter_mut().enumerate() {
            let position = (o as f64 + 0.5) * scale - 0.5 + PREFILTER_PAD as f64;
            let base = position.floor();
            let t = position - base;
            let i = base as isize;
            let w = [
                (1.0 - t).powi(3) / 6.0,
                (3.0 * t.powi(3) - 6.0 * t * t + 4.0) / 6.0,
                (-3.0 * t.powi(3) + 3.0 * t * t + 3.0 * t + 1.0) / 6.0,
                t.powi(3) / 6.0,
            ];
            *out = w[0] * tap(i - 1) + w[1] * tap(i) + w[2] * tap(i + 1) + w[3] * tap(i + 2);
        }
    } else {
        let last = n as isize - 1;
        let tap = |i: isize| line[i.clamp(0, last) as usize];
        for (o, out) in out.iter_mut().enumerate() {
            let position = (o as f64 + 0.5) * scale - 0.5;
            let base = position.floor();
            let t = position - base;
            let i = base as isize;
            *out = if order == 0 {
                tap((position + 0.5).floor() as isize)
            } else {
                (1.0 - t) * tap(i) + t * tap(i + 1)
            };
        }
    }
}

/// Resamples `volume` along `axis` to `out_len` samples (returned as it is when its length
/// already is `out_len`).
fn resample_axis(volume: Array3<f64>, axis: usize, out_len: usize, order: u8) -> Array3<f64> {
    let mut shape = [volume.dim().0, volume.dim().1, volume.dim().2];
    if shape[axis] == out_len {
        return volume;
    }
    shape[axis] = out_len;
    let mut out = Array3::<f64>::zeros(shape);
    let mut buffer = vec![0.0; out_len];
    Zip::from(out.lanes_mut(Axis(axis)))
        .and(volume.lanes(Axis(axis)))
        .for_each(|mut target, source| {
            resample_line(source, out_len, order, &mut buffer);
            target.iter_mut().zip(&buffer).for_each(|(t, &b)| *t = b);
        });
    out
}

/// skimage's `resize` of a volume along `axes` (the others keep their length), clipped to
/// the input's range. Consumes `volume`: an axis whose length does not change costs nothing.
fn resize(volume: Array3<f64>, shape: [usize; 3], order: u8, axes: &[usize]) -> Array3<f64> {
    let (lo, hi) = volume.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
        (lo.min(v), hi.max(v))
    });
    let mut out = volume;
    for &axis in axes {
        out = resample_axis(out, axis, shape[axis], order);
    }
    if order > 0 {
        out.mapv_inplace(|v| v.clamp(lo, hi));
    }
    out
}

/// The axis to treat separately (§3.8), if any.
pub fn separate_z_axis(current_spacing: [f64; 3], new_spacing: [f64; 3]) -> Option<usize> {
    let anisotropic_axis = |spacing: [f64; 3]| {
        let max = spacing.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let min = spacing.iter().copied().fold(f64::INFINITY, f64::min);
        (max / min > 3.0).then(|| {
            let at_max: Vec<usize> = (0..3).filter(|&a| spacing[a] == max).collect();
            // Two or three axes sharing the maximum: no separate axis.
            (at_max.len() == 1).then_some(at_max[0])
        })
    };
    match anisotropic_axis(current_spacing) {
        Some(axis) => axis,
        None => anisotropic_axis(new_spacing).flatten(),
    }
}

/// Resamples one channel of data (order 3 in-plane or everywhere, nearest slice along a
/// separate axis), computing in f64.
pub fn resample_data(channel: ArrayView3<'_, f32>, shape: [usize; 3], separate: Option<usize>) -> Array3<f32> {
    resample_channel(channel, shape, separate, 3)
}

/// Resamples one channel of predicted logits back to the original geometry, as nnU-Net's
/// `resampling_fn_probabilities` (order 1 in-plane or everywhere, nearest slice along a
/// separate axis), computing in f64.
pub fn resample_probabilities(channel: ArrayView3<'_, f32>, shape: [usize; 3], separate: Option<usize>) -> Array3<f32> {
    resample_channel(channel, shape, separate, 1)
}

fn resample_channel(
    channel: ArrayView3<'_, f32>,
    shape: [usize; 3],
    separate: Option<usize>,
    order: u8,
) -> Array3<f32> {
    if channel.shape() == shape {
        return channel.to_owned();
    }
    match separate {
        None => resize(channel.mapv(f64::from), shape, order, &[0, 1, 2]).mapv(|v| v as f32),
        Some(axis) => {
            let mut out = Array3::<f32>::zeros(shape);
            per_slice(
                channel.len_of(Axis(axis)),
                shape,
                axis,
                |i, slice_shape| {
                    let slice = channel.slice_axis(Axis(axis), ndarray::Slice::from(i..=i));
                    resize(slice.mapv(f64::from), slice_shape, order, &in_plane(axis))
                },
                |o, slice| {
                    Zip::from(out.slice_axis_mut(Axis(axis), ndarray::Slice::from(o..=o)))
                        .and(slice)
                        .for_each(|t, &v| *t = v as f32);
                },
            );
            out
        }
    }
}

/// Resamples a segmentation as nnU-Net 2.8.1 with batchgenerators 0.25.5 does (module docs):
/// per voxel, the label whose one-hot mask, resized with order 1, scores highest; an exact
/// tie goes to the nearest-neighbour label when that is tied, else to the smallest tied label.
/// Along a separate axis, nearest slice. The same shape gives the input back.
pub fn resample_seg(seg: ArrayView3<'_, i16>, shape: [usize; 3], separate: Option<usize>) -> Array3<i16> {
    if seg.shape() == shape {
        return seg.to_owned();
    }
    match separate {
        None => resize_labels(seg, shape),
        Some(axis) => {
            let mut out = Array3::<i16>::zeros(shape);
            per_slice(
                seg.len_of(Axis(axis)),
                shape,
                axis,
                |i, slice_shape| resize_labels(seg.slice_axis(Axis(axis), ndarray::Slice::from(i..=i)), slice_shape),
                |o, slice| {
                    out.slice_axis_mut(Axis(axis), ndarray::Slice::from(o..=o))
                        .assign(&slice);
                },
            );
            out
        }
    }
}

/// scipy's order-1 `zoom` taps along one axis (`NI_ZoomShift`, `grid_mode=True`,
/// mode `'nearest'`), per output index, plus the order-0 sample.
struct LinearTaps {
    /// Input indices of the lower and upper tap, clamped.
    index: Vec<[usize; 2]>,
    /// `1 − x` and `1 − (1 − x)`, as scipy computes them.
    weight: Vec<[f64; 2]>,
    /// The order-0 sample `floor(cc + 0.5)`, clamped.
    nearest: Vec<usize>,
    /// 2, or 1 when the length stays (the upper tap then weighs exactly 0).
    taps: usize,
}

impl LinearTaps {
    fn new(in_len: usize, out_len: usize) -> Self {
        let zoom = in_len as f64 / out_len as f64;
        let last = in_len as f64 - 1.0;
        let clamp = |i: f64| i.clamp(0.0, last) as usize;
        let mut index = Vec::with_capacity(out_len);
        let mut weight = Vec::with_capacity(out_len);
        let mut nearest = Vec::with_capacity(out_len);
        for k in 0..out_len {
            let cc = (k as f64 + 0.5) * zoom - 0.5;
            let start = cc.floor();
            let lower = 1.0 - (cc - start);
            index.push([clamp(start), clamp(start + 1.0)]);
            weight.push([lower, 1.0 - lower]);
            nearest.push(clamp((cc + 0.5).floor()));
        }
        let taps = if in_len == out_len { 1 } else { 2 };
        Self {
            index,
            weight,
            nearest,
            taps,
        }
    }
}

/// `resize_segmentation(seg, shape, order=1)` of one volume (or of one slice, as a volume
/// with an axis of length 1 that keeps its length): see the module docs for the arithmetic.
fn resize_labels(seg: ArrayView3<'_, i16>, shape: [usize; 3]) -> Array3<i16> {
    if seg.shape() == shape {
        return seg.to_owned();
    }
    if seg.is_empty() {
        return Array3::zeros(shape);
    }
    let seg = seg.as_standard_layout();
    let input = seg.as_slice().expect("standard layout");
    let (d0, d1, d2) = seg.dim();
    let [t0, t1, t2] = [(d0, 0), (d1, 1), (d2, 2)].map(|(n, a)| LinearTaps::new(n, shape[a]));
    let mut out = Array3::<i16>::zeros(shape);
    let rows = out
        .as_slice_mut()
        .expect("standard layout")
        .chunks_exact_mut(shape[2].max(1));
    // The corners of the first two axes for one output row: input offset and weight.
    let mut row_corners: Vec<(usize, f64)> = Vec::with_capacity(4);
    for ((o0, o1), row) in (0..shape[0])
        .flat_map(|o0| (0..shape[1]).map(move |o1| (o0, o1)))
        .zip(rows)
    {
        row_corners.clear();
        for a in 0..t0.taps {
            for b in 0..t1.taps {
                let offset = (t0.index[o0][a] * d1 + t1.index[o1][b]) * d2;
                row_corners.push((offset, t0.weight[o0][a] * t1.weight[o1][b]));
            }
        }
        let nearest_row = (t0.nearest[o0] * d1 + t1.nearest[o1]) * d2;
        for (o2, target) in row.iter_mut().enumerate() {
            let mut labels = [0i16; 8];
            let mut scores = [0f64; 8];
            let mut distinct = 0;
            for &(offset, weight) in &row_corners {
                for c in 0..t2.taps {
                    let label = input[offset + t2.index[o2][c]];
                    let w = weight * t2.weight[o2][c];
                    match labels[..distinct].iter().position(|&l| l == label) {
                        Some(j) => scores[j] += w,
                        None => {
                            labels[distinct] = label;
                            scores[distinct] = w;
                            distinct += 1;
                        }
                    }
                }
            }
            *target = if distinct == 1 {
                labels[0]
            } else {
                let nearest = input[nearest_row + t2.nearest[o2]];
                pick_label(&labels[..distinct], &mut scores[..distinct], nearest)
            };
        }
    }
    out
}

/// The argmax over the corner labels' scores (clipped to 1 as skimage does): an exact tie
/// goes to `nearest` if it is tied, else to the smallest tied label.
fn pick_label(labels: &[i16], scores: &mut [f64], nearest: i16) -> i16 {
    scores.iter_mut().for_each(|s| *s = s.min(1.0));
    let top = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut winner = i16::MAX;
    for (&label, &score) in labels.iter().zip(scores.iter()) {
        if score == top {
            if label == nearest {
                return nearest;
            }
            winner = winner.min(label);
        }
    }
    winner
}

fn in_plane(axis: usize) -> Vec<usize> {
    (0..3).filter(|&a| a != axis).collect()
}

/// Which input slice each of `out_len` output slices takes along a separate axis: the
/// order-0 zoom of [`resample_line`] (identity when the length stays).
fn nearest_slices(in_len: usize, out_len: usize) -> Vec<usize> {
    if in_len == out_len || in_len == 0 {
        return (0..in_len).collect();
    }
    let scale = in_len as f64 / out_len as f64;
    let last = in_len as isize - 1;
    (0..out_len)
        .map(|o| {
            let position = (o as f64 + 0.5) * scale - 0.5;
            (position + 0.5).floor().clamp(0.0, last as f64) as usize
        })
        .collect()
}

/// Resamples slice by slice along `axis`: `resize_slice(i, slice_shape)` gives input slice `i`
/// resized in-plane (a (1, Y, X)-like array, the axis of length 1), and `emit(o, slice)`
/// receives it for each output slice `o` that takes it by nearest slice (order_z = 0), in
/// output order; each input slice is resized at most once and only one is held at a time.
fn per_slice<T>(
    in_len: usize,
    shape: [usize; 3],
    axis: usize,
    resize_slice: impl Fn(usize, [usize; 3]) -> Array3<T>,
    mut emit: impl FnMut(usize, ArrayView3<'_, T>),
) {
    let mut slice_shape = shape;
    slice_shape[axis] = 1;
    let mut current: Option<(usize, Array3<T>)> = None;
    for (o, i) in nearest_slices(in_len, shape[axis]).into_iter().enumerate() {
        let slice = match current {
            Some((held, ref slice)) if held == i => slice,
            _ => &current.insert((i, resize_slice(i, slice_shape))).1,
        };
        emit(o, slice.view());
    }
}

/// `compute_new_shape`: `round(old_spacing / new_spacing · old_shape)` per axis (ties to even).
pub fn new_shape(shape: [usize; 3], current_spacing: [f64; 3], new_spacing: [f64; 3]) -> [usize; 3] {
    [0, 1, 2].map(|a| (current_spacing[a] / new_spacing[a] * shape[a] as f64).round_ties_even() as usize)
}

#[cfg(test)]
mod tests {
    use ndarray::Array1;

    use super::*;

    #[test]
    fn identity_zoom_reproduces_the_input() {
        let line = Array1::from(vec![1.0, 5.0, -2.0, 3.0, 0.5]);
        for order in [1, 3] {
            let mut out = vec![0.0; 5];
            resample_line(line.view(), 5, order, &mut out);
            for (a, b) in out.iter().zip(line.iter()) {
                assert!((a - b).abs() < 1e-9, "order {order}: {out:?}");
            }
        }
    }

    #[test]
    fn linear_upsampling_uses_pixel_centres() {
        // 2 → 4: positions −0.25, 0.25, 0.75, 1.25 → clamped ends.
        let line = Array1::from(vec![0.0, 4.0]);
        let mut out = vec![0.0; 4];
        resample_line(line.view(), 4, 1, &mut out);
        assert_eq!(out, [0.0, 1.0, 3.0, 4.0]);
    }

    #[test]
    fn an_exact_tie_goes_to_the_nearest_neighbour() {
        // 2 → 1 samples position 0.5: both labels score exactly 0.5, and the order-0 sample
        // floor(0.5 + 0.5) = 1 is the upper voxel. The old `>= 0.5` rule gave 1 both times.
        for (line, expected) in [([1i16, 0], 0i16), ([0, 1], 1), ([2, 1], 1), ([1, 2], 2)] {
            let seg = Array3::from_shape_vec((1, 1, 2), line.to_vec()).expect("shape");
            for separate in [None, Some(0)] {
                let out = resample_seg(seg.view(), [1, 1, 1], separate);
                assert_eq!(out[[0, 0, 0]], expected, "{line:?}, separate {separate:?}");
            }
        }
    }

    #[test]
    fn a_tie_the_nearest_neighbour_lost_goes_to_the_smallest_label() {
        // batchgenerators' example: a 2×2×2 block sampled at its centre scores 1 and 2 at
        // 0.375 each and 3 at 0.25; the nearest neighbour (the last corner) is a 3.
        let seg = Array3::from_shape_vec((2, 2, 2), vec![3i16, 1, 1, 1, 2, 2, 2, 3]).expect("shape");
        assert_eq!(resample_seg(seg.view(), [1, 1, 1], None)[[0, 0, 0]], 1);
    }

    #[test]
    fn otherwise_the_larger_score_wins() {
        // 3 → 2 samples positions 0.25 and 1.75: weights 0.75/0.25, no tie.
        let seg = Array3::from_shape_vec((1, 1, 3), vec![4i16, 7, 9]).expect("shape");
        let out = resample_seg(seg.view(), [1, 1, 2], None);
        assert_eq!(out.as_slice().expect("contiguous"), &[4, 9]);
    }

    #[test]
    fn label_weights_are_scipys() {
        // 71 → 60 (phantom_003's rows, reversed): output 35 sits at 29.5 exactly in f64, so
        // its weights are exactly one half; and the upper weight is 1 − (1 − x), not x.
        let taps = LinearTaps::new(60, 71);
        assert_eq!(taps.weight[35], [0.5, 0.5]);
        assert_eq!(taps.index[35], [29, 30]);
        assert_eq!(taps.nearest[35], 30);
        for (k, w) in taps.weight.iter().enumerate() {
            let cc = (k as f64 + 0.5) * (60.0 / 71.0) - 0.5;
            assert_eq!(w[1], 1.0 - (1.0 - (cc - cc.floor())), "{k}");
        }
        let same = LinearTaps::new(5, 5);
        assert_eq!(same.taps, 1);
        assert!(same.weight.iter().all(|w| *w == [1.0, 0.0]));
    }

    #[test]
    fn separate_axis_needs_a_single_coarsest_axis() {
        assert_eq!(separate_z_axis([2.5, 0.8, 0.8], [2.5, 0.7, 0.7]), Some(0));
        assert_eq!(separate_z_axis([0.24, 1.25, 1.25], [1.0, 1.0, 1.0]), None);
        assert_eq!(separate_z_axis([1.0, 1.0, 1.0], [1.0, 1.0, 1.0]), None);
    }
}
