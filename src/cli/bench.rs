//! `nhpatch bench`: flags into a `train::throughput::BenchConfig`, the
//! measurement (`measure_model`, on this command's thread pool), one line out.

use clap::{Args, ValueEnum};
use nhpatch::error::Result;
use nhpatch::loss::LossKind;
use nhpatch::models::Arch;
use nhpatch::train::throughput::{self, BenchConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Train,
    Infer,
}

impl From<Mode> for throughput::Mode {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Train => throughput::Mode::Train,
            Mode::Infer => throughput::Mode::Infer,
        }
    }
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
    /// Patches per batch (inference, denoiser training) or triplets (pairs with --loss hardnet) per batch (HardNet training).
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long, default_value_t = 0)]
    threads: usize,
    #[command(flatten)]
    pub dev: super::DeviceArgs,
    /// Training loss: l1 or mse (denoisers; default l1), triplet or hardnet (HardNet; default triplet).
    /// With hardnet, --batch counts pairs and the optimizer is the hardnet recipe's.
    #[arg(long)]
    loss: Option<LossKind>,
    /// Arithmetic of an inference benchmark: f32, bf16 or int8 (int8 calibrated on the benchmark's batch).
    #[arg(long, default_value = "f32")]
    precision: nhpatch::Precision,
    /// HardNet's dropout rate in training, in [0, 1) (default: the rate of
    /// the recipe the step mirrors: the hardnet recipe's with --loss hardnet,
    /// the model's 0.3 with triplets).
    #[arg(long)]
    dropout: Option<f32>,
    /// Measured seconds (split into 5 repetitions).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
}

pub fn bench(a: BenchArgs) -> Result<()> {
    let arch = Arch::parse(&a.model, a.variant.as_deref())?;
    let mode = throughput::Mode::from(a.mode);
    let device = a.dev.device;
    let batch = a.batch.unwrap_or(BenchConfig::default_batch(mode));
    let cfg = BenchConfig {
        seconds: a.seconds,
        device,
        loss: a.loss,
        precision: a.precision,
        dropout: a.dropout,
        ..BenchConfig::new(arch, mode, batch)
    };
    let pool = nhpatch::threads::pool(a.threads)?;
    let threads = pool.current_num_threads();
    let t = pool.install(|| throughput::measure_model(&cfg))?;
    if let Some(name) = &t.device_name {
        eprintln!("device: {name}");
    }
    let reps: Vec<String> = t.reps.iter().map(|r| format!("{r:.1}")).collect();
    let on = if device.is_cpu() { format!("threads {threads}") } else { format!("device {device}") };
    println!(
        "{arch} {:?}{} batch {batch} {on}: {:.1} {} (median of 5; reps {})",
        a.mode,
        if a.precision == nhpatch::Precision::F32 { String::new() } else { format!(" {}", a.precision) },
        t.median,
        t.unit,
        reps.join(" ")
    );
    Ok(())
}
