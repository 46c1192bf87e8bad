//! What both training stages share: the run folder, resuming from its
//! checkpoint, the per-epoch bookkeeping (checkpoint, `metrics.jsonl`, log
//! line or progress bar) and the non-finite-loss stop.
//!
//! Run folder layout: `config.json` (the resolved configuration),
//! `checkpoint.safetensors` (after every epoch), `metrics.jsonl` (one line
//! per epoch), `model.safetensors` (the final weights, in the format `nhpatch
//! denoise/describe` load).

use super::checkpoint::{Checkpoint, CheckpointMeta};
use super::config::TrainConfig;
use super::metrics::EpochMetrics;
use super::parallel::Parallel;
use super::progress::{Event, Observer, SharedObserver, quiet};
use crate::data::sampler::SamplerState;
use crate::error::{Error, Result};
use crate::io::{io_err, write_atomic};
use crate::models::{Model, Workspace};
use crate::optim::Optimizer;
use crate::rng::Rng;
use std::path::{Path, PathBuf};

/// The files of one training stage.
pub struct RunDir {
    pub dir: PathBuf,
    /// Recorded in `config.json` beside the configuration (stage, dataset, ...).
    pub extra: serde_json::Value,
    /// The group of ranks of a data-parallel stage; only rank 0 writes files and logs.
    pub parallel: Option<Parallel>,
    /// Where the stage trains (`--device`).
    pub device: crate::gpu::Device,
    /// Where progress goes.
    pub observer: SharedObserver,
}

impl RunDir {
    /// Creates the folder (and parents) if needed. `config.json` is written
    /// only once a run has really started (after any checkpoint was accepted).
    pub fn create(dir: &Path, extra: serde_json::Value) -> Result<RunDir> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        Ok(RunDir { dir: dir.to_path_buf(), extra, parallel: None, device: crate::gpu::Device::Cpu, observer: quiet() })
    }

    /// Progress goes to `observer` (default: nowhere).
    pub fn with_observer(mut self, observer: SharedObserver) -> RunDir {
        self.observer = observer;
        self
    }

    /// The stage's observer.
    pub fn observer(&self) -> &dyn Observer {
        &*self.observer
    }

    /// The stage runs data-parallel over `p`'s ranks.
    pub fn with_parallel(mut self, p: Option<Parallel>) -> RunDir {
        self.parallel = p;
        self
    }

    /// The stage trains on `device`.
    pub fn with_device(mut self, device: crate::gpu::Device) -> RunDir {
        self.device = device;
        self
    }

    /// Whether this process writes the stage's files: one process, or rank 0.
    pub fn is_root(&self) -> bool {
        self.parallel.as_ref().is_none_or(|p| p.rank() == 0)
    }
    pub fn checkpoint(&self) -> PathBuf {
        self.dir.join("checkpoint.safetensors")
    }
    pub fn model(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// Writes the stage's final weights (rank 0 only when data-parallel).
    pub fn save_model(&self, net: &crate::net::Network) -> Result<()> {
        if self.is_root() { net.save(&self.model()) } else { Ok(()) }
    }

    pub fn write_config(&self, cfg: &TrainConfig) -> Result<()> {
        if !self.is_root() {
            return Ok(());
        }
        let mut v = serde_json::to_value(cfg).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        if let (Some(obj), Some(more)) = (v.as_object_mut(), self.extra.as_object()) {
            for (k, x) in more {
                obj.insert(k.clone(), x.clone());
            }
        }
        let text = serde_json::to_string_pretty(&v).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let path = self.config();
        write_atomic(&path, |w| w.write_all(text.as_bytes()).map_err(|e| io_err(&path, e)))
    }

    /// Rewrites `metrics.jsonl` with every epoch so far (atomically: a resumed
    /// run never leaves lines of epochs it is about to redo).
    pub fn write_metrics(&self, metrics: &[EpochMetrics]) -> Result<()> {
        if !self.is_root() {
            return Ok(());
        }
        let path = self.metrics();
        let mut text = String::new();
        for m in metrics {
            text += &serde_json::to_string(m).map_err(|e| Error::InvalidArgument(e.to_string()))?;
            text.push('\n');
        }
        write_atomic(&path, |w| w.write_all(text.as_bytes()).map_err(|e| io_err(&path, e)))
    }
}

