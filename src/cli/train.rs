//! `nhpatch train-denoiser` and `nhpatch train-descriptor`, and the presets
//! they share with `nhpatch run`.

use clap::{Args, ValueEnum};
use nhpatch::data::hpatches::Version;
use nhpatch::data::pack::{PackedDataset, open_dataset};
use nhpatch::data::splits::Splits;
use nhpatch::error::{Error, Result};
use nhpatch::eval::bench::Benchmark;
use nhpatch::gpu::Device;
use nhpatch::models::Arch;
use nhpatch::net::{LoadOptions, Network};
use nhpatch::train::config::{InputKind, LrSchedule, OptimizerConfig, TrainConfig};
use nhpatch::train::descriptor::{self, Source};
use nhpatch::train::metrics::{EpochMetrics, MapScores};
use nhpatch::train::parallel::Parallel;
use nhpatch::train::session::RunDir;
use nhpatch::train::{denoiser, metrics};
use std::path::{Path, PathBuf};

/// Named bundles of settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// The seed report's settings (U-Net: SGD lr 1e-5 Nesterov 0.9, batch 50, MAE; DnCNN: Adam 1e-3;
    /// descriptor: SGD lr 0.1, triplet margin 1, batch 50, 100,000 triplets per epoch).
    Seed,
    /// Sized so that `nhpatch run` finishes in minutes on two cores.
    Demo,
}

/// Flags that override any preset value.
#[derive(Args, Clone, Debug, Default)]
pub struct Overrides {
    #[arg(long)]
    pub epochs: Option<u64>,
    #[arg(long)]
    pub batch: Option<usize>,
    /// Learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// sgd or adam (PyTorch defaults for the other hyperparameters).
    #[arg(long)]
    pub optimizer: Option<String>,
    /// SGD momentum.
    #[arg(long)]
    pub momentum: Option<f64>,
    /// SGD Nesterov momentum (true/false).
    #[arg(long)]
    pub nesterov: Option<bool>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Items per epoch: patches (denoiser), triplets or pairs (descriptor).
    #[arg(long, alias = "triplets")]
    pub items: Option<u64>,
    /// Validation items drawn from the test sequences.
    #[arg(long)]
    pub val_items: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Learning-rate schedule: constant or linear (to 0 at the end of the last epoch).
    #[arg(long)]
    pub lr_schedule: Option<String>,
    /// Flips and 90-degree rotations of each training tuple (true/false; descriptor).
    #[arg(long)]
    pub augment: Option<bool>,
}

impl Overrides {
    pub fn apply(&self, cfg: &mut TrainConfig) -> Result<()> {
        if let Some(name) = &self.optimizer {
            cfg.optimizer = OptimizerConfig::named(name, cfg.optimizer.lr())?;
        }
        if let Some(v) = self.lr {
            cfg.optimizer.set_lr(v);
        }
        match &mut cfg.optimizer {
            OptimizerConfig::Sgd { momentum, nesterov, weight_decay, .. } => {
                *momentum = self.momentum.unwrap_or(*momentum);
                *nesterov = self.nesterov.unwrap_or(*nesterov);
                *weight_decay = self.weight_decay.unwrap_or(*weight_decay);
            }
            OptimizerConfig::Adam { weight_decay, .. } => {
                if self.momentum.is_some() || self.nesterov.is_some() {
                    return Err(Error::InvalidArgument("--momentum and --nesterov apply to sgd only".into()));
                }
                *weight_decay = self.weight_decay.unwrap_or(*weight_decay);
            }
        }
        cfg.epochs = self.epochs.unwrap_or(cfg.epochs);
        cfg.batch = self.batch.unwrap_or(cfg.batch);
        cfg.epoch_items = self.items.unwrap_or(cfg.epoch_items);
        cfg.val_items = self.val_items.unwrap_or(cfg.val_items);
        cfg.seed = self.seed.unwrap_or(cfg.seed);
        if let Some(v) = &self.lr_schedule {
            cfg.lr_schedule = v.parse()?;
        }
        cfg.augment = self.augment.unwrap_or(cfg.augment);
        cfg.validate()
    }
}

