//! Subcommands. Each one is a function from parsed arguments to `Result`.

mod bench;
mod compare;
mod eval;
mod infer;
mod info;
mod pack;
mod progress;
mod run;
mod synth;
mod train;

use clap::{Parser, Subcommand};
use nhpatch::Result;

#[derive(Parser)]
#[command(
    name = "nhpatch",
    version,
    about = "Train and run patch denoisers and the HardNet descriptor on the CPU (or an NVIDIA GPU with --features cuda)"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Layer table of a network (output shapes, parameter counts), like the report's Figures 1 and 3.
    Info(info::InfoArgs),
    /// Write freshly initialised weights (PyTorch default initialisation, seeded).
    Init(info::InitArgs),
    /// Denoise patches (a PNG strip or a .npy array) with a U-Net or DnCNN.
    Denoise(infer::DenoiseArgs),
    /// Compute 128-d HardNet descriptors of patches, optionally denoising first.
    Describe(infer::DescribeArgs),
    /// Calibrate int8 inference of a network on patches and save the weights with the calibration.
    Calibrate(infer::CalibrateArgs),
    /// Pack a dataset root (PNG strips) into one memory-mapped file.
    Pack(pack::PackArgs),
    /// Write a synthetic N-HPatches dataset (strips, noisy twins, splits.json).
    Synth(synth::SynthArgs),
    /// Score descriptors with the HPatches benchmark (verification, matching, retrieval mAP).
    Eval(eval::EvalArgs),
    /// Generate the HPatches task files (verification pairs, retrieval queries and distractors) of a dataset.
    Tasks(eval::TasksArgs),
    /// Write descriptors of a dataset split in the HPatches benchmark's CSV layout.
    Export(eval::ExportArgs),
    /// The whole pipeline of a training recipe: denoiser, descriptor (and joint fine-tuning), evaluation, report.
    Run(run::RunArgs),
    /// Train every recipe with several seeds and write the comparison table (mean +- std of the mAPs).
    Compare(compare::CompareArgs),
    /// Train a denoiser (U-Net or DnCNN) on a dataset split.
    TrainDenoiser(train::TrainDenoiserArgs),
    /// Train a HardNet descriptor on noisy, clean or denoised patches.
    TrainDescriptor(train::TrainDescriptorArgs),
    /// Training or inference throughput of one model (median of timed repetitions after a warm-up).
    Bench(bench::BenchArgs),
    /// Show the GEMM kernels this CPU can run and which one nhpatch uses.
    Kernels(KernelsArgs),
}

/// `--recipe`: the library's recipe names, listed in `--help`.
fn recipe_parser() -> impl clap::builder::TypedValueParser<Value = nhpatch::train::Recipe> {
    use clap::builder::TypedValueParser;
    let values = nhpatch::train::Recipe::ALL.map(|r| clap::builder::PossibleValue::new(r.name()).help(r.description()));
    clap::builder::PossibleValuesParser::new(values).try_map(|s| s.parse::<nhpatch::train::Recipe>())
}

/// `--preset`: the library's preset names, listed in `--help`.
fn preset_parser() -> impl clap::builder::TypedValueParser<Value = nhpatch::train::Preset> {
    use clap::builder::TypedValueParser;
    let values = nhpatch::train::Preset::ALL.map(|p| clap::builder::PossibleValue::new(p.name()).help(p.description()));
    clap::builder::PossibleValuesParser::new(values).try_map(|s| s.parse::<nhpatch::train::Preset>())
}

/// `--device`, shared by every command that runs a model.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct DeviceArgs {
    /// Where models run: cpu, cuda or cuda:N (an NVIDIA GPU; needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: nhpatch::gpu::Device,
}

#[derive(clap::Args)]
pub struct KernelsArgs {
    /// Also measure the single-thread FP32 FMA peak (about 2 seconds).
    #[arg(long)]
    peak: bool,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info(a) => info::info(a),
        Command::Init(a) => info::init(a),
        Command::Denoise(a) => infer::denoise(a),
        Command::Describe(a) => infer::describe(a),
        Command::Calibrate(a) => infer::calibrate(a),
        Command::Pack(a) => pack::pack(a),
        Command::Synth(a) => synth::synth(a),
        Command::Eval(a) => eval::eval(a),
        Command::Tasks(a) => eval::tasks(a),
        Command::Export(a) => eval::export(a),
        Command::Run(a) => run::run(a),
        Command::Bench(a) => bench::bench(a),
        Command::Compare(a) => compare::compare(a),
        Command::TrainDenoiser(a) => train::train_denoiser(a),
        Command::TrainDescriptor(a) => train::train_descriptor(a),
        Command::Kernels(a) => {
            for (precision, name, available, used) in nhpatch::cpu::kernel_table() {
                let mark = if used { " (used)" } else { "" };
                let avail = if available { "available" } else { "not available on this CPU" };
                println!("{precision:<5} {name:<16} {avail}{mark}");
            }
            if a.peak {
                for k in [nhpatch::cpu::Kernel::Avx512, nhpatch::cpu::Kernel::Avx2Fma] {
                    if k.is_available() {
                        let g = nhpatch::cpu::fma_peak_gflops(k, 1.0)?;
                        println!("FP32 FMA peak, one thread, {} vectors: {g:.1} GFLOP/s", k.name());
                    }
                }
            }
            Ok(())
        }
    }
}
