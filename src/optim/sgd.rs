//! Stochastic gradient descent with momentum, as `torch.optim.SGD`.
//!
//! Per trainable element, with `p` the parameter and `grad` its gradient:
//! - `g = grad + weight_decay * p` (the term is skipped when `weight_decay == 0`);
//! - if `momentum != 0`: `buf = g` on the first step, else
//!   `buf = momentum * buf + (1 - dampening) * g`; then
//!   `g = nesterov ? g + momentum * buf : buf`;
//! - `p = p - lr * g`.
//!
//! Nesterov requires `momentum > 0` and `dampening == 0`. The state is the
//! momentum buffer (PyTorch's `momentum_buffer`) and the step counter, which
//! tells the first step apart.

use super::{CHUNK, check_hyper, check_step};
use crate::error::Result;
use rayon::prelude::*;
use std::ops::Range;

/// SGD hyperparameters (PyTorch's names and defaults, `lr` excepted).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
}

/// SGD state: one momentum buffer over the whole arena and the step count.
#[derive(Clone, Debug, PartialEq)]
pub struct SgdState {
    pub momentum_buffer: Vec<f32>,
    pub step: u64,
}

impl SgdState {
    /// Fresh state for an arena of `len` elements.
    pub fn new(len: usize) -> Self {
        SgdState { momentum_buffer: vec![0.0; len], step: 0 }
    }
}

impl Sgd {
    /// Plain SGD: no momentum, no dampening, no weight decay.
    pub fn new(lr: f64) -> Self {
        Sgd { lr, momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0 }
    }

    /// The domains `torch.optim.SGD` enforces, plus finiteness.
    pub fn validate(&self) -> Result<()> {
        check_hyper("SGD", "lr", self.lr, self.lr >= 0.0, ">= 0")?;
        check_hyper("SGD", "momentum", self.momentum, self.momentum >= 0.0, ">= 0")?;
        check_hyper("SGD", "dampening", self.dampening, true, "finite")?;
        check_hyper("SGD", "weight_decay", self.weight_decay, self.weight_decay >= 0.0, ">= 0")?;
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(crate::arg_err!(
                "SGD: Nesterov momentum requires momentum > 0 and dampening 0, got momentum {} and dampening {}",
                self.momentum,
                self.dampening
            ));
        }
        Ok(())
    }

    /// One update of `params[r]` for every `r` in `ranges` (see the module docs).
    pub fn step(&self, state: &mut SgdState, params: &mut [f32], grads: &[f32], ranges: &[Range<usize>]) -> Result<()> {
        self.validate()?;
        check_step("SGD", params.len(), grads.len(), &[("momentum_buffer", state.momentum_buffer.len())], ranges)?;
        let first = state.step == 0;
        let lr = self.lr as f32;
        let wd = self.weight_decay as f32;
        let momentum = self.momentum as f32;
        let keep = (1.0 - self.dampening) as f32;
        let (use_wd, use_momentum, nesterov) = (self.weight_decay != 0.0, self.momentum != 0.0, self.nesterov);
        let update = |p: &mut [f32], g: &[f32], buf: &mut [f32]| {
            for ((p, &g), b) in p.iter_mut().zip(g).zip(buf) {
                let mut d = if use_wd { g + wd * *p } else { g };
                if use_momentum {
                    *b = if first { d } else { momentum * *b + keep * d };
                    d = if nesterov { d + momentum * *b } else { *b };
                }
                *p -= lr * d;
            }
        };
        for r in ranges {
            params[r.clone()]
                .par_chunks_mut(CHUNK)
                .zip(grads[r.clone()].par_chunks(CHUNK))
                .zip(state.momentum_buffer[r.clone()].par_chunks_mut(CHUNK))
                .for_each(|((p, g), b)| update(p, g, b));
        }
        state.step += 1;
        Ok(())
    }
}
