//! Replaying the log to answer questions instead of writing outputs: what the system
//! knew about one user at a time and why ([`explain`]), and how the views of two
//! jobs, or of two view stores, differ ([`compare`], [`stores`], [`report`]).
//!
//! A replay runs the job's own dataflow (the same ingest, clocks and fold as `run`),
//! with its sinks off; what it learns is handed back through a [`Replay`].

pub mod compare;
pub mod explain;
pub mod report;
pub mod stores;

use std::sync::{Arc, Mutex};

use hashbrown::HashMap;

use crate::job::Job;
use crate::model::view::ViewRecord;

/// What a run gathers for a replay, shared by its workers.
#[derive(Clone)]
pub enum Replay {
    /// Explain one user: ingest passes only that user's records to the fold, which
    /// traces each of them.
    Explain(Arc<explain::Explaining>),
    /// Diff jobs: the views of the run's job, and of a second job folded from the
    /// same decoded events.
    Diff(Arc<Diffing>),
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Replay::Explain(e) => write!(f, "Explain({})", e.user),
            Replay::Diff(d) => write!(f, "Diff(second: {})", d.second.is_some()),
        }
    }
}

/// The views a diff run gathers.
pub struct Diffing {
    /// A second job folded beside the run's own from the same decoded events (its
    /// schemas and time settings agree with the run's job).
    pub second: Option<Arc<Job>>,
    /// The features of the run's job's final views, by user.
    pub views: Mutex<compare::Views>,
    /// The features of the second job's final views, by user.
    pub second_views: Mutex<compare::Views>,
    /// Accepted records per user (before dedup and lateness), for the activity
    /// breakdown.
    pub activity: Arc<Mutex<HashMap<compact_str::CompactString, u64>>>,
}

impl Diffing {
    /// A diff run of the run's job alone, or beside `second`.
    pub fn new(second: Option<Arc<Job>>) -> Diffing {
        Diffing {
            second,
            views: Mutex::default(),
            second_views: Mutex::default(),
            activity: Arc::default(),
        }
    }

    /// The gathered views of the run's job, of the second job, and the activity,
    /// taken out once the run is over.
    pub fn take(
        &self,
    ) -> (
        compare::Views,
        compare::Views,
        HashMap<compact_str::CompactString, u64>,
    ) {
        (
            std::mem::take(&mut *lock(&self.views)),
            std::mem::take(&mut *lock(&self.second_views)),
            std::mem::take(&mut *lock(&self.activity)),
        )
    }
}

/// Locks a replay's shared state; a panicking worker ends the process, so a poisoned
/// lock only ever holds what was gathered before.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The view sink of a replay: final views are gathered, not written.
pub struct Gather {
    replay: Replay,
    /// The views are the second job's (a diff).
    second: bool,
}

impl Gather {
    /// Gathers the views of the run's job (`second`: of the diff's second job).
    pub fn new(replay: Replay, second: bool) -> Gather {
        Gather { replay, second }
    }
}

impl crate::sinks::ViewSink for Gather {
    fn name(&self) -> &'static str {
        "replay"
    }

    fn write(
        &mut self,
        views: &[ViewRecord],
        _dead: &mut Vec<crate::dlq::letter::DeadLetter>,
    ) -> Result<(), crate::sinks::SinkError> {
        match &self.replay {
            Replay::Explain(explaining) => {
                for view in views.iter().filter(|v| v.snapshot) {
                    explaining.final_view(view.clone());
                }
            }
            Replay::Diff(diffing) => {
                let into = if self.second {
                    &diffing.second_views
                } else {
                    &diffing.views
                };
                let mut into = lock(into);
                for view in views.iter().filter(|v| v.snapshot) {
                    into.push((view.user_id.clone(), view.features.clone()));
                }
            }
        }
        Ok(())
    }
}
