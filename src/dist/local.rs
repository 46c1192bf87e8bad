//! Ranks as threads of one process: the same [`Collective`] semantics as MPI,
//! for tests that compare distributed training with one process without an
//! MPI installation. Sums are taken in rank order on every rank, so all ranks
//! get the same bits.

use super::Collective;
use crate::error::Result;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};

struct Shared {
    size: usize,
    barrier: Barrier,
    /// One deposit slot per rank.
    slots: Mutex<Vec<Vec<f64>>>,
}

/// One rank's handle; [`LocalGroup::new`] makes all of them.
pub struct LocalGroup {
    rank: usize,
    shared: Arc<Shared>,
    bytes: AtomicU64,
}

impl LocalGroup {
    /// Handles of a group of `size` ranks, one per thread.
    pub fn new(size: usize) -> Vec<LocalGroup> {
        let shared = Arc::new(Shared { size, barrier: Barrier::new(size), slots: Mutex::new(vec![Vec::new(); size]) });
        (0..size).map(|rank| LocalGroup { rank, shared: shared.clone(), bytes: AtomicU64::new(0) }).collect()
    }

    /// Deposits `v`, waits for every rank, returns `combine(slots)`, waits again before slots are reused.
    fn exchange(&self, v: &[f64], combine: impl Fn(&[Vec<f64>]) -> Vec<f64>) -> Vec<f64> {
        self.shared.slots.lock().unwrap_or_else(|e| e.into_inner())[self.rank] = v.to_vec();
        self.shared.barrier.wait();
        let out = combine(&self.shared.slots.lock().unwrap_or_else(|e| e.into_inner()));
        self.shared.barrier.wait();
        out
    }
}

impl Collective for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.shared.size
    }
    fn sum_f64(&self, v: &mut [f64]) -> Result<()> {
        self.bytes.fetch_add(8 * v.len() as u64, Ordering::Relaxed);
        let sum = self.exchange(v, |slots| {
            let mut acc = vec![0.0f64; v.len()];
            for s in slots {
                acc.iter_mut().zip(s).for_each(|(a, &x)| *a += x);
            }
            acc
        });
        v.copy_from_slice(&sum);
        Ok(())
    }
    fn sum_f32(&self, v: &mut [f32]) -> Result<()> {
        self.bytes.fetch_add(4 * v.len() as u64, Ordering::Relaxed);
        let wide: Vec<f64> = v.iter().map(|&x| x as f64).collect();
        // Summed in f32, in rank order, as an f32 MPI_SUM over two ranks would.
        let sum = self.exchange(&wide, |slots| {
            let mut acc = vec![0.0f32; v.len()];
            for s in slots {
                acc.iter_mut().zip(s).for_each(|(a, &x)| *a += x as f32);
            }
            acc.into_iter().map(f64::from).collect()
        });
        v.iter_mut().zip(sum).for_each(|(x, s)| *x = s as f32);
        Ok(())
    }
    fn broadcast_f32(&self, v: &mut [f32]) -> Result<()> {
        self.bytes.fetch_add(4 * v.len() as u64, Ordering::Relaxed);
        let wide: Vec<f64> = v.iter().map(|&x| x as f64).collect();
        let root = self.exchange(&wide, |slots| slots[0].clone());
        v.iter_mut().zip(root).for_each(|(x, s)| *x = s as f32);
        Ok(())
    }
    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_broadcasts_agree_on_every_rank() {
        let group = LocalGroup::new(3);
        let results: Vec<(Vec<f64>, Vec<f32>, Vec<f32>)> = std::thread::scope(|s| {
            let handles: Vec<_> = group
                .iter()
                .map(|g| {
                    s.spawn(move || {
                        let r = g.rank() as f64;
                        let mut a = vec![r, 10.0 * r, 0.5];
                        g.sum_f64(&mut a).unwrap();
                        let mut b = vec![r as f32 + 0.25; 2];
                        g.sum_f32(&mut b).unwrap();
                        let mut c = vec![r as f32; 4];
                        g.broadcast_f32(&mut c).unwrap();
                        (a, b, c)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (a, b, c) in &results {
            assert_eq!(a, &[3.0, 30.0, 1.5]);
            assert_eq!(b, &[3.75, 3.75]);
            assert_eq!(c, &[0.0; 4]);
        }
        assert_eq!(group[1].bytes(), 3 * 8 + 2 * 4 + 4 * 4);
    }
}
