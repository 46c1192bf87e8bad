//! Training end to end through the command line: a tiny synthetic dataset,
//! a denoiser that lowers the validation loss, a descriptor that beats an
//! untrained one on all three tasks, a resume after a real process kill (for
//! the denoiser and both descriptor losses) that ends with the same weights
//! as an uninterrupted run, the non-finite-loss
//! stop, and bad invocations.

mod common;

use common::cli::{dir, fails, kill_in_second_epoch, maps, ok, s};
use std::path::{Path, PathBuf};

/// A small synthetic dataset shared by the tests of this file.
fn dataset(d: &Path) -> PathBuf {
    common::cli::synth_dataset(d, 3)
}

fn metrics(run_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn training_improves_the_denoiser_and_the_descriptor() {
    let d = dir("e2e");
    let data = dataset(&d);
    let den = d.join("den");
    ok(&[
        "train-denoiser",
        "--dataset",
        s(&data),
        "--out",
        s(&den),
        "--preset",
        "demo",
        "--epochs",
        "3",
        "--items",
        "800",
    ]);
    let m = metrics(&den);
    assert_eq!(m.len(), 3);
    let val: Vec<f64> = m.iter().map(|e| e["val_loss"].as_f64().unwrap()).collect();
    assert!(val[2] < val[1] && val[1] < val[0] && val[2] < 0.7 * val[0], "validation MAE by epoch {val:?}");

    let desc = d.join("desc");
    // Noisy input, as the report scores descriptors.
    let args = ["train-descriptor", "--dataset", s(&data), "--out", s(&desc), "--preset", "demo", "--input", "noisy"];
    ok(&[&args[..], &["--epochs", "4", "--items", "900", "--no-epoch-eval", "--val-sequences", "0"]].concat());
    let untrained = d.join("untrained.safetensors");
    ok(&["init", "--model", "hardnet", "--variant", "baseline", "--seed", "2", "--out", s(&untrained)]);
    let (before, after) = (d.join("before.json"), d.join("after.json"));
    let eval = |w: &Path, json: &Path| {
        ok(&["eval", "--dataset", s(&data), "--weights", s(w), "--input", "noisy", "--json", s(json)]);
    };
    eval(&untrained, &before);
    eval(&desc.join("model.safetensors"), &after);
    let (b, a) = (maps(&before), maps(&after));
    for (task, (x, y)) in ["verification", "matching", "retrieval"].iter().zip(b.iter().zip(&a)) {
        assert!(y > x, "{task}: trained {y} does not beat untrained {x}");
    }
}

/// Trains `args` twice: straight through, and killed with SIGKILL in its
/// second epoch then resumed; both must write the same weights and all
/// `epochs` metric lines.
fn killed_and_resumed_matches_straight(d: &Path, name: &str, args: &[&str], epochs: usize) {
    let (full, cut) = (d.join(format!("{name}-full")), d.join(format!("{name}-cut")));
    ok(&[args, &["--out", s(&full)]].concat());
    let done = kill_in_second_epoch(&[args, &["--out", s(&cut)]].concat(), &cut);
    assert!(done < epochs, "{name}: the run finished before the kill ({done} epochs)");
    assert!(!cut.join("model.safetensors").exists(), "{name}: killed run wrote final weights");
    // Without --resume an existing checkpoint is refused rather than overwritten.
    assert!(fails(&[args, &["--out", s(&cut)]].concat()).contains("--resume"));
    ok(&[args, &["--out", s(&cut), "--resume"]].concat());
    let a = std::fs::read(full.join("model.safetensors")).unwrap();
    let b = std::fs::read(cut.join("model.safetensors")).unwrap();
    assert!(a == b, "{name}: resumed weights differ from the uninterrupted run's");
    assert_eq!(metrics(&cut).len(), epochs, "{name}");
}

#[test]
fn a_killed_run_resumes_to_the_same_weights() {
    let d = dir("resume");
    let data = dataset(&d);
    let common = ["--dataset", s(&data), "--preset", "demo", "--epochs", "4", "--threads", "2", "--seed", "6"];
    let denoiser = [&["train-denoiser", "--items", "200"][..], &common].concat();
    killed_and_resumed_matches_straight(&d, "denoiser", &denoiser, 4);
    // Both descriptor losses: the triplet sampler and HardNet's pair sampler with in-batch mining.
    for (loss, batch) in [("triplet", "16"), ("hardnet", "32")] {
        let descriptor = [
            &["train-descriptor", "--loss", loss, "--batch", batch, "--items", "128", "--input", "noisy"][..],
            &["--no-epoch-eval", "--val-sequences", "0"],
            &common[..],
        ]
        .concat();
        killed_and_resumed_matches_straight(&d, loss, &descriptor, 4);
    }
}

#[test]
fn dropout_and_sequence_groups_reach_the_descriptor_trainer() {
    let d = dir("knobs");
    let data = dataset(&d);
    let args = [
        "train-descriptor",
        "--dataset",
        s(&data),
        "--preset",
        "demo",
        "--epochs",
        "1",
        "--threads",
        "2",
        "--loss",
        "hardnet",
        "--variant",
        "original",
        "--batch",
        "16",
        "--items",
        "64",
        "--input",
        "noisy",
        "--no-epoch-eval",
        "--val-sequences",
        "0",
        "--seed",
        "3",
    ];
    let train = |name: &str, extra: &[&str]| {
        let out = d.join(name);
        ok(&[&args[..], extra, &["--out", s(&out)]].concat());
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        (std::fs::read(out.join("model.safetensors")).unwrap(), config)
    };
    let (plain, pc) = train("plain", &[]);
    assert!(pc.get("dropout").is_none() && pc.get("batch_sequences").is_none(), "{pc}");
    assert_eq!(train("again", &[]).0, plain, "same seed, same weights");
    let (no_drop, nc) = train("nodrop", &["--dropout", "0"]);
    assert_eq!(nc["dropout"], 0.0);
    assert!(no_drop != plain, "--dropout 0 trained the same weights as the default rate");
    let (grouped, gc) = train("grouped", &["--batch-sequences", "1"]);
    assert_eq!(gc["batch_sequences"], 1);
    assert!(grouped != plain, "--batch-sequences 1 trained the same weights as all sequences");
    let e = fails(&[&args[..], &["--dropout", "1", "--out", s(&d.join("bad"))]].concat());
    assert!(e.contains("dropout rate must lie in [0, 1)"), "{e}");
    let e = fails(&[&args[..], &["--batch-sequences", "0", "--out", s(&d.join("bad"))]].concat());
    assert!(e.contains("--batch-sequences must be at least 1"), "{e}");
}

#[test]
fn a_non_finite_loss_stops_training_with_a_clear_message() {
    let d = dir("nan");
    let data = dataset(&d);
    let out = d.join("run");
    let args = ["train-denoiser", "--dataset", s(&data), "--out", s(&out), "--preset", "demo", "--items", "200"];
    let e = fails(&[&args[..], &["--epochs", "3", "--optimizer", "sgd", "--lr", "1e30"]].concat());
    assert!(e.contains("training stopped: the loss became") && e.contains("step"), "{e}");
    assert!(!out.join("model.safetensors").exists());
}

#[test]
fn bad_invocations_fail_cleanly() {
    let d = dir("bad");
    let data = dataset(&d);
    let out = d.join("run");
    let e = fails(&["train-denoiser", "--dataset", s(&d.join("nope")), "--out", s(&out)]);
    assert!(e.contains("nope"), "{e}");
    assert!(!fails(&["train-denoiser", "--dataset", s(&data), "--out", s(&out), "--frobnicate"]).is_empty());
    let e = fails(&["train-denoiser", "--dataset", s(&data), "--out", s(&out), "--model", "hardnet"]);
    assert!(e.contains("unet or dncnn"), "{e}");
    let e = fails(&["train-denoiser", "--dataset", s(&data), "--out", s(&out), "--split", "full"]);
    assert!(e.contains("no training sequences"), "{e}");
    let e = fails(&["train-denoiser", "--dataset", s(&data), "--out", s(&out), "--split", "zz"]);
    assert!(e.contains("no split 'zz'"), "{e}");
    // A split with training but no test sequences cannot be validated or evaluated.
    let splits_path = data.join("splits.json");
    let mut splits: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&splits_path).unwrap()).unwrap();
    let train = splits["a"]["train"].clone();
    splits["trainonly"] = serde_json::json!({ "name": "trainonly", "train": train, "test": [] });
    std::fs::write(&splits_path, serde_json::to_string(&splits).unwrap()).unwrap();
    for cmd in ["train-denoiser", "run"] {
        let e = fails(&[cmd, "--dataset", s(&data), "--out", s(&out), "--split", "trainonly"]);
        assert!(e.contains("splits.json") && e.contains("no test sequences"), "{cmd}: {e}");
    }
    let hardnet = d.join("hardnet.safetensors");
    ok(&["init", "--model", "hardnet", "--out", s(&hardnet)]);
    let e = fails(&[
        "train-descriptor",
        "--dataset",
        s(&data),
        "--out",
        s(&out),
        "--input",
        "denoised",
        "--denoiser",
        s(&hardnet),
    ]);
    assert!(e.contains("hardnet.safetensors") && e.contains("not a denoiser"), "{e}");
    let e = fails(&["train-descriptor", "--dataset", s(&data), "--out", s(&out), "--input", "denoised"]);
    assert!(e.contains("--denoiser"), "{e}");
    let e = fails(&["run", "--dataset", s(&d.join("nope")), "--out", s(&out)]);
    assert!(e.contains("nope"), "{e}");
}
