//! Second-order similarity regulariser of SOSNet (Tian et al. 2019,
//! "SOSNet: Second Order Similarity Regularization for Local Descriptor
//! Learning"), added to the HardNet loss with a weight.
//!
//! Contract: anchors `a` and positives `p` are `[batch, dim]` row-major, row
//! `i` of `a` matching row `i` of `p`; `grad_a`, `grad_p` have the same length
//! and receive `+=` the weighted gradients. A `SosWorkspace` built for the
//! same `batch` holds the two distance matrices and the neighbour sets.
//!
//! Forward, with `A_ij = sqrt(||a_i - a_j||^2 + 1e-6)` and
//! `P_ij = sqrt(||p_i - p_j||^2 + 1e-6)` (the anchors' and the positives'
//! own distance matrices):
//! - `c_i` = the `k` nearest anchors of `a_i` (by `A`) united with the `k`
//!   nearest positives of `p_i` (by `P`), `i` itself excluded; ties go to the
//!   lower index, so the set does not depend on the thread count;
//! - `R_i = sqrt(sum_{j in c_i} (A_ij - P_ij)^2 + 1e-8)`;
//! - `L = w (1/B) sum_i R_i`.
//!
//! It asks the two views of the batch to keep the same neighbourhood
//! structure, not only the matching pairs close: a descriptor of a denoised
//! patch whose neighbours differ from its clean twin's is penalised even when
//! the pair itself is matched.
//!
//! Gradient: the neighbour sets are constants (piecewise, as the selection of
//! HardNet's negatives). With `e_ij = A_ij - P_ij` and `s = w / (B R_i)`:
//! `dL/da_i += s e_ij (a_i - a_j) / A_ij`, `dL/da_j -= the same`,
//! `dL/dp_i -= s e_ij (p_i - p_j) / P_ij`, `dL/dp_j += the same`.

use super::check_pairs;
use crate::error::Result;
use rayon::prelude::*;

/// Inside the square root of every distance, so the gradient is finite at 0.
const SQRT_EPS: f64 = 1e-6;
/// Inside the square root of each row's term, as SOSNet's code adds it.
const ROW_EPS: f64 = 1e-8;
/// Neighbours per view in SOSNet's setting.
pub const SOS_KNN: usize = 8;

/// Configuration of the regulariser.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SosRegularizer {
    /// Weight of the regulariser in the total loss (SOSNet: 1).
    pub weight: f32,
    /// Nearest neighbours taken from each view.
    pub knn: usize,
}

impl SosRegularizer {
    pub fn new(weight: f32, knn: usize) -> Result<Self> {
        let s = SosRegularizer { weight, knn };
        s.validate()?;
        Ok(s)
    }

    /// The weight must be finite and non-negative, and at least one neighbour taken.
    pub fn validate(&self) -> Result<()> {
        if !self.weight.is_finite() || self.weight < 0.0 {
            return Err(crate::arg_err!("SOS regulariser weight must be finite and >= 0, got {}", self.weight));
        }
        if self.knn == 0 {
            return Err(crate::arg_err!("SOS regulariser needs at least one neighbour"));
        }
        Ok(())
    }
}

/// Caller-owned scratch for one batch size: the two `B x B` distance
/// matrices, the neighbour mask and a row of indices for the selection.
#[derive(Clone, Debug, PartialEq)]
pub struct SosWorkspace {
    batch: usize,
    da: Vec<f64>,
    dp: Vec<f64>,
    /// `[B, B]`: whether `j` is in `c_i`.
    member: Vec<bool>,
    order: Vec<usize>,
}

