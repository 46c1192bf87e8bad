//! The command line as a user meets it: `info` tables, `init`, `denoise` and
//! `describe` end to end on PNG strips and .npy arrays, and bad invocations
//! that must fail with a message naming the file, without a panic and
//! without leaving an output file behind.

mod common;

use common::cli::{dir, fails, ok, s};
use std::path::Path;

#[test]
fn info_prints_the_report_tables() {
    let unet = ok(&["info", "--model", "unet"]);
    for row in ["(32, 32, 16)", "160", "4,640", "8,256", "(32, 32, 80)", "46,144", "577", "Total params: 59,777"] {
        assert!(unet.contains(row), "unet table lacks {row}:\n{unet}");
    }
    let dncnn = ok(&["info", "--model", "dncnn"]);
    assert!(dncnn.contains("Trainable params: 556,096") && dncnn.contains("Non-trainable params: 1,920"), "{dncnn}");
    let hardnet = ok(&["info", "--model", "hardnet", "--variant", "baseline"]);
    for row in
        ["320", "9,248", "18,496", "36,928", "73,856", "147,584", "1,048,704", "(1, 1, 128)", "Total params: 1,336,928"]
    {
        assert!(hardnet.contains(row), "hardnet table lacks {row}:\n{hardnet}");
    }
    let original = ok(&["info", "--model", "hardnet", "--variant", "original"]);
    assert!(original.contains("Trainable params: 1,334,560"), "{original}");
    assert!(fails(&["info", "--model", "resnet"]).contains("unknown model"));
    assert!(fails(&["info", "--model", "hardnet", "--variant", "tiny"]).contains("variant"));
}

/// A strip of `n` 64x64 patches with a little structure, written by nhpatch itself.
fn write_strip(path: &Path, n: usize, side: usize) {
    let pixels: Vec<u8> = (0..n * side * side).map(|i| ((i % side) * 3 + (i / side) % 97) as u8).collect();
    let img = nhpatch::io::png::GrayImage { width: side, height: n * side, pixels };
    nhpatch::io::png::write_gray(path, &img).unwrap();
}

#[test]
fn denoise_and_describe_end_to_end() {
    let d = dir("e2e");
    let (unet, hardnet) = (d.join("unet.safetensors"), d.join("hardnet.safetensors"));
    ok(&["init", "--model", "unet", "--seed", "1", "--out", s(&unet)]);
    ok(&["init", "--model", "hardnet", "--variant", "original", "--seed", "2", "--out", s(&hardnet)]);
    assert!(ok(&["info", "--weights", s(&unet)]).contains("Total params: 59,777"));

    let strip = d.join("strip.png");
    write_strip(&strip, 5, 65); // HPatches-sized patches, resized to 32
    let clean_png = d.join("clean.png");
    ok(&["denoise", "--weights", s(&unet), "--input", s(&strip), "--output", s(&clean_png), "--threads", "1"]);
    let clean = nhpatch::io::png::read_strip(&clean_png).unwrap();
    assert_eq!((clean.width, clean.count), (32, 5));

    let clean_npy = d.join("clean.npy");
    ok(&["denoise", "--weights", s(&unet), "--input", s(&strip), "--output", s(&clean_npy)]);
    let arr = nhpatch::io::npy::read(&clean_npy).unwrap();
    assert_eq!(arr.shape, [5, 32, 32]);
    // The PNG is the .npy rounded and clipped.
    let rounded: Vec<u8> = arr.data.iter().map(|v| v.round().clamp(0.0, 255.0) as u8).collect();
    assert_eq!(rounded, clean.patches);

    // describe --denoiser equals describe of the rounded denoised strip.
    let (csv, npy) = (d.join("desc.csv"), d.join("desc.npy"));
    ok(&["describe", "--weights", s(&hardnet), "--denoiser", s(&unet), "--input", s(&strip), "--output", s(&csv)]);
    ok(&["describe", "--weights", s(&hardnet), "--input", s(&clean_png), "--output", s(&npy)]);
    let rows: Vec<Vec<f32>> = std::fs::read_to_string(&csv)
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    let arr = nhpatch::io::npy::read(&npy).unwrap();
    assert_eq!((rows.len(), arr.shape.clone()), (5, vec![5, 128]));
    for (r, row) in rows.iter().enumerate() {
        assert_eq!(row.as_slice(), &arr.data[r * 128..(r + 1) * 128], "row {r}");
        let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "descriptors are L2-normalised");
    }
}

