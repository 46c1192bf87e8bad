//! Data-parallel training over MPI, through `mpirun -n 2 nhpatch ... --distributed`
//! (`cargo test --features mpi --test distributed`; needs Open MPI's `mpirun`).
//!
//! - Two ranks give the weights of one process with the same global batch
//!   (descriptor with the HardNet and triplet losses, DnCNN with synchronised
//!   BatchNorm), over a few steps and an epoch boundary. Only a few steps:
//!   hardest-in-batch negatives and ReLU kinks make any two training
//!   trajectories whose sums round differently drift apart after a handful
//!   of steps, so a long run is not a test of equality.
//! - A rank killed mid-run ends the job promptly with a message; a hung rank
//!   is caught by the collective timeout; `--resume` continues from rank 0's
//!   last checkpoint to the weights of an uninterrupted run.
#![cfg(feature = "mpi")]

mod common;

use common::cli::{dir, ok, s};
use nhpatch::net::{LoadOptions, Network};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn mpirun(ranks: usize, args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    // CI runs as root; 2 ranks may exceed the cores Open MPI counts as slots.
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    c.args(["-n", &ranks.to_string(), "--oversubscribe", env!("CARGO_BIN_EXE_nhpatch")]).args(args);
    c
}

fn mpi_ok(ranks: usize, args: &[&str]) -> String {
    let out = mpirun(ranks, args).output().expect("mpirun (Open MPI) must be installed for this test");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mpirun -n {ranks} nhpatch {args:?} failed: {err}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dataset(d: &Path) -> PathBuf {
    let root = d.join("data");
    ok(&["synth", "--out", s(&root), "--sequences", "4", "--patches", "48", "--seed", "3"]);
    root
}

fn load(run: &Path) -> Network {
    Network::load(&run.join("model.safetensors"), LoadOptions::default()).unwrap()
}

/// Worst difference over the tensors of two networks, each relative to its tensor's largest value (at least 1e-2).
fn worst(a: &Network, b: &Network) -> (f64, String) {
    let mut w = (0.0f64, String::new());
    for spec in a.model().layout().specs() {
        let (x, y) = (&a.params()[spec.range()], &b.params()[spec.range()]);
        let scale = x.iter().fold(1e-2f64, |m, &v| m.max(v.abs() as f64));
        let d = x.iter().zip(y).fold(0.0f64, |m, (&p, &q)| m.max((p as f64 - q as f64).abs())) / scale;
        if d > w.0 {
            w = (d, spec.name.clone());
        }
    }
    w
}

#[test]
fn two_ranks_equal_one_process_with_the_same_global_batch() {
    let d = dir("mpi-equal");
    let data = dataset(&d);
    // Two steps, one per epoch. Longer runs drift apart however they are split:
    // one process with the learning rate changed by 1e-7 of itself differs from itself by 2e-3
    // after three DnCNN steps. The HardNet loss splits sooner: its hardest-in-batch negative is an
    // argmin over descriptors that differ by rounding, and one flip moves the weights by ~1e-2.
    // Over seeds 2-4 at 4 steps (16 pairs a step) one process and two ranks split on 2 of 3
    // seeds with the weight gradient by im2col and on all 3 with it in the Winograd domain,
    // whose rounding error is 1.1-1.6x im2col's.
    let cases: [(&str, &[&str]); 3] = [
        // HardNet loss: the ranks score the whole batch's descriptors; dropout and BatchNorm synchronised.
        (
            "train-descriptor",
            &["--variant", "original", "--loss", "hardnet", "--batch", "16", "--items", "16", "--epochs", "2"],
        ),
        (
            "train-descriptor",
            &[
                "--variant",
                "baseline",
                "--loss",
                "triplet",
                "--lr",
                "0.01",
                "--batch",
                "12",
                "--items",
                "12",
                "--epochs",
                "2",
            ],
        ),
        (
            "train-denoiser",
            &[
                "--model",
                "dncnn",
                "--loss",
                "mse",
                "--optimizer",
                "sgd",
                "--lr",
                "1e-4",
                "--batch",
                "6",
                "--items",
                "6",
                "--epochs",
                "2",
            ],
        ),
    ];
    for (i, (cmd, extra)) in cases.iter().enumerate() {
        let (one, two) = (d.join(format!("one-{i}")), d.join(format!("two-{i}")));
        // All training sequences train (no validation hold-out): the steps compared are the ones this test was tuned on.
        let base = [*cmd, "--dataset", s(&data), "--preset", "demo", "--val-sequences", "0"];
        ok(&[&base[..], extra, &["--out", s(&one), "--threads", "2"]].concat());
        mpi_ok(2, &[&base[..], extra, &["--out", s(&two), "--threads", "1", "--distributed"]].concat());
        let (e, tensor) = worst(&load(&one), &load(&two));
        eprintln!("{cmd} {extra:?}: 1 process vs 2 ranks, worst difference {e:.2e} ({tensor})");
        assert!(e < 1e-4, "{cmd} {extra:?}: two ranks differ from one process by {e:.2e} in {tensor}");
        // Rank 0 alone wrote the stage's files, and recorded the rank count.
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(two.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["ranks"], 2);
        assert_eq!(std::fs::read_to_string(two.join("metrics.jsonl")).unwrap().lines().count(), 2);
    }
}

/// The pid of rank `rank` of a job whose command line mentions `marker`.
fn rank_pid(marker: &str, rank: usize) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let has = |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
        if has(&cmdline, marker)
            && has(&cmdline, "--distributed")
            && has(&environ, &format!("OMPI_COMM_WORLD_RANK={rank}\0"))
        {
            return Some(pid);
        }
    }
    None
}

