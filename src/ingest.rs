//! The ingest operator: reads a [`Source`], decodes and validates each record, keeps
//! the partition clocks, and splits the result into events, dead letters and clock
//! reports. Every source feeds the dataflow through this one operator.
//!
//! # Contract
//! Events leave at the worker's watermark (the operator's capability) and carry their
//! own event time; an event that is not late has `to_millis(event_time)` at or above
//! the time it leaves at, so downstream may apply an event once the frontier has
//! passed its event time. Late events are flagged and leave at the watermark.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{ProbeHandle, Scope, Stream};

use crate::batch::Batcher;
use crate::dead_letter::{DeadLetter, Reason};
use crate::decode::{Decoded, Decoder};
use crate::event::{Event, LateRecord, Millis, Position, key_hash};
use crate::job::Job;
use crate::source::{Read, Record, Source, SourceError};
use crate::summary::Counts;
use crate::watermark::Clocks;

/// What the ingest operator shares with the rest of its worker.
#[derive(Clone)]
pub struct IngestShared {
    /// The worker's counters.
    pub counts: Rc<RefCell<Counts>>,
    /// The first fatal source error, if any.
    pub error: Rc<RefCell<Option<SourceError>>>,
    /// Records read by this process (for progress reporting).
    pub progress: Arc<AtomicU64>,
    /// The largest event time this worker's partitions have seen.
    pub max_event_time: Rc<Cell<Option<f64>>>,
}

/// How the ingest operator paces itself.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// Most records read per activation.
    pub batch: usize,
    /// How far (event time, ms) this worker's watermark may run ahead of the slowest
    /// worker's before it waits, at least. The bound grows to a few batches' worth of
    /// event time, so sparse data (hours per batch) does not make workers take turns.
    pub max_skew_ms: Millis,
}

/// The streams the ingest operator produces.
pub struct Ingested<'s> {
    /// Accepted events (not yet deduplicated).
    pub events: Stream<'s, Millis, Vec<Event>>,
    /// Dead letters of records that failed decoding.
    pub dead_letters: Stream<'s, Millis, Vec<DeadLetter>>,
    /// The largest event time each partition has seen, when it grows.
    pub clocks: Stream<'s, Millis, Vec<f64>>,
}

/// Builds the ingest operator over `source`. `global` is a probe of the events
/// stream, which shows the slowest worker's watermark.
pub fn ingest<'s, S: Source + 'static>(
    scope: Scope<'s, Millis>,
    mut source: S,
    job: Arc<Job>,
    shared: IngestShared,
    pacing: Pacing,
    global: ProbeHandle<Millis>,
) -> Ingested<'s> {
    let mut builder = OperatorBuilder::new("Ingest".to_owned(), scope);
    let activator = scope.activator_for(builder.operator_info().address);
    let (events_out, events) = builder.new_output::<Vec<Event>>();
    let (dead_out, dead_letters) = builder.new_output::<Vec<DeadLetter>>();
    let (clock_out, clocks) = builder.new_output::<Vec<f64>>();
    let mut events_out = OutputBuilder::<_, Batcher<Event>>::from(events_out);
    let mut dead_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<DeadLetter>>>::from(dead_out);
    let mut clock_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<f64>>>::from(clock_out);

    let names = source.partition_names();
    let partition_hashes: Vec<u64> = names.iter().map(|n| key_hash(n)).collect();
    let lateness = job.allowed_lateness_secs();
    let mut partition_clocks = Clocks::new(names.len(), lateness, job.time.idle_timeout.duration());
    let mut order = Vec::new();
    let mut reported_max = f64::NEG_INFINITY;
    let mut batch_span_ms: Millis = 0;

    builder.build(move |capabilities| {
        let mut capabilities = Some(capabilities);
        move |_frontiers| {
            let Some(caps) = capabilities.as_mut() else { return };
            let watermark = partition_clocks.watermark();
            // Wait while this worker is far ahead of the slowest one.
            let skew = pacing.max_skew_ms.max(batch_span_ms.saturating_mul(4));
            if global.less_than(&watermark.saturating_sub(skew)) {
                activator.activate_after(Duration::from_millis(1));
                return;
            }
            let decoder = Decoder::new(&job.registry, job.max_event_bytes);
            let mut counts = Counts::default();
            let now = Instant::now();
            let mut failure = None;
            {
                let mut events_handle = events_out.activate();
                let mut dead_handle = dead_out.activate();
                let mut events = events_handle.session_with_builder(&caps[0]);
                let mut dead = dead_handle.session(&caps[1]);
                partition_clocks.reading_order(&mut order);
                let mut budget = pacing.batch;
                for &partition in &order {
                    if budget == 0 {
                        break;
                    }
                    let mut emit = |record: Record<'_>| {
                        counts.read += 1;
                        let decoded = match record.oversized_len {
                            Some(len) => Decoded::Rejected(crate::decode::Rejection {
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
                        match decoded {
                            Decoded::Event(event) => {
                                let late = partition_clocks.observe(partition, event.event_time, now);
                                let late_record = late.then(|| {
                                    Box::new(LateRecord {
                                        text: String::from_utf8_lossy(record.bytes.trim_ascii()).into_owned(),
                                        origin: record.origin(),
                                    })
                                });
                                let position = Position {
                                    partition: partition_hashes[partition],
                                    offset: record.offset,
                                };
                                let mut event = Event::accepted(event, position);
                                event.late = late;
                                event.late_record = late_record;
                                events.give(event);
                            }
                            Decoded::Ignored { event_time } => {
                                partition_clocks.observe(partition, event_time, now);
                                counts.ignored += 1;
                            }
                            Decoded::Rejected(rejection) => {
                                if let Some(event_time) = rejection.event_time {
                                    partition_clocks.observe(partition, event_time, now);
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
                    match source.read(partition, budget, &mut emit) {
                        Ok(Read::Records(n)) => budget = budget.saturating_sub(n),
                        Ok(Read::Empty) => partition_clocks.poll_empty(partition, now),
                        Ok(Read::Finished) => partition_clocks.finish(partition),
                        Err(error) => {
                            failure = Some(error);
                            break;
                        }
                    }
                }
            }
            shared.progress.fetch_add(counts.read, Ordering::Relaxed);
            shared.counts.borrow_mut().merge(&counts);
            if let Some(error) = failure {
                *shared.error.borrow_mut() = Some(error);
                capabilities = None;
                return;
            }
            if let Some(max) = partition_clocks.max_seen().filter(|&m| m > reported_max) {
                reported_max = max;
                shared.max_event_time.set(Some(max));
                clock_out.activate().session(&caps[2]).give(max);
            }
            if partition_clocks.all_finished() {
                capabilities = None;
                return;
            }
            let next = partition_clocks.advance();
            batch_span_ms = next.saturating_sub(watermark);
            for cap in caps.iter_mut() {
                if *cap.time() < next {
                    cap.downgrade(&next);
                }
            }
            activator.activate();
        }
    });

    Ingested {
        events,
        dead_letters,
        clocks,
    }
}
