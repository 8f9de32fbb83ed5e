//! The fold's per-worker state: its users (dense entries found by key hash), the
//! events waiting for the frontier, the dedup tables; applying ready events in
//! (event time, event id) order, and rendering the views of the users that changed.

use std::sync::Arc;

use std::collections::VecDeque;

use compact_str::CompactString;
use hashbrown::HashTable;

use crate::dataflow::batch::Pooled;
use crate::dataflow::fold::dedup::SeenIds;
use crate::dataflow::fold::provisional::Provisional;
use crate::dataflow::fold::spine::Spine;
use crate::dlq::letter::{DeadLetter, Reason};
use crate::job::{Job, LatePolicy};
use crate::model::event::{Event, LateRecord, Millis, to_millis};
use crate::model::features::{Interner, UserState, render_features, render_state};
use crate::model::view::ViewRecord;
use crate::source::spine::SpineRow;
use crate::summary::Counts;

/// Serializes exactly as [`crate::checkpoint::UserSnapshot`] (same fields, same order), so that a
/// checkpoint is written from the live entries.
#[derive(serde::Serialize)]
pub(super) struct UserEntry {
    pub(super) user_id: CompactString,
    pub(super) hash: u64,
    pub(super) state: UserState,
    pub(super) has_view: bool,
    pub(super) dirty: bool,
}

/// A worker's users: dense entries, found by key hash.
#[derive(Default)]
pub(super) struct Users {
    pub(super) index: HashTable<u32>,
    pub(super) entries: Vec<UserEntry>,
}

impl Users {
    /// A user's entry, if the user has one.
    pub(super) fn find(&self, hash: u64, user_id: &str) -> Option<&UserEntry> {
        let entries = &self.entries;
        self.index
            .find(hash, |&i| entries[i as usize].user_id == user_id)
            .map(|&i| &entries[i as usize])
    }

    /// The index of a user's entry, created empty if new.
    pub(super) fn slot(&mut self, hash: u64, user_id: &CompactString, job: &Job) -> u32 {
        let entries = &mut self.entries;
        match self
            .index
            .find(hash, |&i| entries[i as usize].user_id == *user_id)
        {
            Some(&i) => i,
            None => {
                let i = u32::try_from(entries.len()).expect("fewer than 2^32 users per worker");
                entries.push(UserEntry {
                    user_id: user_id.clone(),
                    hash,
                    state: UserState::new(&job.features),
                    has_view: false,
                    dirty: false,
                });
                self.index.insert_unique(hash, i, |&j| entries[j as usize].hash);
                i
            }
        }
    }
}

/// An event time as an integer that sorts like the time (times are >= 0).
pub(super) fn time_key(event_time: f64) -> u64 {
    event_time.to_bits()
}

/// A received container of events and the time it was sent at.
pub(super) struct Pending {
    pub(super) sent_at: Millis,
    pub(super) events: Vec<Event>,
    /// Each event's [`ready_at`], in order: finding the ready events reads these eight
    /// bytes each, not the events (which were a cache miss each, on every frontier).
    ready: Vec<Millis>,
    /// The smallest of `ready`: a container with nothing ready is passed over whole.
    first_ready: Millis,
}

impl Pending {
    /// `events`, sent at `sent_at`, waiting to be applied.
    pub(super) fn new(sent_at: Millis, events: Vec<Event>) -> Pending {
        let ready: Vec<Millis> = events.iter().map(|e| ready_at(sent_at, e)).collect();
        let first_ready = ready.iter().copied().min().unwrap_or(Millis::MAX);
        Pending {
            sent_at,
            events,
            ready,
            first_ready,
        }
    }

    /// When event `index` may be judged (see [`ready_at`]).
    pub(super) fn ready_at(&self, index: usize) -> Millis {
        self.ready[index]
    }

