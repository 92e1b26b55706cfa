//! Distances from each point of one set of grid points to the nearest point of another, with
//! the reference libraries' float64 arithmetic.
//!
//! MONAI 1.6 (on CPU) queries scipy's `KDTree` built on the target voxels' coordinates
//! `index · spacing`; DeepMind's surface-distance reads `distance_transform_edt(~target,
//! sampling=spacing)` at the source points. Both then compute `sqrt((d₀² + d₁²) + d₂²)`,
//! summing the axes in order; they differ in the per-axis difference `d`
//! ([`Arithmetic`]). We do the same, so our distances are theirs bit for bit (up to which of
//! two equally near targets is taken, whose distances can differ in the last bit). That
//! matters because MONAI rounds them to float32 and compares with the tolerance there: ten
//! voxels of 1.2 mm (the float32 pixdim 1.2000000476837158) are 12.000000476837158 mm,
//! exactly halfway between two float32 values, and must round to 12.0 as scipy's number does.
//!
//! Two searches find the nearest points, and [`nearest_distances`] takes the cheaper for the
//! sizes at hand:
//! - dense: a feature transform ([`crate::edt`]) over the bounding box of both sets, whose
//!   cost follows the box volume; best when the surfaces fill their box, as a prediction
//!   close to its reference does;
//! - sparse: a k-d tree over the target points, whose cost follows the number of points;
//!   best when the box is mostly empty, as when scattered false-positive islands stretch a
//!   class's box over the whole volume.

use ndarray::Array3;
use rayon::prelude::*;

use crate::edt::{feature_transform, NO_FEATURE};

/// A point on a grid: its index along each axis (z, y, x).
pub(crate) type Point = [i32; 3];

/// How the per-axis difference of two points is formed in mm. The two agree whenever the
/// spacing is a float32 value (as NIfTI stores it), where every product is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arithmetic {
    /// MONAI's: scipy's `KDTree` over coordinates `index · spacing`, so `i·s − j·s`.
    ScaledCoordinates,
    /// DeepMind's: scipy's `distance_transform_edt` scales the offset, `(i − j)·s`.
    ScaledOffsets,
}

impl Arithmetic {
    /// The difference along `axis`, in mm, from `b` to `a`.
    fn difference(self, a: i32, b: i32, spacing: f64) -> f64 {
        match self {
            Self::ScaledCoordinates => f64::from(a) * spacing - f64::from(b) * spacing,
            Self::ScaledOffsets => (i64::from(a) - i64::from(b)) as f64 * spacing,
        }
    }

    /// The squared distance: the axes' squares added in order, left to right.
    fn squared_distance(self, a: Point, b: Point, spacing: [f64; 3]) -> f64 {
        let term = |axis: usize| {
            let d = self.difference(a[axis], b[axis], spacing[axis]);
            d * d
        };
        term(0) + term(1) + term(2)
    }
}

/// Cost of the dense search per voxel of the bounding box, against
/// [`SPARSE_COST_PER_POINT`]. Measured on one thread of the project's 2-core Intel Xeon with
/// `metrics_bench`'s organs: 50–75 ns per voxel, and 230–540 ns per point of both sets for the sparse search
/// on surfaces near each other (1.3 µs for queries far from every target, as scattered
/// islands are); the ratio of the near case, about 5, decides.
const DENSE_COST_PER_VOXEL: f64 = 1.0;
/// Cost of the sparse search per point of both sets (building the tree over one, querying
/// it with the other), in the unit of [`DENSE_COST_PER_VOXEL`].
const SPARSE_COST_PER_POINT: f64 = 5.0;

