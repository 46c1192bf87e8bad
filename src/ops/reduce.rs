//! Reductions in f64: over a flat buffer (one patch, one row) and over one
//! channel of an NCHW tensor; and `add_partials`, the in-order f32 sum of
//! per-shard gradient partials.
//!
//! A channel `c` of an `N x C x H x W` tensor is the `N` planes
//! `x[(n*C + c)*H*W .. (n*C + c + 1)*H*W]`; the channel kernels visit them in
//! order n = 0..N, each plane front to back, so a sum has one fixed order
//! whatever thread runs it. Moments are two-pass (mean, then squared
//! deviations from it), which keeps the variance accurate when the mean is
//! large against the spread.
//!
//! Every flat sum runs in `LANES` interleaved f64 accumulators (element `i`
//! goes to lane `i % LANES`, lanes added in order at the end): still one fixed
//! order, but without a single dependent add chain, so the compiler keeps
//! several adds in flight (a plain `iter().sum()` of f64 costs one add latency
//! per element, which made BatchNorm's statistics a visible share of a step).

use crate::error::{Result, check_len};
use rayon::prelude::*;
use crate::shape::Shape4;
use crate::shape_err;

/// Independent accumulators of the flat reductions.
const LANES: usize = 8;

/// `sum_i f(a[i], b[i])` in `LANES` interleaved accumulators (fixed order);
/// `b` is at least as long as `a`. Whole blocks are fixed-size arrays, so the
/// body has no bounds checks and vectorises.
#[inline(always)]
fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b[..a.len()].chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (xa, xb) in ca.zip(cb) {
        let (xa, xb): (&[f32; LANES], &[f32; LANES]) = (xa.try_into().unwrap(), xb.try_into().unwrap());
        for l in 0..LANES {
            acc[l] += f(xa[l], xb[l]);
        }
    }
    for (l, (&x, &y)) in ra.iter().zip(rb).enumerate() {
        acc[l] += f(x, y);
    }
    acc.iter().sum()
}

/// `dst += part_0 + part_1 + ...` for the `dst.len()`-long partials of `parts`,
/// added in order (the same bits whatever thread computed each partial);
/// split across the pool by blocks of `dst`.
pub fn add_partials(dst: &mut [f32], parts: &[f32]) {
    const BLOCK: usize = 4096;
    let len = dst.len();
    if len == 0 {
        return;
    }
    dst.par_chunks_mut(BLOCK).enumerate().for_each(|(c, d)| {
        let (off, n) = (c * BLOCK, d.len());
        for part in parts.chunks_exact(len) {
            d.iter_mut().zip(&part[off..off + n]).for_each(|(d, v)| *d += v);
        }
    });
}

/// `sum_i x[i]`.
pub fn sum(x: &[f32]) -> f64 {
    lane_sum(x, x, |v, _| v as f64)
}

/// `sum_i a[i] * b[i]`.
pub fn dot(a: &[f32], b: &[f32]) -> Result<f64> {
    check_len("dot: b", b.len(), a.len())?;
    Ok(lane_sum(a, b, |a, b| a as f64 * b as f64))
}

/// `sum_i (x[i] - mean)^2`.
fn m2_about(x: &[f32], mean: f64) -> f64 {
    lane_sum(x, x, |v, _| (v as f64 - mean).powi(2))
}

/// `(mean, m2)` of `x`, where `m2 = sum_i (x[i] - mean)^2`; the biased
/// variance is `m2 / len`, the unbiased one `m2 / (len - 1)`. `(0, 0)` when empty.
pub fn mean_m2(x: &[f32]) -> (f64, f64) {
    if x.is_empty() {
        return (0.0, 0.0);
    }
    let mean = sum(x) / x.len() as f64;
    (mean, m2_about(x, mean))
}

/// `sum_i a[i] * (b[i] - b_mean)`.
pub fn dot_centered(a: &[f32], b: &[f32], b_mean: f64) -> Result<f64> {
    check_len("dot_centered: b", b.len(), a.len())?;
    Ok(lane_sum(a, b, |a, b| a as f64 * (b as f64 - b_mean)))
}

/// Checks a tensor of `len` elements against `shape` and `c` against its channels.
fn check_channel(len: usize, shape: Shape4, c: usize) -> Result<()> {
    check_len("channel reduction: tensor", len, shape.len())?;
    if c >= shape.c {
        return Err(shape_err!("channel reduction: channel {c} of a {shape} tensor"));
    }
    Ok(())
}

