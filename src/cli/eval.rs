//! `nhpatch eval` (the HPatches benchmark on descriptor CSVs, or `--bench`
//! on a synthetic split-a-sized workload) and `nhpatch tasks` (generate the
//! task files of a dataset).

use clap::Args;
use nhpatch::error::{Error, Result};
use nhpatch::eval::tasks::{GenOptions, generate, patch_std};
use nhpatch::eval::{Catalog, Tasks, descriptors, evaluate, synth};
use nhpatch::io::{io_err, write_atomic};
use rayon::prelude::*;
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
    #[arg(long, required_unless_present = "bench")]
    descriptors: Option<PathBuf>,
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

/// The split's test sequences, their patch counts and the texture flags
/// (std > 10 of the clean `ref` patch's pixels, at the file's patch size).
pub fn load_dataset(dir: &Path, split: &str) -> Result<(Catalog, Vec<Vec<bool>>)> {
    let splits_path = dir.join("splits.json");
    let splits = nhpatch::data::splits::Splits::load(&splits_path)?;
    let names = splits.get(split, &splits_path)?.test.clone();
    let per_seq: Vec<(usize, Vec<bool>)> = names
        .par_iter()
        .map(|name| {
            let path = dir.join(name).join("ref.png");
            let img = nhpatch::io::png::read_gray(&path)?;
            let w = img.width;
            if w == 0 || img.height % w != 0 {
                return Err(Error::Format {
                    path,
                    msg: format!("a {}x{} image is not a strip of square patches", img.width, img.height),
                });
            }
            let count = img.height / w;
            let flags = (0..count).map(|i| patch_std(&img.pixels[i * w * w..(i + 1) * w * w]) > 10.0).collect();
            Ok((count, flags))
        })
        .collect::<Result<_>>()?;
    let (counts, textured) = per_seq.into_iter().unzip();
    Ok((Catalog::new(names, counts)?, textured))
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
        let (Some(dataset), Some(desc_dir)) = (a.dataset.as_deref(), a.descriptors.as_deref()) else {
            return Err(Error::InvalidArgument("--dataset and --descriptors are required".into()));
        };
        let (catalog, textured) = load_dataset(dataset, &a.split)?;
        let default_dir = dataset.join("tasks");
        let tasks = match a.tasks.as_deref() {
            Some(dir) => Tasks::read(dir, &a.split, &catalog)?,
            None if default_dir.is_dir() => Tasks::read(&default_dir, &a.split, &catalog)?,
            None => {
                let opts = GenOptions { seed: a.seed, ..GenOptions::defaults(&catalog) };
                eprintln!(
                    "no task files ({} is not a folder): generating {} pairs, {} queries, {} distractors in memory (seed {})",
                    default_dir.display(),
                    opts.pairs,
                    opts.queries,
                    opts.distractors,
                    opts.seed
                );
                generate(&catalog, &textured, &opts)?
            }
        };
        let descs = descriptors::read_dir(desc_dir, &catalog, delimiter)?;
        let results = evaluate(&descs, &catalog, &tasks, &a.split)?;
        report(&results, a.json.as_deref())
    })
}

/// The split-a-sized workload on synthetic descriptors.
fn bench(seed: u64, json: Option<&Path>) -> Result<()> {
    let t = Instant::now();
    let catalog = synth::catalog(40, 59_494, 2, seed)?;
    let textured = synth::textured(&catalog, seed);
    let opts = GenOptions { pairs: 1_000_000, queries: 10_000, distractors: 20_000, seed };
    let tasks = generate(&catalog, &textured, &opts)?;
    let descs = synth::descriptors(&catalog, 128, 0, seed);
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
        let (catalog, textured) = load_dataset(&a.dataset, &a.split)?;
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
