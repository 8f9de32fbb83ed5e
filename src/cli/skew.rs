//! `skewless skew`: the serving-skew report of a job over its inputs, as a gate.
//!
//! The job runs as `run` would, writing only the skew report (JSON and HTML, the
//! job's `[skew]` paths): no views, training files or dead letters. The table goes to
//! stderr, the report to stdout; over a threshold it exits 1 naming the features.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;

use skewless::job::Job;
use skewless::run::{ExportMode, RunOptions, run};

#[derive(Args)]
pub struct SkewArgs {
    /// The job file; its `[export]` names the spine and the served features.
    pub job: PathBuf,
    /// Input partitions (files, directories of segments, globs); default: the job's.
    pub inputs: Vec<String>,
    /// Worker threads.
    #[arg(long, short = 'w', default_value_t = 1)]
    pub workers: usize,
}

/// Runs the command.
pub fn main(args: SkewArgs) -> anyhow::Result<ExitCode> {
    let job = Job::load(&args.job)?;
    match &job.export {
        None => bail!(
            "{} has no `[export]` section: the skew report compares the served features of its spine events",
            args.job.display()
        ),
        Some(export) if export.snapshot.is_none() => bail!(
            "the spine `{}` of {} carries no served features (`[export] snapshot`)",
            export.spine_name,
            args.job.display()
        ),
        Some(_) => {}
    }
    let options = RunOptions {
        inputs: args.inputs,
        workers: args.workers,
        export: ExportMode::SkewOnly,
        ..RunOptions::default()
    };
    let summary = run(job, &options).context("run failed")?;
    let report = summary.skew.context("the run made no skew report")?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprint!("{}", report.table());
    for (name, path) in summary.outputs.iter().filter(|(n, _)| n.starts_with("skew_")) {
        eprintln!("{name}: {path}");
    }
    if !report.failed.is_empty() {
        eprintln!("serving skew over its threshold: {}", report.failed.join(", "));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
