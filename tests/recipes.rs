//! Training recipes through the library (`nhpatch::train::pipeline`, what
//! `nhpatch run --recipe` calls): each one runs end to end
//! on a tiny synthetic dataset and records what it did in the run folder;
//! joint training moves the denoiser through the descriptor loss alone, and
//! is reproducible across runs and thread counts; a run killed with SIGKILL
//! in its descriptor or joint stage resumes to the uninterrupted run's
//! weights and scores; the command line runs exactly what the library runs;
//! distillation trains its clean-patch teacher first and is reproducible;
//! the hardnet recipes' clean start is distillation at weight 0 without the
//! teacher's pass, needs two descriptor epochs and can be turned off;
//! bad combinations fail cleanly.

mod common;

use common::cli::{dir, fails, kill_in_second_epoch, ok, s};
use nhpatch::train::pipeline::{self, RunConfig, RunSummary};
use nhpatch::train::{Event, Overrides, Recipe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

fn dataset(d: &Path) -> PathBuf {
    common::cli::synth_dataset(d, 5)
}

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// A run of `recipe` small enough for a test: 1 denoiser epoch of 64
/// patches, 2 descriptor epochs of 32 tuples in batches of 16.
fn small_config(data: &Path, out: &Path, recipe: Recipe, threads: usize) -> RunConfig {
    let mut c = RunConfig::new(recipe, out.to_path_buf());
    c.dataset = Some(data.to_path_buf());
    c.denoiser_overrides = Overrides { epochs: Some(1), items: Some(64), ..Overrides::default() };
    c.descriptor_overrides = Overrides { epochs: Some(2), items: Some(32), ..Overrides::default() };
    (c.batch, c.seed, c.threads) = (Some(16), Some(4), threads);
    c
}

/// The same run through the command line.
fn small_args<'a>(data: &'a Path, out: &'a Path, recipe: &'a str, threads: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--dataset",
        s(data),
        "--out",
        s(out),
        "--recipe",
        recipe,
        "--denoiser-epochs",
        "1",
        "--denoiser-items",
        "64",
        "--descriptor-epochs",
        "2",
        "--triplets",
        "32",
        "--batch",
        "16",
        "--seed",
        "4",
        "--threads",
        threads,
    ]
}

/// Runs `cfg` through the library; returns its summary and the report and notice lines it sent to the observer.
fn run_lib(cfg: &RunConfig) -> nhpatch::Result<(RunSummary, Vec<String>)> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let log = lines.clone();
    let observer = move |e: &Event<'_>| {
        if let Event::Info(line) | Event::Notice(line) = e {
            log.lock().unwrap().push(line.to_string());
        }
    };
    let summary = pipeline::run(cfg, Arc::new(observer))?;
    let lines = lines.lock().unwrap().clone();
    Ok((summary, lines))
}

fn small_run(data: &Path, out: &Path, recipe: Recipe, threads: usize) -> Vec<String> {
    run_lib(&small_config(data, out, recipe, threads)).unwrap_or_else(|e| panic!("{recipe}: {e}")).1
}

