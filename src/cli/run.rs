//! `skewless run`: a job over its inputs, the run summary on stdout.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::Args;

use skewless::job::{Job, LatePolicy};
use skewless::kafka::settings::StartPosition;
use skewless::model::span::Span;
use skewless::run::{Cluster, ExportMode, RunOptions, run};
use skewless::summary::Summary;

use super::any_path;

#[derive(Args)]
pub struct RunArgs {
    /// The job file.
    pub job: PathBuf,
    /// An input partition: a .jsonl/.jsonl.gz file, a directory of segments, or a glob
    /// (each match is a partition). Repeatable; overrides the job's `source.files`.
    #[arg(long = "input", short = 'i')]
    pub inputs: Vec<String>,
    /// Worker threads.
    #[arg(long, short = 'w', default_value_t = 1)]
    pub workers: usize,
    /// Write the JSONL view snapshot here ("" for none).
    #[arg(long, value_parser = any_path)]
    pub views_jsonl: Option<PathBuf>,
    /// Write SQLite views here ("" for none).
    #[arg(long, value_parser = any_path)]
    pub views_sqlite: Option<PathBuf>,
    /// Write dead letters here ("" to keep none).
    #[arg(long, value_parser = any_path)]
    pub dlq: Option<PathBuf>,
    /// Write the run summary here ("" for none).
    #[arg(long = "summary-json", value_parser = any_path)]
    pub summary: Option<PathBuf>,
    /// Allowed lateness, such as "5s".
    #[arg(long)]
    pub allowed_lateness: Option<Span>,
    /// What to do with late events.
    #[arg(long, value_enum)]
    pub late_policy: Option<LatePolicy>,
    /// Records read per worker activation.
    #[arg(long, default_value_t = 0, hide = true)]
    pub batch: usize,
    /// Plain .jsonl files over twice this many bytes are read in ranges of about this
    /// size by every worker (0: one worker per file).
    #[arg(long, hide = true)]
    pub split_bytes: Option<u64>,
    /// Never show the progress line.
    #[arg(long)]
    pub no_progress: bool,
    /// Kafka brokers (host:port,...); overrides `source.kafka.brokers`.
    #[arg(long)]
    pub brokers: Option<String>,
    /// A Kafka topic to read (repeatable); the run then reads Kafka.
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// Consumer group offsets are committed under.
    #[arg(long)]
    pub group: Option<String>,
    /// Where to start reading Kafka: committed, earliest, latest or an RFC 3339 time.
    #[arg(long, value_parser = |s: &str| s.parse::<StartPosition>())]
    pub start: Option<StartPosition>,
    /// Redis URL for the view store (redis://host:port).
    #[arg(long)]
    pub redis: Option<String>,
    /// End a Kafka run cleanly (flush, commit, summary) once every partition has been
    /// idle this long.
    #[arg(long)]
    pub exit_when_idle: Option<Span>,
    /// Serve Prometheus metrics on this address (GET /metrics), such as 127.0.0.1:9464.
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Checkpoint directory; overrides `checkpoint.dir` ("" turns checkpoints off).
    #[arg(long, value_parser = any_path)]
    pub checkpoint_dir: Option<PathBuf>,
    /// How often to take a checkpoint, such as "30s"; overrides `checkpoint.interval`.
    #[arg(long)]
    pub checkpoint_interval: Option<Span>,
    /// Start over: remove the job's checkpoints instead of resuming from the latest.
    #[arg(long)]
    pub fresh: bool,
    /// Processes in the cluster that runs this job (timely's cluster mode).
    #[arg(long, short = 'n', default_value_t = 1)]
    pub processes: usize,
    /// This process's index in the cluster, from 0.
    #[arg(long, short = 'p', default_value_t = 0)]
    pub process: usize,
    /// File with one host:port per process, in process order (default: 127.0.0.1:2101,
    /// 127.0.0.1:2102, ...).
    #[arg(long, short = 'H')]
    pub hostfile: Option<PathBuf>,
    /// Leave out the job's training export (`[export]`).
    #[arg(long)]
    pub no_export: bool,
    /// Write the training export's Parquet dataset here (its JSONL form beside it).
    #[arg(long)]
    pub export_dir: Option<PathBuf>,
    /// Write the serving-skew report here (its HTML page beside it).
    #[arg(long)]
    pub skew_report: Option<PathBuf>,
    /// Write the training export in this format instead of the job's (repeatable).
    #[arg(long = "export-format", value_enum)]
    pub export_formats: Vec<skewless::job::file::ExportFormat>,
    /// Take the export's spine from this file (Parquet, CSV or JSONL of row_id,
    /// user_id, ts[, item_id]; ts in epoch seconds) instead of the log's spine events.
    #[arg(long)]
    pub spine: Option<PathBuf>,
}

