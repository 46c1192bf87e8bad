//! Reduced-precision inference through the public API (`Network::calibrate`,
//! `set_precision`, `net::use_precision`, the weights file, the CLI and the
//! C ABI): int8 and bf16 track f32 on every model, give the same bits for
//! any thread count and batch, int8's calibration survives a save and load,
//! both keep every task's mAP within 0.005 of f32 with trained weights on a
//! small fixed dataset, and every misuse is a clear error.

mod common;

use common::cli::{dir, fails, maps, ok, s};
use nhpatch::models::PATCH_LEN;
use nhpatch::net::{LoadOptions, Network, default_calibration_patches, use_precision};
use nhpatch::rng::Rng;
use nhpatch::{Arch, Error, Int8Layers, Precision};

const ARCHS: [Arch; 4] = [Arch::Unet, Arch::Dncnn, Arch::HardNetBaseline, Arch::HardNetOriginal];

/// Patches with structure (smooth gradients plus noise), values 0..255.
fn patches(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut x = Vec::with_capacity(n * PATCH_LEN);
    for _ in 0..n {
        let (a, b, c) = (rng.uniform(-3.0, 3.0), rng.uniform(-3.0, 3.0), rng.uniform(60.0, 190.0));
        for i in 0..PATCH_LEN {
            let (y, xx) = ((i / 32) as f32, (i % 32) as f32);
            x.push((c + a * y + b * xx + rng.uniform(-20.0, 20.0)).clamp(0.0, 255.0));
        }
    }
    x
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn int8_tracks_f32_and_has_the_same_bits_for_any_threads_and_batch() {
    let calib = patches(96, 1);
    let x = patches(40, 2);
    for arch in ARCHS {
        let mut net = Network::init(arch, 3).unwrap();
        let f32_out = net.forward(&x).unwrap();
        assert!(matches!(net.set_precision(Precision::Int8), Err(Error::InvalidArgument(_))), "{arch}: no calibration");
        // Both choices of layers, whatever this CPU's int8 GEMM.
        for layers in [Int8Layers::All, Int8Layers::KeepWinograd] {
            net.calibrate_layers(&calib, layers).unwrap();
            net.set_precision(Precision::Int8).unwrap();
            let q = net.forward(&x).unwrap();
            let at = format!("{arch}, {}", layers.name());
            if arch.is_denoiser() {
                let mae = q.iter().zip(&f32_out).map(|(a, b)| (a - b).abs()).sum::<f32>() / q.len() as f32;
                let spread = f32_out.iter().map(|v| v.abs()).sum::<f32>() / q.len() as f32;
                // The bound (0.5 grey levels), and well under the output's own scale.
                assert!(mae < 0.5 && mae < 0.05 * spread, "{at}: int8 MAE {mae} against mean |output| {spread}");
            } else {
                // The baseline's descriptors are not normalised: the cosine, not the dot product.
                for (i, (a, b)) in q.chunks(128).zip(f32_out.chunks(128)).enumerate() {
                    let dot = |u: &[f32], v: &[f32]| u.iter().zip(v).map(|(p, q)| p * q).sum::<f32>();
                    let cos = dot(a, b) / (dot(a, a) * dot(b, b)).sqrt();
                    assert!(cos > 0.97, "{at}: patch {i} cosine {cos}");
                }
            }
            for threads in [1, 3] {
                let pool = nhpatch::threads::pool(threads).unwrap();
                assert!(same_bits(&pool.install(|| net.forward(&x)).unwrap(), &q), "{at}: {threads} threads");
            }
            // One patch alone, and a batch that pads to another workspace size.
            assert!(same_bits(&net.forward(&x[..PATCH_LEN]).unwrap(), &q[..net.model().out_len()]), "{at}: one patch");
            assert!(same_bits(&net.forward(&x[..5 * PATCH_LEN]).unwrap(), &q[..5 * net.model().out_len()]), "{at}");
            // Back to f32: the f32 bits again.
            net.set_precision(Precision::F32).unwrap();
            assert!(same_bits(&net.forward(&x).unwrap(), &f32_out), "{at}: f32 after int8");
        }
    }
}

#[test]
fn bf16_tracks_f32_needs_no_calibration_and_has_the_same_bits_for_any_threads_and_batch() {
    let x = patches(40, 12);
    for arch in ARCHS {
        let mut net = Network::init(arch, 5).unwrap();
        let f32_out = net.forward(&x).unwrap();
        net.set_precision(Precision::Bf16).unwrap();
        assert!(net.calibration().is_none());
        let h = net.forward(&x).unwrap();
        assert!(!same_bits(&h, &f32_out), "{arch}: bf16 ran as f32");
        if arch.is_denoiser() {
            let mae = h.iter().zip(&f32_out).map(|(a, b)| (a - b).abs()).sum::<f32>() / h.len() as f32;
            // The bound is 0.5 grey levels; bf16 keeps 8 bits of each operand.
            assert!(mae < 0.1, "{arch}: bf16 MAE {mae}");
        } else {
            for (i, (a, b)) in h.chunks(128).zip(f32_out.chunks(128)).enumerate() {
                let dot = |u: &[f32], v: &[f32]| u.iter().zip(v).map(|(p, q)| p * q).sum::<f32>();
                let cos = dot(a, b) / (dot(a, a) * dot(b, b)).sqrt();
                assert!(cos > 0.999, "{arch}: patch {i} cosine {cos}");
            }
        }
        for threads in [1, 3] {
            let pool = nhpatch::threads::pool(threads).unwrap();
            assert!(same_bits(&pool.install(|| net.forward(&x)).unwrap(), &h), "{arch}: {threads} threads");
        }
        assert!(same_bits(&net.forward(&x[..PATCH_LEN]).unwrap(), &h[..net.model().out_len()]), "{arch}: one patch");
        assert!(same_bits(&net.forward(&x[..5 * PATCH_LEN]).unwrap(), &h[..5 * net.model().out_len()]), "{arch}");
        // Weights changed in place are rounded again on the next call.
        let (before, saved) = (net.forward(&x[..2 * PATCH_LEN]).unwrap(), net.params().to_vec());
        net.params_mut().iter_mut().for_each(|w| *w *= 1.5);
        assert!(!same_bits(&net.forward(&x[..2 * PATCH_LEN]).unwrap(), &before), "{arch}: stale bf16 weights");
        net.params_mut().copy_from_slice(&saved);
        net.set_precision(Precision::F32).unwrap();
        assert!(same_bits(&net.forward(&x).unwrap(), &f32_out), "{arch}: f32 after bf16");
    }
}

/// A network vouches for its parameters to its kept workspaces, which then
/// reuse the weights prepared for their kernels (Winograd transforms, int8 and
/// bf16 weights) without comparing the parameters; `params_mut` must make
/// every kept workspace prepare them again. Reference: the same network after
/// `release_workspaces`, whose new workspaces prepare from scratch.
#[test]
fn weights_changed_through_params_mut_are_prepared_again_in_every_precision() {
    let x = patches(5, 31);
    for arch in ARCHS {
        let mut net = Network::init(arch, 8).unwrap();
        net.calibrate_layers(&patches(32, 32), Int8Layers::All).unwrap();
        for precision in Precision::ALL {
            net.set_precision(precision).unwrap();
            // Two sizes of kept workspace, each run twice (vouched on the second call).
            let before: Vec<_> =
                (0..2).flat_map(|_| [1, 5]).map(|b| net.forward(&x[..b * PATCH_LEN]).unwrap()).collect();
            net.params_mut().iter_mut().enumerate().for_each(|(i, w)| *w *= 1.0 + (i % 7) as f32 / 8.0);
            let got: Vec<_> = [1, 5].map(|b| net.forward(&x[..b * PATCH_LEN]).unwrap()).to_vec();
            net.release_workspaces();
            let want: Vec<_> = [1, 5].map(|b| net.forward(&x[..b * PATCH_LEN]).unwrap()).to_vec();
            for (i, b) in [1, 5].into_iter().enumerate() {
                assert!(same_bits(&got[i], &want[i]), "{arch} {precision:?} batch {b}: stale prepared weights");
                assert!(!same_bits(&got[i], &before[i]), "{arch} {precision:?} batch {b}: the change did nothing");
            }
        }
    }
}

#[test]
fn the_calibration_is_stored_and_reloaded_bit_for_bit() {
    let d = dir("precision-store");
    let mut net = Network::init(Arch::HardNetOriginal, 4).unwrap();
    net.calibrate(&patches(64, 5)).unwrap();
    net.set_precision(Precision::Int8).unwrap();
    let x = patches(9, 6);
    let want = net.forward(&x).unwrap();
    let path = d.join("hn.safetensors");
    net.save(&path).unwrap();
    let mut back = Network::load(&path, LoadOptions::default()).unwrap();
    assert_eq!(back.calibration(), net.calibration());
    assert_eq!(back.precision(), Precision::F32, "a file's calibration does not switch precision by itself");
    // A stored calibration is used as it is: use_precision does not calibrate again.
    assert!(!use_precision(&mut back, Precision::Int8, None).unwrap());
    assert!(same_bits(&back.forward(&x).unwrap(), &want));

    // A broken calibration in the metadata is an error naming the file.
    let mut file = net.to_file();
    file.metadata.insert("int8_inputs".into(), "conv1=abc:3".into());
    let bad = d.join("bad.safetensors");
    nhpatch::weights::save(&bad, &file).unwrap();
    let e = Network::load(&bad, LoadOptions::default()).err().unwrap();
    assert!(matches!(&e, Error::Format { path, .. } if path == &bad), "{e}");
    // One that covers a layer no model runs in int8 (the first), too.
    file.metadata.insert("int8_inputs".into(), "conv1=0.1:3,conv3=0.1:3".into());
    nhpatch::weights::save(&bad, &file).unwrap();
    let e = Network::load(&bad, LoadOptions::default()).err().unwrap();
    assert!(matches!(&e, Error::Format { path, .. } if path == &bad), "{e}");
    assert!(e.to_string().contains("[conv1]"), "{e}");
    // One that covers fewer blocks loads: the others stay f32.
    file.metadata.insert("int8_inputs".into(), "conv3=0.1:3".into());
    nhpatch::weights::save(&bad, &file).unwrap();
    let fewer = Network::load(&bad, LoadOptions::default()).unwrap();
    assert_eq!(fewer.calibration().map(|c| c.len()), Some(1));
}

/// Which blocks a calibration covers is the `Int8Layers` choice: every
/// candidate with `All`, none of the Winograd layers on planes above 8x8
/// with `KeepWinograd`, `All` with VNNI for the models listed in
/// `INT8_ALL_ON_VNNI` and `KeepWinograd` otherwise with `Auto`; a stored
/// calibration fixes the choice, whatever CPU loads it.
#[test]
fn the_calibration_chooses_the_int8_layers_and_the_file_keeps_the_choice() {
    use nhpatch::cpu::best_q8_kernel;
    use nhpatch::models::quant::INT8_ALL_ON_VNNI;
    let d = dir("precision-layers");
    let calib = patches(24, 31);
    let x = patches(6, 32);
    let covered = |net: &Network| -> Vec<usize> { net.calibration().unwrap().iter().map(|(b, _)| b).collect() };
    // (arch, all, keep-winograd): blocks are numbered conv1.. in model order.
    // HardNet's: every convolution but the first (one input channel), the dense conv7 included.
    // The U-Net's: every convolution but its first and its direct output layer.
    let want: [(Arch, Option<Vec<usize>>, Vec<usize>); 4] = [
        (Arch::HardNetOriginal, Some((2..=7).collect()), vec![3, 5, 6, 7]),
        (Arch::HardNetBaseline, Some((2..=7).collect()), vec![3, 5, 6, 7]),
        (Arch::Dncnn, Some((2..=16).collect()), vec![]),
        (Arch::Unet, None, vec![3]),
    ];
    for (arch, all, keep) in want {
        let mut net = Network::init(arch, 5).unwrap();
        net.calibrate_layers(&calib, Int8Layers::All).unwrap();
        let all = all.unwrap_or_else(|| covered(&net));
        assert_eq!(covered(&net), all, "{arch}: all");
        assert!(all.len() > keep.len() && keep.iter().all(|b| all.contains(b)) && !all.contains(&1), "{arch}: {all:?}");
        net.set_precision(Precision::Int8).unwrap();
        let q_all = net.forward(&x).unwrap();
        let path = d.join(format!("{arch}.safetensors"));
        net.save(&path).unwrap();
        net.calibrate_layers(&calib, Int8Layers::KeepWinograd).unwrap();
        assert_eq!(covered(&net), keep, "{arch}: keep-winograd");
        net.set_precision(Precision::Int8).unwrap();
        let q_keep = net.forward(&x).unwrap();
        assert!(!same_bits(&q_all, &q_keep), "{arch}: the choices ran the same layers");
        net.calibrate(&calib).unwrap();
        let vnni = best_q8_kernel().has_dot_products();
        let auto = if vnni && INT8_ALL_ON_VNNI.contains(&arch) { all.clone() } else { keep.clone() };
        assert_eq!(
            Int8Layers::Auto.resolve(arch),
            if auto == all { Int8Layers::All } else { Int8Layers::KeepWinograd }
        );
        assert_eq!(covered(&net), auto, "{arch}: auto with the {} kernel", best_q8_kernel().name());
        // The stored choice is the one that runs.
        let mut back = Network::load(&path, LoadOptions::default()).unwrap();
        back.set_precision(Precision::Int8).unwrap();
        assert!(same_bits(&back.forward(&x).unwrap(), &q_all), "{arch}: reloaded");
    }
    assert!(matches!("some".parse::<Int8Layers>(), Err(Error::InvalidArgument(_))));
}

/// A file calibrated before HardNet's dense conv7 could run in int8 covers
/// conv2 to conv6: it loads and runs as calibrated, conv7 in f32, next to
/// the same weights calibrated now (conv7 in int8).
#[test]
fn a_calibration_without_the_dense_layer_keeps_it_in_f32() {
    use nhpatch::models::quant::{Calibration, METADATA_KEY};
    let d = dir("precision-old-calibration");
    let x = patches(6, 41);
    let mut net = Network::init(Arch::HardNetOriginal, 6).unwrap();
    net.calibrate_layers(&patches(24, 42), Int8Layers::All).unwrap();
    net.set_precision(Precision::Int8).unwrap();
    let now = net.forward(&x).unwrap();
    let mut file = net.to_file();
    let mut old = Calibration::default();
    net.calibration().unwrap().iter().filter(|&(b, _)| b != 7).for_each(|(b, a)| old.insert(b, a));
    file.metadata.insert(METADATA_KEY.into(), old.to_metadata());
    let path = d.join("old.safetensors");
    nhpatch::weights::save(&path, &file).unwrap();
    let mut back = Network::load(&path, LoadOptions::default()).unwrap();
    assert_eq!(back.calibration().unwrap().iter().map(|(b, _)| b).collect::<Vec<_>>(), (2..=6).collect::<Vec<_>>());
    back.set_precision(Precision::Int8).unwrap();
    let got = back.forward(&x).unwrap();
    assert!(!same_bits(&got, &now), "conv7 ran in int8 without a calibration for it");
    // conv2..conv6 alike; conv7 in f32 against int8: unit descriptors, close but not equal.
    for (i, (a, b)) in got.chunks(128).zip(now.chunks(128)).enumerate() {
        let cos: f32 = a.iter().zip(b).map(|(p, q)| p * q).sum();
        assert!(cos > 0.999, "patch {i}: cosine {cos}");
    }
}

#[test]
fn use_precision_calibrates_on_the_default_sample_once() {
    let sample = default_calibration_patches().unwrap();
    assert!(sample.len() >= 256 * PATCH_LEN && sample.len().is_multiple_of(PATCH_LEN));
    assert_eq!(sample, default_calibration_patches().unwrap(), "the same patches every time");
    let den = Network::init(Arch::Unet, 7).unwrap();
    let mut a = Network::init(Arch::HardNetBaseline, 8).unwrap();
    assert!(use_precision(&mut a, Precision::Int8, Some(&den)).unwrap());
    assert!(!use_precision(&mut a, Precision::Int8, Some(&den)).unwrap());
    let mut b = Network::init(Arch::HardNetBaseline, 8).unwrap();
    b.calibrate(&{
        let mut s = den.denoise(&sample).unwrap();
        nhpatch::net::to_pixels(&mut s);
        s
    })
    .unwrap();
    assert_eq!(a.calibration(), b.calibration(), "the descriptor saw the denoiser's output");
    assert!(use_precision(&mut b, Precision::F32, None).is_ok_and(|calibrated| !calibrated));
    // bf16 has nothing to calibrate.
    let mut c = Network::init(Arch::HardNetBaseline, 8).unwrap();
    assert!(use_precision(&mut c, Precision::Bf16, None).is_ok_and(|calibrated| !calibrated));
    assert!(c.calibration().is_none());
    assert!(matches!("fp8".parse::<Precision>(), Err(Error::InvalidArgument(_))));
}

#[test]
fn the_cli_calibrates_and_runs_int8() {
    let d = dir("precision-cli");
    let (w, cal, strip) = (d.join("hn.safetensors"), d.join("hn8.safetensors"), d.join("p.npy"));
    ok(&["init", "--model", "hardnet", "--variant", "original", "--seed", "3", "--out", s(&w)]);
    let x = patches(12, 9);
    nhpatch::io::npy::write_f32(&strip, &[12, 32, 32], &x).unwrap();
    ok(&["calibrate", "--weights", s(&w), "--input", s(&strip), "--output", s(&cal)]);
    let (o8, o32) = (d.join("d8.npy"), d.join("d32.npy"));
    ok(&["describe", "--weights", s(&cal), "--input", s(&strip), "--output", s(&o8), "--precision", "int8"]);
    ok(&["describe", "--weights", s(&cal), "--input", s(&strip), "--output", s(&o32)]);
    // The CLI's int8 is the library's with the stored calibration.
    let mut net = Network::load(&cal, LoadOptions::default()).unwrap();
    net.set_precision(Precision::Int8).unwrap();
    let want = net.forward(&x).unwrap();
    let got = nhpatch::io::npy::read(&o8).unwrap().data;
    assert!(same_bits(&got, &want));
    assert!(!same_bits(&got, &nhpatch::io::npy::read(&o32).unwrap().data));
    // bf16 from the CLI is the library's, with no calibration needed.
    let o16 = d.join("d16.npy");
    ok(&["describe", "--weights", s(&w), "--input", s(&strip), "--output", s(&o16), "--precision", "bf16"]);
    let mut net = Network::load(&w, LoadOptions::default()).unwrap();
    net.set_precision(Precision::Bf16).unwrap();
    assert!(same_bits(&nhpatch::io::npy::read(&o16).unwrap().data, &net.forward(&x).unwrap()));
    let e = fails(&["describe", "--weights", s(&w), "--input", s(&strip), "--output", s(&o8), "--precision", "fp8"]);
    assert!(e.contains("fp8"), "{e}");
    for precision in ["int8", "bf16"] {
        let e = fails(&["bench", "--model", "unet", "--mode", "train", "--precision", precision, "--seconds", "0.1"]);
        assert!(e.contains(precision), "{e}");
    }
    let e = fails(&["calibrate", "--weights", s(&w), "--output", s(&d.join("x.bin"))]);
    assert!(e.contains("x.bin"), "{e}");
}

/// The accuracy bound, held in a test: trained weights (a U-Net and
/// both HardNet variants, trained briefly on a small fixed synthetic dataset),
/// scored through `nhpatch eval` in f32, in int8 with the documented
/// calibration at load and in bf16; every task's mAP stays within 0.005 of f32.
#[test]
fn int8_and_bf16_keep_every_task_map_within_0_005_of_f32_with_trained_weights() {
    let d = dir("precision-map");
    let data = d.join("data");
    ok(&["synth", "--out", s(&data), "--sequences", "6", "--patches", "64", "--seed", "11"]);
    let den = d.join("den");
    let demo = ["--dataset", s(&data), "--preset", "demo", "--val-sequences", "0"];
    ok(&[&["train-denoiser", "--out", s(&den), "--epochs", "2", "--items", "800"][..], &demo].concat());
    let den_w = den.join("model.safetensors");
    for variant in ["baseline", "original"] {
        let desc = d.join(variant);
        let args = ["train-descriptor", "--out", s(&desc), "--variant", variant, "--input", "noisy"];
        ok(&[&args[..], &demo, &["--epochs", "3", "--items", "900", "--no-epoch-eval"]].concat());
        let w = desc.join("model.safetensors");
        let score = |name: &str, precision: &str, w: &std::path::Path, den_w: &std::path::Path| {
            let json = d.join(format!("{variant}-{name}.json"));
            let mut eval = vec!["eval", "--dataset", s(&data), "--weights", s(w), "--denoiser", s(den_w)];
            eval.extend(["--precision", precision, "--json", s(&json)]);
            ok(&eval);
            maps(&json)
        };
        let f = score("f32", "f32", &w, &den_w);
        for task in ["verification", "matching", "retrieval"].iter().zip(&f) {
            // A trained descriptor, not a chance-level one, so that the bound says something.
            assert!(*task.1 > 0.2, "{variant} {}: f32 mAP {}", task.0, task.1);
        }
        // int8 calibrated at load (this CPU's choice of layers), with each
        // choice stored by `nhpatch calibrate`, and bf16.
        let mut runs = vec![("int8", score("int8", "int8", &w, &den_w)), ("bf16", score("bf16", "bf16", &w, &den_w))];
        for layers in ["all", "keep-winograd"] {
            let (w8, den8) =
                (d.join(format!("{variant}-{layers}.safetensors")), d.join(format!("den-{layers}.safetensors")));
            ok(&["calibrate", "--weights", s(&den_w), "--output", s(&den8), "--int8-layers", layers]);
            let args = ["calibrate", "--weights", s(&w), "--denoiser", s(&den_w), "--output", s(&w8)];
            ok(&[&args[..], &["--int8-layers", layers]].concat());
            runs.push((layers, score(layers, "int8", &w8, &den8)));
        }
        for (name, q) in runs {
            eprintln!("{variant}: f32 {f:?} {name} {q:?}");
            assert_ne!(f, q, "{variant}: {name} ran as f32");
            for (task, (a, b)) in ["verification", "matching", "retrieval"].iter().zip(f.iter().zip(&q)) {
                assert!((a - b).abs() <= 0.005, "{variant} {task}: f32 {a} {name} {b}");
            }
        }
    }
}
