//! `nhpatch run`: the whole pipeline of a training recipe ([`super::recipe`]).
//! Train the denoiser (if the recipe has one), train the descriptor on
//! denoised (or noisy) patches, fine-tune both end to end (joint recipe),
//! evaluate on the split's test sequences with noisy input through the
//! denoiser, and write the report
//! (`results.md`, `denoise.png`, `triplets.png`, `curves.svg`,
//! `results.json`) into the run folder.

use super::recipe::{DEFAULT_RECIPE, DENOISE_WEIGHT, JOINT_EPOCHS, Recipe, joint_configs};
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
use nhpatch::train::config::{InputKind, TrainConfig};
use nhpatch::train::descriptor::denoised_pack;
use nhpatch::train::joint::{self, JointConfig, JointData};
use nhpatch::train::metrics::MapScores;
use nhpatch::train::report::{ResultsDoc, write_curves_svg, write_montage, write_results_md};
use nhpatch::train::session::RunDir;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the embedded default dataset is generated on first use.
pub const DEFAULT_DATASET: &str = "data/synth";

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Dataset root (default: a synthetic N-HPatches generated into data/synth on first use).
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Run folder (default: runs/<date>-<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Training recipe (see README, "Training recipes"); `seed` is the report's pipeline.
    #[arg(long, value_enum, default_value_t = DEFAULT_RECIPE)]
    pub recipe: Recipe,
    /// Stage sizes: demo (minutes on two cores) or seed (the report's full scale).
    #[arg(long, value_enum, default_value_t = Preset::Demo)]
    pub preset: Preset,
    #[arg(long, default_value = "a")]
    pub split: String,
    /// Denoiser: unet, dncnn or none (default: the recipe's).
    #[arg(long)]
    pub denoiser: Option<String>,
    /// HardNet variant: baseline or original (default: the recipe's).
    #[arg(long)]
    pub variant: Option<String>,
    /// Descriptor loss: triplet or hardnet (default: the recipe's).
    #[arg(long)]
    pub loss: Option<String>,
    #[arg(long)]
    pub denoiser_epochs: Option<u64>,
    /// Patches per denoiser epoch.
    #[arg(long)]
    pub denoiser_items: Option<u64>,
    #[arg(long)]
    pub denoiser_lr: Option<f64>,
    /// sgd or adam.
    #[arg(long)]
    pub denoiser_optimizer: Option<String>,
    /// Descriptor epochs in all (the joint recipe spends the last --joint-epochs of them end to end).
    #[arg(long)]
    pub descriptor_epochs: Option<u64>,
    /// Triplets (or pairs) per descriptor epoch.
    #[arg(long)]
    pub triplets: Option<u64>,
    #[arg(long)]
    pub descriptor_lr: Option<f64>,
    #[arg(long)]
    pub descriptor_optimizer: Option<String>,
    /// Batch size of both stages.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Joint recipe: descriptor epochs trained end to end with the denoiser.
    #[arg(long, default_value_t = JOINT_EPOCHS)]
    pub joint_epochs: u64,
    /// Joint recipe: weight of the denoising (L1) loss beside the descriptor loss.
    #[arg(long, default_value_t = DENOISE_WEIGHT)]
    pub denoise_weight: f64,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Continue an interrupted run in --out.
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[command(flatten)]
    pub dev: super::DeviceArgs,
}