/// The mutable state of a stage: what a checkpoint saves.
pub struct State {
    pub params: Vec<f32>,
    pub optimizer: Optimizer,
    pub sampler: Option<SamplerState>,
    pub dropout: Rng,
    pub metrics: Vec<EpochMetrics>,
    pub epochs_done: u64,
}

/// Fresh state, or the checkpoint's when `resume` is set and one exists.
/// A fresh state starts from `init` when given (fine-tuning), else from the seeded initialisation.
pub fn start(model: &Model, cfg: &TrainConfig, run: &RunDir, resume: bool, init: Option<&[f32]>) -> Result<State> {
    let path = run.checkpoint();
    if resume && path.exists() {
        let ck = Checkpoint::load(&path)?;
        if ck.meta.config.resume_key() != cfg.resume_key() {
            return Err(Error::Training(format!(
                "{} was written by a run with another configuration; resume with the same settings or use a new --out",
                path.display()
            )));
        }
        if ck.params.len() != model.layout().len() {
            return Err(Error::Format { path, msg: "parameter count does not match the model".into() });
        }
        if let Err(msg) = model.layout().check_values(&ck.params) {
            return Err(Error::Format { path, msg });
        }
        let mut optimizer = Optimizer::new(cfg.optimizer.clone(), ck.params.len())?;
        optimizer.state = ck.optimizer;
        run.write_config(cfg)?;
        return Ok(State {
            params: ck.params,
            optimizer,
            sampler: Some(ck.meta.sampler),
            dropout: Rng::new(ck.meta.dropout_rng),
            metrics: ck.meta.metrics,
            epochs_done: ck.meta.epochs_done,
        });
    }
    if !resume && path.exists() {
        return Err(Error::Training(format!(
            "{} already holds a checkpoint: pass --resume to continue it, or choose another --out",
            run.dir.display()
        )));
    }
    let params = match init {
        Some(p) if p.len() == model.layout().len() => p.to_vec(),
        Some(p) => {
            return Err(Error::Shape(format!(
                "initial parameters: {} values for a {} with {}",
                p.len(),
                model.arch(),
                model.layout().len()
            )));
        }
        None => model.init_params(&mut Rng::stream(cfg.seed, 1)),
    };
    let optimizer = Optimizer::new(cfg.optimizer.clone(), params.len())?;
    run.write_config(cfg)?;
    Ok(State {
        params,
        optimizer,
        sampler: None,
        dropout: Rng::stream(cfg.seed, 2),
        metrics: Vec::new(),
        epochs_done: 0,
    })
}

/// After an epoch: checkpoint, metrics file, the epoch reported to the observer.
pub fn end_epoch(run: &RunDir, cfg: &TrainConfig, state: &State, sampler: SamplerState, stage: &str) -> Result<()> {
    if !run.is_root() {
        return Ok(());
    }
    let ck = Checkpoint {
        meta: CheckpointMeta {
            epochs_done: state.epochs_done,
            opt_step: 0,
            sampler,
            dropout_rng: state.dropout.state,
            metrics: state.metrics.clone(),
            config: cfg.clone(),
        },
        params: state.params.clone(),
        optimizer: state.optimizer.state.clone(),
    };
    ck.save(&run.checkpoint())?;
    run.write_metrics(&state.metrics)?;
    if let Some(m) = state.metrics.last() {
        run.observer().event(&Event::EpochFinished { stage, unit: cfg.loss.unit(), metrics: m, epochs: cfg.epochs });
    }
    Ok(())
}

/// Stops training on a non-finite loss, naming the step and the checkpoint that survives.
pub fn check_loss(loss: f64, epoch: u64, step: u64, run: &RunDir, epochs_done: u64) -> Result<()> {
    if loss.is_finite() {
        return Ok(());
    }
    let kept = if epochs_done > 0 {
        format!("the last good checkpoint ({} after epoch {epochs_done}) is kept", run.checkpoint().display())
    } else {
        "no epoch had finished, so there is no checkpoint".to_string()
    };
    Err(Error::Training(format!("the loss became {loss} at epoch {epoch}, step {step}; {kept}")))
}

/// The workspace of an epoch's shorter last batch, created the first time
/// it is needed and reused by every later epoch.
pub fn tail_ws<'w>(tail: &'w mut Option<Workspace>, model: &Model, n: usize) -> Result<&'w mut Workspace> {
    if tail.as_ref().is_none_or(|w| w.batch() != n) {
        *tail = Some(model.workspace(n)?);
    }
    Ok(tail.as_mut().expect("set just above"))
}