/// The distance in mm from each point of `from` to the nearest point of `to`, in the order
/// of `from`, computed with `arithmetic` (see the module docs). `None` when `to` is empty.
pub(crate) fn nearest_distances(
    from: &[Point],
    to: &[Point],
    spacing: [f64; 3],
    arithmetic: Arithmetic,
) -> Option<Vec<f64>> {
    if to.is_empty() {
        return None;
    }
    if from.is_empty() {
        return Some(Vec::new());
    }
    let (lo, hi) = bounds(from.iter().chain(to));
    let shape = [0, 1, 2].map(|a| (hi[a] - lo[a]) as usize + 1);
    let volume = shape.iter().map(|&n| n as f64).product::<f64>();
    let points = (from.len() + to.len()) as f64;
    let dense_fits = volume < f64::from(NO_FEATURE);
    Some(
        if dense_fits && volume * DENSE_COST_PER_VOXEL <= points * SPARSE_COST_PER_POINT {
            dense(from, to, spacing, arithmetic, lo, shape)
        } else {
            sparse(from, to, spacing, arithmetic)
        },
    )
}

/// The smallest and largest index along each axis (the caller passes at least one point).
pub(super) fn bounds<'a>(points: impl Iterator<Item = &'a Point>) -> (Point, Point) {
    points.fold(([i32::MAX; 3], [i32::MIN; 3]), |(lo, hi), p| {
        ([0, 1, 2].map(|a| lo[a].min(p[a])), [0, 1, 2].map(|a| hi[a].max(p[a])))
    })
}

/// The dense search: the feature transform of `to` over the box at `lo` of `shape`.
fn dense(
    from: &[Point],
    to: &[Point],
    spacing: [f64; 3],
    arithmetic: Arithmetic,
    lo: Point,
    shape: [usize; 3],
) -> Vec<f64> {
    let local = |p: &Point| [0, 1, 2].map(|a| (p[a] - lo[a]) as usize);
    let mut targets = Array3::from_elem(shape, false);
    for p in to {
        targets[local(p)] = true;
    }
    let nearest = feature_transform(&targets, spacing);
    let [_, ny, nx] = shape;
    from.par_iter()
        .with_min_len(1024)
        .map(|&p| {
            let index = nearest[local(&p)] as usize;
            let local_target = [index / (ny * nx), index / nx % ny, index % nx];
            let target = [0, 1, 2].map(|a| lo[a] + local_target[a] as i32);
            arithmetic.squared_distance(p, target, spacing).sqrt()
        })
        .collect()
}

/// The sparse search: a k-d tree over `to`, queried for each point of `from`.
fn sparse(from: &[Point], to: &[Point], spacing: [f64; 3], arithmetic: Arithmetic) -> Vec<f64> {
    let tree = KdTree::new(to.to_vec(), spacing, arithmetic);
    from.par_iter()
        .with_min_len(256)
        .map(|&p| tree.nearest_squared(p).sqrt())
        .collect()
}

/// Points per leaf of the k-d tree.
const LEAF_SIZE: usize = 8;

/// A k-d tree over grid points, with distances in an [`Arithmetic`].
///
/// Written here because the k-d tree crates we measured (kiddo 5 and 6, kd-tree 0.6, and the
/// R-tree of rstar 0.12) took 5 to 220 µs per query on lattice points lying in a plane or a
/// line (a 2-D image's contours, a flat organ), against about 1 µs on points in general
/// position: they cycle through the axes or bucket by value, so the many points sharing a
/// coordinate defeat their pruning. This tree splits the widest axis (in mm) at the median
/// by position, bounds each subtree by its points' exact coordinate ranges, and compares
/// distances in the reference's own arithmetic, so the nearest point it finds is the one
/// whose reference distance is smallest.
#[derive(Debug)]
struct KdTree {
    points: Vec<Point>,
    nodes: Vec<Node>,
    /// The range of all points.
    cell: Cell,
    spacing: [f64; 3],
    arithmetic: Arithmetic,
}

#[derive(Debug, Clone, Copy)]
enum Node {
    /// Points `start..end`.
    Leaf { start: usize, end: usize },
    /// The left child follows this node; `left_max` and `right_min` bound the split axis on
    /// each side.
    Split {
        axis: usize,
        left_max: i32,
        right_min: i32,
        right: usize,
    },
}

/// The coordinate range `[lo, hi]` per axis of the points under a node.
#[derive(Debug, Clone, Copy)]
struct Cell {
    lo: Point,
    hi: Point,
}