impl RunArgs {
    /// The default run of `recipe` with `seed` into `out` (what `nhpatch compare` runs).
    pub fn recipe_run(recipe: Recipe, dataset: Option<PathBuf>, out: PathBuf, seed: u64, threads: usize) -> RunArgs {
        RunArgs {
            dataset,
            out: Some(out),
            recipe,
            preset: Preset::Demo,
            split: "a".into(),
            denoiser: None,
            variant: None,
            loss: None,
            denoiser_epochs: None,
            denoiser_items: None,
            denoiser_lr: None,
            denoiser_optimizer: None,
            descriptor_epochs: None,
            triplets: None,
            descriptor_lr: None,
            descriptor_optimizer: None,
            batch: None,
            joint_epochs: JOINT_EPOCHS,
            denoise_weight: DENOISE_WEIGHT,
            seed: Some(seed),
            resume: true,
            threads,
            dev: super::DeviceArgs { device: nhpatch::gpu::Device::Cpu },
        }
    }
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

/// What a finished run reports (also read back by `nhpatch compare`).
pub struct RunSummary {
    pub map: MapScores,
    /// Seconds spent training (all stages, evaluation during training included).
    pub training_seconds: f64,
}

pub fn run(a: RunArgs) -> Result<RunSummary> {
    let t_start = Instant::now();
    a.dev.device.check_available()?;
    if a.recipe == Recipe::Joint && a.joint_epochs > 0 && !a.dev.device.is_cpu() {
        return Err(Error::InvalidArgument(format!(
            "--recipe joint: joint training runs on the CPU only; use --device cpu or another recipe (not {})",
            a.dev.device
        )));
    }
    let den_arch = match a.denoiser.as_deref() {
        None => a.recipe.denoiser(),
        Some("none") => None,
        Some(name) => {
            let arch = Arch::parse(name, None)?;
            if !arch.is_denoiser() {
                return Err(Error::InvalidArgument(format!("--denoiser {name}: expected unet, dncnn or none")));
            }
            Some(arch)
        }
    };
    if a.recipe == Recipe::Joint && den_arch.is_none() {
        return Err(Error::InvalidArgument("--recipe joint trains a denoiser: --denoiser none does not apply".into()));
    }
    let desc_arch = match &a.variant {
        Some(v) => Arch::parse("hardnet", Some(v))?,
        None => a.recipe.descriptor(),
    };
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

/// The descriptor stage's settings: the preset's, the recipe's, then the flags.
fn descriptor_config(a: &RunArgs, arch: Arch, input: InputKind) -> Result<TrainConfig> {
    let mut cfg = descriptor_preset(a.preset, arch, &a.split, input);
    a.recipe.apply(&mut cfg, a.preset);
    cfg.arch = arch.name().into();
    if let Some(l) = &a.loss {
        cfg.loss = l.clone();
    }
    let over = Overrides {
        epochs: a.descriptor_epochs,
        batch: a.batch,
        lr: a.descriptor_lr,
        optimizer: a.descriptor_optimizer.clone(),
        items: a.triplets,
        seed: a.seed.map(|s| s.wrapping_add(1)),
        ..Overrides::default()
    };
    over.apply(&mut cfg)?;
    Ok(cfg)
}

fn pipeline(a: &RunArgs, den_arch: Option<Arch>, desc_arch: Arch, out: &Path, t_start: Instant) -> Result<RunSummary> {
    let mut timings: Vec<(&str, f64)> = Vec::new();
    let t = Instant::now();
    let root = match &a.dataset {
        Some(d) => d.clone(),
        None => default_dataset()?,
    };
    let ds = DatasetSplit::open(&root, &a.split, 0)?;
    timings.push(("dataset", t.elapsed().as_secs_f64()));
    println!(
        "dataset {}: {} training and {} test sequences, {} training patches; recipe {}; run folder {}",
        root.display(),
        ds.train.len(),
        ds.test.len(),
        ds.train_patches(),
        a.recipe.name(),
        out.display()
    );

    let t = Instant::now();
    let mut den_cfg = None;
    let mut den = None;
    let mut den_metrics = Vec::new();
    if let Some(arch) = den_arch {
        let mut cfg = denoiser_preset(a.preset, arch, &a.split, ds.train_patches());
        let over = Overrides {
            epochs: a.denoiser_epochs,
            batch: a.batch,
            lr: a.denoiser_lr,
            optimizer: a.denoiser_optimizer.clone(),
            items: a.denoiser_items,
            seed: a.seed,
            ..Overrides::default()
        };
        over.apply(&mut cfg)?;
        let (mut net, m) = run_denoiser(&cfg, &ds, &out.join("denoiser"), a.resume, (None, a.dev.device))?;
        // Denoising the dataset for the descriptor stage runs where training did.
        net.set_device(a.dev.device)?;
        timings.push(("denoiser training", t.elapsed().as_secs_f64()));
        (den_cfg, den, den_metrics) = (Some(cfg), Some(net), m);
    }

    let t = Instant::now();
    let input = if den.is_some() { InputKind::Denoised } else { InputKind::Noisy };
    let mut desc_cfg = descriptor_config(a, desc_arch, input)?;
    let (separate, joint_epochs) = a.recipe.split_epochs(desc_cfg.epochs, a.joint_epochs);
    if joint_epochs > 0 {
        // One learning-rate schedule over the separate and the joint epochs, as if they were one run.
        desc_cfg.lr_span = Some((0, separate + joint_epochs));
    }
    desc_cfg.epochs = separate;
    let desc_dir = out.join("descriptor");
    let (mut descriptor, mut desc_metrics) =
        run_descriptor(&desc_cfg, &ds, den.as_ref(), &desc_dir, a.resume, (None, a.dev.device))?;
    timings.push(("descriptor training (incl. per-epoch evaluation)", t.elapsed().as_secs_f64()));

    // Evaluation input: the noisy test patches, through the denoiser (cached in a pack) when there is one.
    let mut joint_cfgs = None;
    let (eval_pack, eval_seqs): (Option<PackedDataset>, Vec<usize>) = match (&mut den, &den_cfg) {
        (Some(den), Some(ncfg)) if joint_epochs > 0 => {
            let t = Instant::now();
            let (jd, jn) = joint_configs(&desc_cfg, ncfg, joint_epochs, a.denoise_weight);
            let jdir = out.join("joint");
            let extra = |stage: &str| serde_json::json!({ "stage": stage, "dataset": root.display().to_string() });
            let den_run = RunDir::create(&jdir.join("denoiser"), extra("joint denoiser"))?;
            let desc_run = RunDir::create(&jdir.join("descriptor"), extra("joint descriptor"))?;
            let src = JointData { data: &ds.data, train: &ds.train, test: &ds.test };
            let cfg = JointConfig { descriptor: &jd, denoiser: &jn };
            let r = joint::train(&cfg, &src, (den, &descriptor), &den_run, &desc_run, a.resume)?;
            let offset = desc_metrics.len() as u64;
            desc_metrics.extend(r.descriptor_metrics.into_iter().map(|mut m| {
                m.epoch += offset;
                m
            }));
            (*den, descriptor) = (r.denoiser, r.descriptor);
            timings.push(("joint training", t.elapsed().as_secs_f64()));
            let t = Instant::now();
            let pack = denoised_pack(&ds.data, &ds.test, den, &jdir.join("denoised.pack"))?;
            timings.push(("denoising the test sequences", t.elapsed().as_secs_f64()));
            joint_cfgs = Some((jd, jn));
            (Some(pack), (0..ds.test.len()).collect())
        }
        (Some(_), _) => {
            let pack = PackedDataset::open(&desc_dir.join("denoised.pack"))?;
            (Some(pack), (ds.train.len()..ds.train.len() + ds.test.len()).collect())
        }
        (None, _) => (None, ds.test.clone()),
    };
    let (eval_data, eval_version) = match &eval_pack {
        Some(p) => (p, Version::Clean),
        None => (&ds.data, Version::Noisy),
    };
    let training_seconds = t_start.elapsed().as_secs_f64();

    let t = Instant::now();
    let bench = Benchmark::prepare(&root, &a.split, None, 42)?;
    let bar = nhpatch::train::session::spinner("final evaluation");
    descriptor.set_device(a.dev.device)?;
    let results = bench.evaluate_network(eval_data, &descriptor, None, eval_version);
    bar.finish_and_clear();
    let results = results?;
    timings.push(("final evaluation", t.elapsed().as_secs_f64()));
    let json_path = out.join("results.json");
    let json = results.to_json();
    write_atomic(&json_path, |w| w.write_all(json.as_bytes()).map_err(|e| io_err(&json_path, e)))?;

    // Figures.
    let mut images = Vec::new();
    if let Some(d) = &den {
        denoise_figure(&out.join("denoise.png"), &ds, d)?;
        images.push(("denoise.png", "noisy | denoised | clean test patches"));
    }
    triplet_figure(&out.join("triplets.png"), eval_data, &eval_seqs, eval_version)?;
    images.push(("triplets.png", "anchor | positive | negative (test patches as the descriptor sees them)"));
    write_curves_svg(&out.join("curves.svg"), &den_metrics, &desc_metrics)?;
    images.push(("curves.svg", "losses and mAP against epochs"));

    let config = serde_json::json!({
        "dataset": root.display().to_string(),
        "recipe": a.recipe.name(),
        "preset": format!("{:?}", a.preset).to_lowercase(),
        "denoiser": den_cfg,
        "descriptor": desc_cfg,
        "joint": joint_cfgs.as_ref().map(|(d, n)| serde_json::json!({ "descriptor": d, "denoiser": n })),
        "evaluation": {
            "split": a.split,
            "input": if den.is_some() { "noisy, denoised" } else { "noisy" },
            "tasks": bench.source,
        },
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
        images: &images,
        timings: &timings[..timings.len() - 1],
    };
    write_results_md(&out.join("results.md"), &doc)?;
    print!("\n{text}");
    println!("report: {}", out.join("results.md").display());
    println!("total {:.0} s", t_start.elapsed().as_secs_f64());
    Ok(RunSummary { map, training_seconds })
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
fn triplet_figure(path: &Path, data: &PackedDataset, seqs: &[usize], version: Version) -> Result<()> {
    let n = 6;
    let mut s = Sampler::triplet(data, seqs, version, n, n as u64, 7)?;
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
