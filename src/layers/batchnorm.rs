//! BatchNorm2d over NCHW, PyTorch semantics.
//!
//! Shapes: `x`, `out`, `dout`, `dx`: `N x C x H x W`; `gamma`, `beta`,
//! `dgamma`, `dbeta`: `C` when `affine`, empty (length 0) otherwise (the
//! HardNet variant); `mean`, `inv_std`, `running_mean`, `running_var`: `C`;
//! `scratch` (training backward only): `2*C`.
//!
//! Per channel c, over its `m = N*H*W` values:
//! - training forward: `mu = mean(x)`, `var = mean((x - mu)^2)` (biased, in
//!   f64: two passes per plane, folded over the planes), `inv_std = 1 /
//!   sqrt(var + eps)`, `xhat = (x - mu) * inv_std`,
//!   `y = gamma * xhat + beta` (`y = xhat` without affine). Saves `mu` and
//!   `inv_std`; updates `running = (1 - momentum) * running + momentum * stat`
//!   with the unbiased `var * m / (m - 1)` for `running_var` (the biased one,
//!   0, when m == 1, where the unbiased one is undefined).
//! - training backward, with `g = dout * gamma`:
//!   `dx = inv_std * (g - mean(g) - xhat * mean(g * xhat))`,
//!   `dgamma = sum(dout * xhat)`, `dbeta = sum(dout)`.
//! - eval forward: as training with `mu = running_mean`,
//!   `inv_std = 1 / sqrt(running_var + eps)`, no statistics updated.
//! - eval backward: the statistics are constants, so `dx = dout * gamma * inv_std`,
//!   with the same `dgamma`, `dbeta`.
//!
//! Threads: the reductions take a block of channels at a time, cut into
//! groups of channels across the pool, each group reading its planes image
//! by image (`reduce::channel_block_mean_m2`; a channel's fold has one fixed
//! order inside); the elementwise passes run one image per task. Either way
//! each result is computed by the same sequence of operations for any thread
//! count.

use crate::dist::Collective;
use crate::error::{Result, check_len};
use crate::layers::DxMode;
use crate::ops::elementwise::{par_min_items, relu_mask, relu_mask_affine};
use crate::ops::reduce::{
    CHANNEL_BLOCK, MASK_BLOCK, Mask, channel_block_grad_sums, channel_block_mean_m2, channel_sum,
};
use crate::shape::Shape4;
use crate::{arg_err, shape_err};
use rayon::prelude::*;

/// Configuration of one BatchNorm2d layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormConfig {
    pub channels: usize,
    /// Added to the variance before the square root; > 0.
    pub eps: f32,
    /// Weight of the batch statistic in the running average, in [0, 1].
    pub momentum: f32,
    /// Whether the layer has a learnable per-channel scale and shift.
    pub affine: bool,
}

impl BatchNormConfig {
    pub fn new(channels: usize, eps: f32, momentum: f32, affine: bool) -> Result<Self> {
        if channels == 0 {
            return Err(arg_err!("batchnorm: channels must be positive"));
        }
        if !(eps > 0.0 && eps.is_finite()) {
            return Err(arg_err!("batchnorm: eps must be positive and finite, got {eps}"));
        }
        if !(0.0..=1.0).contains(&momentum) {
            return Err(arg_err!("batchnorm: momentum must lie in [0, 1], got {momentum}"));
        }
        Ok(BatchNormConfig { channels, eps, momentum, affine })
    }

    /// PyTorch's defaults: eps 1e-5, momentum 0.1.
    pub fn pytorch(channels: usize, affine: bool) -> Result<Self> {
        Self::new(channels, 1e-5, 0.1, affine)
    }

    /// Length of `gamma`, `beta` and their gradients: C, or 0 without affine.
    pub fn param_len(&self) -> usize {
        if self.affine { self.channels } else { 0 }
    }