impl KdTree {
    fn new(mut points: Vec<Point>, spacing: [f64; 3], arithmetic: Arithmetic) -> Self {
        let mut nodes = Vec::with_capacity(2 * points.len() / LEAF_SIZE + 1);
        let (lo, hi) = bounds(points.iter());
        build(&mut points, 0, spacing, &mut nodes);
        Self {
            points,
            nodes,
            cell: Cell { lo, hi },
            spacing,
            arithmetic,
        }
    }

    /// The smallest squared distance from `query` to a point of the (non-empty) tree.
    fn nearest_squared(&self, query: Point) -> f64 {
        let mut best = f64::INFINITY;
        self.search(0, self.cell, self.cell_bound(self.cell, query), query, &mut best);
        best
    }

    /// A lower bound of the squared distance from `query` to any point in `cell`: the gap to
    /// the cell along each axis, squared and added in the distance's own order. Never above a
    /// point's distance, as each gap is at most that point's difference and rounding is
    /// monotonic, so pruning with it loses no point that the distance would prefer.
    fn cell_bound(&self, cell: Cell, query: Point) -> f64 {
        let term = |axis: usize| {
            let (q, lo, hi) = (query[axis], cell.lo[axis], cell.hi[axis]);
            let gap = if q < lo {
                self.arithmetic.difference(lo, q, self.spacing[axis])
            } else if q > hi {
                self.arithmetic.difference(q, hi, self.spacing[axis])
            } else {
                0.0
            };
            gap * gap
        };
        term(0) + term(1) + term(2)
    }

    /// Searches the subtree at `node`, whose points lie in `cell` at no less than `bound`.
    fn search(&self, node: usize, cell: Cell, bound: f64, query: Point, best: &mut f64) {
        match self.nodes[node] {
            Node::Leaf { start, end } => {
                for &p in &self.points[start..end] {
                    let d = self.arithmetic.squared_distance(query, p, self.spacing);
                    if d < *best {
                        *best = d;
                    }
                }
            }
            Node::Split {
                axis,
                left_max,
                right_min,
                right,
            } => {
                let (mut left_cell, mut right_cell) = (cell, cell);
                left_cell.hi[axis] = left_max;
                right_cell.lo[axis] = right_min;
                let q = query[axis];
                // A child that still spans the query along the split axis keeps its parent's
                // bound; only the other one needs computing.
                let left_bound = if q <= left_max {
                    bound
                } else {
                    self.cell_bound(left_cell, query)
                };
                let right_bound = if q >= right_min {
                    bound
                } else {
                    self.cell_bound(right_cell, query)
                };
                let sides = if left_bound <= right_bound {
                    [(node + 1, left_cell, left_bound), (right, right_cell, right_bound)]
                } else {
                    [(right, right_cell, right_bound), (node + 1, left_cell, left_bound)]
                };
                for (child, child_cell, child_bound) in sides {
                    if child_bound < *best {
                        self.search(child, child_cell, child_bound, query, best);
                    }
                }
            }
        }
    }
}

