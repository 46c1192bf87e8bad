//! One training step on a device: the batch goes in, the loss comes out.
//! Parameters, gradients and optimizer state stay in device arenas (the CPU
//! layout) for the whole run; `download` copies them back for checkpoints,
//! validation and the final weights.
//!
//! A step: upload the batch; zero the gradients; training forward; the loss
//! and its gradient w.r.t. the output (kernels, the loss sum a GEMM with
//! ones, one float downloaded); backward; the optimizer kernel over the
//! trainable elements (a device mask of the layout's trainable ranges, so
//! running statistics stay untouched as on the CPU).

use super::backend::{Backend, Buf, Kernel, ka};
use super::loss::{self as device_loss, HardNetScratch};
use super::model::{GpuModel, GpuWs};
use super::ops;
use crate::error::{Error, Result};
use crate::loss::hardnet::HardNetLoss;
use crate::loss::{PointLoss, TupleLoss};
use crate::models::{DESC_LEN, Model, PATCH_LEN};
use crate::optim::{Optimizer, OptimizerConfig, OptimizerState};
use crate::rng::Rng;

/// Optimizer state buffers: SGD's momentum, or Adam's two moments.
enum OptBufs {
    Sgd(Buf),
    Adam(Buf, Buf),
}

/// A model's training state on a device.
pub struct GpuTrainer {
    be: Backend,
    model: GpuModel,
    params: Buf,
    grads: Buf,
    trainable: Buf,
    opt: OptBufs,
    /// Workspaces by batch size (the full batch and a shorter last one).
    wss: Vec<GpuWs>,
    /// Denoiser targets, output gradients and per-element (or per-item) loss terms, per batch size.
    target: Buf,
    dout: Buf,
    terms: Buf,
    loss: Buf,
    /// HardNet loss scratch by batch size (the full batch and a shorter last one).
    hn: Vec<HardNetScratch>,
}

impl GpuTrainer {
    /// Uploads `params` and the optimizer's state; `max_batch` patches per forward at most.
    pub fn new(be: Backend, model: &Model, params: &[f32], opt: &Optimizer, max_batch: usize) -> Result<GpuTrainer> {
        crate::error::check_len("model parameters", params.len(), model.param_count())?;
        let len = params.len();
        let p = be.alloc(len)?;
        be.upload(p, params)?;
        let mut mask = vec![0.0f32; len];
        for r in model.layout().trainable_ranges() {
            mask[r].fill(1.0);
        }
        let trainable = be.alloc(len)?;
        be.upload(trainable, &mask)?;
        let opt = match &opt.state {
            OptimizerState::Sgd(s) => {
                let b = be.alloc(len)?;
                be.upload(b, &s.momentum_buffer)?;
                OptBufs::Sgd(b)
            }
            OptimizerState::Adam(s) => {
                let (m, v) = (be.alloc(len)?, be.alloc(len)?);
                be.upload(m, &s.exp_avg)?;
                be.upload(v, &s.exp_avg_sq)?;
                OptBufs::Adam(m, v)
            }
        };
        let out = max_batch * model.out_len();
        Ok(GpuTrainer {
            model: GpuModel::new(model),
            params: p,
            grads: be.alloc(len)?,
            trainable,
            opt,
            wss: Vec::new(),
            target: be.alloc(max_batch * PATCH_LEN)?,
            dout: be.alloc(out)?,
            terms: be.alloc(out)?,
            loss: be.alloc(1)?,
            hn: Vec::new(),
            be,
        })
    }

    pub fn backend(&self) -> &Backend {
        &self.be
    }

    /// The workspace for `n` patches (made on first use).
    fn ws_index(&mut self, n: usize) -> Result<usize> {
        if let Some(i) = self.wss.iter().position(|w| w.batch() == n) {
            return Ok(i);
        }
        if n * self.model.out_len() > self.dout.len() {
            return Err(Error::Shape(format!("a batch of {n} patches exceeds the trainer's largest")));
        }
        self.wss.push(self.model.workspace(&self.be, n)?);
        Ok(self.wss.len() - 1)
    }

