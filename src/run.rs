//! Running a job: build the dataflow on every worker, run it to the end of its input,
//! and summarise.
//!
//! The dataflow is the same for every source:
//! `ingest -> (exchange by user) fold -> view sinks`, with dead letters from ingest and
//! fold going to the dead-letter sink.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Concat, Probe};

use crate::fold::{FlushPolicy, FoldContext, FoldFeatures};
use crate::ingest::{IngestShared, Pacing, ingest};
use crate::job::duration::Span;
use crate::job::{Job, LatePolicy};
use crate::progress::Progress;
use crate::sinks::dlq_file::DeadLetterFile;
use crate::sinks::jsonl::{JsonlPart, merge_parts};
use crate::sinks::sqlite::SqliteViews;
use crate::sinks::{DeadLetterSink, SinkError, SinkFailure, ViewSink, WriteDeadLetters, WriteSinks};
use crate::source::SourceError;
use crate::source::file::{FilePartition, FileSource, resolve_partitions};
use crate::summary::{Counts, Summary};

/// Command-line choices that override the job file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Input partitions (paths or globs); the job's `source.files` when empty.
    pub inputs: Vec<String>,
    /// Worker threads.
    pub workers: usize,
    /// SQLite views file.
    pub views_sqlite: Option<PathBuf>,
    /// JSONL views snapshot.
    pub views_jsonl: Option<PathBuf>,
    /// Dead-letter file.
    pub dlq: Option<PathBuf>,
    /// Summary file.
    pub summary: Option<PathBuf>,
    /// Allowed lateness.
    pub allowed_lateness: Option<Span>,
    /// Late policy.
    pub late_policy: Option<LatePolicy>,
    /// Records read per activation; 0 for the default.
    pub batch: usize,
    /// Show a progress line on a terminal.
    pub progress: bool,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// No input was named.
    #[error("no input: name partitions with --input, or set `source.files` in {0}")]
    NoInput(String),
    /// The engine failed (a worker panicked, or communication broke).
    #[error("dataflow engine: {0}")]
    Engine(String),
    /// Records were lost or counted twice: a bug.
    #[error(
        "conservation broken: read {read} != applied + duplicates + ignored + late_dropped + dlq ({accounted})"
    )]
    Conservation {
        /// Records read.
        read: u64,
        /// Records with an outcome.
        accounted: u64,
    },
}

/// Default records per activation.
pub const DEFAULT_BATCH: usize = 1 << 16;

/// What one worker reports when it is done.
struct WorkerReport {
    counts: Counts,
    max_event_time: Option<f64>,
}

/// Applies the command line's overrides to the job.
pub fn apply_overrides(job: &mut Job, options: &RunOptions) {
    if let Some(lateness) = options.allowed_lateness {
        job.time.allowed_lateness = lateness;
    }
    if let Some(policy) = options.late_policy {
        job.time.late_policy = policy;
    }
    let sinks = &mut job.sinks;
    for (path, over) in [
        (&mut sinks.views_sqlite, &options.views_sqlite),
        (&mut sinks.views_jsonl, &options.views_jsonl),
        (&mut sinks.dlq, &options.dlq),
        (&mut sinks.summary, &options.summary),
    ] {
        if let Some(over) = over {
            *path = (!over.as_os_str().is_empty()).then(|| over.clone());
        }
    }
}

