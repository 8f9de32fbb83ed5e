//! Running a job: pick the source (archived files or Kafka), build the dataflow on
//! every worker, run it to the end of its input (or until it is stopped), and summarise.
//!
//! The dataflow is the same for every source:
//! `ingest -> (exchange by user) fold -> view sinks`, with dead letters from ingest,
//! fold and the view sinks going to the dead-letter sink, and a probe after that sink
//! telling the ingest operator which source positions are safe to commit.

pub mod control;
pub mod options;
mod outputs;
mod plan;
pub mod progress;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::error_chain as chain;
use crate::job::Job;
use crate::run::progress::Progress;
use crate::sinks::SinkError;
use crate::sinks::jsonl::merge_parts;
use crate::source::SourceError;
use crate::summary::{Counts, Summary};
pub use options::{Cluster, DEFAULT_BATCH, RunOptions, apply_overrides};
use plan::{Inputs, Plan, choose_inputs, describe_outputs};

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

/// How a run is spread out, and whether it streams.
#[derive(Debug, Clone, Copy)]
struct Shape {
    /// Worker threads of this process.
    workers: usize,
    /// Processes of the cluster (1 without one).
    processes: usize,
    /// This process.
    process: usize,
    /// Workers of all processes.
    peers: usize,
    /// The run reads Kafka (no end of input).
    streaming: bool,
}

impl Shape {
    fn of(options: &RunOptions, inputs: &Inputs) -> Shape {
        let (processes, process) = match &options.cluster {
            Some(cluster) => (cluster.addresses.len(), cluster.process),
            None => (1, 0),
        };
        Shape {
            workers: options.workers,
            processes,
            process,
            peers: options.workers * processes,
            streaming: matches!(inputs, Inputs::Kafka { .. }),
        }
    }
}

/// Runs `job` to the end of its input: archived files to their end, Kafka until
/// stopped or idle.
pub fn run(mut job: Job, options: &RunOptions) -> Result<Summary, RunError> {
    let started = Instant::now();
    options.check()?;
    apply_overrides(&mut job, options);
    let inputs = choose_inputs(&job, options)?;
    let shape = Shape::of(options, &inputs);
    let Shape {
        processes,
        process,
        peers,
        streaming,
        ..
    } = shape;
    if job.sinks.archive.is_some() && !streaming {
        return Err(RunError::Options(
            "an archive sink archives Kafka topics; this run reads files".into(),
        ));
    }
    if job.archive_only() {
        job.sinks.views_sqlite = None;
        job.sinks.views_jsonl = None;
    }
    // Before anything is opened for writing.
    match &inputs {
        Inputs::Files(partitions) => {
            let patterns = if options.inputs.is_empty() {
                &job.inputs
            } else {
                &options.inputs
            };
            outputs::check(&job, partitions, patterns)?;
        }
        Inputs::Kafka { .. } => outputs::check(&job, &[], &[])?,
    }
    // A backfill writes its files under temporary names, published when it ends: a
    // failed run leaves the previous run's outputs as they were.
    let aside = (!streaming).then(|| Aside::new(&mut job, process, processes, peers));
    let result = execute(job, inputs, options, started, shape, &aside);
    if let (Err(_), Some(aside)) = (&result, &aside) {
        aside.discard();
    }
    result
}

