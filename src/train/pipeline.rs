//! The whole pipeline of a training [`Recipe`], as `nhpatch run` runs it:
//! train the denoiser (if the recipe has one), train the descriptor on
//! denoised (or noisy) patches, fine-tune both end to end (joint recipe),
//! evaluate on the split's test sequences with noisy input through the
//! denoiser, and write the report (`results.md`, `results.json`,
//! `denoise.png`, `triplets.png`, `curves.svg`) into the run folder, one
//! sub-folder per stage (`denoiser/`, `descriptor/`, `joint/`).
//!
//! ```no_run
//! use nhpatch::train::pipeline::{self, RunConfig};
//! use nhpatch::train::Recipe;
//!
//! let mut cfg = RunConfig::new(Recipe::Hardnet, "runs/example".into());
//! cfg.seed = Some(7);
//! // Progress as plain lines; `nhpatch::train::progress::quiet()` for none.
//! let log = |e: &nhpatch::train::progress::Event<'_>| {
//!     if let nhpatch::train::progress::Event::Info(line) = e {
//!         println!("{line}");
//!     }
//! };
//! let summary = pipeline::run(&cfg, std::sync::Arc::new(log))?;
//! println!("mean mAP {:.3}", summary.map.mean());
//! # Ok::<(), nhpatch::Error>(())
//! ```

use super::config::{InputKind, TrainConfig};
use super::descriptor::denoised_pack;
use super::joint::{self, JointConfig, JointData};
use super::metrics::MapScores;
use super::preset::{Overrides, Preset, denoiser_preset, descriptor_preset};
use super::progress::{BusyGuard, Event, SharedObserver};
use super::recipe::{DENOISE_WEIGHT, JOINT_EPOCHS, Recipe, TEACHER_EPOCHS, joint_configs, teacher_configs};
use super::report::{ResultsDoc, write_curves_svg, write_montage, write_results_md};
use super::session::RunDir;
use super::stage::{
    StageOptions, TASKS_SEED, train_denoiser, train_denoiser_for_teacher, train_descriptor,
    train_descriptor_from_teacher,
};
use crate::data::hpatches::Version;
use crate::data::pack::PackedDataset;
use crate::data::sampler::Sampler;
use crate::data::split::{DatasetSplit, Validation};
use crate::data::synth::{SynthConfig, generate};
use crate::error::{Error, Result};
use crate::eval::bench::Benchmark;
use crate::gpu::Device;
use crate::io::{PATCH_LEN, io_err, write_atomic};
use crate::loss::LossKind;
use crate::models::Arch;
use crate::net::{Network, to_pixels};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the embedded default dataset is generated on first use.
pub const DEFAULT_DATASET: &str = "data/synth";

