//! nnU-Net's `crop_to_nonzero`: the nonzero mask of all channels with its holes filled, the
//! tight bounding box of that mask, and the crop of image and segmentation to it, with
//! background outside the mask marked −1 in the segmentation.

use std::collections::VecDeque;

use ndarray::{s, Array3, Array4, ArrayView4, Zip};

/// A half-open box per axis, `[start, end)` for Z, Y, X.
pub type BoundingBox = [[usize; 2]; 3];

/// `OR_c (image[c] != 0)` with its holes filled (`scipy.ndimage.binary_fill_holes`, face
/// connectivity): background that cannot reach the array border becomes foreground.
pub fn nonzero_mask(images: ArrayView4<'_, f32>) -> Array3<bool> {
    let (_, z, y, x) = images.dim();
    let mut mask = Array3::from_elem((z, y, x), false);
    for channel in images.outer_iter() {
        Zip::from(&mut mask).and(&channel).for_each(|m, &v| *m |= v != 0.0);
    }
    // Background the border reaches is marked `true` in place, then the mask becomes the
    // nonzero voxels (recomputed) plus the background left unmarked: the holes.
    mark_outside(&mut mask);
    mask.mapv_inplace(|m| !m);
    for channel in images.outer_iter() {
        Zip::from(&mut mask).and(&channel).for_each(|m, &v| *m |= v != 0.0);
    }
    mask
}

/// Sets every `false` voxel that the border reaches through `false` face neighbours.
fn mark_outside(mask: &mut Array3<bool>) {
    let (nz, ny, nx) = mask.dim();
    // Flat (C-order) indices: a third of the memory of (z, y, x) triples on big borders.
    let mut queue = VecDeque::new();
    for ((z, y, x), m) in mask.indexed_iter_mut() {
        let on_border = z == 0 || y == 0 || x == 0 || z + 1 == nz || y + 1 == ny || x + 1 == nx;
        if on_border && !*m {
            *m = true;
            queue.push_back((z * ny + y) * nx + x);
        }
    }
    while let Some(index) = queue.pop_front() {
        let (z, y, x) = (index / (ny * nx), index / nx % ny, index % nx);
        let neighbours = [
            (z.wrapping_sub(1), y, x),
            (z + 1, y, x),
            (z, y.wrapping_sub(1), x),
            (z, y + 1, x),
            (z, y, x.wrapping_sub(1)),
            (z, y, x + 1),
        ];
        for (a, b, c) in neighbours {
            if a < nz && b < ny && c < nx && !mask[[a, b, c]] {
                mask[[a, b, c]] = true;
                queue.push_back((a * ny + b) * nx + c);
            }
        }
    }
}

/// [`bounding_box`] of [`nonzero_mask`], without building the mask: the box of the nonzero
/// voxels of any channel (the whole array when there are none). Filling holes cannot widen
/// it: everything outside the box is background that reaches the border within its slab.
pub fn nonzero_bounding_box(images: ArrayView4<'_, f32>) -> BoundingBox {
    let (_, nz, ny, nx) = images.dim();
    let mut bbox = [[usize::MAX, 0]; 3];
    for channel in images.outer_iter() {
        for (z, plane) in channel.outer_iter().enumerate() {
            for (y, row) in plane.outer_iter().enumerate() {
                let Some(first) = row.iter().position(|&v| v != 0.0) else {
                    continue;
                };
                let last = nx - 1 - row.iter().rev().position(|&v| v != 0.0).unwrap_or(0);
                for (axis, [lo, hi]) in [(0, [z, z]), (1, [y, y]), (2, [first, last])] {
                    bbox[axis][0] = bbox[axis][0].min(lo);
                    bbox[axis][1] = bbox[axis][1].max(hi + 1);
                }
            }
        }
    }
    if bbox[0][0] == usize::MAX {
        return [[0, nz], [0, ny], [0, nx]];
    }
    bbox
}

/// The tight half-open box of `mask`; the whole array when the mask is empty.
pub fn bounding_box(mask: &Array3<bool>) -> BoundingBox {
    let dims = [mask.dim().0, mask.dim().1, mask.dim().2];
    let mut bbox = [[usize::MAX, 0]; 3];
    for ((z, y, x), &m) in mask.indexed_iter() {
        if m {
            for (axis, i) in [z, y, x].into_iter().enumerate() {
                bbox[axis][0] = bbox[axis][0].min(i);
                bbox[axis][1] = bbox[axis][1].max(i + 1);
            }
        }
    }
    if bbox[0][0] == usize::MAX {
        return dims.map(|d| [0, d]);
    }
    bbox
}

