//! nnU-Net's `resample_data_or_seg_to_shape`, reproduced numerically.
//!
//! nnU-Net resizes with `skimage.transform.resize(order, mode='edge', anti_aliasing=False)`,
//! which is `scipy.ndimage.zoom(grid_mode=True, mode='nearest')`: a sample of output index
//! `o` sits at input position `(o + 0.5)·in/out − 0.5`; order 3 is a cubic B-spline whose
//! coefficients come from the recursive prefilter on the input padded by 12 edge values;
//! order 1 is linear; positions beyond the ends use the nearest sample; the result is clipped
//! to the input's range. A zoom is separable, so each axis is one 1-D pass (exact for a
//! tensor-product spline). Arithmetic in f64, as nnU-Net's float64 resampling.
//!
//! Separate z (§3.8): when one axis is more than 3× coarser than the finest (in the current,
//! else the target spacing), slices are resized in-plane and that axis by nearest slice.

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

/// Resamples a segmentation: for each label in ascending order (−1 first), its one-hot mask
/// resized with order 1 claims the voxels where it reaches 0.5; later labels win; unclaimed
/// voxels are 0. Along a separate axis, nearest slice. The same shape gives the input back
/// (what the masks give then).
pub fn resample_seg(seg: ArrayView3<'_, i16>, shape: [usize; 3], separate: Option<usize>) -> Array3<i16> {
    if seg.shape() == shape {
        return seg.to_owned();
    }
    let mut present = vec![false; 1 << 16];
    seg.iter().for_each(|&v| present[usize::from(v as u16)] = true);
    // Ascending i16 order: the negative labels' bit patterns come after the positive ones.
    let labels = (i16::MIN..=i16::MAX).filter(|&v| present[usize::from(v as u16)]);
    let mut out = Array3::<i16>::zeros(shape);
    for label in labels {
        let mask = |seg: ArrayView3<'_, i16>| seg.mapv(|v| f64::from(u8::from(v == label)));
        let claim = |out: ndarray::ArrayViewMut3<'_, i16>, resized: ArrayView3<'_, f64>| {
            Zip::from(out).and(resized).for_each(|o, &r| {
                if r >= 0.5 {
                    *o = label;
                }
            });
        };
        match separate {
            None => claim(out.view_mut(), resize(mask(seg), shape, 1, &[0, 1, 2]).view()),
            Some(axis) => per_slice(
                seg.len_of(Axis(axis)),
                shape,
                axis,
                |i, slice_shape| {
                    let slice = seg.slice_axis(Axis(axis), ndarray::Slice::from(i..=i));
                    resize(mask(slice), slice_shape, 1, &in_plane(axis))
                },
                |o, slice| {
                    let target = out.slice_axis_mut(Axis(axis), ndarray::Slice::from(o..=o));
                    claim(target, slice);
                },
            ),
        }
    }
    out
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
fn per_slice(
    in_len: usize,
    shape: [usize; 3],
    axis: usize,
    resize_slice: impl Fn(usize, [usize; 3]) -> Array3<f64>,
    mut emit: impl FnMut(usize, ArrayView3<'_, f64>),
) {
    let mut slice_shape = shape;
    slice_shape[axis] = 1;
    let mut current: Option<(usize, Array3<f64>)> = None;
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
    fn separate_axis_needs_a_single_coarsest_axis() {
        assert_eq!(separate_z_axis([2.5, 0.8, 0.8], [2.5, 0.7, 0.7]), Some(0));
        assert_eq!(separate_z_axis([0.24, 1.25, 1.25], [1.0, 1.0, 1.0]), None);
        assert_eq!(separate_z_axis([1.0, 1.0, 1.0], [1.0, 1.0, 1.0]), None);
    }
}
