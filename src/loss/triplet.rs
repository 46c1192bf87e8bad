//! Triplet loss on mean squared distances (the seed report's Keras loss).
//!
//! Contract: anchors `a`, positives `p` and negatives `n` are `[batch, dim]`
//! row-major with `batch, dim > 0`; `grad_a`, `grad_p`, `grad_n` have the same
//! length and receive `+=` the gradients.
//!
//! Forward, with `dp_b = (1/D) sum_d (a_bd - p_bd)^2` and
//! `dn_b = (1/D) sum_d (a_bd - n_bd)^2`:
//! `L = (1/B) sum_b max(0, dp_b - dn_b + margin)`.
//!
//! Gradient of an active row (`dp_b - dn_b + margin > 0`), with `c = 2/(B D)`:
//! `dL/da_b = c ((a_b - p_b) - (a_b - n_b)) = c (n_b - p_b)`,
//! `dL/dp_b = -c (a_b - p_b)`, `dL/dn_b = c (a_b - n_b)`.
//! An inactive row, including one exactly at the hinge, contributes nothing
//! (the subgradient 0 of `max(0, x)` at 0, as PyTorch's ReLU).

use super::check_rows;
use crate::error::Result;

/// Configuration of the triplet loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TripletLoss {
    /// Required gap between the negative and the positive mean squared distance.
    pub margin: f32,
}

impl Default for TripletLoss {
    fn default() -> Self {
        TripletLoss { margin: 1.0 }
    }
}

impl TripletLoss {
    pub fn new(margin: f32) -> Result<Self> {
        let t = TripletLoss { margin };
        t.validate()?;
        Ok(t)
    }

    /// The margin must be finite and non-negative.
    pub fn validate(&self) -> Result<()> {
        super::check_margin("triplet", self.margin)
    }

    /// Returns the loss and adds its gradients w.r.t. `a`, `p` and `n`.
    #[allow(clippy::too_many_arguments)]
    pub fn loss(
        &self,
        grad_a: &mut [f32],
        grad_p: &mut [f32],
        grad_n: &mut [f32],
        a: &[f32],
        p: &[f32],
        n: &[f32],
        batch: usize,
        dim: usize,
    ) -> Result<f32> {
        self.validate()?;
        check_rows(
            "triplet",
            batch,
            dim,
            &[
                ("anchors", a.len()),
                ("positives", p.len()),
                ("negatives", n.len()),
                ("anchor gradient", grad_a.len()),
                ("positive gradient", grad_p.len()),
                ("negative gradient", grad_n.len()),
            ],
        )?;
        let inv_d = 1.0 / dim as f64;
        let c = (2.0 * inv_d / batch as f64) as f32;
        let mut total = 0.0f64;
        let rows = a
            .chunks_exact(dim)
            .zip(p.chunks_exact(dim))
            .zip(n.chunks_exact(dim))
            .zip(grad_a.chunks_exact_mut(dim))
            .zip(grad_p.chunks_exact_mut(dim))
            .zip(grad_n.chunks_exact_mut(dim));
        for (((((ar, pr), nr), ga), gp), gn) in rows {
            let (mut sp, mut sn) = (0.0f64, 0.0f64);
            for ((&x, &y), &z) in ar.iter().zip(pr).zip(nr) {
                let (u, v) = ((x - y) as f64, (x - z) as f64);
                sp += u * u;
                sn += v * v;
            }
            let hinge = (sp - sn) * inv_d + self.margin as f64;
            if hinge <= 0.0 {
                continue;
            }
            total += hinge;
            let grads = ga.iter_mut().zip(gp.iter_mut()).zip(gn.iter_mut());
            for (((ga, gp), gn), ((&x, &y), &z)) in grads.zip(ar.iter().zip(pr).zip(nr)) {
                *ga += c * (z - y);
                *gp -= c * (x - y);
                *gn += c * (x - z);
            }
        }
        Ok((total / batch as f64) as f32)
    }
}
