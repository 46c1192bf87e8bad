//! Every available GEMM kernel against the naive reference on fuzzer-chosen
//! shapes, strides, transposes, alpha and beta; with A packed once
//! (`gemm_packed_a`) against the same kernel bit for bit; the dot-product
//! GEMM (`gemm_dot_with`) where A and B run along k; the int8 GEMM
//! (`gemm::q8`) of every available int8 kernel against its naive reference,
//! bit for bit. A mismatch or a panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nhpatch::gemm::q8::{Q8Act, Q8Kernel, Q8Out, Q8Weights, gemm_q8_with, pack_b, packed_b_len};
use nhpatch::gemm::{
    Kernel, MatMut, MatRef, available_kernels, gemm_dot_with, gemm_packed_a, gemm_with, pack_a, packed_a_len,
};

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
}

/// A `rows x cols` view into a fresh buffer, row- or column-major, with padding between lines.
fn layout(b: &mut Bytes<'_>, rows: usize, cols: usize) -> (usize, usize, usize) {
    let pad = (b.byte() % 4) as usize;
    if b.byte() & 1 == 0 {
        let rs = cols + pad;
        (rs, 1, rows * rs + 1)
    } else {
        let cs = rows + pad;
        (1, cs, cols * cs + 1)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let (m, k, n) = ((b.byte() % 48) as usize, (b.byte() % 48) as usize, (b.byte() % 48) as usize);
    let alpha = [1.0f32, -0.5, 2.0, 0.0][(b.byte() % 4) as usize];
    let beta = [0.0f32, 1.0, 0.5][(b.byte() % 3) as usize];
    let (rsa, csa, la) = layout(&mut b, m, k);
    let (rsb, csb, lb) = layout(&mut b, k, n);
    let (rsc, csc, lc) = layout(&mut b, m, n);
    let val = |b: &mut Bytes<'_>| (b.byte() as f32 - 128.0) / 64.0;
    let a: Vec<f32> = (0..la).map(|_| val(&mut b)).collect();
    let bm: Vec<f32> = (0..lb).map(|_| val(&mut b)).collect();
    let c0: Vec<f32> = (0..lc).map(|_| val(&mut b)).collect();
    let av = || MatRef::new(&a, m, k, rsa, csa).unwrap();
    let bv = || MatRef::new(&bm, k, n, rsb, csb).unwrap();
    let mut want = c0.clone();
    gemm_with(Kernel::Naive, alpha, av(), bv(), beta, MatMut::new(&mut want, m, n, rsc, csc).unwrap()).unwrap();
    for kernel in available_kernels() {
        // With beta = 0 the output is prefilled with NaN: a kernel that reads it fails.
        let mut got = if beta == 0.0 { vec![f32::NAN; lc] } else { c0.clone() };
        gemm_with(kernel, alpha, av(), bv(), beta, MatMut::new(&mut got, m, n, rsc, csc).unwrap()).unwrap();
        for i in 0..m {
            for j in 0..n {
                let (g, w) = (got[i * rsc + j * csc], want[i * rsc + j * csc]);
                let scale: f32 = (0..k).map(|p| (a[i * rsa + p * csa] * bm[p * rsb + j * csb]).abs()).sum();
                let tol = 1e-5 * (alpha.abs() * scale + beta.abs() * c0[i * rsc + j * csc].abs()) + 1e-5;
                assert!((g - w).abs() <= tol, "{kernel:?} m{m} k{k} n{n} C[{i},{j}] = {g}, naive {w}");
            }
        }
        let mut packed = vec![f32::NAN; packed_a_len(kernel, m, k)];
        pack_a(kernel, av(), &mut packed).unwrap();
        let mut again = if beta == 0.0 { vec![f32::NAN; lc] } else { c0.clone() };
        let c = MatMut::new(&mut again, m, n, rsc, csc).unwrap();
        gemm_packed_a(kernel, alpha, &packed, (m, k), bv(), beta, c).unwrap();
        let same = again.iter().zip(&got).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{kernel:?} m{m} k{k} n{n}: packed A differs from gemm_with");
    }
    if (csa == 1 || k <= 1) && (rsb == 1 || k <= 1) {
        let mut want = vec![f32::NAN; lc];
        gemm_with(Kernel::Naive, 1.0, av(), bv(), 0.0, MatMut::new(&mut want, m, n, rsc, csc).unwrap()).unwrap();
        for kernel in available_kernels() {
            let mut got = vec![f32::NAN; lc];
            gemm_dot_with(kernel, av(), bv(), MatMut::new(&mut got, m, n, rsc, csc).unwrap()).unwrap();
            for i in 0..m {
                for j in 0..n {
                    let (g, w) = (got[i * rsc + j * csc], want[i * rsc + j * csc]);
                    let scale: f32 = (0..k).map(|p| (a[i * rsa + p * csa] * bm[p * rsb + j * csb]).abs()).sum();
                    assert!((g - w).abs() <= 1e-5 * scale + 1e-5, "dot {kernel:?} m{m} k{k} n{n} C[{i},{j}] = {g}, naive {w}");
                }
            }
        }
    }
    // int8: A quantized per row, B per tensor with a fuzzed range, C in the same strided layout.
    let w = Q8Weights::quantize(av()).unwrap();
    let (lo, hi) = (-(b.byte() as f32) / 32.0, b.byte() as f32 / 32.0);
    let act = Q8Act::from_range(lo, hi).unwrap();
    let mut packed = vec![0xA5u8; packed_b_len(k, n)];
    pack_b(bv(), act, &mut packed).unwrap();
    let scale: Vec<f32> = w.scales().iter().map(|s| s * act.scale).collect();
    let shift: Vec<f32> = (0..m).map(|_| val(&mut b)).collect();
    let out = Q8Out { scale: &scale, shift: Some(&shift), relu: b.byte() & 1 == 1 };
    let run = |kernel| {
        let mut c = vec![f32::NAN; lc];
        gemm_q8_with(kernel, &w, &packed, n, act.zero, out, MatMut::new(&mut c, m, n, rsc, csc).unwrap()).unwrap();
        c
    };
    let want = run(Q8Kernel::Naive);
    for kernel in Q8Kernel::ALL.iter().copied().filter(|k| k.is_available()) {
        let got = run(kernel);
        let same = got.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()));
        assert!(same, "int8 {kernel:?} m{m} k{k} n{n} differs from the naive int8 GEMM");
    }
});
