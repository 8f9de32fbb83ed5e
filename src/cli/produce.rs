//! `skewless produce`: log files to a Kafka topic, keyed by `user_id`.

use std::process::ExitCode;

use clap::Args;

use skewless::kafka::produce::produce_files;
use skewless::kafka::settings::BrokerSettings;

use super::parse_option;

#[derive(Args)]
pub struct ProduceArgs {
    /// Kafka brokers.
    #[arg(long, default_value = skewless::job::DEFAULT_BROKERS)]
    pub brokers: String,
    /// The topic (created when missing).
    #[arg(long)]
    pub topic: String,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// At most this many records per second.
    #[arg(long)]
    pub rate: Option<f64>,
    /// librdkafka settings, `key=value` (repeatable).
    #[arg(long = "option", short = 'X', value_parser = parse_option)]
    pub options: Vec<(String, String)>,
    /// Files, directories or globs to publish, in order.
    #[arg(required = true)]
    pub inputs: Vec<String>,
}

/// Runs the command.
pub fn main(args: ProduceArgs) -> anyhow::Result<ExitCode> {
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