    /// Checks one call's buffers: `tensors` against `shape`, `params` against
    /// `param_len()`, `stats` against C; and `shape` against the channel count.
    fn check(
        &self,
        shape: Shape4,
        tensors: &[(&str, usize)],
        params: &[(&str, usize)],
        stats: &[(&str, usize)],
    ) -> Result<()> {
        if shape.c != self.channels {
            return Err(shape_err!("batchnorm: a {shape} tensor for a layer of {} channels", self.channels));
        }
        let groups = [(tensors, shape.len()), (params, self.param_len()), (stats, self.channels)];
        groups.iter().try_for_each(|(bufs, want)| bufs.iter().try_for_each(|&(what, len)| check_len(what, len, *want)))
    }
}

/// Values per channel, `m = N*H*W`, which training needs to be positive.
fn train_count(shape: Shape4) -> Result<usize> {
    match shape.n * shape.plane() {
        0 => Err(shape_err!("batchnorm training needs at least one value per channel, got a {shape} tensor")),
        m => Ok(m),
    }
}

/// `(gamma[c], beta[c])`, or the identity `(1, 0)` without affine (empty slices).
fn affine_of(gamma: &[f32], beta: &[f32], c: usize) -> (f32, f32) {
    (gamma.get(c).copied().unwrap_or(1.0), beta.get(c).copied().unwrap_or(0.0))
}

/// Runs `f(c, out_plane, a_plane, b_plane)` over the planes of three
/// tensors of `shape`, one image per rayon task (`b` may repeat `a`).
fn for_each_plane(
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    shape: Shape4,
    f: impl Fn(usize, &mut [f32], &[f32], &[f32]) + Sync,
) {
    for_each_plane3(out, a, b, b, shape, |c, o, a, b, _| f(c, o, a, b));
}

/// `for_each_plane` with a third input `d`.
fn for_each_plane3(
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    d: &[f32],
    shape: Shape4,
    f: impl Fn(usize, &mut [f32], &[f32], &[f32], &[f32]) + Sync,
) {
    let (img, plane) = (shape.image_len(), shape.plane());
    if img == 0 || plane == 0 {
        return;
    }
    let inputs = a.par_chunks(img).zip(b.par_chunks(img)).zip(d.par_chunks(img));
    out.par_chunks_mut(img).zip(inputs).with_min_len(par_min_items(img)).for_each(|(o, ((a, b), d))| {
        let planes = o.chunks_exact_mut(plane).zip(a.chunks_exact(plane)).zip(b.chunks_exact(plane));
        for (c, (((o, a), b), d)) in planes.zip(d.chunks_exact(plane)).enumerate() {
            f(c, o, a, b, d);
        }
    });
}

/// What the normalising pass applies to its result before writing it.
///
/// Why: BatchNorm is usually followed by ReLU; applying it in the same pass
/// saves reading and writing the whole activation once more. Backward:
/// [`backward_train`] with [`Upstream::through_relu`] takes the
/// gradient w.r.t. this output and applies ReLU's mask in its own passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Relu,
}

/// `out = act(gamma * (x - mu) * inv_std + beta)` with `(mu, inv_std) = stats(c)`.
fn normalize(
    out: &mut [f32],
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    shape: Shape4,
    act: Activation,
    stats: impl Fn(usize) -> (f32, f32) + Sync,
) {
    for_each_plane(out, x, x, shape, |c, o, x, _| {
        let (mu, is) = stats(c);
        let [mu, k, b] = relu_input_map(gamma, beta, c, mu, is);
        match act {
            Activation::Identity => o.iter_mut().zip(x).for_each(|(o, &x)| *o = (x - mu) * k + b),
            Activation::Relu => o.iter_mut().zip(x).for_each(|(o, &x)| {
                let y = (x - mu) * k + b;
                *o = if y > 0.0 { y } else { 0.0 }
            }),
        }
    });
}

