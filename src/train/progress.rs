//! Progress of a training run, reported to an [`Observer`] the caller
//! supplies. The library never draws or prints: the command line implements
//! an observer with progress bars and log lines, a program embedding nhpatch
//! implements its own (or keeps [`Quiet`]).
//!
//! Events arrive in order from the thread that drives the run; an observer
//! is `Send + Sync` so it can be shared with the caller's other threads.

use super::metrics::EpochMetrics;
use std::sync::Arc;

/// What happened.
#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    /// A line of the run's report (dataset summary, results tables, where
    /// files went): what a log keeps.
    Info(&'a str),
    /// A side note (a dataset generated on first use, a cache built).
    Notice(&'a str),
    /// An epoch of `steps` optimizer steps begins.
    EpochStarted { stage: &'a str, epoch: u64, epochs: u64, steps: u64, unit: &'a str },
    /// One optimizer step finished with this batch loss; throughput so far in the epoch.
    Step { loss: f64, items_per_second: f64, unit: &'a str },
    /// An epoch is done and checkpointed (reported by the process that writes the run folder).
    EpochFinished { stage: &'a str, unit: &'a str, metrics: &'a EpochMetrics, epochs: u64 },
    /// Work without steps begins (evaluation, denoising a dataset).
    Busy(&'a str),
    /// That work is done.
    Idle,
}

/// Receives a run's [`Event`]s.
pub trait Observer: Send + Sync {
    fn event(&self, event: &Event<'_>);
}

/// Ignores every event.
#[derive(Clone, Copy, Debug, Default)]
pub struct Quiet;

impl Observer for Quiet {
    fn event(&self, _: &Event<'_>) {}
}

/// Any closure over events is an observer.
impl<F: Fn(&Event<'_>) + Send + Sync> Observer for F {
    fn event(&self, event: &Event<'_>) {
        self(event)
    }
}

/// A shared observer, as stages and runs hold it.
pub type SharedObserver = Arc<dyn Observer>;

/// The observer that ignores everything.
pub fn quiet() -> SharedObserver {
    Arc::new(Quiet)
}

/// Reports `Busy(what)` now and `Idle` when dropped, so an early return still closes it.
pub struct BusyGuard<'a>(&'a dyn Observer);

impl<'a> BusyGuard<'a> {
    pub fn new(observer: &'a dyn Observer, what: &str) -> BusyGuard<'a> {
        observer.event(&Event::Busy(what));
        BusyGuard(observer)
    }
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.event(&Event::Idle);
    }
}
