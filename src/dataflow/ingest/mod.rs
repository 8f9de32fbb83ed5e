//! The ingest operator: reads a [`Source`], decodes and validates each record, keeps
//! the partition clocks, and splits the result into events, dead letters and clock
//! reports. Every source feeds the dataflow through this one operator. It also decides
//! when a streaming run stops (signal, or every partition idle), archives what it reads
//! when the job keeps an archive, and commits source positions once everything derived
//! from them is durable.
//!
//! # Contract
//! Events leave at the worker's watermark (the operator's capability) and carry their
//! own event time; an event that is not late has `to_millis(event_time)` at or above
//! the time it leaves at, so downstream may apply an event once the frontier has
//! passed its event time. Late events are flagged and leave at the watermark. A batch
//! of records is durable once the `durable` probe's frontier has passed the latest time
//! its outputs can carry (the largest event time among its on-time events, or the time
//! it left at).

mod blocking;
pub mod decode;
mod fast;
mod json;
mod replay;
pub mod split;
pub mod watermark;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{ProbeHandle, Scope, Stream};

use crate::checkpoint::PartitionState;
use crate::checkpoint::protocol::{Checkpointing, Gate, OpenCut};
use crate::dataflow::batch::Batcher;
use crate::dataflow::ingest::decode::{Decoded, Decoder, Rejection};
use crate::dataflow::ingest::watermark::{Clocks, RecentMax};
use crate::dlq::letter::{DeadLetter, Reason};
use crate::job::Job;
use crate::metrics::Metrics;
use crate::model::event::{Event, LateRecord, Millis, Position, key_hash, to_millis};
use crate::replay::explain::Outcome;
use crate::sinks::archive::Archive;
use crate::source::{Read, Record, Source, SourceError};
use crate::summary::Counts;
pub use blocking::Blocking;

/// What the ingest operator shares with the rest of its worker. The default shares
/// nothing with anyone: fresh counters, no metrics, no checkpoints, nothing restored.
#[derive(Clone, Default)]
pub struct IngestShared {
    /// The worker's counters.
    pub counts: Rc<RefCell<Counts>>,
    /// The first fatal source error, if any.
    pub error: Rc<RefCell<Option<SourceError>>>,
    /// Records read by this process (for progress reporting).
    pub progress: Arc<AtomicU64>,
    /// The largest event time this worker's partitions have seen.
    pub max_event_time: Rc<Cell<Option<f64>>>,
    /// The watermark (seconds) this worker stopped at, when a stop request ended its
    /// reading before the end of a bounded input.
    pub stopped_at: Rc<Cell<Option<f64>>>,
    /// Set (by a signal handler) to stop reading and finish cleanly.
    pub stop: Arc<AtomicBool>,
    /// Marks the source's reads (in slot `reading.1`), so that a stop request can tell
    /// a read that never returns (a FIFO without a writer, `/dev/zero`) from a worker
    /// at work.
    pub reading: (Blocking, usize),
    /// The positions to commit once the dataflow has finished: set when the operator
    /// stops reading, so the worker can commit after every sink has flushed.
    pub final_positions: FinalPositions,
    /// Metrics, when the run exports them.
    pub metrics: Option<Arc<Metrics>>,
    /// The worker's part in taking checkpoints.
    pub checkpointing: Rc<RefCell<Checkpointing>>,
    /// Restored state of this worker's partitions (by index), when resuming.
    pub restored: Vec<Option<PartitionState>>,
    /// Ingest counts carried over from a checkpoint.
    pub restored_counts: Counts,
    /// `explain` runs: only the records of the user asked about reach the fold;
    /// every other record only moves its partition's clock.
    pub explain: Option<Arc<crate::replay::explain::Explaining>>,
}

/// What a worker's ingest tells every fold about its partitions' clocks.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ClockReport {
    /// The largest event time (seconds) any of its partitions has seen grew to this.
    MaxSeen(f64),
    /// It stopped before the end of its input (a stop request) with its watermark
    /// here (seconds): views written at the end are complete up to the smallest such
    /// watermark, not up to the largest time seen.
    StoppedAt(f64),
}

/// Where a worker's partitions stood when it stopped reading: `(partition, position)`.
pub type FinalPositions = Rc<RefCell<Option<Vec<(usize, i64)>>>>;

