//! What the training loops do differently when data-parallel ([`crate::dist`]):
//! every rank draws the same global batch of `n` items laid out `[K][n][row]`,
//! keeps its share `[K][len][row]` ([`Parallel::take`]), scales its loss
//! gradient to the global batch, sums gradients over the ranks before the
//! optimizer step, and reports the global batch's loss.

use crate::dist::{Comm, Shard, share};
use crate::error::{Error, Result};
use crate::models::Workspace;

/// A training stage's group of ranks.
#[derive(Clone)]
pub struct Parallel {
    pub comm: Comm,
}

impl Parallel {
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }
    pub fn size(&self) -> usize {
        self.comm.size()
    }

    /// `(start, len)` of this rank's share of a batch of `n` items.
    pub fn share(&self, n: usize) -> (usize, usize) {
        share(n, self.rank(), self.size())
    }

    /// Every batch of an epoch (the last one may be shorter) must give each rank at least one item.
    pub fn check_batches(&self, batch: usize, epoch_items: u64) -> Result<()> {
        let k = self.size();
        let tail = (epoch_items % batch as u64) as usize;
        if batch < k || (tail != 0 && tail < k) {
            return Err(Error::InvalidArgument(format!(
                "--distributed over {k} ranks: every batch needs at least {k} items, but batch {batch} over an epoch \
                 of {epoch_items} items {}; change --batch or --items",
                if batch < k { "is smaller".to_string() } else { format!("ends with a batch of {tail}") }
            )));
        }
        Ok(())
    }

    /// Marks `ws` (sized for this rank's share, `groups` patches per item) as
    /// the share at `start` of a batch of `n` items.
    pub fn bind(&self, ws: &mut Workspace, start: usize, n: usize, groups: usize) -> Result<()> {
        ws.set_shard(Some(Shard { comm: self.comm.clone(), offset: start, total: n, groups }))
    }

    /// Copies this rank's rows of `src` (`[k][n][row]`) into `dst` (`[k][len][row]`).
    pub fn take(dst: &mut [f32], src: &[f32], k: usize, n: usize, (start, len): (usize, usize), row: usize) {
        for i in 0..k {
            dst[i * len * row..(i + 1) * len * row]
                .copy_from_slice(&src[(i * n + start) * row..(i * n + start + len) * row]);
        }
    }

    /// Writes this rank's rows `src` (`[k][len][row]`) into `dst` (`[k][n][row]`), whose other rows are untouched.
    pub fn put(dst: &mut [f32], src: &[f32], k: usize, n: usize, (start, len): (usize, usize), row: usize) {
        for i in 0..k {
            dst[(i * n + start) * row..(i * n + start + len) * row]
                .copy_from_slice(&src[i * len * row..(i + 1) * len * row]);
        }
    }

    /// The global batch's mean loss from this rank's mean over `len` of `n` items.
    pub fn mean_loss(&self, loss: f64, len: usize, n: usize) -> Result<f64> {
        let mut v = [loss * len as f64];
        self.comm.sum_f64(&mut v)?;
        Ok(v[0] / n as f64)
    }

    /// Sums the ranks' gradients (each already scaled to the global batch).
    pub fn sum_grads(&self, grads: &mut [f32]) -> Result<()> {
        self.comm.sum_f32(grads)
    }

    /// Rank 0's parameters on every rank (after an epoch: guards against any drift in the sums' rounding).
    pub fn sync_params(&self, params: &mut [f32]) -> Result<()> {
        self.comm.broadcast_f32(params)
    }

    /// What this rank sent through collectives, in all and per optimizer step, as a log line.
    pub fn traffic(&self, stage: &str, steps: u64) -> String {
        let bytes = self.comm.bytes() as f64;
        format!(
            "{stage}: {} ranks; rank {} sent {:.1} MB through collectives, {:.3} MB per step over {steps} steps",
            self.size(),
            self.rank(),
            bytes / 1e6,
            bytes / 1e6 / steps.max(1) as f64
        )
    }

    /// Waits until every rank gets here.
    pub fn barrier(&self) -> Result<()> {
        self.comm.sum_f64(&mut [0.0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::local::LocalGroup;
    use std::sync::Arc;

    #[test]
    fn rows_round_trip_and_batch_checks() {
        let src: Vec<f32> = (0..2 * 5 * 3).map(|v| v as f32).collect();
        let mut part = vec![f32::NAN; 2 * 2 * 3];
        Parallel::take(&mut part, &src, 2, 5, (1, 2), 3);
        assert_eq!(part, [3., 4., 5., 6., 7., 8., 18., 19., 20., 21., 22., 23.]);
        let mut back = vec![0.0f32; src.len()];
        Parallel::put(&mut back, &part, 2, 5, (1, 2), 3);
        assert_eq!(&back[3..9], &src[3..9]);
        assert_eq!(&back[18..24], &src[18..24]);
        assert!(back[..3].iter().chain(&back[9..18]).all(|&v| v == 0.0));
        let p = Parallel { comm: Arc::new(LocalGroup::new(2).pop().unwrap()) };
        assert!(p.check_batches(8, 80).is_ok());
        assert!(p.check_batches(8, 81).unwrap_err().to_string().contains("ends with a batch of 1"));
        assert!(p.check_batches(1, 80).unwrap_err().to_string().contains("is smaller"));
    }
}
