//! The per-user fold: deduplicate, apply the late policy, and fold each user's events
//! into its state in (event time, event id) order; emit views of the users that
//! changed.
//!
//! # Contract
//! Input events arrive exchanged by `user_hash`, so each user's state lives on one
//! worker. An event is applied once the input frontier has passed its event time
//! (for late events: the time it was sent at); events that become ready together are
//! applied in [`Event::apply_order`], which does not depend on arrival order, so the
//! result is the same for any number of workers and any interleaving of partitions.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use compact_str::CompactString;
use hashbrown::HashTable;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{ExchangeCore, Pipeline};
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::batch::{Batcher, Pooled};
use crate::checkpoint::protocol::Checkpointing;
use crate::checkpoint::{FoldSnapshot, PartEntry};
use crate::dead_letter::{DeadLetter, Reason};
use crate::dedup::SeenIds;
use crate::event::{Event, Millis, to_millis};
use crate::features::{Interner, UserState, render_features, render_state};
use crate::job::{Job, LatePolicy};
use crate::summary::Counts;

/// Views emitted per activation while a snapshot is written, to bound memory.
const SNAPSHOT_CHUNK: usize = 1024;

/// A rendered view on its way to the sinks.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewRecord {
    /// The key.
    pub user_id: CompactString,
    /// The watermark (event-time seconds) the view is complete at.
    pub as_of: f64,
    /// The `features` object.
    pub features: String,
    /// The `state` object.
    pub state: String,
    /// The user's state changed since its view was last written: online stores write it.
    pub changed: bool,
    /// Part of the end-of-run snapshot, which comes sorted by `user_id` per worker.
    pub snapshot: bool,
}

impl ViewRecord {
    /// The view as one JSON object (a line of the JSONL snapshot).
    pub fn to_json(&self) -> String {
        let user = serde_json::to_string(self.user_id.as_str()).expect("a string serializes");
        let as_of = serde_json::to_string(&self.as_of).expect("a number serializes");
        format!(
            "{{\"user_id\":{user},\"as_of\":{as_of},\"features\":{},\"state\":{}}}",
            self.features, self.state
        )
    }
}

/// When views of changed users are emitted before the end of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Only at the end of a bounded input (backfill).
    AtEnd,
    /// Whenever the watermark has moved and this much wall time has passed.
    Every(Duration),
}

/// What the fold needs from its worker.
pub struct FoldContext {
    /// The job.
    pub job: Arc<Job>,
    /// The worker's counters.
    pub counts: Rc<RefCell<Counts>>,
    /// When to write views.
    pub flush: FlushPolicy,
    /// Metrics, when the run exports them.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// The worker's part in taking checkpoints.
    pub checkpointing: Rc<RefCell<Checkpointing>>,
    /// State restored from a checkpoint: this worker's users from each part taken,
    /// and the fold counts carried over (on one worker only).
    pub restored: Vec<FoldSnapshot>,
    /// Fold counts carried over from a checkpoint.
    pub restored_counts: Counts,
    /// Hold the views output at the earliest change not yet written. Runs without
    /// checkpoints commit offsets by that; with checkpoints, changes not yet written
    /// are in the checkpoint (as `dirty` users) instead.
    pub hold_unflushed: bool,
}

/// The fold's outputs.
pub struct Folded<'s> {
    /// Views to write.
    pub views: Stream<'s, Millis, Vec<ViewRecord>>,
    /// Late events dead-lettered.
    pub dead_letters: Stream<'s, Millis, Vec<DeadLetter>>,
}