#[test]
fn every_recipe_runs_and_records_its_settings() {
    let d = dir("recipes");
    let data = dataset(&d);
    for r in Recipe::ALL {
        let (recipe, clean_start) = (r.name(), r.clean_start());
        let out = d.join(recipe);
        let lines = small_run(&data, &out, r, 2);
        assert!(lines.iter().any(|l| l.contains(&format!("recipe {recipe}"))), "{lines:?}");
        let r = json(&out.join("results.json"));
        for k in ["verification_map", "matching_map", "retrieval_map"] {
            let v = r[k].as_f64().unwrap();
            assert!(v > 0.0 && v <= 1.0, "{recipe} {k} {v}");
        }
        let report = std::fs::read_to_string(out.join("results.md")).unwrap();
        assert!(report.contains(&format!("\"recipe\": \"{recipe}\"")), "{recipe}: recipe not in the report");
        let desc = json(&out.join("descriptor/config.json"));
        let hardnet = recipe != "seed";
        assert_eq!(desc["loss"], if hardnet { "hardnet" } else { "triplet" }, "{recipe}");
        assert_eq!(desc["arch"], if hardnet { "hardnet-original" } else { "hardnet-baseline" }, "{recipe}");
        // No recipe flips or rotates its training tuples (README, "Recipes on photographs").
        assert_eq!(desc["augment"], false, "{recipe}");
        assert_eq!(desc["lr_schedule"], if hardnet { "linear" } else { "constant" }, "{recipe}");
        if hardnet {
            let opt = &desc["optimizer"];
            assert_eq!((opt["kind"].as_str(), opt["momentum"].as_f64()), (Some("sgd"), Some(0.9)), "{recipe}");
            assert_eq!(opt["weight_decay"].as_f64(), Some(1e-4), "{recipe}");
        }
        let den = out.join("denoiser/config.json");
        match recipe {
            "hardnet-noisy" => assert!(!den.exists(), "hardnet-noisy trained a denoiser"),
            "hardnet-dncnn" => assert_eq!(json(&den)["arch"], "dncnn"),
            _ => assert_eq!(json(&den)["arch"], "unet"),
        }
        // The joint recipe spends the last of the 2 descriptor epochs end to end.
        let joint = out.join("joint/descriptor/config.json");
        if recipe == "joint" {
            assert_eq!(desc["epochs"], 1);
            let j = json(&joint);
            assert_eq!((j["epochs"].as_u64(), j["denoise_weight"].as_f64()), (Some(1), Some(0.1)));
            // One learning-rate schedule over both stages: epoch 1 of 2, then epoch 2 of 2.
            assert_eq!(
                (desc["lr_span"].clone(), j["lr_span"].clone()),
                (serde_json::json!([0, 2]), serde_json::json!([1, 2]))
            );
            assert!(out.join("joint/denoiser/model.safetensors").is_file());
        } else {
            assert!(!joint.exists(), "{recipe} ran a joint stage");
        }
        // The hardnet recipes' clean start: the first of the 2 descriptor epochs on the clean
        // patches, on the first half of one schedule; the descriptor continues from it.
        let teacher = out.join("teacher/config.json");
        if clean_start {
            let t = json(&teacher);
            assert_eq!((t["input"].as_str(), t["epochs"].as_u64()), (Some("clean"), Some(1)), "{recipe}");
            assert_eq!(desc["epochs"], 1, "{recipe}");
            assert_eq!(
                (t["lr_span"].clone(), desc["lr_span"].clone()),
                (serde_json::json!([0, 2]), serde_json::json!([1, 2]))
            );
            assert!(report.contains("\"teacher\": {"), "{recipe}: the teacher's settings are not in the report");
            // The report's descriptor epochs count the teacher's first.
            assert!(report.contains("Epochs 1-1 trained the clean-patch teacher"), "{recipe}");
            assert!(report.contains("\n| 1 | ") && report.contains("\n| 2 | "), "{recipe}: {report}");
        } else {
            assert!(!teacher.exists(), "{recipe} trained a teacher");
            assert_eq!(desc["epochs"], if recipe == "joint" { 1 } else { 2 }, "{recipe}");
        }
        assert_eq!(clean_start, !matches!(recipe, "seed" | "joint"), "{recipe}");
    }
}

