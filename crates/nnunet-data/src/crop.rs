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
    fill_holes(&mut mask);
    mask
}

/// Marks every background voxel that the border cannot reach (through face neighbours) as
/// foreground.
fn fill_holes(mask: &mut Array3<bool>) {
    let (nz, ny, nx) = mask.dim();
    let mut outside = Array3::from_elem((nz, ny, nx), false);
    let mut queue = VecDeque::new();
    for ((z, y, x), &m) in mask.indexed_iter() {
        let on_border = z == 0 || y == 0 || x == 0 || z + 1 == nz || y + 1 == ny || x + 1 == nx;
        if on_border && !m {
            outside[[z, y, x]] = true;
            queue.push_back([z, y, x]);
        }
    }
    while let Some([z, y, x]) = queue.pop_front() {
        let neighbours = [
            (z.wrapping_sub(1), y, x),
            (z + 1, y, x),
            (z, y.wrapping_sub(1), x),
            (z, y + 1, x),
            (z, y, x.wrapping_sub(1)),
            (z, y, x + 1),
        ];
        for (a, b, c) in neighbours {
            if a < nz && b < ny && c < nx && !mask[[a, b, c]] && !outside[[a, b, c]] {
                outside[[a, b, c]] = true;
                queue.push_back([a, b, c]);
            }
        }
    }
    Zip::from(mask).and(&outside).for_each(|m, &o| *m = !o);
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
    let mask = nonzero_mask(images);
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
}