    /// Training forward of `x` (`n` patches) with zeroed gradients and output gradient; returns the output.
    fn forward(&mut self, x: &[f32], rng: &mut Rng) -> Result<(usize, Buf)> {
        let n = x.len() / PATCH_LEN;
        let i = self.ws_index(n)?;
        let be = &self.be;
        be.upload(self.wss[i].input, x)?;
        ops::fill(be, self.grads, self.grads.len(), 0.0)?;
        let out = self.model.forward(be, &mut self.wss[i], self.params, Some(rng))?;
        ops::fill(be, self.dout, n * self.model.out_len(), 0.0)?;
        Ok((i, out))
    }

    /// Sum of `terms[..len]` times `scale`, read back.
    fn read_loss(&self, len: usize, scale: f64) -> Result<f64> {
        self.be.sum_rows(self.loss, self.terms, 1, len, 1.0, 0.0)?;
        let mut v = [0.0f32];
        self.be.download(self.loss, &mut v)?;
        Ok(v[0] as f64 * scale)
    }

    /// Backward and the optimizer update.
    fn finish(&mut self, i: usize, opt: &mut Optimizer) -> Result<()> {
        let (be, ws) = (&self.be, &mut self.wss[i]);
        self.model.backward(be, ws, self.params, self.grads, self.dout)?;
        self.update(opt)
    }

    /// One denoiser step on `x` -> `target` (`n x 1024` each); returns the loss.
    pub fn step_denoise(&mut self, x: &[f32], target: &[f32], loss: PointLoss, opt: &mut Optimizer) -> Result<f64> {
        crate::error::check_len("denoiser target", target.len(), x.len())?;
        let mut no_dropout = Rng::new(0);
        let (i, out) = self.forward(x, &mut no_dropout)?;
        let len = x.len();
        self.be.upload(self.target, target)?;
        device_loss::point(&self.be, loss, len, (out, self.target), self.dout, self.terms)?;
        let l = self.read_loss(len, 1.0 / len as f64)?;
        self.finish(i, opt)?;
        Ok(l)
    }

    /// One descriptor step on `x` = `[K][n][1024]` (`K = loss.k()`), dropout
    /// masks drawn from `rng`; returns the loss.
    pub fn step_descriptor(&mut self, x: &[f32], loss: TupleLoss, rng: &mut Rng, opt: &mut Optimizer) -> Result<f64> {
        let k = loss.k();
        let n = x.len() / PATCH_LEN / k;
        if n == 0 || n * k * PATCH_LEN != x.len() {
            return Err(Error::Shape(format!("a descriptor batch of {} values is not {k} x n patches", x.len())));
        }
        let (i, out) = self.forward(x, rng)?;
        let d = DESC_LEN;
        let l = match loss {
            TupleLoss::Triplet(t) => {
                device_loss::triplet(&self.be, &t, (n, d), out, self.dout, self.terms)?;
                self.read_loss(n, 1.0 / n as f64)?
            }
            TupleLoss::HardNet(h) => self.hardnet_loss(&h, out, n)?,
        };
        self.finish(i, opt)?;
        Ok(l)
    }

    /// HardNet loss of `n` pairs whose descriptors are `out` = [2][n][128]:
    /// its gradient into `dout`, the mean loss read back.
    fn hardnet_loss(&mut self, h: &HardNetLoss, out: Buf, n: usize) -> Result<f64> {
        let d = DESC_LEN;
        if !self.hn.iter().any(|s| s.b == n) {
            self.hn.push(HardNetScratch::new(&self.be, n)?);
        }
        let s = self.hn.iter().find(|s| s.b == n).expect("made above");
        let (pairs, grads) = ((out, out.slice(n * d, n * d)), (self.dout, self.dout.slice(n * d, n * d)));
        device_loss::hardnet(&self.be, h, d, pairs, grads, self.terms, s)?;
        self.read_loss(n, 1.0 / n as f64)
    }