/// Everything a run is asked to do. [`RunConfig::new`] gives the recipe's
/// defaults; every `Option` left `None` keeps the preset's or recipe's value.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Dataset root; `None`: the synthetic N-HPatches in [`DEFAULT_DATASET`], generated on first use.
    pub dataset: Option<PathBuf>,
    /// Run folder.
    pub out: PathBuf,
    pub recipe: Recipe,
    /// Stage sizes.
    pub preset: Preset,
    pub split: String,
    /// Validation sequences held out of the split's training sequences
    /// (default: `VAL_FRACTION` of them); per-epoch validation uses them, the
    /// test sequences are scored once, at the end.
    pub validation: Validation,
    /// The denoiser: `None` the recipe's, `Some(None)` none, `Some(Some(arch))` that one.
    pub denoiser: Option<Option<Arch>>,
    /// The HardNet variant (default: the recipe's).
    pub descriptor: Option<Arch>,
    /// The descriptor loss (default: the recipe's).
    pub loss: Option<LossKind>,
    /// Denoiser stage settings over the preset's (epochs, items, lr, optimizer, ...).
    pub denoiser_overrides: Overrides,
    /// Descriptor stage settings over the preset's and recipe's; `epochs` counts the joint epochs too.
    pub descriptor_overrides: Overrides,
    /// Batch size of both stages (a stage's own override wins).
    pub batch: Option<usize>,
    /// Joint recipe: descriptor epochs trained end to end with the denoiser.
    pub joint_epochs: u64,
    /// Joint recipe: weight of the denoising (L1) loss beside the descriptor loss.
    pub denoise_weight: f64,
    /// With a clean start, a distillation weight in `descriptor_overrides`
    /// or a perceptual weight in `denoiser_overrides`: descriptor epochs
    /// spent first on the clean-patch teacher (the student starts from it
    /// and gets the rest).
    pub teacher_epochs: u64,
    /// The descriptor's clean start ([`Recipe::clean_start`]): `None` the
    /// recipe's (dropped, with a notice, when the descriptor has fewer than 2
    /// epochs), `Some(true)` always (an error without room for it), `Some(false)` never.
    pub clean_start: Option<bool>,
    /// Seed of the denoiser stage; the descriptor uses `seed + 1` (a stage's own override wins).
    pub seed: Option<u64>,
    /// Continue an interrupted run in `out`.
    pub resume: bool,
    /// Worker threads (0: all cores).
    pub threads: usize,
    /// Where training and evaluation run.
    pub device: Device,
}

impl RunConfig {
    /// The default run of `recipe` into `out`: demo preset, split `a`, the default dataset, all cores, the CPU.
    pub fn new(recipe: Recipe, out: PathBuf) -> RunConfig {
        RunConfig {
            dataset: None,
            out,
            recipe,
            preset: Preset::Demo,
            split: "a".into(),
            validation: Validation::default(),
            denoiser: None,
            descriptor: None,
            loss: None,
            denoiser_overrides: Overrides::default(),
            descriptor_overrides: Overrides::default(),
            batch: None,
            joint_epochs: JOINT_EPOCHS,
            denoise_weight: DENOISE_WEIGHT,
            teacher_epochs: TEACHER_EPOCHS,
            clean_start: None,
            seed: None,
            resume: false,
            threads: 0,
            device: Device::Cpu,
        }
    }
}

/// What a finished run reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunSummary {
    /// mAP on the test sequences (the final evaluation).
    pub map: MapScores,
    /// mAP on the validation sequences after the last descriptor epoch that
    /// scored them (`None` without validation sequences): what to choose on.
    pub validation: Option<MapScores>,
    /// Seconds spent training (all stages, evaluation during training included).
    pub training_seconds: f64,
}

