//! The bf16 GEMM (`gemm::bf16`) against its naive reference and against f64:
//! bf16 rounding matches its definition (nearest, ties to even, on every
//! kind of value); every widening kernel this CPU has gives the naive
//! kernel's bits on ragged shapes over C full of NaN, for any column split;
//! `vdpbf16ps` (where the CPU has it) is within the f32 summation bound;
//! the result is within the bf16 error bound of the f32 product; packing
//! follows the documented layout; refusals are errors, never panics.

use nhpatch::Error;
use nhpatch::gemm::bf16::{
    Bf16Kernel, Bf16Weights, PANEL, from_bf16, gemm_bf16_with, pack_b, pack_bt, packed_b_len, padded_depth, round_bf16,
    to_bf16,
};
use nhpatch::gemm::{MatMut, MatRef};
use nhpatch::rng::Rng;

fn rand(rng: &mut Rng, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..len).map(|_| rng.uniform(lo, hi)).collect()
}

fn kernels() -> Vec<Bf16Kernel> {
    let k: Vec<_> = Bf16Kernel::ALL.iter().copied().filter(|k| k.is_available()).collect();
    for missing in Bf16Kernel::ALL.iter().filter(|k| !k.is_available()) {
        eprintln!("bf16 kernel '{}' not on this CPU: not tested here", missing.name());
    }
    k
}

/// The nearest bf16 to `x` by exhaustive comparison of the two neighbours
/// in f64, ties to the even code.
fn nearest_by_search(x: f32) -> u16 {
    let lo = (x.to_bits() >> 16) as u16;
    let hi = lo.wrapping_add(1);
    let (dl, dh) = ((x as f64 - from_bf16(lo) as f64).abs(), (from_bf16(hi) as f64 - x as f64).abs());
    if dl < dh || (dl == dh && lo.is_multiple_of(2)) { lo } else { hi }
}

#[test]
fn to_bf16_rounds_to_nearest_even_on_every_kind_of_value() {
    let mut rng = Rng::new(3);
    let mut cases: Vec<f32> = (0..20_000).map(|_| f32::from_bits((rng.next_u64() as u32) & 0x7f7f_ffff)).collect();
    cases.extend(rand(&mut rng, 2000, -300.0, 300.0));
    // Exact halves between two bf16 values, both parities, both signs.
    for base in [0x3f80_0000u32, 0x3f81_0000, 0x4000_0000, 0x4001_0000, 0x0080_0000] {
        for sign in [0, 0x8000_0000] {
            cases.push(f32::from_bits((base | sign) + 0x8000));
            cases.push(f32::from_bits((base | sign) + 0x7fff));
            cases.push(f32::from_bits((base | sign) + 0x8001));
        }
    }
    cases.extend([0.0, -0.0, 1.0, -1.0, f32::MIN_POSITIVE, 1e-40, -1e-40]);
    for x in cases {
        if x.is_finite() && x.abs() < f32::from_bits(0x7f7f_0000) {
            assert_eq!(to_bf16(x), nearest_by_search(x), "{x:e} ({:#010x})", x.to_bits());
        }
    }
    // Past the largest bf16 (halfway and up) goes to infinity, as IEEE rounding does.
    assert_eq!(from_bf16(to_bf16(f32::MAX)), f32::INFINITY);
    assert_eq!(from_bf16(to_bf16(-f32::MAX)), f32::NEG_INFINITY);
    assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
    assert_eq!(from_bf16(to_bf16(f32::NEG_INFINITY)), f32::NEG_INFINITY);
    // NaN stays NaN, even one whose payload lives in the low bits only.
    for nan in [f32::NAN, -f32::NAN, f32::from_bits(0x7f80_0001), f32::from_bits(0xff80_0001)] {
        assert!(from_bf16(to_bf16(nan)).is_nan(), "{:#010x}", nan.to_bits());
    }
    for v in [1.0f32, -2.5, 0.15625, 3.0e38] {
        assert_eq!(round_bf16(round_bf16(v)), round_bf16(v));
    }
}

