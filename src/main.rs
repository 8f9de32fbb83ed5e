//! The `skewless` command: run a job, check job files, generate synthetic logs,
//! publish logs, operate dead-letter queues and checkpoints, measure lag and serving
//! skew. Each
//! subcommand lives in its own file under `cli/`.

mod cli;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    Run(Box<cli::run::RunArgs>),
    /// Check job files; report every problem with file, line and key.
    Validate {
        /// Job files to check.
        #[arg(required = true)]
        jobs: Vec<PathBuf>,
    },
    /// Generate deterministic synthetic event logs.
    Gen(cli::generate::GenArgs),
    /// Publish log files to a Kafka topic, keyed by user_id (one user, one partition).
    Produce(cli::produce::ProduceArgs),
    /// Inspect a dead-letter queue, or re-publish some of its records.
    Dlq {
        #[command(subcommand)]
        command: cli::dlq::DlqCommand,
    },
    /// List a job's checkpoints, or show one in detail.
    Checkpoint {
        #[command(subcommand)]
        command: cli::checkpoint::CheckpointCommand,
    },
    /// Show a job's consumer lag per partition; exit 1 when over its lag tolerance.
    Lag(cli::lag::LagArgs),
    /// Report how far the features the server used were from a replay's; exit 1 over
    /// the job's thresholds.
    Skew(cli::skew::SkewArgs),
    /// Explain what the job knew about one user at a time, and why: every record of
    /// the user with its outcome and the features it changed.
    Explain(cli::explain::ExplainArgs),
    /// Compare the views of two jobs over one log, or of two view stores; exit 1
    /// when a feature differs beyond the tolerance.
    Diff(cli::diff::DiffArgs),
    /// Read views back from a view store.
    Views {
        #[command(subcommand)]
        command: cli::views::ViewsCommand,
    },
}

fn main() -> ExitCode {
    // A panicking worker would leave the others waiting on it forever: a panic ends
    // the process, as a crash does (a job with checkpoints resumes from the latest).
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::exit(101);
    }));
    let command = Cli::parse().command;
    // Commands that answer a question print the answer; the run behind it logs only
    // what went wrong.
    let level = match command {
        Command::Explain(_) | Command::Diff(_) | Command::Views { .. } => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let outcome = match command {
        Command::Run(args) => cli::run::main(*args),
        Command::Validate { jobs } => cli::validate::main(jobs),
        Command::Gen(args) => cli::generate::main(args),
        Command::Produce(args) => cli::produce::main(args),
        Command::Dlq { command } => cli::dlq::main(command),
        Command::Checkpoint { command } => cli::checkpoint::main(command),
        Command::Lag(args) => cli::lag::main(args),
        Command::Skew(args) => cli::skew::main(args),
        Command::Explain(args) => cli::explain::main(args),
        Command::Diff(args) => cli::diff::main(args),
        Command::Views { command } => cli::views::main(command),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
