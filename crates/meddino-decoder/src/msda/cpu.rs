//! Multi-scale deformable attention on the CPU: direct loops, parallel over queries (and,
//! for the value gradient, over batch items), arithmetic in f64 whatever the storage type.

use rayon::prelude::*;

use super::Geometry;

/// Storage types the CPU op handles.
pub(crate) trait Element: Copy + Send + Sync + 'static {
    fn to_f64(self) -> f64;
    fn from_f64(value: f64) -> Self;
}

impl Element for f32 {
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn from_f64(value: f64) -> Self {
        value as f32
    }
}

impl Element for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(value: f64) -> Self {
        value
    }
}

/// One bilinear sample: up to four (value row index, weight) corners and the fractions.
struct Sample {
    /// (row in the flattened level, weight) for corners v1..v4 = (y0,x0), (y0,x0+1),
    /// (y0+1,x0), (y0+1,x0+1); `None` for a corner outside the map (zero padding).
    corners: [Option<(usize, f64)>; 4],
    lx: f64,
    ly: f64,
    /// The level's height and width.
    h: usize,
    w: usize,
}

/// `grid_sample(align_corners=False)` sampling geometry of a normalised location in an
/// `h × w` map starting at row `start`; `None` when the sample lies wholly outside.
fn sample(loc_x: f64, loc_y: f64, h: usize, w: usize, start: usize) -> Option<Sample> {
    let x = loc_x * w as f64 - 0.5;
    let y = loc_y * h as f64 - 0.5;
    if !(y > -1.0 && x > -1.0 && y < h as f64 && x < w as f64) {
        return None;
    }
    let (x0, y0) = (x.floor(), y.floor());
    let (lx, ly) = (x - x0, y - y0);
    let (hx, hy) = (1.0 - lx, 1.0 - ly);
    let corner = |dy: f64, dx: f64, weight: f64| {
        let (cy, cx) = (y0 + dy, x0 + dx);
        (cy >= 0.0 && cx >= 0.0 && cy <= (h - 1) as f64 && cx <= (w - 1) as f64)
            .then(|| (start + cy as usize * w + cx as usize, weight))
    };
    Some(Sample {
        corners: [
            corner(0.0, 0.0, hy * hx),
            corner(0.0, 1.0, hy * lx),
            corner(1.0, 0.0, ly * hx),
            corner(1.0, 1.0, ly * lx),
        ],
        lx,
        ly,
        h,
        w,
    })
}

/// Every sample of query row `nq` that touches its map: (head, flat sample index,
/// attention weight, geometry), in (head, level, point) order.
fn samples<'a, T: Element>(
    g: &'a Geometry,
    locations: &'a [T],
    weights: &'a [T],
    nq: usize,
) -> impl Iterator<Item = (usize, usize, f64, Sample)> + 'a {
    let (m, l, p) = (g.heads, g.levels(), g.points);
    (0..m * l * p).filter_map(move |local| {
        let (head, level) = (local / (l * p), local / p % l);
        let s = nq * m * l * p + local;
        let (h, w) = g.shapes[level];
        sample(
            locations[2 * s].to_f64(),
            locations[2 * s + 1].to_f64(),
            h,
            w,
            g.starts[level],
        )
        .map(|smp| (head, s, weights[s].to_f64(), smp))
    })
}

/// First element of `value` for batch item `n`, value row `row`, head `head`.
fn value_base(g: &Geometry, n: usize, row: usize, head: usize) -> usize {
    ((n * g.spatial + row) * g.heads + head) * g.channels
}

