//! The library API: weights save/load round trips, and every way a weights
//! file can be wrong gives a clear error instead of a half-loaded network.

use nhpatch::models::Arch;
use nhpatch::net::{LoadOptions, Network, metadata_for};
use nhpatch::weights::{self, Tensor};
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nhpatch-net-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn patches(n: usize) -> Vec<f32> {
    (0..n * 1024).map(|i| ((i * 37 + i / 1024 * 11) % 256) as f32).collect()
}

#[test]
fn save_then_load_gives_bit_identical_outputs() {
    for arch in Arch::ALL {
        let net = Network::init(arch, 7).unwrap();
        let path = tmp(&format!("{arch}.safetensors"));
        net.save(&path).unwrap();
        let back = Network::load(&path, LoadOptions::default()).unwrap();
        assert_eq!(back.arch(), arch);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(back.params()), bits(net.params()), "{arch}: parameters");
        let x = patches(3);
        assert_eq!(bits(&back.forward(&x).unwrap()), bits(&net.forward(&x).unwrap()), "{arch}: outputs");
        // Saving again writes the same bytes: the format is canonical.
        let again = tmp(&format!("{arch}-again.safetensors"));
        back.save(&again).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&again).unwrap());
    }
}

#[test]
fn batching_does_not_change_results() {
    // 300 patches run as 256 + 44 (padded to 64) internally; the first k of
    // them, run alone (k padded to the next power of two), give the same bits.
    for arch in Arch::ALL {
        let net = Network::init(arch, 3).unwrap();
        let x = patches(300);
        let all = net.forward(&x).unwrap();
        let out = all.len() / 300;
        for k in [1, 2, 3, 7, 64, 100, 255, 257] {
            let some = net.forward(&x[..k * 1024]).unwrap();
            assert!(some == all[..k * out], "{arch}: the first {k} patches alone differ");
        }
        let last = net.forward(&x[299 * 1024..]).unwrap();
        assert!(last == all[299 * out..], "{arch}: the last patch alone differs");
    }
}

#[test]
fn concurrent_callers_get_the_single_threaded_results() {
    // Eight threads share one network, each cycling through batch sizes; every
    // call must equal the same call made alone, first to last.
    let net = Network::init(Arch::HardNetBaseline, 9).unwrap();
    let sizes = [1, 7, 16, 128, 256, 300];
    let want: Vec<Vec<f32>> = sizes.iter().map(|&n| net.describe(&patches(n)).unwrap()).collect();
    std::thread::scope(|s| {
        for t in 0..8 {
            let (net, want) = (&net, &want);
            s.spawn(move || {
                for i in 0..12 {
                    let j = (t + i) % sizes.len();
                    assert!(net.describe(&patches(sizes[j])).unwrap() == want[j], "thread {t}, {} patches", sizes[j]);
                }
            });
        }
    });
    net.release_workspaces();
    assert!(net.describe(&patches(7)).unwrap() == want[1], "after release_workspaces");
}

/// Loads a modified copy of a valid file and returns the error text.
fn load_err(edit: impl FnOnce(&mut weights::WeightsFile), opts: LoadOptions) -> String {
    let mut file = Network::init(Arch::Unet, 1).unwrap().to_file();
    edit(&mut file);
    let path = tmp("edited.safetensors");
    weights::save(&path, &file).unwrap();
    match Network::load(&path, opts) {
        Ok(_) => panic!("the edited file loaded"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("edited.safetensors"), "error does not name the file: {msg}");
            msg
        }
    }
}

