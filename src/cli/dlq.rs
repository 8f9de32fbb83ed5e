//! `skewless dlq inspect|requeue`: a dead-letter queue by reason and origin, and
//! re-publishing the original events of one reason.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use skewless::dlq::{self, DlqLocation};
use skewless::kafka::settings::BrokerSettings;

use super::parse_option;

#[derive(Subcommand)]
pub enum DlqCommand {
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
pub struct DlqArgs {
    /// A dead-letter topic.
    #[arg(long, conflicts_with = "file", required_unless_present = "file")]
    pub topic: Option<String>,
    /// A dead-letter JSONL file.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Kafka brokers.
    #[arg(long, default_value = skewless::job::DEFAULT_BROKERS)]
    pub brokers: String,
    /// librdkafka settings, `key=value` (repeatable).
    #[arg(long = "option", short = 'X', value_parser = parse_option)]
    pub options: Vec<(String, String)>,
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

/// Runs the command.
pub fn main(command: DlqCommand) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::Inspect { location, json } => {
            let records = read(&location)?;
            let mut report = dlq::inspect(&records.letters);
            report.unreadable = records.skipped.len() as u64;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{} dead letters ({} retryable)", report.total, report.retryable);
                if report.unreadable > 0 {
                    println!("{} unreadable records skipped", report.unreadable);
                }
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
        DlqCommand::Requeue {
            location,
            reason,
            to_topic,
            dry_run,
        } => {
            let records = read(&location)?;
            let mut done = dlq::requeue(
                &records.letters,
                &reason,
                &location.settings(),
                to_topic.as_deref(),
                dry_run,
            )?;
            done.unreadable = records.skipped.len() as u64;
            println!("{}", serde_json::to_string_pretty(&done)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Reads the queue, naming on stderr each record that is not a readable letter.
fn read(location: &DlqArgs) -> anyhow::Result<dlq::Letters> {
    let records = dlq::read(&location.location())?;
    for (at, why) in &records.skipped {
        eprintln!("warning: {at}: skipped, not a readable dead letter: {why}");
    }
    Ok(records)
}
