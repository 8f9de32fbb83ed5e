//! Running a job: pick the source (archived files or Kafka), build the dataflow on
//! every worker, run it to the end of its input (or until it is stopped), and summarise.
//!
//! The dataflow is the same for every source:
//! `ingest -> (exchange by user) fold -> view sinks`, with dead letters from ingest,
//! fold and the view sinks going to the dead-letter sink, and a probe after that sink
//! telling the ingest operator which source positions are safe to commit.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Concat, Probe};
use timely::worker::Worker;

use crate::dead_letter::DeadLetter;
use crate::fold::{FlushPolicy, FoldContext, FoldFeatures};
use crate::ingest::{IngestShared, Pacing, ingest};
use crate::job::duration::Span;
use crate::job::{Job, KafkaJob, LatePolicy, RedisSink, StartPosition};
use crate::metrics::Metrics;
use crate::progress::Progress;
use crate::sinks::archive::Archive;
use crate::sinks::dlq_file::DeadLetterFile;
use crate::sinks::dlq_kafka::{DeadLetterTopics, KafkaDeadLetters};
use crate::sinks::jsonl::{JsonlPart, merge_parts};
use crate::sinks::redis::RedisViews;
use crate::sinks::sqlite::SqliteViews;
use crate::sinks::{DeadLetterSink, SinkError, SinkFailure, ViewSink, WriteDeadLetters, WriteViews};
use crate::source::file::{FilePartition, FileSource, resolve_partitions};
use crate::source::kafka::KafkaSource;
use crate::source::{Source, SourceError};
use crate::summary::{Counts, Summary};

/// Command-line choices that override the job file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Input partitions (paths or globs); when set, the run reads files.
    pub inputs: Vec<String>,
    /// Worker threads.
    pub workers: usize,
    /// SQLite views file.
    pub views_sqlite: Option<PathBuf>,
    /// JSONL views snapshot.
    pub views_jsonl: Option<PathBuf>,
    /// Dead-letter file (also for runs over Kafka, instead of the DLQ topic).
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
    /// Kafka brokers.
    pub brokers: Option<String>,
    /// Kafka topics; when set, the run reads Kafka.
    pub topics: Vec<String>,
    /// Consumer group.
    pub group: Option<String>,
    /// Where to start reading Kafka.
    pub start: Option<StartPosition>,
    /// Redis URL for the view store.
    pub redis: Option<String>,
    /// End a run over Kafka once every partition has been idle this long.
    pub exit_when_idle: Option<Duration>,
    /// Set to stop a run cleanly (flush, commit, summary), as SIGTERM does.
    pub stop: Option<Arc<AtomicBool>>,
    /// Serve Prometheus metrics on this address.
    pub metrics_addr: Option<std::net::SocketAddr>,
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
    #[error("no input: name partitions with --input or topics with --topic, or set `source` in {0}")]
    NoInput(String),
    /// The options do not fit together.
    #[error("{0}")]
    Options(String),
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

/// Most records read per activation. A quiet stream yields what is queued, so a large
/// bound costs no freshness; with a backlog, 4k-record batches left a third of the
/// broker's read rate unused (scripts/bench-stream.sh).
pub const DEFAULT_BATCH: usize = 1 << 16;

/// What one worker reports when it is done.
struct WorkerReport {
    counts: Counts,
    max_event_time: Option<f64>,
}

/// Where a run reads from.
enum Inputs {
    Files(Vec<FilePartition>),
    Kafka {
        kafka: KafkaJob,
        partitions: Vec<(String, i32)>,
        start: StartPosition,
    },
}

/// Where dead letters go.
#[derive(Clone)]
enum DeadLetters {
    File(DeadLetterFile),
    Kafka(KafkaDeadLetters),
    Discard,
}