/// The result of cropping a case.
#[derive(Debug, Clone, PartialEq)]
pub struct Cropped {
    /// The images inside the box, (C, Z, Y, X).
    pub data: Array4<f32>,
    /// The segmentation inside the box, (1, Z, Y, X): −1 where it was background outside
    /// the filled nonzero mask.
    pub seg: Array4<i16>,
    /// The box, in the uncropped array.
    pub bbox: BoundingBox,
}

/// Crops images and segmentation (same spatial shape) to the filled nonzero mask.
pub fn crop_to_nonzero(images: ArrayView4<'_, f32>, seg: ArrayView4<'_, i16>) -> Cropped {
    let bbox = nonzero_bounding_box(images);
    let [[z0, z1], [y0, y1], [x0, x1]] = bbox;
    let data = images.slice(s![.., z0..z1, y0..y1, x0..x1]).to_owned();
    let seg = seg.slice(s![.., z0..z1, y0..y1, x0..x1]).to_owned();
    mark_outside_background(data, seg, bbox)
}

/// [`crop_to_nonzero`] of arrays the caller gives up: when the box is the whole image (as for
/// most CT), they are kept as they are instead of copied; otherwise each is dropped as soon
/// as its crop is made.
pub fn crop_to_nonzero_owned(images: Array4<f32>, seg: Array4<i16>) -> Cropped {
    let bbox = nonzero_bounding_box(images.view());
    let [[z0, z1], [y0, y1], [x0, x1]] = bbox;
    let (_, nz, ny, nx) = images.dim();
    let (data, seg) = if bbox == [[0, nz], [0, ny], [0, nx]] {
        (images, seg)
    } else {
        let data = images.slice(s![.., z0..z1, y0..y1, x0..x1]).to_owned();
        drop(images);
        (data, seg.slice(s![.., z0..z1, y0..y1, x0..x1]).to_owned())
    };
    mark_outside_background(data, seg, bbox)
}

