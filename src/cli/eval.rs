//! `nhpatch eval` (the HPatches benchmark on descriptor CSVs, or `--bench`
//! on a synthetic split-a-sized workload) and `nhpatch tasks` (generate the
//! task files of a dataset).

use clap::Args;
use nhpatch::Precision;
use nhpatch::data::hpatches::Version;
use nhpatch::error::{Error, Result};
use nhpatch::eval::bench::{Benchmark, describe_dataset, load_catalog, load_networks, timing_workload};
use nhpatch::eval::descriptors::Descriptors;
use nhpatch::eval::tasks::{GenOptions, generate};
use nhpatch::eval::{descriptors, evaluate};
use nhpatch::gpu::Device;
use nhpatch::io::{io_err, write_atomic};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct EvalArgs {
    /// Dataset root: splits.json and one folder per sequence with ref.png.
    #[arg(long, required_unless_present = "bench")]
    dataset: Option<PathBuf>,
    /// Split whose test sequences are evaluated.
    #[arg(long, default_value = "a")]
    split: String,
    /// Descriptor root: <sequence>/<image>.csv.
    #[arg(long, required_unless_present_any = ["bench", "weights"], conflicts_with = "weights")]
    descriptors: Option<PathBuf>,
    /// Compute the descriptors with this HardNet instead of reading CSVs.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Denoise the patches with this U-Net/DnCNN first (then clip and round to 0..255).
    #[arg(long, requires = "weights")]
    denoiser: Option<PathBuf>,
    /// Which patches the network sees: noisy (the report's setting) or clean.
    #[arg(long, default_value = "noisy", requires = "weights")]
    input: String,
    /// Delimiter of the descriptor CSVs: ',' or ';'.
    #[arg(long, default_value_t = ',')]
    delimiter: char,
    /// Folder of the task files (default: DATASET/tasks when present, else generated in memory).
    #[arg(long)]
    tasks: Option<PathBuf>,
    /// Write all results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seed of tasks generated in memory (and of the --bench data).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Run the split-a-sized synthetic workload and print the wall time per task.
    #[arg(long)]
    bench: bool,
    #[command(flatten)]
    pub dev: super::DeviceArgs,
    /// Arithmetic of the networks with --weights: f32, int8 (see `nhpatch calibrate`) or bf16.
    #[arg(long, default_value = "f32", requires = "weights")]
    precision: Precision,
    /// Worker threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(Args)]
pub struct TasksArgs {
    /// Dataset root: splits.json and one folder per sequence with ref.png.
    #[arg(long)]
    dataset: PathBuf,
    #[arg(long, default_value = "a")]
    split: String,
    /// Output folder of the five task files.
    #[arg(long)]
    out: PathBuf,
    /// Pairs of each verification kind (default: scaled with the dataset, at most 1,000,000).
    #[arg(long)]
    pairs: Option<usize>,
    /// Retrieval queries (default: scaled, at most 10,000).
    #[arg(long)]
    queries: Option<usize>,
    /// Retrieval distractors (default: scaled, at most 20,000).
    #[arg(long)]
    distractors: Option<usize>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn check_delimiter(d: char) -> Result<char> {
    if d == ',' || d == ';' {
        Ok(d)
    } else {
        Err(Error::InvalidArgument(format!("--delimiter must be ',' or ';', not '{d}'")))
    }
}

fn report(results: &nhpatch::eval::Results, json: Option<&Path>) -> Result<()> {
    print!("{}", results.text());
    if let Some(path) = json {
        let text = results.to_json();
        write_atomic(path, |w| w.write_all(text.as_bytes()).map_err(|e| io_err(path, e)))?;
    }
    Ok(())
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let delimiter = check_delimiter(a.delimiter)?;
    let pool = nhpatch::threads::pool(a.threads)?;
    pool.install(|| {
        if a.bench {
            return bench(a.seed, a.json.as_deref());
        }
        let Some(dataset) = a.dataset.as_deref() else {
            return Err(Error::InvalidArgument("--dataset is required".into()));
        };
        let bench = Benchmark::prepare(dataset, &a.split, a.tasks.as_deref(), a.seed)?;
        if !bench.source.starts_with("task files") {
            eprintln!("{}", bench.source);
        }
        let descs = match (&a.weights, a.descriptors.as_deref()) {
            (Some(w), _) => {
                network_descriptors(dataset, &bench, w, a.denoiser.as_deref(), &a.input, a.dev.device, a.precision)?
            }
            (None, Some(dir)) => descriptors::read_dir(dir, &bench.catalog, delimiter)?,
            (None, None) => return Err(Error::InvalidArgument("give --descriptors DIR or --weights FILE".into())),
        };
        let results = bench.evaluate(&descs)?;
        report(&results, a.json.as_deref())
    })
}

/// The split-a-sized workload on synthetic descriptors.
fn bench(seed: u64, json: Option<&Path>) -> Result<()> {
    let t = Instant::now();
    let (catalog, tasks, descs) = timing_workload(seed)?;
    eprintln!(
        "bench: {} sequences, {} patches per image, {} pairs, {} queries, {} distractors (made in {:.2} s)",
        catalog.names.len(),
        catalog.patches(),
        tasks.pos.len(),
        tasks.queries.len(),
        tasks.distractors.len(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let results = evaluate(&descs, &catalog, &tasks, "a")?;
    let total = t.elapsed().as_secs_f64();
    report(&results, json)?;
    let tm = &results.timings;
    println!(
        "wall: verification {:.2} s, matching {:.2} s, retrieval {:.2} s, total {:.2} s ({} threads)",
        tm.verification_s,
        tm.matching_s,
        tm.retrieval_s,
        total,
        rayon::current_num_threads()
    );
    Ok(())
}

pub fn tasks(a: TasksArgs) -> Result<()> {
    let pool = nhpatch::threads::pool(a.threads)?;
    pool.install(|| {
        let (catalog, textured) = load_catalog(&a.dataset, &a.split)?;
        let d = GenOptions::defaults(&catalog);
        let opts = GenOptions {
            pairs: a.pairs.unwrap_or(d.pairs),
            queries: a.queries.unwrap_or(d.queries),
            distractors: a.distractors.unwrap_or(d.distractors),
            seed: a.seed,
        };
        let tasks = generate(&catalog, &textured, &opts)?;
        tasks.write(&a.out, &a.split, &catalog)?;
        println!(
            "wrote {} pairs of each verification kind, {} queries, {} distractors to {}",
            tasks.pos.len(),
            tasks.queries.len(),
            tasks.distractors.len(),
            a.out.display()
        );
        Ok(())
    })
}

#[derive(Args)]
pub struct ExportArgs {
    /// Dataset root (splits.json and sequence folders) or its packed file's folder.
    #[arg(long)]
    dataset: PathBuf,
    #[arg(long, default_value = "a")]
    split: String,
    /// HardNet weights.
    #[arg(long)]
    weights: PathBuf,
    /// Denoise first with these weights (then clip and round to 0..255).
    #[arg(long)]
    denoiser: Option<PathBuf>,
    /// Which patches the network sees: noisy or clean.
    #[arg(long, default_value = "noisy")]
    input: String,
    /// Output root: <sequence>/<image>.csv, the benchmark's layout.
    #[arg(long)]
    out: PathBuf,
    /// Delimiter: ',' or ';'.
    #[arg(long, default_value_t = ',')]
    delimiter: char,
    #[command(flatten)]
    pub dev: super::DeviceArgs,
    /// Arithmetic of the networks: f32, int8 (see `nhpatch calibrate`) or bf16.
    #[arg(long, default_value = "f32")]
    precision: Precision,
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// `noisy` or `clean`, as a pack version.
pub fn input_version(input: &str) -> Result<Version> {
    match input {
        "noisy" => Ok(Version::Noisy),
        "clean" => Ok(Version::Clean),
        other => Err(Error::InvalidArgument(format!("--input must be noisy or clean, not '{other}'"))),
    }
}

fn network_descriptors(
    dataset: &Path,
    bench: &Benchmark,
    weights: &Path,
    denoiser: Option<&Path>,
    input: &str,
    device: Device,
    precision: Precision,
) -> Result<Descriptors> {
    let version = input_version(input)?;
    let (desc, den) = load_networks(weights, denoiser, device, precision)?;
    let data = nhpatch::data::pack::open_dataset(dataset, 0)?;
    let t = Instant::now();
    let d = describe_dataset(&data, &bench.catalog, &desc, den.as_ref(), version)?;
    eprintln!(
        "described {} patches of {} test sequences ({} input{}) in {:.1} s",
        16 * bench.catalog.patches(),
        bench.catalog.names.len(),
        input,
        if den.is_some() { ", denoised first" } else { "" },
        t.elapsed().as_secs_f64()
    );
    Ok(d)
}

pub fn export(a: ExportArgs) -> Result<()> {
    let delimiter = check_delimiter(a.delimiter)?;
    nhpatch::threads::pool(a.threads)?.install(|| {
        let (catalog, _) = load_catalog(&a.dataset, &a.split)?;
        let version = input_version(&a.input)?;
        let (desc, den) = load_networks(&a.weights, a.denoiser.as_deref(), a.dev.device, a.precision)?;
        let data = nhpatch::data::pack::open_dataset(&a.dataset, 0)?;
        let d = describe_dataset(&data, &catalog, &desc, den.as_ref(), version)?;
        descriptors::write_dir(&a.out, &d, delimiter)?;
        println!("wrote descriptors of {} sequences to {}", catalog.names.len(), a.out.display());
        Ok(())
    })
}
