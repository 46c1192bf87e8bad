//! The losses on a device, as `crate::loss` defines them: each writes one
//! term per element or item into `terms` (whose sum, scaled, is the loss:
//! `Backend::sum_rows` against ones) and accumulates (`+=`) its gradient.
//!
//! Shapes: pointwise losses over `len` values; descriptor losses over rows of
//! `d` values laid out `[K][b][d]` (anchors, positives, negatives), `terms`
//! one per item.

use super::backend::{Backend, Buf, Kernel, ka};
use crate::error::Result;
use crate::loss::PointLoss;
use crate::loss::hardnet::HardNetLoss;
use crate::loss::triplet::TripletLoss;

/// L1 or MSE of `pred` against `target` (`len` values): `terms` `|d|` or `d^2`, `grad += dL/dpred`.
pub fn point(
    be: &Backend,
    loss: PointLoss,
    len: usize,
    (pred, target): (Buf, Buf),
    grad: Buf,
    terms: Buf,
) -> Result<()> {
    let ptrs = [grad.at(0), terms.at(0), pred.at(0), target.at(0)];
    let kind = (loss == PointLoss::Mse) as i64;
    be.launch(Kernel::nh_point_loss, len, ka(&ptrs, &[kind], &[(1.0 / len as f64) as f32]))
}

/// Triplet loss on `b` triplets in `out` (`[3][b][d]`): `terms` the hinges, `grad += `.
pub fn triplet(be: &Backend, t: &TripletLoss, (b, d): (usize, usize), out: Buf, grad: Buf, terms: Buf) -> Result<()> {
    t.validate()?;
    be.launch(Kernel::nh_triplet, b, ka(&[grad.at(0), out.at(0), terms.at(0)], &[d as i64, b as i64], &[t.margin]))
}

/// HardNet loss scratch for `b` pairs: the distance matrix and each anchor's selected negative.
pub struct HardNetScratch {
    pub b: usize,
    dist: Buf,
    neg_row: Buf,
    neg_col: Buf,
    k_pos: Buf,
    k_neg: Buf,
}

impl HardNetScratch {
    pub fn new(be: &Backend, b: usize) -> Result<HardNetScratch> {
        Ok(HardNetScratch {
            b,
            dist: be.alloc(b * b)?,
            neg_row: be.alloc(b)?,
            neg_col: be.alloc(b)?,
            k_pos: be.alloc(b)?,
            k_neg: be.alloc(b)?,
        })
    }

    /// The distance matrix `D` of the last call, `[b][b]`.
    pub fn dist(&self) -> Buf {
        self.dist
    }
}

/// HardNet loss on `s.b` pairs, anchors and positives `[b][d]` each:
/// distances, the hardest negative per anchor, then the gradient as a
/// gather per element. `terms` the hinges, `grad_a += `, `grad_p += `.
pub fn hardnet(
    be: &Backend,
    h: &HardNetLoss,
    d: usize,
    (anchors, positives): (Buf, Buf),
    (grad_a, grad_p): (Buf, Buf),
    terms: Buf,
    s: &HardNetScratch,
) -> Result<()> {
    h.validate()?;
    let b = s.b;
    let ints = [d as i64, b as i64, h.anchor_swap as i64];
    be.launch(Kernel::nh_hn_dist, b * b, ka(&[s.dist.at(0), anchors.at(0), positives.at(0)], &ints, &[]))?;
    let ptrs = [s.dist.at(0), terms.at(0), s.neg_row.at(0), s.neg_col.at(0), s.k_pos.at(0), s.k_neg.at(0)];
    be.launch(Kernel::nh_hn_select, b, ka(&ptrs, &ints, &[h.margin]))?;
    let ptrs = [
        grad_a.at(0),
        grad_p.at(0),
        anchors.at(0),
        positives.at(0),
        s.neg_row.at(0),
        s.neg_col.at(0),
        s.k_pos.at(0),
        s.k_neg.at(0),
    ];
    be.launch(Kernel::nh_hn_grad, 2 * b * d, ka(&ptrs, &ints, &[]))
}