/// Marks background outside the filled nonzero mask as −1 in the cropped `seg`. The mask is
/// computed on the crop alone, with the same result: background on the box's faces touches
/// either the array border or the background outside the box, which reaches the border, and
/// a path from inside the box to the border leaves the box through such a voxel.
fn mark_outside_background(data: Array4<f32>, mut seg: Array4<i16>, bbox: BoundingBox) -> Cropped {
    let mask = nonzero_mask(data.view());
    for mut channel in seg.outer_iter_mut() {
        Zip::from(&mut channel).and(&mask).for_each(|v, &inside| {
            if *v == 0 && !inside {
                *v = -1;
            }
        });
    }
    Cropped { data, seg, bbox }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_are_filled_but_border_background_is_not() {
        // A hollow box (a hole inside) next to an open cup (background reaching the border).
        let mut image = Array4::<f32>::zeros((1, 5, 7, 7));
        image.slice_mut(s![0, 1..4, 1..6, 1..4]).fill(1.0);
        image.slice_mut(s![0, 2, 2..5, 2]).fill(0.0); // enclosed hole
        let mask = nonzero_mask(image.view());
        assert!(mask[[2, 3, 2]], "the enclosed hole is filled");
        assert!(!mask[[0, 0, 0]]);
        assert_eq!(bounding_box(&mask), [[1, 4], [1, 6], [1, 4]]);
    }

    #[test]
    fn crop_marks_outside_background_only() {
        let mut image = Array4::<f32>::zeros((1, 1, 4, 4));
        image.slice_mut(s![0, 0, 1..3, 1..3]).fill(5.0);
        image[[0, 0, 1, 1]] = 0.0; // touches the box edge but is inside the bbox
        let mut seg = Array4::<i16>::zeros((1, 1, 4, 4));
        seg[[0, 0, 1, 1]] = 2; // labelled voxel outside the mask keeps its label
        let cropped = crop_to_nonzero(image.view(), seg.view());
        assert_eq!(cropped.bbox, [[0, 1], [1, 3], [1, 3]]);
        assert_eq!(cropped.seg.iter().copied().collect::<Vec<_>>(), [2, 0, 0, 0]);
    }

    #[test]
    fn empty_mask_keeps_the_whole_image() {
        let image = Array4::<f32>::zeros((2, 2, 3, 4));
        let seg = Array4::<i16>::zeros((1, 2, 3, 4));
        let cropped = crop_to_nonzero(image.view(), seg.view());
        assert_eq!(cropped.bbox, [[0, 2], [0, 3], [0, 4]]);
        assert!(cropped.seg.iter().all(|&v| v == -1));
    }

    /// The straightforward crop (mask of the whole image, holes filled with a separate
    /// visited array, box of the mask) that the crop above must equal.
    fn reference_crop(images: ArrayView4<'_, f32>, seg: ArrayView4<'_, i16>) -> Cropped {
        let (_, nz, ny, nx) = images.dim();
        let mut mask = Array3::from_elem((nz, ny, nx), false);
        for channel in images.outer_iter() {
            Zip::from(&mut mask).and(&channel).for_each(|m, &v| *m |= v != 0.0);
        }
        let mut outside = Array3::from_elem((nz, ny, nx), false);
        let mut queue = VecDeque::new();
        for ((z, y, x), &m) in mask.indexed_iter() {
            if (z == 0 || y == 0 || x == 0 || z + 1 == nz || y + 1 == ny || x + 1 == nx) && !m {
                outside[[z, y, x]] = true;
                queue.push_back([z, y, x]);
            }
        }
        while let Some([z, y, x]) = queue.pop_front() {
            for [a, b, c] in [
                [z.wrapping_sub(1), y, x],
                [z + 1, y, x],
                [z, y.wrapping_sub(1), x],
                [z, y + 1, x],
                [z, y, x.wrapping_sub(1)],
                [z, y, x + 1],
            ] {
                if a < nz && b < ny && c < nx && !mask[[a, b, c]] && !outside[[a, b, c]] {
                    outside[[a, b, c]] = true;
                    queue.push_back([a, b, c]);
                }
            }
        }
        Zip::from(&mut mask).and(&outside).for_each(|m, &o| *m = !o);
        let bbox = bounding_box(&mask);
        let [[z0, z1], [y0, y1], [x0, x1]] = bbox;
        let data = images.slice(s![.., z0..z1, y0..y1, x0..x1]).to_owned();
        let mut seg = seg.slice(s![.., z0..z1, y0..y1, x0..x1]).to_owned();
        let mask = mask.slice(s![z0..z1, y0..y1, x0..x1]);
        for mut channel in seg.outer_iter_mut() {
            Zip::from(&mut channel).and(&mask).for_each(|v, &inside| {
                if *v == 0 && !inside {
                    *v = -1;
                }
            });
        }
        Cropped { data, seg, bbox }
    }

    #[test]
    fn crops_equal_the_whole_image_computation() {
        // Shells with holes, cups open to the border, and scattered voxels, some touching
        // the border, in 1 or 2 channels; the segmentation marks random voxels.
        let mut state = 12345u64;
        let mut next = |n: usize| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 33) % n as u64) as usize
        };
        let (mut cropped, mut filled) = (0, 0);
        for trial in 0..200 {
            let (c, z, y, x) = (1 + trial % 2, 1 + next(10), 1 + next(12), 1 + next(12));
            let mut images = Array4::<f32>::zeros((c, z, y, x));
            for _ in 0..1 + next(3) {
                let (ez, ey, ex) = (1 + next(z), 1 + next(y), 1 + next(x));
                let (z0, y0, x0) = (next(z - ez + 1), next(y - ey + 1), next(x - ex + 1));
                let (z1, y1, x1) = (z0 + ez, y0 + ey, x0 + ex);
                let channel = next(c);
                images
                    .slice_mut(s![channel, z0..z1, y0..y1, x0..x1])
                    .fill(1.0 + next(3) as f32);
                if z1 - z0 > 2 && y1 - y0 > 2 && x1 - x0 > 2 {
                    // Hollow it out: a hole, or a cup when it reaches a face.
                    let open = next(2);
                    images
                        .slice_mut(s![channel, z0 + 1..z1 - open, y0 + 1..y1 - 1, x0 + 1..x1 - 1])
                        .fill(0.0);
                }
            }
            for _ in 0..next(3) {
                images[[next(c), next(z), next(y), next(x)]] = -2.0;
            }
            let mut seg = Array4::<i16>::zeros((1, z, y, x));
            for _ in 0..next(6) {
                seg[[0, next(z), next(y), next(x)]] = 1 + next(2) as i16;
            }
            let expected = reference_crop(images.view(), seg.view());
            assert_eq!(crop_to_nonzero(images.view(), seg.view()), expected, "trial {trial}");
            assert_eq!(
                crop_to_nonzero_owned(images.clone(), seg.clone()),
                expected,
                "trial {trial}"
            );
            assert_eq!(
                bounding_box(&nonzero_mask(images.view())),
                expected.bbox,
                "trial {trial}"
            );
            assert_eq!(nonzero_bounding_box(images.view()), expected.bbox, "trial {trial}");
            cropped += usize::from(expected.bbox != [[0, z], [0, y], [0, x]]);
            let nonzero = images.map_axis(ndarray::Axis(0), |v| v.iter().any(|&v| v != 0.0));
            filled += usize::from(nonzero_mask(images.view()) != nonzero);
        }
        assert!(
            cropped > 50 && filled > 10,
            "{cropped} cropped, {filled} with holes filled"
        );
    }
}