/// Everything a worker needs to build its dataflow.
struct Plan {
    job: Arc<Job>,
    inputs: Inputs,
    sqlite: Option<SqliteViews>,
    jsonl: Option<PathBuf>,
    dead_letters: DeadLetters,
    flush: FlushPolicy,
    pacing: Pacing,
    stop: Arc<AtomicBool>,
    records: Arc<AtomicU64>,
    metrics: Option<Arc<Metrics>>,
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
    if let Some(url) = &options.redis {
        let redis = sinks.redis.get_or_insert_with(|| RedisSink {
            url: String::new(),
            key_prefix: "user_state:".into(),
            ttl: Span::secs(30 * 86_400),
        });
        redis.url = url.clone();
    }
    let wants_kafka = !options.topics.is_empty() || options.brokers.is_some() || options.group.is_some();
    if wants_kafka || job.kafka.is_some() {
        let name = job.name.clone();
        let kafka = job.kafka.get_or_insert_with(|| KafkaJob {
            settings: crate::broker::BrokerSettings::new(crate::job::DEFAULT_BROKERS),
            topics: Vec::new(),
            group: format!("skewless-{name}"),
            start: None,
            lag_tolerance: crate::job::LagTolerance::default(),
            commit_interval: Span::secs(1),
        });
        if let Some(brokers) = &options.brokers {
            kafka.settings.brokers = brokers.clone();
        }
        if !options.topics.is_empty() {
            kafka.topics = options.topics.clone();
        }
        if let Some(group) = &options.group {
            kafka.group = group.clone();
        }
        if options.start.is_some() {
            kafka.start = options.start;
        }
    }
}

/// Runs `job` to the end of its input: archived files to their end, Kafka until
/// stopped or idle.
pub fn run(mut job: Job, options: &RunOptions) -> Result<Summary, RunError> {
    let started = Instant::now();
    apply_overrides(&mut job, options);
    let inputs = choose_inputs(&job, options)?;
    let workers = options.workers.max(1);
    let streaming = matches!(inputs, Inputs::Kafka { .. });
    if job.sinks.archive.is_some() && !streaming {
        return Err(RunError::Options(
            "an archive sink archives Kafka topics; this run reads files".into(),
        ));
    }
    if job.archive_only() {
        job.sinks.views_sqlite = None;
        job.sinks.views_jsonl = None;
    }
    let sqlite = job
        .sinks
        .views_sqlite
        .as_deref()
        .map(SqliteViews::open)
        .transpose()?;
    let dead_letters = match (&inputs, &options.dlq, &job.sinks.dlq) {
        (Inputs::Kafka { kafka, .. }, None, _) if !job.archive_only() => {
            let topics = DeadLetterTopics::new(&kafka.topics, job.sinks.dlq_topic.clone());
            for topic in topics.all() {
                kafka
                    .settings
                    .ensure_topic(&topic, 1)
                    .map_err(|e| SourceError::Broker(e.to_string()))?;
            }
            DeadLetters::Kafka(KafkaDeadLetters::new(&kafka.settings, topics)?)
        }
        (_, _, Some(path)) => DeadLetters::File(DeadLetterFile::create(path)?),
        (_, _, None) => DeadLetters::Discard,
    };
    let lateness_ms = (job.allowed_lateness_secs() * 1000.0) as u64;
    let (flush, pacing) = match &inputs {
        Inputs::Files(_) => (
            FlushPolicy::AtEnd,
            Pacing {
                batch: if options.batch == 0 {
                    DEFAULT_BATCH
                } else {
                    options.batch
                },
                max_skew_ms: (lateness_ms * 10).max(60_000),
                exit_when_idle: None,
                commit_interval: Duration::from_secs(1),
                idle_poll: Duration::from_millis(20),
            },
        ),
        Inputs::Kafka { kafka, .. } => (
            FlushPolicy::Every(job.sinks.flush_interval.duration()),
            Pacing {
                batch: if options.batch == 0 {
                    DEFAULT_BATCH
                } else {
                    options.batch
                },
                max_skew_ms: (lateness_ms * 10).max(60_000),
                exit_when_idle: options.exit_when_idle,
                commit_interval: kafka.commit_interval.duration(),
                idle_poll: Duration::from_millis(20),
            },
        ),
    };
    let metrics = match options.metrics_addr {
        None => None,
        Some(addr) => {
            let metrics = Arc::new(Metrics::new(&job.name));
            let bound = metrics
                .serve(addr)
                .map_err(|e| RunError::Options(format!("cannot serve metrics on {addr}: {e}")))?;
            tracing::info!(%bound, "serving metrics on /metrics");
            Some(metrics)
        }
    };
    let records = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(Arc::clone(&records), options.progress);
    let plan = Arc::new(Plan {
        jsonl: job.sinks.views_jsonl.clone(),
        job: Arc::new(job),
        inputs,
        sqlite,
        dead_letters,
        flush,
        pacing,
        stop: options.stop.clone().unwrap_or_default(),
        records,
        metrics,
    });
    tracing::info!(job = %plan.job.name, workers, streaming, "run starting");

    let worker_plan = Arc::clone(&plan);
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let plan = &worker_plan;
        let index = worker.index();
        let peers = worker.peers();
        match &plan.inputs {
            Inputs::Files(partitions) => {
                let mine: Vec<FilePartition> =
                    partitions.iter().skip(index).step_by(peers).cloned().collect();
                run_worker(
                    worker,
                    FileSource::new(mine, plan.job.max_event_bytes),
                    None,
                    plan,
                )
            }
            Inputs::Kafka {
                kafka,
                partitions,
                start,
            } => {
                let mine: Vec<(String, i32)> =
                    partitions.iter().skip(index).step_by(peers).cloned().collect();
                let on_lag = plan.metrics.clone().map(|metrics| {
                    Arc::new(move |topic: &str, partition: i32, lag: i64| {
                        metrics.consumer_lag(topic, partition, lag)
                    }) as crate::source::kafka::LagReport
                });
                let source = KafkaSource::open(&kafka.settings, &kafka.group, &mine, *start, on_lag)
                    .map_err(|e| chain(&e))?;
                let archive = plan
                    .job
                    .sinks
                    .archive
                    .as_ref()
                    .map(|sink| Archive::new(sink, &source.partition_names()));
                run_worker(worker, source, archive, plan)
            }
        }
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
    let job = &plan.job;
    if let Some(path) = &job.sinks.views_jsonl {
        merge_parts(path, 0..workers)?;
    }
    if !counts.conserved() {
        return Err(RunError::Conservation {
            read: counts.read,
            accounted: counts.accounted(),
        });
    }
    let mut summary = Summary::new(
        &job.name,
        &counts,
        watermark,
        workers,
        started.elapsed().as_secs_f64(),
    );
    describe_outputs(&plan, &mut summary);
    if let Some(path) = &job.sinks.summary {
        crate::sinks::create_parent(path)?;
        let text = serde_json::to_string_pretty(&summary).expect("a summary serializes");
        std::fs::write(path, text + "\n").map_err(|source| SinkError::Io {
            path: path.display().to_string(),
            source,
        })?;
    }
    tracing::info!(job = %job.name, read = summary.read, seconds = summary.wall_time_s, "run finished");
    Ok(summary)
}