/// Folding a stream of events into per-user features.
pub trait FoldFeatures<'s> {
    /// Folds events into per-user state. `clocks` reports partition clocks from every
    /// worker (broadcast), for the final watermark.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use timely::dataflow::operators::capture::{Capture, Event as Captured};
    /// use timely::dataflow::operators::{vec::Broadcast, ToStream};
    /// use skewless::decode::{Decoded, Decoder};
    /// use skewless::event::{Event, Position};
    /// use skewless::fold::{FlushPolicy, FoldContext, FoldFeatures};
    ///
    /// let job = Arc::new(skewless::job::Job::load("jobs/recsys.toml".as_ref()).unwrap());
    /// let decoder = Decoder::new(&job.registry, job.max_event_bytes);
    /// let events: Vec<Event> = [
    ///     r#"{"event_id":"b","event_type":"ecommerce.item_viewed","event_version":"1.0","event_time":10,"user_id":"u1","payload":{"item_id":"i2","category":"books"}}"#,
    ///     r#"{"event_id":"a","event_type":"ecommerce.item_viewed","event_version":"1.0","event_time":10,"user_id":"u1","payload":{"item_id":"i1","category":"books"}}"#,
    /// ]
    /// .iter()
    /// .enumerate()
    /// .map(|(line, text)| match decoder.decode(text.as_bytes()) {
    ///     Decoded::Event(event) => Event::accepted(event, Position { partition: 0, offset: line as i64 + 1 }),
    ///     other => panic!("{other:?}"),
    /// })
    /// .collect();
    /// let views = timely::example(move |scope| {
    ///     let events = events.to_stream(scope).container::<Vec<_>>();
    ///     let clocks = vec![10.0f64].to_stream(scope).container::<Vec<_>>().broadcast();
    ///     let context = FoldContext {
    ///         job,
    ///         counts: Default::default(),
    ///         flush: FlushPolicy::AtEnd,
    ///         metrics: None,
    ///         checkpointing: Default::default(),
    ///         restored: Vec::new(),
    ///         restored_counts: Default::default(),
    ///         hold_unflushed: true,
    ///     };
    ///     events.fold_features(clocks, context).views.capture()
    /// });
    /// let views: Vec<_> = views
    ///     .try_iter()
    ///     .flat_map(|captured| match captured {
    ///         Captured::Messages(_time, views) => views,
    ///         Captured::Progress(_) => Vec::new(),
    ///     })
    ///     .collect();
    /// assert_eq!(views.len(), 1);
    /// assert_eq!(views[0].user_id, "u1");
    /// assert_eq!(views[0].as_of, 10.0);
    /// // Equal event times apply in event-id order: "a" (i1) before "b" (i2).
    /// assert!(views[0].state.contains(r#""viewed_items":["i1","i2"]"#), "{}", views[0].state);
    /// ```
    fn fold_features(self, clocks: Stream<'s, Millis, Vec<f64>>, context: FoldContext) -> Folded<'s>;
}

/// Serializes exactly as [`crate::checkpoint::UserSnapshot`] (same fields, same order), so that a
/// checkpoint is written from the live entries.
#[derive(serde::Serialize)]
struct UserEntry {
    user_id: CompactString,
    hash: u64,
    state: UserState,
    has_view: bool,
    dirty: bool,
}

/// A worker's part of a checkpoint, borrowing the live state: serializes exactly as
/// [`crate::checkpoint::WorkerPart`] (same fields, same order).
#[derive(serde::Serialize)]
struct PartView<'a> {
    epoch: u64,
    cut: Millis,
    worker: usize,
    workers: usize,
    partitions: &'a [crate::checkpoint::PartitionState],
    ingest_counts: &'a Counts,
    fold: FoldView<'a>,
    fold_counts: Counts,
}

/// The fold's state at a cut, borrowed: serializes exactly as [`FoldSnapshot`].
#[derive(serde::Serialize)]
struct FoldView<'a> {
    strings: &'a [CompactString],
    users: &'a [UserEntry],
    seen: Vec<crate::dedup::SeenEntry>,
    seen_late: Vec<crate::dedup::SeenEntry>,
    pending: Vec<(Millis, &'a Event)>,
    max_clock: Option<f64>,
}

/// A worker's users: dense entries, found by key hash.
#[derive(Default)]
struct Users {
    index: HashTable<u32>,
    entries: Vec<UserEntry>,
}

