//! Bad inputs to every reader, through every command that reads them:
//! truncated, corrupted, empty, oversized-declared, wrong-type and
//! wrong-shape files. Each case must fail with a non-zero exit and no panic,
//! name the offending file, say what is wrong (a keyword), leave no output
//! and no temporary file behind, and leave its input byte for byte unchanged.
//!
//! Valid fixtures are made once by nhpatch itself (`synth`, `init`,
//! `export`, `tasks`); every case corrupts a copy in its own folder.

mod common;

use common::cli::{dir, fails, ok, s};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Valid files every case starts from.
struct Fx {
    /// Lives as long as the process (a static): a later test run sweeps it (`cli::dir`).
    root: common::cli::TempDir,
    unet: PathBuf,
    hardnet: PathBuf,
    /// A synthetic dataset (its pack cache already built).
    data: PathBuf,
    /// The first test sequence of split a.
    test_seq: String,
    /// A 3-patch strip and the same patches as a .npy.
    strip: PathBuf,
    npy: PathBuf,
    /// Descriptors of split a (`export`) and its task files (`tasks`).
    descs: PathBuf,
    tasks: PathBuf,
    /// Checkpoints of one-epoch runs of each stage, made with `resume_args`.
    ckpt_denoiser: PathBuf,
    ckpt_descriptor: PathBuf,
}

/// The arguments of the tiny training runs whose checkpoints the resume cases poison.
fn resume_args(stage: &str, data: &Path, out: &Path) -> Vec<String> {
    let mut a = strs(&[stage, "--dataset", s(data), "--out", s(out), "--preset", "demo", "--epochs", "1"]);
    a.extend(strs(&["--items", "64", "--threads", "1", "--seed", "4", "--resume"]));
    if stage == "train-descriptor" {
        a.extend(strs(&["--input", "noisy", "--no-epoch-eval", "--val-sequences", "0", "--batch", "16"]));
    }
    a
}

fn fx() -> &'static Fx {
    static FX: OnceLock<Fx> = OnceLock::new();
    FX.get_or_init(|| {
        let root = dir("bad-inputs");
        let (unet, hardnet) = (root.join("unet.safetensors"), root.join("hardnet.safetensors"));
        ok(&["init", "--model", "unet", "--seed", "1", "--out", s(&unet)]);
        ok(&["init", "--model", "hardnet", "--seed", "2", "--out", s(&hardnet)]);
        let data = root.join("data");
        ok(&["synth", "--out", s(&data), "--sequences", "4", "--patches", "8", "--seed", "3"]);
        let splits: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(data.join("splits.json")).unwrap()).unwrap();
        let test_seq = splits["a"]["test"][0].as_str().unwrap().to_string();
        let strip = root.join("strip.png");
        let pixels: Vec<u8> = (0..3 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        nhpatch::io::png::write_strip(&strip, &pixels).unwrap();
        let npy = root.join("patches.npy");
        nhpatch::io::npy::write_f32(&npy, &[3, 32, 32], &pixels.iter().map(|&v| v as f32).collect::<Vec<_>>()).unwrap();
        let descs = root.join("descs");
        ok(&["export", "--dataset", s(&data), "--weights", s(&hardnet), "--out", s(&descs), "--threads", "1"]);
        let tasks = root.join("tasks");
        ok(&["tasks", "--dataset", s(&data), "--out", s(&tasks), "--threads", "1"]);
        let ckpt = |stage: &str| {
            let run = root.join(format!("{stage}-run"));
            let a = resume_args(stage, &data, &run);
            ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
            run.join("checkpoint.safetensors")
        };
        let (ckpt_denoiser, ckpt_descriptor) = (ckpt("train-denoiser"), ckpt("train-descriptor"));
        Fx { root, unet, hardnet, data, test_seq, strip, npy, descs, tasks, ckpt_denoiser, ckpt_descriptor }
    })
}

