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
    root: PathBuf,
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
        Fx { root, unet, hardnet, data, test_seq, strip, npy, descs, tasks }
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
        assert!(before == after, "{cmd} / {}: an input file changed", case.name);
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

fn denoiser_weights() -> Vec<Case> {
    weight_cases!(unet, hardnet, "not a denoiser")
}

fn descriptor_weights() -> Vec<Case> {
    weight_cases!(hardnet, unet, "not a hardnet")
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
