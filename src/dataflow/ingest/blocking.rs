//! Marks of calls that may block for good (source reads, connecting to a cluster's
//! peers), read by the watchdog that ends a run stuck in one after a stop request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// When calls that may block for good (source reads, connecting to the cluster's
/// peers) began, one slot per local worker (and one for the cluster's start), shared
/// with the watchdog that ends a run stuck in one after a stop request (see `run`).
#[derive(Debug, Clone)]
pub struct Blocking(Arc<[AtomicU64]>);

impl Default for Blocking {
    fn default() -> Blocking {
        Blocking::new(1)
    }
}

impl Blocking {
    /// `slots` slots, none blocked.
    pub fn new(slots: usize) -> Blocking {
        Blocking((0..slots).map(|_| AtomicU64::new(0)).collect())
    }

    fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64)
    }

    /// A possibly blocking call begins in `slot`, or (called again) has made progress.
    pub fn enter(&self, slot: usize) {
        self.0[slot].store(Self::now_ms(), Ordering::Relaxed);
    }

    /// It returned.
    pub fn leave(&self, slot: usize) {
        self.0[slot].store(0, Ordering::Relaxed);
    }

    /// How long the longest call still going on has been, if one is.
    pub fn longest(&self) -> Option<Duration> {
        let now = Self::now_ms();
        self.0
            .iter()
            .map(|since| since.load(Ordering::Relaxed))
            .filter(|&since| since != 0)
            .map(|since| Duration::from_millis(now.saturating_sub(since)))
            .max()
    }
}
