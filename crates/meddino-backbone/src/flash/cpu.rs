//! The op's arithmetic on the CPU, row by row, mirroring `kernels/attention.cu`: scores in
//! the log2 domain, f32 throughout.

use rayon::prelude::*;

use super::Geometry;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `[O | lse2]` for q, k, v of `[BH, N, D]`.
pub(super) fn forward(g: &Geometry, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
    let (n, d, scale_log2) = (g.n, g.d, g.scale_log2());
    let mut out = vec![0f32; g.saved_len()];
    let (o, lse2) = out.split_at_mut(g.out_len());
    o.par_chunks_mut(n * d)
        .zip(lse2.par_chunks_mut(n))
        .enumerate()
        .for_each(|(bh, (o, lse2))| {
            let [q, k, v] = [q, k, v].map(|t| &t[bh * n * d..(bh + 1) * n * d]);
            let mut scores = vec![0f32; n];
            for i in 0..n {
                let qi = &q[i * d..(i + 1) * d];
                for (j, s) in scores.iter_mut().enumerate() {
                    *s = dot(qi, &k[j * d..(j + 1) * d]) * scale_log2;
                }
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                let oi = &mut o[i * d..(i + 1) * d];
                for (j, s) in scores.iter().enumerate() {
                    let p = (s - max).exp2();
                    sum += p;
                    oi.iter_mut().zip(&v[j * d..(j + 1) * d]).for_each(|(o, v)| *o += p * v);
                }
                oi.iter_mut().for_each(|o| *o /= sum);
                lse2[i] = max + sum.log2();
            }
        });
    out
}

/// `[dq | dk | dv]` from q, k, v, the forward's `[O | lse2]` and dO.
pub(super) fn backward(g: &Geometry, [q, k, v]: [&[f32]; 3], saved: &[f32], grad: &[f32]) -> Vec<f32> {
    let (n, d, scale, scale_log2) = (g.n, g.d, g.scale, g.scale_log2());
    let (o, lse2) = saved.split_at(g.out_len());
    let mut out = vec![0f32; 3 * g.out_len()];
    let (dq, rest) = out.split_at_mut(g.out_len());
    let (dk, dv) = rest.split_at_mut(g.out_len());
    dq.par_chunks_mut(n * d)
        .zip(dk.par_chunks_mut(n * d))
        .zip(dv.par_chunks_mut(n * d))
        .enumerate()
        .for_each(|(bh, ((dq, dk), dv))| {
            let rows = bh * n * d..(bh + 1) * n * d;
            let (q, k, v, o, grad) = (
                &q[rows.clone()],
                &k[rows.clone()],
                &v[rows.clone()],
                &o[rows.clone()],
                &grad[rows],
            );
            let lse2 = &lse2[bh * n..(bh + 1) * n];
            for i in 0..n {
                let row = i * d..(i + 1) * d;
                let (qi, doi) = (&q[row.clone()], &grad[row.clone()]);
                let delta = dot(doi, &o[row.clone()]);
                for j in 0..n {
                    let col = j * d..(j + 1) * d;
                    let p = (dot(qi, &k[col.clone()]) * scale_log2 - lse2[i]).exp2();
                    let ds = p * (dot(doi, &v[col.clone()]) - delta) * scale;
                    for c in 0..d {
                        dq[i * d + c] += ds * k[j * d + c];
                        dk[j * d + c] += ds * qi[c];
                        dv[j * d + c] += p * doi[c];
                    }
                }
            }
        });
    out
}
