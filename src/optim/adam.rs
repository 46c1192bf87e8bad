//! Adam (Kingma & Ba 2015), as `torch.optim.Adam` (non-fused, amsgrad off).
//!
//! Per trainable element, at step `t` (counted from 1):
//! - `g = grad + weight_decay * p` (L2 on the gradient, not AdamW's decoupled
//!   decay; the term is skipped when `weight_decay == 0`);
//! - `m = beta1 * m + (1 - beta1) * g`;
//! - `v = beta2 * v + (1 - beta2) * g * g`;
//! - with `bc1 = 1 - beta1^t`, `bc2 = 1 - beta2^t` (f64):
//!   `step_size = lr / bc1`, `denom = sqrt(v) / sqrt(bc2) + eps`,
//!   `p = p - step_size * (m / denom)`.
//!
//! This is PyTorch's formulation, algebraically `p -= lr * m_hat / (sqrt(v_hat) + eps)`
//! with `eps` added after the bias correction of `v`.

use super::{CHUNK, check_hyper, check_step};
use crate::error::Result;
use rayon::prelude::*;
use std::ops::Range;

/// Adam hyperparameters (PyTorch's names and defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for Adam {
    fn default() -> Self {
        Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// Adam state: first and second moments over the whole arena and the step count.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamState {
    pub exp_avg: Vec<f32>,
    pub exp_avg_sq: Vec<f32>,
    pub step: u64,
}

impl AdamState {
    /// Fresh state for an arena of `len` elements.
    pub fn new(len: usize) -> Self {
        AdamState { exp_avg: vec![0.0; len], exp_avg_sq: vec![0.0; len], step: 0 }
    }
}

impl Adam {
    /// PyTorch's defaults with the given learning rate.
    pub fn new(lr: f64) -> Self {
        Adam { lr, ..Adam::default() }
    }

    /// The domains `torch.optim.Adam` enforces, plus finiteness.
    pub fn validate(&self) -> Result<()> {
        check_hyper("Adam", "lr", self.lr, self.lr >= 0.0, ">= 0")?;
        check_hyper("Adam", "eps", self.eps, self.eps >= 0.0, ">= 0")?;
        check_hyper("Adam", "beta1", self.beta1, (0.0..1.0).contains(&self.beta1), "in [0, 1)")?;
        check_hyper("Adam", "beta2", self.beta2, (0.0..1.0).contains(&self.beta2), "in [0, 1)")?;
        check_hyper("Adam", "weight_decay", self.weight_decay, self.weight_decay >= 0.0, ">= 0")
    }

    /// One update of `params[r]` for every `r` in `ranges` (see the module docs).
    pub fn step(
        &self,
        state: &mut AdamState,
        params: &mut [f32],
        grads: &[f32],
        ranges: &[Range<usize>],
    ) -> Result<()> {
        self.validate()?;
        check_step(
            "Adam",
            params.len(),
            grads.len(),
            &[("exp_avg", state.exp_avg.len()), ("exp_avg_sq", state.exp_avg_sq.len())],
            ranges,
        )?;
        let t = (state.step + 1) as f64;
        let bc1 = 1.0 - self.beta1.powf(t);
        let bc2 = 1.0 - self.beta2.powf(t);
        let step_size = (self.lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let (b1, b2) = (self.beta1 as f32, self.beta2 as f32);
        let (one_b1, one_b2) = ((1.0 - self.beta1) as f32, (1.0 - self.beta2) as f32);
        let (eps, wd, use_wd) = (self.eps as f32, self.weight_decay as f32, self.weight_decay != 0.0);
        let update = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                let g = if use_wd { g + wd * *p } else { g };
                *m = b1 * *m + one_b1 * g;
                *v = b2 * *v + one_b2 * (g * g);
                let denom = v.sqrt() / bc2_sqrt + eps;
                *p -= step_size * (*m / denom);
            }
        };
        for r in ranges {
            params[r.clone()]
                .par_chunks_mut(CHUNK)
                .zip(grads[r.clone()].par_chunks(CHUNK))
                .zip(state.exp_avg[r.clone()].par_chunks_mut(CHUNK))
                .zip(state.exp_avg_sq[r.clone()].par_chunks_mut(CHUNK))
                .for_each(|(((p, g), m), v)| update(p, g, m, v));
        }
        state.step += 1;
        Ok(())
    }
}