#[test]
fn joint_training_reaches_the_denoiser_and_is_reproducible() {
    let d = dir("joint");
    let data = dataset(&d);
    let bytes = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    // With no denoising loss, only the descriptor loss can move the denoiser.
    let zero = d.join("zero");
    let mut cfg = small_config(&data, &zero, Recipe::Joint, 2);
    cfg.denoise_weight = 0.0;
    run_lib(&cfg).unwrap();
    assert_ne!(bytes(zero.join("denoiser/model.safetensors")), bytes(zero.join("joint/denoiser/model.safetensors")));
    // Same seed, same results: twice with 2 threads, once with 1.
    let runs: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = [("a", 2), ("b", 2), ("one", 1)]
        .iter()
        .map(|&(name, threads)| {
            let out = d.join(name);
            small_run(&data, &out, Recipe::Joint, threads);
            (
                bytes(out.join("joint/denoiser/model.safetensors")),
                bytes(out.join("joint/descriptor/model.safetensors")),
                // results.json also holds evaluation timings: compare everything else.
                {
                    let mut r = json(&out.join("results.json"));
                    r.as_object_mut().unwrap().remove("timings");
                    r.to_string().into_bytes()
                },
            )
        })
        .collect();
    assert!(runs[0] == runs[1], "two joint runs with the same seed differ");
    assert!(runs[0] == runs[2], "joint training differs between 1 and 2 threads");
    // Resuming a finished run redoes nothing and reports the same scores.
    let a = d.join("a");
    let before = std::fs::read(a.join("joint/descriptor/model.safetensors")).unwrap();
    let mut resume = small_config(&data, &a, Recipe::Joint, 2);
    resume.resume = true;
    run_lib(&resume).unwrap();
    assert_eq!(std::fs::read(a.join("joint/descriptor/model.safetensors")).unwrap(), before);
    // Joint checkpoints of different epochs (a run stopped between writing them) are refused.
    std::fs::remove_file(a.join("joint/descriptor/checkpoint.safetensors")).unwrap();
    let e = run_lib(&resume).expect_err("mismatched joint checkpoints were accepted").to_string();
    assert!(e.contains("different epochs") && e.contains("joint"), "{e}");
    // The command line runs what the library runs: same flags, same bytes.
    let cli = d.join("cli");
    ok(&small_args(&data, &cli, "joint", "2"));
    let same = |p: &str| bytes(cli.join(p)) == bytes(a.join(p));
    assert!(same("denoiser/model.safetensors") && same("descriptor/model.safetensors"), "CLI and library differ");
    assert!(same("joint/denoiser/model.safetensors"), "CLI and library differ in the joint stage");
}

