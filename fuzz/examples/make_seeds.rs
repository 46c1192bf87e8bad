//! Writes the seed corpora under `fuzz/seeds/<target>/` with nhpatch's own
//! writers: for each reader a small valid file plus an edge case or two; for
//! `gemm` and `conv` (which decode their input byte by byte into a problem)
//! a few hand-picked shapes.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example make_seeds`

use nhpatch::data::pack::PackWriter;
use nhpatch::data::sampler::SamplerState;
use nhpatch::data::splits::{Split, Splits};
use nhpatch::eval::Catalog;
use nhpatch::eval::descriptors::{Descriptors, SeqDescs, write_dir};
use nhpatch::eval::tasks::{Pair, PatchRef, RefPatch, Tasks, file_names};
use nhpatch::io::png::{GrayImage, write_gray, write_strip};
use nhpatch::optim::adam::AdamState;
use nhpatch::optim::sgd::SgdState;
use nhpatch::optim::{OptimizerConfig, OptimizerState};
use nhpatch::train::checkpoint::{Checkpoint, CheckpointMeta};
use nhpatch::train::config::{InputKind, LrSchedule, TrainConfig};
use nhpatch::train::metrics::{EpochMetrics, MapScores};
use nhpatch::weights::{Tensor, WeightsFile};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

type Res = Result<(), Box<dyn std::error::Error>>;

fn seed_dir(root: &Path, target: &str) -> Res {
    let dir = root.join(target);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(())
}

fn put(root: &Path, target: &str, name: &str, bytes: &[u8]) -> Res {
    std::fs::write(root.join(target).join(format!("seed-{name}")), bytes)?;
    Ok(())
}

fn pixels(n: usize, mul: usize) -> Vec<u8> {
    (0..n).map(|i| (i * mul % 251) as u8).collect()
}

fn gemm(root: &Path) -> Res {
    // Bytes, as the target reads them: m, k, n (mod 48), alpha (mod 4: 1, -0.5,
    // 2, 0), beta (mod 3: 0, 1, 0.5), then for A, B and C a padding (mod 4) and
    // a layout bit (0 row-major, 1 column-major), then the values of A, B, C.
    seed_dir(root, "gemm")?;
    let with_values = |head: &[u8], n: usize| {
        let mut bytes = head.to_vec();
        bytes.extend(pixels(n, 37));
        bytes
    };
    // Row-major 4x5 * 5x3, alpha 1, beta 0 (C prefilled with NaN).
    put(root, "gemm", "4x5x3-rowmajor", &with_values(&[4, 5, 3, 0, 0, 0, 0, 0, 0, 0, 0], 20 + 15 + 12 + 3))?;
    // Column-major with padding everywhere, alpha -0.5, beta 0.5.
    put(root, "gemm", "7x9x6-colmajor-padded", &with_values(&[7, 9, 6, 1, 2, 1, 1, 3, 1, 2, 1], 300))?;
    // Sizes past the kernels' register blocks, mixed layouts, alpha 2, beta 1.
    put(root, "gemm", "17x33x13-mixed", &with_values(&[17, 33, 13, 2, 1, 0, 0, 1, 1, 3, 0], 1500))?;
    // Empty inner dimension (C = beta C) and alpha 0.
    put(root, "gemm", "5x0x4-alpha0", &with_values(&[5, 0, 4, 3, 2, 1, 0, 0, 1, 2, 0], 40))?;
    Ok(())
}