/// `f(c0, acc)` for the channels `0..channels` a block at a time
/// (`reduce::CHANNEL_BLOCK`), `acc` holding one f64 pair per channel of the
/// block, on the stack: the block reductions' results, with no buffer to size.
fn by_blocks(channels: usize, mut f: impl FnMut(usize, &mut [(f64, f64)]) -> Result<()>) -> Result<()> {
    for c0 in (0..channels).step_by(CHANNEL_BLOCK) {
        let mut acc = [(0.0f64, 0.0f64); CHANNEL_BLOCK];
        f(c0, &mut acc[..CHANNEL_BLOCK.min(channels - c0)])?;
    }
    Ok(())
}

/// `put(c, sum g, sum g * xhat)` for every channel `c`, `xhat = (x - mu) *
/// inv_std` with `(mu, inv_std) = stats(c)`, `g = dout`, or `dout` where
/// the ReLU after this layer let it through (`relu`); the sums image by
/// image (`reduce::channel_block_grad_sums`).
fn grad_sums(
    (dout, relu, x): (&[f32], Option<ReluMask<'_>>, &[f32]),
    (gamma, shape): (&[f32], Shape4),
    stats: impl Fn(usize) -> (f32, f64) + Sync,
    mut put: impl FnMut(usize, f32, f32),
) -> Result<()> {
    by_blocks(shape.c, |c0, acc| {
        let mut affine = [[0.0f32; 3]; CHANNEL_BLOCK];
        let mask = match relu {
            None => Mask::All,
            Some(ReluMask::Output(y)) => Mask::Positive(y),
            Some(ReluMask::Recomputed { beta }) => {
                for (c, a) in (c0..).zip(affine[..acc.len()].iter_mut()) {
                    let (mu, is) = stats(c);
                    *a = relu_input_map(gamma, beta, c, mu, is as f32);
                }
                Mask::Affine(&affine[..acc.len()])
            }
        };
        channel_block_grad_sums(acc, dout, mask, x, |c| stats(c).0 as f64, shape, c0)?;
        for (c, &(sum, dot)) in (c0..).zip(acc.iter()) {
            put(c, sum as f32, (dot * stats(c).1) as f32);
        }
        Ok(())
    })
}

/// `[mu, k, shift]` of channel `c`'s normalising map `(x - mu) * k + shift`
/// (`k = inv_std * gamma`, `shift = beta`), the operands `normalize` uses:
/// what `Mask::Affine` and `relu_mask_affine` recompute the ReLU's input with.
fn relu_input_map(gamma: &[f32], beta: &[f32], c: usize, mu: f32, inv_std: f32) -> [f32; 3] {
    let (g, b) = affine_of(gamma, beta, c);
    [mu, inv_std * g, b]
}

/// The length checks of both training forwards.
#[allow(clippy::too_many_arguments)]
fn check_train_forward(
    out: &[f32],
    mean: &[f32],
    inv_std: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    shape: Shape4,
    cfg: &BatchNormConfig,
) -> Result<()> {
    cfg.check(
        shape,
        &[("batchnorm forward: out", out.len()), ("batchnorm forward: x", x.len())],
        &[("batchnorm forward: gamma", gamma.len()), ("batchnorm forward: beta", beta.len())],
        &[
            ("batchnorm forward: mean", mean.len()),
            ("batchnorm forward: inv_std", inv_std.len()),
            ("batchnorm forward: running_mean", running_mean.len()),
            ("batchnorm forward: running_var", running_var.len()),
        ],
    )
}

/// Training forward: normalises with the batch statistics (then applies
/// `act`), saves them in `mean` and `inv_std`, and updates `running_mean`
/// and `running_var`.
#[allow(clippy::too_many_arguments)]
pub fn forward_train(
    out: &mut [f32],
    mean: &mut [f32],
    inv_std: &mut [f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    shape: Shape4,
    cfg: &BatchNormConfig,
    act: Activation,
) -> Result<()> {
    check_train_forward(out, mean, inv_std, running_mean, running_var, x, gamma, beta, shape, cfg)?;
    let m = train_count(shape)? as f64;
    // Image by image, a block of channels at a time (`reduce::channel_block_mean_m2`).
    by_blocks(cfg.channels, |c0, acc| {
        channel_block_mean_m2(acc, x, shape, c0)?;
        for (c, &(bm, m2)) in (c0..).zip(acc.iter()) {
            set_stats((&mut mean[c], &mut inv_std[c], &mut running_mean[c], &mut running_var[c]), bm, m2, m, cfg);
        }
        Ok(())
    })?;
    normalize(out, x, gamma, beta, shape, act, |c| (mean[c], inv_std[c]));
    Ok(())
}

/// One channel's saved statistics and running averages from its batch mean
/// `bm` and sum of squared deviations `m2` over `m` values.
fn set_stats(
    (mu, is, rm, rv): (&mut f32, &mut f32, &mut f32, &mut f32),
    bm: f64,
    m2: f64,
    m: f64,
    cfg: &BatchNormConfig,
) {
    let (eps, mom) = (cfg.eps as f64, cfg.momentum as f64);
    // Unbiased variance = m2 / (m - 1); with one value the biased one (0) stands in.
    let unbiased_div = if m > 1.0 { m - 1.0 } else { 1.0 };
    *mu = bm as f32;
    *is = (1.0 / (m2 / m + eps).sqrt()) as f32;
    *rm = ((1.0 - mom) * *rm as f64 + mom * bm) as f32;
    *rv = ((1.0 - mom) * *rv as f64 + mom * (m2 / unbiased_div)) as f32;
}

/// `sum (x - mu)^2` over channel `c` in f64.
fn channel_sq_dev(x: &[f32], shape: Shape4, c: usize, mu: f64) -> f64 {
    let plane = shape.plane();
    (0..shape.n)
        .map(|i| {
            let p = &x[(i * shape.c + c) * plane..][..plane];
            p.iter().map(|&v| (v as f64 - mu) * (v as f64 - mu)).sum::<f64>()
        })
        .sum()
}

/// Length of the `sums` buffer the synchronised passes need: `2 * channels + 1`.
pub fn sync_len(cfg: &BatchNormConfig) -> usize {
    2 * cfg.channels + 1
}

/// Synchronised training forward (data-parallel training): as
/// [`forward_train`], with the statistics of the whole global batch, whose
/// shares `x` holds on each rank of `comm`. Two all-reduces of `C + 1` and `C`
/// values: the per-channel sums and counts give the mean, then the sums of
/// squared deviations from it give the variance. `sums` is scratch of
/// [`sync_len`] values.
#[allow(clippy::too_many_arguments)]
pub fn forward_train_synced(
    out: &mut [f32],
    mean: &mut [f32],
    inv_std: &mut [f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    shape: Shape4,
    cfg: &BatchNormConfig,
    act: Activation,
    comm: &dyn Collective,
    sums: &mut [f64],
) -> Result<()> {
    check_train_forward(out, mean, inv_std, running_mean, running_var, x, gamma, beta, shape, cfg)?;
    let ch = cfg.channels;
    check_len("batchnorm sync: sums", sums.len(), sync_len(cfg))?;
    // sums = [sum x per channel (C) | count | sum (x - mu)^2 per channel (C)].
    let (s, rest) = sums.split_at_mut(ch);
    s.par_iter_mut().enumerate().try_for_each(|(c, v)| -> Result<()> {
        *v = channel_sum(x, shape, c)?;
        Ok(())
    })?;
    rest[0] = (shape.n * shape.plane()) as f64;
    comm.sum_f64(&mut sums[..ch + 1])?;
    let m = sums[ch];
    if m < 1.0 {
        return Err(shape_err!("batchnorm training needs at least one value per channel over the global batch"));
    }
    let (s, rest) = sums.split_at_mut(ch + 1);
    let q = &mut rest[..ch];
    q.par_iter_mut().enumerate().for_each(|(c, v)| *v = channel_sq_dev(x, shape, c, s[c] / m));
    comm.sum_f64(q)?;
    for c in 0..ch {
        set_stats((&mut mean[c], &mut inv_std[c], &mut running_mean[c], &mut running_var[c]), s[c] / m, q[c], m, cfg);
    }
    normalize(out, x, gamma, beta, shape, act, |c| (mean[c], inv_std[c]));
    Ok(())
}

/// Eval forward: normalises with the running statistics (then applies `act`); nothing is updated.
#[allow(clippy::too_many_arguments)]
pub fn forward_eval(
    out: &mut [f32],
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    shape: Shape4,
    cfg: &BatchNormConfig,
    act: Activation,
) -> Result<()> {
    cfg.check(
        shape,
        &[("batchnorm eval forward: out", out.len()), ("batchnorm eval forward: x", x.len())],
        &[("batchnorm eval forward: gamma", gamma.len()), ("batchnorm eval forward: beta", beta.len())],
        &[
            ("batchnorm eval forward: running_mean", running_mean.len()),
            ("batchnorm eval forward: running_var", running_var.len()),
        ],
    )?;
    // inv_std is recomputed per image and channel: C square roots per image
    // instead of a buffer.
    normalize(out, x, gamma, beta, shape, act, |c| (running_mean[c], 1.0 / (running_var[c] + cfg.eps).sqrt()));
    Ok(())
}

/// `dgamma[c] += sum(dout * xhat)`, `dbeta[c] += sum(dout)` from the per-channel
/// sums `(sum dout, sum dout * xhat)` (no-op without affine).
fn accumulate_affine(dgamma: &mut [f32], dbeta: &mut [f32], sums: &[f32]) {
    for ((dg, db), s) in dgamma.iter_mut().zip(dbeta.iter_mut()).zip(sums.chunks_exact(2)) {
        *db += s[0];
        *dg += s[1];
    }
}

/// Training backward through the batch statistics saved by `forward_train`,
/// from the gradient `up` (see [`Upstream`]: with a ReLU mask, the backward
/// of BatchNorm followed by ReLU). `scratch` (2*C) receives the per-channel
/// `(sum dout, sum dout * xhat)`. Accumulates into `dgamma`, `dbeta`, and
/// into `dx` or over it (`mode`).
#[allow(clippy::too_many_arguments)]
pub fn backward_train(
    (dx, mode): (&mut [f32], DxMode),
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    scratch: &mut [f32],
    up: Upstream<'_>,
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    inv_std: &[f32],
    shape: Shape4,
    cfg: &BatchNormConfig,
) -> Result<()> {
    backward_impl((dx, mode), dgamma, dbeta, scratch, up, x, gamma, mean, inv_std, shape, cfg, None)
}

/// The gradient arriving at BatchNorm's output: `dout` itself, or, for
/// BatchNorm followed by ReLU (`Activation::Relu` in the forward), the
/// gradient w.r.t. the ReLU's output, which counts where that output is
/// positive (else 0; ReLU's backward, fused into this one).
///
/// Why: ReLU's backward would write the masked gradient to a zeroed buffer
/// that BatchNorm's backward then reads twice; the fused passes apply the
/// mask on the fly instead, with the same bits (`tests/grad_layers.rs`).
#[derive(Clone, Copy)]
pub struct Upstream<'a> {
    pub dout: &'a [f32],
    pub relu: Option<ReluMask<'a>>,
}

/// Where the mask of a ReLU after BatchNorm comes from.
#[derive(Clone, Copy)]
pub enum ReluMask<'a> {
    /// The ReLU's output, read: positive where the gradient passes.
    Output(&'a [f32]),
    /// Recomputed from BatchNorm's input `x`, its saved statistics, `gamma`
    /// and this `beta` (empty without affine), the forward's operands, with
    /// the forward's f32 operations: the output's mask without reading the
    /// output, so each backward pass streams two tensors instead of three.
    /// The parameters must be those of the forward.
    Recomputed { beta: &'a [f32] },
}

impl<'a> Upstream<'a> {
    /// The gradient w.r.t. BatchNorm's own output.
    pub fn plain(dout: &'a [f32]) -> Upstream<'a> {
        Upstream { dout, relu: None }
    }

    /// The gradient `dout` w.r.t. the output `relu_out` of a ReLU after BatchNorm.
    pub fn through_relu(dout: &'a [f32], relu_out: &'a [f32]) -> Upstream<'a> {
        Upstream { dout, relu: Some(ReluMask::Output(relu_out)) }
    }

    /// The gradient `dout` w.r.t. the output of a ReLU after BatchNorm, its
    /// mask recomputed ([`ReluMask::Recomputed`]) with the forward's `beta`.
    pub fn through_relu_recomputed(dout: &'a [f32], beta: &'a [f32]) -> Upstream<'a> {
        Upstream { dout, relu: Some(ReluMask::Recomputed { beta }) }
    }
}

/// Synchronised training backward, after [`forward_train_synced`]: `dgamma`
/// and `dbeta` get this rank's sums (the gradient all-reduce adds the other
/// ranks'), `dx` uses the global batch's `mean(dout)` and `mean(dout * xhat)`
/// (one all-reduce of `2 * C + 1` values). `sums`: [`sync_len`] values.
#[allow(clippy::too_many_arguments)]
pub fn backward_train_synced(
    (dx, mode): (&mut [f32], DxMode),
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    scratch: &mut [f32],
    up: Upstream<'_>,
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    inv_std: &[f32],
    shape: Shape4,
    cfg: &BatchNormConfig,
    comm: &dyn Collective,
    sums: &mut [f64],
) -> Result<()> {
    backward_impl((dx, mode), dgamma, dbeta, scratch, up, x, gamma, mean, inv_std, shape, cfg, Some((comm, sums)))
}

#[allow(clippy::too_many_arguments)]
fn backward_impl(
    (dx, mode): (&mut [f32], DxMode),
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    scratch: &mut [f32],
    Upstream { dout, relu }: Upstream<'_>,
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    inv_std: &[f32],
    shape: Shape4,
    cfg: &BatchNormConfig,
    sync: Option<(&dyn Collective, &mut [f64])>,
) -> Result<()> {
    cfg.check(
        shape,
        &[
            ("batchnorm backward: dx", dx.len()),
            ("batchnorm backward: dout", dout.len()),
            ("batchnorm backward: x", x.len()),
            ("batchnorm backward: relu_out", if let Some(ReluMask::Output(y)) = relu { y.len() } else { x.len() }),
        ],
        &[
            ("batchnorm backward: gamma", gamma.len()),
            (
                "batchnorm backward: beta",
                if let Some(ReluMask::Recomputed { beta }) = relu { beta.len() } else { gamma.len() },
            ),
            ("batchnorm backward: dgamma", dgamma.len()),
            ("batchnorm backward: dbeta", dbeta.len()),
        ],
        &[("batchnorm backward: mean", mean.len()), ("batchnorm backward: inv_std", inv_std.len())],
    )?;
    check_len("batchnorm backward: scratch", scratch.len(), 2 * cfg.channels)?;
    let m = train_count(shape)?;
    grad_sums(
        (dout, relu, x),
        (gamma, shape),
        |c| (mean[c], inv_std[c] as f64),
        |c, sum, dot| {
            (scratch[2 * c], scratch[2 * c + 1]) = (sum, dot);
        },
    )?;
    accumulate_affine(dgamma, dbeta, scratch);
    let mut m = m as f64;
    if let Some((comm, buf)) = sync {
        check_len("batchnorm sync: sums", buf.len(), sync_len(cfg))?;
        buf.iter_mut().zip(scratch.iter()).for_each(|(b, &v)| *b = v as f64);
        buf[2 * cfg.channels] = m;
        comm.sum_f64(buf)?;
        scratch.iter_mut().zip(buf.iter()).for_each(|(v, &b)| *v = b as f32);
        m = buf[2 * cfg.channels];
    }
    let sums: &[f32] = scratch;
    let inv_m = (1.0 / m) as f32;
    let plane = |c: usize| {
        let (g, _) = affine_of(gamma, &[], c);
        // In terms of dout: dx = g*is*(dy - mean(dy) - xhat * mean(dy*xhat)).
        (mean[c], inv_std[c], g * inv_std[c], sums[2 * c] * inv_m, sums[2 * c + 1] * inv_m)
    };
    let add = |dx: &mut [f32], dy: &[f32], x: &[f32], (mu, is, k, mdy, mdyx): (f32, f32, f32, f32, f32)| {
        let g = |dy: f32, x: f32| k * (dy - mdy - (x - mu) * is * mdyx);
        match mode {
            DxMode::Add => dx.iter_mut().zip(dy).zip(x).for_each(|((dx, &dy), &x)| *dx += g(dy, x)),
            DxMode::Write => dx.iter_mut().zip(dy).zip(x).for_each(|((dx, &dy), &x)| *dx = g(dy, x)),
        }
    };
    match relu {
        None => for_each_plane(dx, dout, x, shape, |c, dx, dy, x| add(dx, dy, x, plane(c))),
        Some(ReluMask::Output(y)) => for_each_plane3(dx, dout, y, x, shape, |c, dx, dy, y, x| {
            // The masked gradient a block at a time, on the stack (see `elementwise::relu_mask`).
            let mut buf = [0.0f32; MASK_BLOCK];
            let blocks = dx.chunks_mut(MASK_BLOCK).zip(dy.chunks(MASK_BLOCK)).zip(y.chunks(MASK_BLOCK));
            for (((dx, dy), y), x) in blocks.zip(x.chunks(MASK_BLOCK)) {
                let g = &mut buf[..dx.len()];
                relu_mask(g, dy, y);
                add(dx, g, x, plane(c));
            }
        }),
        Some(ReluMask::Recomputed { beta }) => for_each_plane(dx, dout, x, shape, |c, dx, dy, x| {
            let map = relu_input_map(gamma, beta, c, mean[c], inv_std[c]);
            let mut buf = [0.0f32; MASK_BLOCK];
            let blocks = dx.chunks_mut(MASK_BLOCK).zip(dy.chunks(MASK_BLOCK)).zip(x.chunks(MASK_BLOCK));
            for ((dx, dy), x) in blocks {
                let g = &mut buf[..dx.len()];
                relu_mask_affine(g, dy, x, map);
                add(dx, g, x, plane(c));
            }
        }),
    }
    Ok(())
}

/// Eval backward: the running statistics are constants, so `dx += dout *
/// gamma / sqrt(running_var + eps)`; `dgamma`, `dbeta` as in training with
/// `xhat` from the running statistics. Accumulates into every gradient.
#[allow(clippy::too_many_arguments)]
pub fn backward_eval(
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    dout: &[f32],
    x: &[f32],
    gamma: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    shape: Shape4,
    cfg: &BatchNormConfig,
) -> Result<()> {
    cfg.check(
        shape,
        &[
            ("batchnorm eval backward: dx", dx.len()),
            ("batchnorm eval backward: dout", dout.len()),
            ("batchnorm eval backward: x", x.len()),
        ],
        &[
            ("batchnorm eval backward: gamma", gamma.len()),
            ("batchnorm eval backward: dgamma", dgamma.len()),
            ("batchnorm eval backward: dbeta", dbeta.len()),
        ],
        &[
            ("batchnorm eval backward: running_mean", running_mean.len()),
            ("batchnorm eval backward: running_var", running_var.len()),
        ],
    )?;
    let inv_std = |c: usize| 1.0 / (running_var[c] as f64 + cfg.eps as f64).sqrt();
    // Without affine there is nothing to add the sums to.
    if cfg.affine {
        grad_sums(
            (dout, None, x),
            (gamma, shape),
            |c| (running_mean[c], inv_std(c)),
            |c, sum, dot| {
                dbeta[c] += sum;
                dgamma[c] += dot;
            },
        )?;
    }
    for_each_plane(dx, dout, dout, shape, |c, dx, dy, _| {
        let k = affine_of(gamma, &[], c).0 * inv_std(c) as f32;
        for (dx, &dy) in dx.iter_mut().zip(dy) {
            *dx += k * dy;
        }
    });
    Ok(())
}
