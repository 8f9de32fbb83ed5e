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

use crate::checkpoint::PartitionState;
use crate::checkpoint::protocol::{Checkpointing, Control, Coordinator};
use crate::control::ControlPlane;
use crate::dead_letter::DeadLetter;
use crate::error_chain as chain;
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
use crate::sinks::sqlite::{Journal, SqliteViews};
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
    /// Checkpoint directory; empty turns checkpoints off.
    pub checkpoint_dir: Option<PathBuf>,
    /// How often a checkpoint is taken.
    pub checkpoint_interval: Option<Span>,
    /// Start over: ignore and remove the job's checkpoints.
    pub fresh: bool,
    /// Run as one process of a cluster.
    pub cluster: Option<Cluster>,
}

/// One process's place in a cluster of processes running one job together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// This process, from 0.
    pub process: usize,
    /// `host:port` of every process, in process order.
    pub addresses: Vec<String>,
}

impl Cluster {
    /// The cluster of `processes` processes whose addresses `hostfile` lists, one
    /// `host:port` per line (`#` comments and blank lines aside); without a hostfile,
    /// `127.0.0.1:2101`, `127.0.0.1:2102`, and so on.
    pub fn new(
        processes: usize,
        process: usize,
        hostfile: Option<&std::path::Path>,
    ) -> Result<Cluster, RunError> {
        if process >= processes {
            return Err(RunError::Options(format!(
                "--process {process} is not one of the {processes} processes (0 to {})",
                processes.saturating_sub(1)
            )));
        }
        let addresses = match hostfile {
            None => (0..processes)
                .map(|i| format!("127.0.0.1:{}", 2101 + i))
                .collect(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    RunError::Options(format!("cannot read hostfile {}: {e}", path.display()))
                })?;
                let mut addresses = Vec::new();
                for (number, line) in text.lines().enumerate() {
                    let line = line.split('#').next().unwrap_or("").trim();
                    if line.is_empty() {
                        continue;
                    }
                    if line
                        .rsplit_once(':')
                        .is_none_or(|(_, port)| port.parse::<u16>().is_err())
                    {
                        return Err(RunError::Options(format!(
                            "{}:{}: `{line}` is not host:port",
                            path.display(),
                            number + 1
                        )));
                    }
                    addresses.push(line.to_owned());
                }
                if addresses.len() < processes {
                    return Err(RunError::Options(format!(
                        "{} lists {} addresses for {processes} processes",
                        path.display(),
                        addresses.len()
                    )));
                }
                addresses.truncate(processes);
                addresses
            }
        };
        Ok(Cluster { process, addresses })
    }
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
    /// A checkpoint cannot be restored into this run.
    #[error("{0}")]
    Checkpoint(String),
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
/// broker's read rate unused (scripts/bench-stream.sh). Workers run up to a few batches
/// ahead of each other, so memory in flight grows with it: 64k-record batches held
/// ~85 MiB more than 16k in the 5M-event backfill bench, for no measurable speed.
pub const DEFAULT_BATCH: usize = 1 << 14;

/// What one worker reports when it is done: its own counts, and on worker 0 the
/// whole run's (every worker's, gathered over the control dataflow).
struct WorkerReport {
    counts: Counts,
    max_event_time: Option<f64>,
    global: Option<(Counts, Option<f64>)>,
}

/// A run's checkpoints.
struct CheckpointPlan {
    dir: PathBuf,
    interval: Duration,
    keep: usize,
    /// The newest epoch under `dir`, complete or not: new ones number on from it.
    last_epoch: u64,
}

/// A restored checkpoint, until every local worker has taken its share.
struct Restoring {
    restored: Option<crate::checkpoint::Restored>,
    left: usize,
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
    checkpoint: Option<CheckpointPlan>,
    restoring: std::sync::Mutex<Restoring>,
}

