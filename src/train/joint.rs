//! Joint training: the denoiser and the descriptor fine-tuned end to end,
//! starting from a separately trained pair.
//!
//! One step on a batch of B HardNet pairs (noisy anchor and positive, with
//! their clean twins):
//!
//! ```text
//! y     = denoiser(noisy)                 [2B, 1, 32, 32]   (training forward)
//! d     = descriptor(y)                   [2B, 128]
//! L     = hardnet(d_a, d_p) + w * L1(y, clean)
//! dL/dy = descriptor^T(dL/dd) + w * sign(y - clean) / (2B * 1024)
//! ```
//!
//! `dL/dy` comes from [`Model::backward_with_input`], so the descriptor loss
//! reaches the denoiser's weights; each network keeps its own optimizer and
//! learning-rate schedule. In training the descriptor sees the denoiser's raw
//! output; evaluation rounds it to pixels as the separate pipeline does.
//!
//! Each network has its own stage folder (`denoiser/`, `descriptor/`) with the
//! usual files; both checkpoints are written after every epoch, the denoiser's
//! first, and a resume checks that they belong to the same epoch.

use super::config::TrainConfig;
use super::metrics::EpochMetrics;
use super::progress::Event;
use super::session::{self, RunDir, State};
use crate::data::pack::PackedDataset;
use crate::data::sampler::{Sampler, TwinsSampler, compact_views};
use crate::error::{Error, Result};
use crate::io::PATCH_LEN;
use crate::loss::LossKind;
use crate::loss::hardnet::{HardNetLoss, HardNetWorkspace};
use crate::loss::l1::l1_loss;
use crate::models::{Arch, DESC_LEN, Model, Workspace};
use crate::net::{Network, to_pixels};
use crate::ops::elementwise::axpy;
use std::time::Instant;

const VAL_STREAM: u64 = 0x7A11_501E;

/// The two stages' settings: `descriptor` drives the schedule (epochs,
/// batch, items, seed, augmentation) and carries the denoising-loss weight;
/// `denoiser` gives the denoiser's optimizer and learning-rate schedule and
/// must agree with `descriptor` on epochs, batch and items.
pub struct JointConfig<'a> {
    pub descriptor: &'a TrainConfig,
    pub denoiser: &'a TrainConfig,
}

impl JointConfig<'_> {
    fn validate(&self) -> Result<f32> {
        let (d, n) = (self.descriptor, self.denoiser);
        d.validate()?;
        n.validate()?;
        if (d.epochs, d.batch, d.epoch_items) != (n.epochs, n.batch, n.epoch_items) {
            return Err(Error::InvalidArgument(format!(
                "joint training: the denoiser's epochs/batch/items ({}/{}/{}) must match the descriptor's ({}/{}/{})",
                n.epochs, n.batch, n.epoch_items, d.epochs, d.batch, d.epoch_items
            )));
        }
        if d.loss != LossKind::HardNet {
            return Err(Error::InvalidArgument(format!(
                "joint training uses the HardNet loss, not '{}' (it trains on pairs)",
                d.loss
            )));
        }
        let w = d.denoise_weight.ok_or_else(|| {
            Error::InvalidArgument("joint training needs a denoising-loss weight (denoise_weight)".into())
        })?;
        if !(w >= 0.0 && w.is_finite()) {
            return Err(Error::InvalidArgument(format!("denoising-loss weight {w} must be finite and >= 0")));
        }
        Ok(w as f32)
    }
}

/// Where the patches come from: the dataset, its training sequences, and the
/// validation sequences that give the fixed validation pairs.
pub struct JointData<'a> {
    pub data: &'a PackedDataset,
    pub train: &'a [usize],
    pub val: &'a [usize],
}

/// The networks after joint training and each one's per-epoch metrics
/// (the descriptor's loss is the joint loss; its validation loss the
/// HardNet loss of the pipeline on validation pairs; the denoiser's
/// validation loss is its L1 on the same pairs).
pub struct JointResult {
    pub denoiser: Network,
    pub descriptor: Network,
    pub denoiser_metrics: Vec<EpochMetrics>,
    pub descriptor_metrics: Vec<EpochMetrics>,
}

