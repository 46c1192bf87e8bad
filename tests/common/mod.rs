//! Shared test helpers: finite-difference gradient checks and random buffers.
//!
//! A layer's gradient is checked through a scalar loss `L = sum_i out_i * r_i`
//! with a fixed random projection `r` (so dL/dout = r and every output element
//! matters with a different weight). The numerical gradient is the central
//! difference `(L(x + eps e_i) - L(x - eps e_i)) / (2 eps)`, with L accumulated
//! in f64 so that only the layer's own f32 rounding remains.
#![allow(dead_code)]

pub mod cli;

use nhpatch::rng::Rng;

/// Tolerance of a gradient comparison: pass when
/// `|num - ana| <= atol + rtol * max(|num|, |ana|)`.
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub atol: f64,
    pub rtol: f64,
}

/// Default for piecewise-linear layers checked with eps = 1e-2 in f32.
pub const TOL: Tol = Tol { atol: 2e-3, rtol: 1e-2 };

/// Uniform random values in [lo, hi).
pub fn rand_vec(rng: &mut Rng, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..len).map(|_| rng.uniform(lo, hi)).collect()
}

/// `sum_i out_i * r_i` in f64.
pub fn proj(out: &[f32], r: &[f32]) -> f64 {
    assert_eq!(out.len(), r.len());
    out.iter().zip(r).map(|(&o, &w)| o as f64 * w as f64).sum()
}

/// Checks `analytic` against central differences of `loss` around `x`,
/// at up to `max_checks` indices (all of them when the buffer is small,
/// otherwise an evenly spread sample). `loss` receives the perturbed buffer.
/// Returns a message naming the worst index on failure.
pub fn check_grad(
    what: &str,
    x: &[f32],
    analytic: &[f32],
    eps: f32,
    tol: Tol,
    max_checks: usize,
    mut loss: impl FnMut(&[f32]) -> f64,
) -> Result<(), String> {
    assert_eq!(x.len(), analytic.len(), "{what}: gradient length");
    if x.is_empty() {
        return Ok(());
    }
    let mut xp = x.to_vec();
    let step = (x.len() / max_checks.max(1)).max(1);
    let mut worst: Option<(usize, f64, f64, f64)> = None;
    for i in (0..x.len()).step_by(step) {
        let orig = xp[i];
        xp[i] = orig + eps;
        let lp = loss(&xp);
        xp[i] = orig - eps;
        let lm = loss(&xp);
        xp[i] = orig;
        // The step actually taken in f32, not the nominal eps.
        let h = ((orig + eps) as f64) - ((orig - eps) as f64);
        let num = (lp - lm) / h;
        let ana = analytic[i] as f64;
        let err = (num - ana).abs();
        let bound = tol.atol + tol.rtol * num.abs().max(ana.abs());
        if !num.is_finite() || !ana.is_finite() || err > bound {
            let excess = if err.is_finite() { err / bound } else { f64::INFINITY };
            if worst.is_none_or(|w| excess > w.3) {
                worst = Some((i, num, ana, excess));
            }
        }
    }
    match worst {
        None => Ok(()),
        Some((i, num, ana, _)) => Err(format!("{what}[{i}]: numerical {num:.6e} vs analytic {ana:.6e}")),
    }
}

/// Asserts `|got - want| <= tol (s + |want|)` everywhere, `s` the largest
/// magnitude in `want` (at least 1): an element that is a small difference of
/// large terms is held to the rounding of those terms, not of its own size.
/// Names the worst element and how many tolerances it is off.
pub fn assert_close_scaled(what: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(1.0f64, |m, &w| m.max((w as f64).abs()));
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w as f64).abs() / (tol * scale + tol * (w as f64).abs());
        let err = if err.is_nan() { f64::INFINITY } else { err };
        if err > worst.0 {
            worst = (err, i);
        }
    }
    let i = worst.1;
    assert!(
        worst.0 <= 1.0,
        "{what}: element {i} is {} where {} is expected ({:.2} x the tolerance)",
        got[i],
        want[i],
        worst.0
    );
}

/// Asserts two buffers agree elementwise within `atol + rtol * |want|`, naming the first bad index.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= atol + rtol * w.abs();
        assert!(ok, "{what}[{i}]: got {g}, want {w}");
    }
}