/// Most records read per activation. A quiet stream yields what is queued, so a large
/// bound costs no freshness; with a backlog, 4k-record batches left a third of the
/// broker's read rate unused (scripts/bench-stream.sh). Workers run up to a few batches
/// ahead of each other, so memory in flight grows with it: 64k-record batches held
/// ~85 MiB more than 16k in the 5M-event backfill bench, for no measurable speed.
pub const DEFAULT_BATCH: usize = 1 << 14;

/// How long a partition waits for the watermark (not read, see `Clocks::ahead`) before
/// the source stops fetching it too ([`Source::hold`]).
const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// Whether a partition is read, or waits for the watermark.
#[derive(Debug, Clone, Copy)]
enum Hold {
    Reading,
    /// Not read since then; the source still fetches it.
    Waiting(Instant),
    /// Not read, and the source no longer fetches it.
    Paused,
}

/// How the ingest operator paces itself and when it stops.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// Most records read per activation.
    pub batch: usize,
    /// How far (event time, ms) this worker's watermark may run ahead of the slowest
    /// worker's before it waits, at least. The bound grows to a few batches' worth of
    /// event time, so sparse data (hours per batch) does not make workers take turns.
    pub max_skew_ms: Millis,
    /// Stop once every partition has had no record for this long (streaming runs).
    pub exit_when_idle: Option<Duration>,
    /// How often durable positions are committed.
    pub commit_interval: Duration,
    /// Source positions are committed at all (a replay reads without committing).
    pub commits: bool,
    /// How soon to look again when no partition had records.
    pub idle_poll: Duration,
    /// Stop (as a stop request does) once this worker has read this many records.
    pub stop_after: Option<u64>,
    /// The input has an end (files): a stop request before it interrupts the run.
    pub bounded: bool,
    /// On a stop request, stop reading but finish only once a checkpoint taken after
    /// the request is complete, so that running again resumes exactly where this run
    /// stopped (bounded runs with checkpoints).
    pub checkpoint_on_stop: bool,
}

impl Default for Pacing {
    /// A bounded input read in batches of 16k records, no stop but its end.
    fn default() -> Pacing {
        Pacing {
            batch: DEFAULT_BATCH,
            max_skew_ms: 60_000,
            exit_when_idle: None,
            commit_interval: Duration::from_secs(1),
            commits: true,
            idle_poll: Duration::from_millis(20),
            stop_after: None,
            bounded: true,
            checkpoint_on_stop: false,
        }
    }
}

/// The streams the ingest operator produces.
pub struct Ingested<'s> {
    /// Accepted events (not yet deduplicated).
    pub events: Stream<'s, Millis, Vec<Event>>,
    /// Dead letters of records that failed decoding.
    pub dead_letters: Stream<'s, Millis, Vec<DeadLetter>>,
    /// The largest event time each worker's partitions have seen, when it grows, and
    /// where a worker stopped.
    pub clocks: Stream<'s, Millis, Vec<ClockReport>>,
}

/// Positions of records read but not yet durable, oldest first.
#[derive(Default)]
struct Uncommitted {
    /// `(time the batch is durable after, positions it reached)`.
    batches: VecDeque<(Millis, Vec<(usize, i64)>)>,
    /// Positions whose outputs are durable and not yet committed.
    durable: BTreeMap<usize, i64>,
    last_commit: Option<Instant>,
}

impl Uncommitted {
    /// Moves batches the `durable` probe has passed into the committable positions.
    fn settle(&mut self, durable: &ProbeHandle<Millis>) {
        while let Some((time, _)) = self.batches.front() {
            if durable.less_equal(time) {
                break;
            }
            let (_, positions) = self.batches.pop_front().expect("front exists");
            self.durable.extend(positions);
        }
    }

    /// Commits what is durable (and archived, when there is an archive), at most once
    /// per `interval`.
    fn commit<S: Source>(
        &mut self,
        source: &mut S,
        archive: Option<&Archive>,
        interval: Duration,
        now: Instant,
    ) -> Result<(), SourceError> {
        if self.durable.is_empty() || self.last_commit.is_some_and(|t| now.duration_since(t) < interval) {
            return Ok(());
        }
        let positions: Vec<(usize, i64)> = self
            .durable
            .iter()
            .map(|(&p, &position)| (p, archive.map_or(position, |a| position.min(a.durable(p)))))
            .collect();
        source.commit_in_background(&positions)?;
        if archive.is_none() {
            self.durable.clear();
        }
        self.last_commit = Some(now);
        Ok(())
    }
}

