//! `nhpatch train-denoiser` and `nhpatch train-descriptor`: flags into a
//! stage configuration ([`nhpatch::train::preset`]), then
//! [`nhpatch::train::stage`] runs it.

use super::progress::terminal;
use clap::Args;
use nhpatch::data::split::{DatasetSplit, Validation};
use nhpatch::error::{Error, Result};
use nhpatch::loss::LossKind;
use nhpatch::models::Arch;
use nhpatch::net::{LoadOptions, Network};
use nhpatch::optim::OptimizerKind;
use nhpatch::train::config::{InputKind, LrSchedule};
use nhpatch::train::metrics::EpochMetrics;
use nhpatch::train::parallel::Parallel;
use nhpatch::train::preset::{Overrides, Preset, denoiser_preset, descriptor_preset};
use nhpatch::train::stage::{self, StageOptions};
use std::path::{Path, PathBuf};

/// Flags that override any preset value.
#[derive(Args, Clone, Debug, Default)]
pub struct OverrideArgs {
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
    /// Validation items drawn from the validation sequences.
    #[arg(long)]
    pub val_items: Option<usize>,
    /// Validation sequences held out of the split's training sequences
    /// (default: 15% of them, at least one); 0 turns validation off.
    #[arg(long)]
    pub val_sequences: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Learning-rate schedule: constant or linear (to 0 at the end of the last epoch).
    #[arg(long)]
    pub lr_schedule: Option<String>,
    /// Flips and 90-degree rotations of each training tuple (true/false; descriptor).
    #[arg(long)]
    pub augment: Option<bool>,
    /// Weight of SOSNet's second-order similarity regulariser added to the hardnet loss (descriptor).
    #[arg(long)]
    pub sos_weight: Option<f32>,
    /// Each batch's classes come from this many random training sequences
    /// (more while they hold fewer than a batch), so in-batch negatives share
    /// scenes (descriptor; default: all sequences).
    #[arg(long)]
    pub batch_sequences: Option<usize>,
    /// HardNet's dropout rate in training, in [0, 1) (descriptor; default 0.3).
    #[arg(long)]
    pub dropout: Option<f32>,
}

impl OverrideArgs {
    /// How validation sequences are carved from the training sequences.
    pub fn validation(&self) -> Validation {
        self.val_sequences.map_or_else(Validation::default, Validation::Sequences)
    }

    /// The library's overrides; names of optimizers and schedules are checked here.
    pub fn overrides(&self) -> Result<Overrides> {
        Ok(Overrides {
            epochs: self.epochs,
            batch: self.batch,
            lr: self.lr,
            optimizer: optimizer_kind(&self.optimizer)?,
            momentum: self.momentum,
            nesterov: self.nesterov,
            weight_decay: self.weight_decay,
            items: self.items,
            val_items: self.val_items,
            seed: self.seed,
            lr_schedule: schedule(&self.lr_schedule)?,
            augment: self.augment,
            sos_weight: self.sos_weight,
            distill_weight: None,
            perceptual_weight: None,
            batch_sequences: self.batch_sequences,
            dropout: self.dropout,
        })
    }
}

/// `sgd` or `adam`, when given.
pub fn optimizer_kind(name: &Option<String>) -> Result<Option<OptimizerKind>> {
    name.as_deref().map(str::parse).transpose()
}

/// `constant` or `linear`, when given.
pub fn schedule(name: &Option<String>) -> Result<Option<LrSchedule>> {
    name.as_deref().map(str::parse).transpose()
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
    #[arg(long, value_parser = super::preset_parser(), default_value = "seed")]
    preset: Preset,
    /// l1 (the seed's MAE) or mse.
    #[arg(long)]
    loss: Option<String>,
    #[command(flatten)]
    overrides: OverrideArgs,
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
    #[arg(long, value_parser = super::preset_parser(), default_value = "seed")]
    preset: Preset,
    #[command(flatten)]
    overrides: OverrideArgs,
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
    let loss: Option<LossKind> = a.loss.as_deref().map(str::parse).transpose()?;
    let overrides = a.overrides.overrides()?;
    let par = a.dist.parallel()?;
    nhpatch::threads::pool(a.threads)?.install(|| {
        let ds = DatasetSplit::open_with(&a.dataset, &a.split, 0, a.overrides.validation())?;
        let mut cfg = denoiser_preset(a.preset, arch, &a.split, ds.train_patches());
        if let Some(l) = loss {
            cfg.loss = l;
        }
        overrides.apply(&mut cfg)?;
        let root = par.as_ref().is_none_or(|p| p.rank() == 0);
        let opts = StageOptions { resume: a.resume, parallel: par, device: a.dev.device, observer: terminal() };
        let trained = stage::train_denoiser(&cfg, &ds, &a.out, &opts)?;
        if root {
            summary("denoiser", &trained.metrics, &a.out);
        }
        Ok(())
    })
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
    let loss: Option<LossKind> = a.loss.as_deref().map(str::parse).transpose()?;
    let overrides = a.overrides.overrides()?;
    let par = a.dist.parallel()?;
    nhpatch::threads::pool(a.threads)?.install(|| {
        let ds = DatasetSplit::open_with(&a.dataset, &a.split, 0, a.overrides.validation())?;
        let mut cfg = descriptor_preset(a.preset, arch, &a.split, input);
        if let Some(l) = loss {
            cfg.loss = l;
        }
        if let Some(m) = a.margin {
            cfg.margin = m;
        }
        cfg.eval_every_epoch = !a.no_epoch_eval;
        overrides.apply(&mut cfg)?;
        let root = par.as_ref().is_none_or(|p| p.rank() == 0);
        let opts = StageOptions { resume: a.resume, parallel: par, device: a.dev.device, observer: terminal() };
        let trained = stage::train_descriptor(&cfg, &ds, denoiser.as_ref(), &a.out, &opts)?;
        if root {
            summary("descriptor", &trained.metrics, &a.out);
        }
        Ok(())
    })
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
