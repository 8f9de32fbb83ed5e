//! The per-user fold: deduplicate, apply the late policy, and fold each user's events
//! into its state in (event time, event id) order; emit views of the users that
//! changed, and the training rows whose label windows closed (their serving skew
//! counted as they leave).
//!
//! # Contract
//! Input events arrive exchanged by `user_hash`, so each user's state lives on one
//! worker. An event is applied once the input frontier has passed its event time
//! (for late events: the time it was sent at); events that become ready together are
//! applied in [`Event::apply_order`], which does not depend on arrival order, so the
//! result is the same for any number of workers and any interleaving of partitions.

pub mod dedup;
mod provisional;
mod shadow;
mod snapshot;
mod spine;
mod state;
mod trace;

use state::{Fold, Pending, UserEntry};

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{ExchangeCore, Pipeline};
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::checkpoint::FoldSnapshot;
use crate::checkpoint::protocol::Checkpointing;
use crate::dataflow::batch::Batcher;
use crate::dataflow::ingest::ClockReport;
use crate::dlq::letter::DeadLetter;
use crate::job::Job;
use crate::model::event::{Event, Millis};
use crate::model::training::SpineRows;
use crate::model::view::ViewRecord;
use crate::summary::Counts;

/// Views emitted per activation while a snapshot is written, to bound memory.
const SNAPSHOT_CHUNK: usize = 1024;

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
    /// This worker's rows of a spine file (`--spine`), sorted by `ts`: they replace
    /// the log's spine events.
    pub spine_rows: Option<Vec<crate::source::spine::SpineRow>>,
    /// A replay: `explain` traces its user's events through the fold; `diff` folds
    /// its second job beside the run's.
    pub replay: Option<crate::replay::Replay>,
    /// The worker's skew counting, when the export compares served features: the
    /// fold observes each spine event as its rows close, and keeps the counters in
    /// its checkpoints.
    pub skew: Option<Rc<RefCell<crate::dataflow::skew::SkewCounter>>>,
}

/// The fold's outputs.
pub struct Folded<'s> {
    /// Views to write.
    pub views: Stream<'s, Millis, Vec<ViewRecord>>,
    /// Late events dead-lettered.
    pub dead_letters: Stream<'s, Millis, Vec<DeadLetter>>,
    /// Training rows whose labels are final (none unless the job exports).
    pub rows: Stream<'s, Millis, Vec<SpineRows>>,
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
    /// use skewless::dataflow::ingest::decode::{Decoded, Decoder};
    /// use skewless::model::event::{Event, Position};
    /// use skewless::dataflow::fold::{FlushPolicy, FoldContext, FoldFeatures};
    /// use skewless::dataflow::ingest::ClockReport;
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
    ///     let clocks = vec![ClockReport::MaxSeen(10.0)].to_stream(scope).container::<Vec<_>>().broadcast();
    ///     let context = FoldContext {
    ///         job,
    ///         counts: Default::default(),
    ///         flush: FlushPolicy::AtEnd,
    ///         metrics: None,
    ///         checkpointing: Default::default(),
    ///         restored: Vec::new(),
    ///         restored_counts: Default::default(),
    ///         hold_unflushed: true,
    ///         spine_rows: None,
    ///         replay: None,
    ///         skew: None,
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
    fn fold_features(self, clocks: Stream<'s, Millis, Vec<ClockReport>>, context: FoldContext) -> Folded<'s>;
}