/// Output `[N, Lq, M·D]`.
pub(crate) fn forward<T: Element>(g: &Geometry, value: &[T], locations: &[T], weights: &[T]) -> Vec<T> {
    let (m, d) = (g.heads, g.channels);
    let mut out = vec![T::from_f64(0.0); g.batch * g.queries * m * d];
    out.par_chunks_mut(m * d).enumerate().for_each(|(nq, row)| {
        let n = nq / g.queries;
        let mut acc = vec![0.0f64; m * d];
        for (head, _, a, smp) in samples(g, locations, weights, nq) {
            let acc = &mut acc[head * d..(head + 1) * d];
            for (row_index, weight) in smp.corners.into_iter().flatten() {
                let base = value_base(g, n, row_index, head);
                for (c, acc) in acc.iter_mut().enumerate() {
                    *acc += a * weight * value[base + c].to_f64();
                }
            }
        }
        row.iter_mut().zip(acc).for_each(|(out, v)| *out = T::from_f64(v));
    });
    out
}

/// Gradients (value `[N, S, M, D]`, locations `[N, Lq, M, L, P, 2]`, weights
/// `[N, Lq, M, L, P]`) for the upstream gradient `grad` `[N, Lq, M·D]`.
pub(crate) fn backward<T: Element>(
    g: &Geometry,
    value: &[T],
    locations: &[T],
    weights: &[T],
    grad: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (m, d) = (g.heads, g.channels);
    let per_query = m * g.levels() * g.points;
    let upstream = |nq: usize, head: usize| &grad[(nq * m + head) * d..(nq * m + head + 1) * d];
    let mut grad_locations = vec![T::from_f64(0.0); g.batch * g.queries * per_query * 2];
    let mut grad_weights = vec![T::from_f64(0.0); g.batch * g.queries * per_query];
    // Location and weight gradients: each (n, q) owns its slots.
    grad_locations
        .par_chunks_mut(per_query * 2)
        .zip(grad_weights.par_chunks_mut(per_query))
        .enumerate()
        .for_each(|(nq, (g_loc, g_w))| {
            let n = nq / g.queries;
            for (head, s, a, smp) in samples(g, locations, weights, nq) {
                let g_out = upstream(nq, head);
                // Corner values dotted with the upstream gradient (0 outside the map).
                let dot = |corner: Option<(usize, f64)>| -> f64 {
                    corner.map_or(0.0, |(row_index, _)| {
                        let base = value_base(g, n, row_index, head);
                        g_out
                            .iter()
                            .enumerate()
                            .map(|(c, go)| go.to_f64() * value[base + c].to_f64())
                            .sum()
                    })
                };
                let [v1, v2, v3, v4] = smp.corners.map(dot);
                let sampled: f64 = smp
                    .corners
                    .iter()
                    .zip([v1, v2, v3, v4])
                    .map(|(c, v)| c.map_or(0.0, |(_, wt)| wt * v))
                    .sum();
                let (lx, ly) = (smp.lx, smp.ly);
                let d_x = (1.0 - ly) * (v2 - v1) + ly * (v4 - v3);
                let d_y = (1.0 - lx) * (v3 - v1) + lx * (v4 - v2);
                let local = s - nq * per_query;
                g_w[local] = T::from_f64(sampled);
                g_loc[2 * local] = T::from_f64(smp.w as f64 * a * d_x);
                g_loc[2 * local + 1] = T::from_f64(smp.h as f64 * a * d_y);
            }
        });
    // Value gradient: each batch item owns its block of rows.
    let mut grad_value = vec![T::from_f64(0.0); value.len()];
    grad_value
        .par_chunks_mut(g.spatial * m * d)
        .enumerate()
        .for_each(|(n, g_value)| {
            let mut acc = vec![0.0f64; g.spatial * m * d];
            for nq in n * g.queries..(n + 1) * g.queries {
                for (head, _, a, smp) in samples(g, locations, weights, nq) {
                    let g_out = upstream(nq, head);
                    for (row_index, weight) in smp.corners.into_iter().flatten() {
                        let base = value_base(g, 0, row_index, head);
                        for (c, go) in g_out.iter().enumerate() {
                            acc[base + c] += weight * a * go.to_f64();
                        }
                    }
                }
            }
            g_value.iter_mut().zip(acc).for_each(|(out, v)| *out = T::from_f64(v));
        });
    (grad_value, grad_locations, grad_weights)
}
