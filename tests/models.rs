//! Whole-model tests: parameter counts and layer tables against the spec,
//! output shapes, train/eval semantics, finite-difference gradient checks of
//! `backward` for every architecture, thread-count independence, bad lengths.

mod common;

use common::{Tol, check_grad, proj, rand_vec};
use nhpatch::models::{Arch, LayerRow, Model, Workspace};
use nhpatch::rng::Rng;
use nhpatch::threads;

fn model(arch: Arch) -> Model {
    Model::new(arch).unwrap()
}

/// Inputs on the scale each model sees in the pipeline: denoisers [0, 1), the baseline HardNet raw pixels.
fn input(arch: Arch, n: usize, seed: u64) -> Vec<f32> {
    let hi = if arch == Arch::HardNetBaseline { 255.0 } else { 1.0 };
    rand_vec(&mut Rng::new(seed), n * 32 * 32, 0.0, hi)
}

fn running_stats(m: &Model) -> usize {
    m.param_count() - m.trainable_count()
}

#[test]
fn parameter_counts_match_the_spec() {
    let unet = model(Arch::Unet);
    assert_eq!((unet.trainable_count(), unet.param_count()), (59_777, 59_777));

    let dncnn = model(Arch::Dncnn);
    assert_eq!(dncnn.trainable_count(), 556_096);
    assert_eq!(running_stats(&dncnn), 1_920);

    let base = model(Arch::HardNetBaseline);
    assert_eq!(base.param_count(), 1_336_928);
    // Running mean and variance of bn1..bn6.
    let bn_channels = 32 + 32 + 64 + 64 + 128 + 128;
    assert_eq!(running_stats(&base), 2 * bn_channels);

    // Original: the same kernels without biases, no BN affine, bn7 over 128 channels.
    let kernels = [(1, 32, 3), (32, 32, 3), (32, 64, 3), (64, 64, 3), (64, 128, 3), (128, 128, 3), (128, 128, 8)];
    let weights: usize = kernels.iter().map(|&(ci, co, k)| ci * co * k * k).sum();
    let orig = model(Arch::HardNetOriginal);
    assert_eq!(weights, 1_334_560);
    assert_eq!(orig.trainable_count(), weights);
    assert_eq!(running_stats(&orig), 2 * (bn_channels + 128));
    assert_eq!(orig.param_count(), 1_335_712);

    for arch in Arch::ALL {
        let m = model(arch);
        let table = m.layer_table();
        assert_eq!(table.iter().map(|r| r.params).sum::<usize>(), m.param_count(), "{arch}");
        assert_eq!(table.iter().map(|r| r.trainable).sum::<usize>(), m.trainable_count(), "{arch}");
    }
}

/// The row called `name`.
fn rows_by_name<'a>(table: &'a [LayerRow], name: &str) -> &'a LayerRow {
    table.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no row '{name}'"))
}

#[test]
fn layer_tables_match_the_report_figures() {
    // Figure 1: the U-Net summary.
    let unet = model(Arch::Unet).layer_table();
    let want = [
        ("conv1", (16, 32, 32), 160),
        ("pool", (16, 16, 16), 0),
        ("conv2", (32, 16, 16), 4640),
        ("up", (32, 32, 32), 0),
        ("conv3", (64, 32, 32), 8256),
        ("concat", (80, 32, 32), 0),
        ("conv4", (64, 32, 32), 46144),
        ("conv5", (1, 32, 32), 577),
    ];
    let got: Vec<_> = unet.iter().map(|r| (r.name.as_str(), r.out_shape, r.params)).collect();
    assert_eq!(got, want);

    // Figure 3: the HardNet baseline summary (BN rows count the running statistics, as Keras does).
    let hard = model(Arch::HardNetBaseline).layer_table();
    let with_params: Vec<usize> = hard.iter().map(|r| r.params).filter(|&p| p > 0).collect();
    let want = [320, 128, 9248, 128, 18496, 256, 36928, 256, 73856, 512, 147584, 512, 1048704];
    assert_eq!(with_params, want);
    let shapes = [
        ("conv1", (32, 32, 32)),
        ("bn2", (32, 32, 32)),
        ("conv3", (64, 16, 16)),
        ("relu4", (64, 16, 16)),
        ("conv5", (128, 8, 8)),
        ("dropout", (128, 8, 8)),
        ("conv7", (128, 1, 1)),
        ("flatten", (128, 1, 1)),
    ];
    for (name, shape) in shapes {
        assert_eq!(rows_by_name(&hard, name).out_shape, shape, "{name}");
    }
    assert!(hard.iter().all(|r| r.name != "input_norm" && r.name != "bn7"));
    let orig = model(Arch::HardNetOriginal).layer_table();
    for name in ["input_norm", "bn7", "l2norm"] {
        rows_by_name(&orig, name);
    }
    assert_eq!(rows_by_name(&orig, "bn7").params, 256);
    assert_eq!(rows_by_name(&orig, "bn7").trainable, 0);
}