/// Waits for `child` at most `limit`; kills it and fails if it is still running.
fn wait_within(child: &mut Child, limit: Duration, what: &str) -> (bool, String) {
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                std::io::Read::read_to_string(&mut e, &mut err).unwrap();
            }
            return (status.success(), err);
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("{what}: the job was still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a 3-epoch descriptor run in `out`, waits for rank 0's first checkpoint, then `signal`s rank 1.
fn start_and_hit_rank1(data: &Path, out: &Path, signal: &str, extra: &[&str]) -> Child {
    let args = [
        "train-descriptor",
        "--dataset",
        s(data),
        "--out",
        s(out),
        "--preset",
        "demo",
        "--variant",
        "original",
        "--loss",
        "hardnet",
        "--batch",
        "16",
        "--items",
        "256",
        "--epochs",
        "3",
        "--no-epoch-eval",
        "--threads",
        "1",
        "--distributed",
    ];
    let mut child =
        mpirun(2, &[&args[..], extra].concat()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let t = Instant::now();
    while !out.join("checkpoint.safetensors").exists() {
        assert!(child.try_wait().unwrap().is_none(), "the job ended before its first checkpoint");
        assert!(t.elapsed() < Duration::from_secs(120), "no checkpoint after 120 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = rank_pid(s(out), 1).expect("rank 1's process");
    let st = Command::new("kill").args([signal, &pid.to_string()]).status().unwrap();
    assert!(st.success());
    child
}

#[test]
fn a_dead_or_hung_rank_ends_the_job_and_resume_continues() {
    let d = dir("mpi-fault");
    let data = dataset(&d);
    // Killed: the launcher sees the death and stops the job.
    let out = d.join("killed");
    let mut job = start_and_hit_rank1(&data, &out, "-KILL", &[]);
    let (success, err) = wait_within(&mut job, Duration::from_secs(60), "after rank 1 was killed");
    assert!(!success, "the job succeeded with a dead rank");
    assert!(err.contains("rank 1") || err.contains("exited on signal"), "no message about the dead rank: {err}");
    // Hung (stopped, so the launcher sees nothing): rank 0's collective times out.
    let hung = d.join("hung");
    let mut job = start_and_hit_rank1(&data, &hung, "-STOP", &["--comm-timeout", "5"]);
    let (success, err) = wait_within(&mut job, Duration::from_secs(90), "after rank 1 was stopped");
    assert!(!success, "the job succeeded with a hung rank");
    assert!(err.contains("for the other ranks") && err.contains("--resume"), "no timeout message: {err}");
    if let Some(pid) = rank_pid(s(&hung), 1) {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }

    // --resume continues from the last checkpoint rank 0 wrote, to the uninterrupted run's weights.
    let args = |o: &Path| {
        vec![
            "train-descriptor".to_string(),
            "--dataset".into(),
            s(&data).into(),
            "--out".into(),
            s(o).into(),
            "--preset".into(),
            "demo".into(),
            "--variant".into(),
            "original".into(),
            "--loss".into(),
            "hardnet".into(),
            "--batch".into(),
            "16".into(),
            "--items".into(),
            "256".into(),
            "--epochs".into(),
            "3".into(),
            "--no-epoch-eval".into(),
            "--threads".into(),
            "1".into(),
            "--distributed".into(),
        ]
    };
    let resumed: Vec<String> = [args(&out), vec!["--resume".into()]].concat();
    let stdout = mpi_ok(2, &resumed.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(stdout.contains("descriptor epoch 3/3"), "{stdout}");
    let straight = d.join("straight");
    mpi_ok(2, &args(&straight).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(load(&out).params(), load(&straight).params(), "resumed and uninterrupted 2-rank runs differ");
}
