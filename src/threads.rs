//! Thread ownership. nhpatch never starts threads of its own: the caller
//! builds one rayon pool (`pool`) and runs work inside it with `install`;
//! layers split their outer loops (batch shards, rows of C) with rayon and
//! call single-threaded kernels inside. Results are bit-identical whatever
//! the number of threads, by two rules:
//! - a partition that changes the order of a sum (batch shards whose dW/db
//!   partials are added up, BatchNorm's per-shard statistics) depends on
//!   problem sizes only ([`part_size`] with a fixed maximum of parts);
//! - a split of independent outputs (rows or columns of a GEMM's C, as in
//!   `Conv2d`'s dense passes) may follow the thread count, because every GEMM
//!   kernel computes each element of C by the same k-ordered sum whatever the
//!   size of the call (`tests/gemm.rs`,
//!   `splitting_rows_or_columns_of_c_never_changes_a_bit`).
//!
//! Scratch may also be sized by the thread count (one im2col lane per pool
//! thread): it holds no result. `tests/determinism.rs` trains every stage at
//! its real batch size with 1, 2, 3, 5 and 8 threads and compares the bytes.

use crate::error::{Error, Result};

/// The number of threads a run uses when the caller does not say: all cores.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// A rayon pool with exactly `threads` workers (0 means `default_threads()`).
pub fn pool(threads: usize) -> Result<rayon::ThreadPool> {
    let threads = if threads == 0 { default_threads() } else { threads };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("nhpatch-{i}"))
        // A worker's first GEMM must not allocate mid-step: whether a thread
        // runs a GEMM during warm-up is up to work stealing.
        .start_handler(|_| crate::gemm::reserve_thread_buffers())
        .build()
        .map_err(|e| Error::Unsupported(format!("cannot start a pool of {threads} threads: {e}")))
}

/// Fewest multiply-adds of one image's GEMMs worth sharing out among the
/// threads (`worth_sharing`).
pub const MIN_SHARED_MACS: usize = 8 << 20;

/// Whether one image's GEMMs of `macs` multiply-adds are worth sharing out
/// among the pool's threads. Below `MIN_SHARED_MACS` (a few tens of
/// microseconds of work) waking the other threads and moving the operands
/// between their caches cost more than they save: with two threads, one
/// U-Net patch spent about 18 -> 38 us in its 1 -> 16 im2col layer and
/// 126 -> 187 us in its upsampling convolution (4.7M multiply-adds) when
/// shared out (per-layer shares of a timed forward, one against two threads).
pub fn worth_sharing(macs: usize) -> bool {
    rayon::current_num_threads() > 1 && macs >= MIN_SHARED_MACS
}

/// Size of each part when `n` items are cut into at most `max_parts` contiguous
/// parts of at least `min_part` items (the last part may be shorter).
pub fn part_size(n: usize, max_parts: usize, min_part: usize) -> usize {
    let max_parts = max_parts.max(1);
    n.div_ceil(max_parts).max(min_part).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_bounds_the_number_of_parts() {
        assert_eq!(part_size(100, 16, 1), 7);
        assert_eq!(100usize.div_ceil(part_size(100, 16, 1)), 15);
        assert_eq!(part_size(3, 16, 4), 4);
        assert_eq!(part_size(0, 16, 1), 1);
    }

    #[test]
    fn pool_has_the_requested_size() {
        let p = pool(3).unwrap();
        assert_eq!(p.current_num_threads(), 3);
    }
}
