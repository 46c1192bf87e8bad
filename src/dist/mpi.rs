//! [`Collective`] over MPI (rsmpi on the system's Open MPI; the `mpi` feature).
//!
//! MPI is initialised with `MPI_THREAD_SERIALIZED`: training runs inside a
//! rayon pool, so collectives come from a worker thread rather than the main
//! one, one at a time (a mutex serialises them). Reductions are `MPI_SUM`
//! over `MPI_FLOAT` / `MPI_DOUBLE`, whose result is the same on every rank.
//!
//! Fault behaviour: when a rank dies, `mpirun` (or Slurm) ends the job. A
//! watchdog thread covers the case where it does not: a collective that
//! waits longer than the timeout for the other ranks prints which one, on
//! which rank, and exits the process with [`EXIT_TIMEOUT`], which makes the
//! launcher stop the remaining ranks.

use super::Collective;
use crate::error::{Error, Result};
use ::mpi::collective::SystemOperation;
use ::mpi::environment::{Threading, Universe};
use ::mpi::topology::SimpleCommunicator;
use ::mpi::traits::{Communicator, CommunicatorCollectives, Root};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Exit status of a rank that gave up waiting for the others.
pub const EXIT_TIMEOUT: i32 = 75;

/// The world communicator of an MPI job.
pub struct MpiComm {
    rank: usize,
    size: usize,
    /// Locked around every MPI call (serialised threading).
    inner: Mutex<Inner>,
    bytes: AtomicU64,
    watch: Arc<Watch>,
    /// Finalises MPI when the last handle goes; declared last so the communicator drops first.
    _universe: Universe,
}

// SAFETY: MPI was initialised with MPI_THREAD_SERIALIZED and every use of
// `world` (and so of the MPI library) happens under its mutex, so calls from
// different threads never overlap; the handles themselves are plain integers
// or pointers owned by the MPI library for the life of `_universe`.
unsafe impl Send for MpiComm {}
// SAFETY: as above: shared access only reaches MPI through the mutex.
unsafe impl Sync for MpiComm {}

/// The communicator and the send buffers of the reductions (MPI_Allreduce
/// needs distinct send and receive buffers; these are reused, so a step allocates nothing).
struct Inner {
    world: SimpleCommunicator,
    send32: Vec<f32>,
    send64: Vec<f64>,
}

/// What the watchdog sees: when the current collective started (ms since
/// `origin`, 0 when none is running) and which one it is.
struct Watch {
    origin: Instant,
    since_ms: AtomicU64,
    what: Mutex<&'static str>,
}

impl MpiComm {
    /// Initialises MPI (once per process). `timeout`: how long a collective
    /// may wait for the other ranks before this rank exits.
    pub fn init(timeout: Duration) -> Result<MpiComm> {
        let (universe, level) = ::mpi::initialize_with_threading(Threading::Serialized).ok_or_else(|| {
            Error::InvalidArgument("--distributed: MPI was already initialised in this process".into())
        })?;
        if level < Threading::Serialized {
            return Err(Error::InvalidArgument(format!(
                "--distributed: this MPI library offers thread level {level:?}; nhpatch needs Serialized"
            )));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        let watch = Arc::new(Watch { origin: Instant::now(), since_ms: AtomicU64::new(0), what: Mutex::new("") });
        let w = watch.clone();
        std::thread::Builder::new()
            .name("nhpatch-mpi-watchdog".into())
            .spawn(move || watchdog(&w, rank, size, timeout))
            .map_err(|e| Error::Training(format!("cannot start the MPI watchdog thread: {e}")))?;
        let inner = Mutex::new(Inner { world, send32: Vec::new(), send64: Vec::new() });
        Ok(MpiComm { rank, size, inner, bytes: AtomicU64::new(0), watch, _universe: universe })
    }

    /// Runs `f` on the communicator under the lock, watched by the watchdog.
    fn call<T>(&self, what: &'static str, payload: usize, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *self.watch.what.lock().unwrap_or_else(|e| e.into_inner()) = what;
        let now = self.watch.origin.elapsed().as_millis() as u64;
        self.watch.since_ms.store(now.max(1), Ordering::SeqCst);
        let out = f(&mut inner);
        self.watch.since_ms.store(0, Ordering::SeqCst);
        self.bytes.fetch_add(payload as u64, Ordering::Relaxed);
        out
    }
}

fn watchdog(w: &Watch, rank: usize, size: usize, timeout: Duration) {
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let since = w.since_ms.load(Ordering::SeqCst);
        if since == 0 {
            continue;
        }
        let waited = w.origin.elapsed().as_millis() as u64 - since;
        if waited > timeout.as_millis() as u64 {
            let what = *w.what.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!(
                "nhpatch: rank {rank} of {size} waited {:.0} s in {what} for the other ranks \
                 (timeout {} s): a rank has died or hangs; stopping this rank. \
                 Restart with --resume to continue from the last checkpoint rank 0 wrote.",
                waited as f64 / 1000.0,
                timeout.as_secs()
            );
            std::process::exit(EXIT_TIMEOUT);
        }
    }
}

impl Collective for MpiComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn sum_f64(&self, v: &mut [f64]) -> Result<()> {
        self.call("an all-reduce (f64)", 8 * v.len(), |m| {
            m.send64.clear();
            m.send64.extend_from_slice(v);
            m.world.all_reduce_into(&m.send64[..], v, SystemOperation::sum())
        });
        Ok(())
    }
    fn sum_f32(&self, v: &mut [f32]) -> Result<()> {
        self.call("an all-reduce (f32)", 4 * v.len(), |m| {
            m.send32.clear();
            m.send32.extend_from_slice(v);
            m.world.all_reduce_into(&m.send32[..], v, SystemOperation::sum())
        });
        Ok(())
    }
    fn broadcast_f32(&self, v: &mut [f32]) -> Result<()> {
        self.call("a broadcast", 4 * v.len(), |m| m.world.process_at_rank(0).broadcast_into(v));
        Ok(())
    }
    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}
