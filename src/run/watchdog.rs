//! Honouring a stop request when the run cannot: a call that never returns (a read of
//! a FIFO without a writer, of `/dev/zero`; cluster peers that never connect).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::aside::Aside;
use crate::dataflow::ingest::Blocking;

/// After a stop request, ends the process (exit 130) when the run is stuck in a call
/// that never returns, a read of a FIFO without a writer or of `/dev/zero`, or
/// peers that never connect, for more than [`Watchdog::PATIENCE`] without progress
/// (a read that hands out records marks its progress): such a run could only be
/// killed. A run at work stops cleanly, however long its flush takes.
pub(super) struct Watchdog {
    done: Arc<AtomicBool>,
}

impl Watchdog {
    const PATIENCE: Duration = Duration::from_secs(1);

    /// Watches `stop` and `blocking`; before it ends a stuck run it removes what the
    /// run wrote aside (`cleanup`), as a failed run does.
    pub(super) fn start(stop: Arc<AtomicBool>, blocking: Blocking, cleanup: Option<Aside>) -> Watchdog {
        let done = Arc::new(AtomicBool::new(false));
        let finished = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut stopped_at = None;
            while !finished.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                if !stop.load(Ordering::Relaxed) {
                    continue;
                }
                let since = *stopped_at.get_or_insert_with(Instant::now);
                let stuck = blocking.longest().is_some_and(|d| d >= Self::PATIENCE);
                if stuck && since.elapsed() >= Self::PATIENCE {
                    eprintln!(
                        "stopped: the run was blocked (a read that does not return, or cluster peers that do not connect); exiting without a clean stop"
                    );
                    if let Some(aside) = &cleanup {
                        aside.discard();
                    }
                    std::process::exit(130);
                }
            }
        });
        Watchdog { done }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}
