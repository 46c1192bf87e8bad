//! Patch retrieval (hpatches-protocol.md, "Retrieval").
//!
//! For query q (sequence s, index k, a `ref` patch) and family f, the list is
//! [the 5 distances from q to patch k of images f1..f5 of s; then the
//! distances from q to every distractor whose sequence is not s, in file
//! order], labels [1 x 5, 0 ...], float64 distances. For each pool size K in
//! [`POOL_SIZES`], AP over the first K entries (fewer when shorter). A
//! positive wins a tie with a distractor (positives come first, stable sort).
//! Retrieval mAP = mean over queries, families and pool sizes (float64).
//!
//! Fast path: with the positives sorted, positive j ranks at j + c_j where
//! c_j counts the pool's distractors strictly closer than it. Query and
//! distractor descriptors are both `ref` descriptors, so one float32 GEMM
//! block per group of queries serves the three families. A distractor whose
//! bounded estimate (`dist::Estimator`) decides `d < d_j` either way is
//! counted from the estimate (with a relative 1e-12 margin on the
//! strictly-less side so sqrt rounding cannot create a tie); otherwise its
//! exact float64 distance is compared. [`evaluate_slow`] builds each list
//! and stable-sorts it.

use super::ap::{ap_from_positions, average_precision};
use super::dist::{Estimator, dist_f64, dots, f32_at_least, sq_dist, sq_norm};
use super::tasks::{RefPatch, Tasks};
use super::{FAMILIES, View};
use crate::error::Result;
use rayon::prelude::*;
use serde::Serialize;

/// The seven pool sizes of the benchmark.
pub const POOL_SIZES: [usize; 7] = [100, 500, 1000, 5000, 10000, 15000, 20000];

/// Mean AP over the queries for each family and pool size.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RetrievalScores {
    pub pool_sizes: Vec<usize>,
    /// "e", "h", "t".
    pub families: Vec<&'static str>,
    /// `map[f][k]`: mean AP of family f at pool size `pool_sizes[k]`.
    pub map: Vec<Vec<f64>>,
    /// Mean over queries, families and pool sizes.
    pub mean: f64,
    pub queries: usize,
    pub distractors: usize,
}

/// Queries per GEMM block.
const BLOCK: usize = 64;

/// APs of one query: `[f][k]`.
type QueryAps = [[f64; 7]; 3];

fn ref_desc<'a>(view: &View<'a>, r: RefPatch) -> &'a [f32] {
    view.seqs[r.seq as usize].get(0, r.idx as usize, view.dim)
}

/// Sorted exact positive distances and their squares, per family.
fn positives(view: &View, q: RefPatch) -> [[(f64, f64); 5]; 3] {
    let qd = ref_desc(view, q);
    let seq = view.seqs[q.seq as usize];
    let mut out = [[(0.0, 0.0); 5]; 3];
    for (f, row) in out.iter_mut().enumerate() {
        for (i, slot) in row.iter_mut().enumerate() {
            let d2 = sq_dist(qd, seq.get(1 + 5 * f + i, q.idx as usize, view.dim));
            *slot = (d2.sqrt(), d2);
        }
        row.sort_by(|x, y| x.0.total_cmp(&y.0));
    }
    out
}

fn aps_from_counts(first: &[[[usize; 5]; 3]; 7]) -> QueryAps {
    let mut aps = [[0.0; 7]; 3];
    let mut cum = [[0usize; 5]; 3];
    for (k, add) in first.iter().enumerate() {
        for f in 0..3 {
            for j in 0..5 {
                cum[f][j] += add[f][j];
            }
            aps[f][k] = ap_from_positions((0..5).map(|j| j + cum[f][j]), 5);
        }
    }
    aps
}

