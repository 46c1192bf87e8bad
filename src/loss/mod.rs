//! Losses: each returns the scalar loss and accumulates (`+=`) its gradient
//! with respect to the predictions into a caller-owned buffer.
//!
//! Every loss is a plain function (or a method of a small config struct) over
//! caller-owned buffers, outputs first. Sums are accumulated in f64 and the
//! loss is returned as f32. Gradients are added, never assigned, so a training
//! step zeroes its gradient arena once and several losses may share it.

pub mod distill;
pub mod hardnet;
pub mod l1;
pub mod mse;
pub mod sos;
pub mod triplet;

use crate::error::{Error, Result, check_len_of};
use hardnet::HardNetLoss;
use serde::{Deserialize, Serialize};
use triplet::TripletLoss;

/// The loss a training stage uses, as its configuration names it
/// (`l1`, `mse`, `triplet`, `hardnet` in `config.json` and on the command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// Mean absolute error (the seed's denoiser loss).
    L1,
    /// Mean squared error.
    Mse,
    /// Triplet margin loss over (anchor, positive, negative).
    Triplet,
    /// HardNet's hardest-in-batch loss over (anchor, positive) pairs.
    #[serde(rename = "hardnet")]
    HardNet,
}

impl LossKind {
    pub const ALL: [LossKind; 4] = [LossKind::L1, LossKind::Mse, LossKind::Triplet, LossKind::HardNet];

    pub fn name(self) -> &'static str {
        match self {
            LossKind::L1 => "l1",
            LossKind::Mse => "mse",
            LossKind::Triplet => "triplet",
            LossKind::HardNet => "hardnet",
        }
    }

    /// A denoiser's loss (`l1`, `mse`), or the error naming the ones that are.
    pub fn point(self) -> Result<PointLoss> {
        match self {
            LossKind::L1 => Ok(PointLoss::L1),
            LossKind::Mse => Ok(PointLoss::Mse),
            other => Err(Error::InvalidArgument(format!("unknown denoiser loss '{other}' (expected l1 or mse)"))),
        }
    }

    /// A descriptor's loss (`triplet`, `hardnet`) with `margin`, or the error naming the ones that are.
    pub fn tuple(self, margin: f32) -> Result<TupleLoss> {
        match self {
            LossKind::Triplet => Ok(TupleLoss::Triplet(TripletLoss::new(margin)?)),
            // Anchor swap on, as HardNet trains.
            LossKind::HardNet => Ok(TupleLoss::HardNet(HardNetLoss::new(margin, true)?)),
            other => {
                Err(Error::InvalidArgument(format!("unknown descriptor loss '{other}' (expected triplet or hardnet)")))
            }
        }
    }

    /// What one item of the loss is, for throughput figures: patches, triplets or pairs.
    pub fn unit(self) -> &'static str {
        match self {
            LossKind::L1 | LossKind::Mse => "patches",
            LossKind::Triplet => "triplets",
            LossKind::HardNet => "pairs",
        }
    }
}

impl std::fmt::Display for LossKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for LossKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<LossKind> {
        LossKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "unknown loss '{s}' (expected l1 or mse for a denoiser, triplet or hardnet for a descriptor)"
            ))
        })
    }
}

/// A denoiser's pointwise loss, on either backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointLoss {
    L1,
    Mse,
}

impl PointLoss {
    /// The loss on the CPU: returns it, adds its gradient w.r.t. `pred` into `grad`.
    pub fn cpu(self, grad: &mut [f32], pred: &[f32], target: &[f32]) -> Result<f32> {
        match self {
            PointLoss::L1 => l1::l1_loss(grad, pred, target),
            PointLoss::Mse => mse::mse_loss(grad, pred, target),
        }
    }
}

/// A descriptor loss over `[K][n][128]` descriptors, on either backend.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TupleLoss {
    Triplet(TripletLoss),
    HardNet(HardNetLoss),
}

impl TupleLoss {
    /// Patches per item: 3 for triplets, 2 for HardNet pairs.
    pub fn k(&self) -> usize {
        match self {
            TupleLoss::Triplet(_) => 3,
            TupleLoss::HardNet(_) => 2,
        }
    }
}

/// Shared body of the elementwise regression losses: checks the three
/// lengths, then `loss = (1/n) sum_i f(d_i)` with `d_i = pred_i - target_i`
/// and `grad_i += f'(d_i) / n`, where `term(d)` returns `(f(d), f'(d))`.
pub(crate) fn mean_pointwise(
    what: &str,
    grad: &mut [f32],
    pred: &[f32],
    target: &[f32],
    term: impl Fn(f32) -> (f64, f64),
) -> Result<f32> {
    let n = pred.len();
    if n == 0 {
        return Err(crate::arg_err!("{what}: the mean over an empty prediction is undefined"));
    }
    check_len_of(what, "target", target.len(), n)?;
    check_len_of(what, "gradient", grad.len(), n)?;
    let inv_n = 1.0 / n as f64;
    let mut sum = 0.0f64;
    for ((g, &p), &t) in grad.iter_mut().zip(pred).zip(target) {
        // The difference is taken in f32, as the f32 forward of PyTorch does.
        let (f, df) = term(p - t);
        sum += f;
        *g += (df * inv_n) as f32;
    }
    Ok((sum * inv_n) as f32)
}

/// Checks that `margin` is finite and non-negative.
pub(crate) fn check_margin(what: &str, margin: f32) -> Result<()> {
    if !margin.is_finite() || margin < 0.0 {
        return Err(crate::arg_err!("{what} margin must be finite and >= 0, got {margin}"));
    }
    Ok(())
}

/// Checks the buffers of a loss over `(anchor, positive)` pairs: `a`, `p`
/// and their gradients `[batch, dim]` each, and a workspace built for
/// `ws_batch` items.
pub(crate) fn check_pairs(
    what: &str,
    (batch, dim, ws_batch): (usize, usize, usize),
    (a, p): (&[f32], &[f32]),
    (grad_a, grad_p): (&[f32], &[f32]),
) -> Result<()> {
    check_rows(
        what,
        batch,
        dim,
        &[
            ("anchors", a.len()),
            ("positives", p.len()),
            ("anchor gradient", grad_a.len()),
            ("positive gradient", grad_p.len()),
        ],
    )?;
    if ws_batch != batch {
        return Err(crate::shape_err!("{what} workspace built for batch {ws_batch}, called with {batch}"));
    }
    Ok(())
}

/// Checks `batch, dim > 0` and that every named `[batch, dim]` row-major
/// buffer, given by its length, holds `batch * dim` elements.
pub(crate) fn check_rows(what: &str, batch: usize, dim: usize, buffers: &[(&str, usize)]) -> Result<()> {
    if batch == 0 || dim == 0 {
        return Err(crate::arg_err!("{what} loss needs batch and dim > 0, got {batch} x {dim}"));
    }
    let want = batch.checked_mul(dim).ok_or_else(|| crate::shape_err!("{what}: {batch} x {dim} overflows"))?;
    for &(name, len) in buffers {
        check_len_of(what, name, len, want)?;
    }
    Ok(())
}