    /// The optimizer kernel, with the host's step counter and scalars as the CPU optimizers derive them.
    fn update(&mut self, opt: &mut Optimizer) -> Result<()> {
        let (be, len) = (&self.be, self.params.len());
        match (&opt.config, &mut opt.state, &self.opt) {
            (
                &OptimizerConfig::Sgd { lr, momentum, nesterov, weight_decay },
                OptimizerState::Sgd(s),
                OptBufs::Sgd(buf),
            ) => {
                crate::optim::sgd::Sgd { lr, momentum, dampening: 0.0, nesterov, weight_decay }.validate()?;
                let ptrs = [self.params.at(0), self.grads.at(0), buf.at(0), self.trainable.at(0)];
                let ints =
                    [(weight_decay != 0.0) as i64, (momentum != 0.0) as i64, nesterov as i64, (s.step == 0) as i64];
                let f = [lr as f32, weight_decay as f32, momentum as f32, 1.0];
                be.launch(Kernel::nh_sgd, len, ka(&ptrs, &ints, &f))?;
                s.step += 1;
            }
            (
                &OptimizerConfig::Adam { lr, beta1, beta2, eps, weight_decay },
                OptimizerState::Adam(s),
                OptBufs::Adam(m, v),
            ) => {
                crate::optim::adam::Adam { lr, beta1, beta2, eps, weight_decay }.validate()?;
                let t = (s.step + 1) as f64;
                let (bc1, bc2) = (1.0 - beta1.powf(t), 1.0 - beta2.powf(t));
                let ptrs = [self.params.at(0), self.grads.at(0), m.at(0), v.at(0), self.trainable.at(0)];
                let f = [
                    (lr / bc1) as f32,
                    bc2.sqrt() as f32,
                    beta1 as f32,
                    beta2 as f32,
                    (1.0 - beta1) as f32,
                    (1.0 - beta2) as f32,
                    eps as f32,
                    weight_decay as f32,
                ];
                be.launch(Kernel::nh_adam, len, ka(&ptrs, &[(weight_decay != 0.0) as i64], &f))?;
                s.step += 1;
            }
            _ => return Err(Error::InvalidArgument("optimizer state of another kind".into())),
        }
        Ok(())
    }

    /// Copies the parameters and the optimizer state back to the host.
    pub fn download(&self, params: &mut [f32], opt: &mut Optimizer) -> Result<()> {
        crate::error::check_len("model parameters", params.len(), self.params.len())?;
        self.be.download(self.params, params)?;
        match (&mut opt.state, &self.opt) {
            (OptimizerState::Sgd(s), OptBufs::Sgd(b)) => self.be.download(*b, &mut s.momentum_buffer),
            (OptimizerState::Adam(s), OptBufs::Adam(m, v)) => {
                self.be.download(*m, &mut s.exp_avg)?;
                self.be.download(*v, &mut s.exp_avg_sq)
            }
            _ => Err(Error::InvalidArgument("optimizer state of another kind".into())),
        }
    }

    /// The gradient arena of the last step (tests compare it with the CPU's).
    pub fn download_grads(&self, grads: &mut [f32]) -> Result<()> {
        self.be.download(self.grads, grads)
    }
}

/// Joint training on a device: a denoiser and a HardNet, each with its own
/// trainer. A step: denoise the noisy pairs, describe the result, the HardNet
/// loss and its gradient back through the descriptor to its input, plus
/// `w` times the denoiser's L1 gradient, back through the denoiser; then both
/// optimizer updates. The denoised batch and the input gradient cross between
/// the two trainers through the host (`2n x 1024` values each way).
pub struct GpuJoint {
    den: GpuTrainer,
    desc: GpuTrainer,
    /// The descriptor's input gradient on its device.
    dy: Buf,
    y_host: Vec<f32>,
    dy_host: Vec<f32>,
}