    /// The indices of the events ready before `limit`.
    fn ready_before(&self, limit: Millis) -> impl Iterator<Item = usize> + '_ {
        let ready = match self.first_ready < limit {
            true => &self.ready[..],
            false => &[],
        };
        ready
            .iter()
            .enumerate()
            .filter(move |&(_, &ready)| ready < limit)
            .map(|(e, _)| e)
    }

    /// Drops the events ready before `limit` (applied by now); whether any are left.
    fn drop_ready(&mut self, limit: Millis) -> bool {
        if self.first_ready >= limit {
            return true;
        }
        let mut ready = self.ready.iter();
        self.events
            .retain(|_| *ready.next().expect("one ready time per event") >= limit);
        self.ready.retain(|&ready| ready >= limit);
        self.first_ready = self.ready.iter().copied().min().unwrap_or(Millis::MAX);
        !self.events.is_empty()
    }
}

/// When an event sent at `sent_at` may be judged: once the frontier has passed both its
/// event time and the time it was sent at. Late events wait for their event time too, so
/// a late copy is never judged before an on-time copy read earlier from its partition
/// (it is then a duplicate, as the contract's order of checks says).
fn ready_at(sent_at: Millis, event: &Event) -> Millis {
    to_millis(event.event_time).max(sent_at)
}

/// The fold's state on one worker.
pub(super) struct Fold {
    pub(super) job: Arc<Job>,
    pub(super) users: Users,
    pub(super) interner: Interner,
    pub(super) seen: SeenIds,
    pub(super) seen_late: SeenIds,
    /// Received containers, kept whole until every event in them is applied: an event
    /// is never copied on its way through the fold.
    pub(super) pending: Vec<Pending>,
    /// `(container, event)` indices into `pending` of the events being applied.
    pub(super) order: Vec<(u32, u32)>,
    /// `order` keyed by event time, for sorting.
    pub(super) keyed: Vec<(u64, (u32, u32))>,
    /// Whether each event of `order` is a duplicate (see [`Fold::judge`]).
    duplicate: Vec<bool>,
    pub(super) dirty: Vec<u32>,
    pub(super) counts: Counts,
    /// Counts since the job started (restored ones included), for checkpoints.
    pub(super) total: Counts,
    pub(super) max_clock: Option<f64>,
    /// The earliest time of a change not yet written as a view: the views output holds
    /// its capability there, so nothing downstream counts as durable past it.
    pub(super) unflushed_since: Option<Millis>,
    /// Open training rows, when the job exports them.
    pub(super) spine: Option<Spine>,
    /// Rows of a spine file not yet opened, by `ts`: they replace the log's spine
    /// events, and open after every log event of their time.
    pub(super) file_spine: Option<VecDeque<SpineRow>>,
    /// Spine-file rows before this time were opened before the checkpoint restored.
    pub(super) spine_before: Millis,
    /// Streaming runs: what online views need (pending events per user, freshness).
    pub(super) online: Option<Provisional>,
    /// Online views are provisional: each flush folds a user's pending events over
    /// its final state.
    pub(super) show_pending: bool,
    /// `explain` runs: the user whose events are traced.
    pub(super) trace: Option<Arc<crate::replay::explain::Explaining>>,
    /// `diff` runs: the second job, folded from the same events.
    pub(super) shadow: Option<super::shadow::Shadow>,
    /// The skew counting, when the export compares served features.
    pub(super) skew: Option<std::rc::Rc<std::cell::RefCell<crate::dataflow::skew::SkewCounter>>>,
}

impl Fold {
    /// Counts the serving skew of rows closing now, before they leave.
    pub(super) fn observe_skew(&self, rows: &mut [crate::model::training::SpineRows]) {
        if let Some(counter) = &self.skew {
            counter.borrow_mut().observe(rows);
        }
    }

