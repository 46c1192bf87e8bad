//! Training: the denoiser and descriptor training loops, checkpoints that
//! resume bit-exactly, per-epoch metrics and the run report.

pub mod checkpoint;
pub mod config;
pub mod denoiser;
pub mod descriptor;
pub mod joint;
pub mod metrics;
pub mod parallel;
pub mod report;
pub mod session;