/// Validation: the pipeline as evaluated (denoiser in eval mode, output
/// rounded to pixels, descriptor in eval mode) on fixed pairs.
struct Validation {
    noisy: Vec<f32>,
    clean: Vec<f32>,
    n: usize,
}

impl Validation {
    fn new(src: &JointData<'_>, cfg: &TrainConfig) -> Result<Validation> {
        let classes: usize = src.val.iter().map(|&s| src.data.sequences()[s].count).sum();
        let n = cfg.val_items.min(4096).min(classes);
        if n == 0 || src.val.is_empty() {
            return Ok(Validation { noisy: Vec::new(), clean: Vec::new(), n: 0 });
        }
        let mut s = Sampler::twins(src.data, src.val, n, n as u64, cfg.seed ^ VAL_STREAM)?;
        let mut x = vec![0.0f32; 4 * n * PATCH_LEN];
        let (na, rest) = x.split_at_mut(n * PATCH_LEN);
        let (np, rest) = rest.split_at_mut(n * PATCH_LEN);
        let (ca, cp) = rest.split_at_mut(n * PATCH_LEN);
        s.next_batch([na, np, ca, cp])?;
        let clean = x.split_off(2 * n * PATCH_LEN);
        Ok(Validation { noisy: x, clean, n })
    }

    /// (HardNet loss of the pipeline, L1 of the denoiser) on the fixed pairs.
    fn losses(&self, den: &Network, desc: &Network, loss: &HardNetLoss) -> Result<(Option<f64>, Option<f64>)> {
        if self.n == 0 {
            return Ok((None, None));
        }
        let mut y = den.denoise(&self.noisy)?;
        let mut scratch = vec![0.0f32; y.len()];
        let l1 = l1_loss(&mut scratch, &y, &self.clean)? as f64;
        to_pixels(&mut y);
        let d = desc.describe(&y)?;
        let (a, p) = d.split_at(self.n * DESC_LEN);
        let (mut ga, mut gp) = (vec![0.0f32; a.len()], vec![0.0f32; p.len()]);
        let mut ws = HardNetWorkspace::new(self.n);
        let l = loss.loss(&mut ga, &mut gp, &mut ws, a, p, self.n, DESC_LEN)? as f64;
        Ok((Some(l), Some(l1)))
    }
}

/// Buffers of one batch size.
struct StepBuffers {
    den_ws: Workspace,
    desc_ws: Workspace,
    hn_ws: HardNetWorkspace,
}

impl StepBuffers {
    fn new(den: &Model, desc: &Model, n: usize) -> Result<StepBuffers> {
        Ok(StepBuffers {
            den_ws: den.workspace(2 * n)?,
            desc_ws: desc.workspace(2 * n)?,
            hn_ws: HardNetWorkspace::new(n),
        })
    }
}

