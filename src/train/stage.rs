//! One training stage over a [`DatasetSplit`], as a program (or `nhpatch
//! train-denoiser` / `train-descriptor`, or a step of [`super::pipeline`])
//! runs it: the run folder, the choice of training, validation and
//! evaluation inputs, the cache of denoised patches, then the loop of
//! [`super::denoiser`] or [`super::descriptor`].

use super::config::{InputKind, TrainConfig};
use super::descriptor::{self, Source, Teacher};
use super::metrics::{EpochMetrics, MapScores};
use super::parallel::Parallel;
use super::progress::{BusyGuard, Event, SharedObserver, quiet};
use super::session::RunDir;
use crate::data::hpatches::Version;
use crate::data::split::DatasetSplit;
use crate::error::{Error, Result};
use crate::eval::bench::Benchmark;
use crate::gpu::Device;
use crate::net::Network;
use std::path::Path;

/// Seed of the HPatches task files (verification pairs, retrieval distractors) every evaluation uses.
pub const TASKS_SEED: u64 = 42;

/// How a stage runs, beside its configuration.
#[derive(Clone)]
pub struct StageOptions {
    /// Continue from the run folder's checkpoint when there is one.
    pub resume: bool,
    /// Data-parallel over the ranks of an MPI job.
    pub parallel: Option<Parallel>,
    /// Where the stage trains.
    pub device: Device,
    /// Where progress goes.
    pub observer: SharedObserver,
}

impl Default for StageOptions {
    fn default() -> StageOptions {
        StageOptions { resume: false, parallel: None, device: Device::Cpu, observer: quiet() }
    }
}

/// What a stage returns: the trained network and one entry per epoch.
pub struct Trained {
    pub network: Network,
    pub metrics: Vec<EpochMetrics>,
}

fn run_dir(stage: &str, ds: &DatasetSplit, out: &Path, opts: &StageOptions) -> Result<RunDir> {
    let mut info = serde_json::json!({ "stage": stage, "dataset": ds.root.display().to_string() });
    if let Some(p) = &opts.parallel {
        info["ranks"] = serde_json::json!(p.size());
    }
    Ok(RunDir::create(out, info)?
        .with_parallel(opts.parallel.clone())
        .with_device(opts.device)
        .with_observer(opts.observer.clone()))
}

/// Trains (or resumes) a denoiser on `ds`'s training sequences into `out`,
/// validating on its validation sequences (none: no validation loss); the
/// test sequences are not touched.
pub fn train_denoiser(cfg: &TrainConfig, ds: &DatasetSplit, out: &Path, opts: &StageOptions) -> Result<Trained> {
    denoiser_stage(cfg, ds, None, out, opts)
}

/// As [`train_denoiser`], for the descriptor: the loss adds
/// `cfg.perceptual_weight` times the perceptual term through `teacher` (a
/// HardNet trained on `ds`'s clean patches, e.g. by `train_descriptor` with
/// `input` clean; [`super::perceptual`]). On the CPU, in one process.
pub fn train_denoiser_for_teacher(
    cfg: &TrainConfig,
    ds: &DatasetSplit,
    teacher: &Network,
    out: &Path,
    opts: &StageOptions,
) -> Result<Trained> {
    denoiser_stage(cfg, ds, Some(teacher), out, opts)
}

fn denoiser_stage(
    cfg: &TrainConfig,
    ds: &DatasetSplit,
    teacher: Option<&Network>,
    out: &Path,
    opts: &StageOptions,
) -> Result<Trained> {
    let run = run_dir("denoiser", ds, out, opts)?;
    let seqs = (ds.train.as_slice(), ds.val.as_slice());
    let (network, metrics) = super::denoiser::train(cfg, &ds.data, seqs, teacher, &run, opts.resume)?;
    Ok(Trained { network, metrics })
}

/// Trains (or resumes) a descriptor into `out`, on the patches `cfg.input`
/// names (`Denoised` needs `denoiser`), validating each epoch (loss and the
/// benchmark's mAPs) on the split's validation sequences with noisy input,
/// through `denoiser` when given. The test sequences are not touched: the
/// pipeline scores them once, at the end.
///
/// With a denoiser, the training and validation patches are denoised once
/// into a cached pack (`out/denoised.pack`): the training sequences feed the
/// sampler, the validation sequences the per-epoch validation. Data-parallel, rank 0 writes
/// it while the others wait, then they open it.
pub fn train_descriptor(
    cfg: &TrainConfig,
    ds: &DatasetSplit,
    denoiser: Option<&Network>,
    out: &Path,
    opts: &StageOptions,
) -> Result<Trained> {
    descriptor_stage(cfg, ds, denoiser, None, out, opts)
}

