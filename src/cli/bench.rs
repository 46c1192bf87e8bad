//! `nhpatch bench`: throughput of one model in training or inference, after
//! a warm-up, as the median of several timed repetitions. Training steps are
//! the ones `nhpatch run` takes: denoisers on (noisy, clean) batches with L1
//! (U-Net with SGD + Nesterov, DnCNN with Adam), HardNet on triplets with the
//! triplet loss and plain SGD. With `--device cuda` the same steps run on the
//! GPU (`nhpatch::gpu`): a training step uploads the batch and reads the loss
//! back, an inference batch uploads the patches and reads the outputs back,
//! so each repetition ends synchronised with the device.

use clap::{Args, ValueEnum};
use nhpatch::error::{Error, Result};
use nhpatch::gpu::{Accel, Device};
use nhpatch::loss::l1::l1_loss;
use nhpatch::loss::triplet::TripletLoss;
use nhpatch::loss::{PointLoss, TupleLoss};
use nhpatch::models::{Arch, DESC_LEN, Model, PATCH_LEN};
use nhpatch::optim::{Optimizer, OptimizerConfig};
use nhpatch::rng::Rng;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Train,
    Infer,
}

#[derive(Args)]
pub struct BenchArgs {
    /// unet, dncnn or hardnet.
    #[arg(long)]
    model: String,
    /// HardNet variant: baseline or original.
    #[arg(long)]
    variant: Option<String>,
    #[arg(long, value_enum)]
    mode: Mode,
    /// Patches per batch (inference, denoiser training) or triplets per batch (HardNet training).
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long, default_value_t = 0)]
    threads: usize,
    #[command(flatten)]
    pub dev: super::DeviceArgs,
    /// Measured seconds (split into 5 repetitions).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
}

/// One benchmark's result.
pub struct Throughput {
    pub unit: &'static str,
    pub median: f64,
    pub reps: Vec<f64>,
}

/// Runs `step` (which processes `items` items) for about `seconds`, after one warm-up call.
fn measure(seconds: f64, items: usize, mut step: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
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
    Ok(reps)
}

/// The optimizer of a model's training workload (its seed preset's) and the unit of its throughput.
fn train_workload(arch: Arch) -> Result<(OptimizerConfig, &'static str)> {
    use nhpatch::train::preset::{Preset, denoiser_preset, descriptor_preset};
    let cfg = if arch.is_denoiser() {
        denoiser_preset(Preset::Seed, arch, "a", 1)
    } else {
        descriptor_preset(Preset::Seed, arch, "a", nhpatch::train::InputKind::Noisy)
    };
    Ok((cfg.optimizer, if arch.is_denoiser() { "patches/s" } else { "triplets/s" }))
}

/// A denoiser's training target for the benchmark's random input: a little darker.
fn denoise_target(x: &[f32]) -> Vec<f32> {
    x.iter().map(|v| (v - 10.0).max(0.0)).collect()
}

/// The same workloads as `bench_model`, on a device.
fn bench_device(arch: Arch, mode: Mode, batch: usize, seconds: f64, device: Device) -> Result<Throughput> {
    let model = Model::new(arch)?;
    let mut rng = Rng::new(1);
    let params = model.init_params(&mut rng);
    let patches = if mode == Mode::Train && !arch.is_denoiser() { 3 * batch } else { batch };
    let x: Vec<f32> = (0..patches * PATCH_LEN).map(|_| rng.uniform(0.0, 255.0)).collect();
    let (reps, unit) = match mode {
        Mode::Infer => {
            let mut accel = Accel::open(device, &model, &params)?;
            eprintln!("device: {}", accel.name());
            let mut out = vec![0.0f32; batch * model.out_len()];
            (measure(seconds, batch, || accel.forward(&x, &mut out))?, "patches/s")
        }
        Mode::Train => {
            let (cfg, unit) = train_workload(arch)?;
            let mut opt = Optimizer::new(cfg, params.len())?;
            let mut tr = nhpatch::gpu::trainer(device, &model, &params, &opt, patches)?
                .ok_or_else(|| Error::InvalidArgument("bench_device needs a device".into()))?;
            if arch.is_denoiser() {
                let target = denoise_target(&x);
                (measure(seconds, batch, || tr.step_denoise(&x, &target, PointLoss::L1, &mut opt).map(|_| ()))?, unit)
            } else {
                let loss = TupleLoss::Triplet(TripletLoss::new(1.0)?);
                (measure(seconds, batch, || tr.step_descriptor(&x, loss, &mut rng, &mut opt).map(|_| ()))?, unit)
            }
        }
    };
    Ok(Throughput { unit, median: reps[2], reps })
}