#[test]
fn arch_names_parse_and_round_trip() {
    for arch in Arch::ALL {
        assert_eq!(arch.name().parse::<Arch>().unwrap(), arch);
    }
    assert_eq!(Arch::parse("hardnet", None).unwrap(), Arch::HardNetBaseline);
    assert_eq!(Arch::parse("hardnet", Some("original")).unwrap(), Arch::HardNetOriginal);
    assert!(Arch::parse("hardnet", Some("tfeat")).is_err());
    assert!(Arch::parse("unet", Some("original")).is_err());
    assert!("resnet".parse::<Arch>().is_err());
}

#[test]
fn init_is_deterministic_and_follows_pytorch_defaults() {
    let m = model(Arch::HardNetBaseline);
    let p = m.init_params(&mut Rng::new(5));
    assert_eq!(p, m.init_params(&mut Rng::new(5)));
    assert_ne!(p, m.init_params(&mut Rng::new(6)));
    let slice = |name: &str| &p[m.layout().range(name).unwrap()];
    let bound = 1.0 / (32.0f32 * 9.0).sqrt();
    for name in ["conv2.weight", "conv2.bias"] {
        assert!(slice(name).iter().all(|v| v.abs() <= bound), "{name}");
        assert!(slice(name).iter().any(|v| v.abs() > bound / 2.0), "{name}");
    }
    assert!(slice("bn2.weight").iter().all(|&v| v == 1.0));
    assert!(slice("bn2.bias").iter().chain(slice("bn2.running_mean")).all(|&v| v == 0.0));
    assert!(slice("bn2.running_var").iter().all(|&v| v == 1.0));
    assert!(!m.layout().get("bn2.running_var").unwrap().trainable);
}

#[test]
fn outputs_have_the_right_shapes_and_eval_is_deterministic() {
    let n = 2;
    for arch in Arch::ALL {
        let m = model(arch);
        let p = m.init_params(&mut Rng::new(1));
        let x = input(arch, n, 2);
        let mut ws = m.workspace(n).unwrap();
        let a = m.forward_eval(&mut ws, &p, &x).unwrap().to_vec();
        let want = if arch.is_denoiser() { n * 32 * 32 } else { n * 128 };
        assert_eq!(a.len(), want, "{arch}");
        assert!(a.iter().all(|v| v.is_finite()), "{arch}");
        assert!(a.iter().any(|&v| v != 0.0), "{arch}");
        let b = m.forward_eval(&mut ws, &p, &x).unwrap();
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "{arch}");
        if arch == Arch::HardNetOriginal {
            for row in a.chunks(128) {
                let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                assert!((norm - 1.0).abs() < 1e-4, "descriptor norm {norm}");
            }
        }
    }
}

#[test]
fn train_forward_updates_running_stats_only() {
    for arch in [Arch::Dncnn, Arch::HardNetBaseline, Arch::HardNetOriginal] {
        let m = model(arch);
        let p0 = m.init_params(&mut Rng::new(3));
        let x = input(arch, 2, 4);
        let mut ws = m.workspace(2).unwrap();
        let mut p = p0.clone();
        m.forward_train(&mut ws, &mut p, &x, &mut Rng::new(9)).unwrap();
        for spec in m.layout().specs() {
            let (before, after) = (&p0[spec.range()], &p[spec.range()]);
            assert_eq!(before != after, !spec.trainable, "{arch} {}", spec.name);
        }
        // Momentum 0.1 from mean 0: the running mean is a tenth of the batch mean (0.01 for the Keras model).
        let mom = if arch == Arch::HardNetBaseline { 0.01 } else { 0.1 };
        let rm = &p[m.layout().range("bn2.running_mean").unwrap()];
        assert!(rm.iter().all(|v| v.is_finite()) && rm.iter().any(|v| v.abs() > 0.0));
        let rv = &p[m.layout().range("bn2.running_var").unwrap()];
        assert!(rv.iter().all(|&v| v >= 1.0 - mom - 1e-6), "{arch}: running_var {rv:?}");
    }
}