/// Reading a source into the dataflow: the first operator of every job.
pub trait Ingest<'s> {
    /// Builds the ingest operator over `source`: records decoded, validated, upcast and
    /// timed against their partition's clock, out as events, dead letters and clock
    /// reports. `global` is a probe of the clocks stream (whose capability moves with
    /// the events'), which shows the slowest worker's watermark; `durable` is a probe
    /// after the sinks, which shows what is durable.
    ///
    /// ```
    /// use std::cell::RefCell;
    /// use std::rc::Rc;
    /// use std::sync::Arc;
    /// use timely::dataflow::ProbeHandle;
    /// use timely::dataflow::operators::capture::{Capture, Event as Captured};
    /// use skewless::dataflow::ingest::{Ingest, IngestShared, Pacing};
    /// use skewless::job::Job;
    /// use skewless::source::file::{FileSource, resolve_partitions};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let log = dir.path().join("events.jsonl");
    /// std::fs::write(
    ///     &log,
    ///     concat!(
    ///         r#"{"event_id":"a","event_type":"session.started","event_version":"1.0","event_time":10,"user_id":"u1"}"#,
    ///         "\n{not json\n",
    ///     ),
    /// )
    /// .unwrap();
    /// let job = Arc::new(Job::load("jobs/recsys.toml".as_ref()).unwrap());
    /// let partitions = resolve_partitions(&[log.display().to_string()]).unwrap();
    /// let (events, letters) = timely::example(move |scope| {
    ///     let source = Rc::new(RefCell::new(FileSource::new(partitions, job.max_event_bytes)));
    ///     let shared = IngestShared::default();
    ///     let (global, durable) = (ProbeHandle::new(), ProbeHandle::new());
    ///     let ingested = scope.ingest(source, None, job, shared, Pacing::default(), global, durable);
    ///     (ingested.events.capture(), ingested.dead_letters.capture())
    /// });
    /// let data = |captured: Captured<u64, Vec<_>>| match captured {
    ///     Captured::Messages(_time, data) => data,
    ///     Captured::Progress(_) => Vec::new(),
    /// };
    /// let events: Vec<_> = events.try_iter().flat_map(data).collect();
    /// let letters: Vec<_> = letters.try_iter().flat_map(|c| match c {
    ///     Captured::Messages(_time, data) => data,
    ///     Captured::Progress(_) => Vec::new(),
    /// }).collect();
    /// assert_eq!(events.len(), 1);
    /// assert_eq!(events[0].user_id, "u1");
    /// assert_eq!(letters.len(), 1);
    /// assert_eq!(letters[0].reason.as_str(), "invalid_json");
    /// assert_eq!(letters[0].origin.offset, 2, "the line it was read from");
    /// ```
    #[allow(clippy::too_many_arguments)]
    fn ingest<S: Source + 'static>(
        self,
        source: Rc<RefCell<S>>,
        archive: Option<Archive>,
        job: Arc<Job>,
        shared: IngestShared,
        pacing: Pacing,
        global: ProbeHandle<Millis>,
        durable: ProbeHandle<Millis>,
    ) -> Ingested<'s>;
}

impl<'s> Ingest<'s> for Scope<'s, Millis> {
    fn ingest<S: Source + 'static>(
        self,
        source: Rc<RefCell<S>>,
        archive: Option<Archive>,
        job: Arc<Job>,
        shared: IngestShared,
        pacing: Pacing,
        global: ProbeHandle<Millis>,
        durable: ProbeHandle<Millis>,
    ) -> Ingested<'s> {
        build(self, source, archive, job, shared, pacing, global, durable)
    }
}

