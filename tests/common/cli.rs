//! Running the `nhpatch` binary from integration tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nhpatch"))
}

/// A fresh, empty temporary folder unique to this test process and `name`.
pub fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nhpatch-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
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

/// A small synthetic dataset (4 sequences of 48 patches) written into `d/data`.
pub fn synth_dataset(d: &Path, seed: u64) -> PathBuf {
    let root = d.join("data");
    ok(&["synth", "--out", s(&root), "--sequences", "4", "--patches", "48", "--seed", &seed.to_string()]);
    root
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
