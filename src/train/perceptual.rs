//! The perceptual term of denoiser training: a denoiser trained for the
//! descriptor behind it. A HardNet teacher, trained on the clean patches and
//! frozen, describes each denoised patch and its clean twin; the term pulls
//! the two descriptors together, so the denoiser keeps what a descriptor
//! uses (edges, texture) where L1 alone would smooth it away.
//!
//! One step on `n` patches, `y` the denoiser's output and `c` the clean
//! twins, both `[n, 1, 32, 32]`, `T` the teacher:
//!
//! ```text
//! t     = T(c)                               [n, 128]  (a constant)
//! d     = T(y)                               [n, 128]
//! P     = w (1/n) sum_i ||d_i - t_i||^2              (crate::loss::distill)
//! dP/dy = T^T (2 w (d - t) / n)              [n, 1, 32, 32]  (backward_with_input)
//! ```
//!
//! The teacher runs its training forward on both batches, each normalised by
//! its own BatchNorm statistics as in the teacher's training; its running
//! statistics move in a private copy that is never saved, its dropout is
//! off, and the gradient of its own weights is computed and dropped.

use super::session::tail_ws;
use crate::error::{Error, Result};
use crate::io::PATCH_LEN;
use crate::loss::distill::DistillLoss;
use crate::models::{DESC_LEN, Model, Workspace};
use crate::net::Network;
use crate::rng::Rng;

/// The frozen teacher and the buffers of the term, sized once for a batch.
pub(crate) struct Perceptual {
    model: Model,
    params: Vec<f32>,
    loss: DistillLoss,
    ws: Workspace,
    tail: Option<Workspace>,
    /// The teacher's parameter gradient: written by its backward, never read.
    grads: Vec<f32>,
    /// `T(c)`, `[n][128]`.
    targets: Vec<f32>,
    /// `dP/dd`, `[n][128]`.
    g_desc: Vec<f32>,
    /// Dropout stream of the training forward (rate 0: never drawn from).
    rng: Rng,
}

impl Perceptual {
    /// The term of weight `weight` through `teacher` (a HardNet) for batches of up to `batch` patches.
    pub(crate) fn new(teacher: &Network, weight: f32, batch: usize) -> Result<Perceptual> {
        if teacher.arch().is_denoiser() {
            return Err(Error::InvalidArgument(format!(
                "the perceptual term needs a HardNet teacher, not a {}",
                teacher.arch()
            )));
        }
        let mut model = Model::new(teacher.arch())?;
        model.set_dropout(0.0)?;
        Ok(Perceptual {
            ws: model.workspace(batch)?,
            tail: None,
            grads: model.zero_grads(),
            params: teacher.params().to_vec(),
            loss: DistillLoss::new(weight)?,
            targets: vec![0.0; batch * DESC_LEN],
            g_desc: vec![0.0; batch * DESC_LEN],
            rng: Rng::new(0),
            model,
        })
    }

