//! `skewless explain`: what the job knew about one user at a time, and why: every
//! record of the user with its outcome, the features each applied event changed,
//! and the view as of that time, replayed from archives or from Kafka.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;

use skewless::job::Job;
use skewless::kafka::settings::StartPosition;
use skewless::model::event::Origin;
use skewless::model::span::Span;
use skewless::replay::Replay;
use skewless::replay::explain::{Explaining, Explanation, Outcome, Step};
use skewless::run::{RunOptions, run};

#[derive(Args)]
pub struct ExplainArgs {
    /// The job file.
    pub job: PathBuf,
    /// The user to explain.
    #[arg(long)]
    pub user: String,
    /// The time asked about: an RFC 3339 time or epoch seconds (event time). Default:
    /// the end of what is read.
    #[arg(long)]
    pub at: Option<String>,
    /// Input partitions, as `run` takes them; default: the job's.
    #[arg(long = "input", short = 'i')]
    pub inputs: Vec<String>,
    /// Kafka topics to read instead of files.
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// Kafka brokers (host:port,...).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Over Kafka, read every retained record instead of seeking to
    /// `at - dedup_horizon - allowed_lateness`.
    #[arg(long)]
    pub from_earliest: bool,
    /// Over Kafka, end once the partitions read have been quiet this long.
    #[arg(long, default_value = "2s")]
    pub idle: Span,
    /// Worker threads (files are read in parallel, one partition per worker).
    #[arg(long, short = 'w')]
    pub workers: Option<usize>,
    /// Print JSON for tools instead of the timeline.
    #[arg(long)]
    pub json: bool,
}

/// An event time from the command line: RFC 3339, or seconds since the epoch.
pub fn parse_time(text: &str) -> anyhow::Result<f64> {
    if let Ok(seconds) = text.parse::<f64>() {
        if seconds.is_finite() && seconds >= 0.0 {
            return Ok(seconds);
        }
        bail!("`{text}` is not a time: give epoch seconds (>= 0) or an RFC 3339 time");
    }
    let time = humantime::parse_rfc3339_weak(text)
        .with_context(|| format!("`{text}` is not a time: give epoch seconds or an RFC 3339 time"))?;
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .context("a time before 1970")?;
    Ok(since.as_secs_f64())
}

/// An event time as a UTC time, to the millisecond.
pub fn utc(seconds: f64) -> String {
    if !(0.0..253_402_300_800.0).contains(&seconds) {
        return format!("{seconds}");
    }
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis((seconds * 1000.0).round() as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

/// Runs the command.
pub fn main(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let job = Job::load(&args.job)?;
    if args.user.is_empty() {
        bail!("--user must name a user");
    }
    let at = args.at.as_deref().map(parse_time).transpose()?;
    let explaining = Arc::new(Explaining::new(&args.user, at));
    let kafka =
        !args.topics.is_empty() || (args.inputs.is_empty() && job.inputs.is_empty() && job.kafka.is_some());
    let horizon = job.time.dedup_horizon.as_secs_f64() + job.allowed_lateness_secs();
    let seek_from = match (kafka, at, args.from_earliest) {
        (true, Some(at), false) => Some((at - horizon).max(0.0)),
        _ => None,
    };
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let options = RunOptions {
        inputs: args.inputs,
        topics: args.topics.clone(),
        brokers: args.brokers,
        workers,
        start: kafka.then_some(match seek_from {
            Some(from) => StartPosition::At((from * 1000.0) as i64),
            None => StartPosition::Earliest,
        }),
        exit_when_idle: Some(args.idle.duration()),
        replay: Some(Replay::Explain(Arc::clone(&explaining))),
        ..RunOptions::default()
    };
    let summary = run(job, &options).context("the replay failed")?;
    let mut explanation = explaining.explanation();
    if kafka {
        let partitions = explaining.partitions().join(", ");
        explanation.notes.push(match seek_from {
            Some(from) => format!(
                "read {partitions} (where the user's records go) from the first record whose broker \
                 timestamp is at or after {} (--at minus dedup_horizon and allowed_lateness): the view \
                 reflects only records from there; --from-earliest reads every retained record",
                utc(from)
            ),
            None => {
                format!("read {partitions} (where the user's records go) from the earliest retained record")
            }
        });
    }
    if let (Some(at), Some((earliest, _))) = (at, explanation.read_span)
        && at < earliest
    {
        explanation.notes.push(format!(
            "--at {} is before the earliest record read ({}): nothing before that could be seen",
            utc(at),
            utc(earliest)
        ));
    }
    if explanation.records.is_empty() {
        explanation.notes.push(format!(
            "no record of user {} in the {} records read",
            args.user, summary.read
        ));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&explanation)?);
    } else {
        print!("{}", timeline(&explanation, summary.read));
    }
    Ok(ExitCode::SUCCESS)
}

