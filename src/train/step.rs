//! One optimizer step of a training stage, wherever it runs: in this
//! process, data-parallel over the ranks of a group ([`Parallel`]), or on a
//! device ([`crate::gpu::Trainer`]). A training loop draws its batch, sets
//! the step's learning rate and calls [`Stepper::step`]; the loop's body is
//! the same for the three.
//!
//! A batch holds `n` items of `K` patches each, laid out `[K][n][1024]`
//! (denoiser: `K = 1`). The head says what the model's outputs are scored
//! with: a pointwise loss against target patches (denoiser) or a loss over
//! the `K` descriptors of each item (descriptor).
//!
//! Host step (one process or one rank):
//!   out = model(x_share); dL/dout from the head; check the loss;
//!   grads = 0 + backward(dL/dout); (data-parallel: sum over ranks); optimizer step.
//! Data-parallel, each rank runs its share `[K][len][1024]` of the global
//! batch, scales its loss gradient by `len / n` (the loss is a mean over the
//! global batch) and reports the global loss; a loss that ranks the whole
//! batch (hardest-in-batch) scores all ranks' descriptors on every rank.
//! Device step: the whole step runs there; the loss is checked after it.
//! Buffers are sized once, for a full batch and once for a shorter last batch.

use super::parallel::Parallel;
use super::perceptual::Perceptual;
use super::session::{RunDir, State, tail_ws};
use crate::error::{Error, Result};
use crate::gpu::Trainer;
use crate::io::PATCH_LEN;
use crate::loss::distill::DistillLoss;
use crate::loss::hardnet::{HardNetLoss, HardNetWorkspace};
use crate::loss::sos::{SosRegularizer, SosWorkspace};
use crate::loss::triplet::TripletLoss;
use crate::loss::{PointLoss, TupleLoss};
use crate::models::{DESC_LEN, Model, Workspace};
use crate::ops::elementwise::scale;
use std::ops::Range;

/// A descriptor loss with its scratch: triplets, or HardNet pairs with an
/// optional second-order similarity regulariser and an optional
/// distillation term added to the loss.
pub(crate) enum TupleHead {
    Triplet(TripletLoss),
    HardNet(HardNetLoss, HardNetWorkspace, Option<Box<(SosRegularizer, SosWorkspace)>>, Option<Box<Distill>>),
}

/// The distillation term and its targets, `[2][n][128]` (the teacher's
/// descriptors of the batch's clean twins), refilled by the caller every step.
pub(crate) struct Distill {
    loss: DistillLoss,
    targets: Vec<f32>,
}

impl TupleHead {
    /// `loss` with scratch for batches of `batch` items.
    pub(crate) fn new(loss: TupleLoss, batch: usize) -> TupleHead {
        match loss {
            TupleLoss::Triplet(t) => TupleHead::Triplet(t),
            TupleLoss::HardNet(h) => TupleHead::HardNet(h, HardNetWorkspace::new(batch), None, None),
        }
    }

    /// Adds SOSNet's regulariser to a HardNet loss (`None`: left as it is).
    pub(crate) fn with_sos(self, sos: Option<SosRegularizer>) -> Result<TupleHead> {
        match (self, sos) {
            (head, None) => Ok(head),
            (TupleHead::HardNet(h, ws, _, d), Some(s)) => {
                let b = ws.batch();
                Ok(TupleHead::HardNet(h, ws, Some(Box::new((s, SosWorkspace::new(b)))), d))
            }
            (TupleHead::Triplet(_), Some(_)) => {
                Err(Error::InvalidArgument("the SOS regulariser applies to the hardnet loss only".into()))
            }
        }
    }

    /// Adds a distillation term to a HardNet loss (`None`: left as it is);
    /// its targets are set with [`TupleHead::distill_targets`] before each step.
    pub(crate) fn with_distill(self, distill: Option<DistillLoss>) -> Result<TupleHead> {
        match (self, distill) {
            (head, None) => Ok(head),
            (TupleHead::HardNet(h, ws, s, _), Some(loss)) => {
                let targets = vec![0.0; 2 * ws.batch() * DESC_LEN];
                Ok(TupleHead::HardNet(h, ws, s, Some(Box::new(Distill { loss, targets }))))
            }
            (TupleHead::Triplet(_), Some(_)) => {
                Err(Error::InvalidArgument("distillation applies to the hardnet loss only".into()))
            }
        }
    }

