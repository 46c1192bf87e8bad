//! `nhpatch run`: the whole pipeline of the report. Train the denoiser,
//! train the descriptor on denoised patches, evaluate on the split's test
//! sequences with noisy input through the denoiser, and write the report
//! (`results.md`, `denoise.png`, `triplets.png`, `curves.svg`,
//! `results.json`) into the run folder.

use super::train::{DatasetSplit, Overrides, Preset, denoiser_preset, descriptor_preset, run_denoiser, run_descriptor};
use clap::Args;
use nhpatch::data::hpatches::Version;
use nhpatch::data::pack::PackedDataset;
use nhpatch::data::sampler::Sampler;
use nhpatch::data::synth::{SynthConfig, generate};
use nhpatch::error::{Error, Result};
use nhpatch::eval::bench::Benchmark;
use nhpatch::io::{PATCH_LEN, io_err, write_atomic};
use nhpatch::models::Arch;
use nhpatch::net::{Network, to_pixels};
use nhpatch::train::config::InputKind;
use nhpatch::train::metrics::MapScores;
use nhpatch::train::report::{ResultsDoc, write_curves_svg, write_montage, write_results_md};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the embedded default dataset is generated on first use.
pub const DEFAULT_DATASET: &str = "data/synth";

#[derive(Args)]
pub struct RunArgs {
    /// Dataset root (default: a synthetic N-HPatches generated into data/synth on first use).
    #[arg(long)]
    dataset: Option<PathBuf>,
    /// Run folder (default: runs/<date>-<time>).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Preset::Demo)]
    preset: Preset,
    #[arg(long, default_value = "a")]
    split: String,
    /// Denoiser: unet or dncnn.
    #[arg(long, default_value = "unet")]
    denoiser: String,
    /// HardNet variant: baseline or original.
    #[arg(long, default_value = "baseline")]
    variant: String,
    /// Descriptor loss: triplet or hardnet.
    #[arg(long)]
    loss: Option<String>,
    #[arg(long)]
    denoiser_epochs: Option<u64>,
    /// Patches per denoiser epoch.
    #[arg(long)]
    denoiser_items: Option<u64>,
    #[arg(long)]
    denoiser_lr: Option<f64>,
    /// sgd or adam.
    #[arg(long)]
    denoiser_optimizer: Option<String>,
    #[arg(long)]
    descriptor_epochs: Option<u64>,
    /// Triplets (or pairs) per descriptor epoch.
    #[arg(long)]
    triplets: Option<u64>,
    #[arg(long)]
    descriptor_lr: Option<f64>,
    #[arg(long)]
    descriptor_optimizer: Option<String>,
    /// Batch size of both stages.
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// Continue an interrupted run in --out.
    #[arg(long)]
    resume: bool,
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// `runs/YYYYmmdd-HHMMSS` (UTC) from the system clock.
fn default_out() -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    PathBuf::from(format!("runs/{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem / 60 % 60, rem % 60))
}

/// The default dataset, generated when it is not there yet.
fn default_dataset() -> Result<PathBuf> {
    let root = PathBuf::from(DEFAULT_DATASET);
    if root.join("splits.json").is_file() {
        return Ok(root);
    }
    let cfg = SynthConfig::default();
    eprintln!("generating the default synthetic dataset into {} (first use) ...", root.display());
    let t = Instant::now();
    let s = generate(&cfg, &root)?;
    eprintln!("  {} sequences x {} patches in {:.1} s", s.sequences.len(), cfg.patches, t.elapsed().as_secs_f64());
    Ok(root)
}

pub fn run(a: RunArgs) -> Result<()> {
    let t_start = Instant::now();
    let den_arch = Arch::parse(&a.denoiser, None)?;
    if !den_arch.is_denoiser() {
        return Err(Error::InvalidArgument(format!("--denoiser {}: expected unet or dncnn", a.denoiser)));
    }
    let desc_arch = Arch::parse("hardnet", Some(&a.variant))?;
    let out = a.out.clone().unwrap_or_else(default_out);
    if out.join("results.md").exists() && !a.resume {
        return Err(Error::InvalidArgument(format!(
            "{} already holds a finished run; choose another --out",
            out.display()
        )));
    }
    let pool = nhpatch::threads::pool(a.threads)?;
    pool.install(|| pipeline(&a, den_arch, desc_arch, &out, t_start))
}

fn pipeline(a: &RunArgs, den_arch: Arch, desc_arch: Arch, out: &Path, t_start: Instant) -> Result<()> {
    let mut timings: Vec<(&str, f64)> = Vec::new();
    let t = Instant::now();
    let root = match &a.dataset {
        Some(d) => d.clone(),
        None => default_dataset()?,
    };
    let ds = DatasetSplit::open(&root, &a.split, 0)?;
    timings.push(("dataset", t.elapsed().as_secs_f64()));
    println!(
        "dataset {}: {} training and {} test sequences, {} training patches; run folder {}",
        root.display(),
        ds.train.len(),
        ds.test.len(),
        ds.train_patches(),
        out.display()
    );

    let t = Instant::now();
    let mut den_cfg = denoiser_preset(a.preset, den_arch, &a.split, ds.train_patches());
    let den_over = Overrides {
        epochs: a.denoiser_epochs,
        batch: a.batch,
        lr: a.denoiser_lr,
        optimizer: a.denoiser_optimizer.clone(),
        items: a.denoiser_items,
        seed: a.seed,
        ..Overrides::default()
    };
    den_over.apply(&mut den_cfg)?;
    let (denoiser, den_metrics) = run_denoiser(&den_cfg, &ds, &out.join("denoiser"), a.resume)?;
    timings.push(("denoiser training", t.elapsed().as_secs_f64()));

    let t = Instant::now();
    let mut desc_cfg = descriptor_preset(a.preset, desc_arch, &a.split, InputKind::Denoised);
    if let Some(l) = &a.loss {
        desc_cfg.loss = l.clone();
    }
    let desc_over = Overrides {
        epochs: a.descriptor_epochs,
        batch: a.batch,
        lr: a.descriptor_lr,
        optimizer: a.descriptor_optimizer.clone(),
        items: a.triplets,
        seed: a.seed.map(|s| s.wrapping_add(1)),
        ..Overrides::default()
    };
    desc_over.apply(&mut desc_cfg)?;
    let desc_dir = out.join("descriptor");
    let (descriptor, desc_metrics) = run_descriptor(&desc_cfg, &ds, Some(&denoiser), &desc_dir, a.resume)?;
    timings.push(("descriptor training (incl. per-epoch evaluation)", t.elapsed().as_secs_f64()));

    // Final evaluation: noisy test patches through the denoiser (cached in the descriptor's pack).
    let t = Instant::now();
    let denoised = PackedDataset::open(&desc_dir.join("denoised.pack"))?;
    let bench = Benchmark::prepare(&root, &a.split, None, 42)?;
    let bar = nhpatch::train::session::spinner("final evaluation");
    let results = bench.evaluate_network(&denoised, &descriptor, None, Version::Clean);
    bar.finish_and_clear();
    let results = results?;
    timings.push(("final evaluation", t.elapsed().as_secs_f64()));
    let json_path = out.join("results.json");
    let json = results.to_json();
    write_atomic(&json_path, |w| w.write_all(json.as_bytes()).map_err(|e| io_err(&json_path, e)))?;

    // Figures.
    let test_in_denoised: Vec<usize> = (ds.train.len()..ds.train.len() + ds.test.len()).collect();
    denoise_figure(&out.join("denoise.png"), &ds, &denoiser)?;
    triplet_figure(&out.join("triplets.png"), &denoised, &test_in_denoised)?;
    write_curves_svg(&out.join("curves.svg"), &den_metrics, &desc_metrics)?;

    let config = serde_json::json!({
        "dataset": root.display().to_string(),
        "preset": format!("{:?}", a.preset).to_lowercase(),
        "denoiser": den_cfg,
        "descriptor": desc_cfg,
        "evaluation": { "split": a.split, "input": "noisy, denoised", "tasks": bench.source },
    });
    let config_json = serde_json::to_string_pretty(&config).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let map = MapScores {
        verification: results.verification_map,
        matching: results.matching_map,
        retrieval: results.retrieval_map,
    };
    timings.push(("total", t_start.elapsed().as_secs_f64()));
    let text = results.text();
    let doc = ResultsDoc {
        title: "nhpatch run",
        config_json: &config_json,
        final_map: Some(map),
        eval_tables: &text,
        denoiser: &den_metrics,
        descriptor: &desc_metrics,
        images: &[
            ("denoise.png", "noisy | denoised | clean test patches"),
            ("triplets.png", "anchor | positive | negative (denoised test patches)"),
            ("curves.svg", "losses and mAP against epochs"),
        ],
        timings: &timings[..timings.len() - 1],
    };
    write_results_md(&out.join("results.md"), &doc)?;
    print!("\n{text}");
    println!("report: {}", out.join("results.md").display());
    println!("total {:.0} s", t_start.elapsed().as_secs_f64());
    Ok(())
}

/// Rows of noisy | denoised | clean for eight test patches spread over the test sequences.
fn denoise_figure(path: &Path, ds: &DatasetSplit, denoiser: &Network) -> Result<()> {
    let mut noisy: Vec<u8> = Vec::new();
    let mut clean: Vec<u8> = Vec::new();
    for k in 0..8 {
        let s = ds.test[k % ds.test.len()];
        let count = ds.data.sequences()[s].count;
        let (image, idx) = ((k * 5 + 1) % 16, (k * 37) % count);
        noisy.extend_from_slice(ds.data.patch(s, image, idx, Version::Noisy));
        clean.extend_from_slice(ds.data.patch(s, image, idx, Version::Clean));
    }
    let mut den = denoiser.denoise(&noisy.iter().map(|&v| v as f32).collect::<Vec<_>>())?;
    to_pixels(&mut den);
    let den: Vec<u8> = den.iter().map(|&v| v as u8).collect();
    let rows: Vec<Vec<&[u8]>> = (0..8)
        .map(|k| {
            let r = k * PATCH_LEN..(k + 1) * PATCH_LEN;
            vec![&noisy[r.clone()], &den[r.clone()], &clean[r]]
        })
        .collect();
    write_montage(path, &rows, 3)
}

/// Rows of anchor | positive | negative drawn by the training triplet sampler from the test sequences.
fn triplet_figure(path: &Path, data: &PackedDataset, seqs: &[usize]) -> Result<()> {
    let n = 6;
    let mut s = Sampler::triplet(data, seqs, Version::Clean, n, n as u64, 7)?;
    let (mut a, mut p, mut q) = (vec![0.0; n * PATCH_LEN], vec![0.0; n * PATCH_LEN], vec![0.0; n * PATCH_LEN]);
    s.next_batch([&mut a, &mut p, &mut q])?;
    let bytes = |v: &[f32]| v.iter().map(|&x| x as u8).collect::<Vec<u8>>();
    let (a, p, q) = (bytes(&a), bytes(&p), bytes(&q));
    let rows: Vec<Vec<&[u8]>> = (0..n)
        .map(|k| {
            let r = k * PATCH_LEN..(k + 1) * PATCH_LEN;
            vec![&a[r.clone()], &p[r.clone()], &q[r]]
        })
        .collect();
    write_montage(path, &rows, 3)
}