#[test]
fn distillation_trains_a_clean_teacher_first_and_is_reproducible() {
    let d = dir("distill");
    let data = dataset(&d);
    let bytes = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let distilled = |name: &str, weight: f32, threads: usize| {
        let out = d.join(name);
        let mut cfg = small_config(&data, &out, Recipe::Hardnet, threads);
        cfg.descriptor_overrides.distill_weight = Some(weight);
        run_lib(&cfg).unwrap_or_else(|e| panic!("{name}: {e}"));
        out
    };
    let a = distilled("a", 1.0, 2);
    // The first of the 2 descriptor epochs trains the teacher on clean patches, on the first half of one schedule.
    let (tc, sc) = (json(&a.join("teacher/config.json")), json(&a.join("descriptor/config.json")));
    assert_eq!((tc["input"].as_str(), tc["epochs"].as_u64(), tc.get("distill_weight")), (Some("clean"), Some(1), None));
    assert_eq!((sc["input"].as_str(), sc["epochs"].as_u64()), (Some("denoised"), Some(1)));
    assert_eq!(sc["distill_weight"].as_f64(), Some(1.0));
    assert_eq!((tc["lr_span"].clone(), sc["lr_span"].clone()), (serde_json::json!([0, 2]), serde_json::json!([1, 2])));
    assert_ne!(tc["seed"], sc["seed"], "the student would repeat the teacher's batches");
    // The teacher validates on the denoised validation patches, and leaves them to the student.
    assert!(a.join("descriptor/denoised.pack").is_file() && !a.join("teacher/denoised.pack").exists());
    let teacher_val = std::fs::read_to_string(a.join("teacher/metrics.jsonl")).unwrap();
    assert!(teacher_val.contains("\"map\""), "{teacher_val}");
    // Same seed, same bytes, for any thread count; the term moves the student.
    let one = distilled("one", 1.0, 1);
    let zero = distilled("zero", 0.0, 2);
    let student = |out: &Path| bytes(out.join("descriptor/model.safetensors"));
    assert_eq!(student(&a), student(&one), "distillation differs between 1 and 2 threads");
    assert_eq!(bytes(a.join("teacher/model.safetensors")), bytes(zero.join("teacher/model.safetensors")));
    assert_ne!(student(&a), student(&zero), "the distillation term did not change the student");
    // The hardnet recipe's clean start is weight 0 without the teacher's pass over each batch: the same bytes.
    let start = d.join("start");
    run_lib(&small_config(&data, &start, Recipe::Hardnet, 2)).unwrap();
    assert!(json(&start.join("descriptor/config.json")).get("distill_weight").is_none());
    assert_eq!(bytes(start.join("teacher/model.safetensors")), bytes(zero.join("teacher/model.safetensors")));
    assert_eq!(student(&start), student(&zero), "the clean start is not distillation at weight 0");
    // Resuming a finished run redoes nothing.
    let mut resume = small_config(&data, &a, Recipe::Hardnet, 2);
    (resume.descriptor_overrides.distill_weight, resume.resume) = (Some(1.0), true);
    run_lib(&resume).unwrap();
    assert_eq!(student(&a), student(&one));
    // The command line runs what the library runs.
    let cli = d.join("cli");
    ok(&[&small_args(&data, &cli, "hardnet", "2")[..], &["--distill-weight", "1"]].concat());
    assert_eq!(student(&cli), student(&a), "CLI and library differ");
    // Refusals: a budget of one descriptor epoch, the triplet loss, the joint recipe, a negative weight.
    let bad = d.join("bad");
    let base = ["run", "--dataset", s(&data), "--out", s(&bad)];
    let e = fails(&[&base[..], &["--distill-weight", "1", "--descriptor-epochs", "1"]].concat());
    assert!(e.contains("at least 2"), "{e}");
    let e = fails(&[&base[..], &["--recipe", "seed", "--distill-weight", "1"]].concat());
    assert!(e.contains("hardnet loss only"), "{e}");
    let e = fails(&[&base[..], &["--recipe", "joint", "--distill-weight", "1"]].concat());
    assert!(e.contains("--distill-weight"), "{e}");
    let e = fails(&[&base[..], &["--distill-weight=-1"]].concat());
    assert!(e.contains("distillation weight"), "{e}");
}