    /// The distillation targets of a batch of `n` pairs, `[2][n][128]`, when
    /// the head distills (grown to `n` if the batch is larger than built for).
    pub(crate) fn distill_targets(&mut self, n: usize) -> Option<&mut [f32]> {
        match self {
            TupleHead::HardNet(.., Some(d)) => {
                let len = 2 * n * DESC_LEN;
                if d.targets.len() < len {
                    d.targets.resize(len, 0.0);
                }
                Some(&mut d.targets[..len])
            }
            _ => None,
        }
    }

    /// Patches per item.
    pub(crate) fn k(&self) -> usize {
        self.loss().k()
    }

    /// The loss without its scratch.
    pub(crate) fn loss(&self) -> TupleLoss {
        match self {
            TupleHead::Triplet(t) => TupleLoss::Triplet(*t),
            TupleHead::HardNet(h, ..) => TupleLoss::HardNet(*h),
        }
    }

    /// What the device trainer takes: the loss, when the device runs all of it.
    fn device_loss(&self) -> Result<TupleLoss> {
        if matches!(self, TupleHead::HardNet(_, _, _, Some(_))) {
            return Err(Error::InvalidArgument(
                "distillation runs on the CPU only: drop --distill-weight or train with --device cpu".into(),
            ));
        }
        if matches!(self, TupleHead::HardNet(_, _, Some(_), _)) {
            return Err(Error::InvalidArgument(
                "the SOS regulariser runs on the CPU only: drop --sos-weight or train with --device cpu".into(),
            ));
        }
        Ok(self.loss())
    }

    /// Whether the loss of an item depends on the other items of its batch (hardest-in-batch negatives).
    fn needs_whole_batch(&self) -> bool {
        matches!(self, TupleHead::HardNet(..))
    }

    /// Loss of `n` tuples whose descriptors are `out` = [K][n][128]; adds d loss / d out into `dout`.
    pub(crate) fn eval(&mut self, dout: &mut [f32], out: &[f32], n: usize) -> Result<f64> {
        let d = n * DESC_LEN;
        match self {
            TupleHead::Triplet(t) => {
                let (ga, rest) = dout.split_at_mut(d);
                let (gp, gn) = rest.split_at_mut(d);
                t.loss(ga, gp, &mut gn[..d], &out[..d], &out[d..2 * d], &out[2 * d..3 * d], n, DESC_LEN).map(f64::from)
            }
            TupleHead::HardNet(h, ws, sos, distill) => {
                if ws.batch() != n {
                    *ws = HardNetWorkspace::new(n);
                }
                let (ga, gp) = dout.split_at_mut(d);
                let (a, p) = (&out[..d], &out[d..2 * d]);
                let mut l = h.loss(ga, &mut gp[..d], ws, a, p, n, DESC_LEN)? as f64;
                if let Some(reg) = sos {
                    let (s, sws) = &mut **reg;
                    if sws.batch() != n {
                        *sws = SosWorkspace::new(n);
                    }
                    l += s.loss(ga, &mut gp[..d], sws, a, p, n, DESC_LEN)? as f64;
                }
                if let Some(t) = distill {
                    // Anchors and positives alike: 2n rows, each against its clean twin's teacher descriptor.
                    let targets = t.targets.get(..2 * d).ok_or_else(|| {
                        crate::shape_err!(
                            "distillation targets for {} pairs, batch has {n}",
                            t.targets.len() / (2 * DESC_LEN)
                        )
                    })?;
                    l += t.loss.loss(&mut dout[..2 * d], &out[..2 * d], targets, 2 * n, DESC_LEN)? as f64;
                }
                Ok(l)
            }
        }
    }
}

