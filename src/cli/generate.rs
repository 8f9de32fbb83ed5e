//! `skewless gen`: deterministic synthetic event logs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use skewless::model::span::Span;
use skewless::synthetic::{GenOptions, generate};

#[derive(Args)]
pub struct GenArgs {
    /// Output directory (one file per partition).
    #[arg(long)]
    pub out: PathBuf,
    /// Records in all.
    #[arg(long, default_value_t = 10_000)]
    pub events: u64,
    /// Distinct users.
    #[arg(long, default_value_t = 1_000)]
    pub users: u64,
    /// Zipf exponent of user activity (0 = uniform).
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Partitions (files).
    #[arg(long, default_value_t = 4)]
    pub partitions: usize,
    /// Distinct items.
    #[arg(long, default_value_t = 5_000)]
    pub items: u64,
    /// Event time covered, such as "1d".
    #[arg(long, default_value = "1d")]
    pub span: Span,
    /// Event time of the first record, seconds since the epoch.
    #[arg(long, default_value_t = 1_767_225_600.0)]
    pub start: f64,
    /// The job's allowed lateness (jitter stays inside it, late records beyond it).
    #[arg(long, default_value = "5s")]
    pub lateness: Span,
    /// Fraction of late records.
    #[arg(long, default_value_t = 0.0)]
    pub late: f64,
    /// Fraction of duplicate records.
    #[arg(long, default_value_t = 0.0)]
    pub duplicates: f64,
    /// Fraction of malformed records.
    #[arg(long, default_value_t = 0.0)]
    pub malformed: f64,
    /// Fraction of purchases in the v1 schema.
    #[arg(long, default_value_t = 0.0)]
    v1: f64,
    /// Fraction of records of an unknown type.
    #[arg(long, default_value_t = 0.0)]
    pub unknown: f64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write plain .jsonl instead of .jsonl.gz.
    #[arg(long, conflicts_with = "zstd")]
    pub no_gzip: bool,
    /// Write .jsonl.zst instead of .jsonl.gz.
    #[arg(long)]
    pub zstd: bool,
    /// Chance that a shown item is viewed within about half an hour.
    #[arg(long, default_value_t = 0.1)]
    pub ctr: f64,
    /// Chance that a shown item is bought within about a day.
    #[arg(long, default_value_t = 0.02)]
    pub purchase_rate: f64,
    /// The least lag of the simulated feature store behind the events.
    #[arg(long, default_value = "500ms")]
    pub serving_lag_min: Span,
    /// The most lag of the simulated feature store.
    #[arg(long, default_value = "45s")]
    pub serving_lag_max: Span,
    /// Chance that a served snapshot holds one wrong value.
    #[arg(long, default_value_t = 0.01)]
    pub wrong_values: f64,
}

/// Runs the command.
pub fn main(args: GenArgs) -> anyhow::Result<ExitCode> {
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
        compression: match (args.no_gzip, args.zstd) {
            (true, _) => None,
            (false, true) => Some(skewless::sinks::archive::ArchiveCompression::Zstd),
            (false, false) => Some(skewless::sinks::archive::ArchiveCompression::Gzip),
        },
        ctr: args.ctr,
        purchase_rate: args.purchase_rate,
        serving_lag: (
            args.serving_lag_min.as_secs_f64(),
            args.serving_lag_max.as_secs_f64(),
        ),
        wrong_values: args.wrong_values,
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
