//! `skewless lag`: a job's consumer lag per partition; exit 1 over its tolerance.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use skewless::job::Job;
use skewless::kafka::lag;

/// The arguments of `skewless lag`.
#[derive(Args)]
pub struct LagArgs {
    /// The job file (its `source.kafka` names the topics, group and tolerance).
    pub job: PathBuf,
    /// Kafka brokers; overrides the job's.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Consumer group; overrides the job's.
    #[arg(long)]
    pub group: Option<String>,
    /// A topic (repeatable); overrides the job's.
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn main(args: LagArgs) -> anyhow::Result<ExitCode> {
    let LagArgs {
        job,
        brokers,
        group,
        topics,
        json,
    } = args;
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