pub fn bench_model(arch: Arch, mode: Mode, batch: usize, seconds: f64) -> Result<Throughput> {
    if batch == 0 {
        return Err(Error::InvalidArgument("--batch must be at least 1".into()));
    }
    let mut model = Model::new(arch)?;
    let mut rng = Rng::new(1);
    let mut params = model.init_params(&mut rng);
    let reps;
    let unit;
    match mode {
        Mode::Infer => {
            let x: Vec<f32> = (0..batch * PATCH_LEN).map(|_| rng.uniform(0.0, 255.0)).collect();
            let mut ws = model.workspace(batch)?;
            reps = measure(seconds, batch, || model.forward_eval(&mut ws, &params, &x).map(|_| ()))?;
            unit = "patches/s";
        }
        Mode::Train if arch.is_denoiser() => {
            let x: Vec<f32> = (0..batch * PATCH_LEN).map(|_| rng.uniform(0.0, 255.0)).collect();
            let target = denoise_target(&x);
            let mut opt = Optimizer::new(train_workload(arch)?.0, params.len())?;
            let ranges = model.layout().trainable_ranges();
            let mut grads = model.zero_grads();
            let mut dout = vec![0.0f32; x.len()];
            let mut ws = model.workspace(batch)?;
            reps = measure(seconds, batch, || {
                grads.iter_mut().for_each(|g| *g = 0.0);
                dout.iter_mut().for_each(|g| *g = 0.0);
                let out = model.forward_train(&mut ws, &mut params, &x, &mut rng)?;
                l1_loss(&mut dout, out, &target)?;
                model.backward(&mut ws, &params, &mut grads, &dout)?;
                opt.step(&mut params, &grads, &ranges)
            })?;
            unit = "patches/s";
        }
        Mode::Train => {
            // `batch` triplets: one forward of 3 * batch patches.
            let n = 3 * batch;
            let x: Vec<f32> = (0..n * PATCH_LEN).map(|_| rng.uniform(0.0, 255.0)).collect();
            model.set_dropout(0.3)?;
            let mut opt = Optimizer::new(train_workload(arch)?.0, params.len())?;
            let ranges = model.layout().trainable_ranges();
            let mut grads = model.zero_grads();
            let mut dout = vec![0.0f32; n * DESC_LEN];
            let mut ws = model.workspace(n)?;
            let loss = TripletLoss::new(1.0)?;
            let d = batch * DESC_LEN;
            reps = measure(seconds, batch, || {
                grads.iter_mut().for_each(|g| *g = 0.0);
                dout.iter_mut().for_each(|g| *g = 0.0);
                let out = model.forward_train(&mut ws, &mut params, &x, &mut rng)?;
                let (ga, rest) = dout.split_at_mut(d);
                let (gp, gn) = rest.split_at_mut(d);
                loss.loss(ga, gp, gn, &out[..d], &out[d..2 * d], &out[2 * d..], batch, DESC_LEN)?;
                model.backward(&mut ws, &params, &mut grads, &dout)?;
                opt.step(&mut params, &grads, &ranges)
            })?;
            unit = "triplets/s";
        }
    }
    Ok(Throughput { unit, median: reps[2], reps })
}

pub fn bench(a: BenchArgs) -> Result<()> {
    let arch = Arch::parse(&a.model, a.variant.as_deref())?;
    let batch = a.batch.unwrap_or(match a.mode {
        Mode::Infer => 128,
        Mode::Train => 50,
    });
    if !(a.seconds > 0.0 && a.seconds.is_finite()) {
        return Err(Error::InvalidArgument(format!("--seconds {} must be positive", a.seconds)));
    }
    let device = a.dev.device;
    device.check_available()?;
    if batch == 0 {
        return Err(Error::InvalidArgument("--batch must be at least 1".into()));
    }
    let pool = nhpatch::threads::pool(a.threads)?;
    let threads = pool.current_num_threads();
    let t = pool.install(|| match device {
        Device::Cpu => bench_model(arch, a.mode, batch, a.seconds),
        d => bench_device(arch, a.mode, batch, a.seconds, d),
    })?;
    let reps: Vec<String> = t.reps.iter().map(|r| format!("{r:.1}")).collect();
    let on = if device.is_cpu() { format!("threads {threads}") } else { format!("device {device}") };
    println!(
        "{arch} {:?} batch {batch} {on}: {:.1} {} (median of 5; reps {})",
        a.mode,
        t.median,
        t.unit,
        reps.join(" ")
    );
    Ok(())
}
