//! What a training run records per epoch: appended as one JSON line to
//! `metrics.jsonl` in the run folder, kept in checkpoints, and drawn by the report.

use serde::{Deserialize, Serialize};

/// Mean average precision of the three HPatches tasks.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MapScores {
    pub verification: f64,
    pub matching: f64,
    pub retrieval: f64,
}

impl MapScores {
    pub fn mean(&self) -> f64 {
        (self.verification + self.matching + self.retrieval) / 3.0
    }
}

/// One finished epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: u64,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Loss on the fixed validation batches (held-out test sequences), if measured.
    pub val_loss: Option<f64>,
    /// HPatches mAP on the validation sequences, if measured (descriptor training).
    pub map: Option<MapScores>,
    /// Wall time of the epoch's training steps.
    pub seconds: f64,
    /// Training throughput: patches per second (denoiser) or triplets/pairs per second (descriptor).
    pub items_per_second: f64,
}