    /// An empty fold for `job`.
    pub(super) fn new(job: Arc<Job>) -> Fold {
        let spine = job
            .export
            .as_ref()
            .map(|_| Spine::new(UserState::new(&job.features)));
        Fold {
            spine,
            skew: None,
            file_spine: None,
            spine_before: 0,
            seen: SeenIds::new(job.time.dedup_horizon.as_secs_f64()),
            seen_late: SeenIds::new(job.time.dedup_horizon.as_secs_f64()),
            job,
            users: Users::default(),
            interner: Interner::default(),
            pending: Vec::new(),
            order: Vec::new(),
            keyed: Vec::new(),
            duplicate: Vec::new(),
            dirty: Vec::new(),
            counts: Counts::default(),
            total: Counts::default(),
            max_clock: None,
            unflushed_since: None,
            online: None,
            show_pending: false,
            trace: None,
            shadow: None,
        }
    }

    /// Takes in a received container: its on-time events of types the features read
    /// join their users' pending lists when online views are provisional.
    pub(super) fn receive(&mut self, events: &[Event]) {
        let (Some(online), true) = (self.online.as_mut(), self.show_pending) else {
            return;
        };
        for event in events {
            if !event.late && self.job.features.reads(event.event_type) {
                online.receive(event, &self.seen);
            }
        }
    }

    /// Events waiting for the frontier.
    pub(super) fn pending_events(&self) -> usize {
        self.pending.iter().map(|p| p.events.len()).sum()
    }

