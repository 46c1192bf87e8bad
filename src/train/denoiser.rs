//! Denoiser training: (noisy, clean) batches from the training sequences,
//! the model's output against the clean patch with L1 (the seed's MAE) or
//! MSE, one optimizer step per batch. After each epoch: the validation loss
//! on fixed pairs from the test sequences, a checkpoint, a metrics line.

use super::config::TrainConfig;
use super::metrics::EpochMetrics;
use super::parallel::Parallel;
use super::progress::Event;
use super::session::{self, RunDir, State, tail_ws};
use crate::data::pack::PackedDataset;
use crate::data::sampler::Sampler;
use crate::error::{Error, Result};
use crate::io::PATCH_LEN;
use crate::loss::LossKind;
use crate::models::{Model, Workspace};
use crate::net::Network;
use crate::ops::elementwise::scale;
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

/// Trains a denoiser on the sequences `train`, validating on `test`; returns the trained network.
pub fn train(
    cfg: &TrainConfig,
    data: &PackedDataset,
    train: &[usize],
    test: &[usize],
    run: &RunDir,
    resume: bool,
) -> Result<(Network, Vec<EpochMetrics>)> {
    cfg.validate()?;
    let arch = cfg.arch;
    if !arch.is_denoiser() {
        return Err(Error::InvalidArgument(format!("{arch} is not a denoiser (expected unet or dncnn)")));
    }
    let point_loss = cfg.loss.point()?;
    let model = Model::new(arch)?;
    let mut st: State = session::start(&model, cfg, run, resume, None)?;
    let mut sampler = Sampler::denoise(data, train, cfg.batch, cfg.epoch_items, cfg.seed)?;
    if let Some(s) = st.sampler {
        sampler.set_state(s)?;
    }
    let (val_noisy, val_clean) = validation_pairs(data, test, cfg.val_items, cfg.seed)?;
    let ranges = model.layout().trainable_ranges();
    let b = cfg.batch;
    let par = run.parallel.clone();
    if let Some(p) = &par {
        p.check_batches(b, cfg.epoch_items)?;
    }
    // This rank's share of a full batch (all of it in one process).
    let own = par.as_ref().map_or(b, |p| p.share(b).1);
    let (mut noisy, mut clean) = (vec![0.0; b * PATCH_LEN], vec![0.0; b * PATCH_LEN]);
    let (mut x_own, mut c_own) = (vec![0.0; own * PATCH_LEN], vec![0.0; own * PATCH_LEN]);
    let mut dout = vec![0.0; own * PATCH_LEN];
    let mut grads = model.zero_grads();
    // On a device the CPU workspace is a one-patch placeholder.
    let mut ws = model.workspace(if run.device.is_cpu() { own } else { 1 })?;
    let mut tail: Option<Workspace> = None; // a shorter last batch, sized once
    let steps = cfg.steps_per_epoch();
    // On a device, parameters and optimizer state live there until the epoch ends.
    if par.is_some() && !run.device.is_cpu() {
        return Err(Error::InvalidArgument("--distributed trains on CPUs; it cannot be combined with --device".into()));
    }
    let mut gpu = crate::gpu::trainer(run.device, &model, &st.params, &st.optimizer, b)?;

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
            let loss = match gpu.as_mut() {
                Some(g) => {
                    // The whole step on the device: the batch goes in, the loss comes out.
                    let x = &noisy[..n * PATCH_LEN];
                    let loss = g.step_denoise(x, &clean[..n * PATCH_LEN], point_loss, &mut st.optimizer)?;
                    step += 1;
                    session::check_loss(loss, epoch, step, run, st.epochs_done)?;
                    loss
                }
                None => {
                    let (start, len) = par.as_ref().map_or((0, n), |p| p.share(n));
                    let w = if len == own { &mut ws } else { tail_ws(&mut tail, &model, len)? };
                    grads.iter_mut().for_each(|g| *g = 0.0);
                    let (x, target) = match &par {
                        Some(p) => {
                            Parallel::take(&mut x_own, &noisy, 1, n, (start, len), PATCH_LEN);
                            Parallel::take(&mut c_own, &clean, 1, n, (start, len), PATCH_LEN);
                            p.bind(w, start, n, 1)?;
                            (&x_own[..len * PATCH_LEN], &c_own[..len * PATCH_LEN])
                        }
                        None => (&noisy[..n * PATCH_LEN], &clean[..n * PATCH_LEN]),
                    };
                    let out = model.forward_train(w, &mut st.params, x, &mut st.dropout)?;
                    let d = &mut dout[..len * PATCH_LEN];
                    d.iter_mut().for_each(|v| *v = 0.0);
                    let mut loss = point_loss.cpu(d, out, target)? as f64;
                    if let Some(p) = &par {
                        // The loss is a mean over the global batch: this share weighs len / n of it.
                        scale(d, len as f32 / n as f32);
                        loss = p.mean_loss(loss, len, n)?;
                    }
                    step += 1;
                    session::check_loss(loss, epoch, step, run, st.epochs_done)?;
                    model.backward(w, &st.params, &mut grads, d)?;
                    if let Some(p) = &par {
                        p.sum_grads(&mut grads)?;
                    }
                    st.optimizer.step(&mut st.params, &grads, &ranges)?;
                    loss
                }
            };
            loss_sum += loss * n as f64;
            items += n as u64;
            let items_per_second = items as f64 / t0.elapsed().as_secs_f64();
            obs.event(&Event::Step { loss, items_per_second, unit: "patches" });
            if info.last {
                break;
            }
        }
        if let Some(p) = &par {
            p.sync_params(&mut st.params)?;
        }
        if let Some(g) = &gpu {
            g.download(&mut st.params, &mut st.optimizer)?;
        }
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
    let net = Network::from_params(model, st.params)?;
    run.save_model(&net)?;
    if let Some(p) = &par
        && run.is_root()
    {
        run.observer().event(&Event::Info(&p.traffic("denoiser", (st.epochs_done - first_epoch) * steps)));
    }
    Ok((net, st.metrics))
}