/// `runs/YYYYmmdd-HHMMSS` (UTC) from the system clock: a fresh run folder name.
pub fn timestamped_out() -> PathBuf {
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

/// The default dataset ([`DEFAULT_DATASET`]), generated when it is not there yet.
pub fn default_dataset(observer: &SharedObserver) -> Result<PathBuf> {
    let root = PathBuf::from(DEFAULT_DATASET);
    if root.join("splits.json").is_file() {
        return Ok(root);
    }
    let cfg = SynthConfig::default();
    observer.event(&Event::Notice(&format!(
        "generating the default synthetic dataset into {} (first use) ...",
        root.display()
    )));
    let t = Instant::now();
    let s = generate(&cfg, &root)?;
    observer.event(&Event::Notice(&format!(
        "  {} sequences x {} patches in {:.1} s",
        s.sequences.len(),
        cfg.patches,
        t.elapsed().as_secs_f64()
    )));
    Ok(root)
}

/// Runs `cfg`'s recipe from start to report (or from where an interrupted
/// run stopped, with `cfg.resume`), on its own pool of `cfg.threads` workers.
pub fn run(cfg: &RunConfig, observer: SharedObserver) -> Result<RunSummary> {
    let t_start = Instant::now();
    cfg.device.check_available()?;
    let den_arch = match cfg.denoiser {
        None => cfg.recipe.denoiser(),
        Some(None) => None,
        Some(Some(arch)) if !arch.is_denoiser() => {
            return Err(Error::InvalidArgument(format!("--denoiser {arch}: expected unet, dncnn or none")));
        }
        Some(Some(arch)) => Some(arch),
    };
    if cfg.recipe == Recipe::Joint && cfg.descriptor_overrides.sos_weight.is_some() {
        return Err(Error::InvalidArgument(
            "--recipe joint trains without the SOS regulariser: drop --sos-weight".into(),
        ));
    }
    if cfg.recipe == Recipe::Joint && cfg.descriptor_overrides.distill_weight.is_some() {
        return Err(Error::InvalidArgument(
            "--recipe joint trains without a clean-patch teacher: drop --distill-weight".into(),
        ));
    }
    if cfg.recipe == Recipe::Joint && cfg.clean_start == Some(true) {
        return Err(Error::InvalidArgument(
            "--recipe joint trains without a clean-patch teacher: drop --clean-start".into(),
        ));
    }
    if cfg.recipe == Recipe::Joint && cfg.denoiser_overrides.perceptual_weight.is_some() {
        return Err(Error::InvalidArgument(
            "--recipe joint trains without a clean-patch teacher: drop --perceptual-weight".into(),
        ));
    }
    if den_arch.is_none() && cfg.denoiser_overrides.perceptual_weight.is_some() {
        return Err(Error::InvalidArgument(
            "--perceptual-weight trains a denoiser, and this run has none (--denoiser none or --recipe hardnet-noisy)"
                .into(),
        ));
    }
    if cfg.recipe == Recipe::Joint && den_arch.is_none() {
        return Err(Error::InvalidArgument("--recipe joint trains a denoiser: --denoiser none does not apply".into()));
    }
    let desc_arch = match cfg.descriptor {
        Some(a) if a.is_denoiser() => {
            return Err(Error::InvalidArgument(format!("descriptor {a}: expected a HardNet variant")));
        }
        Some(a) => a,
        None => cfg.recipe.descriptor(),
    };
    if cfg.out.join("results.md").exists() && !cfg.resume {
        return Err(Error::InvalidArgument(format!(
            "{} already holds a finished run; choose another --out",
            cfg.out.display()
        )));
    }
    let pool = crate::threads::pool(cfg.threads)?;
    pool.install(|| pipeline(cfg, den_arch, desc_arch, &observer, t_start))
}

/// A stage's overrides with the run-wide batch and seed filled in where the stage sets none.
fn stage_overrides(own: &Overrides, batch: Option<usize>, seed: Option<u64>) -> Overrides {
    Overrides { batch: own.batch.or(batch), seed: own.seed.or(seed), ..own.clone() }
}

/// The denoiser stage's settings: the preset's, the recipe's, then the overrides.
pub fn denoiser_config(cfg: &RunConfig, arch: Arch, train_patches: u64) -> Result<TrainConfig> {
    let mut c = denoiser_preset(cfg.preset, arch, &cfg.split, train_patches);
    cfg.recipe.apply_denoiser(&mut c);
    stage_overrides(&cfg.denoiser_overrides, cfg.batch, cfg.seed).apply(&mut c)?;
    Ok(c)
}

/// The descriptor stage's settings: the preset's, the recipe's, then the overrides.
pub fn descriptor_config(cfg: &RunConfig, arch: Arch, input: InputKind) -> Result<TrainConfig> {
    let mut c = descriptor_preset(cfg.preset, arch, &cfg.split, input);
    cfg.recipe.apply(&mut c, cfg.preset);
    c.arch = arch;
    if let Some(l) = cfg.loss {
        c.loss = l;
    }
    stage_overrides(&cfg.descriptor_overrides, cfg.batch, cfg.seed.map(|s| s.wrapping_add(1))).apply(&mut c)?;
    Ok(c)
}

fn pipeline(
    cfg: &RunConfig,
    den_arch: Option<Arch>,
    desc_arch: Arch,
    observer: &SharedObserver,
    t_start: Instant,
) -> Result<RunSummary> {
    let out = cfg.out.as_path();
    let info = |line: &str| observer.event(&Event::Info(line));
    let mut timings: Vec<(&str, f64)> = Vec::new();
    let t = Instant::now();
    let root = match &cfg.dataset {
        Some(d) => d.clone(),
        None => default_dataset(observer)?,
    };
    let ds = DatasetSplit::open_with(&root, &cfg.split, 0, cfg.validation)?;
    timings.push(("dataset", t.elapsed().as_secs_f64()));
    info(&format!(
        "dataset {}: {} training, {} validation and {} test sequences, {} training patches; recipe {}; run folder {}",
        root.display(),
        ds.train.len(),
        ds.val.len(),
        ds.test.len(),
        ds.train_patches(),
        cfg.recipe.name(),
        out.display()
    ));
    let opts = StageOptions { resume: cfg.resume, parallel: None, device: cfg.device, observer: observer.clone() };

    // Both stages' settings are checked before anything trains.
    let input = if den_arch.is_some() { InputKind::Denoised } else { InputKind::Noisy };
    let mut desc_cfg = descriptor_config(cfg, desc_arch, input)?;
    let den_stage_cfg = den_arch.map(|arch| denoiser_config(cfg, arch, ds.train_patches())).transpose()?;
    let perceptual = den_stage_cfg.as_ref().is_some_and(|c| c.perceptual_weight.is_some());
    // The distillation and perceptual terms run the teacher inside every step, on the CPU;
    // the clean start only trains it first and starts from it, on any device.
    let teacher_in_step = perceptual || desc_cfg.distill_weight.is_some();
    let clean_start = match cfg.clean_start {
        Some(on) => on,
        None if !cfg.recipe.clean_start() => false,
        None if desc_cfg.epochs < 2 => {
            observer.event(&Event::Notice(&format!(
                "one descriptor epoch: recipe {} trains it without its clean start (which needs at least 2)",
                cfg.recipe.name()
            )));
            false
        }
        None => true,
    };
    // The descriptor budget split between the teacher and the descriptor, once. (No
    // teacher runs with the joint recipe, so the split of its epochs below leaves these.)
    let split = if teacher_in_step || clean_start {
        Some(teacher_configs(&desc_cfg, cfg.teacher_epochs).map_err(|e| match cfg.clean_start {
            Some(true) => Error::InvalidArgument(format!("--clean-start true: {e}")),
            _ => e,
        })?)
    } else {
        None
    };
    if teacher_in_step && !cfg.device.is_cpu() {
        return Err(Error::InvalidArgument(
            "a clean-patch teacher trains on the CPU: drop --distill-weight and --perceptual-weight, or --device"
                .into(),
        ));
    }

    // With the perceptual term the teacher trains first (on clean patches, so
    // no denoiser is needed; its per-epoch validation scores the noisy ones):
    // the denoiser trains through it.
    let t = Instant::now();
    let (mut teacher, mut teacher_metrics) = (None, Vec::new());
    if let (true, Some((tcfg, _))) = (perceptual, &split) {
        let trained = train_descriptor(tcfg, &ds, None, &out.join("teacher"), &opts)?;
        (teacher, teacher_metrics) = (Some(trained.network), trained.metrics);
        timings.push(("teacher training (clean patches)", t.elapsed().as_secs_f64()));
    }

    let t = Instant::now();
    let mut den_cfg = None;
    let mut den = None;
    let mut den_metrics = Vec::new();
    if let Some(c) = den_stage_cfg {
        let dir = out.join("denoiser");
        let trained = match &teacher {
            Some(teacher) => train_denoiser_for_teacher(&c, &ds, teacher, &dir, &opts)?,
            None => train_denoiser(&c, &ds, &dir, &opts)?,
        };
        let mut net = trained.network;
        // Denoising the dataset for the descriptor stage runs where training did.
        net.set_device(cfg.device)?;
        timings.push(("denoiser training", t.elapsed().as_secs_f64()));
        (den_cfg, den, den_metrics) = (Some(c), Some(net), trained.metrics);
    }

    let mut t = Instant::now();
    let (separate, joint_epochs) = cfg.recipe.split_epochs(desc_cfg.epochs, cfg.joint_epochs);
    if joint_epochs > 0 {
        // One learning-rate schedule over the separate and the joint epochs, as if they were one run.
        desc_cfg.lr_span = Some((0, separate + joint_epochs));
    }
    desc_cfg.epochs = separate;
    let desc_dir = out.join("descriptor");
    let mut teacher_cfg = None;
    let trained = if let Some((tcfg, scfg)) = split {
        // The first epochs of the budget train a teacher on the clean patches
        // (already done for the perceptual term); the student starts from it
        // and, with a distillation weight, distills it on the denoised patches.
        // Trained here, the teacher's per-epoch validation, as the student's,
        // scores the denoised validation patches.
        let teacher = match teacher {
            Some(t) => t,
            None => {
                let teacher_dir = out.join("teacher");
                info(&format!(
                    "clean-patch teacher ({}): descriptor epochs 1-{} of {} on the clean patches; the rest continue from its weights",
                    teacher_dir.display(),
                    tcfg.epochs,
                    tcfg.epochs + scfg.epochs,
                ));
                // The two stages share one pack of denoised patches (it checks its fingerprint
                // when opened): a resumed run hands the student's back to the teacher first.
                let (pack, student_pack) = (teacher_dir.join("denoised.pack"), desc_dir.join("denoised.pack"));
                if cfg.resume && student_pack.is_file() && !pack.exists() {
                    std::fs::create_dir_all(&teacher_dir).map_err(|e| io_err(&teacher_dir, e))?;
                    std::fs::rename(&student_pack, &pack).map_err(|e| io_err(&pack, e))?;
                }
                let teacher = train_descriptor(&tcfg, &ds, den.as_ref(), &teacher_dir, &opts)?;
                timings.push(("teacher training (clean patches)", t.elapsed().as_secs_f64()));
                t = Instant::now();
                if pack.is_file() {
                    std::fs::create_dir_all(&desc_dir).map_err(|e| io_err(&desc_dir, e))?;
                    std::fs::rename(&pack, &student_pack).map_err(|e| io_err(&student_pack, e))?;
                }
                teacher_metrics = teacher.metrics;
                teacher.network
            }
        };
        (desc_cfg, teacher_cfg) = (scfg, Some(tcfg));
        train_descriptor_from_teacher(&desc_cfg, &ds, den.as_ref(), &teacher, &desc_dir, &opts)?
    } else {
        train_descriptor(&desc_cfg, &ds, den.as_ref(), &desc_dir, &opts)?
    };
    let (mut descriptor, mut desc_metrics) = (trained.network, trained.metrics);
    timings.push(("descriptor training (incl. per-epoch evaluation)", t.elapsed().as_secs_f64()));
    // The report counts the descriptor's epochs from the teacher's, which are its first.
    let teacher_epochs = teacher_metrics.len() as u64;
    for m in &mut desc_metrics {
        m.epoch += teacher_epochs;
    }
    desc_metrics.splice(0..0, teacher_metrics);

    // Evaluation input: the noisy test patches, through the denoiser (cached in a pack) when there is one.
    let mut joint_cfgs = None;
    let (eval_pack, eval_seqs): (Option<PackedDataset>, Vec<usize>) = match (&mut den, &den_cfg) {
        (Some(den), Some(ncfg)) if joint_epochs > 0 => {
            let t = Instant::now();
            let (jd, jn) = joint_configs(&desc_cfg, ncfg, joint_epochs, cfg.denoise_weight);
            let jdir = out.join("joint");
            let extra = |stage: &str| serde_json::json!({ "stage": stage, "dataset": root.display().to_string() });
            let run_dir = |dir: &str, stage: &str| -> Result<RunDir> {
                Ok(RunDir::create(&jdir.join(dir), extra(stage))?
                    .with_device(cfg.device)
                    .with_observer(observer.clone()))
            };
            let (den_run, desc_run) =
                (run_dir("denoiser", "joint denoiser")?, run_dir("descriptor", "joint descriptor")?);
            let src = JointData { data: &ds.data, train: &ds.train, val: &ds.val };
            let jcfg = JointConfig { descriptor: &jd, denoiser: &jn };
            let r = joint::train(&jcfg, &src, (den, &descriptor), &den_run, &desc_run, cfg.resume)?;
            let offset = desc_metrics.len() as u64;
            desc_metrics.extend(r.descriptor_metrics.into_iter().map(|mut m| {
                m.epoch += offset;
                m
            }));
            (*den, descriptor) = (r.denoiser, r.descriptor);
            den.set_device(cfg.device)?;
            timings.push(("joint training", t.elapsed().as_secs_f64()));
            let t = Instant::now();
            let pack = denoised_pack(&ds.data, &ds.test, den, &jdir.join("denoised.pack"))?;
            timings.push(("denoising the test sequences", t.elapsed().as_secs_f64()));
            joint_cfgs = Some((jd, jn));
            (Some(pack), (0..ds.test.len()).collect())
        }
        (Some(den), _) => {
            let t = Instant::now();
            let pack = denoised_pack(&ds.data, &ds.test, den, &desc_dir.join("denoised-test.pack"))?;
            timings.push(("denoising the test sequences", t.elapsed().as_secs_f64()));
            (Some(pack), (0..ds.test.len()).collect())
        }
        (None, _) => (None, ds.test.clone()),
    };
    let (eval_data, eval_version) = match &eval_pack {
        Some(p) => (p, Version::Clean),
        None => (&ds.data, Version::Noisy),
    };
    let training_seconds = t_start.elapsed().as_secs_f64();

    let t = Instant::now();
    let bench = Benchmark::prepare(&root, &cfg.split, None, TASKS_SEED)?;
    descriptor.set_device(cfg.device)?;
    let results = {
        let _busy = BusyGuard::new(&**observer, "final evaluation");
        bench.evaluate_network(eval_data, &descriptor, None, eval_version)
    }?;
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
        "recipe": cfg.recipe.name(),
        "preset": cfg.preset.name(),
        "denoiser": den_cfg,
        "teacher": teacher_cfg,
        "descriptor": desc_cfg,
        "joint": joint_cfgs.as_ref().map(|(d, n)| serde_json::json!({ "descriptor": d, "denoiser": n })),
        "validation": {
            "held_out": cfg.validation,
            "sequences": ds.val.iter().map(|&i| ds.data.sequences()[i].name.clone()).collect::<Vec<_>>(),
        },
        "evaluation": {
            "split": cfg.split,
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
    let val_names: Vec<&str> = ds.val.iter().map(|&i| ds.data.sequences()[i].name.as_str()).collect();
    let descriptor_note = match teacher_epochs {
        0 => String::new(),
        e => format!(
            "Epochs 1-{e} trained the clean-patch teacher on the clean patches (teacher/); the rest continued from its weights."
        ),
    };
    let validation = if val_names.is_empty() {
        String::new()
    } else {
        format!(
            "{} of the split's training sequences held out ({}): per-epoch validation losses and mAPs below are on them; training never saw them and the test sequences were not used before the final evaluation.",
            val_names.len(),
            val_names.join(", ")
        )
    };
    let doc = ResultsDoc {
        title: "nhpatch run",
        config_json: &config_json,
        final_map: Some(map),
        validation: &validation,
        eval_tables: &text,
        denoiser: &den_metrics,
        descriptor: &desc_metrics,
        descriptor_note: &descriptor_note,
        images: &images,
        timings: &timings[..timings.len() - 1],
    };
    write_results_md(&out.join("results.md"), &doc)?;
    info(&format!("\n{}", text.strip_suffix('\n').unwrap_or(&text)));
    info(&format!("report: {}", out.join("results.md").display()));
    info(&format!("total {:.0} s", t_start.elapsed().as_secs_f64()));
    let validation = desc_metrics.iter().rev().find_map(|e| e.map);
    Ok(RunSummary { map, validation, training_seconds })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::OptimizerConfig;

    #[test]
    fn the_denoiser_optimizer_is_the_recipes_then_the_flags() {
        let at = |recipe: Recipe, preset: Preset, arch: Arch| {
            let cfg = RunConfig { preset, ..RunConfig::new(recipe, "runs/x".into()) };
            denoiser_config(&cfg, arch, 1000).unwrap().optimizer
        };
        // The report's pipeline keeps the report's SGD at 1e-5 for the U-Net.
        assert!(matches!(at(Recipe::Seed, Preset::Seed, Arch::Unet), OptimizerConfig::Sgd { lr, .. } if lr == 1e-5));
        // Every HardNet-based recipe trains its denoiser with Adam at 1e-3, at every preset.
        for recipe in [Recipe::Hardnet, Recipe::HardnetDncnn, Recipe::Joint] {
            for preset in Preset::ALL {
                for arch in [Arch::Unet, Arch::Dncnn] {
                    let o = at(recipe, preset, arch);
                    assert!(matches!(o, OptimizerConfig::Adam { lr, .. } if lr == 1e-3), "{recipe} {preset:?}: {o:?}");
                }
            }
        }
        // A flag still wins.
        let mut cfg = RunConfig { preset: Preset::Seed, ..RunConfig::new(Recipe::Hardnet, "runs/x".into()) };
        cfg.denoiser_overrides.optimizer = Some(crate::optim::OptimizerKind::Sgd);
        cfg.denoiser_overrides.lr = Some(1e-5);
        let o = denoiser_config(&cfg, Arch::Unet, 1000).unwrap().optimizer;
        assert!(matches!(o, OptimizerConfig::Sgd { lr, .. } if lr == 1e-5), "{o:?}");
    }

    #[test]
    fn learning_rate_schedules_are_the_recipes_then_the_flags() {
        use crate::train::config::LrSchedule;
        let mut cfg = RunConfig { preset: Preset::Seed, ..RunConfig::new(Recipe::Hardnet, "runs/x".into()) };
        let original = Arch::HardNetOriginal;
        assert_eq!(denoiser_config(&cfg, Arch::Unet, 1000).unwrap().lr_schedule, LrSchedule::Constant);
        assert_eq!(descriptor_config(&cfg, original, InputKind::Denoised).unwrap().lr_schedule, LrSchedule::Linear);
        cfg.denoiser_overrides.lr_schedule = Some(LrSchedule::Linear);
        cfg.descriptor_overrides.lr_schedule = Some(LrSchedule::Constant);
        assert_eq!(denoiser_config(&cfg, Arch::Unet, 1000).unwrap().lr_schedule, LrSchedule::Linear);
        assert_eq!(descriptor_config(&cfg, original, InputKind::Denoised).unwrap().lr_schedule, LrSchedule::Constant);
    }

    #[test]
    fn descriptor_batch_sos_weight_and_augment_reach_the_descriptor_stage_only() {
        let mut cfg = RunConfig { preset: Preset::Seed, ..RunConfig::new(Recipe::Hardnet, "runs/x".into()) };
        let original = Arch::HardNetOriginal;
        let desc = descriptor_config(&cfg, original, InputKind::Denoised).unwrap();
        assert_eq!((desc.batch, desc.sos_weight, desc.augment), (128, None, false));
        cfg.batch = Some(64);
        cfg.descriptor_overrides.batch = Some(256);
        cfg.descriptor_overrides.sos_weight = Some(0.5);
        cfg.descriptor_overrides.augment = Some(true);
        let desc = descriptor_config(&cfg, original, InputKind::Denoised).unwrap();
        assert_eq!((desc.batch, desc.sos_weight, desc.augment), (256, Some(0.5), true));
        let den = denoiser_config(&cfg, Arch::Unet, 1000).unwrap();
        assert_eq!((den.batch, den.sos_weight), (64, None));
        // The seed recipe's triplet loss takes no regulariser.
        cfg.recipe = Recipe::Seed;
        let e = descriptor_config(&cfg, Arch::HardNetBaseline, InputKind::Denoised).unwrap_err().to_string();
        assert!(e.contains("hardnet loss only"), "{e}");
    }

    #[test]
    fn batch_sequences_reach_the_descriptor_stage_and_zero_is_refused() {
        let mut cfg = RunConfig { preset: Preset::Seed, ..RunConfig::new(Recipe::Hardnet, "runs/x".into()) };
        let original = Arch::HardNetOriginal;
        assert_eq!(descriptor_config(&cfg, original, InputKind::Denoised).unwrap().batch_sequences, None);
        cfg.descriptor_overrides.batch_sequences = Some(4);
        assert_eq!(descriptor_config(&cfg, original, InputKind::Denoised).unwrap().batch_sequences, Some(4));
        assert_eq!(denoiser_config(&cfg, Arch::Unet, 1000).unwrap().batch_sequences, None);
        cfg.descriptor_overrides.batch_sequences = Some(0);
        let e = descriptor_config(&cfg, original, InputKind::Denoised).unwrap_err().to_string();
        assert!(e.contains("--batch-sequences must be at least 1"), "{e}");
        // A denoiser stage given groups directly is refused.
        let mut den = denoiser_config(&RunConfig::new(Recipe::Hardnet, "runs/x".into()), Arch::Unet, 1000).unwrap();
        den.batch_sequences = Some(2);
        assert!(den.validate().unwrap_err().to_string().contains("descriptor batches"));
    }

    #[test]
    fn descriptor_dropout_sets_the_trained_model_and_bad_rates_are_refused() {
        let mut cfg = RunConfig { preset: Preset::Seed, ..RunConfig::new(Recipe::Hardnet, "runs/x".into()) };
        let original = Arch::HardNetOriginal;
        let desc = descriptor_config(&cfg, original, InputKind::Denoised).unwrap();
        let rate = crate::train::recipe::HARDNET_RECIPE_DROPOUT;
        assert_eq!((desc.dropout, desc.model().unwrap().dropout()), (Some(rate), rate));
        // The report's pipeline keeps the network's own rate.
        let seed = RunConfig { preset: Preset::Seed, ..RunConfig::new(Recipe::Seed, "runs/x".into()) };
        let desc = descriptor_config(&seed, Arch::HardNetBaseline, InputKind::Denoised).unwrap();
        assert_eq!((desc.dropout, desc.model().unwrap().dropout()), (None, crate::models::HARDNET_DROPOUT));
        cfg.descriptor_overrides.dropout = Some(0.1);
        let desc = descriptor_config(&cfg, original, InputKind::Denoised).unwrap();
        assert_eq!((desc.dropout, desc.model().unwrap().dropout()), (Some(0.1), 0.1));
        for bad in [1.0, -0.1, f32::NAN] {
            cfg.descriptor_overrides.dropout = Some(bad);
            let e = descriptor_config(&cfg, original, InputKind::Denoised).unwrap_err().to_string();
            assert!(e.contains("dropout rate must lie in [0, 1)"), "{bad}: {e}");
        }
        let mut den = denoiser_config(&RunConfig::new(Recipe::Hardnet, "runs/x".into()), Arch::Unet, 1000).unwrap();
        den.dropout = Some(0.0);
        assert!(den.validate().unwrap_err().to_string().contains("applies to HardNet"));
    }
}