/// Denoiser settings of a preset; `train_patches` is the size of one pass over the training set.
pub fn denoiser_preset(preset: Preset, arch: Arch, split: &str, train_patches: u64) -> TrainConfig {
    let optimizer = match (preset, arch) {
        (Preset::Seed, Arch::Unet) => {
            OptimizerConfig::Sgd { lr: 1e-5, momentum: 0.9, nesterov: true, weight_decay: 0.0 }
        }
        // The demo trains a few thousand patches: Adam gets a visibly better U-Net there.
        _ => OptimizerConfig::Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
    };
    let (epochs, items) = match preset {
        Preset::Seed => (1, train_patches),
        Preset::Demo => (3, 2000),
    };
    TrainConfig {
        arch: arch.name().into(),
        epochs,
        batch: 50,
        epoch_items: items.max(1),
        optimizer,
        loss: "l1".into(),
        margin: 1.0,
        input: InputKind::Noisy,
        val_items: if preset == Preset::Demo { 500 } else { 2000 },
        eval_every_epoch: false,
        seed: 1,
        split: split.into(),
        noise_seed: 0,
        lr_schedule: LrSchedule::Constant,
        augment: false,
        lr_span: None,
        denoise_weight: None,
    }
}

/// Descriptor settings of a preset.
pub fn descriptor_preset(preset: Preset, arch: Arch, split: &str, input: InputKind) -> TrainConfig {
    let (epochs, items) = match preset {
        Preset::Seed => (1, 100_000),
        Preset::Demo => (4, 2500),
    };
    TrainConfig {
        arch: arch.name().into(),
        epochs,
        batch: 50,
        epoch_items: items,
        optimizer: OptimizerConfig::Sgd { lr: 0.1, momentum: 0.0, nesterov: false, weight_decay: 0.0 },
        loss: "triplet".into(),
        margin: 1.0,
        input,
        val_items: if preset == Preset::Demo { 300 } else { 2000 },
        eval_every_epoch: true,
        seed: 2,
        split: split.into(),
        noise_seed: 0,
        lr_schedule: LrSchedule::Constant,
        augment: false,
        lr_span: None,
        denoise_weight: None,
    }
}

/// An opened dataset with its split resolved to pack indices.
pub struct DatasetSplit {
    pub root: PathBuf,
    pub data: PackedDataset,
    pub train: Vec<usize>,
    pub test: Vec<usize>,
}

impl DatasetSplit {
    pub fn open(root: &Path, split: &str, noise_seed: u64) -> Result<DatasetSplit> {
        if !root.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "{}: no such dataset folder (it needs splits.json and one folder per sequence)",
                root.display()
            )));
        }
        let splits_path = root.join("splits.json");
        let splits = Splits::load(&splits_path)?;
        let s = splits.get(split, &splits_path)?.clone();
        if s.train.is_empty() {
            return Err(Error::Format { path: splits_path, msg: format!("split '{split}' has no training sequences") });
        }
        if s.test.is_empty() {
            return Err(Error::Format { path: splits_path, msg: format!("split '{split}' has no test sequences") });
        }
        let data = open_dataset(root, noise_seed)?;
        let train = data.select(&s.train)?;
        let test = data.select(&s.test)?;
        Ok(DatasetSplit { root: root.to_path_buf(), data, train, test })
    }

    /// Patches (all 16 images) of the training sequences.
    pub fn train_patches(&self) -> u64 {
        self.train.iter().map(|&s| 16 * self.data.sequences()[s].count as u64).sum()
    }
}

#[derive(Args)]
pub struct TrainDenoiserArgs {
    /// Dataset root (splits.json and one folder per sequence).
    #[arg(long)]
    dataset: PathBuf,
    #[arg(long, default_value = "a")]
    split: String,
    /// unet or dncnn.
    #[arg(long, default_value = "unet")]
    model: String,
    /// Run folder: config.json, checkpoint.safetensors, metrics.jsonl, model.safetensors.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = Preset::Seed)]
    preset: Preset,
    /// l1 (the seed's MAE) or mse.
    #[arg(long)]
    loss: Option<String>,
    #[command(flatten)]
    overrides: Overrides,
    /// Continue from the run folder's checkpoint.
    #[arg(long)]
    resume: bool,
    /// Worker threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    #[command(flatten)]
    dist: DistArgs,
    #[command(flatten)]
    pub dev: super::DeviceArgs,
}

/// Data-parallel training over MPI (`mpirun -n K nhpatch train-... --distributed`).
#[derive(Args, Clone, Debug)]
pub struct DistArgs {
    /// Split each global batch across the ranks of an MPI job (needs the `mpi` feature).
    #[arg(long)]
    pub distributed: bool,
    /// Seconds a rank waits for the others in one collective before it stops the job.
    #[arg(long, default_value_t = 600)]
    pub comm_timeout: u64,
}