    /// Applies every pending event ready before `frontier` (all, when `None`), in
    /// [`Event::apply_order`]. Events are sorted by index and dropped in place, never
    /// moved.
    pub(super) fn apply_ready(&mut self, frontier: Option<Millis>, dead: &mut Vec<DeadLetter>) {
        let limit = frontier.unwrap_or(Millis::MAX);
        self.order.clear();
        for (c, batch) in self.pending.iter().enumerate() {
            self.order
                .extend(batch.ready_before(limit).map(|e| (c as u32, e as u32)));
        }
        if self.order.is_empty() {
            self.open_file_rows(limit, None);
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let event = |&(c, e): &(u32, u32)| &pending[c as usize].events[e as usize];
        // Sort by event time as an integer key first (cheap comparisons, no pointer
        // chasing), then settle equal times by the full apply order.
        self.keyed.clear();
        self.keyed.extend(
            self.order
                .iter()
                .map(|index| (time_key(event(index).event_time), *index)),
        );
        self.keyed.sort_unstable_by_key(|&(time, _)| time);
        for run in self.keyed.chunk_by_mut(|a, b| a.0 == b.0) {
            if run.len() > 1 {
                run.sort_unstable_by(|a, b| event(&a.1).apply_order(event(&b.1)));
            }
        }
        self.order.clear();
        self.order.extend(self.keyed.iter().map(|&(_, index)| index));
        let job = Arc::clone(&self.job);
        let order = std::mem::take(&mut self.order);
        // Step 5 for every ready event first, in apply order: the tables see the same
        // lookups and inserts as if each event were judged as it is applied, and in a
        // tight loop their cache misses (a table of a day's ids) overlap instead of
        // being waited for one at a time between applies.
        let mut duplicate = std::mem::take(&mut self.duplicate);
        duplicate.clear();
        duplicate.extend(order.iter().map(|index| self.judge(event(index))));
        for (&(c, e), &duplicate) in order.iter().zip(&duplicate) {
            let batch = &pending[c as usize];
            let (event, ready_at) = (&batch.events[e as usize], batch.ready_at(e as usize));
            self.open_file_rows(limit, Some(event.event_time));
            match self.trace.clone() {
                Some(trace) if trace.user == event.user_id => {
                    self.apply_traced(&trace, &job, event, ready_at, duplicate, dead);
                }
                _ => self.apply_one(&job, event, ready_at, duplicate, dead),
            }
            if let (Some(online), true, false) = (self.online.as_mut(), self.show_pending, event.late) {
                online.retire(event.user_hash, &event.user_id, limit);
            }
        }
        self.open_file_rows(limit, None);
        self.order = order;
        self.duplicate = duplicate;
        self.pending = pending;
        self.pending.retain_mut(|batch| {
            if batch.drop_ready(limit) {
                return true;
            }
            Event::pool().give(std::mem::take(&mut batch.events));
            false
        });
        if let Some(frontier) = frontier {
            let watermark = frontier as f64 / 1000.0;
            self.seen.expire(watermark);
            self.seen_late.expire(watermark);
        }
    }

    /// Opens the spine-file rows ready before `limit` whose time is before
    /// `before` (all ready ones when `None`): a row opens after every log event of
    /// its own time.
    fn open_file_rows(&mut self, limit: Millis, before: Option<f64>) {
        let (Some(rows), Some(spine), Some(export)) = (
            self.file_spine.as_mut(),
            self.spine.as_mut(),
            self.job.export.as_ref(),
        ) else {
            return;
        };
        while let Some(row) = rows.front()
            && to_millis(row.ts) < limit
            && before.is_none_or(|t| row.ts < t)
        {
            let state = self.users.find(row.user_hash, &row.user_id).map(|e| &e.state);
            spine.open_file_row(export, &self.job.features, &self.interner, state, row);
            rows.pop_front();
        }
    }

    /// Step 5 for one event: whether it is a duplicate. An on-time event claims its
    /// id; a late copy of an event seen on time is a duplicate, and a late event never
    /// claims its id against an on-time copy, so which copy arrives first does not
    /// decide what is applied.
    fn judge(&mut self, event: &Event) -> bool {
        let (key, time) = (event.id_key, event.event_time);
        match event.late {
            false => self.seen.check_and_insert(key, time, event.user_hash),
            true => {
                self.seen.contains(key, time) || self.seen_late.check_and_insert(key, time, event.user_hash)
            }
        }
    }

    /// Steps 6-7 for one event, which [`Fold::judge`] found a `duplicate` or not:
    /// lateness, apply.
    pub(super) fn apply_one(
        &mut self,
        job: &Job,
        event: &Event,
        ready_at: Millis,
        duplicate: bool,
        dead: &mut Vec<DeadLetter>,
    ) {
        if duplicate {
            self.counts.duplicates += 1;
            return;
        }
        if !event.late {
            let reads = job.features.reads(event.event_type);
            let slot = reads.then(|| self.users.slot(event.user_hash, &event.user_id, job));
            if let (Some(slot), Some(record)) = (slot, &event.late_record)
                && let Some(problem) = self.users.entries[slot as usize]
                    .state
                    .overflow(&job.features, event)
            {
                // An infinite sum would be written as null: the event is refused.
                dead.push(self.refuse(job, record, Reason::InvalidFieldType, problem));
                return;
            }
            self.counts.applied += 1;
            if let Some(shadow) = self.shadow.as_mut() {
                shadow.apply(event);
            }
            if let (Some(spine), Some(export)) = (self.spine.as_mut(), job.export.as_ref()) {
                // Outcomes and spine events see the state before this event is applied.
                spine.outcome(export, event);
                if event.event_type == export.spine && self.file_spine.is_none() {
                    let state = match slot {
                        Some(slot) => Some(&self.users.entries[slot as usize].state),
                        None => self.users.find(event.user_hash, &event.user_id).map(|e| &e.state),
                    };
                    spine.open(export, &job.features, &self.interner, state, event);
                }
            }
            let Some(slot) = slot else { return };
            let entry = &mut self.users.entries[slot as usize];
            entry.state.apply(&job.features, &mut self.interner, event);
            entry.has_view = true;
            if let (Some(online), false) = (self.online.as_mut(), self.show_pending) {
                online.applied(event.user_hash, event.event_time);
            }
            self.unflushed_since = Some(self.unflushed_since.map_or(ready_at, |t| t.min(ready_at)));
            if !entry.dirty {
                entry.dirty = true;
                self.dirty.push(slot);
            }
            return;
        }
        self.counts.late += 1;
        match job.time.late_policy {
            LatePolicy::Drop => self.counts.late_dropped += 1,
            LatePolicy::Dlq => {
                let record = event
                    .late_record
                    .as_ref()
                    .expect("late events carry their record");
                let detail = format!(
                    "event_time {} is more than allowed_lateness ({}) behind its partition's clock or the watermark",
                    event.event_time, job.time.allowed_lateness
                );
                dead.push(self.refuse(job, record, Reason::LateEvent, detail));
            }
        }
    }

    /// Counts a dead letter for an event the fold refuses, and writes it from the
    /// record the event kept for that.
    fn refuse(&mut self, job: &Job, record: &LateRecord, reason: Reason, detail: String) -> DeadLetter {
        self.counts.dead_letter(reason);
        DeadLetter::first_attempt(
            &job.name,
            record.origin.clone(),
            record.text.as_bytes(),
            true,
            reason,
            detail,
        )
    }

    pub(super) fn render(&self, index: u32, as_of: f64, changed: bool, snapshot: bool) -> ViewRecord {
        let entry = &self.users.entries[index as usize];
        ViewRecord {
            user_id: entry.user_id.clone(),
            as_of,
            features: render_features(&self.job.features, &self.interner, &entry.state),
            state: render_state(&self.job.features, &self.interner, &entry.state),
            changed,
            snapshot,
            ..ViewRecord::default()
        }
    }

    /// Whether a flush has views to write.
    pub(super) fn flush_due(&self) -> bool {
        !self.dirty.is_empty() || self.online.as_ref().is_some_and(|o| o.has_work())
    }

    /// Online views of the users whose final state or pending events changed since the
    /// last flush: provisional for users with pending events when the job says so,
    /// final otherwise.
    pub(super) fn flush_dirty(&mut self, as_of: f64, out: &mut Vec<ViewRecord>) {
        let dirty = std::mem::take(&mut self.dirty);
        for &index in &dirty {
            let entry = &mut self.users.entries[index as usize];
            entry.dirty = false;
            let (hash, user_id) = (entry.hash, entry.user_id.clone());
            if let Some(view) = self.render_provisional(hash, &user_id, as_of) {
                out.push(view);
                continue;
            }
            let mut view = self.render(index, as_of, true, false);
            if let Some(online) = self.online.as_mut() {
                online.shown_final(hash, &user_id);
                view.fresh_from = online.take_fresh(hash);
            }
            out.push(view);
        }
        self.dirty = dirty;
        self.dirty.clear();
        self.unflushed_since = None;
        let Some(online) = self.online.as_mut() else {
            return;
        };
        let touched = online.take_touched();
        let finals = online.take_finals();
        for (hash, user_id) in touched {
            if self.online.as_ref().is_some_and(|o| o.is_touched(hash, &user_id))
                && let Some(view) = self.render_provisional(hash, &user_id, as_of)
            {
                out.push(view);
            }
        }
        // A provisional view was shown and the final state did not change when its
        // events were judged (they were copies of applied ones): the final view
        // replaces it.
        for (hash, user_id) in finals {
            let entries = &self.users.entries;
            if let Some(&index) = self
                .users
                .index
                .find(hash, |&i| entries[i as usize].user_id == user_id)
                && entries[index as usize].has_view
            {
                out.push(self.render(index, as_of, true, false));
            }
        }
    }

    /// The provisional view of a user with pending events: a copy of its final state
    /// with them folded over it in apply order.
    fn render_provisional(&mut self, hash: u64, user_id: &str, as_of: f64) -> Option<ViewRecord> {
        if !self.show_pending {
            return None;
        }
        let (pending, fresh_from) = self.online.as_mut()?.show(hash, user_id)?;
        let spec = &self.job.features;
        let mut state = self
            .users
            .find(hash, user_id)
            .map_or_else(|| UserState::new(spec), |e| e.state.clone());
        for event in &pending.events {
            // A number that would make a sum overflow is refused when applied.
            if event.late_record.is_some() && state.overflow(spec, event).is_some() {
                continue;
            }
            state.apply(spec, &mut self.interner, event);
        }
        Some(ViewRecord {
            user_id: pending.user_id.clone(),
            as_of,
            provisional_through: pending.through(),
            features: render_features(spec, &self.interner, &state),
            state: render_state(spec, &self.interner, &state),
            changed: true,
            snapshot: false,
            fresh_from,
        })
    }
}