/// Runs `job` over archived files to the end of its input.
pub fn run_files(mut job: Job, options: &RunOptions) -> Result<Summary, RunError> {
    let started = Instant::now();
    apply_overrides(&mut job, options);
    let inputs = if options.inputs.is_empty() {
        job.inputs.clone()
    } else {
        options.inputs.clone()
    };
    if inputs.is_empty() {
        return Err(RunError::NoInput(job.path.display().to_string()));
    }
    let partitions = Arc::new(resolve_partitions(&inputs)?);
    let workers = options.workers.max(1);
    let sqlite = job
        .sinks
        .views_sqlite
        .as_deref()
        .map(SqliteViews::open)
        .transpose()?;
    let dlq = job.sinks.dlq.as_deref().map(DeadLetterFile::create).transpose()?;
    let jsonl = job.sinks.views_jsonl.clone();
    let batch = if options.batch == 0 {
        DEFAULT_BATCH
    } else {
        options.batch
    };
    let job = Arc::new(job);
    let records = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(Arc::clone(&records), options.progress);

    let worker_job = Arc::clone(&job);
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let mine: Vec<FilePartition> = partitions.iter().skip(index).step_by(peers).cloned().collect();
        let source = FileSource::new(mine, worker_job.max_event_bytes);
        let mut view_sinks: Vec<Box<dyn ViewSink>> = Vec::new();
        if let Some(store) = &sqlite {
            view_sinks.push(Box::new(store.clone()));
        }
        if let Some(path) = &jsonl {
            view_sinks.push(Box::new(JsonlPart::create(path, index).map_err(|e| chain(&e))?));
        }
        let dead_sink: Box<dyn DeadLetterSink> = match &dlq {
            Some(file) => Box::new(file.clone()),
            None => Box::new(Discard),
        };
        let counts = Rc::new(RefCell::new(Counts::default()));
        let source_error = Rc::new(RefCell::new(None));
        let sink_failure: SinkFailure = Rc::new(RefCell::new(None));
        let max_event_time = Rc::new(Cell::new(None));
        let shared = IngestShared {
            counts: Rc::clone(&counts),
            error: Rc::clone(&source_error),
            progress: Arc::clone(&records),
            max_event_time: Rc::clone(&max_event_time),
        };
        let lateness_ms = (worker_job.allowed_lateness_secs() * 1000.0) as u64;
        let pacing = Pacing {
            batch,
            max_skew_ms: (lateness_ms * 10).max(60_000),
        };
        let dataflow = worker.next_dataflow_index();
        worker.dataflow::<u64, _, _>(|scope| {
            let probe = ProbeHandle::new();
            let ingested = ingest(
                scope,
                source,
                Arc::clone(&worker_job),
                shared,
                pacing,
                probe.clone(),
            );
            let events = ingested.events.probe_with(&probe);
            let folded = events.fold_features(
                ingested.clocks.broadcast(),
                FoldContext {
                    job: Arc::clone(&worker_job),
                    counts: Rc::clone(&counts),
                    flush: FlushPolicy::AtEnd,
                },
            );
            folded.views.write_views(view_sinks, Rc::clone(&sink_failure));
            ingested
                .dead_letters
                .concat(folded.dead_letters)
                .write_dead_letters(dead_sink, Rc::clone(&sink_failure));
        });
        while worker.has_dataflows() {
            if source_error.borrow().is_some() || sink_failure.borrow().is_some() {
                worker.drop_dataflow(dataflow);
                break;
            }
            worker.step_or_park(Some(Duration::from_millis(50)));
        }
        if let Some(error) = source_error.borrow_mut().take() {
            return Err(chain(&error));
        }
        if let Some(error) = sink_failure.borrow_mut().take() {
            return Err(chain(&error));
        }
        let counts = counts.borrow().clone();
        Ok(WorkerReport {
            counts,
            max_event_time: max_event_time.get(),
        })
    })
    .map_err(RunError::Engine)?;

    let mut counts = Counts::default();
    let mut watermark: Option<f64> = None;
    let mut errors = Vec::new();
    for result in guards.join() {
        match result {
            Ok(Ok(report)) => {
                counts.merge(&report.counts);
                watermark = match (watermark, report.max_event_time) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
            }
            Ok(Err(error)) | Err(error) => errors.push(error),
        }
    }
    drop(progress);
    if let Some(error) = errors.into_iter().next() {
        return Err(RunError::Engine(error));
    }
    if let Some(path) = &job.sinks.views_jsonl {
        merge_parts(path, 0..workers)?;
    }
    if !counts.conserved() {
        return Err(RunError::Conservation {
            read: counts.read,
            accounted: counts.applied
                + counts.duplicates
                + counts.ignored
                + counts.late_dropped
                + counts.dlq_total(),
        });
    }
    let mut summary = Summary::new(
        &job.name,
        &counts,
        watermark,
        workers,
        started.elapsed().as_secs_f64(),
    );
    for (name, path) in [
        ("views_sqlite", &job.sinks.views_sqlite),
        ("views_jsonl", &job.sinks.views_jsonl),
        ("dlq", &job.sinks.dlq),
        ("summary", &job.sinks.summary),
    ] {
        if let Some(path) = path {
            summary
                .outputs
                .insert(name.to_owned(), path.display().to_string());
        }
    }
    if let Some(path) = &job.sinks.summary {
        crate::sinks::create_parent(path)?;
        let text = serde_json::to_string_pretty(&summary).expect("a summary serializes");
        std::fs::write(path, text + "\n").map_err(|source| SinkError::Io {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(summary)
}

/// An error and its causes on one line, for errors that cross threads as text.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// A dead-letter sink for runs that keep no dead letters (they are still counted).
struct Discard;

impl DeadLetterSink for Discard {
    fn write(&mut self, _letters: &[crate::dead_letter::DeadLetter]) -> Result<(), SinkError> {
        Ok(())
    }
}
