//! Same seed, same bytes, whatever the thread count: each training stage at
//! its real batch size (the denoiser and the triplet loss at 50, the HardNet
//! loss at 128 pairs with and without SOSNet's regulariser, the joint stage
//! of `run --recipe joint` at 128 pairs) trained with 1, 2, 3, 5 and 8
//! threads (oversubscribing the cores on purpose) writes byte-identical
//! weights, and so does a second run with the same thread count; `describe` output is identical across runs and thread
//! counts. Splits that change a sum's order follow the data's sizes only
//! (`src/threads.rs`).

mod common;

use common::cli::{dir, ok, s};
use std::path::{Path, PathBuf};

const THREADS: [&str; 5] = ["1", "2", "3", "5", "8"];

/// One short run of `stage`: two steps at its real batch size.
fn stage_args<'a>(stage: &'a str, data: &'a Path, out: &'a Path, threads: &'a str) -> Vec<&'a str> {
    let common = ["--dataset", s(data), "--out", s(out), "--seed", "5", "--threads", threads];
    let own: &[&str] = match stage {
        "denoiser" => &["train-denoiser", "--preset", "demo", "--epochs", "1", "--batch", "50", "--items", "100"],
        "triplet" => &[
            "train-descriptor",
            "--preset",
            "demo",
            "--epochs",
            "1",
            "--loss",
            "triplet",
            "--batch",
            "50",
            "--items",
            "100",
            "--input",
            "noisy",
            "--no-epoch-eval",
            "--val-sequences",
            "0",
        ],
        // hardnet-sos: with SOSNet's regulariser (its neighbour sets and the serial scatter of its gradient).
        "hardnet" | "hardnet-sos" => &[
            "train-descriptor",
            "--preset",
            "demo",
            "--epochs",
            "1",
            "--variant",
            "original",
            "--loss",
            "hardnet",
            "--batch",
            "128",
            "--items",
            "256",
            "--input",
            "noisy",
            "--no-epoch-eval",
            "--val-sequences",
            "0",
        ],
        // The hardnet recipe's stages, then one epoch of the joint stage, all at 128 pairs.
        "joint" => &[
            "run",
            "--recipe",
            "joint",
            "--denoiser-epochs",
            "1",
            "--denoiser-items",
            "128",
            "--descriptor-epochs",
            "2",
            "--joint-epochs",
            "1",
            "--val-sequences",
            "0",
            "--triplets",
            "256",
            "--batch",
            "128",
        ],
        _ => unreachable!("unknown stage {stage}"),
    };
    let sos: &[&str] = if stage == "hardnet-sos" { &["--sos-weight", "1"] } else { &[] };
    [own, sos, &common[..]].concat()
}

/// The weights a finished run of `stage` wrote (both models for the joint stage).
fn weights(stage: &str, out: &Path) -> Vec<u8> {
    let files: &[&str] = match stage {
        "joint" => &["joint/denoiser/model.safetensors", "joint/descriptor/model.safetensors"],
        _ => &["model.safetensors"],
    };
    files.iter().flat_map(|f| std::fs::read(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"))).collect()
}

/// Two training sequences of 72 patches: enough distinct patches for a batch
/// of 128 HardNet pairs, few enough that evaluating and denoising stay quick.
fn dataset(d: &Path) -> PathBuf {
    let data = d.join("data");
    ok(&["synth", "--out", s(&data), "--sequences", "4", "--patches", "72", "--seed", "3"]);
    data
}

#[test]
fn every_stage_trains_to_the_same_bytes_with_1_2_3_5_and_8_threads() {
    let d = dir("determinism");
    let data = dataset(&d);
    for stage in ["denoiser", "triplet", "hardnet", "hardnet-sos", "joint"] {
        let run = |name: &str, threads: &str| {
            let out = d.join(format!("{stage}-{name}"));
            ok(&stage_args(stage, &data, &out, threads));
            weights(stage, &out)
        };
        let first = run("2-again", "2");
        for threads in THREADS {
            assert!(run(threads, threads) == first, "{stage}: --threads {threads} and --threads 2 differ");
        }
    }
}

#[test]
fn describe_is_the_same_across_runs_and_thread_counts() {
    let d = dir("determinism-describe");
    let weights = d.join("hardnet.safetensors");
    ok(&["init", "--model", "hardnet", "--variant", "original", "--seed", "7", "--out", s(&weights)]);
    let input = d.join("patches.npy");
    let pixels: Vec<f32> = (0..300 * 1024).map(|i| ((i * 37 + i / 1024 * 11) % 256) as f32).collect();
    nhpatch::io::npy::write_f32(&input, &[300, 32, 32], &pixels).unwrap();
    let describe = |name: &str, threads: &str| {
        let out = d.join(name);
        ok(&["describe", "--weights", s(&weights), "--input", s(&input), "--output", s(&out), "--threads", threads]);
        std::fs::read(out).unwrap()
    };
    let first = describe("again.npy", "2");
    for threads in THREADS {
        assert!(describe(&format!("{threads}.npy"), threads) == first, "describe differs with --threads {threads}");
    }
}
