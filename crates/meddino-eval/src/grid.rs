//! Label maps as 3-D grids, and bounding boxes.
//!
//! Everything works on C-ordered 3-D arrays; a 2-D label map (Y, X) becomes (1, Y, X) with
//! [`Dims::Two`], which tells neighbourhood code to ignore the leading axis.

use ndarray::{ArrayView3, ArrayViewD, Axis, Ix3};

use crate::error::{Error, Result};

/// Whether a grid holds a 2-D image (leading axis of length 1, ignored) or a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dims {
    Two,
    Three,
}

impl Dims {
    /// The axes that take part in neighbourhoods.
    pub(crate) fn axes(self) -> std::ops::Range<usize> {
        match self {
            Dims::Two => 1..3,
            Dims::Three => 0..3,
        }
    }
}

/// Voxels checked at once when a pass skips a run of a label that is in no class
/// (background), compared branch-free so that the check vectorises.
pub(crate) const SKIP_CHUNK: usize = 32;

/// The index of a label among the classes scored, remembering the last lookup: labels come
/// in runs, and most voxels are background, which is in no class and would otherwise scan
/// every class each time.
#[derive(Debug)]
pub(crate) struct ClassLookup<'a, L> {
    classes: &'a [L],
    last: Option<(L, Option<usize>)>,
}

impl<'a, L: Copy + PartialEq> ClassLookup<'a, L> {
    pub(crate) fn new(classes: &'a [L]) -> Self {
        Self { classes, last: None }
    }

    /// The position of `label` in the classes, or `None` when it is in none.
    pub(crate) fn index(&mut self, label: L) -> Option<usize> {
        match self.last {
            Some((last, index)) if last == label => index,
            _ => {
                let index = self.classes.iter().position(|&c| c == label);
                self.last = Some((label, index));
                index
            }
        }
    }
}

/// A label map as a 3-D view plus its spacing in array order.
#[derive(Debug, Clone)]
pub(crate) struct Grid<'a, L> {
    pub(crate) data: ArrayView3<'a, L>,
    pub(crate) spacing: [f64; 3],
    pub(crate) dims: Dims,
}

/// Checks a prediction/reference pair and spacing, and views both as 3-D grids.
pub(crate) fn grids<'a, 'b, L>(
    prediction: ArrayViewD<'a, L>,
    reference: ArrayViewD<'b, L>,
    spacing: &[f64],
) -> Result<(Grid<'a, L>, Grid<'b, L>)> {
    if prediction.shape() != reference.shape() {
        return Err(Error::ShapeMismatch {
            prediction: prediction.shape().to_vec(),
            reference: reference.shape().to_vec(),
        });
    }
    let shape = reference.shape().to_vec();
    let invalid_spacing = || Error::InvalidSpacing {
        spacing: spacing.to_vec(),
        shape: shape.clone(),
    };
    if spacing.len() != shape.len() || spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        return Err(invalid_spacing());
    }
    let (dims, spacing3) = match shape.len() {
        2 => (Dims::Two, [1.0, spacing[0], spacing[1]]),
        3 => (Dims::Three, [spacing[0], spacing[1], spacing[2]]),
        _ => return Err(Error::UnsupportedDimensionality { shape }),
    };
    Ok((
        Grid {
            data: to_3d(prediction, dims),
            spacing: spacing3,
            dims,
        },
        Grid {
            data: to_3d(reference, dims),
            spacing: spacing3,
            dims,
        },
    ))
}

/// A 2-D or 3-D view as 3-D (rank checked by the caller).
fn to_3d<L>(view: ArrayViewD<'_, L>, dims: Dims) -> ArrayView3<'_, L> {
    let view = if dims == Dims::Two {
        view.insert_axis(Axis(0))
    } else {
        view
    };
    view.into_dimensionality::<Ix3>()
        .unwrap_or_else(|_| unreachable!("rank checked by the caller"))
}

/// An inclusive box `[min, max]` per axis; may extend past the array (for margins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BoundingBox {
    pub(crate) min: [isize; 3],
    pub(crate) max: [isize; 3],
}

impl BoundingBox {
    pub(crate) fn point(index: [usize; 3]) -> Self {
        let p = index.map(|i| i as isize);
        Self { min: p, max: p }
    }

    pub(crate) fn include(&mut self, index: [usize; 3]) {
        for ((min, max), &i) in self.min.iter_mut().zip(&mut self.max).zip(&index) {
            *min = (*min).min(i as isize);
            *max = (*max).max(i as isize);
        }
    }

    pub(crate) fn union(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(mut a), Some(b)) => {
                for axis in 0..3 {
                    a.min[axis] = a.min[axis].min(b.min[axis]);
                    a.max[axis] = a.max[axis].max(b.max[axis]);
                }
                Some(a)
            }
            (a, b) => a.or(b),
        }
    }

    /// Grown by `low` before and `high` after on the given axes.
    pub(crate) fn grown(mut self, axes: std::ops::Range<usize>, low: isize, high: isize) -> Self {
        for axis in axes {
            self.min[axis] -= low;
            self.max[axis] += high;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;

    use super::*;

    #[test]
    fn two_d_maps_gain_a_leading_axis() {
        let a: Array2<u8> = Array2::zeros((4, 5));
        let (p, r) = grids(a.view().into_dyn(), a.view().into_dyn(), &[2.0, 0.5]).expect("valid");
        assert_eq!(p.data.dim(), (1, 4, 5));
        assert_eq!(r.spacing, [1.0, 2.0, 0.5]);
        assert_eq!(p.dims, Dims::Two);
    }

    #[test]
    fn rejects_mismatched_shapes_and_bad_spacing() {
        let a: Array2<u8> = Array2::zeros((4, 5));
        let b: Array2<u8> = Array2::zeros((5, 4));
        assert!(matches!(
            grids(a.view().into_dyn(), b.view().into_dyn(), &[1.0, 1.0]),
            Err(Error::ShapeMismatch { .. })
        ));
        for spacing in [&[1.0][..], &[1.0, 0.0], &[1.0, f64::NAN], &[1.0, 1.0, 1.0]] {
            assert!(matches!(
                grids(a.view().into_dyn(), a.view().into_dyn(), spacing),
                Err(Error::InvalidSpacing { .. })
            ));
        }
    }
}