/// The planes of channel `c` of `x` (shape `shape`), in batch order.
fn planes(x: &[f32], shape: Shape4, c: usize) -> Result<impl Iterator<Item = &[f32]>> {
    check_channel(x.len(), shape, c)?;
    // An empty plane yields no chunks; max(1) only keeps chunks_exact defined.
    Ok(x.chunks_exact(shape.plane().max(1)).skip(c).step_by(shape.c))
}

/// `sum` over channel `c` of an NCHW tensor.
pub fn channel_sum(x: &[f32], shape: Shape4, c: usize) -> Result<f64> {
    Ok(planes(x, shape, c)?.map(sum).sum())
}

/// `(mean, m2)` over channel `c` (`N*H*W` values); `(0, 0)` when it is empty.
pub fn channel_mean_m2(x: &[f32], shape: Shape4, c: usize) -> Result<(f64, f64)> {
    let count = shape.n * shape.plane();
    if count == 0 {
        check_channel(x.len(), shape, c)?;
        return Ok((0.0, 0.0));
    }
    let mean = channel_sum(x, shape, c)? / count as f64;
    let m2 = planes(x, shape, c)?.map(|p| m2_about(p, mean)).sum();
    Ok((mean, m2))
}

/// `sum a * (b - b_mean)` over channel `c` of two tensors of shape `shape`.
pub fn channel_dot_centered(a: &[f32], b: &[f32], b_mean: f64, shape: Shape4, c: usize) -> Result<f64> {
    let pa = planes(a, shape, c)?;
    let pb = planes(b, shape, c)?;
    pa.zip(pb).map(|(pa, pb)| dot_centered(pa, pb, b_mean)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_partials_adds_each_part_in_order() {
        // Longer than one block; the parts' order shows in the rounding: (1 + 1e8) - 1e8 = 0 in f32.
        let len = 5000;
        let mut dst = vec![1.0f32; len];
        let mut parts = vec![1e8f32; len];
        parts.extend(vec![-1e8f32; len]);
        parts.extend((0..len).map(|i| i as f32));
        add_partials(&mut dst, &parts);
        assert!(dst.iter().enumerate().all(|(i, &v)| v == i as f32), "{:?}", &dst[..4]);
        add_partials(&mut [], &[]);
    }

    #[test]
    fn channel_reductions_match_direct_loops() {
        let s = Shape4::new(3, 2, 2, 3);
        let x: Vec<f32> = (0..s.len()).map(|i| (i as f32 * 0.7).sin() + 5.0).collect();
        let y: Vec<f32> = (0..s.len()).map(|i| (i as f32 * 0.3).cos()).collect();
        for c in 0..s.c {
            let idx: Vec<usize> =
                (0..s.n).flat_map(|n| (0..s.plane()).map(move |p| (n * s.c + c) * s.plane() + p)).collect();
            let m = idx.len() as f64;
            let mean = idx.iter().map(|&i| x[i] as f64).sum::<f64>() / m;
            let m2: f64 = idx.iter().map(|&i| (x[i] as f64 - mean).powi(2)).sum();
            let dc: f64 = idx.iter().map(|&i| y[i] as f64 * (x[i] as f64 - mean)).sum();
            let (gm, gm2) = channel_mean_m2(&x, s, c).unwrap();
            assert!((gm - mean).abs() < 1e-12 && (gm2 - m2).abs() < 1e-9);
            assert!((channel_dot_centered(&y, &x, mean, s, c).unwrap() - dc).abs() < 1e-9);
            assert!((channel_sum(&x, s, c).unwrap() - mean * m).abs() < 1e-9);
        }
        let (mean, m2) = mean_m2(&x);
        assert!((mean * x.len() as f64 - sum(&x)).abs() < 1e-9 && m2 > 0.0);
    }

    #[test]
    fn bad_buffers_and_channels_are_errors() {
        let s = Shape4::new(1, 2, 2, 2);
        assert!(channel_sum(&[0.0; 7], s, 0).is_err());
        assert!(channel_sum(&[0.0; 8], s, 2).is_err());
        assert!(channel_dot_centered(&[0.0; 8], &[0.0; 9], 0.0, s, 0).is_err());
        assert!(dot(&[0.0; 2], &[0.0; 3]).is_err());
        assert_eq!(channel_mean_m2(&[], Shape4::new(0, 2, 2, 2), 1).unwrap(), (0.0, 0.0));
    }
}