/// One case: returns C (row-major `m x n`) from `kernel` over NaN.
fn run(kernel: Bf16Kernel, w: &Bf16Weights, packed: &[u16], n: usize) -> Vec<f32> {
    let mut c = vec![f32::NAN; w.rows() * n];
    gemm_bf16_with(kernel, w, packed, n, MatMut::row_major(&mut c, w.rows(), n).unwrap()).unwrap();
    c
}

fn case(rng: &mut Rng, m: usize, k: usize, n: usize) -> (Bf16Weights, Vec<u16>, Vec<f32>, Vec<f32>) {
    let wf = rand(rng, m * k, -1.0, 1.0);
    let bf = rand(rng, k * n, -3.0, 5.0);
    let w = Bf16Weights::convert(MatRef::row_major(&wf, m, k).unwrap());
    let mut packed = vec![0xAAAA; packed_b_len(k, n)];
    pack_b(MatRef::row_major(&bf, k, n).unwrap(), &mut packed).unwrap();
    (w, packed, wf, bf)
}

#[test]
fn every_widening_kernel_gives_the_naive_bits_on_ragged_shapes() {
    let mut rng = Rng::new(5);
    let ks = kernels();
    for m in [1, 3, 4, 5, 8, 9, 17] {
        for n in [1, 15, 16, 17, 33] {
            for k in [1, 2, 3, 9, 64, 577] {
                let (w, packed, _, _) = case(&mut rng, m, k, n);
                let want = run(Bf16Kernel::Naive, &w, &packed, n);
                assert!(want.iter().all(|v| v.is_finite()));
                for &kern in ks.iter().filter(|k| !k.is_native()) {
                    assert_eq!(run(kern, &w, &packed, n), want, "{} m={m} n={n} k={k}", kern.name());
                }
                for &kern in ks.iter().filter(|k| k.is_native()) {
                    // vdpbf16ps: the same sum order; allow its rounding of
                    // each step to differ by one place per step.
                    let got = run(kern, &w, &packed, n);
                    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                        let bound = 4.0 * k as f32 * f32::EPSILON * 5.0 + 1e-30;
                        assert!((g - e).abs() <= bound, "{} m={m} n={n} k={k} at {i}: {g} vs {e}", kern.name());
                    }
                }
            }
        }
    }
}

#[test]
fn the_product_is_within_the_bf16_error_bound_of_f64() {
    let mut rng = Rng::new(8);
    let (m, k, n) = (19, 300, 37);
    let (w, packed, wf, bf) = case(&mut rng, m, k, n);
    for &kern in &kernels() {
        let c = run(kern, &w, &packed, n);
        for i in 0..m {
            for j in 0..n {
                let exact: f64 = (0..k).map(|p| wf[i * k + p] as f64 * bf[p * n + j] as f64).sum();
                let mag: f64 = (0..k).map(|p| (wf[i * k + p] as f64 * bf[p * n + j] as f64).abs()).sum();
                // Each operand within 2^-9 relative: a product within ~2^-8,
                // plus the f32 sums (k steps of 2^-24).
                let bound = mag * (2.0f64.powi(-8) + k as f64 * 2.0f64.powi(-23)) + 1e-6;
                let got = c[i * n + j] as f64;
                assert!((got - exact).abs() <= bound, "{} ({i}, {j}): {got} vs {exact}", kern.name());
                // And with the rounded operands, within the f32 summation bound.
                let rounded: f64 = (0..k).map(|p| w.value(i, p) as f64 * round_bf16(bf[p * n + j]) as f64).sum();
                assert!((got - rounded).abs() <= mag * k as f64 * 2.0f64.powi(-23) + 1e-6);
            }
        }
    }
}