impl DistArgs {
    /// Joins the MPI job when `--distributed` is set. Call on the main thread, before the worker pool.
    pub fn parallel(&self) -> Result<Option<Parallel>> {
        if !self.distributed {
            return Ok(None);
        }
        if self.comm_timeout == 0 {
            return Err(Error::InvalidArgument("--comm-timeout must be at least 1 second".into()));
        }
        join_mpi(self.comm_timeout)
    }
}

#[cfg(feature = "mpi")]
fn join_mpi(timeout: u64) -> Result<Option<Parallel>> {
    let comm = nhpatch::dist::mpi::MpiComm::init(std::time::Duration::from_secs(timeout))?;
    Ok(Some(Parallel { comm: std::sync::Arc::new(comm) }))
}

#[cfg(not(feature = "mpi"))]
fn join_mpi(_timeout: u64) -> Result<Option<Parallel>> {
    Err(Error::InvalidArgument(
        "--distributed: this nhpatch was built without MPI; build it with `cargo build --release --features mpi` \
         (needs Open MPI and libclang, see README, \"Training on a cluster\")"
            .into(),
    ))
}

#[derive(Args)]
pub struct TrainDescriptorArgs {
    #[arg(long)]
    dataset: PathBuf,
    #[arg(long, default_value = "a")]
    split: String,
    /// baseline (the seed's Keras HardNet) or original (kornia's).
    #[arg(long, default_value = "baseline")]
    variant: String,
    /// noisy, clean or denoised (needs --denoiser).
    #[arg(long, default_value = "noisy")]
    input: String,
    /// Denoiser weights for --input denoised.
    #[arg(long)]
    denoiser: Option<PathBuf>,
    /// triplet (the seed's) or hardnet (hardest in batch).
    #[arg(long)]
    loss: Option<String>,
    /// Margin of the loss.
    #[arg(long)]
    margin: Option<f32>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = Preset::Seed)]
    preset: Preset,
    #[command(flatten)]
    overrides: Overrides,
    /// Skip the HPatches evaluation after each epoch (it still runs after the last).
    #[arg(long)]
    no_epoch_eval: bool,
    #[arg(long)]
    resume: bool,
    #[arg(long, default_value_t = 0)]
    threads: usize,
    #[command(flatten)]
    dist: DistArgs,
    #[command(flatten)]
    pub dev: super::DeviceArgs,
}

fn arch_of(model: &str, variant: Option<&str>) -> Result<Arch> {
    Arch::parse(model, variant)
}

pub fn train_denoiser(a: TrainDenoiserArgs) -> Result<()> {
    let arch = arch_of(&a.model, None)?;
    if !arch.is_denoiser() {
        return Err(Error::InvalidArgument(format!("--model {}: a denoiser is unet or dncnn", a.model)));
    }
    a.dev.device.check_available()?;
    let par = a.dist.parallel()?;
    nhpatch::threads::pool(a.threads)?.install(|| {
        let ds = DatasetSplit::open(&a.dataset, &a.split, 0)?;
        let mut cfg = denoiser_preset(a.preset, arch, &a.split, ds.train_patches());
        if let Some(l) = &a.loss {
            cfg.loss = l.clone();
        }
        a.overrides.apply(&mut cfg)?;
        let root = par.as_ref().is_none_or(|p| p.rank() == 0);
        let (_, m) = run_denoiser(&cfg, &ds, &a.out, a.resume, (par, a.dev.device))?;
        if root {
            summary("denoiser", &m, &a.out);
        }
        Ok(())
    })
}

/// Trains (or resumes) a denoiser stage into `out`.
pub fn run_denoiser(
    cfg: &TrainConfig,
    ds: &DatasetSplit,
    out: &Path,
    resume: bool,
    (par, device): (Option<Parallel>, Device),
) -> Result<(Network, Vec<EpochMetrics>)> {
    let run = RunDir::create(out, stage_info("denoiser", ds, &par))?.with_parallel(par).with_device(device);
    denoiser::train(cfg, &ds.data, &ds.train, &ds.test, &run, resume)
}

