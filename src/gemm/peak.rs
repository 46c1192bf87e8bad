//! The machine's single-core FP32 FMA peak, measured: the yardstick GEMM
//! efficiency is quoted against (`nhpatch kernels --peak`).
//!
//! Each kernel runs `ACC` independent accumulator chains `acc = acc * a + b`
//! (one FMA each) in a loop: enough chains to cover the FMA latency on every
//! pipe, no memory traffic, so the loop runs at the FMA issue rate. FLOPs are
//! counted as 2 per lane per FMA. AVX2 uses 256-bit FMAs, AVX-512 512-bit
//! ones; on CPUs that split 512-bit operations into two halves (Zen 4) both
//! give the same figure.

use super::Kernel;
use crate::error::{Error, Result};
use std::hint::black_box;
use std::time::Instant;

/// Independent accumulators per kernel (latency 4 x 2 pipes needs 8; 12 leaves margin).
const ACC: usize = 12;
/// Loop trips per timed call.
const TRIPS: u64 = 20_000_000;

/// GFLOP/s of one thread running FMAs of `kernel`'s vector width for about
/// `seconds` (best of the timed calls). Only the AVX2 and AVX-512 kernels
/// have an FMA loop; others are an error.
pub fn fma_peak_gflops(kernel: Kernel, seconds: f64) -> Result<f64> {
    if !kernel.is_available() {
        return Err(Error::Unsupported(format!("kernel '{}' is not available on this CPU", kernel.name())));
    }
    let (run, lanes): (fn(u64) -> f32, usize) = match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY (both): `is_available` checked the features the loops enable.
        Kernel::Avx512 => (|t| unsafe { fma_loop_avx512(t) }, 16),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Fma => (|t| unsafe { fma_loop_avx2(t) }, 8),
        _ => return Err(Error::Unsupported(format!("no FMA peak loop for kernel '{}'", kernel.name()))),
    };
    let start = Instant::now();
    let mut best = 0.0f64;
    let mut sink = 0.0f32;
    while best == 0.0 || start.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        sink += run(TRIPS);
        let gflops = (TRIPS as usize * ACC * lanes * 2) as f64 / t.elapsed().as_secs_f64() / 1e9;
        best = best.max(gflops);
    }
    black_box(sink);
    Ok(best)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop_avx512(trips: u64) -> f32 {
    use std::arch::x86_64::*;
    // black_box: constant operands would let the compiler fold the whole loop.
    let (a, b) = (_mm512_set1_ps(black_box(0.999_999)), _mm512_set1_ps(black_box(1e-6)));
    let mut acc = [_mm512_set1_ps(black_box(1.0)); ACC];
    for _ in 0..trips {
        for r in acc.iter_mut() {
            *r = _mm512_fmadd_ps(*r, a, b);
        }
    }
    acc.iter().map(|&r| _mm512_reduce_add_ps(r)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop_avx2(trips: u64) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(black_box(0.999_999)), _mm256_set1_ps(black_box(1e-6)));
    let mut acc = [_mm256_set1_ps(black_box(1.0)); ACC];
    for _ in 0..trips {
        for r in acc.iter_mut() {
            *r = _mm256_fmadd_ps(*r, a, b);
        }
    }
    let mut lanes = [0.0f32; 8];
    let mut sum = _mm256_setzero_ps();
    for r in acc {
        sum = _mm256_add_ps(sum, r);
    }
    // SAFETY: `lanes` holds 8 writable f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
    lanes.iter().sum()
}
