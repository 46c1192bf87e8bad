//! Training: the denoiser and descriptor training loops, checkpoints that
//! resume bit-exactly, per-epoch metrics and the run report.

pub mod metrics;
pub mod report;