#[test]
fn perceptual_term_trains_the_denoiser_through_a_clean_teacher() {
    let d = dir("perceptual");
    let data = dataset(&d);
    let bytes = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let run = |name: &str, threads: usize, set: &dyn Fn(&mut RunConfig)| {
        let out = d.join(name);
        let mut cfg = small_config(&data, &out, Recipe::Hardnet, threads);
        set(&mut cfg);
        run_lib(&cfg).unwrap_or_else(|e| panic!("{name}: {e}"));
        out
    };
    let a = run("a", 2, &|c| c.denoiser_overrides.perceptual_weight = Some(2.0));
    let (tc, nc, sc) = (
        json(&a.join("teacher/config.json")),
        json(&a.join("denoiser/config.json")),
        json(&a.join("descriptor/config.json")),
    );
    assert_eq!((tc["input"].as_str(), tc["epochs"].as_u64()), (Some("clean"), Some(1)));
    assert_eq!(nc["perceptual_weight"].as_f64(), Some(2.0));
    assert_eq!(
        (sc["input"].as_str(), sc["epochs"].as_u64(), sc.get("distill_weight")),
        (Some("denoised"), Some(1), None)
    );
    // Same seed, same bytes, for any thread count.
    let one = run("one", 1, &|c| c.denoiser_overrides.perceptual_weight = Some(2.0));
    for m in ["teacher", "denoiser", "descriptor"] {
        let f = format!("{m}/model.safetensors");
        assert_eq!(bytes(a.join(&f)), bytes(one.join(&f)), "{m} differs between 1 and 2 threads");
    }
    // The teacher does not depend on the denoiser: distillation (weight 0) trains the same one after it.
    // The term moves the denoiser; at weight 0 it is the plain denoiser.
    let zero = run("zero", 2, &|c| c.descriptor_overrides.distill_weight = Some(0.0));
    assert_eq!(bytes(a.join("teacher/model.safetensors")), bytes(zero.join("teacher/model.safetensors")));
    assert_ne!(bytes(a.join("denoiser/model.safetensors")), bytes(zero.join("denoiser/model.safetensors")));
    let w0 = run("w0", 2, &|c| c.denoiser_overrides.perceptual_weight = Some(0.0));
    assert_eq!(bytes(w0.join("denoiser/model.safetensors")), bytes(zero.join("denoiser/model.safetensors")));
    // Resuming a finished run redoes nothing; the command line runs what the library runs.
    let mut resume = small_config(&data, &a, Recipe::Hardnet, 2);
    (resume.denoiser_overrides.perceptual_weight, resume.resume) = (Some(2.0), true);
    run_lib(&resume).unwrap();
    assert_eq!(bytes(a.join("descriptor/model.safetensors")), bytes(one.join("descriptor/model.safetensors")));
    let cli = d.join("cli");
    ok(&[&small_args(&data, &cli, "hardnet", "2")[..], &["--perceptual-weight", "2"]].concat());
    assert_eq!(bytes(cli.join("denoiser/model.safetensors")), bytes(a.join("denoiser/model.safetensors")));
    // Refusals: one descriptor epoch, no denoiser, the joint recipe, a negative weight.
    let bad = d.join("bad");
    let base = ["run", "--dataset", s(&data), "--out", s(&bad)];
    let e = fails(&[&base[..], &["--perceptual-weight", "1", "--descriptor-epochs", "1"]].concat());
    assert!(e.contains("at least 2"), "{e}");
    let e = fails(&[&base[..], &["--perceptual-weight", "1", "--denoiser", "none"]].concat());
    assert!(e.contains("--perceptual-weight"), "{e}");
    let e = fails(&[&base[..], &["--recipe", "joint", "--perceptual-weight", "1"]].concat());
    assert!(e.contains("--perceptual-weight"), "{e}");
    let e = fails(&[&base[..], &["--perceptual-weight=-1"]].concat());
    assert!(e.contains("perceptual weight"), "{e}");
}

#[test]
fn the_clean_start_needs_two_descriptor_epochs_and_can_be_turned_off() {
    let d = dir("clean-start");
    let data = dataset(&d);
    let bytes = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let run = |name: &str, set: &dyn Fn(&mut RunConfig)| {
        let out = d.join(name);
        let mut cfg = small_config(&data, &out, Recipe::Hardnet, 2);
        set(&mut cfg);
        run_lib(&cfg).unwrap_or_else(|e| panic!("{name}: {e}"));
        out
    };
    // Turned off: both descriptor epochs on the denoised patches, no teacher.
    let off = run("off", &|c| c.clean_start = Some(false));
    assert!(!off.join("teacher").exists());
    assert_eq!(json(&off.join("descriptor/config.json"))["epochs"], 2);
    let cli = d.join("cli");
    ok(&[&small_args(&data, &cli, "hardnet", "2")[..], &["--clean-start", "false"]].concat());
    let student = |out: &Path| bytes(out.join("descriptor/model.safetensors"));
    assert_eq!(student(&cli), student(&off), "CLI and library differ");
    // One descriptor epoch leaves no room for it: the recipe's default trains without, a request fails.
    let one = run("one", &|c| c.descriptor_overrides.epochs = Some(1));
    assert!(!one.join("teacher").exists());
    assert_eq!(json(&one.join("descriptor/config.json"))["epochs"], 1);
    let bad = d.join("bad");
    let base = ["run", "--dataset", s(&data), "--out", s(&bad)];
    let e = fails(&[&base[..], &["--clean-start", "true", "--descriptor-epochs", "1"]].concat());
    assert!(e.contains("--clean-start") && e.contains("at least 2"), "{e}");
    let e = fails(&[&base[..], &["--recipe", "joint", "--clean-start", "true"]].concat());
    assert!(e.contains("--clean-start"), "{e}");
    let e = fails(&[&base[..], &["--clean-start", "maybe"]].concat());
    assert!(e.contains("maybe"), "{e}");
    // The teacher takes 1 to epochs - 1 of the descriptor epochs, checked before anything trains.
    for t in ["0", "2"] {
        let e = fails(&[&base[..], &["--descriptor-epochs", "2", "--teacher-epochs", t]].concat());
        assert!(e.contains(&format!("--teacher-epochs {t}")) && e.contains("1 to 1 of the 2"), "{e}");
    }
    assert!(!bad.exists(), "a refused run wrote its folder");
}