#[test]
fn hardnet_dropout_acts_in_training_only() {
    let m = model(Arch::HardNetBaseline);
    assert_eq!(m.dropout(), 0.3);
    let mut p = m.init_params(&mut Rng::new(1));
    let x = input(Arch::HardNetBaseline, 2, 2);
    let mut ws = m.workspace(2).unwrap();
    let a = m.forward_train(&mut ws, &mut p, &x, &mut Rng::new(1)).unwrap().to_vec();
    let b = m.forward_train(&mut ws, &mut p, &x, &mut Rng::new(1)).unwrap().to_vec();
    let c = m.forward_train(&mut ws, &mut p, &x, &mut Rng::new(2)).unwrap().to_vec();
    assert_eq!(a, b, "same generator state, same mask");
    assert_ne!(a, c, "another mask");
    let mut m0 = model(Arch::HardNetBaseline);
    assert!(m0.set_dropout(1.0).is_err());
    m0.set_dropout(0.0).unwrap();
    let d = m0.forward_train(&mut ws, &mut p, &x, &mut Rng::new(1)).unwrap().to_vec();
    let e = m0.forward_train(&mut ws, &mut p, &x, &mut Rng::new(2)).unwrap();
    assert_eq!(d, e);
}

/// Finite-difference check of `backward` through the whole model, with the
/// loss `sum(out * r)`: `checks` indices per trainable tensor whose name passes
/// `pick`, central differences with step `EPS`. The dropout mask is the same in
/// every forward (a fresh `Rng` per call). Returns the worst relative error
/// `|num - ana| / max(|num|, |ana|)` over entries whose gradient is at
/// least the tensor's RMS and `NOISE` (smaller ones are dominated by the noise floor).
///
/// Conditioning, measured rather than assumed: a one-weight step moves
/// hundreds of thousands of downstream ReLU inputs, so every kink crossed
/// biases the difference quotient, and f32 rounding of deep forwards adds
/// noise of about 1e-2 of the tensor's gradient scale at this step. So:
/// affine BatchNorm shifts (and U-Net biases) start at `shift`, which keeps
/// most ReLU inputs off the kink, and the bound on each entry is
/// `NOISE + 5e-2 * rms(tensor gradient) + 5e-2 * max(|num|, |ana|)`.
fn grad_check(m: &Model, n: usize, seed: u64, checks: usize, shift: f32, pick: impl Fn(&str) -> bool) -> f64 {
    let arch = m.arch();
    let mut rng = Rng::new(seed);
    let mut base = m.init_params(&mut rng);
    for spec in m.layout().specs() {
        let bn_shift = spec.name.starts_with("bn") && spec.name.ends_with(".bias");
        if bn_shift || (arch == Arch::Unet && spec.name.ends_with(".bias")) {
            base[spec.range()].iter_mut().for_each(|v| *v += shift);
        }
    }
    let x = input(arch, n, seed + 1);
    let r = rand_vec(&mut rng, n * m.out_len(), -1.0, 1.0);
    let mut ws = m.workspace(n).unwrap();
    let mut p = base.clone();
    m.forward_train(&mut ws, &mut p, &x, &mut Rng::new(seed + 2)).unwrap();
    let mut grads = m.zero_grads();
    m.backward(&mut ws, &p, &mut grads, &r).unwrap();
    for spec in m.layout().specs().iter().filter(|s| !s.trainable) {
        assert!(grads[spec.range()].iter().all(|&g| g == 0.0), "{}: running-stat gradient", spec.name);
    }
    let (mut worst, mut tested) = (0.0f64, 0);
    for spec in m.layout().specs().iter().filter(|s| s.trainable && pick(&s.name)) {
        let range = spec.range();
        let g = &grads[range.clone()];
        let rms = (g.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / g.len() as f64).sqrt();
        let tol = Tol { atol: NOISE + 5e-2 * rms, rtol: 5e-2 };
        let mut losses = Vec::new();
        let what = format!("{arch} {}", spec.name);
        check_grad(&what, &base[range.clone()], g, EPS, tol, checks, |sub| {
            let mut q = base.clone();
            q[range.clone()].copy_from_slice(sub);
            let l = proj(m.forward_train(&mut ws, &mut q, &x, &mut Rng::new(seed + 2)).unwrap(), &r);
            losses.push(l);
            l
        })
        .unwrap();
        // Re-derive check_grad's samples (same index rule, same f32 step) for the error report.
        let step = (spec.len() / checks).max(1);
        for (k, i) in (0..spec.len()).step_by(step).enumerate() {
            let v = base[range.start + i];
            let h = ((v + EPS) as f64) - ((v - EPS) as f64);
            let (num, ana) = ((losses[2 * k] - losses[2 * k + 1]) / h, g[i] as f64);
            let scale = num.abs().max(ana.abs());
            if scale >= rms.max(NOISE) {
                worst = worst.max((num - ana).abs() / scale);
            }
            tested += 1;
        }
    }
    assert!(tested >= 20, "{arch}: only {tested} gradient entries checked");
    eprintln!("{arch}: {tested} entries, worst relative error {worst:.3e}");
    worst
}

