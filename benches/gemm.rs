//! The forward convolution GEMMs of the three models at batch 64:
//! `C[M x N] = A[M x K] * B[K x N]` with M = Cout, K = Cin * kh * kw and
//! N = 64 * Hout * Wout (HardNet's 8x8 valid conv7 is `out[64 x 128] =
//! X[64 x 8192] * W^T[8192 x 128]`, with W^T a transposed view). Every
//! available kernel runs every shape (naive only the two smallest), single
//! threaded. Throughput is `2 * M * N * K` elements, so criterion's
//! "Gelem/s" reads as GFLOP/s.
//!
//! The last rows are the other GEMMs a training step runs: Winograd's
//! transform-domain products and the weight gradient (B a transposed view).
//!
//! The `gemm_q8/*` and `gemm_bf16/*` groups time the int8 and bf16 GEMMs
//! beside the best f32 kernel.
//!
//! `cargo bench --bench gemm`; add `--features compare-gemm-crate` to also run
//! the `gemm` crate (`Parallelism::None`) on the same shapes.

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use nhpatch::gemm::{Kernel, MatMut, MatRef, available_kernels, gemm_with};
use std::hint::black_box;
use std::time::Duration;

/// (name, M, K, N, B given as a transposed view).
const SHAPES: &[(&str, usize, usize, usize, bool)] = &[
    ("unet_conv1", 16, 9, 65536, false),
    ("unet_conv2", 32, 144, 16384, false),
    ("unet_conv3", 64, 128, 65536, false),
    ("unet_conv4", 64, 720, 65536, false),
    ("unet_conv5", 1, 576, 65536, false),
    ("dncnn_conv1", 64, 9, 65536, false),
    ("dncnn_conv2_16", 64, 576, 65536, false),
    ("dncnn_conv17", 1, 576, 65536, false),
    ("hardnet_conv1", 32, 9, 65536, false),
    ("hardnet_conv2", 32, 288, 65536, false),
    ("hardnet_conv3", 64, 288, 16384, false),
    ("hardnet_conv4", 64, 576, 16384, false),
    ("hardnet_conv5", 128, 576, 4096, false),
    ("hardnet_conv6", 128, 1152, 4096, false),
    ("hardnet_conv7", 64, 8192, 128, true),
    // Winograd F(2x2,3x3) transform-domain GEMMs, one of 16 per group of
    // images: M = Cout, K = Cin, N = 2x2 tiles in the group (256: one 32x32
    // image, four 16x16 or sixteen 8x8).
    ("dncnn_wino", 64, 64, 256, false),
    ("unet_conv4_wino", 64, 80, 256, false),
    ("hardnet_conv2_wino", 32, 32, 256, false),
    ("hardnet_conv4_wino", 64, 64, 256, false),
    ("hardnet_conv6_wino", 128, 128, 256, false),
    // Weight gradients of one 32x32 image: dW[Cout, K] += dO[Cout, P] * col^T[P, K].
    ("dncnn_dw", 64, 1024, 576, true),
    ("hardnet_conv2_dw", 32, 1024, 288, true),
];

/// Naive runs only where one call stays well under a second.
const NAIVE_MAX_FLOP: usize = 40_000_000;

