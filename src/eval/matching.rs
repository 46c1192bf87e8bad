//! Image matching (hpatches-protocol.md, "Matching").
//!
//! For each test sequence, family f and i in 1..5: D = float64 Euclidean
//! distances between the `ref` descriptors (rows) and those of image f i
//! (columns). Row r's nearest neighbour nn(r) is the argmin of its row, the
//! lowest column on ties; it is correct when nn(r) == r; its score is
//! -D[r, nn(r)]. AP over the rows (stable sort: ties keep ref order) with
//! numpos = N, so missed matches count as unretrieved positives.
//!
//! Fast path: a float32 GEMM gives every squared distance to within a proven
//! bound (`dist::Estimator`); only the columns whose lower bound does not
//! exceed the row's smallest upper bound (plus a relative 1e-12, so that
//! sqrt cannot round two different squares to a tie outside the set) can
//! be the argmin, and those are recomputed exactly in float64 and compared
//! in column order. [`nearest_slow`] computes the whole row exactly.

use super::ap::average_precision;
use super::dist::{Estimator, dist_f64, dots, f32_at_least, sq_norm};
use super::{FAMILIES, View};
use crate::error::Result;
use rayon::prelude::*;
use serde::Serialize;

/// AP of one (sequence, image) pair.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MatchScore {
    pub sequence: String,
    /// "e", "h" or "t".
    pub family: &'static str,
    /// 1..5.
    pub image: usize,
    pub ap: f64,
}

/// Rows of the distance matrix computed per GEMM block.
const BLOCK: usize = 1024;

/// (nn(r), D[r, nn(r)]) of every row, exactly; `a` and `b` are `[n][dim]`.
pub fn nearest_slow(a: &[f32], b: &[f32], n: usize, dim: usize) -> Vec<(usize, f64)> {
    (0..n)
        .map(|r| {
            let mut best = (0, f64::INFINITY);
            for c in 0..n {
                let d = dist_f64(&a[r * dim..(r + 1) * dim], &b[c * dim..(c + 1) * dim]);
                if c == 0 || d < best.1 {
                    best = (c, d);
                }
            }
            best
        })
        .collect()
}

/// min over c of `x[c] - 2 d[c]` in float32 (NaN terms ignored), in 16
/// independent lanes so that it vectorises.
fn row_min(x: &[f32], d: &[f32]) -> f32 {
    let mut lanes = [f32::INFINITY; 16];
    let body = x.len().min(d.len()) / 16 * 16;
    for (cx, cd) in x[..body].chunks_exact(16).zip(d[..body].chunks_exact(16)) {
        for j in 0..16 {
            let t = cx[j] - 2.0 * cd[j];
            lanes[j] = if t < lanes[j] { t } else { lanes[j] };
        }
    }
    let mut m = lanes.iter().fold(f32::INFINITY, |m, &v| m.min(v));
    for (&a, &b) in x[body..].iter().zip(&d[body..]) {
        m = m.min(a - 2.0 * b);
    }
    m
}

/// (nn(r), D[r, nn(r)]) of every row via the GEMM and exact recomputation.
pub fn nearest(a: &[f32], b: &[f32], n: usize, dim: usize) -> Result<Vec<(usize, f64)>> {
    let est = Estimator::new(dim);
    let na: Vec<f64> = (0..n).map(|r| sq_norm(&a[r * dim..(r + 1) * dim])).collect();
    let nb: Vec<f64> = (0..n).map(|c| sq_norm(&b[c * dim..(c + 1) * dim])).collect();
    let nb32: Vec<f32> = nb.iter().map(|&v| v as f32).collect();
    let max_nb = nb.iter().fold(0.0f64, |m, &v| m.max(v)).sqrt();
    let mut out = Vec::with_capacity(n);
    let mut buf = vec![0.0f32; BLOCK.min(n) * n];
    let mut cand = Vec::new();
    for r0 in (0..n).step_by(BLOCK) {
        let rows = BLOCK.min(n - r0);
        dots(&a[r0 * dim..], rows, b, n, dim, &mut buf)?;
        for i in 0..rows {
            let r = r0 + i;
            let row = &buf[i * n..(i + 1) * n];
            // t_c = ||b_c||^2 - 2 a.b_c in float32, within e of the truth:
            // only columns with t_c <= min t + 2e (+ a relative 1e-12 of the
            // squared distance) can hold the exact minimum.
            let e = est.row_bound(na[r].sqrt(), max_nb);
            let min_t = row_min(&nb32, row);
            let lim = min_t as f64 + 2.0 * e;
            let lim = f32_at_least(lim + 1e-12 * (na[r] + lim).abs());
            cand.clear();
            for (c, (&x, &d)) in nb32.iter().zip(row).enumerate() {
                // NaN (an overflowed estimate) fails the test and stays a candidate.
                let t = x - 2.0 * d;
                if t <= lim || t.is_nan() {
                    cand.push(c);
                }
            }
            let ar = &a[r * dim..(r + 1) * dim];
            let mut best = (0, f64::INFINITY);
            for (k, &c) in cand.iter().enumerate() {
                let d = dist_f64(ar, &b[c * dim..(c + 1) * dim]);
                if k == 0 || d < best.1 {
                    best = (c, d);
                }
            }
            out.push(best);
        }
    }
    Ok(out)
}

/// AP of a row of nearest neighbours (numpos = number of rows).
pub fn ap_of(nn: &[(usize, f64)]) -> f64 {
    let scores: Vec<f64> = nn.iter().map(|&(_, d)| -d).collect();
    let labels: Vec<bool> = nn.iter().enumerate().map(|(r, &(c, _))| c == r).collect();
    average_precision(&scores, &labels, Some(nn.len()))
}

/// Matching APs of every catalog sequence x {e, h, t} x 1..5, in that order.
/// `slow` uses [`nearest_slow`] (for tests).
pub fn evaluate_with(view: &View, names: &[String], slow: bool) -> Result<Vec<MatchScore>> {
    let dim = view.dim;
    let jobs: Vec<(usize, usize, usize)> =
        (0..view.seqs.len()).flat_map(|s| (0..3).flat_map(move |f| (1..=5).map(move |i| (s, f, i)))).collect();
    jobs.par_iter()
        .map(|&(s, f, i)| {
            let seq = view.seqs[s];
            let (a, b) = (seq.image(0, dim), seq.image(1 + 5 * f + (i - 1), dim));
            let nn = if slow { nearest_slow(a, b, seq.count, dim) } else { nearest(a, b, seq.count, dim)? };
            Ok(MatchScore { sequence: names[s].clone(), family: FAMILIES[f], image: i, ap: ap_of(&nn) })
        })
        .collect()
}

/// Matching APs (fast path).
pub fn evaluate(view: &View, names: &[String]) -> Result<Vec<MatchScore>> {
    evaluate_with(view, names, false)
}
