//! Optimizers over flat parameter arenas. State is plain data (`Vec<f32>`s
//! and counters) that a checkpoint saves and restores as is.

pub mod adam;
pub mod sgd;