fn conv(root: &Path) -> Res {
    // Bytes, as the target reads them: cin, cout (mod 4), kh, kw (mod 6),
    // stride (mod 4), padding top, left, bottom, right (mod 4), bias (mod 2),
    // then h, w (mod 12) and the batch size n (mod 4).
    seed_dir(root, "conv")?;
    // 3x3, stride 1, padding 1, bias: the shape-preserving layer.
    put(root, "conv", "3x3-same-bias", &[1, 2, 3, 3, 1, 1, 1, 1, 1, 1, 8, 8, 2])?;
    // 5x3, stride 2, asymmetric padding, no bias, non-square input.
    put(root, "conv", "5x3-stride2-asymmetric", &[3, 3, 5, 3, 2, 0, 2, 3, 1, 0, 11, 7, 1])?;
    // 1x1 on a 1x1 input, batch 3.
    put(root, "conv", "1x1-pointwise", &[2, 3, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 3])?;
    // Construction errors: a kernel larger than the padded input, and stride 0.
    put(root, "conv", "kernel-larger-than-input", &[1, 1, 5, 5, 1, 0, 0, 0, 0, 0, 3, 3, 1])?;
    put(root, "conv", "stride-0", &[1, 1, 3, 3, 0, 1, 1, 1, 1, 0, 6, 6, 1])?;
    // Padding wider than the image: some kernel columns never meet a pixel
    // (regressions, first found by this target, in `ops::im2col`).
    put(root, "conv", "pad-wider-than-image-a", &[1, 3, 3, 5, 3, 2, 0, 2, 3, 1, 1, 0x3f, 1])?;
    put(root, "conv", "pad-wider-than-image-b", &[2, 2, 2, 3, 1, 1, 0x9a, 0, 0, 1, 1, 1, 3])?;
    Ok(())
}

fn png(root: &Path, scratch: &Path) -> Res {
    seed_dir(root, "png")?;
    let p = scratch.join("s.png");
    write_strip(&p, &pixels(2 * 32 * 32, 7))?;
    put(root, "png", "strip-2x32", &std::fs::read(&p)?)?;
    // A 6-pixel-wide strip of 3 patches: the resize path.
    write_gray(&p, &GrayImage { width: 6, height: 18, pixels: pixels(6 * 18, 13) })?;
    put(root, "png", "strip-3x6", &std::fs::read(&p)?)?;
    // Height not a multiple of the width: decodes, but is not a strip.
    write_gray(&p, &GrayImage { width: 4, height: 6, pixels: pixels(24, 3) })?;
    put(root, "png", "not-a-strip", &std::fs::read(&p)?)?;
    Ok(())
}

fn photo(root: &Path, scratch: &Path) -> Res {
    seed_dir(root, "photo")?;
    // A gray and a colour JPEG (baseline, 4:2:0 for colour) and a gray PNG.
    let (w, h) = (24usize, 16usize);
    let gray: Vec<u8> = (0..w * h).map(|i| ((i % w) * 10 + (i / w) * 3) as u8).collect();
    let rgb: Vec<u8> = gray.iter().flat_map(|&v| [v, 255 - v, v / 2]).collect();
    for (name, px, color) in
        [("gray-jpeg", &gray, jpeg_encoder::ColorType::Luma), ("rgb-jpeg", &rgb, jpeg_encoder::ColorType::Rgb)]
    {
        let p = scratch.join(format!("{name}.jpg"));
        jpeg_encoder::Encoder::new_file(&p, 80)?.encode(px, w as u16, h as u16, color)?;
        put(root, "photo", name, &std::fs::read(&p)?)?;
    }
    let p = scratch.join("g.png");
    write_gray(&p, &GrayImage { width: w, height: h, pixels: gray })?;
    put(root, "photo", "gray-png", &std::fs::read(&p)?)?;
    Ok(())
}

fn npy(root: &Path) -> Res {
    use nhpatch::io::npy::to_bytes_f32;
    seed_dir(root, "npy")?;
    let v: Vec<f32> = (0..2 * 32 * 32).map(|i| i as f32 * 0.25).collect();
    put(root, "npy", "patches-2x32x32", &to_bytes_f32(&[2, 32, 32], &v)?)?;
    put(root, "npy", "vector-3", &to_bytes_f32(&[3], &[1.0, -2.5, 3.0e7])?)?;
    put(root, "npy", "empty-0x4", &to_bytes_f32(&[0, 4], &[])?)?;
    Ok(())
}

