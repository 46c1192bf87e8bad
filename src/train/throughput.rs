//! Throughput of one model in training or inference (what `nhpatch bench`
//! prints), after a warm-up, as the median of five timed repetitions.
//! Training steps are the ones `nhpatch run` takes with the seed preset's
//! optimizer: denoisers on (noisy, clean) batches with L1, HardNet on
//! triplets with the triplet loss. On a device the same steps run through
//! `nhpatch::gpu`: a training step uploads the batch and reads the loss back,
//! an inference batch uploads the patches and reads the outputs back, so each
//! repetition ends synchronised with the device.
//!
//! Runs on the caller's rayon pool (`threads::pool(..).install(..)`).

use crate::error::{Error, Result};
use crate::gpu::{Accel, Device};
use crate::loss::l1::l1_loss;
use crate::loss::triplet::TripletLoss;
use crate::loss::{PointLoss, TupleLoss};
use crate::models::{Arch, DESC_LEN, Model, PATCH_LEN};
use crate::optim::{Optimizer, OptimizerConfig};
use crate::rng::Rng;
use std::time::Instant;

/// What is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Optimizer steps: patches/s for denoisers, triplets/s for HardNet.
    Train,
    /// Eval forwards: patches/s.
    Infer,
}

/// A throughput measurement.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub arch: Arch,
    pub mode: Mode,
    /// Patches per batch (inference, denoiser training) or triplets per batch (HardNet training).
    pub batch: usize,
    /// Measured seconds, split into 5 repetitions.
    pub seconds: f64,
    pub device: Device,
}

impl BenchConfig {
    /// `batch` of `arch` in `mode` on the CPU for 5 s.
    pub fn new(arch: Arch, mode: Mode, batch: usize) -> Self {
        BenchConfig { arch, mode, batch, seconds: 5.0, device: Device::Cpu }
    }

    /// The default batch of a mode: 128 patches (inference), 50 (training).
    pub fn default_batch(mode: Mode) -> usize {
        match mode {
            Mode::Infer => 128,
            Mode::Train => 50,
        }
    }
}

/// One benchmark's result.
#[derive(Clone, Debug)]
pub struct Throughput {
    /// "patches/s" or "triplets/s".
    pub unit: &'static str,
    pub median: f64,
    /// The five repetitions, ascending.
    pub reps: Vec<f64>,
    /// The device's own name, when an inference ran on one.
    pub device_name: Option<String>,
}

/// Runs `step` (which processes `items` items, counted in `unit`) for about `seconds`, after one warm-up call.
fn measure(seconds: f64, items: usize, unit: &'static str, mut step: impl FnMut() -> Result<()>) -> Result<Throughput> {
    step()?;
    let per_rep = (seconds / 5.0).max(0.05);
    let mut reps = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let mut n = 0usize;
        while n == 0 || t.elapsed().as_secs_f64() < per_rep {
            step()?;
            n += items;
        }
        reps.push(n as f64 / t.elapsed().as_secs_f64());
    }
    reps.sort_by(|a, b| a.total_cmp(b));
    Ok(Throughput { unit, median: reps[2], reps, device_name: None })
}

/// The optimizer of a model's training workload (its seed preset's) and the unit of its throughput.
fn train_workload(arch: Arch) -> (OptimizerConfig, &'static str) {
    use crate::train::preset::{Preset, denoiser_preset, descriptor_preset};
    if arch.is_denoiser() {
        (denoiser_preset(Preset::Seed, arch, "a", 1).optimizer, "patches/s")
    } else {
        (descriptor_preset(Preset::Seed, arch, "a", crate::train::InputKind::Noisy).optimizer, "triplets/s")
    }
}

/// A denoiser's training target for the benchmark's random input: a little darker.
fn denoise_target(x: &[f32]) -> Vec<f32> {
    x.iter().map(|v| (v - 10.0).max(0.0)).collect()
}

/// Measures `cfg`'s workload (see the module header).
pub fn measure_model(cfg: &BenchConfig) -> Result<Throughput> {
    if cfg.batch == 0 {
        return Err(Error::InvalidArgument("--batch must be at least 1".into()));
    }
    if !(cfg.seconds > 0.0 && cfg.seconds.is_finite()) {
        return Err(Error::InvalidArgument(format!("--seconds {} must be positive", cfg.seconds)));
    }
    cfg.device.check_available()?;
    match cfg.device {
        Device::Cpu => on_cpu(cfg),
        _ => on_device(cfg),
    }
}