fn values(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

fn bench_gemm(c: &mut Criterion) {
    for &(name, m, k, n, b_transposed) in SHAPES {
        let flop = 2 * m * n * k;
        let a = values(m * k, 1);
        let b = values(k * n, 2);
        let mut out = vec![0.0f32; m * n];
        let av = MatRef::row_major(&a, m, k).unwrap();
        // conv7 multiplies by W^T: W is [128 x 8192] row-major, viewed transposed.
        let bv =
            if b_transposed { MatRef::row_major(&b, n, k).unwrap().t() } else { MatRef::row_major(&b, k, n).unwrap() };

        let mut g = c.benchmark_group(format!("gemm/{name}"));
        g.throughput(Throughput::Elements(flop as u64));
        g.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
        g.sampling_mode(SamplingMode::Flat);
        for kernel in available_kernels() {
            if kernel == Kernel::Naive && flop > NAIVE_MAX_FLOP {
                continue;
            }
            g.bench_function(BenchmarkId::from_parameter(kernel.name()), |bench| {
                bench.iter(|| {
                    let cv = MatMut::row_major(&mut out, m, n).unwrap();
                    gemm_with(kernel, 1.0, black_box(av), black_box(bv), 0.0, cv).unwrap();
                })
            });
        }
        #[cfg(feature = "compare-gemm-crate")]
        g.bench_function(BenchmarkId::from_parameter("gemm-crate"), |bench| {
            bench.iter(|| {
                // SAFETY: the pointers and strides describe the same dense
                // buffers `av`, `bv` and `out` that were bounds-checked above.
                unsafe {
                    gemm_crate::gemm(
                        m,
                        n,
                        k,
                        out.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        black_box(a.as_ptr()),
                        1,
                        k as isize,
                        black_box(b.as_ptr()),
                        bv.col_stride() as isize,
                        bv.row_stride() as isize,
                        0.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        gemm_crate::Parallelism::None,
                    )
                }
            })
        });
        g.finish();
    }
}

/// A GEMM in reduced precision, prepared for one shape: a label and the
/// call that writes C.
type LowGemm = (String, Box<dyn FnMut(MatMut<'_>)>);

/// One group per forward conv shape, `{group}/{shape}`: the best f32 kernel,
/// then each GEMM `prepare(A, B, flop)` returns (A and B converted and
/// packed once: what a layer does outside the product is not timed here).
fn low_precision_groups(
    c: &mut Criterion,
    group: &str,
    prepare: impl Fn(MatRef<'_>, MatRef<'_>, usize) -> Vec<LowGemm>,
) {
    use nhpatch::gemm::best_kernel;
    for &(name, m, k, n, b_transposed) in SHAPES.iter().filter(|s| !s.0.ends_with("_dw") && !s.0.ends_with("_wino")) {
        let flop = 2 * m * n * k;
        let a = values(m * k, 1);
        let b = values(k * n, 2);
        let av = MatRef::row_major(&a, m, k).unwrap();
        let bv =
            if b_transposed { MatRef::row_major(&b, n, k).unwrap().t() } else { MatRef::row_major(&b, k, n).unwrap() };
        let mut out = vec![0.0f32; m * n];
        let mut g = c.benchmark_group(format!("{group}/{name}"));
        g.throughput(Throughput::Elements(flop as u64));
        g.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
        g.sampling_mode(SamplingMode::Flat);
        let f32_kernel = best_kernel();
        g.bench_function(BenchmarkId::from_parameter(format!("f32-{}", f32_kernel.name())), |bench| {
            bench.iter(|| {
                let cv = MatMut::row_major(&mut out, m, n).unwrap();
                gemm_with(f32_kernel, 1.0, black_box(av), black_box(bv), 0.0, cv).unwrap();
            })
        });
        for (label, mut run) in prepare(av, bv, flop) {
            g.bench_function(BenchmarkId::from_parameter(label), |bench| {
                bench.iter(|| run(MatMut::row_major(&mut out, m, n).unwrap()))
            });
        }
        g.finish();
    }
}

/// The int8 GEMM (`gemm::q8`): `C = out(A * B)`, each int8 kernel.
fn bench_q8(c: &mut Criterion) {
    use nhpatch::gemm::q8::{Q8Act, Q8Kernel, Q8Out, Q8Weights, gemm_q8_with, pack_b, packed_b_len};
    low_precision_groups(c, "gemm_q8", |av, bv, flop| {
        let (k, n) = (bv.rows(), bv.cols());
        let w = std::rc::Rc::new(Q8Weights::quantize(av).unwrap());
        let act = Q8Act::from_range(-0.5, 0.5).unwrap();
        let mut packed = vec![0u8; packed_b_len(k, n)];
        pack_b(bv, act, &mut packed).unwrap();
        let packed = std::rc::Rc::new(packed);
        let scale: std::rc::Rc<Vec<f32>> = std::rc::Rc::new(w.scales().iter().map(|s| s * act.scale).collect());
        let kernels = Q8Kernel::ALL.iter().copied().filter(|k| k.is_available());
        kernels
            .filter(|&k| k != Q8Kernel::Naive || flop <= NAIVE_MAX_FLOP)
            .map(|kernel| {
                let (w, packed, scale) = (w.clone(), packed.clone(), scale.clone());
                let run = move |cv: MatMut<'_>| {
                    let o = Q8Out { scale: &scale, shift: None, relu: true };
                    gemm_q8_with(kernel, &w, black_box(&packed), n, act.zero, o, cv).unwrap();
                };
                (format!("int8-{}", kernel.name()), Box::new(run) as Box<dyn FnMut(MatMut<'_>)>)
            })
            .collect()
    });
}

/// The bf16 GEMM (`gemm::bf16`): `C = A * B`, each bf16 kernel.
fn bench_bf16(c: &mut Criterion) {
    use nhpatch::gemm::bf16::{Bf16Kernel, Bf16Weights, gemm_bf16_with, pack_b, packed_b_len};
    low_precision_groups(c, "gemm_bf16", |av, bv, flop| {
        let (k, n) = (bv.rows(), bv.cols());
        let w = std::rc::Rc::new(Bf16Weights::convert(av));
        let mut packed = vec![0u16; packed_b_len(k, n)];
        pack_b(bv, &mut packed).unwrap();
        let packed = std::rc::Rc::new(packed);
        let kernels = Bf16Kernel::ALL.iter().copied().filter(|k| k.is_available());
        kernels
            .filter(|&k| k != Bf16Kernel::Naive || flop <= NAIVE_MAX_FLOP)
            .map(|kernel| {
                let (w, packed) = (w.clone(), packed.clone());
                let run = move |cv: MatMut<'_>| gemm_bf16_with(kernel, &w, black_box(&packed), n, cv).unwrap();
                (format!("bf16-{}", kernel.name()), Box::new(run) as Box<dyn FnMut(MatMut<'_>)>)
            })
            .collect()
    });
}

criterion_group!(benches, bench_gemm, bench_q8, bench_bf16);
criterion_main!(benches);
