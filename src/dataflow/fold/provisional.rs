//! Provisional views (DESIGN.md section 6): per user, the on-time events received and
//! not yet applied, deduplicated and in apply order, so that each flush can give the
//! online stores the final state with them folded over it, without touching the
//! final state.
//!
//! # Contract
//! A user's list holds exactly the on-time events of features-read types that the
//! fold has received and not yet applied, one per event id (the copy first in apply
//! order), minus ids already applied. Folding it over a copy of the final state in
//! list order gives what the final state will be once the watermark has passed them
//! all: the fold applies a user's on-time events in the same order, and an on-time
//! event is ready exactly when the frontier passes its own event time, so the events
//! applied first are always a prefix of the list.

use compact_str::CompactString;
use hashbrown::{HashMap, HashSet, HashTable};

use crate::dataflow::fold::dedup::SeenIds;
use crate::model::event::{Event, Millis, to_millis};

/// A user's received, not yet applied events.
pub(super) struct UserPending {
    pub(super) user_id: CompactString,
    pub(super) hash: u64,
    /// In apply order, one per event id.
    pub(super) events: Vec<Event>,
    /// It received an event since its last online view.
    touched: bool,
    /// The newest event time received since its last online view.
    fresh_from: Option<f64>,
    /// Its last online view was provisional: once its list empties, the final view
    /// must be written even if the final state did not change.
    written: bool,
}

impl UserPending {
    /// The largest event time in the list.
    pub(super) fn through(&self) -> Option<f64> {
        self.events.last().map(|e| e.event_time)
    }
}

/// The pending events of a worker's users, for provisional views.
#[derive(Default)]
pub(super) struct Provisional {
    users: HashTable<UserPending>,
    /// Users that received events since the last flush.
    touched: Vec<(u64, CompactString)>,
    /// Users whose last online view was provisional and whose list emptied.
    finals: HashSet<(u64, CompactString)>,
    /// The newest event time applied (or received, then applied before any flush
    /// showed it) per user since its last online view: the freshness of its next
    /// final view.
    fresh: HashMap<u64, f64>,
}

impl Provisional {
    fn find_mut(&mut self, hash: u64, user_id: &str) -> Option<&mut UserPending> {
        self.users.find_mut(hash, |u| u.user_id == user_id)
    }

    /// Whether a flush has anything to write.
    pub(super) fn has_work(&self) -> bool {
        !self.touched.is_empty() || !self.finals.is_empty()
    }

    /// Takes in an on-time event of a type the features read, as it arrives at the
    /// fold. `seen` holds the ids already applied.
    pub(super) fn receive(&mut self, event: &Event, seen: &SeenIds) {
        if seen.contains(event.id_key, event.event_time) {
            return;
        }
        let user = match self
            .users
            .find_mut(event.user_hash, |u| u.user_id == event.user_id)
        {
            Some(user) => user,
            None => self
                .users
                .insert_unique(
                    event.user_hash,
                    UserPending {
                        user_id: event.user_id.clone(),
                        hash: event.user_hash,
                        events: Vec::new(),
                        touched: false,
                        fresh_from: None,
                        written: false,
                    },
                    |u| u.hash,
                )
                .into_mut(),
        };
        match user.events.iter().position(|e| e.id_key == event.id_key) {
            // A copy of an id already held: the one first in apply order is applied.
            Some(i) if event.apply_order(&user.events[i]).is_lt() => {
                user.events.remove(i);
            }
            Some(_) => return,
            None => {}
        }
        let at = user.events.partition_point(|e| e.apply_order(event).is_lt());
        user.events.insert(at, event.clone());
        user.fresh_from = Some(
            user.fresh_from
                .map_or(event.event_time, |t| t.max(event.event_time)),
        );
        if !user.touched {
            user.touched = true;
            self.touched.push((user.hash, user.user_id.clone()));
        }
    }

    /// The fold has applied (or judged) the user's events ready before `limit`: they
    /// leave the list.
    pub(super) fn retire(&mut self, hash: u64, user_id: &str, limit: Millis) {
        let Some(user) = self.users.find_mut(hash, |u| u.user_id == user_id) else {
            return;
        };
        let ready = user.events.partition_point(|e| to_millis(e.event_time) < limit);
        if ready == 0 {
            return;
        }
        user.events.drain(..ready);
        if !user.events.is_empty() {
            return;
        }
        let Ok(entry) = self.users.find_entry(hash, |u| u.user_id == user_id) else {
            unreachable!("found above")
        };
        let (user, _) = entry.remove();
        if user.written {
            self.finals.insert((user.hash, user.user_id));
        }
        if let Some(t) = user.fresh_from {
            self.applied(hash, t);
        }
    }

    /// Notes an applied event's time for the freshness of the user's next final view.
    pub(super) fn applied(&mut self, hash: u64, event_time: f64) {
        let newest = self.fresh.entry(hash).or_insert(event_time);
        *newest = newest.max(event_time);
    }

    /// The freshness of a user's final view, now written.
    pub(super) fn take_fresh(&mut self, hash: u64) -> Option<f64> {
        if self.fresh.is_empty() {
            return None;
        }
        self.fresh.remove(&hash)
    }

    /// The user's list, if it holds events, marked as shown: its view is being
    /// written now. Returns the list and the freshness of this view.
    pub(super) fn show(&mut self, hash: u64, user_id: &str) -> Option<(&UserPending, Option<f64>)> {
        let user = self.find_mut(hash, user_id)?;
        user.touched = false;
        user.written = true;
        let fresh = user.fresh_from.take();
        Some((&*user, fresh))
    }

    /// A final view of the user is being written: it no longer needs one for having
    /// shown a provisional view.
    pub(super) fn shown_final(&mut self, hash: u64, user_id: &CompactString) {
        if !self.finals.is_empty() {
            self.finals.remove(&(hash, user_id.clone()));
        }
    }

    /// Users that received events since the last flush.
    pub(super) fn take_touched(&mut self) -> Vec<(u64, CompactString)> {
        std::mem::take(&mut self.touched)
    }

    /// Users whose provisional view must be replaced by their final one. Called once
    /// per flush, after the final views: freshness not taken by then belongs to no
    /// view (the events were copies of applied ones) and is dropped.
    pub(super) fn take_finals(&mut self) -> Vec<(u64, CompactString)> {
        self.fresh.clear();
        self.finals.drain().collect()
    }

    /// Whether the user received events since its last online view.
    pub(super) fn is_touched(&self, hash: u64, user_id: &str) -> bool {
        self.users
            .find(hash, |u| u.user_id == user_id)
            .is_some_and(|u| u.touched)
    }
}