/// Fine-tunes `start` = (denoiser, descriptor) end to end; stage folders are
/// `den_run` and `desc_run`.
pub fn train(
    cfg: &JointConfig<'_>,
    src: &JointData<'_>,
    start: (&Network, &Network),
    den_run: &RunDir,
    desc_run: &RunDir,
    resume: bool,
) -> Result<JointResult> {
    let w = cfg.validate()?;
    let (dcfg, ncfg) = (cfg.descriptor, cfg.denoiser);
    let (den_arch, desc_arch): (Arch, Arch) = (ncfg.arch, dcfg.arch);
    if !den_arch.is_denoiser() || desc_arch.is_denoiser() {
        return Err(Error::InvalidArgument(format!(
            "joint training needs a denoiser and a HardNet, not {den_arch} and {desc_arch}"
        )));
    }
    if start.0.arch() != den_arch || start.1.arch() != desc_arch {
        return Err(Error::InvalidArgument(format!(
            "joint training starts from a {} and a {}, but the configuration names {den_arch} and {desc_arch}",
            start.0.arch(),
            start.1.arch()
        )));
    }
    let (den_model, desc_model) = (Model::new(den_arch)?, dcfg.model()?);
    let mut den: State = session::start(&den_model, ncfg, den_run, resume, Some(start.0.params()))?;
    let mut desc: State = session::start(&desc_model, dcfg, desc_run, resume, Some(start.1.params()))?;
    if den.epochs_done != desc.epochs_done || den.sampler != desc.sampler {
        return Err(Error::Training(format!(
            "the checkpoints in {} (epoch {}) and {} (epoch {}) are from different epochs: \
             the run stopped while writing them; remove both folders to redo the joint stage",
            den_run.dir.display(),
            den.epochs_done,
            desc_run.dir.display(),
            desc.epochs_done
        )));
    }
    let hardnet = HardNetLoss::new(dcfg.margin, true)?;
    let b = dcfg.batch;
    let mut sampler: TwinsSampler<'_> = Sampler::twins(src.data, src.train, b, dcfg.epoch_items, dcfg.seed)?
        .with_augment(dcfg.augment)
        .with_batch_sequences(dcfg.batch_sequences)?;
    if let Some(s) = desc.sampler {
        sampler.set_state(s)?;
    }
    let val = Validation::new(src, dcfg)?;
    let (den_ranges, desc_ranges) = (den_model.layout().trainable_ranges(), desc_model.layout().trainable_ranges());
    // [noisy a | noisy p | clean a | clean p], each [B][1024].
    let mut x = vec![0.0f32; 4 * b * PATCH_LEN];
    let mut y = vec![0.0f32; 2 * b * PATCH_LEN];
    let mut dy = vec![0.0f32; 2 * b * PATCH_LEN];
    let mut d_l1 = vec![0.0f32; 2 * b * PATCH_LEN];
    let mut d_desc = vec![0.0f32; 2 * b * DESC_LEN];
    let (mut den_grads, mut desc_grads) = (den_model.zero_grads(), desc_model.zero_grads());
    // On a device, parameters and optimizer states live there until the epoch ends.
    let mut gpu = crate::gpu::joint_trainer(
        desc_run.device,
        (&den_model, &den.params, &den.optimizer),
        (&desc_model, &desc.params, &desc.optimizer),
        b,
    )?;
    // On a device the CPU buffers are one-pair placeholders.
    let mut full = StepBuffers::new(&den_model, &desc_model, if gpu.is_some() { 1 } else { b })?;
    let mut tail: Option<StepBuffers> = None;
    let steps = dcfg.steps_per_epoch();

    while desc.epochs_done < dcfg.epochs {
        let epoch = desc.epochs_done + 1;
        let obs = desc_run.observer();
        obs.event(&Event::EpochStarted { stage: "joint", epoch, epochs: dcfg.epochs, steps, unit: "pairs" });
        let t0 = Instant::now();
        let (mut loss_sum, mut l1_sum, mut items, mut step) = (0.0f64, 0.0f64, 0u64, 0u64);
        loop {
            let info = {
                let (na, rest) = x.split_at_mut(b * PATCH_LEN);
                let (np, rest) = rest.split_at_mut(b * PATCH_LEN);
                let (ca, cp) = rest.split_at_mut(b * PATCH_LEN);
                sampler.next_batch([na, np, ca, cp])?
            };
            let n = info.items;
            if n < b {
                compact_views(&mut x, 4, b, n);
            }
            // This step's learning rates (the optimizers read them only in their updates).
            let t = desc.epochs_done * steps + step;
            desc.optimizer.config.set_lr(dcfg.lr_at(t));
            den.optimizer.config.set_lr(ncfg.lr_at(t));
            step += 1;
            let done = desc.epochs_done;
            let check = |l: f64| session::check_loss(l, epoch, step, desc_run, done);
            let (loss, l_den) = match gpu.as_mut() {
                Some(g) => {
                    // The whole step on the device: the batch goes in, the losses come out.
                    let m = 2 * n * PATCH_LEN;
                    let dropout = (&mut den.dropout, &mut desc.dropout);
                    let opts = (&mut den.optimizer, &mut desc.optimizer);
                    g.step((&x[..m], &x[m..2 * m]), (&hardnet, w), dropout, opts, check)?
                }
                None => {
                    let bufs = if n == b {
                        &mut full
                    } else {
                        if tail.as_ref().is_none_or(|t| t.hn_ws.batch() != n) {
                            tail = Some(StepBuffers::new(&den_model, &desc_model, n)?);
                        }
                        tail.as_mut().expect("set just above")
                    };
                    let m = 2 * n * PATCH_LEN;
                    let (noisy, clean) = (&x[..m], &x[m..2 * m]);
                    den_grads.iter_mut().for_each(|g| *g = 0.0);
                    desc_grads.iter_mut().for_each(|g| *g = 0.0);
                    // y = denoiser(noisy): [2n, 1, 32, 32].
                    let out = den_model.forward_train(&mut bufs.den_ws, &mut den.params, noisy, &mut den.dropout)?;
                    y[..m].copy_from_slice(out);
                    // d = descriptor(y): [2n, 128]; hardnet loss on (d_a, d_p).
                    let d =
                        desc_model.forward_train(&mut bufs.desc_ws, &mut desc.params, &y[..m], &mut desc.dropout)?;
                    let dd = &mut d_desc[..2 * n * DESC_LEN];
                    dd.iter_mut().for_each(|v| *v = 0.0);
                    let (ga, gp) = dd.split_at_mut(n * DESC_LEN);
                    let (a, p) = d.split_at(n * DESC_LEN);
                    let l_desc = hardnet.loss(ga, gp, &mut bufs.hn_ws, a, p, n, DESC_LEN)? as f64;
                    // dL/dy = descriptor^T dL/dd + w * dL1/dy.
                    let g = &mut dy[..m];
                    g.iter_mut().for_each(|v| *v = 0.0);
                    desc_model.backward_with_input(&mut bufs.desc_ws, &desc.params, &mut desc_grads, dd, g)?;
                    let gl = &mut d_l1[..m];
                    gl.iter_mut().for_each(|v| *v = 0.0);
                    let l_den = l1_loss(gl, &y[..m], clean)? as f64;
                    axpy(g, w, gl)?;
                    den_model.backward(&mut bufs.den_ws, &den.params, &mut den_grads, g)?;
                    let loss = l_desc + w as f64 * l_den;
                    check(loss)?;
                    desc.optimizer.step(&mut desc.params, &desc_grads, &desc_ranges)?;
                    den.optimizer.step(&mut den.params, &den_grads, &den_ranges)?;
                    (loss, l_den)
                }
            };
            loss_sum += loss * n as f64;
            l1_sum += l_den * n as f64;
            items += n as u64;
            let items_per_second = items as f64 / t0.elapsed().as_secs_f64();
            obs.event(&Event::Step { loss, items_per_second, unit: "pairs" });
            if info.last {
                break;
            }
        }
        if let Some(g) = &gpu {
            g.download((&mut den.params, &mut den.optimizer), (&mut desc.params, &mut desc.optimizer))?;
        }
        let seconds = t0.elapsed().as_secs_f64();
        let mut den_net = Network::from_params(Model::new(den_arch)?, den.params.clone())?;
        let mut desc_net = Network::from_params(Model::new(desc_arch)?, desc.params.clone())?;
        // Validation runs on the training device.
        den_net.set_device(desc_run.device)?;
        desc_net.set_device(desc_run.device)?;
        let (val_desc, val_den) = val.losses(&den_net, &desc_net, &hardnet)?;
        let per = |sum: f64| sum / items.max(1) as f64;
        // The denoiser counts patches (two per pair), the descriptor pairs.
        let metric = |train_loss, val_loss, per_pair: f64| EpochMetrics {
            epoch,
            train_loss,
            val_loss,
            map: None,
            seconds,
            items_per_second: per_pair * items as f64 / seconds.max(1e-9),
        };
        den.epochs_done = epoch;
        desc.epochs_done = epoch;
        den.metrics.push(metric(per(l1_sum), val_den, 2.0));
        desc.metrics.push(metric(per(loss_sum), val_desc, 1.0));
        let state = sampler.state();
        session::end_epoch(den_run, ncfg, &den, state, "joint denoiser")?;
        session::end_epoch(desc_run, dcfg, &desc, state, "joint")?;
    }
    let denoiser = Network::from_params(den_model, den.params)?;
    let descriptor = Network::from_params(desc_model, desc.params)?;
    den_run.save_model(&denoiser)?;
    desc_run.save_model(&descriptor)?;
    Ok(JointResult { denoiser, descriptor, denoiser_metrics: den.metrics, descriptor_metrics: desc.metrics })
}
