//! Eval forward of a `Network` on a device: parameters uploaded once (again
//! after they change), patches in batches of `BATCH`, outputs copied back.
//! What `Network::forward` runs when the network was put on a device.

use super::backend::{Backend, Buf};
use super::model::{GpuModel, GpuWs};
use crate::error::Result;
use crate::models::{Model, PATCH_LEN};

/// Patches per device batch: wide GEMMs, bounded im2col memory (DnCNN: 2.4 GB).
const BATCH: usize = 1024;

/// A network's parameters and workspaces on a device.
pub struct Accel {
    be: Backend,
    model: GpuModel,
    params: Buf,
    /// The full-batch workspace and one for a shorter last batch.
    wss: Vec<GpuWs>,
}

impl Accel {
    pub fn open(device: super::Device, model: &Model, params: &[f32]) -> Result<Accel> {
        let be = device.open()?;
        let p = be.alloc(params.len())?;
        be.upload(p, params)?;
        Ok(Accel { model: GpuModel::new(model), params: p, wss: Vec::new(), be })
    }

    pub fn name(&self) -> &str {
        self.be.name()
    }

    pub fn set_params(&mut self, params: &[f32]) -> Result<()> {
        crate::error::check_len("model parameters", params.len(), self.params.len())?;
        self.be.upload(self.params, params)
    }

    /// Eval outputs of `x` (whole patches) into `out` (`n x out_len`).
    pub fn forward(&mut self, x: &[f32], out: &mut [f32]) -> Result<()> {
        let ol = self.model.out_len();
        for (xb, ob) in x.chunks(BATCH * PATCH_LEN).zip(out.chunks_mut(BATCH * ol)) {
            let n = xb.len() / PATCH_LEN;
            let i = match self.wss.iter().position(|w| w.batch() == n) {
                Some(i) => i,
                None => {
                    if self.wss.len() == 2 {
                        self.wss.pop();
                    }
                    self.wss.push(self.model.workspace(&self.be, n)?);
                    self.wss.len() - 1
                }
            };
            let ws = &mut self.wss[i];
            self.be.upload(ws.input, xb)?;
            let y = self.model.forward(&self.be, ws, self.params, None)?;
            self.be.download(y, ob)?;
        }
        Ok(())
    }
}
