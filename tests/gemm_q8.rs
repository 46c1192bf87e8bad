//! The int8 GEMM (`gemm::q8`) against its naive reference and against f32:
//! every kernel this CPU has gives the naive kernel's bits on ragged shapes
//! (every m up to 17, n around the 16-column panel, k around the 4-value
//! step), over C full of NaN, for any column split; packing follows the
//! documented layout; the result is within the quantization error bound of
//! the f32 product; storing C as the next layer's codes (`Q8Codes`, a batch
//! of images; `Q8Laid`, in the reader's layout) gives the codes of the
//! stored values, with every kernel; refusals are errors, never panics.

use nhpatch::Error;
use nhpatch::gemm::q8::{
    B_MAX, MAX_K, PANEL, Q8Act, Q8Codes, Q8Kernel, Q8Laid, Q8Layout, Q8Out, Q8Weights, best_q8_kernel, gemm_q8_with,
    interleave_step, pack_b, pack_b_codes, pack_bt, packed_b_len, padded_depth,
};
use nhpatch::gemm::{Kernel, MatMut, MatRef};
use nhpatch::rng::Rng;

fn rand(rng: &mut Rng, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..len).map(|_| rng.uniform(lo, hi)).collect()
}

fn kernels() -> Vec<Q8Kernel> {
    let k: Vec<_> = Q8Kernel::ALL.iter().copied().filter(|k| k.is_available()).collect();
    for missing in Q8Kernel::ALL.iter().filter(|k| !k.is_available()) {
        eprintln!("int8 kernel '{}' not on this CPU: not tested here", missing.name());
    }
    k
}

/// One case: weights `m x k`, activations `k x n` in `[lo, hi]`, an output
/// map with shift and ReLU; returns C (row-major `m x n`) from `kernel`.
struct Case {
    w: Q8Weights,
    act: Q8Act,
    packed: Vec<u8>,
    scale: Vec<f32>,
    shift: Vec<f32>,
    n: usize,
}

impl Case {
    fn new(rng: &mut Rng, m: usize, k: usize, n: usize, lo: f32, hi: f32) -> (Case, Vec<f32>, Vec<f32>) {
        let wf = rand(rng, m * k, -1.0, 1.0);
        let bf = rand(rng, k * n, lo, hi);
        let w = Q8Weights::quantize(MatRef::row_major(&wf, m, k).unwrap()).unwrap();
        let act = Q8Act::from_range(lo, hi).unwrap();
        let mut packed = vec![0xAA; packed_b_len(k, n)];
        pack_b(MatRef::row_major(&bf, k, n).unwrap(), act, &mut packed).unwrap();
        let scale = w.scales().iter().map(|s| s * act.scale).collect();
        let shift = rand(rng, m, -0.5, 0.5);
        (Case { w, act, packed, scale, shift, n }, wf, bf)
    }

    fn out(&self, relu: bool) -> Q8Out<'_> {
        Q8Out { scale: &self.scale, shift: Some(&self.shift), relu }
    }

    fn run(&self, kernel: Q8Kernel, relu: bool) -> Vec<f32> {
        let m = self.w.rows();
        let mut c = vec![f32::NAN; m * self.n];
        gemm_q8_with(
            kernel,
            &self.w,
            &self.packed,
            self.n,
            self.act.zero,
            self.out(relu),
            MatMut::row_major(&mut c, m, self.n).unwrap(),
        )
        .unwrap();
        c
    }
}

fn same_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.to_bits() == w.to_bits(), "{what}: element {i} is {g}, the reference {w}");
    }
}