/// As [`train_descriptor`], the student of `teacher` (a HardNet of the same
/// variant trained on `ds`'s clean patches, e.g. by `train_descriptor` with
/// `input` clean): it starts from the teacher's weights and, with
/// `cfg.distill_weight`, adds the distillation term towards the teacher's
/// descriptors of each training patch's clean twin ([`crate::loss::distill`]).
pub fn train_descriptor_from_teacher(
    cfg: &TrainConfig,
    ds: &DatasetSplit,
    denoiser: Option<&Network>,
    teacher: &Network,
    out: &Path,
    opts: &StageOptions,
) -> Result<Trained> {
    descriptor_stage(cfg, ds, denoiser, Some(teacher), out, opts)
}

fn descriptor_stage(
    cfg: &TrainConfig,
    ds: &DatasetSplit,
    denoiser: Option<&Network>,
    teacher: Option<&Network>,
    out: &Path,
    opts: &StageOptions,
) -> Result<Trained> {
    let run = run_dir("descriptor", ds, out, opts)?;
    let denoised = match denoiser {
        Some(d) => {
            let path = out.join("denoised.pack");
            let seqs: Vec<usize> = ds.train.iter().chain(&ds.val).copied().collect();
            if run.is_root() && !descriptor::denoised_pack_is_current(&ds.data, &seqs, d, &path) {
                let note = format!("denoising the dataset's patches once (cached in {})", path.display());
                run.observer().event(&Event::Notice(&note));
                descriptor::denoised_pack(&ds.data, &seqs, d, &path)?;
            }
            if let Some(p) = &run.parallel {
                p.barrier()?;
            }
            Some(descriptor::denoised_pack(&ds.data, &seqs, d, &path)?)
        }
        None => None,
    };
    let source = match (cfg.input, &denoised) {
        (InputKind::Noisy, _) => Source { data: &ds.data, train: ds.train.clone(), version: Version::Noisy },
        (InputKind::Clean, _) => Source { data: &ds.data, train: ds.train.clone(), version: Version::Clean },
        (InputKind::Denoised, Some(p)) => {
            Source { data: p, train: (0..ds.train.len()).collect(), version: Version::Clean }
        }
        (InputKind::Denoised, None) => return Err(Error::InvalidArgument("--input denoised needs a denoiser".into())),
    };
    let val_names: Vec<String> = ds.val.iter().map(|&i| ds.data.sequences()[i].name.clone()).collect();
    let bench = if val_names.is_empty() {
        None
    } else {
        Some(Benchmark::of_sequences(&ds.root, val_names, "validation", TASKS_SEED)?)
    };
    // Validation input: noisy patches, through the denoiser when there is one (its cached output).
    let (eval_data, eval_version) = match &denoised {
        Some(p) => (p, Version::Clean),
        None => (&ds.data, Version::Noisy),
    };
    let map = |net: &Network| -> Result<MapScores> {
        let Some(bench) = &bench else {
            return Err(Error::InvalidArgument("no validation sequences to score".into()));
        };
        let what = format!("validating on {} patches", 16 * bench.catalog.patches());
        let busy = BusyGuard::new(run.observer(), &what);
        let r = bench.evaluate_network(eval_data, net, None, eval_version);
        drop(busy);
        let r = r?;
        Ok(MapScores { verification: r.verification_map, matching: r.matching_map, retrieval: r.retrieval_map })
    };
    // Validation tuples come from the validation sequences as the network sees them at test time.
    let val_in_eval: Vec<usize> = match &denoised {
        Some(_) => (ds.train.len()..ds.train.len() + ds.val.len()).collect(),
        None => ds.val.clone(),
    };
    let val_version = if cfg.input == InputKind::Clean { Version::Clean } else { eval_version };
    let val_data = if cfg.input == InputKind::Clean { &ds.data } else { eval_data };
    let val_seqs = if cfg.input == InputKind::Clean { ds.val.clone() } else { val_in_eval };
    let map_fn: Option<&descriptor::MapFn<'_>> = if bench.is_some() { Some(&map) } else { None };
    // The clean twin of source sequence s: the denoised pack holds the training then the validation sequences.
    let teacher = teacher.map(|net| Teacher {
        net,
        data: &ds.data,
        seqs: match &denoised {
            Some(_) => ds.train.iter().chain(&ds.val).copied().collect(),
            None => (0..ds.data.sequences().len()).collect(),
        },
    });
    let val = (val_data, val_seqs.as_slice(), val_version);
    let (network, metrics) = descriptor::train(cfg, &source, val, &run, opts.resume, map_fn, teacher.as_ref())?;
    Ok(Trained { network, metrics })
}
