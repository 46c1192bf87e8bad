//! `nhpatch synth --images`: N-HPatches-style datasets from photographs.
//! The "photographs" here are procedural scenes saved as PNG and JPEG (gray
//! and colour), so the test needs no image files of its own.

mod common;

use common::cli;
use nhpatch::data::split::{DatasetSplit, Validation};
use nhpatch::data::synth::{Source, SynthConfig, generate, make_sequence, scene};
use nhpatch::io::photo;
use nhpatch::io::png::{GrayImage, read_strip, write_gray};
use nhpatch::rng::Rng;
use std::path::{Path, PathBuf};

/// A procedural scene of `w x h` as 8-bit gray.
fn picture(seed: u64, w: usize, h: usize) -> Vec<u8> {
    let img = scene::render(&mut Rng::new(seed), w, h);
    img.px.iter().map(|&v| v.round().clamp(0.0, 255.0) as u8).collect()
}

fn write_jpeg(path: &Path, px: &[u8], w: usize, h: usize, color: jpeg_encoder::ColorType) {
    let enc = jpeg_encoder::Encoder::new_file(path, 92).unwrap();
    enc.encode(px, w as u16, h as u16, color).unwrap();
}

/// Five photographs: two gray PNGs, a gray JPEG, a colour JPEG (a gray
/// scene in the green channel, tinted), and a colour-free file that must be ignored.
fn photo_folder(name: &str) -> cli::TempDir {
    let d = cli::dir(name);
    let (w, h) = (480, 360);
    for (i, stem) in ["harbour", "market"].iter().enumerate() {
        let img = GrayImage { width: w, height: h, pixels: picture(i as u64, w, h) };
        write_gray(&d.join(format!("{stem}.png")), &img).unwrap();
    }
    write_jpeg(&d.join("old town.jpg"), &picture(7, w, h), w, h, jpeg_encoder::ColorType::Luma);
    let g = picture(8, w, h);
    let rgb: Vec<u8> = g.iter().flat_map(|&v| [v / 2 + 60, v, v / 3]).collect();
    write_jpeg(&d.join("Quay.JPEG"), &rgb, w, h, jpeg_encoder::ColorType::Rgb);
    std::fs::write(d.join("notes.txt"), "not a photograph").unwrap();
    d
}

fn config(photos: Vec<PathBuf>) -> SynthConfig {
    SynthConfig { patches: 40, width: 320, height: 240, seed: 3, ..SynthConfig::photos(photos) }
}