impl SosWorkspace {
    pub fn new(batch: usize) -> Self {
        SosWorkspace {
            batch,
            da: vec![0.0; batch * batch],
            dp: vec![0.0; batch * batch],
            member: vec![false; batch * batch],
            order: Vec::with_capacity(batch),
        }
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Whether `j` was a neighbour of `i` in the last call.
    pub fn is_neighbour(&self, i: usize, j: usize) -> bool {
        self.member[i * self.batch + j]
    }
}

/// `D_ij = sqrt(||x_i - x_j||^2 + 1e-6)` for every row of `dist` (`[B, B]`).
fn self_distances(dist: &mut [f64], x: &[f32], batch: usize, dim: usize) {
    // Rows are independent, so the result does not depend on the thread count.
    dist.par_chunks_mut(batch).enumerate().for_each(|(i, row)| {
        let xi = &x[i * dim..(i + 1) * dim];
        for (j, d) in row.iter_mut().enumerate() {
            let s: f64 = xi
                .iter()
                .zip(&x[j * dim..(j + 1) * dim])
                .map(|(&u, &v)| {
                    let t = u as f64 - v as f64;
                    t * t
                })
                .sum();
            *d = (s + SQRT_EPS).sqrt();
        }
    });
}

/// Marks in `member` row `i` the `k` entries of `dist` row `i` nearest to
/// it (itself excluded; ties to the lower index).
fn mark_nearest(member: &mut [bool], order: &mut Vec<usize>, dist: &[f64], i: usize, batch: usize, k: usize) {
    let row = &dist[i * batch..(i + 1) * batch];
    order.clear();
    order.extend((0..batch).filter(|&j| j != i));
    let k = k.min(order.len());
    if k == 0 {
        return;
    }
    let by = |x: &usize, y: &usize| row[*x].total_cmp(&row[*y]).then(x.cmp(y));
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, by);
    }
    for &j in &order[..k] {
        member[i * batch + j] = true;
    }
}

impl SosRegularizer {
    /// Returns `w (1/B) sum_i R_i` and adds its gradients w.r.t. `a` and `p`.
    #[allow(clippy::too_many_arguments)]
    pub fn loss(
        &self,
        grad_a: &mut [f32],
        grad_p: &mut [f32],
        ws: &mut SosWorkspace,
        a: &[f32],
        p: &[f32],
        batch: usize,
        dim: usize,
    ) -> Result<f32> {
        self.validate()?;
        check_pairs("SOS", (batch, dim, ws.batch), (a, p), (grad_a, grad_p))?;
        self_distances(&mut ws.da, a, batch, dim);
        self_distances(&mut ws.dp, p, batch, dim);
        ws.member.fill(false);
        for i in 0..batch {
            mark_nearest(&mut ws.member, &mut ws.order, &ws.da, i, batch, self.knn);
            mark_nearest(&mut ws.member, &mut ws.order, &ws.dp, i, batch, self.knn);
        }

        let w = self.weight as f64 / batch as f64;
        let mut total = 0.0f64;
        // Serial: row i scatters into rows j, and the sums stay in one order for any thread count.
        for i in 0..batch {
            let cols = i * batch..(i + 1) * batch;
            let sq: f64 = ws.member[cols.clone()]
                .iter()
                .zip(ws.da[cols.clone()].iter().zip(&ws.dp[cols.clone()]))
                .filter(|(m, _)| **m)
                .map(|(_, (x, y))| (x - y) * (x - y))
                .sum();
            let r = (sq + ROW_EPS).sqrt();
            total += r;
            if w == 0.0 {
                continue;
            }
            let s = w / r;
            for j in (0..batch).filter(|&j| ws.member[i * batch + j]) {
                let (aij, pij) = (ws.da[i * batch + j], ws.dp[i * batch + j]);
                let e = s * (aij - pij);
                add_pair_grad(grad_a, a, (i, j), dim, e / aij);
                add_pair_grad(grad_p, p, (i, j), dim, -e / pij);
            }
        }
        Ok((total * w) as f32)
    }
}

/// `grad_i += c (x_i - x_j)`, `grad_j -= c (x_i - x_j)`.
fn add_pair_grad(grad: &mut [f32], x: &[f32], (i, j): (usize, usize), dim: usize, c: f64) {
    for t in 0..dim {
        let g = (c * (x[i * dim + t] as f64 - x[j * dim + t] as f64)) as f32;
        grad[i * dim + t] += g;
        grad[j * dim + t] -= g;
    }
}