/// Per-query APs, fast path.
fn query_aps(view: &View, tasks: &Tasks) -> Result<Vec<QueryAps>> {
    let dim = view.dim;
    let est = Estimator::new(dim);
    let nd = tasks.distractors.len();
    let mut dmat = Vec::with_capacity(nd * dim);
    for &r in &tasks.distractors {
        dmat.extend_from_slice(ref_desc(view, r));
    }
    let dn: Vec<f64> = (0..nd).map(|i| sq_norm(&dmat[i * dim..(i + 1) * dim])).collect();
    let dn_sqrt: Vec<f64> = dn.iter().map(|v| v.sqrt()).collect();
    let dn32: Vec<f32> = dn.iter().map(|&v| v as f32).collect();
    let max_dn = dn_sqrt.iter().fold(0.0f64, |m, &v| m.max(v));
    // prefix[s][i]: distractors from sequence s among the first i, so a
    // distractor i's position among those eligible for a query of s is
    // i - prefix[s][i].
    let nseq = view.seqs.len();
    let mut prefix = vec![0u32; nseq * (nd + 1)];
    for s in 0..nseq {
        let row = &mut prefix[s * (nd + 1)..(s + 1) * (nd + 1)];
        for (i, r) in tasks.distractors.iter().enumerate() {
            row[i + 1] = row[i] + (r.seq as usize == s) as u32;
        }
    }
    let max_pool = POOL_SIZES[6] - 5;
    let blocks: Vec<Vec<QueryAps>> = tasks
        .queries
        .par_chunks(BLOCK)
        .map(|qs| {
            let mut qmat = Vec::with_capacity(qs.len() * dim);
            for &q in qs {
                qmat.extend_from_slice(ref_desc(view, q));
            }
            let mut buf = vec![0.0f32; qs.len() * nd];
            dots(&qmat, qs.len(), &dmat, nd, dim, &mut buf)?;
            let mut res = Vec::with_capacity(qs.len());
            let mut cand = Vec::new();
            for (b, &q) in qs.iter().enumerate() {
                let qd = &qmat[b * dim..(b + 1) * dim];
                let nq = sq_norm(qd);
                let nq_sqrt = nq.sqrt();
                let pos = positives(view, q);
                let hi2 = pos.iter().flat_map(|r| r.iter().map(|p| p.1)).fold(f64::NEG_INFINITY, f64::max);
                let row = &buf[b * nd..(b + 1) * nd];
                // t_i = ||d_i||^2 - 2 q.d_i in float32, within e of the truth:
                // t_i >= hi2 - nq + e means d_i is no closer than any positive.
                let e = est.row_bound(nq_sqrt, max_dn);
                let lim = f32_at_least(hi2 - nq + e);
                cand.clear();
                for (i, (&x, &d)) in dn32.iter().zip(row).enumerate() {
                    let t = x - 2.0 * d;
                    if t < lim || t.is_nan() {
                        cand.push(i);
                    }
                }
                let own = &prefix[q.seq as usize * (nd + 1)..(q.seq as usize + 1) * (nd + 1)];
                let mut first = [[[0usize; 5]; 3]; 7];
                for &i in &cand {
                    if tasks.distractors[i].seq == q.seq {
                        continue;
                    }
                    // Position among the distractors eligible for this query.
                    let p = i - own[i] as usize;
                    if p >= max_pool {
                        break;
                    }
                    let e = est.estimate(nq, dn[i], row[i]);
                    let bound = est.bound(nq_sqrt, dn_sqrt[i], nq, dn[i]);
                    let k = POOL_SIZES.iter().position(|&s| p < s - 5).unwrap_or(6);
                    let mut exact = None;
                    for f in 0..3 {
                        for j in 0..5 {
                            let (dp, dp2) = pos[f][j];
                            let closer = if e + bound < dp2 * (1.0 - 1e-12) {
                                true
                            } else if e - bound >= dp2 {
                                false
                            } else {
                                *exact.get_or_insert_with(|| dist_f64(qd, &dmat[i * dim..(i + 1) * dim])) < dp
                            };
                            first[k][f][j] += closer as usize;
                        }
                    }
                }
                res.push(aps_from_counts(&first));
            }
            Ok(res)
        })
        .collect::<Result<_>>()?;
    Ok(blocks.into_iter().flatten().collect())
}

/// Per-query APs, the literal protocol: build each list, stable sort, cut.
fn query_aps_slow(view: &View, tasks: &Tasks) -> Vec<QueryAps> {
    tasks
        .queries
        .par_iter()
        .map(|&q| {
            let qd = ref_desc(view, q);
            let seq = view.seqs[q.seq as usize];
            let mut aps = [[0.0; 7]; 3];
            for (f, row) in aps.iter_mut().enumerate() {
                let mut scores: Vec<f64> =
                    (0..5).map(|i| -dist_f64(qd, seq.get(1 + 5 * f + i, q.idx as usize, view.dim))).collect();
                for &r in &tasks.distractors {
                    if r.seq != q.seq {
                        scores.push(-dist_f64(qd, ref_desc(view, r)));
                    }
                }
                let labels: Vec<bool> = (0..scores.len()).map(|i| i < 5).collect();
                for (k, &size) in POOL_SIZES.iter().enumerate() {
                    let n = size.min(scores.len());
                    row[k] = average_precision(&scores[..n], &labels[..n], None);
                }
            }
            aps
        })
        .collect()
}

fn summarise(aps: &[QueryAps], tasks: &Tasks) -> RetrievalScores {
    let nq = aps.len();
    let mut map = vec![vec![0.0; 7]; 3];
    let mut total = 0.0;
    for (f, row) in map.iter_mut().enumerate() {
        for (k, m) in row.iter_mut().enumerate() {
            let s: f64 = aps.iter().map(|a| a[f][k]).sum();
            total += s;
            *m = if nq == 0 { f64::NAN } else { s / nq as f64 };
        }
    }
    RetrievalScores {
        pool_sizes: POOL_SIZES.to_vec(),
        families: FAMILIES.to_vec(),
        map,
        mean: if nq == 0 { f64::NAN } else { total / (21 * nq) as f64 },
        queries: nq,
        distractors: tasks.distractors.len(),
    }
}

/// Retrieval scores, fast path.
pub fn evaluate(view: &View, tasks: &Tasks) -> Result<RetrievalScores> {
    Ok(summarise(&query_aps(view, tasks)?, tasks))
}

/// Retrieval scores, literal protocol (for tests).
pub fn evaluate_slow(view: &View, tasks: &Tasks) -> RetrievalScores {
    summarise(&query_aps_slow(view, tasks), tasks)
}