#[test]
fn wrong_files_are_clear_errors() {
    let none = LoadOptions::default();
    let e = load_err(|f| drop(f.tensors.remove("conv3.weight")), none);
    assert!(e.contains("missing tensors") && e.contains("conv3.weight"), "{e}");
    let e = load_err(|f| f.tensors.get_mut("conv4.bias").unwrap().shape = vec![32, 2], none);
    assert!(e.contains("conv4.bias") && e.contains("[32, 2]") && e.contains("[64]"), "{e}");
    let e =
        load_err(|f| drop(f.tensors.insert("conv9.weight".into(), Tensor { shape: vec![1], data: vec![0.0] })), none);
    assert!(e.contains("conv9.weight"), "{e}");
    let e = load_err(|f| drop(f.metadata.insert("model".into(), "resnet".into())), none);
    assert!(e.contains("resnet"), "{e}");
    let e = load_err(|f| drop(f.metadata.insert("padding".into(), "symmetric".into())), none);
    assert!(e.contains("padding"), "{e}");
    let e = load_err(|f| drop(f.metadata.insert("format_version".into(), "9".into())), none);
    assert!(e.contains("format_version"), "{e}");
    let e = load_err(|_| {}, LoadOptions { arch: Some(Arch::Dncnn) });
    assert!(e.contains("unet") && e.contains("dncnn"), "{e}");
    let e = load_err(|f| f.metadata.clear(), none);
    assert!(e.contains("no 'model'"), "{e}");
}

#[test]
fn poisoned_values_never_load() {
    // Every architecture, a NaN, an infinity and (where there are running
    // statistics) a negative variance: refused with the file and the tensor named.
    for arch in Arch::ALL {
        let net = Network::init(arch, 3).unwrap();
        let mut cases: Vec<(String, f32, &str)> = vec![
            (net.model().layout().specs()[0].name.clone(), f32::NAN, "non-finite"),
            (net.model().layout().specs().last().unwrap().name.clone(), f32::INFINITY, "non-finite"),
        ];
        if let Some(v) = net.model().layout().specs().iter().find(|s| s.name.ends_with("running_var")) {
            cases.push((v.name.clone(), -1e-3, "negative variance"));
        }
        for (tensor, v, says) in cases {
            let mut file = net.to_file();
            let t = file.tensors.get_mut(&tensor).unwrap();
            let last = t.data.len() - 1;
            t.data[last] = v;
            let path = tmp(&format!("poisoned-{arch}.safetensors"));
            weights::save(&path, &file).unwrap();
            let e = Network::load(&path, LoadOptions::default()).err().expect("a poisoned file loaded").to_string();
            let named = e.contains(&format!("poisoned-{arch}.safetensors")) && e.contains(&format!("'{tensor}'"));
            assert!(named && e.contains(says) && e.contains(&format!("at element {last}")), "{arch}: {e}");
            assert!(Network::from_file(&file, LoadOptions::default(), &path).is_err());
        }
    }
}

#[test]
fn pytorch_files_without_metadata_load_when_the_architecture_is_named() {
    let net = Network::init(Arch::HardNetBaseline, 2).unwrap();
    let mut file = net.to_file();
    file.metadata.clear();
    let path = tmp("plain.safetensors");
    weights::save(&path, &file).unwrap();
    let back = Network::load(&path, LoadOptions { arch: Some(Arch::HardNetBaseline) }).unwrap();
    assert_eq!(back.params(), net.params());
    assert_eq!(metadata_for(Arch::HardNetBaseline)["variant"], "baseline");
}

#[test]
fn truncated_and_corrupted_files_never_load() {
    let path = tmp("good.safetensors");
    Network::init(Arch::Unet, 1).unwrap().save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let bad = tmp("bad.safetensors");
    for cut in [0, 7, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&bad, &bytes[..cut]).unwrap();
        let e = Network::load(&bad, LoadOptions::default()).err().expect("truncated file loaded").to_string();
        assert!(e.contains("bad.safetensors"), "{e}");
    }
    let mut flipped = bytes.clone();
    flipped[12] ^= 0x55; // inside the JSON header
    std::fs::write(&bad, &flipped).unwrap();
    assert!(Network::load(&bad, LoadOptions::default()).is_err());
}