/// Central-difference step for the whole-model checks.
const EPS: f32 = 1e-3;
/// Absolute noise floor of a difference quotient at `EPS` (f32 forwards; measured up to ~5e-3).
const NOISE: f64 = 1e-2;

#[test]
fn unet_gradients_match_finite_differences() {
    grad_check(&model(Arch::Unet), 2, 11, 3, 0.3, |_| true);
}

#[test]
fn dncnn_gradients_match_finite_differences() {
    let layers = ["conv1.", "conv2.", "bn2.", "conv9.", "bn9.", "conv16.", "bn16.", "conv17."];
    grad_check(&model(Arch::Dncnn), 1, 21, 3, 1.5, |s| layers.iter().any(|l| s.starts_with(l)));
}

#[test]
fn hardnet_baseline_gradients_match_finite_differences() {
    // Dropout stays at 0.3: every forward draws the same mask.
    grad_check(&model(Arch::HardNetBaseline), 3, 31, 2, 1.5, |_| true);
}

#[test]
fn hardnet_original_gradients_match_finite_differences() {
    // bn7 normalises each descriptor channel over the batch: 8 patches keep it far from degenerate.
    let mut m = model(Arch::HardNetOriginal);
    m.set_dropout(0.0).unwrap();
    grad_check(&m, 8, 41, 4, 0.0, |_| true);
}

/// Eval output, train output and gradients of one step, computed inside a pool of `threads`.
fn step_in_pool(m: &Model, threads: usize, n: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    threads::pool(threads).unwrap().install(|| {
        let mut p = m.init_params(&mut Rng::new(7));
        let x = input(m.arch(), n, 8);
        let mut ws: Workspace = m.workspace(n).unwrap();
        let eval = m.forward_eval(&mut ws, &p, &x).unwrap().to_vec();
        let train = m.forward_train(&mut ws, &mut p, &x, &mut Rng::new(9)).unwrap().to_vec();
        let r = rand_vec(&mut Rng::new(10), train.len(), -1.0, 1.0);
        let mut g = m.zero_grads();
        m.backward(&mut ws, &p, &mut g, &r).unwrap();
        (eval, train, g)
    })
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for arch in Arch::ALL {
        let m = model(arch);
        let n = if arch == Arch::Dncnn { 2 } else { 3 };
        let (e1, t1, g1) = step_in_pool(&m, 1, n);
        let (e2, t2, g2) = step_in_pool(&m, 2, n);
        assert_eq!(bits(&e1), bits(&e2), "{arch} eval");
        assert_eq!(bits(&t1), bits(&t2), "{arch} train");
        assert_eq!(bits(&g1), bits(&g2), "{arch} grads");
        assert!(g1.iter().any(|&g| g != 0.0));
    }
}