impl GpuJoint {
    /// Trainers for `den` and `desc` from their parameters and optimizer
    /// states, on batches of up to `max_pairs` pairs.
    pub fn new(
        (den_be, desc_be): (Backend, Backend),
        den: (&Model, &[f32], &Optimizer),
        desc: (&Model, &[f32], &Optimizer),
        max_pairs: usize,
    ) -> Result<GpuJoint> {
        let m = 2 * max_pairs * PATCH_LEN;
        let den = GpuTrainer::new(den_be, den.0, den.1, den.2, 2 * max_pairs)?;
        let desc = GpuTrainer::new(desc_be, desc.0, desc.1, desc.2, 2 * max_pairs)?;
        let dy = desc.be.alloc(m)?;
        Ok(GpuJoint { den, desc, dy, y_host: vec![0.0; m], dy_host: vec![0.0; m] })
    }

    /// One joint step on `noisy` and `clean` (`[2][n][1024]` each: anchors,
    /// then positives). `check` sees the joint loss before the updates and
    /// stops the step with its error. Returns (joint loss, denoiser L1).
    pub fn step(
        &mut self,
        (noisy, clean): (&[f32], &[f32]),
        (hardnet, w): (&HardNetLoss, f32),
        (den_rng, desc_rng): (&mut Rng, &mut Rng),
        (den_opt, desc_opt): (&mut Optimizer, &mut Optimizer),
        check: impl Fn(f64) -> Result<()>,
    ) -> Result<(f64, f64)> {
        crate::error::check_len("joint clean batch", clean.len(), noisy.len())?;
        let m = noisy.len();
        let n = m / PATCH_LEN / 2;
        if n == 0 || 2 * n * PATCH_LEN != m || m > self.y_host.len() {
            return Err(Error::Shape(format!("a joint batch of {m} values is not 2 x n patches within the trainer's")));
        }
        // y = denoiser(noisy), brought over to the descriptor.
        let (di, y) = self.den.forward(noisy, den_rng)?;
        self.den.be.download(y, &mut self.y_host[..m])?;
        let (ei, d) = self.desc.forward(&self.y_host[..m], desc_rng)?;
        // HardNet loss on (d_a, d_p), its gradient in desc.dout.
        let l_desc = self.desc.hardnet_loss(hardnet, d, n)?;
        // dL/dy through the descriptor.
        let dy = self.dy.slice(0, m);
        ops::fill(&self.desc.be, dy, m, 0.0)?;
        let desc_pg = (self.desc.params, self.desc.grads);
        self.desc.model.backward_with_input(&self.desc.be, &mut self.desc.wss[ei], desc_pg, self.desc.dout, dy)?;
        self.desc.be.download(dy, &mut self.dy_host[..m])?;
        // The denoiser's L1 against the clean pairs (its gradient in den.dout),
        // then its output gradient dy + w * dL1/dy, formed in den.target.
        let be = &self.den.be;
        be.upload(self.den.target.slice(0, m), clean)?;
        device_loss::point(be, PointLoss::L1, m, (y, self.den.target), self.den.dout, self.den.terms)?;
        let l_den = self.den.read_loss(m, 1.0 / m as f64)?;
        let g = self.den.target.slice(0, m);
        be.upload(g, &self.dy_host[..m])?;
        ops::axpy(be, g, w, self.den.dout, m)?;
        self.den.model.backward(be, &mut self.den.wss[di], self.den.params, self.den.grads, g)?;
        let loss = l_desc + w as f64 * l_den;
        check(loss)?;
        self.desc.update(desc_opt)?;
        self.den.update(den_opt)?;
        Ok((loss, l_den))
    }

    /// Copies both networks' parameters and optimizer states back to the host.
    pub fn download(&self, den: (&mut [f32], &mut Optimizer), desc: (&mut [f32], &mut Optimizer)) -> Result<()> {
        self.den.download(den.0, den.1)?;
        self.desc.download(desc.0, desc.1)
    }
}