/// The weights of every model a finished run wrote, and its `results.json`
/// without the timings.
fn outcome(out: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<Vec<u8>> = ["denoiser", "teacher", "descriptor", "joint/denoiser", "joint/descriptor"]
        .iter()
        .map(|m| out.join(m).join("model.safetensors"))
        .filter(|p| p.exists())
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let mut r = json(&out.join("results.json"));
    r.as_object_mut().unwrap().remove("timings");
    files.push(r.to_string().into_bytes());
    files
}

/// `small_config` with 4 descriptor epochs of 128 tuples, the joint recipe's last 3 trained end to end.
fn long_config(data: &Path, out: &Path, recipe: Recipe) -> RunConfig {
    let mut c = small_config(data, out, recipe, 2);
    (c.descriptor_overrides.epochs, c.descriptor_overrides.items, c.joint_epochs) = (Some(4), Some(128), 3);
    c
}

/// The same run through the command line (a process the test can kill).
fn long_args<'a>(data: &'a Path, out: &'a Path, recipe: &'a str) -> Vec<&'a str> {
    let mut a = small_args(data, out, recipe, "2");
    for (flag, value) in [("--descriptor-epochs", "4"), ("--triplets", "128")] {
        let at = a.iter().position(|&x| x == flag).unwrap();
        a[at + 1] = value;
    }
    a.extend(["--joint-epochs", "3"]);
    a
}

#[test]
fn a_run_killed_in_its_descriptor_or_joint_stage_resumes_to_the_same_results() {
    let d = dir("recipes-kill");
    let data = dataset(&d);
    // (recipe, the stage folder the kill lands in, that stage's epochs): 4
    // descriptor epochs in all, of which the hardnet recipe trains the first on
    // clean patches and the joint recipe the last 3 end to end.
    for (r, stage, epochs) in [(Recipe::Hardnet, "descriptor", 3), (Recipe::Joint, "joint/descriptor", 3)] {
        let recipe = r.name();
        let (full, cut) = (d.join(format!("{recipe}-full")), d.join(format!("{recipe}-cut")));
        run_lib(&long_config(&data, &full, r)).unwrap();
        let done = kill_in_second_epoch(&long_args(&data, &cut, recipe), &cut.join(stage));
        assert!(done < epochs, "{recipe}: the {stage} stage finished before the kill");
        assert!(!cut.join("results.json").exists(), "{recipe}: the killed run wrote results");
        let mut resume = long_config(&data, &cut, r);
        resume.resume = true;
        let lines = run_lib(&resume).unwrap().1;
        if r == Recipe::Hardnet {
            // The teacher, finished, and the student share the pack of denoised patches: nothing is denoised again.
            assert!(!lines.iter().any(|l| l.contains("denoising the dataset's patches")), "{lines:?}");
        }
        assert!(outcome(&full) == outcome(&cut), "{recipe}: the resumed run differs from the uninterrupted one");
    }
}

