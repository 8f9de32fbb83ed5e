//! The `skewless` command: run a job, check job files, generate synthetic logs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use skewless::broker::BrokerSettings;
use skewless::dlq::{self, DlqLocation};
use skewless::job::duration::Span;
use skewless::job::{Job, LatePolicy, StartPosition};
use skewless::lag;
use skewless::produce::produce_files;
use skewless::run::{Cluster, RunOptions, run};
use skewless::synthetic::{GenOptions, generate};

// Workers free events that other workers allocated; glibc's allocator spent a sixth of
// the run consolidating such frees (measured with perf on the 5M-event bench).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Event log to per-user ML features, with no training/serving skew.
#[derive(Parser)]
#[command(name = "skewless", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a job over its inputs and print the run summary.
    #[command(disable_help_flag = true)]
    Run(Box<RunArgs>),
    /// Check job files; report every problem with file, line and key.
    Validate {
        /// Job files to check.
        #[arg(required = true)]
        jobs: Vec<PathBuf>,
    },
    /// Generate deterministic synthetic event logs.
    Gen(GenArgs),
    /// Publish log files to a Kafka topic, keyed by user_id (one user, one partition).
    Produce(ProduceArgs),
    /// Inspect a dead-letter queue, or re-publish some of its records.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// List a job's checkpoints, or show one in detail.
    Checkpoint {
        #[command(subcommand)]
        command: CheckpointCommand,
    },
    /// Show a job's consumer lag per partition; exit 1 when over its lag tolerance.
    Lag {
        /// The job file (its `source.kafka` names the topics, group and tolerance).
        job: PathBuf,
        /// Kafka brokers; overrides the job's.
        #[arg(long)]
        brokers: Option<String>,
        /// Consumer group; overrides the job's.
        #[arg(long)]
        group: Option<String>,
        /// A topic (repeatable); overrides the job's.
        #[arg(long = "topic")]
        topics: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CheckpointCommand {
    /// Every checkpoint in DIR, newest first: epoch, status, cut, workers, users, size.
    List {
        /// The checkpoint directory (`checkpoint.dir`, by default out/<job>/checkpoints).
        dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One checkpoint: its cut, and every part's users, ids, pending events and
    /// partition positions and clocks. The newest complete one unless --epoch.
    Inspect {
        /// The checkpoint directory.
        dir: PathBuf,
        /// The epoch to show.
        #[arg(long)]
        epoch: Option<u64>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Summarise a dead-letter queue by reason and origin.
    Inspect {
        #[command(flatten)]
        location: DlqArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Re-publish the original events of the records with a reason to their source
    /// topic (their ids make this safe: applied events count as duplicates).
    Requeue {
        #[command(flatten)]
        location: DlqArgs,
        /// The failure reason of the records to re-publish.
        #[arg(long)]
        reason: String,
        /// Publish to this topic instead of each record's source topic.
        #[arg(long)]
        to_topic: Option<String>,
        /// Count what would be published, publish nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Args)]
struct DlqArgs {
    /// A dead-letter topic.
    #[arg(long, conflicts_with = "file", required_unless_present = "file")]
    topic: Option<String>,
    /// A dead-letter JSONL file.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Kafka brokers.
    #[arg(long, default_value = skewless::job::DEFAULT_BROKERS)]
    brokers: String,
    /// librdkafka settings, `key=value` (repeatable).
    #[arg(long = "option", short = 'X', value_parser = parse_option)]
    options: Vec<(String, String)>,
}

impl DlqArgs {
    fn settings(&self) -> BrokerSettings {
        BrokerSettings {
            brokers: self.brokers.clone(),
            options: self.options.iter().cloned().collect(),
        }
    }

    fn location(&self) -> DlqLocation {
        match (&self.topic, &self.file) {
            (Some(topic), _) => DlqLocation::Topic {
                settings: self.settings(),
                topic: topic.clone(),
            },
            (None, Some(file)) => DlqLocation::File(file.clone()),
            (None, None) => unreachable!("clap requires one"),
        }
    }
}

#[derive(Args)]
struct ProduceArgs {
    /// Kafka brokers.
    #[arg(long, default_value = skewless::job::DEFAULT_BROKERS)]
    brokers: String,
    /// The topic (created when missing).
    #[arg(long)]
    topic: String,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// At most this many records per second.
    #[arg(long)]
    rate: Option<f64>,
    /// librdkafka settings, `key=value` (repeatable).
    #[arg(long = "option", short = 'X', value_parser = parse_option)]
    options: Vec<(String, String)>,
    /// Files, directories or globs to publish, in order.
    #[arg(required = true)]
    inputs: Vec<String>,
}

fn parse_option(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got `{text}`"))
}

#[derive(Args)]
struct RunArgs {
    /// The job file.
    job: PathBuf,
    /// An input partition: a .jsonl/.jsonl.gz file, a directory of segments, or a glob
    /// (each match is a partition). Repeatable; overrides the job's `source.files`.
    #[arg(long = "input", short = 'i')]
    inputs: Vec<String>,
    /// Worker threads.
    #[arg(long, short = 'w', default_value_t = 1)]
    workers: usize,
    /// Write the JSONL view snapshot here ("" for none).
    #[arg(long, value_parser = any_path)]
    views_jsonl: Option<PathBuf>,
    /// Write SQLite views here ("" for none).
    #[arg(long, value_parser = any_path)]
    views_sqlite: Option<PathBuf>,
    /// Write dead letters here ("" to keep none).
    #[arg(long, value_parser = any_path)]
    dlq: Option<PathBuf>,
    /// Write the run summary here ("" for none).
    #[arg(long = "summary-json", value_parser = any_path)]
    summary: Option<PathBuf>,
    /// Allowed lateness, such as "5s".
    #[arg(long)]
    allowed_lateness: Option<Span>,
    /// What to do with late events.
    #[arg(long, value_enum)]
    late_policy: Option<LatePolicy>,
    /// Records read per worker activation.
    #[arg(long, default_value_t = 0, hide = true)]
    batch: usize,
    /// Never show the progress line.
    #[arg(long)]
    no_progress: bool,
    /// Kafka brokers (host:port,...); overrides `source.kafka.brokers`.
    #[arg(long)]
    brokers: Option<String>,
    /// A Kafka topic to read (repeatable); the run then reads Kafka.
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// Consumer group offsets are committed under.
    #[arg(long)]
    group: Option<String>,
    /// Where to start reading Kafka: committed, earliest, latest or an RFC 3339 time.
    #[arg(long, value_parser = |s: &str| s.parse::<StartPosition>())]
    start: Option<StartPosition>,
    /// Redis URL for the view store (redis://host:port).
    #[arg(long)]
    redis: Option<String>,
    /// End a Kafka run cleanly (flush, commit, summary) once every partition has been
    /// idle this long.
    #[arg(long)]
    exit_when_idle: Option<Span>,
    /// Serve Prometheus metrics on this address (GET /metrics), such as 127.0.0.1:9464.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Checkpoint directory; overrides `checkpoint.dir` ("" turns checkpoints off).
    #[arg(long, value_parser = any_path)]
    checkpoint_dir: Option<PathBuf>,
    /// How often to take a checkpoint, such as "30s"; overrides `checkpoint.interval`.
    #[arg(long)]
    checkpoint_interval: Option<Span>,
    /// Start over: remove the job's checkpoints instead of resuming from the latest.
    #[arg(long)]
    fresh: bool,
    /// Processes in the cluster that runs this job (timely's cluster mode).
    #[arg(long, short = 'n', default_value_t = 1)]
    processes: usize,
    /// This process's index in the cluster, from 0.
    #[arg(long, short = 'p', default_value_t = 0)]
    process: usize,
    /// File with one host:port per process, in process order (default: 127.0.0.1:2101,
    /// 127.0.0.1:2102, ...).
    #[arg(long, short = 'h')]
    hostfile: Option<PathBuf>,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

#[derive(Args)]
struct GenArgs {
    /// Output directory (one file per partition).
    #[arg(long)]
    out: PathBuf,
    /// Records in all.
    #[arg(long, default_value_t = 10_000)]
    events: u64,
    /// Distinct users.
    #[arg(long, default_value_t = 1_000)]
    users: u64,
    /// Zipf exponent of user activity (0 = uniform).
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Partitions (files).
    #[arg(long, default_value_t = 4)]
    partitions: usize,
    /// Distinct items.
    #[arg(long, default_value_t = 5_000)]
    items: u64,
    /// Event time covered, such as "1d".
    #[arg(long, default_value = "1d")]
    span: Span,
    /// Event time of the first record, seconds since the epoch.
    #[arg(long, default_value_t = 1_767_225_600.0)]
    start: f64,
    /// The job's allowed lateness (jitter stays inside it, late records beyond it).
    #[arg(long, default_value = "5s")]
    lateness: Span,
    /// Fraction of late records.
    #[arg(long, default_value_t = 0.0)]
    late: f64,
    /// Fraction of duplicate records.
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Fraction of malformed records.
    #[arg(long, default_value_t = 0.0)]
    malformed: f64,
    /// Fraction of purchases in the v1 schema.
    #[arg(long, default_value_t = 0.0)]
    v1: f64,
    /// Fraction of records of an unknown type.
    #[arg(long, default_value_t = 0.0)]
    unknown: f64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write plain .jsonl instead of .jsonl.gz.
    #[arg(long)]
    no_gzip: bool,
}

fn main() -> ExitCode {
    // A panicking worker would leave the others waiting on it forever: a panic ends
    // the process, as a crash does (a job with checkpoints resumes from the latest).
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::exit(101);
    }));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match main_inner() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints where a job reads and writes, as `skewless run` would without flags.
fn describe(job: &Job) {
    let kafka = job
        .kafka
        .as_ref()
        .filter(|k| !k.topics.is_empty() && job.inputs.is_empty());
    match kafka {
        Some(kafka) => println!(
            "  source: Kafka {} at {} (group {})",
            kafka.topics.join(", "),
            kafka.settings.brokers,
            kafka.group
        ),
        None if job.inputs.is_empty() => println!("  source: none (give --input or --topic)"),
        None => println!("  source: files {}", job.inputs.join(", ")),
    }
    let sinks = &job.sinks;
    let off = |p: &Option<PathBuf>| p.as_ref().map_or("off".to_owned(), |p| p.display().to_string());
    if job.archive_only() {
        println!("  archive only: no views, no dead letters");
    } else {
        println!("  views_sqlite: {}", off(&sinks.views_sqlite));
        println!("  views_jsonl: {}", off(&sinks.views_jsonl));
        if let Some(redis) = &sinks.redis {
            println!(
                "  views_redis: {} ({}<user_id>, ttl {})",
                redis.url, redis.key_prefix, redis.ttl
            );
        }
        match kafka {
            Some(kafka) => {
                let topics =
                    skewless::sinks::dlq_kafka::DeadLetterTopics::new(&kafka.topics, sinks.dlq_topic.clone());
                println!("  dlq: topics {}", topics.all().join(", "));
            }
            None => println!("  dlq: {}", off(&sinks.dlq)),
        }
    }
    if let Some(archive) = &sinks.archive {
        println!("  archive: {}", archive.dir.display());
    }
    println!("  summary: {}", off(&sinks.summary));
}

/// A flag that SIGINT and SIGTERM set: the run stops consuming, flushes its sinks,
/// commits and exits 0.
fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing signal handlers")?;
    }
    Ok(stop)
}

fn main_inner() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Run(args) => {
            let job = Job::load(&args.job)?;
            let options = RunOptions {
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
            };
            let summary = run(job, &options).context("run failed")?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            for (name, path) in &summary.outputs {
                eprintln!("{name}: {path}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { jobs } => {
            let mut ok = true;
            for path in jobs {
                match Job::load(&path) {
                    Ok(job) => {
                        println!(
                            "{}: ok (job `{}`: {} event types, {} states, {} features)",
                            path.display(),
                            job.name,
                            job.registry.types().len(),
                            job.features.states.len(),
                            job.features.features.len()
                        );
                        describe(&job);
                    }
                    Err(error) => {
                        ok = false;
                        eprintln!("{error}");
                    }
                }
            }
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Checkpoint { command } => checkpoint_command(command),
        Command::Dlq {
            command: DlqCommand::Inspect { location, json },
        } => {
            let records = dlq::read(&location.location())?;
            let report = dlq::inspect(&records);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{} dead letters ({} retryable)", report.total, report.retryable);
                for (reason, n) in &report.by_reason {
                    println!("  {reason:<28} {n:>10}");
                }
                println!("by origin:");
                for (origin, n) in &report.by_origin {
                    println!("  {origin:<28} {n:>10}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq {
            command:
                DlqCommand::Requeue {
                    location,
                    reason,
                    to_topic,
                    dry_run,
                },
        } => {
            let records = dlq::read(&location.location())?;
            let done = dlq::requeue(
                &records,
                &reason,
                &location.settings(),
                to_topic.as_deref(),
                dry_run,
            )?;
            println!("{}", serde_json::to_string_pretty(&done)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Lag {
            job,
            brokers,
            group,
            topics,
            json,
        } => {
            let job = Job::load(&job)?;
            let Some(mut kafka) = job.kafka.clone() else {
                anyhow::bail!("job `{}` has no `[source.kafka]`", job.name);
            };
            if let Some(brokers) = brokers {
                kafka.settings.brokers = brokers;
            }
            if let Some(group) = group {
                kafka.group = group;
            }
            if !topics.is_empty() {
                kafka.topics = topics;
            }
            let lags = lag::measure(&kafka)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&lags)?);
            } else {
                println!("group `{}`", kafka.group);
                print!("{}", lag::render(&lags, &kafka.lag_tolerance));
            }
            let behind = lags.iter().any(|l| l.over(&kafka.lag_tolerance));
            Ok(if behind {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Produce(args) => {
            let settings = BrokerSettings {
                brokers: args.brokers,
                options: args.options.into_iter().collect(),
            };
            let report = produce_files(&settings, &args.topic, args.partitions, &args.inputs, args.rate)?;
            eprintln!(
                "published {} records to `{}` in {:.2}s ({:.0}/s); per partition: {:?}",
                report.records,
                args.topic,
                report.seconds,
                report.records as f64 / report.seconds.max(1e-9),
                report.per_partition
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Gen(args) => {
            let options = GenOptions {
                out: args.out,
                events: args.events,
                users: args.users,
                zipf: args.zipf,
                partitions: args.partitions,
                items: args.items,
                start: args.start,
                span: args.span.as_secs_f64(),
                lateness: args.lateness.as_secs_f64(),
                late: args.late,
                duplicates: args.duplicates,
                malformed: args.malformed,
                v1: args.v1,
                unknown: args.unknown,
                seed: args.seed,
                gzip: !args.no_gzip,
            };
            let report = generate(&options)?;
            eprintln!(
                "wrote {} records to {} files in {}",
                report.records,
                report.files.len(),
                options.out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `skewless checkpoint list|inspect`.
fn checkpoint_command(command: CheckpointCommand) -> anyhow::Result<ExitCode> {
    use skewless::checkpoint;
    match command {
        CheckpointCommand::List { dir, json } => {
            let listing = checkpoint::list(&dir);
            if json {
                println!("{}", serde_json::to_string_pretty(&listing)?);
                return Ok(ExitCode::SUCCESS);
            }
            if listing.is_empty() {
                println!("no checkpoints in {}", dir.display());
            }
            println!(
                "{:>8}  {:<24}  {:>7}  {:>10}  {:>12}  {:>8}  status",
                "epoch", "cut (event time)", "workers", "users", "bytes", "took_s"
            );
            for entry in &listing {
                match &entry.manifest {
                    Some(m) => println!(
                        "{:>8}  {:<24}  {:>7}  {:>10}  {:>12}  {:>8.3}  {}",
                        entry.epoch,
                        format_millis(m.cut),
                        m.workers,
                        m.parts.iter().map(|p| p.users).sum::<u64>(),
                        m.parts.iter().map(|p| p.bytes).sum::<u64>(),
                        m.took_s,
                        entry.status
                    ),
                    None => println!(
                        "{:>8}  {:<24}  {:>7}  {:>10}  {:>12}  {:>8}  {}",
                        entry.epoch, "-", "-", "-", "-", "-", entry.status
                    ),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        CheckpointCommand::Inspect { dir, epoch, json } => {
            let restored = match epoch {
                Some(epoch) => checkpoint::load(&dir, epoch)?,
                None => {
                    let (restored, refused) = checkpoint::latest(&dir);
                    for problem in refused {
                        eprintln!("skipped: {problem}");
                    }
                    restored.with_context(|| format!("no complete checkpoint in {}", dir.display()))?
                }
            };
            let report = checkpoint::Inspection::of(&restored);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(ExitCode::SUCCESS);
            }
            let m = &restored.manifest;
            println!(
                "checkpoint {} of job `{}`: cut at {} ({} ms), {} workers, took {:.3} s",
                m.epoch,
                m.job,
                format_millis(m.cut),
                m.cut,
                m.workers,
                m.took_s
            );
            println!(
                "watermark (slowest partition clock): {}",
                report
                    .watermark
                    .map_or("-".into(), |w| format_millis((w * 1000.0) as u64))
            );
            for part in &report.parts {
                println!(
                    "part {} ({} bytes): {} users, {} dedup ids, {} late ids, {} pending events, counts read {}",
                    part.worker, part.bytes, part.users, part.seen, part.seen_late, part.pending, part.read
                );
                for p in &part.partitions {
                    println!(
                        "  {:<40} position {:>12}  clock {}{}",
                        p.name,
                        p.position,
                        p.max_seen
                            .map_or("-".into(), |t| format_millis((t * 1000.0) as u64)),
                        if p.finished { "  (finished)" } else { "" }
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A path, where an empty one turns a sink off.
fn any_path(text: &str) -> Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(text))
}

/// Event-time milliseconds as RFC 3339.
fn format_millis(millis: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(millis);
    humantime::format_rfc3339_millis(time).to_string()
}
