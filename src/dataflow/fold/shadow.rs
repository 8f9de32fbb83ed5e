//! A diff run's second job, folded inside the run's own fold: the same events,
//! deduplicated and judged late once, applied to a second state per user, whose
//! features are gathered at the end of the input.
//!
//! Both jobs' schemas and time settings agree (the diff checks), so what the run's
//! job applies is what the second would; an event whose number would overflow one of
//! the second job's sums is refused by that job alone, as its own run would.

use std::sync::Arc;

use crate::job::Job;
use crate::model::event::Event;
use crate::model::features::{Interner, render_features};
use crate::replay::{Diffing, lock};

use super::state::Users;

/// The second job's users and state on one worker.
pub(super) struct Shadow {
    job: Arc<Job>,
    users: Users,
    interner: Interner,
    into: Arc<Diffing>,
}

impl Shadow {
    /// An empty second fold of `job`, gathering into `into`.
    pub(super) fn new(job: Arc<Job>, into: Arc<Diffing>) -> Shadow {
        Shadow {
            job,
            users: Users::default(),
            interner: Interner::default(),
            into,
        }
    }

    /// Applies an event the run's job applied.
    pub(super) fn apply(&mut self, event: &Event) {
        let spec = &self.job.features;
        if !spec.reads(event.event_type) {
            return;
        }
        let slot = self.users.slot(event.user_hash, &event.user_id, &self.job);
        let entry = &mut self.users.entries[slot as usize];
        if event.late_record.is_some() && entry.state.overflow(spec, event).is_some() {
            return;
        }
        entry.state.apply(spec, &mut self.interner, event);
        entry.has_view = true;
    }

    /// Hands the features of every user with a view to the diff.
    pub(super) fn gather(&self) {
        let mut views = lock(&self.into.second_views);
        for entry in self.users.entries.iter().filter(|e| e.has_view) {
            views.push((
                entry.user_id.clone(),
                render_features(&self.job.features, &self.interner, &entry.state),
            ));
        }
    }
}