    /// `P` of the first `n` outputs `y` against the clean twins `clean`
    /// (`[n][1024]` each); adds `dP/dy` into `dy`.
    pub(crate) fn eval(&mut self, dy: &mut [f32], y: &[f32], clean: &[f32], n: usize) -> Result<f64> {
        let m = n * PATCH_LEN;
        let d = n * DESC_LEN;
        if y.len() < m || clean.len() < m || dy.len() < m || self.targets.len() < d {
            return Err(crate::shape_err!(
                "perceptual term: {n} patches, buffers of {} / {} / {} values and room for {} descriptors",
                y.len(),
                clean.len(),
                dy.len(),
                self.targets.len() / DESC_LEN
            ));
        }
        let Perceptual { model, params, loss, ws, tail, grads, targets, g_desc, rng } = self;
        let w = if n == ws.batch() { ws } else { tail_ws(tail, model, n)? };
        // t = T(c): [n, 128], held as the targets.
        let t = &mut targets[..d];
        t.copy_from_slice(model.forward_train(w, params, &clean[..m], rng)?);
        // d = T(y); the workspace now holds this forward, which the backward reads.
        let desc = model.forward_train(w, params, &y[..m], rng)?;
        let g = &mut g_desc[..d];
        g.iter_mut().for_each(|v| *v = 0.0);
        let p = loss.loss(g, desc, t, n, DESC_LEN)? as f64;
        grads.iter_mut().for_each(|v| *v = 0.0);
        // dy += T^T dP/dd.
        model.backward_with_input(w, params, grads, g, &mut dy[..m])?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Arch;

    /// P of `y` alone (a fresh term, so the teacher's running statistics cannot matter).
    fn term(teacher: &Network, y: &[f32], clean: &[f32], n: usize) -> f64 {
        let mut p = Perceptual::new(teacher, 0.7, n).unwrap();
        let mut dy = vec![0.0; y.len()];
        p.eval(&mut dy, y, clean, n).unwrap()
    }

    #[test]
    fn gradient_matches_finite_differences() {
        crate::threads::pool(1).unwrap().install(|| {
            let n = 16;
            let teacher = Network::init(Arch::HardNetOriginal, 5).unwrap();
            let mut rng = Rng::new(9);
            // Smooth patches (few ReLU kinks near the evaluation point): waves of random phase.
            let wave = |rng: &mut Rng, amp: f32| -> Vec<f32> {
                let mut out = vec![0.0; n * PATCH_LEN];
                for p in out.chunks_mut(PATCH_LEN) {
                    let (fx, fy, ph) = (rng.uniform(0.1, 0.4), rng.uniform(0.1, 0.4), rng.uniform(0.0, 6.0));
                    for (i, v) in p.iter_mut().enumerate() {
                        let (r, c) = ((i / 32) as f32, (i % 32) as f32);
                        *v = amp * (fx * c + fy * r + ph).sin();
                    }
                }
                out
            };
            let clean: Vec<f32> = wave(&mut rng, 100.0).iter().map(|v| v + 128.0).collect();
            let y: Vec<f32> = clean.iter().zip(wave(&mut rng, 20.0)).map(|(c, e)| c + e).collect();
            let mut p = Perceptual::new(&teacher, 0.7, n).unwrap();
            let mut dy = vec![0.0; y.len()];
            let base = p.eval(&mut dy, &y, &clean, n).unwrap();
            assert!(base > 0.0 && base.is_finite());
            assert_eq!(base, term(&teacher, &y, &clean, n), "the term is the same on a fresh teacher copy");
            // Accumulates: a second call adds the same gradient again.
            let mut twice = dy.clone();
            p.eval(&mut twice, &y, &clean, n).unwrap();
            for (a, b) in twice.iter().zip(&dy) {
                assert!((a - 2.0 * b).abs() <= 1e-6 + 1e-4 * b.abs(), "{a} vs 2 x {b}");
            }
            // Directional derivatives along random directions v (up to one grey
            // level per pixel): (P(y + h v) - P(y - h v)) / 2h against <dP/dy, v>,
            // within 2% of |dP/dy| (HardNet's non-affine BatchNorm keeps many
            // ReLU inputs near the kink, so single pixels are not stable; as in
            // tests/models.rs's input gradient check).
            let scale = dy.iter().map(|&g| g as f64 * g as f64).sum::<f64>().sqrt();
            assert!(scale > 0.0);
            for k in 0..4 {
                let v: Vec<f32> = (0..y.len()).map(|_| rng.uniform(-1.0, 1.0)).collect();
                let h = 0.003f32;
                let at = |s: f32| -> Vec<f32> { y.iter().zip(&v).map(|(&a, &b)| a + s * b).collect() };
                let fd = (term(&teacher, &at(h), &clean, n) - term(&teacher, &at(-h), &clean, n)) / (2.0 * h as f64);
                let an: f64 = dy.iter().zip(&v).map(|(&g, &b)| g as f64 * b as f64).sum();
                assert!((fd - an).abs() <= 2e-2 * scale, "direction {k}: analytic {an:e}, numeric {fd:e}");
            }
            // A shorter batch than built for, and a denoiser as teacher, fail or work as documented.
            let mut dy3 = vec![0.0; 2 * PATCH_LEN];
            assert!(p.eval(&mut dy3, &y[..2 * PATCH_LEN], &clean[..2 * PATCH_LEN], 2).is_ok());
            let unet = Network::init(Arch::Unet, 1).unwrap();
            assert!(Perceptual::new(&unet, 1.0, n).is_err());
            assert!(p.eval(&mut dy3, &y[..PATCH_LEN], &clean, 2).is_err());
        });
    }
}