#[test]
fn bad_recipe_combinations_fail_cleanly() {
    let d = dir("recipes-bad");
    let data = dataset(&d);
    let out = d.join("run");
    let lib_err = |f: &dyn Fn(&mut RunConfig)| {
        let mut c = RunConfig::new(Recipe::Hardnet, out.clone());
        c.dataset = Some(data.clone());
        f(&mut c);
        run_lib(&c).expect_err("a bad run configuration was accepted").to_string()
    };
    let e = lib_err(&|c| (c.recipe, c.denoiser) = (Recipe::Joint, Some(None)));
    assert!(e.contains("--denoiser none"), "{e}");
    let e = lib_err(&|c| c.denoiser = Some(Some(nhpatch::models::Arch::HardNetBaseline)));
    assert!(e.contains("unet, dncnn or none"), "{e}");
    let e = lib_err(&|c| c.descriptor = Some(nhpatch::models::Arch::Unet));
    assert!(e.contains("HardNet variant"), "{e}");
    // HardNet batches need as many distinct classes as the batch: the tiny set has fewer than 128.
    let e = lib_err(&|c| c.recipe = Recipe::HardnetNoisy);
    assert!(e.contains("a batch of 128"), "{e}");
    let cmp = nhpatch::train::compare::CompareConfig {
        dataset: Some(data.clone()),
        out: out.clone(),
        recipes: vec![Recipe::Seed],
        seeds: vec![],
        threads: 1,
    };
    let e = nhpatch::train::compare::compare(&cmp, nhpatch::train::progress::quiet()).err().unwrap().to_string();
    assert!(e.contains("--seeds"), "{e}");
    // The command line's own refusals: names it cannot parse, the same errors as the library.
    let e = fails(&["run", "--dataset", s(&data), "--out", s(&out), "--recipe", "frobnicate"]);
    assert!(e.contains("frobnicate"), "{e}");
    let e = fails(&["run", "--dataset", s(&data), "--out", s(&out), "--recipe", "joint", "--denoiser", "none"]);
    assert!(e.contains("--denoiser none"), "{e}");
    let e = fails(&["run", "--dataset", s(&data), "--out", s(&out), "--denoiser", "hardnet"]);
    assert!(e.contains("unet, dncnn or none"), "{e}");
    let e = fails(&["compare", "--dataset", s(&data), "--out", s(&out), "--seeds", ""]);
    assert!(!e.is_empty());
    // SOSNet's regulariser: with the hardnet loss only, not in the joint stage, a weight >= 0.
    let e = fails(&["run", "--dataset", s(&data), "--out", s(&out), "--recipe", "seed", "--sos-weight", "1"]);
    assert!(e.contains("SOS regulariser applies to the hardnet loss only"), "{e}");
    let e = fails(&["run", "--dataset", s(&data), "--out", s(&out), "--recipe", "joint", "--sos-weight", "1"]);
    assert!(e.contains("--sos-weight"), "{e}");
    let e = fails(&["run", "--dataset", s(&data), "--out", s(&out), "--sos-weight=-1"]);
    assert!(e.contains("SOS regulariser weight"), "{e}");
    let e = fails(&["train-denoiser", "--dataset", s(&data), "--out", s(&out), "--sos-weight", "1"]);
    assert!(e.contains("hardnet loss only"), "{e}");
    // Distributed training needs the mpi feature; a zero timeout is refused either way.
    let train = ["train-descriptor", "--dataset", s(&data), "--out", s(&out), "--distributed"];
    let e = fails(&[&train[..], &["--comm-timeout", "0"]].concat());
    assert!(e.contains("--comm-timeout"), "{e}");
    if !cfg!(feature = "mpi") {
        let e = fails(&train);
        assert!(e.contains("built without MPI") && e.contains("--features mpi"), "{e}");
    }
}