#[allow(clippy::too_many_arguments)]
fn build<'s, S: Source + 'static>(
    scope: Scope<'s, Millis>,
    source: Rc<RefCell<S>>,
    mut archive: Option<Archive>,
    job: Arc<Job>,
    shared: IngestShared,
    pacing: Pacing,
    global: ProbeHandle<Millis>,
    durable: ProbeHandle<Millis>,
) -> Ingested<'s> {
    let mut builder = OperatorBuilder::new("Ingest".to_owned(), scope);
    let address = builder.operator_info().address;
    let activator = scope.activator_for(Rc::clone(&address));
    let waker = scope.worker().sync_activator_for(address.to_vec());
    source.borrow_mut().set_waker(Arc::new(move || {
        let _ = waker.activate();
    }));
    let (events_out, events) = builder.new_output::<Vec<Event>>();
    let (dead_out, dead_letters) = builder.new_output::<Vec<DeadLetter>>();
    let (clock_out, clocks) = builder.new_output::<Vec<ClockReport>>();
    let mut events_out = OutputBuilder::<_, Batcher<Event>>::from(events_out);
    let mut dead_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<DeadLetter>>>::from(dead_out);
    let mut clock_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<ClockReport>>>::from(clock_out);

    let names = source.borrow().partition_names();
    let partition_hashes: Vec<u64> = source
        .borrow()
        .partition_keys()
        .iter()
        .map(|n| key_hash(n))
        .collect();
    let lateness = job.allowed_lateness_secs();
    let mut partition_clocks = Clocks::new(names.len(), lateness, job.time.idle_timeout.duration());
    let max_partition_skew = job.time.max_partition_skew.as_secs_f64();
    // Partitions not read because they ran ahead (`Clocks::ahead`).
    let mut held = vec![Hold::Reading; names.len()];
    let mut order = Vec::new();
    let mut reported_max = f64::NEG_INFINITY;
    let mut batch_span_ms: Millis = 0;
    // The largest batch span lately (seconds of event time), halving every second.
    let mut recent_span = RecentMax::default();
    let mut uncommitted = Uncommitted::default();
    for partition in 0..names.len() {
        let start = source.borrow().start_clock(partition);
        if start.is_some() {
            partition_clocks.restore(partition, start, false);
        }
    }
    for (partition, state) in shared.restored.iter().enumerate() {
        if let Some(state) = state {
            partition_clocks.restore(partition, state.max_seen, state.finished);
        }
    }
    // The counts since the start of the job, for checkpoints.
    let mut total = shared.restored_counts.clone();
    let part_names = names.clone();
    let snapshot_partitions = move |source: &S, clocks: &Clocks| -> Vec<PartitionState> {
        part_names
            .iter()
            .enumerate()
            .map(|(p, name)| {
                let (max_seen, finished) = clocks.snapshot(p);
                PartitionState {
                    name: name.clone(),
                    position: source.position(p),
                    max_seen,
                    finished,
                    digest: source.digest(p),
                }
            })
            .collect()
    };
    let archive_only = job.archive_only();
    let scope_index = scope.index();
    // Records read by this run (not those a checkpoint carried over), for `stop_after`.
    let mut read_here: u64 = 0;
    // Set once a stop request is draining into a checkpoint: the newest checkpoint
    // requested before the stop, which the final checkpoint must be newer than.
    let mut draining: Option<u64> = None;
    // `explain` runs: records of other users whose time may still move a clock.
    let mut unverified = replay::Unverified::new(names.len());

    builder.build(move |capabilities| {
        let mut capabilities = Some(capabilities);
        move |_frontiers| {
            let Some(caps) = capabilities.as_mut() else { return };
            let now = Instant::now();
            let mut source = source.borrow_mut();
            let fail = |error: SourceError| *shared.error.borrow_mut() = Some(error);

            // Without checkpoints, commit what the sinks (and the archive) have made
            // durable; with them, offsets are committed from completed checkpoints.
            let checkpointing = shared.checkpointing.borrow().enabled();
            if !checkpointing && pacing.commits {
                uncommitted.settle(&durable);
                if let Err(error) =
                    uncommitted.commit(&mut *source, archive.as_ref(), pacing.commit_interval, now)
                {
                    fail(error);
                    capabilities = None;
                    return;
                }
            }

            // Take part in a checkpoint: pause while the cut is agreed; snapshot once the
            // watermark reaches it, then hold the capability there until the fold has
            // its part.
            let gate = shared
                .checkpointing
                .borrow_mut()
                .gate(*caps[0].time(), partition_clocks.watermark());
            let mut cut = match gate {
                Gate::Pause => {
                    activator.activate_after(Duration::from_millis(1));
                    return;
                }
                Gate::Run { cut } => cut,
            };
            let snapshot_at =
                |cut: &mut Option<OpenCut>, source: &S, clocks: &Clocks, total: &Counts, reached: bool| {
                    if let Some(open) = cut.as_mut()
                        && !open.snapshotted
                        && reached
                    {
                        let partitions = snapshot_partitions(source, clocks);
                        shared
                            .checkpointing
                            .borrow_mut()
                            .snapshot(*open, partitions, total.clone());
                        open.snapshotted = true;
                    }
                };

            // Stop on a signal, or once every partition has been idle long enough.
            let idle_exit = pacing
                .exit_when_idle
                .is_some_and(|d| partition_clocks.idle_for(now) >= d);
            if pacing.stop_after.is_some_and(|limit| read_here >= limit) {
                shared.stop.store(true, Ordering::Relaxed);
            }
            let stop_requested = shared.stop.load(Ordering::Relaxed);
            let finished = partition_clocks.all_finished();
            let stopping = stop_requested || idle_exit || finished;
            // A bounded run stopped before its end reads nothing more, takes part in
            // one more checkpoint (the snapshot at its cut is immediate: everything
            // this worker sent is before it) and finishes once that one is complete.
            if stop_requested && !finished && pacing.checkpoint_on_stop {
                let checkpointing = shared.checkpointing.borrow();
                let since = *draining.get_or_insert(checkpointing.request.unwrap_or(0));
                let done = checkpointing.last_complete.is_some_and(|epoch| epoch > since);
                drop(checkpointing);
                if !done {
                    if let Some(open) = cut {
                        snapshot_at(&mut cut, &source, &partition_clocks, &total, true);
                        for cap in caps.iter_mut() {
                            if *cap.time() < open.at {
                                cap.downgrade(&open.at);
                            }
                        }
                    }
                    activator.activate_after(Duration::from_millis(1));
                    return;
                }
            }
            if stopping {
                if let Some(Err(error)) = archive.as_mut().map(Archive::close_all) {
                    fail(SourceError::Archive(error.to_string()));
                }
                if stop_requested && !finished && pacing.bounded {
                    let at = partition_clocks.watermark() as f64 / 1000.0;
                    shared.stopped_at.set(Some(at));
                    clock_out
                        .activate()
                        .session(&caps[2])
                        .give(ClockReport::StoppedAt(at));
                }
                // Everything this worker sent is before an open cut.
                snapshot_at(&mut cut, &source, &partition_clocks, &total, true);
                let positions = (0..names.len()).map(|p| (p, source.position(p))).collect();
                *shared.final_positions.borrow_mut() = Some(positions);
                let partitions = snapshot_partitions(&source, &partition_clocks);
                shared.checkpointing.borrow_mut().finished = Some((partitions, total.clone()));
                capabilities = None;
                return;
            }

            let watermark = partition_clocks.watermark();
            let reached = cut.is_some_and(|c| watermark >= c.at);
            snapshot_at(&mut cut, &source, &partition_clocks, &total, reached);
            // The capability catches up with the watermark, up to an open cut.
            let bound = |target: Millis, cut: &Option<OpenCut>| match cut {
                Some(open) if open.snapshotted => target.min(open.at),
                _ => target,
            };
            let catch_up = bound(watermark, &cut);
            for cap in caps.iter_mut() {
                if *cap.time() < catch_up {
                    cap.downgrade(&catch_up);
                }
            }
            // Wait while this worker is far ahead of the slowest one.
            let skew = pacing.max_skew_ms.max(batch_span_ms.saturating_mul(4));
            if global.less_than(&watermark.saturating_sub(skew)) {
                // Not read, so not idle: a worker waiting for a slower one must not
                // take the wait for the end of its stream.
                partition_clocks.touch_all(now);
                activator.activate_after(Duration::from_millis(1));
                return;
            }
            // Partitions kept in step: the configured bound, widened to a few batches'
            // worth of event time while the watermark moves that fast (a backlog), so
            // that partitions do not take turns there; within seconds of the watermark
            // stalling it is the configured bound again.
            let partition_skew = max_partition_skew.max(recent_span.at(now) * 4.0);
            let decoder = Decoder::new(&job.registry, job.max_event_bytes);
            let mut counts = Counts::default();
            let mut failure = None;
            let mut touched: Vec<usize> = Vec::new();
            let mut batch_time = watermark;
            let explain = shared.explain.as_deref();
            // Event times of the records read (any user's), for `explain`.
            let mut span = (f64::INFINITY, f64::NEG_INFINITY);
            {
                let mut events_handle = events_out.activate();
                let mut dead_handle = dead_out.activate();
                let mut events = events_handle.session_with_builder(&caps[0]);
                let mut dead = dead_handle.session(&caps[1]);
                partition_clocks.reading_order(&mut order);
                let mut budget = match pacing.stop_after {
                    Some(limit) => pacing.batch.min(limit.saturating_sub(read_here) as usize),
                    None => pacing.batch,
                };
                for &partition in &order {
                    if budget == 0 {
                        break;
                    }
                    // A partition far ahead of the slowest one waits for the watermark,
                    // so that what is pending stays bounded; it has records, so it is
                    // not idle. Its fetching stops only once it has waited a while:
                    // catching up on a backlog, partitions take turns ahead many times
                    // a second, and pausing each turn would throw away what the
                    // consumer prefetched.
                    let ahead = partition_clocks.ahead(partition, partition_skew);
                    let change = match (ahead, held[partition]) {
                        (true, Hold::Reading) => {
                            held[partition] = Hold::Waiting(now);
                            None
                        }
                        (true, Hold::Waiting(since)) if now.duration_since(since) >= PAUSE_AFTER => {
                            held[partition] = Hold::Paused;
                            Some(true)
                        }
                        (false, Hold::Paused) => {
                            held[partition] = Hold::Reading;
                            Some(false)
                        }
                        (false, _) => {
                            held[partition] = Hold::Reading;
                            None
                        }
                        (true, _) => None,
                    };
                    if let Some(pause) = change
                        && let Err(error) = source.hold(partition, pause)
                    {
                        failure = Some(error);
                        break;
                    }
                    if ahead {
                        partition_clocks.touch(partition, now);
                        continue;
                    }
                    let mut emit = |record: Record<'_>| {
                        counts.read += 1;
                        // A read that hands out records is at work, not stuck: the
                        // mark says when the last records came (decoding them under
                        // load may take longer than the watchdog's patience).
                        if counts.read % 1024 == 0 {
                            shared.reading.0.enter(shared.reading.1);
                        }
                        let archived = archive
                            .as_mut()
                            .map(|a| a.append(partition, record.offset, record.bytes, now));
                        if let Some(Err(error)) = archived {
                            failure.get_or_insert(SourceError::Archive(error.to_string()));
                        }
                        if archive_only {
                            partition_clocks.touch(partition, now);
                            counts.archived += 1;
                            return;
                        }
                        if let Some(explain) = explain
                            && record.oversized_len.is_none()
                            && !explain.may_hold(record.bytes)
                        {
                            // Someone else's record: only its clock matters.
                            counts.ignored += 1;
                            let time = unverified.note(
                                &decoder,
                                &mut partition_clocks,
                                partition,
                                record.bytes,
                                now,
                            );
                            replay::widen(&mut span, time);
                            return;
                        }
                        let decoded = match record.oversized_len {
                            Some(len) => Decoded::Rejected(Rejection {
                                reason: Reason::Oversized,
                                detail: format!(
                                    "{len} bytes, more than max_event_bytes = {}",
                                    job.max_event_bytes
                                ),
                                event_time: None,
                                parsed: false,
                            }),
                            None => decoder.decode(record.bytes),
                        };
                        if explain.is_some() {
                            replay::widen(&mut span, decoded.event_time());
                        }
                        match decoded {
                            Decoded::Event(event) => {
                                // `explain`: the clock exact before the user's event is judged.
                                if explain.is_some() {
                                    unverified.settle(&decoder, &mut partition_clocks, partition, now);
                                }
                                let clock = partition_clocks.clock(partition);
                                let watermark = partition_clocks.watermark();
                                let late = partition_clocks.observe(partition, event.event_time, now);
                                if explain.is_some_and(|e| event.user_id != e.user) {
                                    counts.ignored += 1;
                                    return;
                                }
                                if !late {
                                    batch_time = batch_time.max(to_millis(event.event_time));
                                }
                                let position = Position {
                                    partition: partition_hashes[partition],
                                    offset: record.sequence,
                                };
                                let mut event = Event::accepted(event, position);
                                event.late = late;
                                if let (Some(explain), true) = (explain, late) {
                                    explain.late(
                                        position,
                                        replay::late_by(clock, watermark, lateness, event.event_time),
                                    );
                                }
                                // A late event may be dead-lettered by the fold, and so
                                // may one whose numbers could make a sum overflow; an
                                // explained event keeps its record for the trace.
                                if late || event.has_huge_number() || explain.is_some() {
                                    event.late_record = Some(Box::new(LateRecord {
                                        text: String::from_utf8_lossy(record.bytes.trim_ascii()).into_owned(),
                                        origin: record.origin(),
                                    }));
                                }
                                events.give(event);
                            }
                            Decoded::Ignored { event_time } => {
                                partition_clocks.observe(partition, event_time, now);
                                counts.ignored += 1;
                                if let Some(explain) = explain {
                                    explain.refused(record.bytes, record.origin(), Outcome::Ignored);
                                }
                            }
                            Decoded::Rejected(rejection) => {
                                if let Some(explain) = explain
                                    && rejection.parsed
                                {
                                    explain.refused(
                                        record.bytes,
                                        record.origin(),
                                        replay::rejected(&rejection),
                                    );
                                }
                                match rejection.event_time {
                                    Some(event_time) => {
                                        partition_clocks.observe(partition, event_time, now);
                                    }
                                    None => partition_clocks.touch(partition, now),
                                }
                                counts.dead_letter(rejection.reason);
                                dead.give(DeadLetter::first_attempt(
                                    &job.name,
                                    record.origin(),
                                    record.bytes,
                                    rejection.parsed,
                                    rejection.reason,
                                    rejection.detail,
                                ));
                            }
                        }
                    };
                    shared.reading.0.enter(shared.reading.1);
                    let read = source.read(partition, budget, &mut emit);
                    shared.reading.0.leave(shared.reading.1);
                    match read {
                        Ok(Read::Records(n)) => {
                            budget = budget.saturating_sub(n);
                            touched.push(partition);
                        }
                        Ok(Read::Empty) => partition_clocks.poll_empty(partition, now),
                        Ok(Read::Waiting) => partition_clocks.touch(partition, now),
                        Ok(Read::Finished) => partition_clocks.finish(partition),
                        Err(error) => {
                            failure = Some(error);
                            break;
                        }
                    }
                    if failure.is_some() {
                        break;
                    }
                }
            }
            if let Some(explain) = explain {
                unverified.settle_all(&decoder, &mut partition_clocks, now);
                explain.saw(span.0, span.1);
            }
            shared.progress.fetch_add(counts.read, Ordering::Relaxed);
            read_here += counts.read;
            if let Some(metrics) = &shared.metrics {
                metrics.observe(&counts);
                let wall = crate::dlq::letter::wall_clock_seconds() as i64;
                metrics.watermark_lag(scope_index, wall - (partition_clocks.watermark() / 1000) as i64);
            }
            shared.counts.borrow_mut().merge(&counts);
            total.merge(&counts);
            if let Some(error) = failure {
                fail(error);
                capabilities = None;
                return;
            }
            if let Some(Err(error)) = archive.as_mut().map(|a| a.roll_due(now)) {
                fail(SourceError::Archive(error.to_string()));
                capabilities = None;
                return;
            }
            if !touched.is_empty() {
                let positions: Vec<(usize, i64)> = touched.iter().map(|&p| (p, source.position(p))).collect();
                if archive_only {
                    // Nothing flows downstream: the archive alone decides durability.
                    uncommitted.durable.extend(positions);
                } else {
                    uncommitted.batches.push_back((batch_time, positions));
                }
            }
            if let Some(max) = partition_clocks.max_seen().filter(|&m| m > reported_max) {
                reported_max = max;
                shared.max_event_time.set(Some(max));
                clock_out
                    .activate()
                    .session(&caps[2])
                    .give(ClockReport::MaxSeen(max));
            }
            let advanced = partition_clocks.advance();
            let reached = cut.is_some_and(|c| advanced >= c.at);
            snapshot_at(&mut cut, &source, &partition_clocks, &total, reached);
            let next = bound(advanced, &cut);
            batch_span_ms = advanced.saturating_sub(watermark);
            // The first move, from nothing seen to the first clocks, is no batch's span:
            // it would keep the partition bound wide for half a minute.
            if watermark > 0 {
                recent_span.observe(batch_span_ms as f64 / 1000.0, now);
            }
            for cap in caps.iter_mut() {
                if *cap.time() < next {
                    cap.downgrade(&next);
                }
            }
            if touched.is_empty() && !partition_clocks.all_finished() {
                activator.activate_after(pacing.idle_poll);
            } else {
                activator.activate();
            }
        }
    });

    Ingested {
        events,
        dead_letters,
        clocks,
    }
}