#[test]
fn a_split_of_the_columns_into_panels_gives_the_same_bits() {
    let mut rng = Rng::new(9);
    let (m, k, n) = (12, 75, 48);
    let (w, _, _, bf) = case(&mut rng, m, k, n);
    let kern = nhpatch::gemm::bf16::best_bf16_kernel();
    let mut whole = vec![0u16; packed_b_len(k, n)];
    pack_b(MatRef::row_major(&bf, k, n).unwrap(), &mut whole).unwrap();
    let want = run(kern, &w, &whole, n);
    // Columns 16..48 alone: a view of B and of C.
    let b2 = MatRef::new(&bf[PANEL..], k, n - PANEL, n, 1).unwrap();
    let mut part = vec![0u16; packed_b_len(k, n - PANEL)];
    pack_b(b2, &mut part).unwrap();
    assert_eq!(&part[..], &whole[padded_depth(k) * PANEL..]);
    let mut c = vec![f32::NAN; m * n];
    gemm_bf16_with(kern, &w, &part, n - PANEL, MatMut::new(&mut c[PANEL..], m, n - PANEL, n, 1).unwrap()).unwrap();
    for i in 0..m {
        assert_eq!(&c[i * n + PANEL..(i + 1) * n], &want[i * n + PANEL..(i + 1) * n]);
    }
}

#[test]
fn packing_follows_the_documented_layout_and_pack_bt_matches_pack_b() {
    let mut rng = Rng::new(2);
    for (k, n) in [(1, 1), (3, 17), (8, 16), (9, 40), (64, 5)] {
        let b = rand(&mut rng, k * n, -2.0, 2.0);
        let mut packed = vec![0x5555; packed_b_len(k, n)];
        pack_b(MatRef::row_major(&b, k, n).unwrap(), &mut packed).unwrap();
        let kp = padded_depth(k);
        for j in 0..n.div_ceil(PANEL) * PANEL {
            for p in 0..kp {
                let at = (j / PANEL) * kp * PANEL + (p / 2) * 2 * PANEL + 2 * (j % PANEL) + p % 2;
                let want = if p < k && j < n { to_bf16(b[p * n + j]) } else { 0 };
                assert_eq!(packed[at], want, "k={k} n={n} p={p} j={j}");
            }
        }
        // B^T row-major is B with swapped strides.
        let bt: Vec<f32> = (0..n).flat_map(|j| (0..k).map(move |p| (j, p))).map(|(j, p)| b[p * n + j]).collect();
        let mut from_t = vec![0x5555; packed_b_len(k, n)];
        pack_bt(&bt, k, n, &mut from_t).unwrap();
        assert_eq!(from_t, packed, "k={k} n={n}");
    }
}

#[test]
fn wrong_shapes_and_missing_cpu_features_are_errors() {
    let w = Bf16Weights::convert(MatRef::row_major(&[1.0; 6], 2, 3).unwrap());
    let packed = vec![0u16; packed_b_len(3, 4)];
    let mut c = vec![0.0; 8];
    let bad_n = gemm_bf16_with(Bf16Kernel::Naive, &w, &packed, 5, MatMut::row_major(&mut c, 2, 4).unwrap());
    assert!(matches!(bad_n, Err(Error::Shape(_))));
    let short = gemm_bf16_with(Bf16Kernel::Naive, &w, &packed[1..], 4, MatMut::row_major(&mut c, 2, 4).unwrap());
    assert!(matches!(short, Err(Error::Shape(_))));
    let mut small = vec![0u16; 3];
    assert!(matches!(pack_b(MatRef::row_major(&[0.0; 12], 3, 4).unwrap(), &mut small), Err(Error::Shape(_))));
    assert!(matches!(pack_bt(&[0.0; 11], 3, 4, &mut vec![0; packed_b_len(3, 4)]), Err(Error::Shape(_))));
    for k in Bf16Kernel::ALL.iter().filter(|k| !k.is_available()) {
        let r = gemm_bf16_with(*k, &w, &packed, 4, MatMut::row_major(&mut c, 2, 4).unwrap());
        assert!(matches!(r, Err(Error::Unsupported(_))), "{}", k.name());
    }
}
