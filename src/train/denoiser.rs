//! Denoiser training: (noisy, clean) batches from the training sequences,
//! the model's output against the clean patch with L1 (the seed's MAE) or
//! MSE, one optimizer step per batch; with a clean-patch teacher, plus the
//! perceptual term through it ([`super::perceptual`]). After each epoch: the
//! validation loss (the pointwise loss alone) on fixed pairs from the
//! validation sequences, a checkpoint, a metrics line.

use super::config::TrainConfig;
use super::metrics::EpochMetrics;
use super::perceptual::Perceptual;
use super::progress::Event;
use super::session::{self, RunDir, State};
use super::step::{Head, Stepper};
use crate::data::pack::PackedDataset;
use crate::data::sampler::Sampler;
use crate::error::{Error, Result};
use crate::io::PATCH_LEN;
use crate::loss::LossKind;
use crate::models::Model;
use crate::net::Network;
use std::time::Instant;

/// Seed offset of the validation sampler, so validation pairs never depend on the training stream.
const VAL_STREAM: u64 = 0x7A11_DA7E;

/// Fixed validation pairs (noisy, clean) from sequences `test`.
pub fn validation_pairs(data: &PackedDataset, test: &[usize], items: usize, seed: u64) -> Result<(Vec<f32>, Vec<f32>)> {
    if items == 0 || test.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut s = Sampler::denoise(data, test, items, items as u64, seed ^ VAL_STREAM)?;
    let (mut noisy, mut clean) = (vec![0.0; items * PATCH_LEN], vec![0.0; items * PATCH_LEN]);
    s.next_batch([&mut noisy, &mut clean])?;
    Ok((noisy, clean))
}

/// Mean loss of `net` on the validation pairs (eval mode).
pub fn validation_loss(net: &Network, loss: LossKind, noisy: &[f32], clean: &[f32]) -> Result<Option<f64>> {
    if noisy.is_empty() {
        return Ok(None);
    }
    let out = net.forward(noisy)?;
    let mut scratch = vec![0.0; out.len()];
    Ok(Some(loss.point()?.cpu(&mut scratch, &out, clean)? as f64))
}

/// Trains a denoiser on the sequences `train`, validating on `test`; returns
/// the trained network. `teacher` (a HardNet trained on clean patches) is
/// what the perceptual term describes through, and is needed exactly when
/// `cfg.perceptual_weight` is set.
pub fn train(
    cfg: &TrainConfig,
    data: &PackedDataset,
    (train, test): (&[usize], &[usize]),
    teacher: Option<&Network>,
    run: &RunDir,
    resume: bool,
) -> Result<(Network, Vec<EpochMetrics>)> {
    cfg.validate()?;
    let arch = cfg.arch;
    if !arch.is_denoiser() {
        return Err(Error::InvalidArgument(format!("{arch} is not a denoiser (expected unet or dncnn)")));
    }
    let mut guide = match (cfg.perceptual_weight, teacher) {
        (Some(w), Some(t)) => Some(Perceptual::new(t, w, cfg.batch)?),
        (None, None) => None,
        (Some(_), None) => {
            return Err(Error::InvalidArgument(
                "the perceptual term needs a clean-patch teacher (nhpatch run trains one)".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(Error::InvalidArgument("a teacher was given but no perceptual weight".into()));
        }
    };
    let point_loss = cfg.loss.point()?;
    let model = Model::new(arch)?;
    let mut st: State = session::start(&model, cfg, run, resume, None)?;
    let mut sampler = Sampler::denoise(data, train, cfg.batch, cfg.epoch_items, cfg.seed)?;
    if let Some(s) = st.sampler {
        sampler.set_state(s)?;
    }
    let (val_noisy, val_clean) = validation_pairs(data, test, cfg.val_items, cfg.seed)?;
    let b = cfg.batch;
    let (mut noisy, mut clean) = (vec![0.0; b * PATCH_LEN], vec![0.0; b * PATCH_LEN]);
    let steps = cfg.steps_per_epoch();
    let mut stepper = Stepper::new(run, &model, &st, (b, 1), cfg.epoch_items)?;
    let par = run.parallel.clone();

    let first_epoch = st.epochs_done;
    while st.epochs_done < cfg.epochs {
        let epoch = st.epochs_done + 1;
        let obs = run.observer();
        obs.event(&Event::EpochStarted { stage: "denoiser", epoch, epochs: cfg.epochs, steps, unit: "patches" });
        let t0 = Instant::now();
        let (mut loss_sum, mut items, mut step) = (0.0f64, 0u64, 0u64);
        loop {
            let info = sampler.next_batch([&mut noisy, &mut clean])?;
            let n = info.items;
            // This step's learning rate (the optimizer reads it only in its update).
            st.optimizer.config.set_lr(cfg.lr_at(st.epochs_done * steps + step));
            step += 1;
            let done = st.epochs_done;
            let head = Head::Point { loss: point_loss, target: &clean, guide: guide.as_mut() };
            let loss = stepper.step(&mut st, &noisy, n, head, |l| session::check_loss(l, epoch, step, run, done))?;
            loss_sum += loss * n as f64;
            items += n as u64;
            let items_per_second = items as f64 / t0.elapsed().as_secs_f64();
            obs.event(&Event::Step { loss, items_per_second, unit: "patches" });
            if info.last {
                break;
            }
        }
        stepper.end_epoch(&mut st)?;
        let seconds = t0.elapsed().as_secs_f64();
        let val_loss = if run.is_root() {
            let mut net = Network::from_params(Model::new(arch)?, st.params.clone())?;
            net.set_device(run.device)?;
            validation_loss(&net, cfg.loss, &val_noisy, &val_clean)?
        } else {
            None
        };
        st.epochs_done = epoch;
        st.metrics.push(EpochMetrics {
            epoch,
            train_loss: loss_sum / items.max(1) as f64,
            val_loss,
            map: None,
            seconds,
            items_per_second: items as f64 / seconds.max(1e-9),
        });
        session::end_epoch(run, cfg, &st, sampler.state(), "denoiser")?;
    }
    drop(stepper);
    let net = Network::from_params(model, st.params)?;
    run.save_model(&net)?;
    if let Some(p) = &par
        && run.is_root()
    {
        run.observer().event(&Event::Info(&p.traffic("denoiser", (st.epochs_done - first_epoch) * steps)));
    }
    Ok((net, st.metrics))
}
