//! Running a job: pick the source (archived files or Kafka), build the dataflow on
//! every worker, run it to the end of its input (or until it is stopped), and summarise.
//!
//! The dataflow is the same for every source:
//! `ingest -> (exchange by user) fold -> view sinks`, with dead letters from ingest,
//! fold and the view sinks going to the dead-letter sink, and a probe after that sink
//! telling the ingest operator which source positions are safe to commit.

mod aside;
pub mod control;
pub mod options;
mod outputs;
mod plan;
pub mod progress;
mod watchdog;
mod worker;

use std::sync::Arc;
use std::time::Instant;

use crate::error_chain as chain;
use crate::job::Job;
use crate::run::progress::Progress;
use crate::sinks::SinkError;
use crate::sinks::jsonl::merge_parts;
use crate::source::SourceError;
use crate::summary::{Counts, Summary};
use aside::{Aside, aside_path};
pub use options::{Cluster, DEFAULT_BATCH, ExportMode, RunOptions, apply_overrides};
use plan::{Inputs, Plan, choose_inputs, describe_outputs};
use watchdog::Watchdog;

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
            outputs::check(&job, partitions, patterns, options.spine.as_deref())?;
        }
        Inputs::Kafka { .. } => outputs::check(&job, &[], &[], options.spine.as_deref())?,
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
        .map(|stop| Watchdog::start(Arc::clone(stop), plan.blocking.clone(), aside.clone()));
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
    let mut training = None;
    if let Some(spec) = &job.export {
        training = Some(finish_export(&plan, spec, interrupted || streaming)?);
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
    summary.spine_rows = plan
        .spine_counts
        .map(|(read, dead_lettered)| crate::summary::SpineRows { read, dead_lettered });
    if let Some((rows, report)) = training {
        summary.training_rows = Some(rows);
        summary.skew_failed = report.as_ref().map(|r| r.failed.clone());
        summary.skew = report;
    }
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
        let written = if crate::sinks::replaceable(path) {
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

/// The export's end on process 0: the JSONL form merged from its parts (kept for a
/// run that may be resumed), and the skew report written.
fn finish_export(
    plan: &Plan,
    spec: &crate::model::training::ExportSpec,
    resumable: bool,
) -> Result<(u64, Option<crate::skew::Report>), RunError> {
    let job = &plan.job;
    if let Some(path) = &spec.formats.jsonl {
        let parts = crate::sinks::training::parts_dir(path);
        crate::sinks::training::merge_jsonl(&parts, path)?;
        if !resumable {
            let _ = std::fs::remove_dir_all(&parts);
        }
    }
    let rows = plan.exported.load(std::sync::atomic::Ordering::Relaxed);
    let Some(skew) = &plan.skew else {
        return Ok((rows, None));
    };
    let shared = skew.lock().unwrap_or_else(|p| p.into_inner());
    let features: Vec<String> = job.features.features.iter().map(|f| f.name.clone()).collect();
    let report = crate::skew::Report::new(&job.name, spec, &features, &shared.totals);
    let write = |path: &std::path::Path, text: String| -> Result<(), RunError> {
        crate::sinks::create_parent(path)?;
        std::fs::write(path, text).map_err(|source| {
            RunError::Sink(SinkError::Io {
                path: path.display().to_string(),
                source,
            })
        })
    };
    if let Some(path) = &spec.skew.report {
        write(
            path,
            serde_json::to_string_pretty(&report).expect("a report serializes") + "\n",
        )?;
    }
    if let Some(path) = &spec.skew.html {
        write(path, crate::skew::html::render(&report, shared.examples.all()))?;
    }
    Ok((rows, Some(report)))
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