/// Every file under `dir` and one level below, sorted, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut walk = vec![dir.to_path_buf()];
    while let Some(d) = walk.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk.push(p);
            } else {
                out.push((p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn jpeg_decodes_to_the_luma_it_was_encoded_from() {
    let d = cli::dir("photo-jpeg");
    let (w, h) = (200, 120);
    let px = picture(1, w, h);
    write_jpeg(&d.join("a.jpg"), &px, w, h, jpeg_encoder::ColorType::Luma);
    let back = photo::read_gray(&d.join("a.jpg")).unwrap();
    assert_eq!((back.width, back.height), (w, h));
    let mae = px.iter().zip(&back.pixels).map(|(&a, &b)| (a as f64 - b as f64).abs()).sum::<f64>() / px.len() as f64;
    assert!(mae < 2.0, "quality-92 JPEG round trip: MAE {mae}");
    // The extension does not decide the kind: a PNG named .jpg still reads.
    write_gray(&d.join("png.jpg"), &GrayImage { width: w, height: h, pixels: px.clone() }).unwrap();
    assert_eq!(photo::read_gray(&d.join("png.jpg")).unwrap().pixels, px);
}

#[test]
fn photographs_give_a_deterministic_dataset_named_after_them() {
    let src = photo_folder("photo-src");
    let photos = photo::list(&src).unwrap();
    let names: Vec<String> = photos.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["Quay.JPEG", "harbour.png", "market.png", "old town.jpg"]);
    let cfg = config(photos);
    let (a, b) = (cli::dir("photo-a"), cli::dir("photo-b"));
    let summary = generate(&cfg, &a).unwrap();
    assert_eq!(summary.sequences, ["i_Quay", "v_harbour", "i_market", "v_old-town"]);
    assert!(summary.patches.iter().all(|&n| (10..=40).contains(&n)), "{:?}", summary.patches);
    // Same bytes on a one-thread pool.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| generate(&cfg, &b)).unwrap();
    assert!(files(&a) == files(&b), "same photographs and seed, same files");
    // Another seed crops elsewhere.
    let other = make_sequence(&SynthConfig { seed: 4, ..cfg.clone() }, 0).unwrap();
    assert_ne!(other.clean[0], make_sequence(&cfg, 0).unwrap().clean[0]);

    // A reference patch and its e1 twin (little jitter) look alike.
    for (seq, &n) in summary.sequences.iter().zip(&summary.patches) {
        let r = read_strip(&a.join(seq).join("ref.png")).unwrap();
        let e1 = read_strip(&a.join(seq).join("e1.png")).unwrap();
        assert_eq!((r.count, e1.count), (n, n));
        let ncc: Vec<f64> =
            (0..n).map(|i| ncc(&r.patches[i * 1024..][..1024], &e1.patches[i * 1024..][..1024])).collect();
        let mut sorted = ncc.clone();
        sorted.sort_by(f64::total_cmp);
        assert!(sorted[n / 2] > 0.5, "{seq}: median NCC of ref and e1 {}", sorted[n / 2]);
    }

    // The dataset reads as any N-HPatches copy, with a validation sequence carved from training.
    let ds = DatasetSplit::open_with(&a, "a", 0, Validation::Sequences(1)).unwrap();
    assert_eq!(ds.val.len(), 1);
}

/// Names in `dir` that a build left behind (its staging folders).
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial"))
        .collect()
}

#[test]
fn a_failed_build_leaves_nothing_and_an_existing_dataset_as_it_was() {
    let src = photo_folder("photo-atomic");
    let good = photo::list(&src).unwrap();
    // The fifth photograph is cut off a third of the way in: it fails to
    // decode only when its sequence is made, after others are written.
    let bad_dir = cli::dir("photo-atomic-bad");
    let bytes = std::fs::read(src.join("old town.jpg")).unwrap();
    std::fs::write(bad_dir.join("z-cut.jpg"), &bytes[..bytes.len() / 3]).unwrap();
    let mut bad = good.clone();
    bad.push(bad_dir.join("z-cut.jpg"));

    // A new folder under parents that do not exist yet: none of them is left.
    let nested = src.join("new").join("deeper").join("out");
    let err = generate(&config(bad.clone()), &nested).unwrap_err().to_string();
    assert!(err.contains("z-cut.jpg"), "{err}");
    assert!(!src.join("new").exists(), "the parents this build made are removed");
    assert!(leftovers(&src).is_empty(), "{:?}", leftovers(&src));

    // An existing dataset, with a file of the user's beside it, survives a failed rebuild byte for byte.
    let ds = src.join("ds");
    generate(&config(good.clone()), &ds).unwrap();
    std::fs::write(ds.join("notes.md"), "mine").unwrap();
    let before = files(&ds);
    assert!(generate(&config(bad), &ds).is_err());
    assert!(files(&ds) == before, "a failed rebuild changed the dataset");
    assert!(leftovers(&src).is_empty(), "{:?}", leftovers(&src));

    // A rebuild that succeeds replaces the sequences and splits and keeps the rest.
    let cfg4 = SynthConfig { seed: 4, ..config(good) };
    generate(&cfg4, &ds).unwrap();
    let fresh = src.join("fresh");
    generate(&cfg4, &fresh).unwrap();
    let mut rebuilt = files(&ds);
    let notes = rebuilt.iter().position(|(n, _)| n == "notes.md").expect("the user's file stays");
    rebuilt.remove(notes);
    assert!(rebuilt == files(&fresh), "a rebuild into a dataset gives a fresh build's files");
    assert!(rebuilt != before, "seed 4 gives other files");

    // A file where the folder should be: refused before any work, the file untouched.
    let file = src.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let err = generate(&cfg4, &file).unwrap_err().to_string();
    assert!(err.contains("a-file") && err.contains("not a folder"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

fn ncc(a: &[u8], b: &[u8]) -> f64 {
    let norm = |p: &[u8]| {
        let m = p.iter().map(|&v| v as f64).sum::<f64>() / p.len() as f64;
        let c: Vec<f64> = p.iter().map(|&v| v as f64 - m).collect();
        let n = c.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-9);
        c.into_iter().map(move |v| v / n)
    };
    norm(a).zip(norm(b)).map(|(x, y)| x * y).sum()
}

#[test]
fn the_cli_builds_from_a_folder_and_refuses_bad_photographs() {
    let src = photo_folder("photo-cli");
    let out = src.join("out");
    let o = out.to_str().unwrap();
    let stdout =
        cli::ok(&["synth", "--images", src.to_str().unwrap(), "--out", o, "--patches", "24", "--threads", "1"]);
    assert!(stdout.contains("wrote 4 sequences"), "{stdout}");
    assert!(out.join("splits.json").exists() && out.join("v_old-town").join("t5_noise.png").exists());

    // A truncated JPEG: the file and the problem named, non-zero exit, no panic.
    let bytes = std::fs::read(src.join("old town.jpg")).unwrap();
    std::fs::write(src.join("broken.jpg"), &bytes[..bytes.len() / 3]).unwrap();
    let out2 = src.join("out2");
    let err = cli::fails(&["synth", "--images", src.to_str().unwrap(), "--out", out2.to_str().unwrap()]);
    assert!(err.contains("broken.jpg") && err.contains("JPEG"), "{err}");
    assert!(!out2.exists() && leftovers(&src).is_empty(), "a failed build leaves no folder");
    std::fs::remove_file(src.join("broken.jpg")).unwrap();

    // Not a photograph behind a photograph's extension.
    std::fs::write(src.join("fake.png"), "hello").unwrap();
    let err = cli::fails(&["synth", "--images", src.to_str().unwrap(), "--out", out2.to_str().unwrap()]);
    assert!(err.contains("fake.png") && err.contains("not a photograph"), "{err}");
    std::fs::remove_file(src.join("fake.png")).unwrap();

    // Too small to cut patches from.
    write_gray(&src.join("tiny.png"), &GrayImage { width: 40, height: 300, pixels: vec![9; 40 * 300] }).unwrap();
    let err = cli::fails(&["synth", "--images", src.to_str().unwrap(), "--out", out2.to_str().unwrap()]);
    assert!(err.contains("tiny.png") && err.contains("too small"), "{err}");
    std::fs::remove_file(src.join("tiny.png")).unwrap();

    // Two files giving one sequence name.
    std::fs::copy(src.join("market.png"), src.join("market.jpg")).unwrap();
    let err = cli::fails(&["synth", "--images", src.to_str().unwrap(), "--out", out2.to_str().unwrap()]);
    assert!(err.contains("market.png") && err.contains("market.jpg"), "{err}");

    // A folder without photographs, and one that does not exist.
    let empty = cli::dir("photo-empty");
    let err = cli::fails(&["synth", "--images", empty.to_str().unwrap(), "--out", out2.to_str().unwrap()]);
    assert!(err.contains("no .png, .jpg or .jpeg"), "{err}");
    let err = cli::fails(&["synth", "--images", empty.join("nope").to_str().unwrap(), "--out", o]);
    assert!(err.contains("nope"), "{err}");
    // A plain photograph gives fewer patches, but not fewer than a quarter.
    let flat = cli::dir("photo-flat");
    for stem in ["a", "b", "c", "d"] {
        write_gray(
            &flat.join(format!("{stem}.png")),
            &GrayImage { width: 300, height: 300, pixels: vec![120; 90_000] },
        )
        .unwrap();
    }
    let err = cli::fails(&["synth", "--images", flat.to_str().unwrap(), "--out", out2.to_str().unwrap()]);
    assert!(err.contains(".png") && err.contains("too few usable keypoints"), "{err}");
    assert!(!out2.exists(), "a failed build leaves no folder");
    assert!(matches!(config(vec![]).source, Source::Photos(ref p) if p.is_empty()));
    assert!(generate(&config(vec![]), &out2).is_err());
}
