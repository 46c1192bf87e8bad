//! Running the `nhpatch` binary from integration tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nhpatch"))
}

/// A temporary folder that is removed when it goes out of scope, unless the
/// test is failing (then it stays for inspection; its path is in the message).
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Removes the folders of earlier test processes that are no longer running
/// (a failed test keeps its folder, and statics are never dropped). Linux
/// only, where `/proc/<pid>` tells whether a process lives.
fn sweep() {
    let proc = Path::new("/proc");
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    if !proc.is_dir() {
        return;
    }
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix("nhpatch-test-").and_then(|r| r.split('-').next());
        if let Some(pid) = pid.filter(|p| p.parse::<u32>().is_ok())
            && !proc.join(pid).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A fresh, empty temporary folder unique to this test process and `name`.
pub fn dir(name: &str) -> TempDir {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(sweep);
    let d = std::env::temp_dir().join(format!("nhpatch-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nhpatch {args:?} failed: {err}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a failing command; returns stderr after checking the exit status and the absence of panics.
pub fn fails(args: &[&str]) -> String {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "nhpatch {args:?} succeeded");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "panic: {err}");
    err
}

/// Lines of a run folder's `metrics.jsonl` (none when it does not exist yet).
pub fn metric_lines(run_dir: &Path) -> usize {
    std::fs::read_to_string(run_dir.join("metrics.jsonl")).map_or(0, |t| t.lines().count())
}

/// Starts `nhpatch args` and kills it with SIGKILL part-way through the
/// second epoch of the stage that writes into `stage_dir`: once its
/// `metrics.jsonl` holds a line (the first epoch's checkpoint is written
/// before it), it runs for another third of the time that first epoch took
/// (counted from when the folder appeared). Panics if the process ends by
/// itself first. Returns the epochs the stage had recorded when it was killed.
pub fn kill_in_second_epoch(args: &[&str], stage_dir: &Path) -> usize {
    let mut child = bin().args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t = Instant::now();
    let mut began = None;
    while metric_lines(stage_dir) == 0 {
        assert!(t.elapsed() < Duration::from_secs(300), "no epoch in {} after five minutes", stage_dir.display());
        assert!(child.try_wait().unwrap().is_none(), "nhpatch {args:?} ended before it could be killed");
        if began.is_none() && stage_dir.exists() {
            began = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(began.unwrap_or(t).elapsed() / 3);
    assert!(child.try_wait().unwrap().is_none(), "nhpatch {args:?} ended before it could be killed");
    child.kill().unwrap();
    child.wait().unwrap();
    metric_lines(stage_dir)
}

/// A small synthetic dataset (4 sequences of 48 patches) written into `d/data`.
pub fn synth_dataset(d: &Path, seed: u64) -> PathBuf {
    let root = d.join("data");
    ok(&["synth", "--out", s(&root), "--sequences", "4", "--patches", "48", "--seed", &seed.to_string()]);
    root
}

/// Verification, matching and retrieval mAP from an `eval --json` report.
pub fn maps(json: &Path) -> [f64; 3] {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let get = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("no {k} in {json:?}"));
    [get("verification_map"), get("matching_map"), get("retrieval_map")]
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