impl Plan {
    /// Worker `index`'s share of the restored checkpoint; the last local worker to
    /// take its share frees the checkpoint.
    fn take_share(&self, index: usize, peers: usize) -> crate::checkpoint::Share {
        let mut restoring = self.restoring.lock().unwrap_or_else(|p| p.into_inner());
        let share = restoring
            .restored
            .as_ref()
            .map(|restored| restored.share(index, peers))
            .unwrap_or_default();
        restoring.left = restoring.left.saturating_sub(1);
        if restoring.left == 0 {
            restoring.restored = None;
        }
        share
    }
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
    if let Some(dir) = &options.checkpoint_dir {
        job.checkpoint.dir = (!dir.as_os_str().is_empty()).then(|| dir.clone());
    }
    if let Some(interval) = options.checkpoint_interval {
        job.checkpoint.interval = interval;
    }
}

/// Runs `job` to the end of its input: archived files to their end, Kafka until
/// stopped or idle.
pub fn run(mut job: Job, options: &RunOptions) -> Result<Summary, RunError> {
    let started = Instant::now();
    apply_overrides(&mut job, options);
    let inputs = choose_inputs(&job, options)?;
    let workers = options.workers.max(1);
    let (processes, process) = match &options.cluster {
        Some(cluster) => (cluster.addresses.len(), cluster.process),
        None => (1, 0),
    };
    let peers = workers * processes;
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
    let (checkpoint, restored) = prepare_checkpoints(&job, &inputs, options, process)?;
    // A backfill writes its views once, at the end: see `Journal::Rollback`.
    let journal = if streaming {
        Journal::Wal
    } else {
        Journal::Rollback
    };
    let sqlite = job
        .sinks
        .views_sqlite
        .as_deref()
        .map(|path| SqliteViews::open(path, journal))
        .transpose()?;
    let resuming = restored.is_some();
    let dead_letters = match (&inputs, &options.dlq, &job.sinks.dlq) {
        (Inputs::Kafka { kafka, .. }, None, _) if !job.archive_only() => {
            let topics = DeadLetterTopics::new(&kafka.topics, job.sinks.dlq_topic.clone());
            for topic in topics.all() {
                kafka
                    .settings
                    .ensure_topic(&topic, 1)
                    .map_err(|e| SourceError::Broker(e.to_string()))?;
            }
            DeadLetters::Kafka(if resuming {
                KafkaDeadLetters::resume(&kafka.settings, topics)?
            } else {
                KafkaDeadLetters::new(&kafka.settings, topics)?
            })
        }
        // A resumed run keeps what the file holds; in a cluster, process 0 starts it.
        (_, _, Some(path)) if resuming => DeadLetters::File(DeadLetterFile::resume(path)?),
        (_, _, Some(path)) if process == 0 => DeadLetters::File(DeadLetterFile::create(path)?),
        (_, _, Some(path)) => DeadLetters::File(DeadLetterFile::append(path)?),
        (_, _, None) => DeadLetters::Discard,
    };
    let lateness_ms = (job.allowed_lateness_secs() * 1000.0) as u64;
    let pacing = Pacing {
        batch: if options.batch == 0 {
            DEFAULT_BATCH
        } else {
            options.batch
        },
        max_skew_ms: (lateness_ms * 10).max(60_000),
        exit_when_idle: options.exit_when_idle.filter(|_| streaming),
        commit_interval: match &inputs {
            Inputs::Kafka { kafka, .. } => kafka.commit_interval.duration(),
            Inputs::Files(_) => Duration::from_secs(1),
        },
        idle_poll: Duration::from_millis(20),
    };
    let flush = if streaming {
        FlushPolicy::Every(job.sinks.flush_interval.duration())
    } else {
        FlushPolicy::AtEnd
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
    let resumed_from = restored.as_ref().map(|r| r.manifest.epoch);
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
        checkpoint,
        restoring: std::sync::Mutex::new(Restoring {
            restored,
            left: workers,
        }),
    });
    tracing::info!(job = %plan.job.name, workers, processes, process, streaming, resumed_from, "run starting");

    let config = match &options.cluster {
        None => timely::Config::process(workers),
        Some(cluster) => timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads: workers,
                process: cluster.process,
                addresses: cluster.addresses.clone(),
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        },
    };
    let worker_plan = Arc::clone(&plan);
    // timely prints "awaiting connections" on stdout while a cluster connects; stdout
    // carries the run summary, so it goes to stderr until the workers have started.
    let stdout = match &options.cluster {
        Some(_) => {
            Some(StdoutToStderr::new().map_err(|e| RunError::Engine(format!("redirecting stdout: {e}")))?)
        }
        None => None,
    };
    let guards = timely::execute(config, move |worker| {
        let plan = &worker_plan;
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
                let mine: Vec<FilePartition> =
                    partitions.iter().skip(index).step_by(peers).cloned().collect();
                let mut source = FileSource::new(mine, plan.job.max_event_bytes);
                let resume = resume_of(&source.partition_names());
                for (partition, state) in resume.iter().enumerate() {
                    if let Some(state) = state {
                        source.skip(partition, state.position).map_err(|e| chain(&e))?;
                    }
                }
                run_worker(worker, source, None, plan, share, resume)
            }
            Inputs::Kafka {
                kafka,
                partitions,
                start,
            } => {
                let mine: Vec<(String, i32)> =
                    partitions.iter().skip(index).step_by(peers).cloned().collect();
                let names: Vec<String> = mine.iter().map(|(t, p)| format!("{t}/{p}")).collect();
                let resume = resume_of(&names);
                let offsets: Vec<Option<i64>> =
                    resume.iter().map(|s| s.as_ref().map(|s| s.position)).collect();
                let on_lag = plan.metrics.clone().map(|metrics| {
                    Arc::new(move |topic: &str, partition: i32, lag: i64| {
                        metrics.consumer_lag(topic, partition, lag)
                    }) as crate::source::kafka::LagReport
                });
                let source =
                    KafkaSource::open(&kafka.settings, &kafka.group, &mine, *start, &offsets, on_lag)
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
    })
    .map_err(RunError::Engine);
    drop(stdout);
    let guards = guards?;

    let mut local = Counts::default();
    let mut local_watermark: Option<f64> = None;
    let mut global = None;
    let mut errors = Vec::new();
    for result in guards.join() {
        match result {
            Ok(Ok(report)) => {
                local.merge(&report.counts);
                local_watermark = max_time(local_watermark, report.max_event_time);
                global = global.or(report.global);
            }
            Ok(Err(error)) | Err(error) => errors.push(error),
        }
    }
    drop(progress);
    if let Some(error) = errors.into_iter().next() {
        return Err(RunError::Engine(error));
    }
    let job = &plan.job;
    let summary_of = |counts: &Counts, watermark: Option<f64>| {
        Summary::new(
            &job.name,
            counts,
            watermark,
            peers,
            started.elapsed().as_secs_f64(),
        )
    };
    let Some((counts, watermark)) = global else {
        // Another process of the cluster: process 0 gathers the counts and writes
        // the summary and the views snapshot.
        let mut summary = summary_of(&local, local_watermark);
        summary.process = Some(process);
        return Ok(summary);
    };
    if let Some(path) = &job.sinks.views_jsonl {
        merge_parts(path, 0..peers)?;
    }
    if !counts.conserved() {
        return Err(RunError::Conservation {
            read: counts.read,
            accounted: counts.accounted(),
        });
    }
    // A run over files that reached the end has nothing to resume.
    if let (Some(checkpoint), false) = (&plan.checkpoint, streaming)
        && !plan.stop.load(std::sync::atomic::Ordering::Relaxed)
    {
        crate::checkpoint::clear(&checkpoint.dir).map_err(|e| RunError::Checkpoint(chain(&e)))?;
    }
    let mut summary = summary_of(&counts, watermark);
    summary.resumed_from_checkpoint = resumed_from;
    if resumed_from.is_some() {
        let read_now = plan.records.load(std::sync::atomic::Ordering::Relaxed);
        summary.events_per_s = read_now as f64 / summary.wall_time_s.max(1e-9);
    }
    if processes > 1 {
        summary.processes = Some(processes);
    }
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