fn safetensors(root: &Path) -> Res {
    use nhpatch::weights::to_bytes;
    seed_dir(root, "safetensors")?;
    let mut tensors = BTreeMap::new();
    tensors.insert(
        "conv.weight".to_string(),
        Tensor { shape: vec![2, 1, 3, 3], data: (0..18).map(|i| i as f32).collect() },
    );
    tensors.insert("conv.bias".to_string(), Tensor { shape: vec![2], data: vec![0.5, -0.5] });
    let mut metadata = BTreeMap::new();
    metadata.insert("arch".to_string(), "dncnn".to_string());
    metadata.insert("format".to_string(), "pt".to_string());
    put(root, "safetensors", "two-tensors", &to_bytes(&WeightsFile { metadata, tensors })?)?;
    let mut tensors = BTreeMap::new();
    tensors.insert("scalar".to_string(), Tensor { shape: vec![], data: vec![1.0] });
    tensors.insert("empty".to_string(), Tensor { shape: vec![0, 3], data: vec![] });
    put(root, "safetensors", "scalar-and-empty", &to_bytes(&WeightsFile { metadata: BTreeMap::new(), tensors })?)?;
    put(root, "safetensors", "nothing", &to_bytes(&WeightsFile::default())?)?;
    Ok(())
}

fn pack(root: &Path, scratch: &Path) -> Res {
    // The smallest valid pack (one sequence, one patch position) is ~36 KB:
    // the table, a page of alignment and two 16 KB blocks.
    seed_dir(root, "pack")?;
    let p = scratch.join("s.pack");
    let mut w = PackWriter::create(&p, &[("v_seed".to_string(), 1)], 0x1234)?;
    w.write_sequence(&pixels(16 * 1024, 5), &pixels(16 * 1024, 11))?;
    w.finish()?;
    put(root, "pack", "one-patch", &std::fs::read(&p)?)?;
    // Its header and table alone: the truncated-pack path.
    put(root, "pack", "header-only", &std::fs::read(&p)?[..4096])?;
    Ok(())
}

fn splits(root: &Path) -> Res {
    seed_dir(root, "splits")?;
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut all = BTreeMap::new();
    all.insert("a".to_string(), Split { name: "a".into(), train: names(&["v_a", "i_b"]), test: names(&["v_c"]) });
    all.insert("view".to_string(), Split { name: "view".into(), train: vec![], test: names(&["v_a", "v_c"]) });
    put(root, "splits", "a-and-view", Splits { splits: all }.to_json().as_bytes())?;
    put(root, "splits", "empty", Splits { splits: BTreeMap::new() }.to_json().as_bytes())?;
    Ok(())
}

fn tasks(root: &Path, scratch: &Path) -> Res {
    // Same catalog as the target; the first byte picks which file the input replaces.
    seed_dir(root, "tasks")?;
    let catalog = Catalog::new(vec!["v_a".into(), "i_b".into(), "v_c".into()], vec![5, 2, 1])?;
    let r = |seq, t, idx| PatchRef { seq, t, idx };
    let tasks = Tasks {
        pos: vec![Pair { a: r(0, 0, 1), b: r(0, 3, 1) }, Pair { a: r(1, 2, 0), b: r(1, 5, 0) }],
        neg_intra: vec![Pair { a: r(0, 0, 1), b: r(0, 3, 2) }, Pair { a: r(1, 1, 0), b: r(1, 4, 1) }],
        neg_inter: vec![Pair { a: r(0, 0, 1), b: r(1, 3, 0) }, Pair { a: r(2, 2, 0), b: r(0, 1, 4) }],
        queries: vec![RefPatch { seq: 0, idx: 0 }, RefPatch { seq: 1, idx: 1 }],
        distractors: vec![RefPatch { seq: 0, idx: 2 }, RefPatch { seq: 2, idx: 0 }],
    };
    let dir = scratch.join("tasks");
    tasks.write(&dir, "f", &catalog)?;
    for (i, name) in file_names("f").iter().enumerate() {
        let mut bytes = vec![i as u8];
        bytes.extend(std::fs::read(dir.join(name))?);
        put(root, "tasks", &format!("{i}-{name}"), &bytes)?;
    }
    // Header only: an empty but valid positives file (unbalanced against the others).
    Tasks::default().write(&dir, "f", &catalog)?;
    let mut bytes = vec![0u8];
    bytes.extend(std::fs::read(dir.join(&file_names("f")[0]))?);
    put(root, "tasks", "0-header-only", &bytes)?;
    Ok(())
}

