//! Same seed, same bytes: training a tiny denoiser and descriptor twice with
//! the same seed and thread count gives identical weights files, and so does
//! a run on one thread (work is partitioned by size, never by thread count);
//! `describe` output is identical across runs and thread counts.

mod common;

use common::cli::{dir, ok, s};
use std::path::{Path, PathBuf};

fn train(data: &Path, out: &Path, stage: &str, threads: &str) -> Vec<u8> {
    let mut args = vec![stage, "--dataset", s(data), "--out", s(out), "--preset", "demo", "--epochs", "1"];
    args.extend(["--items", "64", "--seed", "5", "--threads", threads]);
    if stage == "train-descriptor" {
        args.extend(["--input", "noisy", "--no-epoch-eval", "--batch", "8"]);
    }
    ok(&args);
    std::fs::read(out.join("model.safetensors")).unwrap()
}

#[test]
fn training_and_describe_are_deterministic_across_runs_and_thread_counts() {
    let d = dir("determinism");
    let data = d.join("data");
    ok(&["synth", "--out", s(&data), "--sequences", "4", "--patches", "8", "--seed", "3"]);
    for stage in ["train-denoiser", "train-descriptor"] {
        let run = |name: &str, threads: &str| train(&data, &d.join(format!("{stage}-{name}")), stage, threads);
        let (a, b, one) = (run("a", "2"), run("b", "2"), run("one", "1"));
        assert!(a == b, "{stage}: two runs with --threads 2 differ");
        assert!(a == one, "{stage}: --threads 1 and --threads 2 differ");
    }
    let weights: PathBuf = d.join("train-descriptor-a/model.safetensors");
    let input = data.join(std::fs::read_dir(&data).unwrap().flatten().find(|e| e.path().is_dir()).unwrap().path());
    let input = input.join("ref.png");
    let describe = |name: &str, threads: &str| {
        let out = d.join(name);
        ok(&["describe", "--weights", s(&weights), "--input", s(&input), "--output", s(&out), "--threads", threads]);
        std::fs::read(out).unwrap()
    };
    let (a, b, one) = (describe("a.npy", "2"), describe("b.npy", "2"), describe("one.npy", "1"));
    assert!(a == b && a == one, "describe output differs between runs or thread counts");
}