/// Builds the subtree of `points` (which start at `offset` in the tree's array) in pre-order.
fn build(points: &mut [Point], offset: usize, spacing: [f64; 3], nodes: &mut Vec<Node>) {
    let leaf = Node::Leaf {
        start: offset,
        end: offset + points.len(),
    };
    if points.len() <= LEAF_SIZE {
        nodes.push(leaf);
        return;
    }
    let (lo, hi) = bounds(points.iter());
    let extent = |a: usize| f64::from(hi[a] - lo[a]) * spacing[a];
    let axis = (0..3).fold(0, |best, a| if extent(a) > extent(best) { a } else { best });
    if hi[axis] == lo[axis] {
        // Every point is the same point.
        nodes.push(leaf);
        return;
    }
    let middle = points.len() / 2;
    let _ = points.select_nth_unstable_by_key(middle, |p| p[axis]);
    let (left, right) = points.split_at_mut(middle);
    let left_max = left.iter().map(|p| p[axis]).max().unwrap_or(i32::MIN);
    let right_min = right.iter().map(|p| p[axis]).min().unwrap_or(i32::MAX);
    let this = nodes.len();
    nodes.push(leaf); // replaced below, once the right child's index is known
    build(left, offset, spacing, nodes);
    let right_index = nodes.len();
    build(right, offset + middle, spacing, nodes);
    nodes[this] = Node::Split {
        axis,
        left_max,
        right_min,
        right: right_index,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic scatter of points (LCG) in a box of `shape`.
    fn scatter(n: usize, shape: [i32; 3], seed: u64) -> Vec<Point> {
        let mut state = seed;
        let mut next = |bound: i32| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % bound as u64) as i32
        };
        (0..n)
            .map(|_| [next(shape[0]), next(shape[1]), next(shape[2])])
            .collect()
    }

    fn brute(from: &[Point], to: &[Point], spacing: [f64; 3], arithmetic: Arithmetic) -> Vec<f64> {
        from.iter()
            .map(|&p| {
                to.iter()
                    .map(|&q| arithmetic.squared_distance(p, q, spacing).sqrt())
                    .fold(f64::INFINITY, f64::min)
            })
            .collect()
    }

    const BOTH: [Arithmetic; 2] = [Arithmetic::ScaledCoordinates, Arithmetic::ScaledOffsets];

    #[test]
    fn both_searches_equal_brute_force() {
        for (spacing, shape) in [
            ([1.0, 1.0, 1.0], [9, 11, 13]),
            ([2.5, 0.78, 0.7799999713897705], [20, 40, 40]),
            ([1.0, 0.85, 1.2000000476837158], [1, 30, 50]),
        ] {
            for (seed, arithmetic) in (1..4).flat_map(|seed| BOTH.map(|a| (seed, a))) {
                let from = scatter(300, shape, seed);
                let to = scatter(40 * seed as usize, shape, seed + 100);
                let want = brute(&from, &to, spacing, arithmetic);
                let (lo, hi) = bounds(from.iter().chain(&to));
                let box_shape = [0, 1, 2].map(|a| (hi[a] - lo[a]) as usize + 1);
                let dense = dense(&from, &to, spacing, arithmetic, lo, box_shape);
                // The transform may pick another of two equally near targets: last bit only.
                for (d, w) in dense.iter().zip(&want) {
                    assert!((d - w).abs() <= 4.0 * f64::EPSILON * w, "dense {spacing:?}: {d} vs {w}");
                }
                assert_eq!(sparse(&from, &to, spacing, arithmetic), want, "sparse {spacing:?}");
            }
        }
    }

    #[test]
    fn degenerate_point_sets() {
        // A plane, a line and one point repeated: the layouts that defeat axis cycling.
        let plane: Vec<Point> = (0..2000).map(|i| [0, i / 50, i % 50]).collect();
        let line: Vec<Point> = (0..500).map(|i| [3, 7, i]).collect();
        let same = vec![[2, 2, 2]; 100];
        let queries = scatter(200, [4, 60, 60], 7);
        let spacing = [2.0, 0.5, 0.7];
        for targets in [&plane, &line, &same] {
            for arithmetic in BOTH {
                assert_eq!(
                    sparse(&queries, targets, spacing, arithmetic),
                    brute(&queries, targets, spacing, arithmetic)
                );
            }
        }
    }

    #[test]
    fn whole_voxel_distances_are_exact() {
        // Ten float32 1.2 mm voxels: exactly halfway between two float32 values, which the
        // tolerance comparison in float32 depends on.
        let spacing = [1.0, 0.85f32 as f64, 1.2f32 as f64];
        for arithmetic in BOTH {
            let d = nearest_distances(&[[0, 4, 0]], &[[0, 4, 10]], spacing, arithmetic).expect("target");
            assert_eq!(d, vec![10.0 * (1.2f32 as f64)]);
            assert_eq!(d[0] as f32, 12.0);
        }
    }

    #[test]
    fn empty_sets() {
        let arithmetic = Arithmetic::ScaledCoordinates;
        assert_eq!(nearest_distances(&[[0, 0, 0]], &[], [1.0; 3], arithmetic), None);
        assert_eq!(nearest_distances(&[], &[[0, 0, 0]], [1.0; 3], arithmetic), Some(vec![]));
    }
}