#[test]
fn inference_workspaces_give_the_same_bits_and_refuse_training() {
    for arch in Arch::ALL {
        let m = model(arch);
        let mut p = m.init_params(&mut Rng::new(4));
        // Trained running statistics, so that the BatchNorm epilogue is not the identity.
        let mut tws = m.workspace(5).unwrap();
        m.forward_train(&mut tws, &mut p, &input(arch, 5, 3), &mut Rng::new(1)).unwrap();
        let x = input(arch, 5, 6);
        let want = m.forward_eval(&mut tws, &p, &x).unwrap().to_vec();
        let mut iws = m.inference_workspace(5).unwrap();
        let got = m.forward_eval(&mut iws, &p, &x).unwrap();
        assert!(want.iter().zip(got).all(|(a, b)| a.to_bits() == b.to_bits()), "{arch}");
        let e = m.forward_train(&mut iws, &mut p, &x, &mut Rng::new(1)).unwrap_err().to_string();
        assert!(e.contains("inference_workspace"), "{arch}: {e}");
        let mut g = m.zero_grads();
        assert!(m.backward(&mut iws, &p, &mut g, &vec![0.0; want.len()]).is_err(), "{arch}");
    }
}

#[test]
fn inference_workspaces_in_parts_give_the_bits_of_one_workspace() {
    // `inference_workspace_for` cuts a batch into parts run side by side:
    // every model and precision, batches split evenly and not (7 patches in
    // 2 and 3 parts, 2 patches for 3 threads), on pools of 2 and 3 threads,
    // against one whole workspace on one thread; training on it is refused.
    use nhpatch::{Int8Layers, Precision};
    for arch in Arch::ALL {
        let m = model(arch);
        let mut p = m.init_params(&mut Rng::new(4));
        let mut tws = m.workspace(5).unwrap();
        m.forward_train(&mut tws, &mut p, &input(arch, 5, 3), &mut Rng::new(1)).unwrap();
        let calib = m.calibrate(&p, &input(arch, 8, 5), Int8Layers::Auto).unwrap();
        for precision in [Precision::F32, Precision::Int8, Precision::Bf16] {
            for n in [2, 7] {
                let x = input(arch, n, 6);
                let want = threads::pool(1).unwrap().install(|| {
                    let mut ws = m.inference_workspace_in(n, precision, Some(&calib)).unwrap();
                    m.forward_eval(&mut ws, &p, &x).unwrap().to_vec()
                });
                for t in [2, 3] {
                    let got = threads::pool(t).unwrap().install(|| {
                        let mut ws = m.inference_workspace_for(n, precision, Some(&calib), t).unwrap();
                        assert_eq!(ws.batch(), n);
                        assert!(m.forward_train(&mut ws, &mut p.clone(), &x, &mut Rng::new(1)).is_err());
                        m.forward_eval(&mut ws, &p, &x).unwrap().to_vec()
                    });
                    let same =
                        got.len() == want.len() && got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{arch} {precision}: {n} patches in parts for {t} threads");
                }
            }
        }
    }
}

#[test]
fn bad_lengths_and_misuse_are_errors() {
    let m = model(Arch::Unet);
    let mut p = m.init_params(&mut Rng::new(1));
    let x = input(Arch::Unet, 2, 2);
    let mut ws = m.workspace(2).unwrap();
    let mut g = m.zero_grads();
    let dout = vec![0.0; 2 * 32 * 32];
    assert!(m.workspace(0).is_err());
    assert!(m.backward(&mut ws, &p, &mut g, &dout).is_err(), "backward before a training forward");
    assert!(m.forward_eval(&mut ws, &p, &x[..1024]).is_err());
    assert!(m.forward_eval(&mut ws, &p[1..], &x).is_err());
    assert!(m.forward_train(&mut ws, &mut p, &x[1..], &mut Rng::new(0)).is_err());
    m.forward_train(&mut ws, &mut p, &x, &mut Rng::new(0)).unwrap();
    assert!(m.backward(&mut ws, &p, &mut g[1..], &dout).is_err());
    assert!(m.backward(&mut ws, &p, &mut g, &dout[1..]).is_err());
    assert!(m.backward(&mut ws, &p[1..], &mut g, &dout).is_err());
    m.backward(&mut ws, &p, &mut g, &dout).unwrap();
    m.forward_eval(&mut ws, &p, &x).unwrap();
    assert!(m.backward(&mut ws, &p, &mut g, &dout).is_err(), "backward after an eval forward");
    let other = model(Arch::Dncnn);
    let mut ows = other.workspace(2).unwrap();
    assert!(m.forward_eval(&mut ows, &p, &x).is_err(), "another architecture's workspace");
}

