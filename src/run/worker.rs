//! One worker of a run: its share of the inputs, its dataflow
//! (`ingest -> exchange by user -> fold -> view sinks`, dead letters to their sink),
//! and its loop, which takes part in checkpoints and commits source positions once
//! their outputs are durable.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Concat, Probe};
use timely::worker::Worker;

use super::max_time;
use super::plan::{DeadLetters, Inputs, Plan, RunEnd, WorkerReport};
use crate::checkpoint::PartitionState;
use crate::checkpoint::protocol::{Checkpointing, Control, Coordinator};
use crate::dataflow::fold::{FoldContext, FoldFeatures};
use crate::dataflow::ingest::{Ingest, IngestShared};
use crate::dlq::letter::DeadLetter;
use crate::error_chain as chain;
use crate::kafka::source::KafkaSource;
use crate::replay::Replay;
use crate::run::control::ControlPlane;
use crate::sinks::archive::Archive;
use crate::sinks::jsonl::JsonlPart;
use crate::sinks::redis::RedisViews;
use crate::sinks::training::WriteRows;
use crate::sinks::{DeadLetterSink, SinkError, SinkFailure, ViewSink, WriteDeadLetters, WriteViews};
use crate::source::Source;
use crate::source::file::{FilePartition, FileSource};
use crate::summary::Counts;

/// Starts worker `worker` on its share of the plan's inputs and of the restored
/// checkpoint, and runs it to the end.
pub(super) fn start(worker: &mut Worker, plan: &Plan) -> Result<WorkerReport, String> {
    let index = worker.index();
    let peers = worker.peers();
    let share = plan.take_share(index, peers);
    let resume_of = |names: &[String]| -> Vec<Option<PartitionState>> {
        names
            .iter()
            .map(|name| share.partitions.get(name).cloned())
            .collect()
    };
    match &plan.inputs {
        Inputs::Files(partitions) => {
            let mine: Vec<FilePartition> = partitions.iter().skip(index).step_by(peers).cloned().collect();
            let mut source = FileSource::new(mine, plan.job.max_event_bytes);
            let resume = resume_of(&source.partition_names());
            for (partition, state) in resume.iter().enumerate() {
                if let Some(state) = state {
                    source
                        .skip(partition, state.position, state.digest)
                        .map_err(|e| chain(&e))?;
                }
            }
            run_worker(worker, source, None, plan, share, resume)
        }
        Inputs::Kafka {
            kafka,
            partitions,
            start,
        } => {
            let mine: Vec<(String, i32)> = partitions.iter().skip(index).step_by(peers).cloned().collect();
            let names: Vec<String> = mine.iter().map(|(t, p)| format!("{t}/{p}")).collect();
            let resume = resume_of(&names);
            let offsets: Vec<Option<i64>> = resume.iter().map(|s| s.as_ref().map(|s| s.position)).collect();
            let on_lag = plan.metrics.clone().map(|metrics| {
                Arc::new(move |topic: &str, partition: i32, lag: i64| {
                    metrics.consumer_lag(topic, partition, lag)
                }) as crate::kafka::source::LagReport
            });
            let source = KafkaSource::open(&kafka.settings, &kafka.group, &mine, *start, &offsets, on_lag)
                .map_err(|e| chain(&e))?;
            let archive = plan
                .job
                .sinks
                .archive
                .as_ref()
                .map(|sink| Archive::new(sink, &source.partition_names()));
            run_worker(worker, source, archive, plan, share, resume)
        }
    }
}