/// Runs `job` over archived files to the end of its input.
pub fn run_files(job: Job, options: &RunOptions) -> Result<Summary, RunError> {
    run(job, options)
}

fn choose_inputs(job: &Job, options: &RunOptions) -> Result<Inputs, RunError> {
    let files =
        |inputs: &[String]| -> Result<Inputs, RunError> { Ok(Inputs::Files(resolve_partitions(inputs)?)) };
    if !options.inputs.is_empty() {
        return files(&options.inputs);
    }
    let kafka = job.kafka.as_ref().filter(|k| !k.topics.is_empty());
    if options.topics.is_empty() && !job.inputs.is_empty() {
        return files(&job.inputs);
    }
    let Some(kafka) = kafka else {
        return Err(RunError::NoInput(job.path.display().to_string()));
    };
    let partitions = kafka
        .settings
        .partitions(&kafka.topics)
        .map_err(|e| SourceError::Broker(e.to_string()))?;
    let start = kafka.start.unwrap_or(if job.archive_only() {
        StartPosition::Committed
    } else {
        StartPosition::Earliest
    });
    Ok(Inputs::Kafka {
        kafka: kafka.clone(),
        partitions,
        start,
    })
}

fn describe_outputs(plan: &Plan, summary: &mut Summary) {
    let job = &plan.job;
    for (name, path) in [
        ("views_sqlite", &job.sinks.views_sqlite),
        ("views_jsonl", &job.sinks.views_jsonl),
        ("summary", &job.sinks.summary),
    ] {
        if let Some(path) = path {
            summary
                .outputs
                .insert(name.to_owned(), path.display().to_string());
        }
    }
    match &plan.dead_letters {
        DeadLetters::File(_) => {
            if let Some(path) = &job.sinks.dlq {
                summary.outputs.insert("dlq".into(), path.display().to_string());
            }
        }
        DeadLetters::Kafka(_) => {
            if let Inputs::Kafka { kafka, .. } = &plan.inputs {
                let topics = DeadLetterTopics::new(&kafka.topics, job.sinks.dlq_topic.clone());
                summary
                    .outputs
                    .insert("dlq_topics".into(), topics.all().join(","));
            }
        }
        DeadLetters::Discard => {}
    }
    if let Some(redis) = &job.sinks.redis {
        summary.outputs.insert(
            "views_redis".into(),
            format!("{} ({}<user_id>)", redact_url(&redis.url), redis.key_prefix),
        );
    }
    if let Some(archive) = &job.sinks.archive {
        summary
            .outputs
            .insert("archive".into(), archive.dir.display().to_string());
    }
}