/// While it lives, what is written to stdout goes to stderr.
struct StdoutToStderr {
    saved: std::os::fd::OwnedFd,
}

impl StdoutToStderr {
    fn new() -> std::io::Result<StdoutToStderr> {
        use std::os::fd::AsFd;
        std::io::Write::flush(&mut std::io::stdout())?;
        let saved = std::io::stdout().as_fd().try_clone_to_owned()?;
        rustix::stdio::dup2_stdout(std::io::stderr())?;
        Ok(StdoutToStderr { saved })
    }
}

impl Drop for StdoutToStderr {
    fn drop(&mut self) {
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let _ = rustix::stdio::dup2_stdout(&self.saved);
    }
}

fn max_time(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Decides whether the run takes checkpoints and which one it resumes from.
///
/// Jobs that only archive keep no state and commit offsets as they go; a job that
/// also archives commits through the archive. Neither takes checkpoints. `--fresh`
/// removes the job's checkpoints (process 0 does, in a cluster). Otherwise the newest
/// complete, intact checkpoint is restored; newer ones that are not are reported and
/// skipped. A checkpoint of another job, of other state declarations, or of inputs
/// this run does not read is refused.
fn prepare_checkpoints(
    job: &Job,
    inputs: &Inputs,
    options: &RunOptions,
    process: usize,
) -> Result<(Option<CheckpointPlan>, Option<crate::checkpoint::Restored>), RunError> {
    let Some(dir) = job.checkpoint.dir.clone() else {
        return Ok((None, None));
    };
    if job.sinks.archive.is_some() {
        tracing::info!("no checkpoints: a job with an archive sink commits offsets through the archive");
        return Ok((None, None));
    }
    let refuse = |message: String| RunError::Checkpoint(format!("{message}; run with --fresh to start over"));
    if options.fresh && process == 0 {
        crate::checkpoint::clear(&dir).map_err(|e| RunError::Checkpoint(chain(&e)))?;
    }
    let mut load_seconds = 0.0;
    let restored = if options.fresh {
        None
    } else {
        let loading = Instant::now();
        let (restored, skipped) = crate::checkpoint::latest(&dir);
        load_seconds = loading.elapsed().as_secs_f64();
        for problem in &skipped {
            tracing::warn!(problem = %chain(problem), "skipping a checkpoint that cannot be restored");
            eprintln!("warning: skipping checkpoint: {}", chain(problem));
        }
        // Incomplete checkpoints are what a crash leaves behind; a damaged one with
        // nothing intact before it means the state is gone, which no run should hide.
        let damaged = skipped
            .iter()
            .find(|p| !matches!(p, crate::checkpoint::CheckpointError::Incomplete(_)));
        if let (None, Some(problem)) = (&restored, damaged) {
            return Err(refuse(format!(
                "no intact checkpoint to resume from in {} ({})",
                dir.display(),
                chain(problem)
            )));
        }
        restored
    };
    if let Some(restored) = &restored {
        let manifest = &restored.manifest;
        let at = crate::checkpoint::epoch_dir(&dir, manifest.epoch);
        if manifest.job != job.name {
            return Err(refuse(format!(
                "checkpoint {} belongs to job `{}`, not `{}`",
                at.display(),
                manifest.job,
                job.name
            )));
        }
        if manifest.features != crate::checkpoint::fingerprint(job) {
            return Err(refuse(format!(
                "checkpoint {} holds state of other [[state]]/[[features]] declarations than {} has now",
                at.display(),
                job.path.display()
            )));
        }
        let names: std::collections::BTreeSet<String> = match inputs {
            Inputs::Files(partitions) => partitions.iter().map(|p| p.name.clone()).collect(),
            Inputs::Kafka { partitions, .. } => partitions.iter().map(|(t, p)| format!("{t}/{p}")).collect(),
        };
        if let Some(missing) = crate::checkpoint::positions(restored)
            .keys()
            .find(|n| !names.contains(*n))
        {
            return Err(refuse(format!(
                "checkpoint {} covers input `{missing}`, which this run does not read",
                at.display()
            )));
        }
        tracing::info!(
            epoch = manifest.epoch,
            cut = manifest.cut,
            workers = manifest.workers,
            users = manifest.parts.iter().map(|p| p.users).sum::<u64>(),
            load_seconds,
            "resuming from a checkpoint"
        );
    }
    let plan = CheckpointPlan {
        last_epoch: crate::checkpoint::epochs(&dir).last().copied().unwrap_or(0),
        dir,
        interval: job.checkpoint.interval.duration(),
        keep: job.checkpoint.keep,
    };
    Ok((Some(plan), restored))
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
        stop: Arc::clone(&plan.stop),
        final_positions: Rc::new(RefCell::new(None)),
        metrics: plan.metrics.clone(),
        checkpointing: Rc::clone(&checkpointing),
        restored: resume,
        restored_counts: ingest_counts,
    };
    let sink_failure: SinkFailure = Rc::new(RefCell::new(None));
    let mut control = ControlPlane::new(worker);
    let durable = ProbeHandle::new();
    let dataflow = worker.next_dataflow_index();
    worker.dataflow::<u64, _, _>(|scope| {
        let global = ProbeHandle::new();
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
        // The probe sits on the clocks stream, whose capability moves with the events':
        // on the events stream it would stand between ingest and the exchange and drop
        // every container instead of handing it back for reuse.
        let clocks = ingested.clocks.probe_with(&global);
        let folded = ingested.events.fold_features(
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
    let mut gathered: Vec<(Counts, Option<f64>, Option<String>)> = Vec::new();
    let mut failure: Option<String> = None;
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
                Control::Stats {
                    counts,
                    max_event_time,
                    error,
                    ..
                } => gathered.push((counts.clone(), *max_event_time, error.clone())),
                other => checkpointing.borrow_mut().receive(other),
            }
        }
        if let Some(coordinator) = coordinator.as_mut() {
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
        && let Some(positions) = finals
        && let Err(error) = source.borrow_mut().commit(&positions)
    {
        failure = Some(chain(&error));
    }
    let local = counts.borrow().clone();
    let max_event_time = shared.max_event_time.get();
    control.to_zero(Control::Stats {
        worker: index,
        counts: local.clone(),
        max_event_time,
        error: failure.clone(),
    });
    let global = if index == 0 && failure.is_none() {
        while gathered.len() < peers && gathered.iter().all(|g| g.2.is_none()) {
            worker.step_or_park(Some(Duration::from_millis(20)));
            for message in control.take() {
                if let Control::Stats {
                    counts,
                    max_event_time,
                    error,
                    ..
                } = message
                {
                    gathered.push((counts, max_event_time, error));
                }
            }
        }
        let mut total = Counts::default();
        let mut watermark = None;
        for (counts, max, error) in &gathered {
            if let (None, Some(error)) = (&failure, error) {
                failure = Some(error.clone());
            }
            total.merge(counts);
            watermark = max_time(watermark, *max);
        }
        Some((total, watermark))
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

/// A dead-letter sink for runs that keep no dead letters (they are still counted).
struct Discard;

impl DeadLetterSink for Discard {
    fn write(&mut self, _letters: &[DeadLetter]) -> Result<(), SinkError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Cluster, redact_url};

    #[test]
    fn a_hostfile_names_every_process_or_is_refused_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(
            &hosts,
            "# the cluster\n10.0.0.1:2101\n\n10.0.0.2:2101  # second\n10.0.0.3:2101\n",
        )
        .unwrap();
        let cluster = Cluster::new(2, 1, Some(&hosts)).unwrap();
        assert_eq!(cluster.addresses, ["10.0.0.1:2101", "10.0.0.2:2101"]);
        assert_eq!(cluster.process, 1);
        assert_eq!(
            Cluster::new(3, 0, None).unwrap().addresses,
            ["127.0.0.1:2101", "127.0.0.1:2102", "127.0.0.1:2103"]
        );

        let error = Cluster::new(4, 0, Some(&hosts)).unwrap_err().to_string();
        assert!(error.contains("lists 3 addresses for 4 processes"), "{error}");
        let error = Cluster::new(2, 2, None).unwrap_err().to_string();
        assert!(
            error.contains("--process 2 is not one of the 2 processes"),
            "{error}"
        );
        std::fs::write(&hosts, "10.0.0.1:2101\n10.0.0.2\n").unwrap();
        let error = Cluster::new(2, 0, Some(&hosts)).unwrap_err().to_string();
        assert!(error.contains("hosts:2: `10.0.0.2` is not host:port"), "{error}");
    }

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_url("redis://:hunter2@10.0.0.1:6379/0"),
            "redis://[redacted]@10.0.0.1:6379/0"
        );
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
