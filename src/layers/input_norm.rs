//! HardNet's input normalisation, per patch over all its `D = C*H*W` values:
//! `y = (x - mu) / d`, `mu = mean(x)`, `d = s + 1e-7`, with `s` the unbiased
//! standard deviation `sqrt(sum (x - mu)^2 / (D - 1))` (`torch.std`).
//!
//! Shapes: `x`, `out`, `dx`, `dout`: `N x C x H x W` with `D >= 2`; `mean` and
//! `std_eps` (the saved `d`): `N`.
//!
//! Backward, both `mu` and `s` depending on x, with `g = dout` and
//! `S = sum_j g_j (x_j - mu)`:
//! `dx_i = (g_i - mean(g)) / d - (x_i - mu) * S / (d^2 (D - 1) s)`
//! (the second term from `ds/dx_i = (x_i - mu) / ((D - 1) s)`; it is dropped
//! for a constant patch, where `s = 0` and `S = 0`). One patch per rayon task,
//! sums in f64.

use crate::error::{Result, check_len};
use crate::ops::elementwise::par_min_items;
use crate::ops::reduce::{dot_centered, mean_m2, sum};
use crate::shape::Shape4;
use crate::shape_err;
use rayon::prelude::*;

/// Added to the standard deviation, as in HardNet.
pub const STD_EPS: f32 = 1e-7;

fn check(shape: Shape4, bufs: &[(&str, usize)], stats: &[(&str, usize)]) -> Result<()> {
    if shape.image_len() < 2 {
        return Err(shape_err!("input_norm: a {shape} patch has fewer than 2 values, its std is undefined"));
    }
    bufs.iter().try_for_each(|&(what, len)| check_len(what, len, shape.len()))?;
    stats.iter().try_for_each(|&(what, len)| check_len(what, len, shape.n))
}

/// `out = (x - mean) / std_eps` per patch; saves `mean` and `std_eps = s + 1e-7`.
pub fn forward(out: &mut [f32], mean: &mut [f32], std_eps: &mut [f32], x: &[f32], shape: Shape4) -> Result<()> {
    check(
        shape,
        &[("input_norm forward: out", out.len()), ("input_norm forward: x", x.len())],
        &[("input_norm forward: mean", mean.len()), ("input_norm forward: std_eps", std_eps.len())],
    )?;
    if shape.n == 0 {
        return Ok(());
    }
    let img = shape.image_len();
    out.par_chunks_mut(img)
        .zip(mean.par_iter_mut().zip(std_eps.par_iter_mut()))
        .zip(x.par_chunks(img))
        .with_min_len(par_min_items(img))
        .for_each(|((o, (mu, d)), x)| {
            let (m, m2) = mean_m2(x);
            let s = (m2 / (img - 1) as f64).sqrt();
            let den = s + STD_EPS as f64;
            for (o, &x) in o.iter_mut().zip(x) {
                *o = ((x as f64 - m) / den) as f32;
            }
            *mu = m as f32;
            *d = den as f32;
        });
    Ok(())
}

/// `dx += d out / d x applied to dout`, from the saved `mean` and `std_eps`.
pub fn backward(dx: &mut [f32], dout: &[f32], x: &[f32], mean: &[f32], std_eps: &[f32], shape: Shape4) -> Result<()> {
    check(
        shape,
        &[
            ("input_norm backward: dx", dx.len()),
            ("input_norm backward: dout", dout.len()),
            ("input_norm backward: x", x.len()),
        ],
        &[("input_norm backward: mean", mean.len()), ("input_norm backward: std_eps", std_eps.len())],
    )?;
    if shape.n == 0 {
        return Ok(());
    }
    let img = shape.image_len();
    dx.par_chunks_mut(img)
        .zip(dout.par_chunks(img).zip(x.par_chunks(img)))
        .zip(mean.par_iter().zip(std_eps.par_iter()))
        .with_min_len(par_min_items(img))
        .try_for_each(|((dx, (g, x)), (&mu, &d))| -> Result<()> {
            let (mu, d) = (mu as f64, d as f64);
            let s = d - STD_EPS as f64;
            let gbar = sum(g) / img as f64;
            let k = if s > 0.0 { dot_centered(g, x, mu)? / (d * d * (img - 1) as f64 * s) } else { 0.0 };
            for ((dx, &g), &x) in dx.iter_mut().zip(g).zip(x) {
                *dx += ((g as f64 - gbar) / d - (x as f64 - mu) * k) as f32;
            }
            Ok(())
        })
}
