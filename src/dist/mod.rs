//! Data-parallel training across processes.
//!
//! A [`Collective`] is the group of ranks one training job runs on. Every
//! rank draws the same global batch (same sampler, same seed), trains on its
//! contiguous share of the batch's items ([`Shard`]), and the ranks combine:
//!
//! - gradients: summed over ranks after each backward (each rank's loss
//!   gradient is already scaled to the global batch), so every rank applies
//!   the same optimizer step to the same parameters;
//! - BatchNorm: per-channel sums in the training forward (mean, variance) and
//!   backward (`sum dy`, `sum dy * xhat`), so the statistics are the global
//!   batch's, as in one process (synchronised BatchNorm);
//! - HardNet's hardest-in-batch loss: the descriptors of the whole batch, so
//!   every anchor searches the same negatives as in one process;
//! - dropout: each rank draws the whole batch's mask stream and keeps its
//!   share (the generator is skipped ahead, not re-seeded).
//!
//! Rank 0 writes checkpoints, metrics, logs and reports; every rank reads the
//! same memory-mapped dataset. Implementations: MPI (`mpi`, the optional
//! `mpi` feature) and [`local::LocalGroup`], ranks as threads of one process
//! (tests of the distributed semantics without an MPI installation).

pub mod local;
#[cfg(feature = "mpi")]
pub mod mpi;

use crate::error::Result;
use std::sync::Arc;

/// A group of ranks that run the same program in lockstep. Every call is a
/// collective: all ranks make it, in the same order, with the same lengths.
pub trait Collective: Send + Sync {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// In place: `v` becomes the element-wise sum over ranks (the same bits on every rank).
    fn sum_f64(&self, v: &mut [f64]) -> Result<()>;
    /// In place: `v` becomes the element-wise sum over ranks (the same bits on every rank).
    fn sum_f32(&self, v: &mut [f32]) -> Result<()>;
    /// In place: every rank gets rank 0's `v`.
    fn broadcast_f32(&self, v: &mut [f32]) -> Result<()>;
    /// Bytes moved through this rank's collectives so far (sent, counting each call's payload once).
    fn bytes(&self) -> u64;
}

/// A shared handle to a collective.
pub type Comm = Arc<dyn Collective>;

/// The items of a global batch of `total` that rank `rank` of `size` trains on: `[start, start + len)`.
/// Contiguous and as equal as possible, the first `total % size` ranks one item longer.
pub fn share(total: usize, rank: usize, size: usize) -> (usize, usize) {
    let (base, extra) = (total / size, total % size);
    let start = rank * base + rank.min(extra);
    (start, base + usize::from(rank < extra))
}

/// One rank's part of a global batch, as the layers see it.
///
/// A batch of `total` items of `groups` patches each is laid out `[groups][total]`
/// (anchors, then positives, ...); this rank holds items `[offset, offset + len)`
/// of every group, laid out `[groups][len]`.
#[derive(Clone)]
pub struct Shard {
    pub comm: Comm,
    /// First item of this rank's share within the global batch.
    pub offset: usize,
    /// Items in the global batch.
    pub total: usize,
    /// Patches per item (1, or 2 and 3 for pairs and triplets).
    pub groups: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_batch_in_order() {
        for total in 0..20 {
            for size in 1..6 {
                let mut next = 0;
                for rank in 0..size {
                    let (start, len) = share(total, rank, size);
                    assert_eq!(start, next);
                    assert!(len == total / size || len == total / size + 1);
                    next += len;
                }
                assert_eq!(next, total);
            }
        }
    }
}