pub fn train_descriptor(a: TrainDescriptorArgs) -> Result<()> {
    let arch = arch_of("hardnet", Some(&a.variant))?;
    let input: InputKind = a.input.parse()?;
    a.dev.device.check_available()?;
    let denoiser = match (input, &a.denoiser) {
        (InputKind::Denoised, Some(p)) => {
            let mut d = Network::load_denoiser(p, LoadOptions::default())?;
            d.set_device(a.dev.device)?;
            Some(d)
        }
        (InputKind::Denoised, None) => {
            return Err(Error::InvalidArgument("--input denoised needs --denoiser FILE".into()));
        }
        (_, Some(_)) => return Err(Error::InvalidArgument("--denoiser is only used with --input denoised".into())),
        (_, None) => None,
    };
    let par = a.dist.parallel()?;
    nhpatch::threads::pool(a.threads)?.install(|| {
        let ds = DatasetSplit::open(&a.dataset, &a.split, 0)?;
        let mut cfg = descriptor_preset(a.preset, arch, &a.split, input);
        if let Some(l) = &a.loss {
            cfg.loss = l.clone();
        }
        if let Some(m) = a.margin {
            cfg.margin = m;
        }
        cfg.eval_every_epoch = !a.no_epoch_eval;
        a.overrides.apply(&mut cfg)?;
        let root = par.as_ref().is_none_or(|p| p.rank() == 0);
        let (_, m) = run_descriptor(&cfg, &ds, denoiser.as_ref(), &a.out, a.resume, (par, a.dev.device))?;
        if root {
            summary("descriptor", &m, &a.out);
        }
        Ok(())
    })
}

/// Trains (or resumes) a descriptor stage into `out`, evaluating on the split's
/// test sequences (noisy input, through `denoiser` when given).
pub fn run_descriptor(
    cfg: &TrainConfig,
    ds: &DatasetSplit,
    denoiser: Option<&Network>,
    out: &Path,
    resume: bool,
    (par, device): (Option<Parallel>, Device),
) -> Result<(Network, Vec<EpochMetrics>)> {
    let run = RunDir::create(out, stage_info("descriptor", ds, &par))?.with_parallel(par).with_device(device);
    // With a denoiser, every patch is denoised once into a cached pack: the
    // training sequences feed the sampler, the test sequences the evaluation.
    // Data-parallel, rank 0 writes it while the others wait, then they open it.
    let denoised = match denoiser {
        Some(d) => {
            let path = out.join("denoised.pack");
            let seqs: Vec<usize> = ds.train.iter().chain(&ds.test).copied().collect();
            if run.is_root() {
                eprintln!("denoising the dataset's patches once (cached in {})", path.display());
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
    let bench = Benchmark::prepare(&ds.root, &cfg.split, None, 42)?;
    // Evaluation input: noisy patches, through the denoiser when there is one (its cached output).
    let (eval_data, eval_version) = match &denoised {
        Some(p) => (p, Version::Clean),
        None => (&ds.data, Version::Noisy),
    };
    let map = |net: &Network| -> Result<MapScores> {
        let bar =
            nhpatch::train::session::spinner(&format!("evaluating {} test patches", 16 * bench.catalog.patches()));
        let r = bench.evaluate_network(eval_data, net, None, eval_version);
        bar.finish_and_clear();
        let r = r?;
        Ok(metrics::MapScores {
            verification: r.verification_map,
            matching: r.matching_map,
            retrieval: r.retrieval_map,
        })
    };
    // Validation tuples come from the test sequences as the network sees them in evaluation.
    let test_in_eval: Vec<usize> = match &denoised {
        Some(_) => (ds.train.len()..ds.train.len() + ds.test.len()).collect(),
        None => ds.test.clone(),
    };
    let val_version = if cfg.input == InputKind::Clean { Version::Clean } else { eval_version };
    let val_data = if cfg.input == InputKind::Clean { &ds.data } else { eval_data };
    let val_seqs = if cfg.input == InputKind::Clean { ds.test.clone() } else { test_in_eval };
    descriptor::train(cfg, &source, (val_data, &val_seqs, val_version), &run, resume, Some(&map))
}

/// What a stage's `config.json` records beside its settings.
fn stage_info(stage: &str, ds: &DatasetSplit, par: &Option<Parallel>) -> serde_json::Value {
    let mut v = serde_json::json!({ "stage": stage, "dataset": ds.root.display().to_string() });
    if let Some(p) = par {
        v["ranks"] = serde_json::json!(p.size());
    }
    v
}

fn summary(stage: &str, m: &[EpochMetrics], out: &Path) {
    if let Some(last) = m.last() {
        let total: f64 = m.iter().map(|e| e.seconds).sum();
        println!(
            "{stage}: {} epochs, final loss {:.4}, {:.0} s of training; weights in {}",
            last.epoch,
            last.train_loss,
            total,
            out.join("model.safetensors").display()
        );
    }
}
