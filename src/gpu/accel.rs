//! Eval forward of a `Network` on a device: parameters uploaded once (again
//! after they change), patches in batches of up to `BATCH`, outputs copied
//! back. What `Network::forward` runs when the network was put on a device.
//!
//! One workspace serves every batch size: a shorter batch runs in the
//! workspace's first rows (eval rows are independent: BatchNorm uses its
//! running statistics) and only those come back. The workspace grows when a
//! larger batch arrives, doubling up to `BATCH`, so a program that describes
//! batches of every size holds a bounded amount of device memory.

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
    /// The workspace, sized for the largest batch so far (see the module header).
    ws: Option<GpuWs>,
}

impl Accel {
    pub fn open(device: super::Device, model: &Model, params: &[f32]) -> Result<Accel> {
        let be = device.open()?;
        let p = be.alloc(params.len())?;
        be.upload(p, params)?;
        Ok(Accel { model: GpuModel::new(model), params: p, ws: None, be })
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
            let cap = self.ws.as_ref().map_or(0, GpuWs::batch);
            if n > cap {
                // Buffers of a replaced workspace stay with the backend until it drops: at most log2(BATCH) of them.
                self.ws = Some(self.model.workspace(&self.be, n.max(2 * cap).min(BATCH))?);
            }
            let ws = self.ws.as_mut().expect("workspace made above");
            self.be.upload(ws.input, xb)?;
            let y = self.model.forward(&self.be, ws, self.params, None)?;
            self.be.download(y, ob)?;
        }
        Ok(())
    }
}