/// Where a record was read, as a person finds it again.
fn place(origin: &Origin) -> String {
    match origin.partition {
        Some(p) => format!("{}/{p}@{}", origin.topic, origin.offset),
        None => format!("{}:{}", origin.topic, origin.offset),
    }
}

fn outcome(step: &Step) -> String {
    match &step.outcome {
        Outcome::Applied => "applied".into(),
        Outcome::Duplicate { of } => match of {
            Some(of) => format!("duplicate of {}", place(of)),
            None => "duplicate (of a copy read before)".into(),
        },
        Outcome::Late {
            late_by,
            dead_lettered,
        } => format!(
            "late{} ({})",
            late_by.map_or_else(String::new, |s| format!(" by {s:.3} s")),
            if *dead_lettered {
                "dead-lettered"
            } else {
                "dropped"
            }
        ),
        Outcome::Rejected { reason, detail } => format!("rejected: {reason} ({detail})"),
        Outcome::Ignored => "ignored (a type the job does not know)".into(),
    }
}

fn compact(value: &Value) -> String {
    serde_json::to_string(value).expect("a value serializes")
}

/// The human timeline.
fn timeline(explanation: &Explanation, read: u64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "user {}: {} records of {read} read{}",
        explanation.user_id,
        explanation.records.len(),
        explanation
            .at
            .map_or_else(String::new, |at| format!(", as of {}", utc(at)))
    );
    let mut past_at = false;
    for step in &explanation.records {
        if step.after_at && !past_at {
            past_at = true;
            let _ = writeln!(
                out,
                "--- after {}: left out of the view as of then ---",
                utc(explanation.at.unwrap_or_default())
            );
        }
        let _ = writeln!(
            out,
            "{}  {}  {} {} {}  [{}]",
            step.event_time.map_or_else(|| "(no event_time)".into(), utc),
            step.event_id.as_deref().unwrap_or("(no event_id)"),
            step.event_type.as_deref().unwrap_or("(no event_type)"),
            step.event_version.as_deref().unwrap_or("?"),
            outcome(step),
            place(&step.source)
        );
        for change in &step.changes {
            let _ = writeln!(
                out,
                "      {}: {} -> {}",
                change.feature,
                compact(&change.old),
                compact(&change.new)
            );
        }
    }
    let label = match explanation.at {
        Some(at) => format!("view as of {}", utc(at)),
        None => "view at the end".into(),
    };
    match &explanation.view {
        Some(view) => {
            let _ = writeln!(out, "{label}:");
            let _ = writeln!(out, "  features {}", compact(&view["features"]));
            let _ = writeln!(out, "  state    {}", compact(&view["state"]));
        }
        None => {
            let _ = writeln!(out, "{label}: none (no event the features read had been applied)");
        }
    }
    if explanation.left_out > 0 {
        let _ = writeln!(
            out,
            "{} records after it are left out of it",
            explanation.left_out
        );
    }
    for note in &explanation.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}