impl<'s> FoldFeatures<'s> for Stream<'s, Millis, Vec<Event>> {
    fn fold_features(self, clocks: Stream<'s, Millis, Vec<ClockReport>>, context: FoldContext) -> Folded<'s> {
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
        let (rows_out, rows) = builder.new_output::<Vec<SpineRows>>();
        let mut rows_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<SpineRows>>>::from(rows_out);

        let FoldContext {
            job,
            counts: shared_counts,
            flush,
            metrics,
            checkpointing,
            restored,
            restored_counts,
            hold_unflushed,
            spine_rows,
            replay,
            skew,
        } = context;
        checkpointing.borrow_mut().wake.push(activator.clone());
        let observe = {
            let metrics = metrics.clone();
            move |delta: &Counts| {
                if let Some(metrics) = &metrics {
                    metrics.observe(delta);
                }
            }
        };
        let mut fold = Fold::new(job);
        fold.skew = skew;
        match replay {
            Some(crate::replay::Replay::Explain(explaining)) => fold.trace = Some(explaining),
            Some(crate::replay::Replay::Diff(diffing)) => {
                fold.shadow = diffing
                    .second
                    .clone()
                    .map(|second| shadow::Shadow::new(second, diffing));
            }
            None => {}
        }
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
        if let FlushPolicy::Every(_) = flush {
            fold.online = Some(Default::default());
            fold.show_pending = fold.job.sinks.online == crate::job::OnlineViews::Provisional;
            // Restored pending events are pending again.
            let pending = std::mem::take(&mut fold.pending);
            for batch in &pending {
                fold.receive(&batch.events);
            }
            fold.pending = pending;
        }
        let worker = scope.index();
        if let Some(rows) = spine_rows {
            let before = fold.spine_before;
            fold.file_spine = Some(
                rows.into_iter()
                    .filter(|r| crate::model::event::to_millis(r.ts) >= before)
                    .collect(),
            );
        }
        let mut last_flush = Instant::now();
        let mut last_frontier: Millis = 0;
        // The limit events were last applied up to.
        let mut applied: Millis = 0;
        let mut stopped_at: Option<f64> = None;
        // Users still to write in the end-of-input snapshot, sorted by user id.
        let mut snapshot: Option<std::vec::IntoIter<u32>> = None;
        let mut snapshot_started = Instant::now();
        let mut dead = Vec::new();
        let mut views_buffer = Vec::new();
        let mut rows_buffer: Vec<SpineRows> = Vec::new();
        let keep_open_rows_on_stop = checkpointing.borrow().dir.is_some();

        builder.build(move |capabilities| {
            let mut capabilities = Some(capabilities);
            move |frontiers| {
                events_in.for_each(|cap, data| {
                    let sent_at = *cap.least().expect("totally ordered time");
                    fold.receive(data);
                    fold.pending.push(Pending::new(sent_at, std::mem::take(data)));
                });
                clocks_in.for_each(|_cap, data| {
                    for report in data.drain(..) {
                        match report {
                            ClockReport::MaxSeen(clock) => {
                                fold.max_clock = Some(fold.max_clock.map_or(clock, |m: f64| m.max(clock)));
                            }
                            ClockReport::StoppedAt(at) => {
                                stopped_at = Some(stopped_at.map_or(at, |s: f64| s.min(at)));
                            }
                        }
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
                            // Only what no unread record can precede (see the protocol).
                            let safe = checkpointing.borrow().cut_safe.min(at);
                            fold.apply_ready(Some(safe), &mut dead);
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
                // What may be applied: before the frontier, except around a cut.
                let limit = frontier.map(|f| checkpointing.borrow().apply_limit(f, applied));
                if let Some(limit) = limit {
                    applied = applied.max(limit);
                }
                if snapshot.is_none() {
                    fold.apply_ready(limit, &mut dead);
                }
                if !dead.is_empty() {
                    dead_out.activate().session(&caps[1]).give_container(&mut dead);
                }

                // Rows close on what was applied: their labels count the outcomes before
                // the limit.
                if let (Some(spine), Some(export), Some(limit)) =
                    (fold.spine.as_mut(), fold.job.export.as_ref(), limit)
                {
                    spine.close_before(export, limit, &mut rows_buffer);
                }
                if !rows_buffer.is_empty() {
                    fold.observe_skew(&mut rows_buffer);
                    rows_out
                        .activate()
                        .session(&caps[2])
                        .give_container(&mut rows_buffer);
                }

                match frontier {
                    Some(frontier) => {
                        last_frontier = last_frontier.max(frontier);
                        if let (FlushPolicy::Every(interval), true) = (flush, fold.flush_due()) {
                            let waited = last_flush.elapsed();
                            if waited >= interval {
                                // Exact as of what was applied.
                                fold.flush_dirty(applied as f64 / 1000.0, &mut views_buffer);
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
                        for (cap, time) in caps.iter_mut().zip([views_at, frontier, frontier]) {
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
                                export = ?fold.spine.as_ref().map(|s| s.footprint()),
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
                        // A complete input is complete up to the largest time seen; a
                        // stopped one up to where the slowest stopped worker's
                        // watermark was.
                        let as_of = stopped_at
                            .or(fold.max_clock)
                            .unwrap_or(last_frontier as f64 / 1000.0);
                        // Open rows: written now, a chunk per activation, unless a
                        // stopped run's checkpoint keeps them for the run that
                        // resumes it.
                        let rows_left = match (fold.spine.as_mut(), fold.job.export.as_ref()) {
                            (Some(spine), Some(export))
                                if !(stopped_at.is_some() && keep_open_rows_on_stop) =>
                            {
                                !spine.close_all(export, fold.max_clock, SNAPSHOT_CHUNK, &mut rows_buffer)
                            }
                            _ => false,
                        };
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
                        if !rows_buffer.is_empty() {
                            fold.observe_skew(&mut rows_buffer);
                            rows_out
                                .activate()
                                .session(&caps[2])
                                .give_container(&mut rows_buffer);
                        }
                        if queue.len() > 0 || rows_left {
                            activator.activate();
                        } else {
                            tracing::debug!(
                                seconds = snapshot_started.elapsed().as_secs_f64(),
                                "fold wrote its end-of-input snapshot"
                            );
                            if let Some(shadow) = fold.shadow.take() {
                                shadow.gather();
                            }
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
                if let Some(metrics) = &metrics {
                    metrics.pending_events(worker, fold.pending_events());
                }
            }
        });

        Folded {
            views,
            dead_letters,
            rows,
        }
    }
}