/// Every file and folder under `d`, with the bytes of the files.
fn snapshot(d: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![d.to_path_buf()];
    while let Some(p) = todo.pop() {
        for e in fs::read_dir(&p).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.insert(p.clone(), None);
                todo.push(p);
            } else {
                out.insert(p.clone(), Some(fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue; // the pack cache
        }
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(&name));
        } else {
            fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

/// Writes `bytes` to `d/name`, returning the path.
fn put(d: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = d.join(name);
    fs::write(&p, bytes).unwrap();
    p
}

/// The bytes of `src` changed by `f`, written to `d/name`.
fn edited(src: &Path, d: &Path, name: &str, f: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut b = fs::read(src).unwrap();
    f(&mut b);
    put(d, name, &b)
}

fn half(b: &mut Vec<u8>) {
    b.truncate(b.len() / 2);
}

/// Table-based CRC-32 of PNG chunks.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A well-formed PNG header declaring a `w` x `h` 8-bit gray image, with a
/// tiny IDAT that cannot hold it.
fn huge_png(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A `w` x `h` gray PNG written by nhpatch.
fn gray_png(d: &Path, name: &str, w: usize, h: usize) -> PathBuf {
    let p = d.join(name);
    let img = nhpatch::io::png::GrayImage { width: w, height: h, pixels: vec![128; w * h] };
    nhpatch::io::png::write_gray(&p, &img).unwrap();
    p
}

/// A version 1.0 .npy file with this header dict and body.
fn npy_with(dict: &str, body: &[u8]) -> Vec<u8> {
    let mut header = dict.to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    out
}

/// A safetensors file: `header` JSON, then `body`.
fn safetensors(header: &str, body: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    out
}

/// One bad input: `make` writes it into the case folder and returns the
/// argument to pass and the file the message must name; `expect` lists
/// keywords separated by `|`, one of which the message must contain.
#[derive(Clone)]
struct Case {
    name: &'static str,
    make: fn(&Fx, &Path) -> (PathBuf, PathBuf),
    expect: &'static str,
}

/// The command line of a case: (fixtures, bad argument, case folder).
type Args = fn(&Fx, &Path, &Path) -> Vec<String>;

fn check(cmd: &str, args: Args, cases: &[Case]) {
    let fx = fx();
    for case in cases {
        let d = fx.root.join(cmd).join(case.name);
        fs::create_dir_all(&d).unwrap();
        let (arg, named) = (case.make)(fx, &d);
        let before = snapshot(&d);
        let argv = args(fx, &arg, &d);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let err = fails(&argv);
        let what = format!("{cmd} / {}: {err}", case.name);
        let name = named.file_name().unwrap().to_str().unwrap();
        assert!(err.contains(name), "the message does not name {name}: {what}");
        let lower = err.to_lowercase();
        assert!(
            case.expect.split('|').any(|k| lower.contains(&k.to_lowercase())),
            "the message lacks '{}': {what}",
            case.expect
        );
        let after = snapshot(&d);
        let added: Vec<_> = after.keys().filter(|k| !before.contains_key(*k)).collect();
        assert!(added.is_empty(), "{cmd} / {}: left {added:?} behind", case.name);
        assert!(before.iter().all(|(k, v)| after.get(k) == Some(v)), "{cmd} / {}: an input file changed", case.name);
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

// ---- patch inputs (.png strips and .npy arrays) ----

fn png_cases() -> Vec<Case> {
    vec![
        Case { name: "png-truncated", make: |f, d| both(edited(&f.strip, d, "cut.png", half)), expect: "png" },
        Case {
            name: "png-header-flipped",
            make: |f, d| both(edited(&f.strip, d, "flip.png", |b| b[1..4].copy_from_slice(b"XYZ"))),
            expect: "not a readable png",
        },
        Case { name: "png-empty", make: |_, d| both(put(d, "empty.png", b"")), expect: "not a readable png" },
        Case { name: "png-huge", make: |_, d| both(put(d, "huge.png", &huge_png(60000, 60000))), expect: "too large" },
        Case {
            name: "png-is-npy",
            make: |f, d| both(edited(&f.npy, d, "npy.png", |_| {})),
            expect: "not a readable png",
        },
        Case { name: "png-32x40", make: |_, d| both(gray_png(d, "odd.png", 32, 40)), expect: "not a multiple" },
        Case { name: "text-input", make: |_, d| both(put(d, "patches.txt", b"1,2,3")), expect: ".png strip or a .npy" },
    ]
}

fn npy_cases() -> Vec<Case> {
    vec![
        Case { name: "npy-truncated", make: |f, d| both(edited(&f.npy, d, "cut.npy", half)), expect: "data bytes" },
        Case {
            name: "npy-magic-flipped",
            make: |f, d| both(edited(&f.npy, d, "flip.npy", |b| b[1] ^= 0xff)),
            expect: "magic",
        },
        Case { name: "npy-empty", make: |_, d| both(put(d, "empty.npy", b"")), expect: "magic" },
        Case {
            name: "npy-huge-shape",
            make: |_, d| {
                let b =
                    npy_with("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 32, 32), }", &[0; 64]);
                both(put(d, "huge.npy", &b))
            },
            expect: "data bytes",
        },
        Case {
            name: "npy-overflowing-shape",
            make: |_, d| {
                let b = npy_with(
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (18446744073709551615, 1024), }",
                    &[0; 64],
                );
                both(put(d, "overflow.npy", &b))
            },
            expect: "more than 2^64",
        },
        Case { name: "npy-is-png", make: |f, d| both(edited(&f.strip, d, "png.npy", |_| {})), expect: "magic" },
        Case {
            name: "npy-16x16",
            make: |_, d| {
                let b = npy_with("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 16, 16), }", &[0; 512]);
                both(put(d, "small.npy", &b))
            },
            expect: "is not (N, 32, 32)",
        },
        Case {
            name: "npy-out-of-range",
            make: |_, d| {
                let mut body = vec![0u8; 4096];
                body[..4].copy_from_slice(&300f32.to_le_bytes());
                let b = npy_with("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 32, 32), }", &body);
                both(put(d, "range.npy", &b))
            },
            expect: "outside 0..255",
        },
    ]
}

fn both(p: PathBuf) -> (PathBuf, PathBuf) {
    (p.clone(), p)
}

// ---- weights files ----

/// Bad weights files made from the valid fixture `$valid`; `$other` is a
/// valid file of the wrong kind, refused with `$other_says`.
macro_rules! weight_cases {
    ($valid:ident, $other:ident, $other_says:expr) => {
        vec![
            Case {
                name: "weights-truncated",
                make: |f, d| both(edited(&f.$valid, d, "cut.safetensors", half)),
                expect: "truncated file",
            },
            Case {
                name: "weights-header-length-flipped",
                make: |f, d| both(edited(&f.$valid, d, "flip.safetensors", |b| b[5] ^= 0xff)),
                expect: "too large",
            },
            Case {
                name: "weights-json-flipped",
                make: |f, d| both(edited(&f.$valid, d, "json.safetensors", |b| b[8] = b'[')),
                expect: "invalid json header",
            },
            Case { name: "weights-empty", make: |_, d| both(put(d, "empty.safetensors", b"")), expect: "too short" },
            Case {
                name: "weights-huge-tensor",
                make: |_, d| {
                    let h = r#"{"w":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,4000000000000]}}"#;
                    both(put(d, "huge.safetensors", &safetensors(h, &[0; 16])))
                },
                expect: "data buffer",
            },
            Case {
                name: "weights-is-png",
                make: |f, d| both(edited(&f.strip, d, "png.safetensors", |_| {})),
                expect: "too large",
            },
            Case {
                name: "weights-other-model",
                make: |f, d| both(edited(&f.$other, d, "other.safetensors", |_| {})),
                expect: $other_says,
            },
        ]
    };
}

/// A copy of the weights (or checkpoint) file `src` named `name`, with one
/// element of the tensor `tensor` set to `v`, written by nhpatch's own writer:
/// a well-formed file whose values are poisoned.
fn poisoned(src: &Path, d: &Path, name: &str, tensor: &str, v: f32) -> PathBuf {
    let mut w = nhpatch::weights::load(src).unwrap();
    let t = w.tensors.get_mut(tensor).unwrap_or_else(|| panic!("{src:?} has no {tensor}"));
    let i = t.data.len() / 2;
    t.data[i] = v;
    let p = d.join(name);
    nhpatch::weights::save(&p, &w).unwrap();
    p
}

/// Well-formed weights files holding a NaN or an infinity, from the valid fixture `$valid`.
macro_rules! poison_cases {
    ($valid:ident, $first:expr, $last:expr) => {
        vec![
            Case {
                name: "weights-nan",
                make: |f, d| both(poisoned(&f.$valid, d, "nan.safetensors", $first, f32::NAN)),
                expect: concat!("'", $first, "' holds 1 non-finite value(s)"),
            },
            Case {
                name: "weights-inf",
                make: |f, d| both(poisoned(&f.$valid, d, "inf.safetensors", $last, f32::NEG_INFINITY)),
                expect: concat!("'", $last, "' holds 1 non-finite value(s)"),
            },
        ]
    };
}

fn denoiser_weights() -> Vec<Case> {
    let mut v = weight_cases!(unet, hardnet, "not a denoiser");
    v.extend(poison_cases!(unet, "conv1.weight", "conv5.bias"));
    v
}

fn descriptor_weights() -> Vec<Case> {
    let mut v = weight_cases!(hardnet, unet, "not a hardnet");
    v.extend(poison_cases!(hardnet, "conv7.weight", "bn3.running_mean"));
    v.push(Case {
        name: "weights-negative-variance",
        make: |f, d| both(poisoned(&f.hardnet, d, "var.safetensors", "bn2.running_var", -0.25)),
        expect: "'bn2.running_var' holds a negative variance",
    });
    v
}

#[test]
fn denoise_refuses_bad_inputs_and_weights() {
    let args: Args = |f, a, d| {
        strs(&[
            "denoise",
            "--weights",
            s(&f.unet),
            "--input",
            s(a),
            "--output",
            s(&d.join("out.npy")),
            "--threads",
            "1",
        ])
    };
    check("denoise", args, &[png_cases(), npy_cases()].concat());
    let args: Args = |f, a, d| {
        strs(&[
            "denoise",
            "--weights",
            s(a),
            "--input",
            s(&f.strip),
            "--output",
            s(&d.join("out.png")),
            "--threads",
            "1",
        ])
    };
    check("denoise-weights", args, &denoiser_weights());
}

#[test]
fn describe_and_info_refuse_bad_weights() {
    let args: Args = |f, a, d| {
        strs(&[
            "describe",
            "--weights",
            s(&f.hardnet),
            "--input",
            s(a),
            "--output",
            s(&d.join("out.csv")),
            "--threads",
            "1",
        ])
    };
    check("describe", args, &[png_cases(), npy_cases()[..3].to_vec()].concat());
    let args: Args = |f, a, d| {
        strs(&[
            "describe",
            "--weights",
            s(a),
            "--input",
            s(&f.npy),
            "--output",
            s(&d.join("out.npy")),
            "--threads",
            "1",
        ])
    };
    check("describe-weights", args, &descriptor_weights());
    let args: Args = |f, a, d| {
        let out = d.join("out.csv");
        strs(&["describe", "--weights", s(&f.hardnet), "--denoiser", s(a), "--input", s(&f.npy), "--output", s(&out)])
    };
    check("describe-denoiser", args, &denoiser_weights());
    let args: Args = |_, a, _| strs(&["info", "--weights", s(a)]);
    check("info", args, &[&denoiser_weights()[..6], &denoiser_weights()[7..], &descriptor_weights()[7..]].concat());
}

/// The dataset fixture copied into `d`, with `f` applied to the copy.
fn dataset_with(fx: &Fx, d: &Path, f: impl FnOnce(&Path, &Path) -> PathBuf) -> (PathBuf, PathBuf) {
    let data = d.join("data");
    copy_dir(&fx.data, &data);
    let named = f(&data, &data.join(&fx.test_seq));
    (data, named)
}

/// Bad datasets every dataset reader refuses; `splits.json` is read first by all of them.
fn dataset_cases() -> Vec<Case> {
    vec![
        Case {
            name: "splits-array",
            make: |f, d| dataset_with(f, d, |data, _| put(data, "splits.json", b"[1, 2, 3]")),
            expect: "not a valid splits file",
        },
        Case {
            name: "splits-truncated",
            make: |f, d| dataset_with(f, d, |data, _| edited(&data.join("splits.json"), data, "splits.json", half)),
            expect: "not a valid splits file",
        },
        Case {
            name: "splits-empty",
            make: |f, d| dataset_with(f, d, |data, _| put(data, "splits.json", b"")),
            expect: "not a valid splits file",
        },
        Case {
            name: "splits-twice",
            make: |f, d| {
                dataset_with(f, d, |data, _| {
                    put(data, "splits.json", br#"{"a": {"train": ["x", "y"], "test": ["y"]}}"#)
                })
            },
            expect: "both train and test",
        },
        Case {
            name: "strip-truncated",
            make: |f, d| dataset_with(f, d, |_, seq| edited(&seq.join("ref.png"), seq, "ref.png", half)),
            expect: "png",
        },
        Case {
            name: "strip-flipped",
            make: |f, d| dataset_with(f, d, |_, seq| edited(&seq.join("ref.png"), seq, "ref.png", |b| b[2] ^= 0xff)),
            expect: "not a readable png",
        },
        Case {
            name: "strip-empty",
            make: |f, d| dataset_with(f, d, |_, seq| put(seq, "ref.png", b"")),
            expect: "not a readable png",
        },
        Case {
            name: "strip-huge",
            make: |f, d| dataset_with(f, d, |_, seq| put(seq, "ref.png", &huge_png(60000, 60000))),
            expect: "too large",
        },
        Case {
            name: "strip-is-text",
            make: |f, d| dataset_with(f, d, |_, seq| put(seq, "ref.png", b"{\"not\": \"a png\"}")),
            expect: "not a readable png",
        },
        Case {
            name: "strip-32x40",
            make: |f, d| dataset_with(f, d, |_, seq| gray_png(seq, "ref.png", 32, 40)),
            expect: "not a multiple|not a strip of square patches",
        },
    ]
}

/// Cases only readers of whole sequences (not just `ref.png`) meet.
fn sequence_cases() -> Vec<Case> {
    vec![
        Case {
            name: "strip-missing",
            make: |f, d| {
                dataset_with(f, d, |_, seq| {
                    fs::remove_file(seq.join("h3.png")).unwrap();
                    seq.join("h3.png")
                })
            },
            expect: "missing image",
        },
        Case {
            name: "noisy-twin-truncated",
            make: |f, d| dataset_with(f, d, |_, seq| edited(&seq.join("e2_noise.png"), seq, "e2_noise.png", half)),
            expect: "png",
        },
        Case {
            name: "strip-fewer-patches",
            make: |f, d| dataset_with(f, d, |_, seq| gray_png(seq, "t4.png", 32, 64)),
            expect: "patches",
        },
    ]
}

#[test]
fn dataset_readers_refuse_bad_datasets() {
    let args: Args = |_, a, d| strs(&["tasks", "--dataset", s(a), "--out", s(&d.join("tasks")), "--threads", "1"]);
    check("tasks", args, &dataset_cases());
    let args: Args = |_, a, d| strs(&["pack", "--dataset", s(a), "--out", s(&d.join("out.pack"))]);
    check("pack", args, &[&dataset_cases()[4..], &sequence_cases()[..]].concat());
    let args: Args = |f, a, d| {
        strs(&["export", "--dataset", s(a), "--weights", s(&f.hardnet), "--out", s(&d.join("descs")), "--threads", "1"])
    };
    check("export", args, &dataset_cases());
    let args: Args = |_, a, d| {
        let out = d.join("run");
        strs(&[
            "train-denoiser",
            "--dataset",
            s(a),
            "--out",
            s(&out),
            "--preset",
            "demo",
            "--epochs",
            "1",
            "--items",
            "20",
        ])
    };
    check("train-denoiser", args, &[dataset_cases(), sequence_cases()].concat());
    let args: Args = |_, a, d| {
        let out = d.join("run");
        strs(&["run", "--dataset", s(a), "--out", s(&out), "--threads", "1"])
    };
    check("run", args, &[&dataset_cases()[..], &sequence_cases()[..1]].concat());
}

#[test]
fn model_commands_refuse_bad_weights() {
    let args: Args = |f, a, d| {
        strs(&["export", "--dataset", s(&f.data), "--weights", s(a), "--out", s(&d.join("descs")), "--threads", "1"])
    };
    check("export-weights", args, &descriptor_weights());
    let args: Args = |f, a, d| {
        let json = d.join("out.json");
        strs(&["eval", "--dataset", s(&f.data), "--weights", s(a), "--tasks", s(&f.tasks), "--json", s(&json)])
    };
    check("eval-weights", args, &descriptor_weights());
    let args: Args = |f, a, d| {
        let out = d.join("run");
        let data = s(&f.data);
        strs(&["train-descriptor", "--dataset", data, "--out", s(&out), "--input", "denoised", "--denoiser", s(a)])
    };
    check("train-descriptor", args, &denoiser_weights());
    // A bad checkpoint in the run folder, with --resume.
    let args: Args = |f, a, _| resume_args("train-denoiser", &f.data, a.parent().unwrap());
    let cases = [
        Case {
            name: "checkpoint-truncated",
            make: |f, d| both(edited(&f.unet, d, "checkpoint.safetensors", half)),
            expect: "truncated file",
        },
        Case {
            name: "checkpoint-empty",
            make: |_, d| both(put(d, "checkpoint.safetensors", b"")),
            expect: "too short",
        },
        Case {
            name: "checkpoint-is-png",
            make: |f, d| both(edited(&f.strip, d, "checkpoint.safetensors", |_| {})),
            expect: "too large",
        },
        Case {
            name: "checkpoint-is-weights",
            make: |f, d| both(edited(&f.unet, d, "checkpoint.safetensors", |_| {})),
            expect: "not an nhpatch checkpoint",
        },
        Case {
            name: "checkpoint-nan-weights",
            make: |f, d| both(poisoned(&f.ckpt_denoiser, d, "checkpoint.safetensors", "params", f32::NAN)),
            expect: "' holds 1 non-finite value(s)",
        },
        Case {
            name: "checkpoint-inf-optimizer",
            make: |f, d| both(poisoned(&f.ckpt_denoiser, d, "checkpoint.safetensors", "adam.exp_avg", f32::INFINITY)),
            expect: "'adam.exp_avg' holds a non-finite value",
        },
        Case {
            name: "checkpoint-negative-second-moment",
            make: |f, d| both(poisoned(&f.ckpt_denoiser, d, "checkpoint.safetensors", "adam.exp_avg_sq", -1.0)),
            expect: "'adam.exp_avg_sq' holds a negative second moment",
        },
    ];
    check("train-resume", args, &cases);
    // The descriptor stage's checkpoint: weights (a running variance) and optimizer state.
    let args: Args = |f, a, _| resume_args("train-descriptor", &f.data, a.parent().unwrap());
    let cases = [
        Case {
            name: "checkpoint-nan-weights",
            make: |f, d| both(poisoned(&f.ckpt_descriptor, d, "checkpoint.safetensors", "params", f32::NAN)),
            expect: "' holds 1 non-finite value(s)",
        },
        Case {
            name: "checkpoint-negative-variance",
            make: |f, d| {
                let mut w = nhpatch::weights::load(&f.ckpt_descriptor).unwrap();
                let model = nhpatch::models::Model::new("hardnet".parse().unwrap()).unwrap();
                let at = model.layout().get("bn4.running_var").unwrap().offset;
                w.tensors.get_mut("params").unwrap().data[at + 3] = -2.0;
                let p = d.join("checkpoint.safetensors");
                nhpatch::weights::save(&p, &w).unwrap();
                both(p)
            },
            expect: "'bn4.running_var' holds a negative variance (-2 at element 3)",
        },
        Case {
            name: "checkpoint-nan-optimizer",
            make: |f, d| {
                let w = nhpatch::weights::load(&f.ckpt_descriptor).unwrap();
                let name = ["sgd.momentum_buffer", "adam.exp_avg"].into_iter().find(|n| w.tensors.contains_key(*n));
                both(poisoned(&f.ckpt_descriptor, d, "checkpoint.safetensors", name.unwrap(), f32::NAN))
            },
            expect: "holds a non-finite value (NaN",
        },
    ];
    check("train-descriptor-resume", args, &cases);
}

/// The descriptor CSV of image `image` of the test sequence, edited by `f`, in a copy of the descriptors.
fn descs_with(fx: &Fx, d: &Path, image: &str, f: impl FnOnce(&mut Vec<u8>)) -> (PathBuf, PathBuf) {
    let descs = d.join("descs");
    copy_dir(&fx.descs, &descs);
    let seq = descs.join(&fx.test_seq);
    let name = format!("{image}.csv");
    (descs.clone(), edited(&seq.join(&name), &seq, &name, f))
}

/// Drops the last value of line `line` (0-based).
fn drop_last_value(b: &mut Vec<u8>, line: usize) {
    let text = String::from_utf8(b.clone()).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let cut = lines[line].rfind(',').unwrap();
    lines[line].truncate(cut);
    *b = (lines.join("\n") + "\n").into_bytes();
}

#[test]
fn eval_refuses_bad_descriptors_and_tasks() {
    let args: Args = |f, a, d| {
        let json = d.join("out.json");
        strs(&["eval", "--dataset", s(&f.data), "--descriptors", s(a), "--tasks", s(&f.tasks), "--json", s(&json)])
    };
    let cases = [
        Case { name: "row-shorter", make: |f, d| descs_with(f, d, "e1", |b| drop_last_value(b, 1)), expect: "columns" },
        Case {
            name: "file-narrower",
            make: |f, d| descs_with(f, d, "h2", |b| (0..8).for_each(|l| drop_last_value(b, l))),
            expect: "dimension",
        },
        Case {
            name: "cell-not-a-number",
            make: |f, d| descs_with(f, d, "t1", |b| b[0] = b'x'),
            expect: "not a finite number",
        },
        Case { name: "rows-missing", make: |f, d| descs_with(f, d, "ref", half), expect: "rows|columns|finite" },
        Case { name: "csv-empty", make: |f, d| descs_with(f, d, "e5", |b| b.clear()), expect: "0 rows" },
        Case {
            name: "csv-is-png",
            make: |f, d| descs_with(f, d, "e3", |b| *b = fs::read(&fx().strip).unwrap()),
            expect: "utf-8",
        },
        Case {
            name: "csv-missing",
            make: |f, d| {
                let (descs, p) = descs_with(f, d, "h4", |_| {});
                fs::remove_file(&p).unwrap();
                (descs, p)
            },
            expect: "no such file",
        },
    ];
    check("eval-descriptors", args, &cases);

    let args: Args = |f, a, d| {
        let json = d.join("out.json");
        strs(&["eval", "--dataset", s(&f.data), "--descriptors", s(&f.descs), "--tasks", s(a), "--json", s(&json)])
    };
    let cases = [
        Case {
            name: "row-outside-sequence",
            make: |f, d| tasks_with(f, d, |l| replace_field(l, 2, "99999")),
            expect: "is not below",
        },
        Case {
            name: "unknown-sequence",
            make: |f, d| tasks_with(f, d, |l| replace_field(l, 0, "no_such_seq")),
            expect: "unknown sequence",
        },
        Case { name: "bad-type", make: |f, d| tasks_with(f, d, |l| replace_field(l, 1, "9")), expect: "not in 0..5" },
        Case { name: "short-row", make: |f, d| tasks_with(f, d, |l| replace_field(l, 5, "")), expect: "fields" },
    ];
    check("eval-tasks", args, &cases);
}

/// The first pair file of the task fixture (positives), its first data row edited by `f`.
fn tasks_with(fx: &Fx, d: &Path, f: fn(&str) -> String) -> (PathBuf, PathBuf) {
    let tasks = d.join("tasks");
    copy_dir(&fx.tasks, &tasks);
    let name = nhpatch::eval::tasks::file_names("a")[0].clone();
    let p = tasks.join(&name);
    let text = fs::read_to_string(&p).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[1] = f(&lines[1]);
    fs::write(&p, lines.join("\n") + "\n").unwrap();
    (tasks, p)
}

/// Field `i` of a comma-separated row replaced (an empty `v` removes it).
fn replace_field(line: &str, i: usize, v: &str) -> String {
    let mut f: Vec<&str> = line.split(',').collect();
    if v.is_empty() {
        f.remove(i);
    } else {
        f[i] = v;
    }
    f.join(",")
}

/// Pack files reach the commands only as a dataset's cache, which is rebuilt
/// when unreadable; the reader itself must refuse every corruption by name.
#[test]
fn pack_reader_refuses_corrupt_packs() {
    use nhpatch::data::pack::PackedDataset;
    let fx = fx();
    let d = fx.root.join("packs");
    fs::create_dir_all(&d).unwrap();
    let valid = d.join("valid.pack");
    ok(&["pack", "--dataset", s(&fx.data), "--out", s(&valid)]);
    assert!(PackedDataset::open(&valid).is_ok());
    type Edit = fn(&mut Vec<u8>);
    let cases: [(&str, Edit, &str); 5] = [
        ("truncated.pack", half, "pack"),
        ("magic.pack", |b| b[0] ^= 0xff, "magic"),
        ("empty.pack", |b| b.clear(), "truncated pack"),
        ("count.pack", |b| b[16..24].copy_from_slice(&1_000_000_000_000u64.to_le_bytes()), "sequence"),
        ("text.pack", |b| *b = b"sequence,count\nfoo,3\nbar,4\nbaz,5\nqux,6\nquux,7\n".to_vec(), "magic"),
    ];
    for (name, f, expect) in cases {
        let p = edited(&valid, &d, name, f);
        let e = PackedDataset::open(&p).unwrap_err().to_string();
        assert!(e.contains(name) && e.to_lowercase().contains(expect), "{name}: {e}");
    }
    // A corrupt cache in a dataset folder is rebuilt, not trusted.
    let data = d.join("data");
    copy_dir(&fx.data, &data);
    put(&data, ".nhpatch.pack", b"NHPPACK\0 but nothing else");
    ok(&["tasks", "--dataset", s(&data), "--out", s(&d.join("tasks")), "--threads", "1"]);
    ok(&["export", "--dataset", s(&data), "--weights", s(&fx.hardnet), "--out", s(&d.join("descs")), "--threads", "1"]);
    assert!(PackedDataset::open(&data.join(".nhpatch.pack")).is_ok());
}