fn on_device(cfg: &BenchConfig) -> Result<Throughput> {
    let (arch, batch) = (cfg.arch, cfg.batch);
    let model = Model::new(arch)?;
    let mut rng = Rng::new(1);
    let params = model.init_params(&mut rng);
    let patches = if cfg.mode == Mode::Train && !arch.is_denoiser() { 3 * batch } else { batch };
    let x: Vec<f32> = (0..patches * PATCH_LEN).map(|_| rng.uniform(0.0, 255.0)).collect();
    match cfg.mode {
        Mode::Infer => {
            let mut accel = Accel::open(cfg.device, &model, &params)?;
            let mut out = vec![0.0f32; batch * model.out_len()];
            let t = measure(cfg.seconds, batch, "patches/s", || accel.forward(&x, &mut out))?;
            Ok(Throughput { device_name: Some(accel.name().to_string()), ..t })
        }
        Mode::Train => {
            let (opt_cfg, unit) = train_workload(arch);
            let mut opt = Optimizer::new(opt_cfg, params.len())?;
            let mut tr = crate::gpu::trainer(cfg.device, &model, &params, &opt, patches)?
                .ok_or_else(|| Error::InvalidArgument("a device benchmark needs a device".into()))?;
            if arch.is_denoiser() {
                let target = denoise_target(&x);
                measure(cfg.seconds, batch, unit, || tr.step_denoise(&x, &target, PointLoss::L1, &mut opt).map(|_| ()))
            } else {
                let loss = TupleLoss::Triplet(TripletLoss::new(1.0)?);
                measure(cfg.seconds, batch, unit, || tr.step_descriptor(&x, loss, &mut rng, &mut opt).map(|_| ()))
            }
        }
    }
}

fn on_cpu(cfg: &BenchConfig) -> Result<Throughput> {
    let (arch, batch) = (cfg.arch, cfg.batch);
    let mut model = Model::new(arch)?;
    let mut rng = Rng::new(1);
    let mut params = model.init_params(&mut rng);
    match cfg.mode {
        Mode::Infer => {
            let x: Vec<f32> = (0..batch * PATCH_LEN).map(|_| rng.uniform(0.0, 255.0)).collect();
            let mut ws = model.workspace(batch)?;
            measure(cfg.seconds, batch, "patches/s", || model.forward_eval(&mut ws, &params, &x).map(|_| ()))
        }
        Mode::Train if arch.is_denoiser() => {
            let x: Vec<f32> = (0..batch * PATCH_LEN).map(|_| rng.uniform(0.0, 255.0)).collect();
            let target = denoise_target(&x);
            let (opt_cfg, unit) = train_workload(arch);
            let mut opt = Optimizer::new(opt_cfg, params.len())?;
            let ranges = model.layout().trainable_ranges();
            let mut grads = model.zero_grads();
            let mut dout = vec![0.0f32; x.len()];
            let mut ws = model.workspace(batch)?;
            measure(cfg.seconds, batch, unit, || {
                grads.iter_mut().for_each(|g| *g = 0.0);
                dout.iter_mut().for_each(|g| *g = 0.0);
                let out = model.forward_train(&mut ws, &mut params, &x, &mut rng)?;
                l1_loss(&mut dout, out, &target)?;
                model.backward(&mut ws, &params, &mut grads, &dout)?;
                opt.step(&mut params, &grads, &ranges)
            })
        }
        Mode::Train => {
            // `batch` triplets: one forward of 3 * batch patches.
            let n = 3 * batch;
            let x: Vec<f32> = (0..n * PATCH_LEN).map(|_| rng.uniform(0.0, 255.0)).collect();
            model.set_dropout(0.3)?;
            let (opt_cfg, unit) = train_workload(arch);
            let mut opt = Optimizer::new(opt_cfg, params.len())?;
            let ranges = model.layout().trainable_ranges();
            let mut grads = model.zero_grads();
            let mut dout = vec![0.0f32; n * DESC_LEN];
            let mut ws = model.workspace(n)?;
            let loss = TripletLoss::new(1.0)?;
            let d = batch * DESC_LEN;
            measure(cfg.seconds, batch, unit, || {
                grads.iter_mut().for_each(|g| *g = 0.0);
                dout.iter_mut().for_each(|g| *g = 0.0);
                let out = model.forward_train(&mut ws, &mut params, &x, &mut rng)?;
                let (ga, rest) = dout.split_at_mut(d);
                let (gp, gn) = rest.split_at_mut(d);
                loss.loss(ga, gp, gn, &out[..d], &out[d..2 * d], &out[2 * d..], batch, DESC_LEN)?;
                model.backward(&mut ws, &params, &mut grads, &dout)?;
                opt.step(&mut params, &grads, &ranges)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_every_mode_and_refuses_bad_settings() {
        for (arch, mode, unit) in [
            (Arch::Unet, Mode::Train, "patches/s"),
            (Arch::HardNetBaseline, Mode::Train, "triplets/s"),
            (Arch::Dncnn, Mode::Infer, "patches/s"),
        ] {
            let cfg = BenchConfig { seconds: 0.05, ..BenchConfig::new(arch, mode, 2) };
            let t = measure_model(&cfg).unwrap();
            assert_eq!(t.unit, unit);
            assert_eq!(t.reps.len(), 5);
            assert!(t.reps.windows(2).all(|w| w[0] <= w[1]) && t.median == t.reps[2] && t.median > 0.0);
        }
        let base = BenchConfig::new(Arch::Unet, Mode::Infer, 1);
        assert!(measure_model(&BenchConfig { batch: 0, ..base.clone() }).is_err());
        assert!(measure_model(&BenchConfig { seconds: f64::NAN, ..base.clone() }).is_err());
        assert!(measure_model(&BenchConfig { seconds: 0.0, ..base }).is_err());
    }
}