/// A URL without its password.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://[redacted]@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Builds this worker's dataflow over `source` and runs it to completion.
fn run_worker<S: Source + 'static>(
    worker: &mut Worker,
    source: S,
    archive: Option<Archive>,
    plan: &Plan,
) -> Result<WorkerReport, String> {
    let index = worker.index();
    let job = &plan.job;
    let mut view_sinks: Vec<Box<dyn ViewSink>> = Vec::new();
    if let Some(store) = &plan.sqlite {
        view_sinks.push(Box::new(store.clone()));
    }
    if let Some(redis) = &job.sinks.redis {
        view_sinks.push(Box::new(
            RedisViews::new(&job.name, redis, job.max_retries).map_err(|e| chain(&e))?,
        ));
    }
    if let Some(path) = &plan.jsonl {
        view_sinks.push(Box::new(JsonlPart::create(path, index).map_err(|e| chain(&e))?));
    }
    let dead_sink: Box<dyn DeadLetterSink> = match &plan.dead_letters {
        DeadLetters::File(file) => Box::new(file.clone()),
        DeadLetters::Kafka(producer) => Box::new(producer.clone()),
        DeadLetters::Discard => Box::new(Discard),
    };
    let counts = Rc::new(RefCell::new(Counts::default()));
    let source = Rc::new(RefCell::new(source));
    let shared = IngestShared {
        counts: Rc::clone(&counts),
        error: Rc::new(RefCell::new(None)),
        progress: Arc::clone(&plan.records),
        max_event_time: Rc::new(Cell::new(None)),
        stop: Arc::clone(&plan.stop),
        final_positions: Rc::new(RefCell::new(None)),
        metrics: plan.metrics.clone(),
    };
    let sink_failure: SinkFailure = Rc::new(RefCell::new(None));
    let dataflow = worker.next_dataflow_index();
    worker.dataflow::<u64, _, _>(|scope| {
        let global = ProbeHandle::new();
        let durable = ProbeHandle::new();
        let ingested = ingest(
            scope,
            Rc::clone(&source),
            archive,
            Arc::clone(job),
            shared.clone(),
            plan.pacing,
            global.clone(),
            durable.clone(),
        );
        let events = ingested.events.probe_with(&global);
        let folded = events.fold_features(
            ingested.clocks.broadcast(),
            FoldContext {
                job: Arc::clone(job),
                counts: Rc::clone(&counts),
                flush: plan.flush,
                metrics: plan.metrics.clone(),
            },
        );
        let sink_dead = folded
            .views
            .write_views(view_sinks, Rc::clone(&sink_failure), plan.metrics.clone());
        ingested
            .dead_letters
            .concat(folded.dead_letters)
            .concat(sink_dead)
            .write_dead_letters(dead_sink, Rc::clone(&sink_failure))
            .probe_with(&durable);
    });
    while worker.has_dataflows() {
        if shared.error.borrow().is_some() || sink_failure.borrow().is_some() {
            worker.drop_dataflow(dataflow);
            break;
        }
        worker.step_or_park(Some(Duration::from_millis(50)));
    }
    if let Some(error) = shared.error.borrow_mut().take() {
        return Err(chain(&error));
    }
    if let Some(error) = sink_failure.borrow_mut().take() {
        return Err(chain(&error));
    }
    // Every sink has flushed: what was read is durable, commit all of it.
    if let Some(positions) = shared.final_positions.borrow_mut().take() {
        source.borrow_mut().commit(&positions).map_err(|e| chain(&e))?;
    }
    let counts = counts.borrow().clone();
    Ok(WorkerReport {
        counts,
        max_event_time: shared.max_event_time.get(),
    })
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
    fn write(&mut self, _letters: &[DeadLetter]) -> Result<(), SinkError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_url("redis://:hunter2@10.0.0.1:6379/0"),
            "redis://[redacted]@10.0.0.1:6379/0"
        );
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