/// Builds this worker's dataflow over `source` and runs it to completion, taking part
/// in checkpoints, then reports its counts to worker 0.
fn run_worker<S: Source + 'static>(
    worker: &mut Worker,
    source: S,
    archive: Option<Archive>,
    plan: &Plan,
    share: crate::checkpoint::Share,
    resume: Vec<Option<PartitionState>>,
) -> Result<WorkerReport, String> {
    let index = worker.index();
    let peers = worker.peers();
    let job = &plan.job;
    let mut view_sinks: Vec<Box<dyn ViewSink>> = Vec::new();
    if let Some(store) = &plan.sqlite {
        view_sinks.push(Box::new(store.clone()));
    }
    if let Some(redis) = &job.sinks.redis {
        view_sinks.push(Box::new(
            RedisViews::new(&job.name, redis, job.max_retries)
                .map_err(|e| chain(&e))?
                .with_metrics(plan.metrics.clone()),
        ));
    }
    if let Some(path) = &plan.jsonl {
        view_sinks.push(Box::new(JsonlPart::create(path, index).map_err(|e| chain(&e))?));
    }
    if let Some(replay) = &plan.replay {
        view_sinks.push(Box::new(crate::replay::Gather::new(replay.clone(), false)));
    }
    let explain = match &plan.replay {
        Some(Replay::Explain(explaining)) => Some(Arc::clone(explaining)),
        _ => None,
    };
    let dead_sink: Box<dyn DeadLetterSink> = match &plan.dead_letters {
        DeadLetters::File(file) => Box::new(file.clone()),
        DeadLetters::Kafka(producer) => Box::new(producer.clone()),
        DeadLetters::Discard => Box::new(Discard),
    };
    let crate::checkpoint::Share {
        fold: restored_fold,
        ingest_counts,
        fold_counts,
        ..
    } = share;
    let mut carried = ingest_counts.clone();
    carried.merge(&fold_counts);
    let counts = Rc::new(RefCell::new(carried));
    let restored_max = resume
        .iter()
        .flatten()
        .filter_map(|p| p.max_seen)
        .reduce(f64::max);
    let checkpointing = Rc::new(RefCell::new(Checkpointing::new(
        plan.checkpoint.as_ref().map(|c| c.dir.clone()),
        &job.name,
        index,
        peers,
    )));
    let enabled = plan.checkpoint.is_some();
    let source = Rc::new(RefCell::new(source));
    let shared = IngestShared {
        counts: Rc::clone(&counts),
        error: Rc::new(RefCell::new(None)),
        progress: Arc::clone(&plan.records),
        max_event_time: Rc::new(Cell::new(restored_max)),
        stopped_at: Rc::new(Cell::new(None)),
        stop: Arc::clone(&plan.stop),
        reading: (plan.blocking.clone(), index % plan.workers),
        final_positions: Rc::new(RefCell::new(None)),
        metrics: plan.metrics.clone(),
        checkpointing: Rc::clone(&checkpointing),
        restored: resume,
        restored_counts: ingest_counts,
        explain,
    };
    let sink_failure: SinkFailure = Rc::new(RefCell::new(None));
    let mut control = ControlPlane::new(worker);
    let durable = ProbeHandle::new();
    let dataflow = worker.next_dataflow_index();
    worker.dataflow::<u64, _, _>(|scope| {
        let global = ProbeHandle::new();
        let ingested = scope.ingest(
            Rc::clone(&source),
            archive,
            Arc::clone(job),
            shared.clone(),
            plan.pacing,
            global.clone(),
            durable.clone(),
        );
        // The probe sits on the clocks stream, whose capability moves with the events':
        // on the events stream it would stand between ingest and the exchange and drop
        // every container instead of handing it back for reuse.
        let clocks = ingested.clocks.probe_with(&global);
        let events = match &plan.replay {
            Some(Replay::Diff(diffing)) => {
                crate::dataflow::activity::count_activity(ingested.events, Arc::clone(&diffing.activity))
            }
            _ => ingested.events,
        };
        let skew_counter = match (&plan.skew, &job.export) {
            (Some(skew), Some(export)) => {
                Some(Rc::new(RefCell::new(crate::dataflow::skew::SkewCounter::new(
                    Arc::new(export.clone()),
                    job.features.features.iter().map(|f| f.name.clone()).collect(),
                    Arc::clone(skew),
                ))))
            }
            _ => None,
        };
        let folded = events.fold_features(
            clocks.broadcast(),
            FoldContext {
                job: Arc::clone(job),
                counts: Rc::clone(&counts),
                flush: plan.flush,
                metrics: plan.metrics.clone(),
                checkpointing: Rc::clone(&checkpointing),
                restored: restored_fold,
                restored_counts: fold_counts,
                hold_unflushed: !enabled,
                spine_rows: plan.spine.as_ref().map(|rows| {
                    rows.iter()
                        .filter(|r| (r.user_hash % peers as u64) as usize == index)
                        .cloned()
                        .collect()
                }),
                replay: plan.replay.clone(),
                skew: skew_counter.clone(),
            },
        );
        let sink_dead = folded
            .views
            .write_views(view_sinks, Rc::clone(&sink_failure), plan.metrics.clone());
        let rows = match skew_counter {
            Some(counter) => crate::dataflow::skew::count_skew(folded.rows, counter, plan.metrics.clone()),
            None => folded.rows,
        };
        let rows_dead = match &plan.export {
            Some(export) => rows.write_rows(
                export.clone(),
                index,
                plan.export_first_tag,
                {
                    let checkpointing = Rc::clone(&checkpointing);
                    Rc::new(move || checkpointing.borrow().cut)
                },
                Rc::clone(&sink_failure),
                Arc::clone(&plan.exported),
            ),
            None => timely::dataflow::operators::generic::operator::empty(scope),
        };
        ingested
            .dead_letters
            .concat(folded.dead_letters)
            .concat(sink_dead)
            .concat(rows_dead)
            .write_dead_letters(dead_sink, Rc::clone(&sink_failure))
            .probe_with(&durable);
    });
    let mut coordinator = match (&plan.checkpoint, index) {
        (Some(c), 0) => Some(Coordinator::new(
            c.dir.clone(),
            job,
            peers,
            c.interval,
            c.keep,
            c.last_epoch,
        )),
        _ => None,
    };
    let mut gathered: Vec<Finished> = Vec::new();
    let mut failure: Option<String> = None;
    let mut hurried = false;
    while worker.installed_dataflows().contains(&dataflow) {
        if let Some(error) = shared.error.borrow_mut().take() {
            failure = Some(chain(&error));
        } else if let Some(error) = sink_failure.borrow_mut().take() {
            failure = Some(chain(&error));
        }
        if failure.is_some() {
            worker.drop_dataflow(dataflow);
            break;
        }
        let messages = control.take();
        for message in &messages {
            match message {
                Control::Stats { .. } => gathered.extend(Finished::of(message.clone())),
                other => checkpointing.borrow_mut().receive(other),
            }
        }
        // Another worker failed: its part of the dataflow is gone, so this one's
        // frontier would never pass; stop too, with its error.
        if let Some(error) = gathered.iter().find_map(|g| g.error.clone()) {
            failure = Some(error);
            worker.drop_dataflow(dataflow);
            break;
        }
        if let Some(coordinator) = coordinator.as_mut() {
            // A stopped backfill finishes with a checkpoint where it stopped.
            if !hurried && plan.stop.load(std::sync::atomic::Ordering::Relaxed) {
                hurried = true;
                coordinator.hurry();
            }
            for message in coordinator.step(&messages, Instant::now()) {
                control.broadcast(message);
            }
        }
        // A checkpoint is complete: commit the source positions it holds.
        let complete = checkpointing.borrow_mut().complete.take();
        if let Some(epoch) = complete {
            let positions = {
                let mut cp = checkpointing.borrow_mut();
                let positions = cp.positions.remove(&epoch);
                cp.positions.retain(|e, _| *e > epoch);
                positions
            };
            if let Some(positions) = positions
                && let Err(error) = source.borrow_mut().commit_in_background(&positions)
            {
                failure = Some(chain(&error));
                worker.drop_dataflow(dataflow);
                break;
            }
        }
        let outgoing = checkpointing.borrow_mut().outgoing(|at| !durable.less_than(&at));
        for message in outgoing {
            control.to_zero(message);
        }
        worker.step_or_park(Some(Duration::from_millis(20)));
    }
    // Every sink has flushed: what was read is durable, commit all of it.
    let finals = shared.final_positions.borrow_mut().take();
    if failure.is_none()
        && plan.pacing.commits
        && let Some(positions) = finals
        && let Err(error) = source.borrow_mut().commit(&positions)
    {
        failure = Some(chain(&error));
    }
    let local = counts.borrow().clone();
    let max_event_time = shared.max_event_time.get();
    let stopped_at = shared.stopped_at.get();
    let stats = Control::Stats {
        worker: index,
        counts: local.clone(),
        max_event_time,
        stopped_at,
        error: failure.clone(),
    };
    // A failure goes to every worker, which stops them; counts go to worker 0.
    if failure.is_some() {
        control.broadcast(stats);
    } else {
        control.to_zero(stats);
    }
    let global = if index == 0 && failure.is_none() {
        while gathered.len() < peers && gathered.iter().all(|g| g.error.is_none()) {
            worker.step_or_park(Some(Duration::from_millis(20)));
            gathered.extend(control.take().into_iter().filter_map(Finished::of));
        }
        let mut run = RunEnd::default();
        let mut stopped: Option<f64> = None;
        for finished in &gathered {
            if let (None, Some(error)) = (&failure, &finished.error) {
                failure = Some(error.clone());
            }
            run.counts.merge(&finished.counts);
            run.watermark = max_time(run.watermark, finished.max_event_time);
            if let Some(at) = finished.stopped_at {
                stopped = Some(stopped.map_or(at, |s: f64| s.min(at)));
            }
        }
        // A run stopped early is complete only up to the slowest stopped watermark.
        if let Some(at) = stopped {
            run.watermark = Some(at);
            run.interrupted = true;
        }
        Some(run)
    } else {
        None
    };
    control.close();
    if let Some(error) = failure {
        // Let the stats reach worker 0 before this worker goes.
        for _ in 0..10 {
            worker.step();
        }
        return Err(error);
    }
    while worker.has_dataflows() {
        worker.step_or_park(Some(Duration::from_millis(20)));
    }
    Ok(WorkerReport {
        counts: local,
        max_event_time,
        global,
    })
}

/// What a worker reported when it finished (a `Control::Stats` message).
struct Finished {
    counts: Counts,
    max_event_time: Option<f64>,
    stopped_at: Option<f64>,
    error: Option<String>,
}

impl Finished {
    fn of(message: Control) -> Option<Finished> {
        match message {
            Control::Stats {
                counts,
                max_event_time,
                stopped_at,
                error,
                ..
            } => Some(Finished {
                counts,
                max_event_time,
                stopped_at,
                error,
            }),
            _ => None,
        }
    }
}

/// A dead-letter sink for runs that keep no dead letters (they are still counted).
struct Discard;

impl DeadLetterSink for Discard {
    fn write(&mut self, _letters: &[DeadLetter]) -> Result<(), SinkError> {
        Ok(())
    }
}