/// Runs the planned job; on success publishes what was written aside.
fn execute(
    job: Job,
    inputs: Inputs,
    options: &RunOptions,
    started: Instant,
    shape: Shape,
    aside: &Option<Aside>,
) -> Result<Summary, RunError> {
    let Shape {
        workers,
        processes,
        process,
        peers,
        streaming,
    } = shape;
    let plan = Arc::new(Plan::build(job, inputs, options, workers, process)?);
    let resumed_from = plan.resumed_from;
    let progress = Progress::start(Arc::clone(&plan.records), options.progress);
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
    let _watchdog = options
        .stop
        .as_ref()
        .map(|stop| Watchdog::start(Arc::clone(stop), plan.blocking.clone()));
    // Connecting to the cluster's peers waits for them, for good if they never come.
    plan.blocking.enter(workers);
    let guards = timely::execute(config, move |worker| {
        worker_plan.blocking.leave(worker_plan.workers);
        worker::start(worker, &worker_plan)
    })
    .map_err(RunError::Engine);
    plan.blocking.leave(workers);
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
    let Some(plan::RunEnd {
        counts,
        watermark,
        interrupted,
    }) = global
    else {
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
        && !interrupted
    {
        crate::checkpoint::clear(&checkpoint.dir).map_err(|e| RunError::Checkpoint(chain(&e)))?;
    }
    let mut summary = summary_of(&counts, watermark);
    summary.interrupted = interrupted;
    summary.resumed_from_checkpoint = resumed_from;
    if resumed_from.is_some() {
        let read_now = plan.records.load(std::sync::atomic::Ordering::Relaxed);
        summary.events_per_s = read_now as f64 / summary.wall_time_s.max(1e-9);
    }
    if processes > 1 {
        summary.processes = Some(processes);
    }
    describe_outputs(&plan, &mut summary);
    if let Some(aside) = aside {
        aside.publish(&mut summary)?;
    }
    if let Some(path) = &job.sinks.summary {
        crate::sinks::create_parent(path)?;
        let text = serde_json::to_string_pretty(&summary).expect("a summary serializes") + "\n";
        let written = if replaceable(path) {
            let partial = aside_path(path);
            std::fs::write(&partial, text).and_then(|()| std::fs::rename(&partial, path))
        } else {
            std::fs::write(path, text)
        };
        written.map_err(|source| SinkError::Io {
            path: path.display().to_string(),
            source,
        })?;
    }
    tracing::info!(job = %job.name, read = summary.read, seconds = summary.wall_time_s, "run finished");
    Ok(summary)
}

/// Where a backfill writes `path` until it is published: `<path>.partial`.
fn aside_path(path: &std::path::Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

/// Whether `path` can be written aside and renamed into place: not when it names
/// something other than a regular file (`/dev/null`, a FIFO), which a rename would
/// replace.
fn replaceable(path: &std::path::Path) -> bool {
    std::fs::metadata(path).map_or(true, |m| m.is_file())
}

/// The files a backfill writes under temporary names: the SQLite views and the dead
/// letters (`<path>.partial`) and the JSONL views (per-worker parts, merged). They
/// replace the previous outputs only when the run ends (an interrupted run included:
/// it says so); a failed run removes them, except dead letters a checkpoint will
/// resume with.
struct Aside {
    /// `(partial, final)` for each file written aside.
    files: Vec<(PathBuf, PathBuf)>,
    jsonl: Option<PathBuf>,
    peers: usize,
    checkpoints: Option<PathBuf>,
    dead_letters: Option<PathBuf>,
}

impl Aside {
    /// Points the job's SQLite and dead-letter paths at their temporary names.
    fn new(job: &mut Job, process: usize, processes: usize, peers: usize) -> Aside {
        let mut files = Vec::new();
        for path in [&mut job.sinks.views_sqlite, &mut job.sinks.dlq]
            .into_iter()
            .flatten()
            .filter(|path| replaceable(path))
        {
            let partial = aside_path(path);
            files.push((partial.clone(), std::mem::replace(path, partial)));
        }
        // An interrupted run published its dead letters; a run that resumes it goes
        // on from them (a fresh run starts the file over anyway).
        if process == 0
            && let Some(partial) = &job.sinks.dlq
            && let Some((_, published)) = files.iter().find(|(p, _)| p == partial)
            && !partial.exists()
            && published.exists()
        {
            let _ = std::fs::copy(published, partial);
        }
        // A stale SQLite file of a killed run would be upserted into; a new run
        // starts it afresh (its views are written at the end, from the state). The
        // processes of a cluster share the file, and may have opened it already.
        if processes == 1
            && let Some(sqlite) = &job.sinks.views_sqlite
        {
            let mut journal = sqlite.clone().into_os_string();
            journal.push("-journal");
            for stale in [sqlite.clone(), PathBuf::from(journal)] {
                let _ = std::fs::remove_file(stale);
            }
        }
        Aside {
            files,
            jsonl: job.sinks.views_jsonl.clone(),
            peers,
            checkpoints: job.checkpoint.dir.clone(),
            dead_letters: job.sinks.dlq.clone(),
        }
    }

    /// Replaces the final files with what this run wrote, and says so in `summary`.
    fn publish(&self, summary: &mut Summary) -> Result<(), SinkError> {
        for (partial, path) in &self.files {
            if partial.exists() {
                std::fs::rename(partial, path).map_err(|source| SinkError::Io {
                    path: path.display().to_string(),
                    source,
                })?;
            }
            let (partial, path) = (partial.display().to_string(), path.display().to_string());
            for shown in summary.outputs.values_mut().filter(|shown| **shown == partial) {
                shown.clone_from(&path);
            }
        }
        Ok(())
    }

    /// Removes what a failed run wrote aside. Dead letters stay when a checkpoint
    /// holds the run's progress: the next run resumes from both.
    fn discard(&self) {
        let resumable = self
            .checkpoints
            .as_deref()
            .is_some_and(|dir| !crate::checkpoint::epochs(dir).is_empty());
        for (partial, _) in &self.files {
            if resumable && Some(partial) == self.dead_letters.as_ref() {
                continue;
            }
            let _ = std::fs::remove_file(partial);
        }
        if let Some(path) = &self.jsonl {
            for worker in 0..self.peers {
                let _ = std::fs::remove_file(crate::sinks::jsonl::part_path(path, worker));
            }
            let _ = std::fs::remove_file(path.with_extension("jsonl.tmp"));
        }
    }
}

/// After a stop request, ends the process (exit 130) when the run is stuck in a call
/// that never returns, a read of a FIFO without a writer or of `/dev/zero`, or
/// peers that never connect, for more than [`Watchdog::PATIENCE`] without progress
/// (a read that hands out records marks its progress): such a run could only be
/// killed. A run at work stops cleanly, however long its flush takes.
struct Watchdog {
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl Watchdog {
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

    fn start(
        stop: Arc<std::sync::atomic::AtomicBool>,
        blocking: crate::dataflow::ingest::Blocking,
    ) -> Watchdog {
        use std::sync::atomic::Ordering;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let finished = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut stopped_at = None;
            while !finished.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(50));
                if !stop.load(Ordering::Relaxed) {
                    continue;
                }
                let since = *stopped_at.get_or_insert_with(Instant::now);
                let stuck = blocking.longest().is_some_and(|d| d >= Self::PATIENCE);
                if stuck && since.elapsed() >= Self::PATIENCE {
                    eprintln!(
                        "stopped: the run was blocked (a read that does not return, or cluster peers that do not connect); exiting without a clean stop"
                    );
                    std::process::exit(130);
                }
            }
        });
        Watchdog { done }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
    }
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

/// The later of two optional event times.
fn max_time(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Runs `job` over archived files to the end of its input.
pub fn run_files(job: Job, options: &RunOptions) -> Result<Summary, RunError> {
    run(job, options)
}