impl Users {
    /// The index of a user's entry, created empty if new.
    fn slot(&mut self, hash: u64, user_id: &CompactString, job: &Job) -> u32 {
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
fn time_key(event_time: f64) -> u64 {
    event_time.to_bits()
}

/// A received container of events and the time it was sent at.
struct Pending {
    sent_at: Millis,
    events: Vec<Event>,
}

impl Pending {
    /// When an event may be judged: once the frontier has passed both its event time
    /// and the time it was sent at. Late events wait for their event time too, so a late
    /// copy is never judged before an on-time copy read earlier from its partition (it
    /// is then a duplicate, as the contract's order of checks says).
    fn ready_at(&self, event: &Event) -> Millis {
        ready_at(self.sent_at, event)
    }
}

fn ready_at(sent_at: Millis, event: &Event) -> Millis {
    to_millis(event.event_time).max(sent_at)
}

/// The fold's state on one worker.
struct Fold {
    job: Arc<Job>,
    users: Users,
    interner: Interner,
    seen: SeenIds,
    seen_late: SeenIds,
    /// Received containers, kept whole until every event in them is applied: an event
    /// is never copied on its way through the fold.
    pending: Vec<Pending>,
    /// `(container, event)` indices into `pending` of the events being applied.
    order: Vec<(u32, u32)>,
    /// `order` keyed by event time, for sorting.
    keyed: Vec<(u64, (u32, u32))>,
    dirty: Vec<u32>,
    counts: Counts,
    /// Counts since the job started (restored ones included), for checkpoints.
    total: Counts,
    max_clock: Option<f64>,
    /// The earliest time of a change not yet written as a view: the views output holds
    /// its capability there, so nothing downstream counts as durable past it.
    unflushed_since: Option<Millis>,
}

impl Fold {
    /// An empty fold for `job`.
    fn new(job: Arc<Job>) -> Fold {
        Fold {
            seen: SeenIds::new(job.time.dedup_horizon.as_secs_f64()),
            seen_late: SeenIds::new(job.time.dedup_horizon.as_secs_f64()),
            job,
            users: Users::default(),
            interner: Interner::default(),
            pending: Vec::new(),
            order: Vec::new(),
            keyed: Vec::new(),
            dirty: Vec::new(),
            counts: Counts::default(),
            total: Counts::default(),
            max_clock: None,
            unflushed_since: None,
        }
    }

    /// Applies every pending event ready before `frontier` (all, when `None`), in
    /// [`Event::apply_order`]. Events are sorted by index and dropped in place, never
    /// moved.
    fn apply_ready(&mut self, frontier: Option<Millis>, dead: &mut Vec<DeadLetter>) {
        let limit = frontier.unwrap_or(Millis::MAX);
        self.order.clear();
        for (c, batch) in self.pending.iter().enumerate() {
            for (e, event) in batch.events.iter().enumerate() {
                if batch.ready_at(event) < limit {
                    self.order.push((c as u32, e as u32));
                }
            }
        }
        if self.order.is_empty() {
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
        for &(c, e) in &order {
            let batch = &pending[c as usize];
            let event = &batch.events[e as usize];
            self.apply_one(&job, event, batch.ready_at(event), dead);
        }
        self.order = order;
        self.pending = pending;
        self.pending.retain_mut(|batch| {
            let sent_at = batch.sent_at;
            batch.events.retain(|e| ready_at(sent_at, e) >= limit);
            if batch.events.is_empty() {
                Event::pool().give(std::mem::take(&mut batch.events));
                return false;
            }
            true
        });
        if let Some(frontier) = frontier {
            let watermark = frontier as f64 / 1000.0;
            self.seen.expire(watermark);
            self.seen_late.expire(watermark);
        }
    }

    /// Steps 5-7 for one event: dedup, lateness, apply.
    fn apply_one(&mut self, job: &Job, event: &Event, ready_at: Millis, dead: &mut Vec<DeadLetter>) {
        let key = event.id_key;
        if !event.late {
            if self.seen.check_and_insert(key, event.event_time, event.user_hash) {
                self.counts.duplicates += 1;
                return;
            }
            self.counts.applied += 1;
            if !job.features.reads(event.event_type) {
                return;
            }
            let slot = self.users.slot(event.user_hash, &event.user_id, job);
            let entry = &mut self.users.entries[slot as usize];
            entry.state.apply(&job.features, &mut self.interner, event);
            entry.has_view = true;
            self.unflushed_since = Some(self.unflushed_since.map_or(ready_at, |t| t.min(ready_at)));
            if !entry.dirty {
                entry.dirty = true;
                self.dirty.push(slot);
            }
            return;
        }
        // A late copy of an event seen on time is a duplicate; a late event never
        // claims its id against an on-time copy, so which copy arrives first does
        // not decide what is applied.
        if self.seen.contains(key, event.event_time)
            || self
                .seen_late
                .check_and_insert(key, event.event_time, event.user_hash)
        {
            self.counts.duplicates += 1;
            return;
        }
        self.counts.late += 1;
        match job.time.late_policy {
            LatePolicy::Drop => self.counts.late_dropped += 1,
            LatePolicy::Dlq => {
                self.counts.dead_letter(Reason::LateEvent);
                let record = event
                    .late_record
                    .as_ref()
                    .expect("late events carry their record");
                dead.push(DeadLetter::first_attempt(
                    &job.name,
                    record.origin.clone(),
                    record.text.as_bytes(),
                    true,
                    Reason::LateEvent,
                    format!(
                        "event_time {} is more than allowed_lateness ({}) behind its partition's clock or the watermark",
                        event.event_time, job.time.allowed_lateness
                    ),
                ));
            }
        }
    }

    fn render(&self, index: u32, as_of: f64, changed: bool, snapshot: bool) -> ViewRecord {
        let entry = &self.users.entries[index as usize];
        ViewRecord {
            user_id: entry.user_id.clone(),
            as_of,
            features: render_features(&self.job.features, &self.interner, &entry.state),
            state: render_state(&self.job.features, &self.interner, &entry.state),
            changed,
            snapshot,
        }
    }

    /// The fold's state at a cut: everything applied, and the pending events that
    /// were sent before the cut.
    #[cfg(test)]
    fn snapshot(&self, cut: Millis) -> FoldSnapshot {
        use crate::checkpoint::UserSnapshot;
        FoldSnapshot {
            strings: self.interner.strings().to_vec(),
            users: self
                .users
                .entries
                .iter()
                .map(|e| UserSnapshot {
                    user_id: e.user_id.clone(),
                    hash: e.hash,
                    state: e.state.clone(),
                    has_view: e.has_view,
                    dirty: e.dirty,
                })
                .collect(),
            seen: self.seen.entries().collect(),
            seen_late: self.seen_late.entries().collect(),
            pending: self
                .pending
                .iter()
                .filter(|batch| batch.sent_at < cut)
                .flat_map(|batch| batch.events.iter().map(move |e| (batch.sent_at, e.clone())))
                .collect(),
            max_clock: self.max_clock,
        }
    }

    /// Takes over state from a checkpoint.
    fn restore(&mut self, snapshot: FoldSnapshot) {
        let ids: Vec<u32> = snapshot.strings.iter().map(|s| self.interner.intern(s)).collect();
        for user in snapshot.users {
            let slot = self.users.slot(user.hash, &user.user_id, &self.job);
            let entry = &mut self.users.entries[slot as usize];
            entry.state = user.state;
            entry.state.remap(|id| ids[id as usize]);
            entry.has_view = user.has_view;
            if user.dirty && !entry.dirty {
                entry.dirty = true;
                self.dirty.push(slot);
            }
        }
        if !self.dirty.is_empty() {
            self.unflushed_since = Some(0);
        }
        snapshot.seen.into_iter().for_each(|e| self.seen.restore(e));
        snapshot
            .seen_late
            .into_iter()
            .for_each(|e| self.seen_late.restore(e));
        // Pending events were sent before the cut, in another run: they count as sent
        // at time 0 of this one (so the next cut keeps them), and wait for the same
        // time as before: an event pending at a cut was sent no later than its own
        // event time, as no capability runs ahead of its watermark.
        let restored: Vec<Event> = snapshot
            .pending
            .into_iter()
            .map(|(sent_at, event)| {
                debug_assert!(
                    sent_at <= to_millis(event.event_time),
                    "a pending event waits for its own time"
                );
                event
            })
            .collect();
        if !restored.is_empty() {
            self.pending.push(Pending {
                sent_at: 0,
                events: restored,
            });
        }
        self.max_clock = match (self.max_clock, snapshot.max_clock) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// Writes this worker's part of checkpoint `epoch`, cut at `at`.
    fn write_part(&self, checkpointing: &Checkpointing, epoch: u64, at: Millis) -> Result<PartEntry, String> {
        let dir = checkpointing.dir.as_ref().ok_or("no checkpoint directory")?;
        let ingest = checkpointing
            .ingest
            .as_ref()
            .filter(|i| i.epoch == epoch)
            .ok_or_else(|| format!("the ingest has no snapshot for epoch {epoch}"))?;
        let mut fold_counts = self.total.clone();
        fold_counts.merge(&self.counts);
        let part = PartView {
            epoch,
            cut: at,
            worker: checkpointing.worker,
            workers: checkpointing.workers,
            partitions: &ingest.partitions,
            ingest_counts: &ingest.counts,
            fold: self.snapshot_view(at),
            fold_counts,
        };
        crate::checkpoint::write_part_as(
            dir,
            epoch,
            checkpointing.worker,
            &part,
            self.users.entries.len() as u64,
            &ingest.partitions,
        )
        .map_err(|e| crate::error_chain(&e))
    }

    /// The state at the cut as a view that serializes exactly as a [`FoldSnapshot`].
    fn snapshot_view(&self, cut: Millis) -> FoldView<'_> {
        FoldView {
            strings: self.interner.strings(),
            users: &self.users.entries,
            seen: self.seen.entries().collect(),
            seen_late: self.seen_late.entries().collect(),
            pending: self
                .pending
                .iter()
                .filter(|batch| batch.sent_at < cut)
                .flat_map(|batch| batch.events.iter().map(move |e| (batch.sent_at, e)))
                .collect(),
            max_clock: self.max_clock,
        }
    }

    /// Views of the users that changed since the last flush.
    fn flush_dirty(&mut self, as_of: f64, out: &mut Vec<ViewRecord>) {
        let dirty = std::mem::take(&mut self.dirty);
        for index in &dirty {
            out.push(self.render(*index, as_of, true, false));
            self.users.entries[*index as usize].dirty = false;
        }
        self.dirty = dirty;
        self.dirty.clear();
        self.unflushed_since = None;
    }
}

impl<'s> FoldFeatures<'s> for Stream<'s, Millis, Vec<Event>> {
    fn fold_features(self, clocks: Stream<'s, Millis, Vec<f64>>, context: FoldContext) -> Folded<'s> {
        let scope = self.scope();
        let mut builder = OperatorBuilder::new("FoldFeatures".to_owned(), scope);
        let activator = scope.activator_for(builder.operator_info().address);
        let by_user = ExchangeCore::<Batcher<Event>, _>::new_core(|e: &Event| e.user_hash);
        let mut events_in = builder.new_input(self, by_user);
        let mut clocks_in = builder.new_input(clocks, Pipeline);
        let (views_out, views) = builder.new_output::<Vec<ViewRecord>>();
        let (dead_out, dead_letters) = builder.new_output::<Vec<DeadLetter>>();
        let mut views_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<ViewRecord>>>::from(views_out);
        let mut dead_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<DeadLetter>>>::from(dead_out);

        let FoldContext {
            job,
            counts: shared_counts,
            flush,
            metrics,
            checkpointing,
            restored,
            restored_counts,
            hold_unflushed,
        } = context;
        checkpointing.borrow_mut().wake.push(activator.clone());
        let observe = move |delta: &Counts| {
            if let Some(metrics) = &metrics {
                metrics.observe(delta);
            }
        };
        let mut fold = Fold::new(job);
        if !restored.is_empty() {
            let started = Instant::now();
            for snapshot in restored {
                fold.restore(snapshot);
            }
            tracing::debug!(
                users = fold.users.entries.len(),
                seconds = started.elapsed().as_secs_f64(),
                "state restored"
            );
        }
        fold.total = restored_counts;
        let mut last_flush = Instant::now();
        let mut last_frontier: Millis = 0;
        // Users still to write in the end-of-input snapshot, sorted by user id.
        let mut snapshot: Option<std::vec::IntoIter<u32>> = None;
        let mut snapshot_started = Instant::now();
        let mut dead = Vec::new();
        let mut views_buffer = Vec::new();

        builder.build(move |capabilities| {
            let mut capabilities = Some(capabilities);
            move |frontiers| {
                events_in.for_each(|cap, data| {
                    let sent_at = *cap.least().expect("totally ordered time");
                    fold.pending.push(Pending {
                        sent_at,
                        events: std::mem::take(data),
                    });
                });
                clocks_in.for_each(|_cap, data| {
                    for clock in data.drain(..) {
                        fold.max_clock = Some(fold.max_clock.map_or(clock, |m: f64| m.max(clock)));
                    }
                });
                let Some(caps) = capabilities.as_mut() else { return };
                let frontier = frontiers[0].frontier().first().copied();
                let clocks_done = frontiers[1].frontier().is_empty();

                // A checkpoint's cut: take this worker's part when the frontier is at it.
                let open_cut = {
                    let cp = checkpointing.borrow();
                    cp.cut
                        .filter(|(epoch, _)| cp.part.as_ref().map(|p| p.0) != Some(*epoch))
                };
                if let Some((epoch, at)) = open_cut {
                    let result = match frontier {
                        Some(f) if f < at => None,
                        Some(f) if f == at => {
                            fold.apply_ready(Some(at), &mut dead);
                            let started = Instant::now();
                            let result = fold.write_part(&checkpointing.borrow(), epoch, at);
                            tracing::debug!(
                                epoch,
                                users = fold.users.entries.len(),
                                seconds = started.elapsed().as_secs_f64(),
                                "checkpoint part written"
                            );
                            Some(result)
                        }
                        Some(_) => Some(Err(format!(
                            "the input frontier passed the cut of epoch {epoch} unseen"
                        ))),
                        None => Some(Err(format!("the input ended before the cut of epoch {epoch}"))),
                    };
                    if let Some(result) = result {
                        if let Err(problem) = &result
                            && frontier.is_some()
                        {
                            tracing::warn!(epoch, %problem, "checkpoint part not taken");
                        }
                        checkpointing.borrow_mut().part = Some((epoch, result));
                    }
                }
                if snapshot.is_none() {
                    fold.apply_ready(frontier, &mut dead);
                }
                if !dead.is_empty() {
                    dead_out.activate().session(&caps[1]).give_container(&mut dead);
                }

                match frontier {
                    Some(frontier) => {
                        last_frontier = last_frontier.max(frontier);
                        if let (FlushPolicy::Every(interval), false) = (flush, fold.dirty.is_empty()) {
                            let waited = last_flush.elapsed();
                            if waited >= interval {
                                fold.flush_dirty(frontier as f64 / 1000.0, &mut views_buffer);
                                last_flush = Instant::now();
                            } else {
                                activator.activate_after(interval - waited);
                            }
                        }
                        if !views_buffer.is_empty() {
                            views_out
                                .activate()
                                .session(&caps[0])
                                .give_container(&mut views_buffer);
                        }
                        let views_at = match fold.unflushed_since {
                            Some(t) if hold_unflushed => t.min(frontier),
                            _ => frontier,
                        };
                        for (cap, time) in caps.iter_mut().zip([views_at, frontier]) {
                            if *cap.time() < time {
                                cap.downgrade(&time);
                            }
                        }
                    }
                    None if !clocks_done => {}
                    None => {
                        // End of input: write every user's view, sorted by user id.
                        let queue = snapshot.get_or_insert_with(|| {
                            snapshot_started = Instant::now();
                            let entries = &fold.users.entries;
                            tracing::debug!(
                                users = entries.len(),
                                user_entry_bytes = entries.capacity() * std::mem::size_of::<UserEntry>(),
                                state_heap_bytes =
                                    entries.iter().map(|e| e.state.heap_bytes()).sum::<usize>(),
                                dedup_ids = fold.seen.len(),
                                interned = fold.interner.len(),
                                "fold footprint at the end of input"
                            );
                            let entries = &fold.users.entries;
                            let mut order: Vec<u32> = (0..entries.len() as u32)
                                .filter(|&i| entries[i as usize].has_view)
                                .collect();
                            order.sort_unstable_by(|&a, &b| {
                                entries[a as usize].user_id.cmp(&entries[b as usize].user_id)
                            });
                            fold.counts.users = order.len() as u64;
                            order.into_iter()
                        });
                        let as_of = fold.max_clock.unwrap_or(last_frontier as f64 / 1000.0);
                        for index in queue.by_ref().take(SNAPSHOT_CHUNK) {
                            let changed = fold.users.entries[index as usize].dirty;
                            fold.users.entries[index as usize].dirty = false;
                            views_buffer.push(fold.render(index, as_of, changed, true));
                        }
                        if !views_buffer.is_empty() {
                            views_out
                                .activate()
                                .session(&caps[0])
                                .give_container(&mut views_buffer);
                        }
                        if queue.len() > 0 {
                            activator.activate();
                        } else {
                            tracing::debug!(
                                seconds = snapshot_started.elapsed().as_secs_f64(),
                                "fold wrote its end-of-input snapshot"
                            );
                            let delta = std::mem::take(&mut fold.counts);
                            observe(&delta);
                            shared_counts.borrow_mut().merge(&delta);
                            fold.total.merge(&delta);
                            capabilities = None;
                            return;
                        }
                    }
                }
                let delta = std::mem::take(&mut fold.counts);
                observe(&delta);
                shared_counts.borrow_mut().merge(&delta);
                fold.total.merge(&delta);
            }
        });

        Folded { views, dead_letters }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{PartitionState, UserSnapshot, WorkerPart};

    /// A checkpoint is written from a view of the live state; it must be byte for
    /// byte what the owned snapshot would serialize to, or restores would fail.
    #[test]
    fn the_part_view_serializes_as_the_owned_part() {
        let job = Arc::new(
            Job::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/recsys.toml")).unwrap(),
        );
        let mut fold = Fold::new(job);
        let empty = UserState::new(&fold.job.features);
        let users = ["u1", "u2", "u3"].map(|u| UserSnapshot {
            user_id: u.into(),
            hash: crate::event::key_hash(u),
            state: empty.clone(),
            has_view: u != "u2",
            dirty: u == "u3",
        });
        let seen = crate::dedup::id_key(crate::event::key_hash("u1"), "e1");
        fold.restore(FoldSnapshot {
            strings: vec!["books".into(), "music".into()],
            users: users.to_vec(),
            seen: vec![(seen, 10.0, 0)],
            seen_late: Vec::new(),
            pending: Vec::new(),
            max_clock: Some(12.5),
        });
        let partitions = vec![PartitionState {
            name: "p0".into(),
            position: 7,
            max_seen: Some(12.5),
            finished: false,
        }];
        let counts = Counts {
            read: 9,
            ..Counts::default()
        };
        let owned = WorkerPart {
            epoch: 3,
            cut: 11_000,
            worker: 1,
            workers: 2,
            partitions: partitions.clone(),
            ingest_counts: counts.clone(),
            fold: fold.snapshot(11_000),
            fold_counts: counts.clone(),
        };
        let view = PartView {
            epoch: 3,
            cut: 11_000,
            worker: 1,
            workers: 2,
            partitions: &partitions,
            ingest_counts: &counts,
            fold: fold.snapshot_view(11_000),
            fold_counts: counts.clone(),
        };
        assert_eq!(owned.fold.users.len(), 3);
        assert_eq!(owned.fold.seen.len(), 1);
        assert_eq!(
            bincode::serialize(&view).unwrap(),
            bincode::serialize(&owned).unwrap()
        );
    }
}
