//! HardNet loss (Mishchuk et al. 2017, "Working hard to know your neighbor's
//! margins"), the hardest-in-batch triplet margin loss of the authors' code.
//!
//! Contract: anchors `a` and positives `p` are `[batch, dim]` row-major
//! (L2-normalised descriptors in training, though nothing here requires it),
//! row `i` of `a` matching row `i` of `p`; `grad_a`, `grad_p` have the same
//! length and receive `+=` the gradients. A `HardNetWorkspace` built for the
//! same `batch` holds the distance matrix and the selected negatives.
//!
//! Forward:
//! - `D_ij = sqrt(||a_i - p_j||^2 + 1e-6) + 1e-8` (the authors expand the
//!   square as `||a||^2 + ||p||^2 - 2 a.p`; the direct difference is the same
//!   function with less cancellation), `pos_i = D_ii`;
//! - `M = D + 10 I`, then every entry of `M` below 0.008 gets `+10`, so
//!   near-duplicate patches are never picked as negatives;
//! - `min_neg_i = min_j M_ij`, and with anchor swap
//!   `min_neg_i = min(min_j M_ij, min_j M_ji)`;
//! - `L = (1/B) sum_i max(0, margin + pos_i - min_neg_i)`.
//!
//! Gradient: the mask offsets are constants, so an active term (`> 0`) sends
//! `+1/B` to `D_ii` and `-1/B` to the one selected entry `D_rc` of its
//! minimum; ties go to the first index, and the row minimum wins a tie with
//! the column minimum. With `g = (a_r - p_c) / sqrt(||a_r - p_c||^2 + 1e-6)`,
//! `dD_rc/da_r = g` and `dD_rc/dp_c = -g`.

use super::check_pairs;
use crate::error::Result;
use rayon::prelude::*;

/// Inside the square root of every distance, so the gradient is finite at 0.
const SQRT_EPS: f64 = 1e-6;
/// Added to every distance, as the authors' code does.
const DIST_EPS: f32 = 1e-8;
/// Added to the diagonal and to near-duplicates so that the minimum skips them.
const MASK_OFFSET: f32 = 10.0;
/// Distances below this (after the diagonal offset) are treated as duplicates.
const DUPLICATE_BELOW: f32 = 0.008;

/// Configuration of the HardNet loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HardNetLoss {
    pub margin: f32,
    /// Also take the hardest negative over the anchor's column (positives as anchors).
    pub anchor_swap: bool,
}

impl Default for HardNetLoss {
    fn default() -> Self {
        HardNetLoss { margin: 1.0, anchor_swap: true }
    }
}

/// Caller-owned scratch for one batch size: the `B x B` distance matrix and
/// the argmin bookkeeping, so a call allocates nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct HardNetWorkspace {
    batch: usize,
    dist: Vec<f32>,
    row_arg: Vec<usize>,
    col_arg: Vec<usize>,
    col_min: Vec<f32>,
    negative: Vec<(usize, usize)>,
}