/// `backward_with_input`'s input gradient against central differences of the
/// input pixels, with the loss `sum(out * r)`; its parameter gradients are
/// bit-identical to `backward`'s, and it accumulates into `dx` (pre-filled).
/// BatchNorm shifts start at `shift` to keep ReLU inputs off the kink (see `grad_check`).
/// Per-pixel differences are checked where `per_pixel` (HardNet-original's
/// non-affine BatchNorm keeps half of every layer's ReLU inputs near the kink,
/// so only its directional derivatives are stable).
fn input_grad_check(m: &Model, n: usize, seed: u64, eps: f32, shift: f32, per_pixel: bool) {
    let arch = m.arch();
    let mut p0 = m.init_params(&mut Rng::new(seed));
    for spec in m.layout().specs() {
        if spec.name.starts_with("bn") && spec.name.ends_with(".bias") {
            p0[spec.range()].iter_mut().for_each(|v| *v += shift);
        }
    }
    let x = input(arch, n, seed + 1);
    let r = rand_vec(&mut Rng::new(seed + 3), n * m.out_len(), -1.0, 1.0);
    let mut ws = m.workspace(n).unwrap();
    let fwd = |ws: &mut Workspace, x: &[f32]| {
        let mut p = p0.clone();
        proj(m.forward_train(ws, &mut p, x, &mut Rng::new(seed + 2)).unwrap(), &r)
    };
    let mut p = p0.clone();
    m.forward_train(&mut ws, &mut p, &x, &mut Rng::new(seed + 2)).unwrap();
    let (mut g_plain, mut g_with) = (m.zero_grads(), m.zero_grads());
    m.backward(&mut ws, &p, &mut g_plain, &r).unwrap();
    let mut dx = vec![0.5f32; x.len()];
    m.backward_with_input(&mut ws, &p, &mut g_with, &r, &mut dx).unwrap();
    assert!(g_plain.iter().zip(&g_with).all(|(a, b)| a.to_bits() == b.to_bits()), "{arch}: parameter gradients");
    dx.iter_mut().for_each(|v| *v -= 0.5);
    let rms = (dx.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / dx.len() as f64).sqrt();
    assert!(rms > 0.0, "{arch}: zero input gradient");
    // Directional derivatives along random directions average over many ReLU kinks.
    for k in 0..4 {
        let v = rand_vec(&mut Rng::new(seed + 10 + k), x.len(), -1.0, 1.0);
        let moved = |h: f32| x.iter().zip(&v).map(|(&a, &b)| a + h * b).collect::<Vec<f32>>();
        let num = (fwd(&mut ws, &moved(eps)) - fwd(&mut ws, &moved(-eps))) / (2.0 * eps as f64);
        let ana = proj(&dx, &v);
        let scale = (dx.len() as f64).sqrt() * rms;
        assert!((num - ana).abs() <= 2e-2 * scale, "{arch} direction {k}: numerical {num:.6e} vs analytic {ana:.6e}");
    }
    if per_pixel {
        let tol = Tol { atol: 5e-2 * rms, rtol: 5e-2 };
        check_grad(&format!("{arch} input"), &x, &dx, eps, tol, 48, |xs| fwd(&mut ws, xs)).unwrap();
    }
    // The wrong length is an error, not a panic.
    assert!(m.backward_with_input(&mut ws, &p, &mut g_with, &r, &mut dx[1..]).is_err());
}

#[test]
fn input_gradients_match_finite_differences() {
    input_grad_check(&model(Arch::Unet), 2, 51, 1e-3, 0.0, true);
    input_grad_check(&model(Arch::Dncnn), 1, 52, 1e-3, 1.5, true);
    let mut base = model(Arch::HardNetBaseline);
    base.set_dropout(0.0).unwrap();
    input_grad_check(&base, 3, 53, 0.25, 1.5, true);
    // Per-patch standardisation scales a pixel step by 1/std (about 3.5 here) and bn1..bn7
    // normalise over the batch: a small step and 16 patches keep the quotient in its linear range
    // (at 1e-3 it is off by up to 50% and converges as the step shrinks).
    let mut orig = model(Arch::HardNetOriginal);
    orig.set_dropout(0.0).unwrap();
    input_grad_check(&orig, 16, 54, 3e-5, 0.0, false);
}
