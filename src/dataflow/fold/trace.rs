//! The fold's side of `explain`: applying one event of the user asked about while
//! noting what the fold did with it and which features it changed.

use crate::dlq::letter::{DeadLetter, Reason};
use crate::job::{Job, LatePolicy};
use crate::model::event::{Event, Millis};
use crate::model::features::{UserState, render_features};
use crate::model::view::ViewRecord;
use crate::replay::explain::{Explaining, Outcome};

use super::state::Fold;

impl Fold {
    /// [`Fold::apply_one`] for an event of the user `explaining` asks about. The
    /// outcome is read off the fold's own counters.
    pub(super) fn apply_traced(
        &mut self,
        explaining: &Explaining,
        job: &Job,
        event: &Event,
        ready_at: Millis,
        duplicate: bool,
        dead: &mut Vec<DeadLetter>,
    ) {
        if explaining.wants_view_before(event.event_time) {
            explaining.view_at(self.view_of(event));
        }
        let counts = self.counts.clone();
        let letters = dead.len();
        let before = self.features_of(event);
        self.apply_one(job, event, ready_at, duplicate, dead);
        let outcome = if self.counts.applied > counts.applied {
            Outcome::Applied
        } else if self.counts.duplicates > counts.duplicates {
            Outcome::Duplicate { of: None }
        } else if self.counts.late > counts.late {
            Outcome::Late {
                late_by: None,
                dead_lettered: job.time.late_policy == LatePolicy::Dlq,
            }
        } else {
            let letter = dead[letters..].last();
            Outcome::Rejected {
                reason: letter
                    .map_or(Reason::InvalidFieldType, |l| l.reason)
                    .as_str()
                    .to_owned(),
                detail: letter.map(|l| l.detail.clone()).unwrap_or_default(),
            }
        };
        let after = self.features_of(event);
        let type_name = &job.registry.types()[event.event_type as usize].name;
        explaining.met(event, outcome, &before, &after, type_name);
    }

    /// The features (a JSON object) of the event's user now; an empty state's when
    /// the user has none.
    fn features_of(&self, event: &Event) -> String {
        let spec = &self.job.features;
        match self.users.find(event.user_hash, &event.user_id) {
            Some(entry) => render_features(spec, &self.interner, &entry.state),
            None => render_features(spec, &self.interner, &UserState::new(spec)),
        }
    }

    /// The event's user's view now, when the user has one.
    fn view_of(&self, event: &Event) -> Option<ViewRecord> {
        let entries = &self.users.entries;
        let index = *self
            .users
            .index
            .find(event.user_hash, |&i| entries[i as usize].user_id == event.user_id)?;
        entries[index as usize]
            .has_view
            .then(|| self.render(index, 0.0, false, false))
    }
}
