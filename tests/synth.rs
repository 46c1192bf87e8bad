//! The synthetic N-HPatches generator: determinism, layout, that
//! corresponding patches look alike, the noise and jitter calibrations, and
//! the keypoint detector on an image with known blobs.

use nhpatch::data::splits::Splits;
use nhpatch::data::synth::detect::{DetectParams, detect, orientation};
use nhpatch::data::synth::geometry::{jitter, overlap};
use nhpatch::data::synth::image::Image;
use nhpatch::data::synth::{SynthConfig, generate, make_sequence, preview::write_preview};
use nhpatch::data::{IMAGES, family};
use nhpatch::io::PATCH_LEN;
use nhpatch::io::png::read_strip;
use nhpatch::rng::Rng;
use std::path::{Path, PathBuf};

fn small(seed: u64) -> SynthConfig {
    SynthConfig { sequences: 4, patches: 24, seed, width: 320, height: 240, ..SynthConfig::default() }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nhpatch-synth-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Every file under `dir` (one level of sequence folders), sorted, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            for f in std::fs::read_dir(&p).unwrap() {
                let f = f.unwrap().path();
                let rel = f.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&f).unwrap()));
            }
        } else {
            out.push((p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn same_seed_same_bytes_and_the_layout_of_n_hpatches() {
    let (a, b) = (tmp("a"), tmp("b"));
    let summary = generate(&small(5), &a).unwrap();
    // Generating again, on a pool of a different size, gives the same bytes.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| generate(&small(5), &b)).unwrap();
    let (fa, fb) = (files(&a), files(&b));
    assert_eq!(fa.len(), 4 * 32 + 1);
    assert!(fa == fb, "same seed, same files");

    assert_eq!(summary.sequences, ["i_synth_000", "i_synth_001", "v_synth_000", "v_synth_001"]);
    for seq in &summary.sequences {
        for img in IMAGES {
            for suffix in ["", "_noise"] {
                let s = read_strip(&a.join(seq).join(format!("{img}{suffix}.png"))).unwrap();
                assert_eq!((s.width, s.count), (32, 24), "{seq}/{img}{suffix}");
            }
        }
    }
    let splits = Splits::load(&summary.splits).unwrap();
    let sa = splits.get("a", &summary.splits).unwrap();
    for list in [&sa.train, &sa.test] {
        assert!(list.iter().any(|n| n.starts_with("i_")) && list.iter().any(|n| n.starts_with("v_")), "{sa:?}");
    }
    assert_eq!(sa.train.len() + sa.test.len(), 4);
    let full = splits.get("full", &summary.splits).unwrap();
    assert!(full.train.is_empty());
    assert_eq!(full.test.len(), 4);
    for name in sa.train.iter().chain(&sa.test).chain(&full.test) {
        assert!(a.join(name).join("ref.png").is_file(), "{name} listed but missing");
    }

    let preview = a.join("preview.png");
    write_preview(&a, &summary.sequences, 2, 5, &preview).unwrap();
    let shown = nhpatch::io::png::read_gray(&preview).unwrap();
    // 7 columns of 64 px cells with 4 px gaps; 4 sequences x 2 classes of two 64 px rows.
    assert_eq!((shown.width, shown.height), (7 * 68 + 4, 8 * (2 * 64 + 1 + 4) + 4));
    assert!(shown.pixels.iter().filter(|&&v| v != 255).count() > shown.pixels.len() / 2);
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}

#[test]
fn another_seed_gives_other_patches_and_bad_configs_are_errors() {
    let one = make_sequence(&small(5), 2).unwrap();
    let other = make_sequence(&small(6), 2).unwrap();
    assert_eq!(one.name, "v_synth_000");
    assert_ne!(one.clean[0], other.clean[0]);
    assert!(make_sequence(&small(5), 4).is_err());
    assert!(generate(&SynthConfig { sequences: 3, ..small(0) }, &tmp("bad")).is_err());
    assert!(generate(&SynthConfig { patches: 0, ..small(0) }, &tmp("bad")).is_err());
}

/// Zero-mean, unit-norm copy of one patch.
fn normalised(p: &[u8]) -> Vec<f64> {
    let m = p.iter().map(|&v| v as f64).sum::<f64>() / p.len() as f64;
    let c: Vec<f64> = p.iter().map(|&v| v as f64 - m).collect();
    let n = c.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-9);
    c.into_iter().map(|v| v / n).collect()
}

fn ncc(a: &[u8], b: &[u8]) -> f64 {
    normalised(a).iter().zip(normalised(b)).map(|(x, y)| x * y).sum()
}

fn patch(strip: &[u8], i: usize) -> &[u8] {
    &strip[i * PATCH_LEN..(i + 1) * PATCH_LEN]
}

#[test]
fn corresponding_patches_are_alike_and_easier_families_more_so() {
    let cfg = SynthConfig { sequences: 4, patches: 60, seed: 11, width: 320, height: 240, ..SynthConfig::default() };
    // Mean correlation with the reference: [family][positive or random other patch].
    let mut sums = [[0f64; 2]; 4];
    let mut counts = [0usize; 4];
    for index in [0, 2] {
        let seq = make_sequence(&cfg, index).unwrap();
        let n = cfg.patches;
        for img in 1..16 {
            let f = family(img);
            for i in 0..n {
                let r = patch(&seq.clean[0], i);
                sums[f][0] += ncc(r, patch(&seq.clean[img], i));
                sums[f][1] += ncc(r, patch(&seq.clean[img], (i + 1 + (i * 7 + img) % (n - 1)) % n));
                counts[f] += 1;
            }
        }
    }
    let mean = |f: usize, k: usize| sums[f][k] / counts[f] as f64;
    for f in 1..4 {
        assert!(mean(f, 0) > mean(f, 1) + 0.3, "family {f}: positive {} vs random {}", mean(f, 0), mean(f, 1));
    }
    assert!(mean(1, 0) > mean(2, 0) && mean(2, 0) > mean(3, 0), "e > h > t: {sums:?}");
}

#[test]
fn noise_grows_from_easy_to_tough() {
    let seq = make_sequence(&small(3), 1).unwrap();
    let mut rms = [0f64; 4];
    for img in 0..16 {
        let d: f64 = seq.clean[img].iter().zip(&seq.noisy[img]).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
        rms[family(img)] += d / seq.clean[img].len() as f64;
    }
    let rms: Vec<f64> = rms.iter().enumerate().map(|(f, s)| (s / if f == 0 { 1.0 } else { 5.0 }).sqrt()).collect();
    assert!(rms.windows(2).all(|w| w[0] < w[1]), "{rms:?}");
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

#[test]
fn jitter_overlap_matches_hpatches() {
    let mut rng = Rng::new(1);
    let med: Vec<f64> = (1..4).map(|f| median((0..4000).map(|_| overlap(&jitter(&mut rng, f))).collect())).collect();
    assert!((med[0] - 0.85).abs() < 0.025, "easy {med:?}");
    assert!((med[1] - 0.72).abs() < 0.025, "hard {med:?}");
    assert!(med[2] < med[1] - 0.07 && med[2] > 0.5, "tough {med:?}");
    // The jitters the generator actually used have the same ordering.
    let seq = make_sequence(&small(2), 0).unwrap();
    let used: Vec<f64> = [1, 6, 11].iter().map(|&i| median(seq.jitters[i].iter().map(overlap).collect())).collect();
    assert!(used[0] > used[1] && used[1] > used[2], "{used:?}");
    assert!(seq.jitters[0].iter().all(|j| overlap(j) > 0.999_999));
}

#[test]
fn detector_finds_known_blobs_at_their_scale() {
    let (w, h) = (200, 160);
    // Gaussian blobs (x, y, std, sign) on a flat background.
    let blobs = [(40.0, 40.0, 3.0, 1.0), (120.0, 50.0, 5.0, -1.0), (70.0, 110.0, 4.0, 1.0), (160.0, 115.0, 6.0, 1.0)];
    let mut img = Image::filled(w, h, 100.0);
    for y in 0..h {
        for x in 0..w {
            for &(bx, by, s, sign) in &blobs {
                let d2 = (x as f32 - bx).powi(2) + (y as f32 - by).powi(2);
                img.px[y * w + x] += sign * 120.0 * (-d2 / (2.0 * s * s)).exp();
            }
        }
    }
    let kps = detect(&img, &DetectParams::default());
    for &(bx, by, s, _) in &blobs {
        let hit = kps.iter().find(|k| (k.x - bx).hypot(k.y - by) < 1.5 && k.sigma > s / 1.4 && k.sigma < s * 1.4);
        assert!(hit.is_some(), "no keypoint for the blob at ({bx}, {by}) of scale {s}: {kps:?}");
    }
    // The strongest keypoints are the blobs themselves, not noise.
    for k in kps.iter().take(4) {
        assert!(blobs.iter().any(|b| (k.x - b.0).hypot(k.y - b.1) < 1.5), "{k:?}");
    }
    // Orientation follows the gradient of a ramp.
    for deg in [0f32, 60.0, 200.0] {
        let a = deg.to_radians();
        let ramp = Image {
            w: 41,
            h: 41,
            px: (0..41 * 41).map(|i| ((i % 41) as f32 * a.cos() + (i / 41) as f32 * a.sin()) * 2.0 + 100.0).collect(),
        };
        let o = orientation(&ramp, 20.0, 20.0, 3.0);
        let diff = (o - a).rem_euclid(std::f32::consts::TAU);
        assert!(diff.min(std::f32::consts::TAU - diff) < 0.1, "ramp at {deg} deg gave {}", o.to_degrees());
    }
}
