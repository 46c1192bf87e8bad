//! Reductions in f64: over a flat buffer (one patch, one row) and over one
//! channel of an NCHW tensor; and `add_partials`, the in-order f32 sum of
//! per-shard gradient partials.
//!
//! A channel `c` of an `N x C x H x W` tensor is the `N` planes
//! `x[(n*C + c)*H*W .. (n*C + c + 1)*H*W]`; the channel kernels visit them in
//! order n = 0..N, each plane front to back, so a sum has one fixed order
//! whatever thread runs it. Moments are two-pass per plane (mean, then
//! squared deviations from it, while the plane is in cache) and folded over
//! the planes with the pairwise update (`fold_plane`), which keeps the
//! variance accurate when the mean is large against the spread.
//!
//! Every flat sum runs in `LANES` interleaved f64 accumulators (element `i`
//! goes to lane `i % LANES`, lanes added in order at the end): still one fixed
//! order, but without a single dependent add chain, so the compiler keeps
//! several adds in flight (a plain `iter().sum()` of f64 costs one add latency
//! per element, which made BatchNorm's statistics a visible share of a step).

use crate::error::{Result, check_len};
use crate::ops::elementwise::{par_min_items, relu_mask, relu_mask_affine};
use crate::shape::Shape4;
use crate::shape_err;
use rayon::prelude::*;
use std::ops::Range;

/// Independent accumulators of the flat reductions.
const LANES: usize = 8;

/// `acc[i % LANES] += f(a[i], b[i])` in order; `b` is at least as long as
/// `a`. Whole blocks are fixed-size arrays, so the body has no bounds checks
/// and vectorises. Calls on consecutive pieces of one slice give the bits of
/// one call on the whole when every piece but the last is a multiple of
/// `LANES` long (the remainder goes to lanes 0.. as in the whole).
#[inline(always)]
fn lane_acc(acc: &mut [f64; LANES], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f64) {
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
}

/// `sum_i f(a[i], b[i])` in `LANES` interleaved accumulators (fixed order).
#[inline(always)]
fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    lane_acc(&mut acc, a, b, f);
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

/// Where a masked sum of one plane counts `a[i]`.
#[derive(Clone, Copy)]
enum PlaneMask<'a> {
    All,
    /// Where `m[i] > 0` (a ReLU's output).
    Positive(&'a [f32]),
    /// Where `(b[i] - mu) * k + shift > 0`, `[mu, k, shift]`.
    Affine([f32; 3]),
}

/// `sum_i (a[i], a[i] * (b[i] - b_mean))` in one pass, each sum in the
/// lanes and order of [`sum`] and [`dot_centered`] (the same bits as calling
/// both), with `a[i]` counted only where `mask` says (a ReLU's mask: the
/// gradient through that ReLU, never materialised).
fn sum_and_dot_centered(a: &[f32], mask: PlaneMask<'_>, b: &[f32], b_mean: f64) -> (f64, f64) {
    let (mut s, mut d) = ([0.0f64; LANES], [0.0f64; LANES]);
    let dot = |a: f32, b: f32| a as f64 * (b as f64 - b_mean);
    if let PlaneMask::All = mask {
        lane_acc(&mut s, a, a, |v, _| v as f64);
        lane_acc(&mut d, a, b, dot);
        return (s.iter().sum(), d.iter().sum());
    }
    // The masked values a block at a time (a multiple of LANES, so the
    // lanes see the order of one pass), each sum then in its two-stream
    // pass: a three-stream loop stayed scalar.
    let mut buf = [0.0f32; MASK_BLOCK];
    for (i, (pa, pb)) in a.chunks(MASK_BLOCK).zip(b.chunks(MASK_BLOCK)).enumerate() {
        let g = &mut buf[..pa.len()];
        match mask {
            PlaneMask::Positive(m) => relu_mask(g, pa, &m[i * MASK_BLOCK..i * MASK_BLOCK + pa.len()]),
            PlaneMask::Affine(p) => relu_mask_affine(g, pa, pb, p),
            PlaneMask::All => unreachable!("handled above"),
        }
        lane_acc(&mut s, g, g, |v, _| v as f64);
        lane_acc(&mut d, g, pb, dot);
    }
    (s.iter().sum(), d.iter().sum())
}