#[test]
fn every_kernel_matches_naive_bit_for_bit_on_ragged_shapes() {
    let mut rng = Rng::new(7);
    let ks = kernels();
    // 47, 64, 70 and 130 rows: AMX blocks of three and four tiles, and several blocks.
    for m in (1..=17).chain([32, 47, 64, 70, 130]) {
        for &k in &[0, 1, 3, 4, 5, 9, 64, 147, 577] {
            for &n in &[1, 15, 16, 17, 33] {
                // Signed and non-negative inputs: zero points 64-ish and 0.
                let (lo, hi) = if (m + k + n) % 2 == 0 { (-1.5, 2.0) } else { (0.0, 3.0) };
                let (case, _, _) = Case::new(&mut rng, m, k, n, lo, hi);
                for relu in [false, true] {
                    let want = case.run(Q8Kernel::Naive, relu);
                    assert!(want.iter().all(|v| v.is_finite()), "naive wrote every element");
                    for &kernel in &ks {
                        same_bits(
                            &format!("{} m={m} k={k} n={n} relu={relu}", kernel.name()),
                            &case.run(kernel, relu),
                            &want,
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn strided_c_and_extreme_codes_match_naive() {
    // Every code at its extreme (|qa| = 63, qb in {0, 255}) over a deep K:
    // the sums a saturating i16 or an overflowing i32 would get wrong.
    let (m, k, n) = (9, 8192, 20);
    // Even rows all +1, odd rows alternating in groups of 3.
    let wf: Vec<f32> = (0..m * k).map(|i| if (i / k) % 2 == 0 || (i / 3) % 2 == 0 { 1.0 } else { -1.0 }).collect();
    let w = Q8Weights::quantize(MatRef::row_major(&wf, m, k).unwrap()).unwrap();
    let codes: Vec<u8> = (0..k * n).map(|i| if i % 5 == 0 { 0 } else { B_MAX }).collect();
    let mut packed = vec![0; packed_b_len(k, n)];
    pack_b_codes(&codes, n, k, n, &mut packed).unwrap();
    let scale = vec![1.0f32; m];
    let out = Q8Out { scale: &scale, shift: None, relu: false };
    // C column-major with a gap (a transposed view), pre-filled with NaN.
    let ld = m + 2;
    let run = |kernel| {
        let mut c = vec![f32::NAN; n * ld];
        gemm_q8_with(kernel, &w, &packed, n, 3, out, MatMut::new(&mut c, n, m, ld, 1).unwrap().t()).unwrap();
        c
    };
    let want = run(Q8Kernel::Naive);
    // The gaps stay NaN, the elements are exact integers.
    for (i, v) in want.iter().enumerate() {
        assert_eq!(v.is_nan(), i % ld >= m, "element {i}");
    }
    let exact =
        |i: usize, j: usize| -> f64 { (0..k).map(|p| w.code(i, p) as f64 * (codes[p * n + j] as f64 - 3.0)).sum() };
    assert_eq!(want[2 * ld + 4] as f64, exact(4, 2));
    assert_eq!(want[2 * ld + 5] as f64, exact(5, 2));
    assert!(exact(4, 2).abs() > 5e7, "the case reaches sums far beyond i16");
    for kernel in kernels() {
        let got = run(kernel);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "{}: element {i}", kernel.name());
        }
    }
}

#[test]
fn codes_stored_as_images_are_the_codes_of_the_values() {
    let mut rng = Rng::new(23);
    // Images of 8, 24 and 40 columns: runs of a panel crossing into the next
    // image, and one image per call; p = 1 is the dense layer's layout.
    for (m, k, n, p) in [(12, 36, 48, 8), (9, 20, 72, 24), (5, 7, 40, 40), (3, 13, 21, 1)] {
        let (case, _, _) = Case::new(&mut rng, m, k, n, -1.0, 2.0);
        let next = Q8Act::from_range(-0.5, 3.0).unwrap();
        for relu in [false, true] {
            let values = case.run(Q8Kernel::Naive, relu);
            // C[i, j] (row-major values) is code ((j / p) * m + i) * p + j % p.
            let mut want = vec![0u8; m * n];
            for i in 0..m {
                for j in 0..n {
                    want[((j / p) * m + i) * p + j % p] = next.quantize(values[i * n + j]);
                }
            }
            assert!(want.iter().any(|&q| q != want[0]), "the codes vary");
            for kernel in std::iter::once(Q8Kernel::Naive).chain(kernels()) {
                for fill in [0x00, 0xA5] {
                    let mut got = vec![fill; m * n];
                    let c = Q8Codes { codes: &mut got, act: next, p };
                    gemm_q8_with(kernel, &case.w, &case.packed, n, case.act.zero, case.out(relu), c).unwrap();
                    assert_eq!(got, want, "{} m={m} n={n} p={p} relu={relu}", kernel.name());
                }
            }
        }
        // A layout that does not hold the images is refused.
        let mut short = vec![0u8; m * n - 1];
        let c = Q8Codes { codes: &mut short, act: next, p };
        let r = gemm_q8_with(best_q8_kernel(), &case.w, &case.packed, n, case.act.zero, case.out(true), c);
        assert!(matches!(r, Err(Error::Shape(_))), "short codes");
        if p > 1 {
            let mut codes = vec![0u8; m * n];
            let c = Q8Codes { codes: &mut codes, act: next, p: p + 1 };
            let r = gemm_q8_with(best_q8_kernel(), &case.w, &case.packed, n, case.act.zero, case.out(true), c);
            assert!(matches!(r, Err(Error::Shape(_))), "images of {} columns in {n}", p + 1);
        }
    }
}

#[test]
fn laid_out_codes_land_where_the_layout_puts_each_pixel() {
    let mut rng = Rng::new(29);
    // Images of 4x4 (a panel holds one image), 8x3 (panels cross images),
    // 2x8 with 2 phases and a border; channels 8 (whole quads) and 6 (a partial quad).
    let layouts = [
        Q8Layout { channels: 8, h: 4, w: 4, ph: 4, phases: 1, pws: 4, top: 0, left: 0 },
        Q8Layout { channels: 8, h: 8, w: 3, ph: 10, phases: 1, pws: 5, top: 1, left: 1 },
        Q8Layout { channels: 6, h: 2, w: 8, ph: 4, phases: 2, pws: 5, top: 1, left: 1 },
    ];
    for layout in layouts {
        let (m, p) = (layout.channels, layout.h * layout.w);
        let n = 3 * p;
        let (case, _, _) = Case::new(&mut rng, m, 30, n, -1.0, 2.0);
        let next = Q8Act::from_range(-0.5, 3.0).unwrap();
        let values = case.run(Q8Kernel::Naive, true);
        let mut want = vec![next.zero; n / p * layout.image_len()];
        for i in 0..m {
            for j in 0..n {
                let (img, pix) = (j / p, j % p);
                want[img * layout.image_len() + layout.at(i, pix / layout.w, pix % layout.w)] =
                    next.quantize(values[i * n + j]);
            }
        }
        for kernel in std::iter::once(Q8Kernel::Naive).chain(kernels()) {
            let mut got = vec![next.zero; want.len()];
            let c = Q8Laid { codes: &mut got, act: next, layout };
            gemm_q8_with(kernel, &case.w, &case.packed, n, case.act.zero, case.out(true), c).unwrap();
            assert_eq!(got, want, "{} {layout:?}", kernel.name());
        }
        // A layout of other channels, or a buffer of another size, is refused.
        let mut got = vec![0u8; want.len()];
        let other = Q8Layout { channels: m + 4, ..layout };
        let c = Q8Laid { codes: &mut got, act: next, layout: other };
        let r = gemm_q8_with(best_q8_kernel(), &case.w, &case.packed, n, case.act.zero, case.out(true), c);
        assert!(matches!(r, Err(Error::Shape(_))), "{other:?}");
        let c = Q8Laid { codes: &mut got[1..], act: next, layout };
        let r = gemm_q8_with(best_q8_kernel(), &case.w, &case.packed, n, case.act.zero, case.out(true), c);
        assert!(matches!(r, Err(Error::Shape(_))), "short");
    }
}

#[test]
fn a_split_into_whole_panels_gives_the_same_bits() {
    let mut rng = Rng::new(11);
    let (m, k, n) = (12, 100, 70);
    let (case, _, _) = Case::new(&mut rng, m, k, n, -1.0, 1.0);
    let kernel = best_q8_kernel();
    let whole = case.run(kernel, true);
    let panel_bytes = padded_depth(k) * PANEL;
    // Columns [0, 32) and [32, 70): two calls on slices of packed B and C^T rows.
    let mut parts = vec![f32::NAN; m * n];
    for (j0, j1) in [(0, 32), (32, n)] {
        let b = &case.packed[j0 / PANEL * panel_bytes..j1.div_ceil(PANEL) * panel_bytes];
        let c = MatMut::new(&mut parts[j0..], m, j1 - j0, n, 1).unwrap();
        gemm_q8_with(kernel, &case.w, b, j1 - j0, case.act.zero, case.out(true), c).unwrap();
    }
    same_bits("split", &parts, &whole);
}

#[test]
fn the_result_is_within_the_quantization_bound_of_f32() {
    let mut rng = Rng::new(5);
    for &(m, k, n, lo, hi) in &[(16, 9, 40, 0.0, 1.0), (32, 288, 64, -2.0, 2.0), (64, 1152, 17, 0.0, 6.0)] {
        let (case, wf, bf) = Case::new(&mut rng, m, k, n, lo, hi);
        let none = vec![0.0; m];
        let out = Q8Out { scale: &case.scale, shift: Some(&none), relu: false };
        let mut c = vec![f32::NAN; m * n];
        let cm = MatMut::row_major(&mut c, m, n).unwrap();
        gemm_q8_with(best_q8_kernel(), &case.w, &case.packed, n, case.act.zero, out, cm).unwrap();
        let sb = case.act.scale as f64;
        for i in 0..m {
            let sa = case.w.scales()[i] as f64;
            for j in 0..n {
                let mut exact = 0.0f64;
                let mut bound = 0.0f64;
                for p in 0..k {
                    let (a, b) = (wf[i * k + p] as f64, bf[p * n + j] as f64);
                    exact += a * b;
                    // |a b - a' b'| <= |a - a'| |b| + |a'| |b - b'| with
                    // |a - a'| <= sa / 2, |b - b'| <= sb / 2.
                    bound += sa / 2.0 * b.abs() + (a.abs() + sa / 2.0) * sb / 2.0;
                }
                let got = c[i * n + j] as f64;
                assert!(
                    (got - exact).abs() <= bound * 1.001 + 1e-5 * exact.abs(),
                    "m={m} k={k} ({i}, {j}): {got} vs {exact}, bound {bound}"
                );
            }
        }
    }
}

#[test]
fn packing_follows_the_documented_layout() {
    let mut rng = Rng::new(3);
    let (k, n) = (10, 37);
    let bf = rand(&mut rng, k * n, -1.0, 1.0);
    let act = Q8Act::from_range(-1.0, 1.0).unwrap();
    let mut packed = vec![0xAA; packed_b_len(k, n)];
    // B given column-major: the strides, not the memory order, decide.
    let bt: Vec<f32> = (0..n * k).map(|i| bf[(i % k) * n + i / k]).collect();
    pack_b(MatRef::row_major(&bt, n, k).unwrap().t(), act, &mut packed).unwrap();
    let kp = padded_depth(k);
    assert_eq!(packed.len(), 3 * kp * PANEL);
    for (byte, &code) in packed.iter().enumerate() {
        let (panel, rest) = (byte / (kp * PANEL), byte % (kp * PANEL));
        let (p, j) = (rest / (4 * PANEL) * 4 + rest % 4, panel * PANEL + (rest % (4 * PANEL)) / 4);
        let want = if p < k && j < n { act.quantize(bf[p * n + j]) } else { 0 };
        assert_eq!(code, want, "byte {byte} (p {p}, j {j})");
    }
}

/// `pack_bt` (B given as its transpose, the dense layer's batch) quantizes a
/// run of each column at a time and scatters its quads: the bytes of `pack_b`
/// on the same matrix, for depths around the 4-value step and the 256-value
/// run, over a buffer full of garbage.
#[test]
fn pack_bt_gives_the_bytes_of_pack_b() {
    let mut rng = Rng::new(4);
    let act = Q8Act::from_range(-0.7, 1.3).unwrap();
    for k in [1, 3, 4, 5, 255, 256, 257, 258, 515, 1024] {
        for n in [1, 15, 16, 17, 40] {
            let bt = rand(&mut rng, k * n, -1.0, 1.5);
            let mut want = vec![0x5A; packed_b_len(k, n)];
            pack_b(MatRef::row_major(&bt, n, k).unwrap().t(), act, &mut want).unwrap();
            let mut got = vec![0xA5; packed_b_len(k, n)];
            pack_bt(&bt, k, n, act, &mut got).unwrap();
            assert_eq!(got, want, "k {k} n {n}");
        }
    }
    assert!(pack_bt::<f32>(&[], 0, 5, act, &mut []).is_ok());
    assert!(matches!(pack_bt(&[0.0; 11], 3, 4, act, &mut vec![0; packed_b_len(3, 4)]), Err(Error::Shape(_))));
}

#[test]
fn the_vector_step_interleave_matches_its_definition() {
    let mut rng = Rng::new(8);
    for _ in 0..20 {
        let rows: Vec<[u8; PANEL]> = (0..4).map(|_| std::array::from_fn(|_| rng.uniform(0.0, 256.0) as u8)).collect();
        let mut dst = [0xAAu8; 4 * PANEL];
        interleave_step(&mut dst, [&rows[0], &rows[1], &rows[2], &rows[3]]);
        for (i, &b) in dst.iter().enumerate() {
            assert_eq!(b, rows[i % 4][i / 4], "byte {i}");
        }
    }
}

#[test]
fn activation_and_weight_quantizers_are_exact_where_they_must_be() {
    let a = Q8Act::from_range(-0.3, 2.0).unwrap();
    assert_eq!(a.dequantize(a.quantize(0.0)), 0.0, "zero is exact (padding)");
    assert_eq!(a.quantize(-10.0), 0);
    assert_eq!(a.quantize(10.0), B_MAX);
    assert_eq!(a.quantize(f32::NAN), 0, "NaN takes the lowest code");
    assert_eq!((a.quantize(f32::NEG_INFINITY), a.quantize(f32::INFINITY)), (0, B_MAX));
    // The vectorised slice gives the scalar codes, extremes and halfway points included.
    let xs: Vec<f32> = (-300..900)
        .map(|i| i as f32 * a.scale / 2.0 - 0.3)
        .chain([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN, -0.0])
        .collect();
    let mut codes = vec![0xAA; xs.len()];
    a.quantize_slice(&xs, &mut codes);
    // Every vector width gives the same codes, on every length (vector loops, their tails).
    for &kernel in Kernel::ALL.iter().filter(|k| k.is_available()) {
        for len in [0, 1, 7, 8, 15, 16, 31, 32, 63, 64, 65, 200, xs.len()] {
            let mut other = vec![0xAA; len];
            a.quantize_slice_with(kernel, &xs[xs.len() - len..], &mut other).unwrap();
            assert_eq!(other, codes[xs.len() - len..], "{kernel:?}, {len} values");
        }
    }
    for (x, c) in xs.iter().zip(&codes) {
        assert_eq!(*c, a.quantize(*x), "{x}");
        // Round half up of x / scale + zero, clamped (the reference formula).
        let want = (x * (1.0 / a.scale) + a.zero as f32 + 0.5).floor().clamp(0.0, B_MAX as f32);
        assert_eq!(*c as f32, if x.is_nan() { 0.0 } else { want }, "{x}");
    }
    assert!((a.dequantize(a.quantize(1.234)) - 1.234).abs() <= a.scale / 2.0 + 1e-6);
    // A range missing 0 is widened to hold it.
    let pos = Q8Act::from_range(1.0, 3.0).unwrap();
    assert_eq!((pos.zero, pos.quantize(0.0)), (0, 0));
    assert_eq!(Q8Act::from_range(0.0, 0.0).unwrap(), Q8Act { scale: 1.0, zero: 0 });
    assert!(Q8Act::from_range(2.0, 1.0).is_err() && Q8Act::from_range(0.0, f32::INFINITY).is_err());

    let wf = [0.5, -1.0, 0.25, 0.0, 0.0, 0.0];
    let w = Q8Weights::quantize(MatRef::row_major(&wf, 2, 3).unwrap()).unwrap();
    // 0.5 / (1 / 63) is 31.499998 in f32: rounding follows the division as computed.
    assert_eq!((w.code(0, 1), w.code(0, 0), w.code(0, 2)), (-63, 31, 16));
    assert_eq!((w.scales()[1], w.code(1, 0)), (0.0, 0), "an all-zero row");
    assert_eq!(w.value(0, 1), -1.0);
    let bad = [1.0, f32::NAN];
    assert!(matches!(Q8Weights::quantize(MatRef::row_major(&bad, 1, 2).unwrap()), Err(Error::InvalidArgument(_))));
    let deep = vec![0.0f32; MAX_K + 1];
    assert!(matches!(Q8Weights::quantize(MatRef::row_major(&deep, 1, MAX_K + 1).unwrap()), Err(Error::Unsupported(_))));
}

#[test]
fn bad_arguments_are_errors() {
    let mut rng = Rng::new(9);
    let (case, _, _) = Case::new(&mut rng, 4, 8, 20, 0.0, 1.0);
    let mut c = vec![0.0; 4 * 20];
    let call = |b: &[u8], n: usize, zero: u8, scale: &[f32], c: &mut [f32], kernel| {
        let out = Q8Out { scale, shift: None, relu: false };
        let rows = c.len() / 20;
        gemm_q8_with(kernel, &case.w, b, n, zero, out, MatMut::new(c, rows, n, 20, 1).unwrap())
    };
    let k = best_q8_kernel();
    assert!(matches!(call(&case.packed[1..], 20, 0, &case.scale, &mut c, k), Err(Error::Shape(_))), "short B");
    assert!(matches!(call(&case.packed, 20, 0, &case.scale, &mut c[..60], k), Err(Error::Shape(_))), "rows of C");
    let mut wide = vec![0.0; 4 * 40];
    let out = Q8Out { scale: &case.scale, shift: None, relu: false };
    let cw = MatMut::row_major(&mut wide, 4, 40).unwrap();
    assert!(matches!(gemm_q8_with(k, &case.w, &case.packed, 40, 0, out, cw), Err(Error::Shape(_))), "B for 20 columns");
    assert!(matches!(call(&case.packed, 20, 0, &case.scale[1..], &mut c, k), Err(Error::Shape(_))), "scales");
    for missing in Q8Kernel::ALL.iter().filter(|k| !k.is_available()) {
        assert!(matches!(call(&case.packed, 20, 0, &case.scale, &mut c, *missing), Err(Error::Unsupported(_))));
    }
    let mut dst = vec![0; packed_b_len(2, 3)];
    assert!(matches!(pack_b_codes(&[1, 2, 3, 4, 5], 3, 2, 3, &mut dst), Err(Error::Shape(_))));
    assert!(matches!(pack_b_codes(&[1; 6], 3, 2, 3, &mut dst[1..]), Err(Error::Shape(_))));
}
