//! After warm-up, a training or inference step allocates nothing: every
//! buffer lives in workspaces sized once per batch shape. A counting global
//! allocator (this test binary's own) sees every heap allocation of every
//! thread while the measured steps run in a 2-thread pool.

use nhpatch::Precision;
use nhpatch::loss::LossKind;
use nhpatch::loss::hardnet::{HardNetLoss, HardNetWorkspace};
use nhpatch::loss::l1::l1_loss;
use nhpatch::loss::sos::{SOS_KNN, SosRegularizer, SosWorkspace};
use nhpatch::loss::triplet::TripletLoss;
use nhpatch::models::{Arch, DESC_LEN, Model, PATCH_LEN};
use nhpatch::optim::adam::{Adam, AdamState};
use nhpatch::optim::sgd::{Sgd, SgdState};
use nhpatch::rng::Rng;
use nhpatch::train::throughput::{BenchConfig, Mode, Workload};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as `alloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `step` twice to warm up, then counts the allocations of three more.
fn allocations(mut step: impl FnMut()) -> usize {
    step();
    step();
    counted(step)
}

/// The allocations of three runs of `step`.
fn counted(mut step: impl FnMut()) -> usize {
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        step();
    }
    COUNTING.store(false, Ordering::SeqCst);
    ALLOCS.load(Ordering::SeqCst)
}

fn inputs(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n * PATCH_LEN).map(|_| rng.uniform(0.0, 255.0)).collect()
}

fn infer_allocations(arch: Arch, batch: usize) -> usize {
    let model = Model::new(arch).unwrap();
    let mut rng = Rng::new(1);
    let params = model.init_params(&mut rng);
    let x = inputs(&mut rng, batch);
    let mut ws = model.workspace(batch).unwrap();
    allocations(|| {
        model.forward_eval(&mut ws, &params, &x).unwrap();
    })
}

/// Inference in `precision` (int8 calibrated on the batch itself).
fn infer_allocations_in(arch: Arch, batch: usize, precision: Precision) -> usize {
    infer_allocations_split(arch, batch, precision, 1)
}

/// As `infer_allocations_in`, on a workspace made for a pool of `threads`
/// (`Model::inference_workspace_for`: the batch in parts run side by side).
fn infer_allocations_split(arch: Arch, batch: usize, precision: Precision, threads: usize) -> usize {
    let model = Model::new(arch).unwrap();
    let mut rng = Rng::new(2);
    let params = model.init_params(&mut rng);
    let x = inputs(&mut rng, batch);
    let calib = model.calibrate(&params, &x, nhpatch::Int8Layers::Auto).unwrap();
    let mut ws = model.inference_workspace_for(batch, precision, Some(&calib), threads).unwrap();
    allocations(|| {
        model.forward_eval(&mut ws, &params, &x).unwrap();
    })
}

fn denoiser_train_allocations(arch: Arch, batch: usize) -> usize {
    let model = Model::new(arch).unwrap();
    let mut rng = Rng::new(2);
    let mut params = model.init_params(&mut rng);
    let x = inputs(&mut rng, batch);
    let target: Vec<f32> = x.iter().map(|v| (v - 10.0).max(0.0)).collect();
    let ranges = model.layout().trainable_ranges();
    let (mut grads, mut dout) = (model.zero_grads(), vec![0.0f32; x.len()]);
    let mut ws = model.workspace(batch).unwrap();
    let adam = Adam::new(1e-3);
    let mut state = AdamState::new(params.len());
    allocations(|| {
        grads.fill(0.0);
        dout.fill(0.0);
        let out = model.forward_train(&mut ws, &mut params, &x, &mut rng).unwrap();
        l1_loss(&mut dout, out, &target).unwrap();
        model.backward(&mut ws, &params, &mut grads, &dout).unwrap();
        adam.step(&mut state, &mut params, &grads, &ranges).unwrap();
    })
}

/// A HardNet in training mode on `n` random patches, with its gradient
/// buffers, workspace and an SGD optimizer, ready for `descriptor_step`.
struct Descriptor {
    model: Model,
    params: Vec<f32>,
    x: Vec<f32>,
    grads: Vec<f32>,
    dout: Vec<f32>,
    ws: nhpatch::models::Workspace,
    sgd: Sgd,
    state: SgdState,
    ranges: Vec<std::ops::Range<usize>>,
    rng: Rng,
}

impl Descriptor {
    fn new(arch: Arch, n: usize, seed: u64) -> Self {
        let mut model = Model::new(arch).unwrap();
        model.set_dropout(0.3).unwrap();
        let mut rng = Rng::new(seed);
        let params = model.init_params(&mut rng);
        let x = inputs(&mut rng, n);
        let (grads, dout) = (model.zero_grads(), vec![0.0f32; n * DESC_LEN]);
        let ws = model.workspace(n).unwrap();
        let state = SgdState::new(params.len());
        let sgd = Sgd { momentum: 0.9, weight_decay: 1e-4, ..Sgd::new(0.1) };
        let ranges = model.layout().trainable_ranges();
        Descriptor { model, params, x, grads, dout, ws, sgd, state, ranges, rng }
    }

    /// One step: forward, `loss(descriptors, their gradient)`, backward, SGD.
    fn step(&mut self, loss: impl FnOnce(&[f32], &mut [f32])) {
        let d = self;
        d.grads.fill(0.0);
        d.dout.fill(0.0);
        let out = d.model.forward_train(&mut d.ws, &mut d.params, &d.x, &mut d.rng).unwrap();
        loss(out, &mut d.dout);
        d.model.backward(&mut d.ws, &d.params, &mut d.grads, &d.dout).unwrap();
        d.sgd.step(&mut d.state, &mut d.params, &d.grads, &d.ranges).unwrap();
    }
}

fn triplet_train_allocations(batch: usize) -> usize {
    let mut net = Descriptor::new(Arch::HardNetBaseline, 3 * batch, 3);
    let (loss, d) = (TripletLoss::new(1.0).unwrap(), batch * DESC_LEN);
    allocations(|| {
        net.step(|out, dout| {
            let (ga, rest) = dout.split_at_mut(d);
            let (gp, gn) = rest.split_at_mut(d);
            loss.loss(ga, gp, gn, &out[..d], &out[d..2 * d], &out[2 * d..], batch, DESC_LEN).unwrap();
        })
    })
}

/// HardNet loss, with SOSNet's regulariser added when `sos` is set.
fn hardnet_loss_train_allocations(pairs: usize, sos: bool) -> usize {
    let mut net = Descriptor::new(Arch::HardNetOriginal, 2 * pairs, 4);
    let (loss, d) = (HardNetLoss::new(1.0, true).unwrap(), pairs * DESC_LEN);
    let mut lws = HardNetWorkspace::new(pairs);
    let reg = SosRegularizer::new(1.0, SOS_KNN).unwrap();
    let mut sws = SosWorkspace::new(pairs);
    allocations(|| {
        net.step(|out, dout| {
            let (ga, gp) = dout.split_at_mut(d);
            let (a, p) = (&out[..d], &out[d..]);
            loss.loss(ga, gp, &mut lws, a, p, pairs, DESC_LEN).unwrap();
            if sos {
                reg.loss(ga, gp, &mut sws, a, p, pairs, DESC_LEN).unwrap();
            }
        })
    })
}

/// The C ABI's inference calls (f32 and u8 in; f32, and u8 for the denoiser,
/// out) on 300 patches (batches of 256 and 44 padded to 64), from this
/// thread, on the network's own 2-thread pool: the network runs straight
/// into the caller's buffer and keeps its workspaces between calls.
fn abi_allocations(arch: Arch, precision: &str) -> usize {
    use nhpatch::capi::*;
    let path = std::env::temp_dir().join(format!("nhpatch-no-alloc-{}-{arch}.safetensors", std::process::id()));
    nhpatch::net::Network::init(arch, 5).unwrap().save(&path).unwrap();
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let mut net: *mut NhpNetwork = std::ptr::null_mut();
    // SAFETY: a valid C string and an out pointer to a local.
    assert_eq!(unsafe { nhp_load(c.as_ptr(), &mut net) }, NhpStatus::Ok);
    // SAFETY: `net` is the live handle just loaded.
    assert_eq!(unsafe { nhp_set_threads(net, 2) }, NhpStatus::Ok);
    let p = std::ffi::CString::new(precision).unwrap();
    // SAFETY: the live handle and a valid C string.
    assert_eq!(unsafe { nhp_set_precision(net, p.as_ptr()) }, NhpStatus::Ok);
    let n = 300;
    let x = inputs(&mut Rng::new(6), n);
    let x8: Vec<u8> = x.iter().map(|&v| v as u8).collect();
    let per = if arch.is_denoiser() { PATCH_LEN } else { DESC_LEN };
    let (mut y, mut y8) = (vec![0.0f32; n * per], vec![0u8; n * per]);
    let count = allocations(|| {
        // SAFETY: every buffer is live and of the length passed.
        unsafe {
            if arch.is_denoiser() {
                assert_eq!(nhp_denoise_f32(net, x.as_ptr(), n, y.as_mut_ptr(), y.len()), NhpStatus::Ok);
                assert_eq!(nhp_denoise_u8(net, x8.as_ptr(), n, y8.as_mut_ptr(), y8.len()), NhpStatus::Ok);
            } else {
                assert_eq!(nhp_describe_f32(net, x.as_ptr(), n, y.as_mut_ptr(), y.len()), NhpStatus::Ok);
                assert_eq!(nhp_describe_u8(net, x8.as_ptr(), n, y.as_mut_ptr(), y.len()), NhpStatus::Ok);
            }
        }
    });
    // SAFETY: the handle is live and not used after.
    unsafe { nhp_free(net) };
    let _ = std::fs::remove_file(path);
    count
}

/// The first GEMM a fresh pool worker ever runs, with each of nhpatch's own
/// packed kernels this CPU has (the `matrixmultiply` crate, kept for
/// comparison, packs into a fresh buffer per call), at sizes past every
/// blocking (so each packing buffer is at its largest): work stealing
/// decides which worker runs which GEMM, so a worker's first one may come
/// after warm-up, and must not allocate either.
fn fresh_worker_gemm_allocations() -> (usize, rayon::ThreadPool) {
    use nhpatch::gemm::{Kernel, MatMut, MatRef, available_kernels, gemm_with};
    let (m, k, n) = (300, 800, 1000);
    let mut rng = Rng::new(7);
    let a: Vec<f32> = (0..m * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let mut c = vec![f32::NAN; m * n];
    let kernels: Vec<Kernel> =
        available_kernels().into_iter().filter(|k| !matches!(k, Kernel::Naive | Kernel::MatrixMultiply)).collect();
    assert!(kernels.contains(&Kernel::Portable));
    let fresh = nhpatch::threads::pool(1).unwrap();
    let count = fresh.install(|| {
        ALLOCS.store(0, Ordering::SeqCst);
        COUNTING.store(true, Ordering::SeqCst);
        for &kernel in &kernels {
            let (a, b) = (MatRef::row_major(&a, m, k).unwrap(), MatRef::row_major(&b, k, n).unwrap());
            gemm_with(kernel, 1.0, a, b, 0.0, MatMut::row_major(&mut c, m, n).unwrap()).unwrap();
        }
        COUNTING.store(false, Ordering::SeqCst);
        ALLOCS.load(Ordering::SeqCst)
    });
    // The pool goes back to the caller: a dropped pool's thread exits
    // asynchronously, and its exit (thread-local destructors) allocates,
    // which must not land in a later count.
    (count, fresh)
}

/// What `nhpatch bench` and the criterion model benches time.
fn workload_allocations(arch: Arch, mode: Mode, loss: Option<LossKind>, batch: usize) -> usize {
    let mut w = Workload::new(&BenchConfig { loss, ..BenchConfig::new(arch, mode, batch) }).unwrap();
    allocations(|| w.step().unwrap())
}

/// A Winograd weight gradient whose workspace has two lanes, warmed up on
/// one thread (so only lane 0 ever ran), then measured on two: the second
/// thread's lane must already hold its scratch. Which thread takes which
/// shard varies from step to step under load, so a lane sized on its first
/// use allocated after warm-up.
fn winograd_lane_allocations() -> usize {
    use nhpatch::layers::winograd::Winograd;
    let (cin, cout, side, n) = (16, 16, 8, 8);
    let layer = Winograd::new(cin, cout, side, side).unwrap();
    let (two, one) = (nhpatch::threads::pool(2).unwrap(), nhpatch::threads::pool(1).unwrap());
    // Every worker of both pools running before anything is counted: a
    // worker's start (its thread-local state, crossbeam's epoch handle)
    // allocates, and a pool's threads start asynchronously.
    two.broadcast(|_| ());
    one.broadcast(|_| ());
    let mut ws = two.install(|| layer.workspace(n));
    let mut rng = Rng::new(5);
    let x: Vec<f32> = (0..n * cin * side * side).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let dout: Vec<f32> = (0..n * cout * side * side).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let mut dw = vec![0.0f32; cout * cin * 9];
    let mut step = || layer.backward_weight(&mut dw, None, &x, &dout, n, &mut ws).unwrap();
    one.install(|| {
        step();
        step();
    });
    two.install(|| counted(step))
}

#[test]
fn steps_after_warm_up_allocate_nothing() {
    // One test in this binary: the counter is global, so nothing else may run meanwhile.
    let (first, _fresh) = fresh_worker_gemm_allocations();
    let pool = nhpatch::threads::pool(2).unwrap();
    let hardnet = Some(LossKind::HardNet);
    let counts = pool.install(|| {
        vec![
            ("unet infer", infer_allocations(Arch::Unet, 20)),
            ("dncnn infer", infer_allocations(Arch::Dncnn, 6)),
            ("hardnet baseline infer", infer_allocations(Arch::HardNetBaseline, 20)),
            ("hardnet original infer", infer_allocations(Arch::HardNetOriginal, 20)),
            // One patch on two threads: its GEMMs and plane transforms shared out.
            ("unet infer, one patch", infer_allocations(Arch::Unet, 1)),
            ("dncnn infer, one patch", infer_allocations(Arch::Dncnn, 1)),
            ("hardnet baseline infer, one patch", infer_allocations(Arch::HardNetBaseline, 1)),
            ("hardnet original infer, one patch", infer_allocations(Arch::HardNetOriginal, 1)),
            ("unet infer int8", infer_allocations_in(Arch::Unet, 20, Precision::Int8)),
            ("dncnn infer int8", infer_allocations_in(Arch::Dncnn, 6, Precision::Int8)),
            ("hardnet baseline infer int8", infer_allocations_in(Arch::HardNetBaseline, 20, Precision::Int8)),
            ("hardnet original infer int8", infer_allocations_in(Arch::HardNetOriginal, 20, Precision::Int8)),
            ("unet infer bf16", infer_allocations_in(Arch::Unet, 20, Precision::Bf16)),
            ("dncnn infer bf16", infer_allocations_in(Arch::Dncnn, 6, Precision::Bf16)),
            ("hardnet baseline infer bf16", infer_allocations_in(Arch::HardNetBaseline, 20, Precision::Bf16)),
            ("hardnet original infer bf16", infer_allocations_in(Arch::HardNetOriginal, 20, Precision::Bf16)),
            (
                "hardnet original infer f32 (inference workspace)",
                infer_allocations_in(Arch::HardNetOriginal, 20, Precision::F32),
            ),
            ("unet train", denoiser_train_allocations(Arch::Unet, 10)),
            ("dncnn train", denoiser_train_allocations(Arch::Dncnn, 4)),
            ("hardnet triplet train", triplet_train_allocations(6)),
            ("hardnet loss train", hardnet_loss_train_allocations(8, false)),
            ("hardnet loss + SOS train", hardnet_loss_train_allocations(12, true)),
            ("bench workload: unet infer", workload_allocations(Arch::Unet, Mode::Infer, None, 4)),
            ("bench workload: dncnn train", workload_allocations(Arch::Dncnn, Mode::Train, None, 2)),
            ("bench workload: hardnet triplet", workload_allocations(Arch::HardNetBaseline, Mode::Train, None, 4)),
            ("bench workload: hardnet pairs", workload_allocations(Arch::HardNetOriginal, Mode::Train, hardnet, 8)),
        ]
    });
    // Every model and precision on a workspace in parts (2 and 3 of a batch of 7).
    let split: Vec<(&str, usize)> = pool.install(|| {
        let archs = [Arch::Unet, Arch::Dncnn, Arch::HardNetBaseline, Arch::HardNetOriginal];
        let precisions = [Precision::F32, Precision::Int8, Precision::Bf16];
        let mut out = Vec::new();
        for arch in archs {
            for precision in precisions {
                for threads in [2, 3] {
                    let name = format!("{arch} infer {precision} in {threads} parts").leak() as &str;
                    out.push((name, infer_allocations_split(arch, 7, precision, threads)));
                }
            }
        }
        out
    });
    let lanes = winograd_lane_allocations();
    let counts = [
        vec![
            ("a fresh worker's first GEMM", first),
            ("winograd weight gradient on a lane first used after warm-up", lanes),
        ],
        counts,
        split,
        vec![
            ("unet through the C ABI", abi_allocations(Arch::Unet, "f32")),
            ("hardnet through the C ABI", abi_allocations(Arch::HardNetOriginal, "f32")),
            ("unet int8 through the C ABI", abi_allocations(Arch::Unet, "int8")),
            ("hardnet int8 through the C ABI", abi_allocations(Arch::HardNetOriginal, "int8")),
            ("hardnet bf16 through the C ABI", abi_allocations(Arch::HardNetOriginal, "bf16")),
        ],
    ]
    .concat();
    for (what, n) in &counts {
        assert_eq!(*n, 0, "{what}: {n} allocations in 3 steps after warm-up ({counts:?})");
    }
}