/// Where the block gradient sums ([`channel_block_grad_sums`]) count `a[i]`.
#[derive(Clone, Copy)]
pub enum Mask<'a> {
    /// Everywhere.
    All,
    /// Where `m[i] > 0`: `m` a ReLU's output, the shape of `a`.
    Positive(&'a [f32]),
    /// Where `(b[i] - mu) * k + shift > 0`, with `[mu, k, shift]` of channel
    /// `c` at `[c - c0]` (one per channel of the block): the input of a ReLU
    /// that followed an affine map of `b`, recomputed with the f32
    /// operations that made it, so the mask of its output without reading it
    /// (`elementwise::relu_mask_affine`).
    Affine(&'a [[f32; 3]]),
}

/// Values per block of a masked reduction (a multiple of `LANES`; on the stack).
pub const MASK_BLOCK: usize = 256;
const _: () = assert!(MASK_BLOCK.is_multiple_of(LANES));

/// `(sum g, sum g * (b - b_mean))` over channel `c` of tensors of shape
/// `shape`, `g = a`, or `a` where `mask > 0` (else 0) when `mask` is given:
/// [`channel_sum`] and [`channel_dot_centered`] of `g` in one pass, the same bits.
pub fn channel_grad_sums(
    a: &[f32],
    mask: Option<&[f32]>,
    b: &[f32],
    b_mean: f64,
    shape: Shape4,
    c: usize,
) -> Result<(f64, f64)> {
    let pm = planes(mask.unwrap_or(a), shape, c)?;
    let per_plane = planes(a, shape, c)?.zip(pm).zip(planes(b, shape, c)?);
    // The planes' sums added in plane order from -0.0, as `Sum for f64` adds them.
    Ok(per_plane
        .map(|((pa, pm), pb)| {
            let m = if mask.is_some() { PlaneMask::Positive(pm) } else { PlaneMask::All };
            sum_and_dot_centered(pa, m, pb, b_mean)
        })
        .fold((-0.0, -0.0), |(s, d), (ps, pd)| (s + ps, d + pd)))
}

/// Channels one call of the block reductions covers at most: callers keep
/// one result per channel of a block on the stack.
pub const CHANNEL_BLOCK: usize = 64;

/// `visit(c, &mut acc[c - c0], plane)` for the channels `c0 .. c0 +
/// acc.len()` of NCHW tensors of `shape` (each of `lens`), image by image:
/// for n = 0..N in order, the block's planes of image n, where `plane` is
/// the element range of plane (n, c) in any of the tensors.
///
/// Why: a channel's planes lie `C*H*W` values apart, so a walk one channel
/// at a time restarts the hardware prefetcher at every plane (one 4 KiB page
/// at 32x32) and read BatchNorm's tensors at a third of the memory's speed;
/// the planes of one image are contiguous. Each channel still sees its
/// planes in batch order, so its fold is that of the channel-at-a-time walk.
/// The block's channels are cut into contiguous groups across the pool.
fn for_block_planes<A: Send>(
    acc: &mut [A],
    lens: &[usize],
    shape: Shape4,
    c0: usize,
    visit: impl Fn(usize, &mut A, Range<usize>) + Sync,
) -> Result<()> {
    for &len in lens {
        check_len("channel block reduction: tensor", len, shape.len())?;
    }
    if c0 + acc.len() > shape.c {
        return Err(shape_err!("channel block reduction: channels {c0}..{} of a {shape} tensor", c0 + acc.len()));
    }
    let plane = shape.plane();
    let per_channel = shape.n * plane;
    let group = acc.len().div_ceil(rayon::current_num_threads()).max(par_min_items(per_channel)).max(1);
    acc.par_chunks_mut(group).enumerate().for_each(|(g, accs)| {
        let first = c0 + g * group;
        for n in 0..shape.n {
            for (i, a) in accs.iter_mut().enumerate() {
                let start = (n * shape.c + first + i) * plane;
                visit(first + i, a, start..start + plane);
            }
        }
    });
    Ok(())
}

/// Folds plane `p`, the next `p.len()` values of a channel after `seen`
/// earlier ones, into the channel's running `(mean, m2)`: the plane's own two
/// passes (in cache), then Chan, Golub and LeVeque's pairwise update
/// `delta = mean_p - mean`, `mean += delta * n_p / n`, `m2 += m2_p + delta^2 *
/// seen * n_p / n` (`n = seen + n_p`).
///
/// Why: a global two-pass variance reads the whole tensor twice, from
/// memory at training batch sizes; per plane the second pass hits L1, and
/// the update keeps the accuracy of two passes (no sum of squares minus a
/// squared sum), whatever the mean against the spread.
fn fold_plane(acc: &mut (f64, f64), seen: usize, p: &[f32]) {
    if p.is_empty() {
        return;
    }
    let np = p.len() as f64;
    let mean_p = sum(p) / np;
    let m2_p = m2_about(p, mean_p);
    if seen == 0 {
        *acc = (mean_p, m2_p);
        return;
    }
    let (na, n) = (seen as f64, seen as f64 + np);
    let delta = mean_p - acc.0;
    acc.0 += delta * (np / n);
    acc.1 += m2_p + delta * delta * (na * np / n);
}

/// `out[i] = channel_mean_m2(x, shape, c0 + i)` for a block of channels
/// (at most [`CHANNEL_BLOCK`] by convention, any length works), the same bits,
/// read image by image (see `for_block_planes`) in one pass over memory.
pub fn channel_block_mean_m2(out: &mut [(f64, f64)], x: &[f32], shape: Shape4, c0: usize) -> Result<()> {
    out.iter_mut().for_each(|o| *o = (0.0, 0.0));
    let (image, plane) = (shape.image_len(), shape.plane());
    // Values of the channel before plane (n, c): n * plane (n = r.start / image).
    let seen = |r: &Range<usize>| r.start.checked_div(image).unwrap_or(0) * plane;
    for_block_planes(out, &[x.len()], shape, c0, |_, o, r| fold_plane(o, seen(&r), &x[r]))
}

/// `out[i] = channel_grad_sums(a, mask, b, b_mean(c), shape, c)` for the
/// channels `c = c0 + i` of a block, the same bits, read image by image.
/// `Mask::Affine` counts where the recomputed ReLU input is positive: the
/// bits of `channel_grad_sums` with that mask's values.
pub fn channel_block_grad_sums(
    out: &mut [(f64, f64)],
    a: &[f32],
    mask: Mask<'_>,
    b: &[f32],
    b_mean: impl Fn(usize) -> f64 + Sync,
    shape: Shape4,
    c0: usize,
) -> Result<()> {
    out.iter_mut().for_each(|o| *o = (-0.0, -0.0));
    let mask_len = match mask {
        Mask::Positive(m) => m.len(),
        Mask::All => a.len(),
        Mask::Affine(p) => {
            check_len("channel block reduction: mask parameters", p.len(), out.len())?;
            a.len()
        }
    };
    for_block_planes(out, &[a.len(), b.len(), mask_len], shape, c0, |c, o, r| {
        let m = match mask {
            Mask::All => PlaneMask::All,
            Mask::Positive(m) => PlaneMask::Positive(&m[r.clone()]),
            Mask::Affine(p) => PlaneMask::Affine(p[c - c0]),
        };
        let (s, d) = sum_and_dot_centered(&a[r.clone()], m, &b[r], b_mean(c));
        *o = (o.0 + s, o.1 + d);
    })
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

/// `(mean, m2)` over channel `c` (`N*H*W` values), plane by plane in batch
/// order (`fold_plane`); `(0, 0)` when it is empty.
pub fn channel_mean_m2(x: &[f32], shape: Shape4, c: usize) -> Result<(f64, f64)> {
    let mut acc = (0.0, 0.0);
    for (i, p) in planes(x, shape, c)?.enumerate() {
        fold_plane(&mut acc, i * shape.plane(), p);
    }
    Ok(acc)
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
        // A mean far from the spread (f32 steps of 1/16 around 1e6): the
        // folded planes keep two passes' accuracy.
        let s = Shape4::new(5, 2, 3, 7);
        let x: Vec<f32> = (0..s.len()).map(|i| 1.0e6 + (i % 11) as f32 * 0.0625).collect();
        for c in 0..s.c {
            let v: Vec<f64> = planes(&x, s, c).unwrap().flatten().map(|&v| v as f64).collect();
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let m2: f64 = v.iter().map(|v| (v - mean).powi(2)).sum();
            let (gm, gm2) = channel_mean_m2(&x, s, c).unwrap();
            assert!((gm - mean).abs() < 1e-9 && (gm2 - m2).abs() < 1e-9 * m2, "{gm} {gm2} against {mean} {m2}");
        }
        // The one-pass sums are the two reductions' bits; masked, those of the
        // masked copy, also for planes longer than one block and not a multiple of the lanes.
        let s = Shape4::new(2, 3, 17, 19);
        let x: Vec<f32> = (0..s.len()).map(|i| (i as f32 * 0.7).sin() + 5.0).collect();
        let y: Vec<f32> = (0..s.len()).map(|i| (i as f32 * 0.3).cos()).collect();
        let mask: Vec<f32> = (0..s.len()).map(|i| [1.0, 0.0, -1.0, f32::NAN, 2.0][i % 5]).collect();
        let masked: Vec<f32> = y.iter().zip(&mask).map(|(&v, &m)| if m > 0.0 { v } else { 0.0 }).collect();
        for c in 0..s.c {
            for (m, g) in [(None, &y), (Some(&mask[..]), &masked)] {
                let (gs, gd) = channel_grad_sums(&y, m, &x, 5.25, s, c).unwrap();
                assert_eq!(gs.to_bits(), channel_sum(g, s, c).unwrap().to_bits());
                assert_eq!(gd.to_bits(), channel_dot_centered(g, &x, 5.25, s, c).unwrap().to_bits());
            }
        }
        assert!(channel_grad_sums(&y, Some(&mask[1..]), &x, 0.0, s, 0).is_err());
        // The block reductions, image by image, give each channel's bits, from any first channel.
        // Planes of 2000 values: with two threads the block splits into two groups.
        let s = Shape4::new(3, 7, 40, 50);
        let x: Vec<f32> = (0..s.len()).map(|i| (i as f32 * 0.7).sin() * 3.0 + 5.0).collect();
        let y: Vec<f32> = (0..s.len()).map(|i| (i as f32 * 0.3).cos()).collect();
        let mask: Vec<f32> = (0..s.len()).map(|i| [1.0, 0.0, -1.0, f32::NAN, 2.0][i % 7 % 5]).collect();
        let b_mean = |c: usize| 4.5 + c as f64 * 0.125;
        for c0 in [0, 2] {
            let mut mm = vec![(f64::NAN, f64::NAN); s.c - c0];
            channel_block_mean_m2(&mut mm, &x, s, c0).unwrap();
            for m in [None, Some(&mask[..])] {
                let mut gs = vec![(f64::NAN, f64::NAN); s.c - c0];
                let bm = m.map_or(Mask::All, Mask::Positive);
                channel_block_grad_sums(&mut gs, &y, bm, &x, b_mean, s, c0).unwrap();
                for (i, (&(mean, m2), &(gsum, gdot))) in mm.iter().zip(&gs).enumerate() {
                    let c = c0 + i;
                    let (want_mean, want_m2) = channel_mean_m2(&x, s, c).unwrap();
                    assert_eq!((mean.to_bits(), m2.to_bits()), (want_mean.to_bits(), want_m2.to_bits()), "channel {c}");
                    let (ws, wd) = channel_grad_sums(&y, m, &x, b_mean(c), s, c).unwrap();
                    assert_eq!((gsum.to_bits(), gdot.to_bits()), (ws.to_bits(), wd.to_bits()), "channel {c}");
                }
            }
        }
        // An affine mask: the bits of the mask of the ReLU output it recomputes
        // (with values on both sides of zero and exactly at it).
        let aff: Vec<[f32; 3]> = (0..s.c).map(|c| [5.0 + 0.25 * c as f32, [1.5, -0.75][c % 2], 0.5 - 0.1 * c as f32]).collect();
        let mut relu_out = vec![f32::NAN; s.len()];
        for (i, (o, &v)) in relu_out.iter_mut().zip(&x).enumerate() {
            let [mu, k, shift] = aff[i / s.plane() % s.c];
            let pre = (v - mu) * k + shift;
            *o = if pre > 0.0 { pre } else { 0.0 };
        }
        assert!(relu_out.iter().any(|&v| v > 0.0) && relu_out.contains(&0.0));
        for c0 in [0, 3] {
            let mut gs = vec![(f64::NAN, f64::NAN); s.c - c0];
            channel_block_grad_sums(&mut gs, &y, Mask::Affine(&aff[c0..]), &x, b_mean, s, c0).unwrap();
            for (i, &(gsum, gdot)) in gs.iter().enumerate() {
                let c = c0 + i;
                let (ws, wd) = channel_grad_sums(&y, Some(&relu_out), &x, b_mean(c), s, c).unwrap();
                assert_eq!((gsum.to_bits(), gdot.to_bits()), (ws.to_bits(), wd.to_bits()), "affine mask, channel {c}");
            }
            let mut short = vec![(0.0, 0.0); s.c - c0];
            assert!(channel_block_grad_sums(&mut short, &y, Mask::Affine(&aff[c0 + 1..]), &x, b_mean, s, c0).is_err());
        }
        let mut one = [(f64::NAN, f64::NAN)];
        assert!(channel_block_mean_m2(&mut one, &x, s, s.c).is_err());
        assert!(channel_block_mean_m2(&mut one, &x[1..], s, 0).is_err());
        assert!(channel_block_grad_sums(&mut one, &y, Mask::Positive(&mask[1..]), &x, b_mean, s, 0).is_err());
        channel_block_mean_m2(&mut one, &[], Shape4::new(0, 2, 2, 2), 1).unwrap();
        assert_eq!(one, [(0.0, 0.0)]);
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
