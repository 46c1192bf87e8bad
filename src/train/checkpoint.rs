//! Checkpoints: everything a run needs to continue exactly where it stopped.
//!
//! One safetensors file (`checkpoint.safetensors` in the run folder) holding
//! the parameter arena (`params`, running statistics included), the
//! optimizer's buffers (`sgd.momentum_buffer`, or `adam.exp_avg` and
//! `adam.exp_avg_sq`) and, in the metadata key `state`, JSON with the
//! completed epochs, the optimizer step counter, the sampler's state, the
//! dropout RNG state, the metrics so far and the configuration. It is written
//! atomically after every epoch (temporary file, sync, rename), so a crash at
//! any moment leaves the previous checkpoint intact.

use super::config::TrainConfig;
use super::metrics::EpochMetrics;
use crate::data::sampler::SamplerState;
use crate::error::{Error, Result};
use crate::optim::OptimizerState;
use crate::optim::adam::AdamState;
use crate::optim::sgd::SgdState;
use crate::weights::{self, Tensor, WeightsFile};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The JSON part of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub epochs_done: u64,
    pub opt_step: u64,
    pub sampler: SamplerState,
    pub dropout_rng: u64,
    pub metrics: Vec<EpochMetrics>,
    pub config: TrainConfig,
}

/// A whole checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub meta: CheckpointMeta,
    pub params: Vec<f32>,
    pub optimizer: OptimizerState,
}

fn flat(data: &[f32]) -> Tensor {
    Tensor { shape: vec![data.len()], data: data.to_vec() }
}

impl Checkpoint {
    /// Writes the checkpoint atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = BTreeMap::new();
        tensors.insert("params".to_string(), flat(&self.params));
        let step = match &self.optimizer {
            OptimizerState::Sgd(s) => {
                tensors.insert("sgd.momentum_buffer".into(), flat(&s.momentum_buffer));
                s.step
            }
            OptimizerState::Adam(s) => {
                tensors.insert("adam.exp_avg".into(), flat(&s.exp_avg));
                tensors.insert("adam.exp_avg_sq".into(), flat(&s.exp_avg_sq));
                s.step
            }
        };
        let meta = CheckpointMeta { opt_step: step, ..self.meta.clone() };
        let mut metadata = BTreeMap::new();
        metadata.insert("nhpatch_checkpoint".into(), "1".into());
        let json =
            serde_json::to_string(&meta).map_err(|e| Error::InvalidArgument(format!("checkpoint state: {e}")))?;
        metadata.insert("state".into(), json);
        weights::save(path, &WeightsFile { metadata, tensors })
    }

    /// Reads and validates a checkpoint: every buffer must have the arena's length.
    pub fn load(path: &Path) -> Result<Checkpoint> {
        let bad = |msg: String| Error::Format { path: path.to_path_buf(), msg };
        let mut file = weights::load(path)?;
        if file.metadata.get("nhpatch_checkpoint").map(String::as_str) != Some("1") {
            return Err(bad("not an nhpatch checkpoint (no nhpatch_checkpoint = 1 in the metadata)".into()));
        }
        let state = file.metadata.get("state").ok_or_else(|| bad("checkpoint has no 'state'".into()))?;
        let meta: CheckpointMeta =
            serde_json::from_str(state).map_err(|e| bad(format!("checkpoint state is not valid: {e}")))?;
        let mut take = |name: &str| -> Result<Vec<f32>> {
            file.tensors.remove(name).map(|t| t.data).ok_or_else(|| bad(format!("checkpoint lacks '{name}'")))
        };
        let params = take("params")?;
        let optimizer = match meta.config.optimizer {
            crate::optim::OptimizerConfig::Sgd { .. } => {
                OptimizerState::Sgd(SgdState { momentum_buffer: take("sgd.momentum_buffer")?, step: meta.opt_step })
            }
            crate::optim::OptimizerConfig::Adam { .. } => OptimizerState::Adam(AdamState {
                exp_avg: take("adam.exp_avg")?,
                exp_avg_sq: take("adam.exp_avg_sq")?,
                step: meta.opt_step,
            }),
        };
        let lens: Vec<usize> = match &optimizer {
            OptimizerState::Sgd(s) => vec![s.momentum_buffer.len()],
            OptimizerState::Adam(s) => vec![s.exp_avg.len(), s.exp_avg_sq.len()],
        };
        if lens.iter().any(|&l| l != params.len()) {
            return Err(bad(format!("optimizer buffers {lens:?} do not match the {} parameters", params.len())));
        }
        // A poisoned optimizer state would poison the weights on the first resumed step.
        let buffers: Vec<(&str, &[f32])> = match &optimizer {
            OptimizerState::Sgd(s) => vec![("sgd.momentum_buffer", &s.momentum_buffer)],
            OptimizerState::Adam(s) => vec![("adam.exp_avg", &s.exp_avg), ("adam.exp_avg_sq", &s.exp_avg_sq)],
        };
        for (name, b) in buffers {
            if let Some(i) = b.iter().position(|v| !v.is_finite()) {
                return Err(bad(format!("tensor '{name}' holds a non-finite value ({} at element {i})", b[i])));
            }
        }
        if let OptimizerState::Adam(s) = &optimizer
            && let Some(i) = s.exp_avg_sq.iter().position(|&v| v < 0.0)
        {
            let v = s.exp_avg_sq[i];
            return Err(bad(format!("tensor 'adam.exp_avg_sq' holds a negative second moment ({v} at element {i})")));
        }
        Ok(Checkpoint { meta, params, optimizer })
    }
}