/// A flag that SIGINT and SIGTERM set: the run stops consuming, flushes its sinks,
/// commits (a run over files checkpoints where it stopped) and exits: 0 for a
/// streaming run, [`INTERRUPTED`] for a run over files that had not reached its end.
fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing signal handlers")?;
    }
    Ok(stop)
}

/// Runs the command.
pub fn main(args: RunArgs) -> anyhow::Result<ExitCode> {
    let job = Job::load(&args.job)?;
    let options = options(args)?;
    let summary = run(job, &options).context("run failed")?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    if std::io::stderr().is_terminal() {
        eprint!("{}", human_summary(&summary));
    }
    if let Some(report) = &summary.skew {
        eprint!("{}", report.table());
        if !report.failed.is_empty() {
            eprintln!(
                "serving skew over its threshold: {} (`skewless skew` exits 1 on this)",
                report.failed.join(", ")
            );
        }
    }
    for (name, path) in &summary.outputs {
        eprintln!("{name}: {path}");
    }
    if summary.interrupted {
        eprintln!(
            "interrupted before the end of the input (watermark {}); run the same command again to resume",
            summary.watermark.map_or("-".to_owned(), |w| format!("{w}"))
        );
        return Ok(ExitCode::from(INTERRUPTED));
    }
    Ok(ExitCode::SUCCESS)
}

/// The run options the flags ask for.
pub fn options(args: RunArgs) -> anyhow::Result<RunOptions> {
    Ok(RunOptions {
        inputs: args.inputs,
        workers: args.workers,
        views_sqlite: args.views_sqlite,
        views_jsonl: args.views_jsonl,
        dlq: args.dlq,
        summary: args.summary,
        allowed_lateness: args.allowed_lateness,
        late_policy: args.late_policy,
        batch: args.batch,
        progress: !args.no_progress,
        brokers: args.brokers,
        topics: args.topics,
        group: args.group,
        start: args.start,
        redis: args.redis,
        exit_when_idle: args.exit_when_idle.map(Span::duration),
        stop: Some(stop_on_signals()?),
        metrics_addr: args.metrics_addr,
        checkpoint_dir: args.checkpoint_dir,
        checkpoint_interval: args.checkpoint_interval,
        fresh: args.fresh,
        cluster: if args.processes > 1 || args.hostfile.is_some() || args.process > 0 {
            Some(Cluster::new(
                args.processes,
                args.process,
                args.hostfile.as_deref(),
            )?)
        } else {
            None
        },
        stop_after: None,
        export: if args.no_export {
            ExportMode::Off
        } else {
            ExportMode::AsJob
        },
        export_dir: args.export_dir,
        skew_report: args.skew_report,
        export_formats: args.export_formats,
        spine: args.spine,
        replay: None,
        split_bytes: args.split_bytes,
    })
}

/// The exit status of a run over files stopped before the end of its input.
pub const INTERRUPTED: u8 = 130;

/// The summary for a person at a terminal: what was read and what became of it.
fn human_summary(summary: &Summary) -> String {
    use std::fmt::Write;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{}: read {} records in {:.2} s ({:.0}/s): {} applied, {} duplicates, {} ignored, {} late ({} dropped), {} dead letters; {} users",
        summary.job,
        summary.read,
        summary.wall_time_s,
        summary.events_per_s,
        summary.applied,
        summary.duplicates,
        summary.ignored,
        summary.late,
        summary.late_dropped,
        summary.dlq_total,
        summary.users
    );
    for (reason, count) in summary.dlq.iter().filter(|(_, n)| **n > 0) {
        let _ = writeln!(text, "  dead letters {reason}: {count}");
    }
    text
}