#[test]
fn wrong_kind_of_network_and_bad_batches_are_errors() {
    let unet = Network::init(Arch::Unet, 1).unwrap();
    let hardnet = Network::init(Arch::HardNetOriginal, 1).unwrap();
    assert!(unet.describe(&patches(1)).is_err());
    assert!(hardnet.denoise(&patches(1)).is_err());
    assert!(unet.denoise(&[0.0; 1000]).is_err(), "not a whole number of patches");
    assert_eq!(unet.denoise(&[]).unwrap().len(), 0);
}

#[test]
fn reused_workspaces_give_the_same_results_as_fresh_ones() {
    // A network keeps the workspaces of earlier calls; calls of other sizes in
    // between (300 = 256 + 44 patches, then 10, then 44 again) must not leak state
    // from one call into the next, with one thread or two.
    for threads in [1, 2] {
        nhpatch::threads::pool(threads).unwrap().install(|| {
            let net = Network::init(Arch::Unet, 5).unwrap();
            let fresh = |n: usize| Network::init(Arch::Unet, 5).unwrap().denoise(&patches(n)).unwrap();
            let want: Vec<(usize, Vec<f32>)> = [300, 10, 44, 300].iter().map(|&n| (n, fresh(n))).collect();
            for (n, w) in &want {
                assert_eq!(&net.denoise(&patches(*n)).unwrap(), w, "{n} patches, {threads} threads");
            }
        });
    }
}

#[test]
fn forward_into_writes_the_callers_buffer_like_forward() {
    use nhpatch::net::{Outputs, Patches, to_pixels};
    let x = patches(300);
    let x8: Vec<u8> = x.iter().map(|&v| v as u8).collect();
    for arch in Arch::ALL {
        let net = Network::init(arch, 12).unwrap();
        let want = net.forward(&x).unwrap();
        let mut got = vec![f32::NAN; want.len()];
        net.forward_into(Patches::F32(&x), Outputs::F32(&mut got)).unwrap();
        assert!(got == want, "{arch}: f32 in");
        got.fill(f32::NAN);
        net.forward_into(Patches::U8(&x8), Outputs::F32(&mut got)).unwrap();
        assert!(got == want, "{arch}: u8 in (the same grey levels)");
        let mut pixels = want.clone();
        to_pixels(&mut pixels);
        let mut got8 = vec![7u8; want.len()];
        net.forward_into(Patches::F32(&x), Outputs::U8(&mut got8)).unwrap();
        assert!(got8.iter().zip(&pixels).all(|(&a, &b)| f32::from(a) == b), "{arch}: u8 out");
        let e = net.forward_into(Patches::F32(&x), Outputs::F32(&mut got[1..])).unwrap_err().to_string();
        assert!(e.contains("output of") && e.contains("needed"), "{arch}: {e}");
        let e = net.forward_into(Patches::F32(&x[1..]), Outputs::F32(&mut got)).unwrap_err().to_string();
        assert!(e.contains("whole number"), "{arch}: {e}");
        if arch.is_denoiser() {
            assert!(net.describe_into(Patches::F32(&x), &mut got).is_err(), "{arch} describes");
        } else {
            assert!(net.denoise_into(Patches::F32(&x), Outputs::F32(&mut got)).is_err(), "{arch} denoises");
        }
    }
}

#[test]
fn small_batches_are_the_same_bits_on_any_thread_count() {
    // A batch of one patch shares each layer's work out among the threads
    // (conv output channels, Winograd products, the dense layer's outputs);
    // a batch of 3 splits patches as usual. Every model, 1 to 3 threads.
    for arch in [Arch::Unet, Arch::Dncnn, Arch::HardNetBaseline, Arch::HardNetOriginal] {
        for n in [1, 3] {
            let run = |threads: usize| {
                nhpatch::threads::pool(threads).unwrap().install(|| {
                    let net = Network::init(arch, 9).unwrap();
                    net.forward(&patches(n)).unwrap()
                })
            };
            let one = run(1);
            for threads in [2, 3] {
                let got = run(threads);
                assert!(
                    got.iter().zip(&one).all(|(a, b)| a.to_bits() == b.to_bits()) && got.len() == one.len(),
                    "{arch}: {n} patches differ with {threads} threads"
                );
            }
        }
    }
}