/// What a step scores the model's outputs with.
pub(crate) enum Head<'a> {
    /// Denoiser: the outputs `[n][1024]` against `target` (`[n][1024]`, at
    /// least) with a pointwise loss, plus, trained for a descriptor, the
    /// perceptual term of `guide` against the same targets ([`super::perceptual`]).
    Point { loss: PointLoss, target: &'a [f32], guide: Option<&'a mut Perceptual> },
    /// Descriptor: a loss over the `K` descriptors of each item.
    Tuple(&'a mut TupleHead),
}

fn perceptual_on_cpu() -> Error {
    Error::InvalidArgument(
        "the perceptual term trains in one process on the CPU: drop --perceptual-weight, --device or --distributed"
            .into(),
    )
}

/// The buffers of host steps (one process or one rank of a group).
struct Host {
    par: Option<Parallel>,
    /// Items of this rank's share of a full batch (all of it in one process).
    own: usize,
    ws: Workspace,
    tail: Option<Workspace>,
    grads: Vec<f32>,
    ranges: Vec<Range<usize>>,
    dout: Vec<f32>,
    /// Data-parallel: this rank's inputs and targets.
    x_own: Vec<f32>,
    t_own: Vec<f32>,
    /// Data-parallel whole-batch loss: every rank's descriptors and their gradient.
    all: Vec<f32>,
    g_all: Vec<f32>,
}

enum Where {
    Host(Box<Host>),
    Device(Box<Trainer>),
}

/// Runs the steps of one stage for `model`.
pub(crate) struct Stepper<'m> {
    model: &'m Model,
    /// Patches per item.
    k: usize,
    at: Where,
}