#[test]
fn bad_invocations_fail_cleanly_and_write_nothing() {
    let d = dir("bad");
    let (unet, hardnet) = (d.join("unet.safetensors"), d.join("hardnet.safetensors"));
    ok(&["init", "--model", "unet", "--out", s(&unet)]);
    ok(&["init", "--model", "hardnet", "--out", s(&hardnet)]);
    let strip = d.join("strip.png");
    write_strip(&strip, 2, 32);
    let out = d.join("out.npy");

    let e = fails(&["describe", "--weights", s(&unet), "--input", s(&strip), "--output", s(&out)]);
    assert!(e.contains("unet.safetensors") && e.contains("not a HardNet"), "{e}");
    let e = fails(&["denoise", "--weights", s(&hardnet), "--input", s(&strip), "--output", s(&out)]);
    assert!(e.contains("hardnet.safetensors") && e.contains("not a denoiser"), "{e}");
    let e = fails(&["denoise", "--weights", s(&unet), "--input", s(&d.join("missing.png")), "--output", s(&out)]);
    assert!(e.contains("missing.png"), "{e}");
    let junk = d.join("junk.npy");
    std::fs::write(&junk, b"\x93NUMPY\x01\x00garbage").unwrap();
    let e = fails(&["denoise", "--weights", s(&unet), "--input", s(&junk), "--output", s(&out)]);
    assert!(e.contains("junk.npy"), "{e}");
    let e = fails(&["denoise", "--weights", s(&unet), "--input", s(&strip), "--output", s(&d.join("out.csv"))]);
    assert!(e.contains("out.csv") && e.contains(".npy or .png"), "{e}");
    let trunc = d.join("trunc.safetensors");
    std::fs::write(&trunc, &std::fs::read(&unet).unwrap()[..300]).unwrap();
    let e = fails(&["denoise", "--weights", s(&trunc), "--input", s(&strip), "--output", s(&out)]);
    assert!(e.contains("trunc.safetensors"), "{e}");
    let e = fails(&["denoise", "--weights", s(&unet), "--input", s(&strip), "--output", s(&d.join("no/such/dir.npy"))]);
    assert!(e.contains("dir.npy"), "{e}");
    assert!(!fails(&["denoise", "--frobnicate"]).is_empty());

    // Nothing but the inputs is left: no output, no temporary file.
    let mut names: Vec<String> =
        std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["hardnet.safetensors", "junk.npy", "strip.png", "trunc.safetensors", "unet.safetensors"]);
}

#[test]
fn kernels_lists_the_used_kernel_and_measures_the_fma_peak() {
    let out = ok(&["kernels", "--peak"]);
    for precision in ["f32 ", "int8 ", "bf16 "] {
        let used = out.lines().filter(|l| l.starts_with(precision) && l.ends_with("(used)")).count();
        assert_eq!(used, 1, "{precision}: {out}");
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        let peak: f64 = out
            .lines()
            .find(|l| l.starts_with("FP32 FMA peak"))
            .and_then(|l| l.split(": ").nth(1)?.split(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no peak line in {out}"));
        // One core of any AVX2 CPU: a few to a few hundred GFLOP/s. A folded-away loop reads as millions.
        assert!((2.0..2000.0).contains(&peak), "implausible FMA peak {peak} GFLOP/s");
    }
}

#[test]
fn bench_times_the_default_recipes_step_and_refuses_a_loss_the_model_cannot_train() {
    let line = ok(&[
        "bench",
        "--model",
        "hardnet",
        "--variant",
        "original",
        "--mode",
        "train",
        "--loss",
        "hardnet",
        "--batch",
        "4",
        "--seconds",
        "0.1",
        "--threads",
        "1",
    ]);
    assert!(line.contains("batch 4 threads 1") && line.contains("pairs/s (median of 5"), "{line}");
    let line =
        ok(&["bench", "--model", "hardnet", "--mode", "train", "--batch", "2", "--seconds", "0.1", "--dropout", "0"]);
    assert!(line.contains("triplets/s (median of 5"), "{line}");
    let e = fails(&["bench", "--model", "unet", "--mode", "train", "--dropout", "0.1", "--seconds", "0.1"]);
    assert!(e.contains("--dropout applies to HardNet training only"), "{e}");
    let e = fails(&["bench", "--model", "unet", "--mode", "train", "--loss", "hardnet", "--seconds", "0.1"]);
    assert!(e.contains("unet does not train with the hardnet loss"), "{e}");
    let e = fails(&["bench", "--model", "hardnet", "--mode", "train", "--loss", "nonsense"]);
    assert!(e.contains("unknown loss 'nonsense'"), "{e}");
}
