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

use crate::error::{Result, check_len, check_len_of};
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