impl<'m> Stepper<'m> {
    /// Steps for `run`'s placement (one process, its group of ranks, or its
    /// device) on batches of up to `batch` items of `k` patches, an epoch
    /// being `epoch_items` items; `st` holds the starting parameters and optimizer state.
    pub(crate) fn new(
        run: &RunDir,
        model: &'m Model,
        st: &State,
        (batch, k): (usize, usize),
        epoch_items: u64,
    ) -> Result<Stepper<'m>> {
        let par = run.parallel.clone();
        if let Some(p) = &par {
            p.check_batches(batch, epoch_items)?;
            if !run.device.is_cpu() {
                return Err(Error::InvalidArgument(
                    "--distributed trains on CPUs; it cannot be combined with --device".into(),
                ));
            }
        }
        // On a device, parameters and optimizer state live there until the epoch ends.
        if let Some(g) = crate::gpu::trainer(run.device, model, &st.params, &st.optimizer, k * batch)? {
            return Ok(Stepper { model, k, at: Where::Device(Box::new(g)) });
        }
        let own = par.as_ref().map_or(batch, |p| p.share(batch).1);
        let out_row = model.out_len();
        let whole = |len: usize| if par.is_some() { len } else { 0 };
        let host = Host {
            own,
            ws: model.workspace(k * own)?,
            tail: None,
            grads: model.zero_grads(),
            ranges: model.layout().trainable_ranges(),
            dout: vec![0.0; k * own * out_row],
            x_own: vec![0.0; whole(k * own * PATCH_LEN)],
            // Targets: denoiser steps only (one patch per item).
            t_own: vec![0.0; if k == 1 { whole(own * PATCH_LEN) } else { 0 }],
            all: vec![0.0; whole(k * batch * out_row)],
            g_all: vec![0.0; whole(k * batch * out_row)],
            par,
        };
        Ok(Stepper { model, k, at: Where::Host(Box::new(host)) })
    }

    /// One optimizer step on the first `n` items of `x` (`[K][n][1024]`),
    /// updating `st`'s parameters and optimizer state (at the learning rate
    /// its optimizer holds). `check` sees the batch loss before the update
    /// on the host (after it on a device) and stops the step with its error.
    pub(crate) fn step(
        &mut self,
        st: &mut State,
        x: &[f32],
        n: usize,
        head: Head<'_>,
        check: impl Fn(f64) -> Result<()>,
    ) -> Result<f64> {
        let (model, k) = (self.model, self.k);
        let x = &x[..k * n * PATCH_LEN];
        let h = match &mut self.at {
            Where::Device(g) => {
                let loss = match head {
                    Head::Point { guide: Some(_), .. } => return Err(perceptual_on_cpu()),
                    Head::Point { loss, target, guide: None } => {
                        g.step_denoise(x, &target[..n * PATCH_LEN], loss, &mut st.optimizer)?
                    }
                    Head::Tuple(t) => g.step_descriptor(x, t.device_loss()?, &mut st.dropout, &mut st.optimizer)?,
                };
                check(loss)?;
                return Ok(loss);
            }
            Where::Host(h) => h,
        };
        let Host { par, own, ws, tail, grads, ranges, dout, x_own, t_own, all, g_all } = &mut **h;
        let (start, len) = par.as_ref().map_or((0, n), |p| p.share(n));
        let w = if len == *own { ws } else { tail_ws(tail, model, k * len)? };
        grads.iter_mut().for_each(|g| *g = 0.0);
        let input = match &par {
            Some(p) => {
                Parallel::take(x_own, x, k, n, (start, len), PATCH_LEN);
                p.bind(w, start, n, k)?;
                &x_own[..k * len * PATCH_LEN]
            }
            None => x,
        };
        let out = model.forward_train(w, &mut st.params, input, &mut st.dropout)?;
        let row = model.out_len();
        let d = &mut dout[..k * len * row];
        d.iter_mut().for_each(|v| *v = 0.0);
        let share = len as f32 / n as f32;
        let loss = match (head, &par) {
            (Head::Point { loss, target, guide }, None) => {
                let target = &target[..n * PATCH_LEN];
                let l = loss.cpu(d, out, target)? as f64;
                match guide {
                    Some(g) => l + g.eval(d, out, target, n)?,
                    None => l,
                }
            }
            (Head::Point { guide: Some(_), .. }, Some(_)) => return Err(perceptual_on_cpu()),
            (Head::Point { loss, target, guide: None }, Some(p)) => {
                Parallel::take(t_own, target, 1, n, (start, len), PATCH_LEN);
                let l = loss.cpu(d, out, &t_own[..len * PATCH_LEN])? as f64;
                // The loss is a mean over the global batch: this share weighs len / n of it.
                scale(d, share);
                p.mean_loss(l, len, n)?
            }
            (Head::Tuple(t), None) => t.eval(d, out, n)?,
            (Head::Tuple(t), Some(p)) if t.needs_whole_batch() => {
                // Hardest-in-batch: every rank scores the whole batch, keeps its rows' gradient.
                let (all, g_all) = (&mut all[..k * n * row], &mut g_all[..k * n * row]);
                all.iter_mut().for_each(|v| *v = 0.0);
                Parallel::put(all, out, k, n, (start, len), row);
                p.comm.sum_f32(all)?;
                g_all.iter_mut().for_each(|v| *v = 0.0);
                let l = t.eval(g_all, all, n)?;
                Parallel::take(d, g_all, k, n, (start, len), row);
                l
            }
            (Head::Tuple(t), Some(p)) => {
                // A mean over items: this share weighs len / n of the global batch's.
                let l = t.eval(d, out, len)?;
                scale(d, share);
                p.mean_loss(l, len, n)?
            }
        };
        check(loss)?;
        model.backward(w, &st.params, grads, d)?;
        if let Some(p) = &par {
            p.sum_grads(grads)?;
        }
        st.optimizer.step(&mut st.params, grads, ranges)?;
        Ok(loss)
    }

    /// After an epoch's last step: the ranks agree on rank 0's parameters, or
    /// the device's parameters and optimizer state come back into `st`.
    pub(crate) fn end_epoch(&mut self, st: &mut State) -> Result<()> {
        match &mut self.at {
            Where::Host(h) => match &h.par {
                Some(p) => p.sync_params(&mut st.params),
                None => Ok(()),
            },
            Where::Device(g) => g.download(&mut st.params, &mut st.optimizer),
        }
    }
}