fn descriptors(root: &Path, scratch: &Path) -> Res {
    // First byte: delimiter (high bit: ';') and row count (low 6 bits).
    seed_dir(root, "descriptors")?;
    let (count, dim) = (3, 4);
    let data: Vec<f32> = (0..16 * count * dim).map(|i| (i as f32 - 40.0) / 7.0).collect();
    let descs = Descriptors { dim, seqs: vec![SeqDescs { name: "v_a".into(), count, data }] };
    for (delim, flag, tag) in [(',', 0u8, "comma"), (';', 0x80, "semicolon")] {
        let dir = scratch.join(format!("desc-{tag}"));
        write_dir(&dir, &descs, delim)?;
        let first = std::fs::read_dir(dir.join("v_a"))?.next().ok_or("no descriptor file written")??;
        let mut bytes = vec![flag | count as u8];
        bytes.extend(std::fs::read(first.path())?);
        put(root, "descriptors", &format!("3x4-{tag}"), &bytes)?;
    }
    Ok(())
}

fn checkpoint(root: &Path, scratch: &Path) -> Res {
    seed_dir(root, "checkpoint")?;
    let config = |optimizer| TrainConfig {
        arch: nhpatch::models::Arch::Dncnn,
        epochs: 3,
        batch: 8,
        epoch_items: 64,
        optimizer,
        loss: nhpatch::loss::LossKind::L1,
        margin: 1.0,
        input: InputKind::Noisy,
        val_items: 16,
        eval_every_epoch: false,
        seed: 7,
        split: "a".into(),
        noise_seed: 11,
        lr_schedule: LrSchedule::Linear,
        augment: true,
        lr_span: Some((1, 4)),
        denoise_weight: Some(0.5),
        sos_weight: None,
        distill_weight: None,
        perceptual_weight: None,
        batch_sequences: None,
        dropout: None,
    };
    let meta = |optimizer| CheckpointMeta {
        epochs_done: 1,
        opt_step: 8,
        sampler: SamplerState { epoch: 1, position: 0, rng: 42 },
        dropout_rng: 9,
        metrics: vec![EpochMetrics {
            epoch: 1,
            train_loss: 0.5,
            val_loss: Some(0.25),
            map: Some(MapScores { verification: 0.8, matching: 0.3, retrieval: 0.5 }),
            seconds: 1.5,
            items_per_second: 40.0,
        }],
        config: config(optimizer),
    };
    let params: Vec<f32> = (0..12).map(|i| i as f32 / 3.0).collect();
    let p = scratch.join("checkpoint.safetensors");
    let sgd = Checkpoint {
        meta: meta(OptimizerConfig::named("sgd", 0.01)?),
        params: params.clone(),
        optimizer: OptimizerState::Sgd(SgdState { momentum_buffer: vec![0.125; 12], step: 8 }),
    };
    sgd.save(&p)?;
    put(root, "checkpoint", "sgd", &std::fs::read(&p)?)?;
    let adam = Checkpoint {
        meta: meta(OptimizerConfig::named("adam", 0.001)?),
        params,
        optimizer: OptimizerState::Adam(AdamState { exp_avg: vec![0.5; 12], exp_avg_sq: vec![0.25; 12], step: 8 }),
    };
    adam.save(&p)?;
    put(root, "checkpoint", "adam", &std::fs::read(&p)?)?;
    Ok(())
}

fn main() -> Res {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let scratch = std::env::temp_dir().join(format!("nhpatch-make-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    gemm(&root)?;
    conv(&root)?;
    png(&root, &scratch)?;
    photo(&root, &scratch)?;
    npy(&root)?;
    safetensors(&root)?;
    pack(&root, &scratch)?;
    splits(&root)?;
    tasks(&root, &scratch)?;
    descriptors(&root, &scratch)?;
    checkpoint(&root, &scratch)?;
    std::fs::remove_dir_all(&scratch)?;
    println!("seeds written under {}", root.display());
    Ok(())
}