impl HardNetWorkspace {
    pub fn new(batch: usize) -> Self {
        HardNetWorkspace {
            batch,
            dist: vec![0.0; batch * batch],
            row_arg: vec![0; batch],
            col_arg: vec![0; batch],
            col_min: vec![0.0; batch],
            negative: vec![(0, 0); batch],
        }
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The unmasked distance matrix `D` of the last call, row-major `[B, B]`.
    pub fn dist(&self) -> &[f32] {
        &self.dist
    }

    /// For each anchor `i` of the last call, the entry `(r, c)` of `D` chosen
    /// as its hardest negative (`(i, j)` from the row, `(j, i)` from the column).
    pub fn negatives(&self) -> &[(usize, usize)] {
        &self.negative
    }
}

fn sq_dist(x: &[f32], y: &[f32]) -> f64 {
    x.iter()
        .zip(y)
        .map(|(&u, &v)| {
            let d = u as f64 - v as f64;
            d * d
        })
        .sum()
}

/// The entry `M_ij` of the masked matrix, in f32 as the reference computes it.
fn masked(d: f32, i: usize, j: usize) -> f32 {
    let m = if i == j { d + MASK_OFFSET } else { d };
    if m < DUPLICATE_BELOW { m + MASK_OFFSET } else { m }
}

/// Adds `w * dD_rc/da_r` to `grad_a` row `r` and `w * dD_rc/dp_c` to `grad_p` row `c`.
fn add_dist_grad(
    grad_a: &mut [f32],
    grad_p: &mut [f32],
    a: &[f32],
    p: &[f32],
    (r, c): (usize, usize),
    dim: usize,
    w: f64,
) {
    let (rows, cols) = (r * dim..(r + 1) * dim, c * dim..(c + 1) * dim);
    let (ar, pc) = (&a[rows.clone()], &p[cols.clone()]);
    let k = w / (sq_dist(ar, pc) + SQRT_EPS).sqrt();
    let grads = grad_a[rows].iter_mut().zip(&mut grad_p[cols]);
    for ((ga, gp), (&x, &y)) in grads.zip(ar.iter().zip(pc)) {
        let g = (k * (x as f64 - y as f64)) as f32;
        *ga += g;
        *gp -= g;
    }
}

impl HardNetLoss {
    pub fn new(margin: f32, anchor_swap: bool) -> Result<Self> {
        let h = HardNetLoss { margin, anchor_swap };
        h.validate()?;
        Ok(h)
    }

    /// The margin must be finite and non-negative.
    pub fn validate(&self) -> Result<()> {
        super::check_margin("HardNet", self.margin)
    }

    /// Returns the loss and adds its gradients w.r.t. `a` and `p`.
    #[allow(clippy::too_many_arguments)]
    pub fn loss(
        &self,
        grad_a: &mut [f32],
        grad_p: &mut [f32],
        ws: &mut HardNetWorkspace,
        a: &[f32],
        p: &[f32],
        batch: usize,
        dim: usize,
    ) -> Result<f32> {
        self.validate()?;
        check_pairs("HardNet", (batch, dim, ws.batch), (a, p), (grad_a, grad_p))?;

        // Rows are independent, so the result does not depend on the thread count.
        ws.dist.par_chunks_mut(batch).enumerate().for_each(|(i, row)| {
            let ai = &a[i * dim..(i + 1) * dim];
            for (j, d) in row.iter_mut().enumerate() {
                *d = ((sq_dist(ai, &p[j * dim..(j + 1) * dim]) + SQRT_EPS).sqrt() as f32) + DIST_EPS;
            }
        });

        // One row-major pass finds every row minimum and every column minimum;
        // strict `<` keeps the first index on ties.
        ws.col_min.fill(f32::INFINITY);
        for (i, row) in ws.dist.chunks_exact(batch).enumerate() {
            let mut best = (f32::INFINITY, 0);
            for (j, &d) in row.iter().enumerate() {
                let m = masked(d, i, j);
                if m < best.0 {
                    best = (m, j);
                }
                if m < ws.col_min[j] {
                    ws.col_min[j] = m;
                    ws.col_arg[j] = i;
                }
            }
            ws.row_arg[i] = best.1;
        }

        let w = 1.0 / batch as f64;
        let mut total = 0.0f64;
        for i in 0..batch {
            let j = ws.row_arg[i];
            let mut neg = (masked(ws.dist[i * batch + j], i, j), (i, j));
            if self.anchor_swap && ws.col_min[i] < neg.0 {
                neg = (ws.col_min[i], (ws.col_arg[i], i));
            }
            ws.negative[i] = neg.1;
            let hinge = self.margin as f64 + ws.dist[i * batch + i] as f64 - neg.0 as f64;
            if hinge <= 0.0 {
                continue;
            }
            total += hinge;
            add_dist_grad(grad_a, grad_p, a, p, (i, i), dim, w);
            add_dist_grad(grad_a, grad_p, a, p, neg.1, dim, -w);
        }
        Ok((total * w) as f32)
    }
}
