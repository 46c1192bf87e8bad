//! Optimizers over flat parameter arenas. State is plain data (`Vec<f32>`s
//! and counters) that a checkpoint saves and restores as is.
//!
//! Contract shared by every optimizer: `step(&self, state, params, grads,
//! ranges)` updates `params[r]` for each `r` in `ranges` (the trainable
//! ranges of a `ParamLayout`, ascending and disjoint) and leaves every other
//! element of `params` untouched, bit for bit. `params`, `grads` and every
//! state buffer have the arena's length; the state's step counter counts
//! calls, so the same `ranges` must be passed at every step. Hyperparameters
//! are f64, as PyTorch's Python floats: scalars derived from them (`1 - beta`,
//! bias corrections) are computed in f64 and rounded to f32 once, where
//! PyTorch hands them to its f32 kernels.
//!
//! Each range is cut into fixed `CHUNK`-sized pieces run in parallel; the
//! update is elementwise, so results do not depend on the thread count.

pub mod adam;
pub mod sgd;

use crate::error::{Error, Result, check_len, check_len_of};
use adam::{Adam, AdamState};
use serde::{Deserialize, Serialize};
use sgd::{Sgd, SgdState};
use std::ops::Range;

/// Elements per parallel piece of a range.
pub(crate) const CHUNK: usize = 1 << 14;

/// Checks buffer lengths against `params` and that `ranges` are ascending,
/// disjoint and inside the arena.
pub(crate) fn check_step(
    what: &str,
    params: usize,
    grads: usize,
    state: &[(&str, usize)],
    ranges: &[Range<usize>],
) -> Result<()> {
    check_len_of(what, "gradients", grads, params)?;
    for &(name, len) in state {
        if len != params {
            check_len(&format!("{what} state {name}"), len, params)?;
        }
    }
    let mut end = 0;
    for r in ranges {
        if r.start > r.end || r.end > params {
            return Err(crate::shape_err!("{what}: range {r:?} is not inside an arena of {params} elements"));
        }
        if r.start < end {
            return Err(crate::arg_err!("{what}: range {r:?} overlaps or precedes the previous one"));
        }
        end = r.end;
    }
    Ok(())
}

/// `Err(InvalidArgument)` naming the hyperparameter unless `ok` holds and `value` is finite.
pub(crate) fn check_hyper(what: &str, name: &str, value: f64, ok: bool, domain: &str) -> Result<()> {
    if value.is_finite() && ok { Ok(()) } else { Err(crate::arg_err!("{what}: {name} must be {domain}, got {value}")) }
}

/// Which optimizer, with PyTorch's hyperparameter names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OptimizerConfig {
    Sgd { lr: f64, momentum: f64, nesterov: bool, weight_decay: f64 },
    Adam { lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64 },
}

impl OptimizerConfig {
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::Sgd { lr, .. } | OptimizerConfig::Adam { lr, .. } => *lr,
        }
    }
    pub fn set_lr(&mut self, v: f64) {
        match self {
            OptimizerConfig::Sgd { lr, .. } | OptimizerConfig::Adam { lr, .. } => *lr = v,
        }
    }
    /// PyTorch's defaults for an optimizer named `sgd` or `adam`.
    pub fn named(name: &str, lr: f64) -> Result<Self> {
        Ok(name.parse::<OptimizerKind>()?.config(lr))
    }
}

/// Which optimizer, without its hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OptimizerKind {
    Sgd,
    Adam,
}

impl OptimizerKind {
    pub const ALL: [OptimizerKind; 2] = [OptimizerKind::Sgd, OptimizerKind::Adam];

    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
        }
    }

    /// This optimizer at learning rate `lr` with PyTorch's defaults for the rest.
    pub fn config(self, lr: f64) -> OptimizerConfig {
        match self {
            OptimizerKind::Sgd => OptimizerConfig::Sgd { lr, momentum: 0.0, nesterov: false, weight_decay: 0.0 },
            OptimizerKind::Adam => OptimizerConfig::Adam { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
        }
    }
}

impl std::str::FromStr for OptimizerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<OptimizerKind> {
        OptimizerKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| Error::InvalidArgument(format!("unknown optimizer '{s}' (expected sgd or adam)")))
    }
}

/// Optimizer state, plain data for checkpoints.
#[derive(Clone, Debug, PartialEq)]
pub enum OptimizerState {
    Sgd(SgdState),
    Adam(AdamState),
}

/// An optimizer and its state over one parameter arena.
pub struct Optimizer {
    pub config: OptimizerConfig,
    pub state: OptimizerState,
}

impl Optimizer {
    pub fn new(config: OptimizerConfig, len: usize) -> Result<Self> {
        let state = match &config {
            OptimizerConfig::Sgd { .. } => OptimizerState::Sgd(SgdState::new(len)),
            OptimizerConfig::Adam { .. } => OptimizerState::Adam(AdamState::new(len)),
        };
        let opt = Optimizer { config, state };
        opt.validate()?;
        Ok(opt)
    }

    fn validate(&self) -> Result<()> {
        match self.config {
            OptimizerConfig::Sgd { lr, momentum, nesterov, weight_decay } => {
                Sgd { lr, momentum, dampening: 0.0, nesterov, weight_decay }.validate()
            }
            OptimizerConfig::Adam { lr, beta1, beta2, eps, weight_decay } => {
                Adam { lr, beta1, beta2, eps, weight_decay }.validate()
            }
        }
    }

    /// One update of the trainable `ranges` of `params` from `grads`.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32], ranges: &[Range<usize>]) -> Result<()> {
        match (&self.config, &mut self.state) {
            (&OptimizerConfig::Sgd { lr, momentum, nesterov, weight_decay }, OptimizerState::Sgd(s)) => {
                Sgd { lr, momentum, dampening: 0.0, nesterov, weight_decay }.step(s, params, grads, ranges)
            }
            (&OptimizerConfig::Adam { lr, beta1, beta2, eps, weight_decay }, OptimizerState::Adam(s)) => {
                Adam { lr, beta1, beta2, eps, weight_decay }.step(s, params, grads, ranges)
            }
            _ => Err(Error::InvalidArgument("optimizer state of another kind".into())),
        }
    }
}
