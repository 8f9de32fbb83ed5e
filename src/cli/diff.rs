//! `skewless diff`: what changes between two job versions over one log, or between
//! two view stores (the online/offline consistency check); exit 1 when a feature
//! differs beyond the tolerance and is not allowed to.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use compact_str::CompactString;

use skewless::job::Job;
use skewless::replay::compare::{Views, compare};
use skewless::replay::report::{DiffReport, Rules};
use skewless::replay::stores::Store;
use skewless::replay::{Diffing, Replay};
use skewless::run::{RunOptions, run};

#[derive(Args)]
pub struct DiffArgs {
    /// Two job files, then the input partitions both run over (default: the first
    /// job's). Leave out with `--views`.
    pub args: Vec<String>,
    /// A view store to compare (give two): a SQLite file, a .jsonl snapshot, or
    /// `redis://host:port[/db][?prefix=P]`.
    #[arg(long = "views")]
    pub views: Vec<String>,
    /// Numbers agree within this absolute difference (default: 1e-9 relative).
    #[arg(long)]
    pub tolerance: Option<f64>,
    /// A feature allowed to differ (repeatable): reported, but the diff passes.
    #[arg(long = "allow")]
    pub allow: Vec<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write the report as a self-contained HTML page here.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Worker threads.
    #[arg(long, short = 'w', default_value_t = 1)]
    pub workers: usize,
}

/// Runs the command.
pub fn main(args: DiffArgs) -> anyhow::Result<ExitCode> {
    if args.tolerance.is_some_and(|t| !(t >= 0.0 && t.is_finite())) {
        bail!("--tolerance must be a number >= 0");
    }
    let rules = Rules {
        tolerance: args.tolerance,
        allow: args.allow.clone(),
    };
    let report = match (args.views.len(), args.args.len()) {
        (2, 0) => stores(&args.views[0], &args.views[1], &rules)?,
        (0, n) if n >= 2 => jobs(&args, &rules)?,
        (0, _) => bail!("name two job files (then inputs), or two stores with --views A --views B"),
        _ => bail!("--views takes exactly two stores, and no job files beside them"),
    };
    for feature in &args.allow {
        let known = report.features.iter().any(|f| &f.feature == feature)
            || report.added_features.contains(feature)
            || report.removed_features.contains(feature);
        if !known {
            bail!("--allow {feature}: neither side has that feature");
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    eprint!("{}", report.table());
    if let Some(path) = &args.html {
        std::fs::write(path, report.html()).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("html report: {}", path.display());
    }
    if !report.failed.is_empty() {
        eprintln!("features differ: {}", report.failed.join(", "));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Why two jobs cannot share one decode: their schemas or time settings differ.
fn apart(a: &Job, b: &Job) -> Option<&'static str> {
    if format!("{:?}", a.registry) != format!("{:?}", b.registry) {
        Some("their event schemas differ")
    } else if skewless::checkpoint::time_settings(a) != skewless::checkpoint::time_settings(b) {
        Some("their time settings differ")
    } else if a.max_event_bytes != b.max_event_bytes {
        Some("their max_event_bytes differ")
    } else {
        None
    }
}

/// Both jobs over one log: one run when they can share the decode, two otherwise.
fn jobs(args: &DiffArgs, rules: &Rules) -> anyhow::Result<DiffReport> {
    let (path_a, path_b) = (PathBuf::from(&args.args[0]), PathBuf::from(&args.args[1]));
    let job_a = Job::load(&path_a)?;
    let job_b = Job::load(&path_b)?;
    let inputs: Vec<String> = args.args[2..].to_vec();
    let options = |replay: Arc<Diffing>| RunOptions {
        inputs: inputs.clone(),
        workers: args.workers,
        replay: Some(Replay::Diff(replay)),
        ..RunOptions::default()
    };
    let mut notes = Vec::new();
    if format!("{:?}", job_a.features.states) != format!("{:?}", job_b.features.states) {
        notes.push(
            "the jobs declare different state: their features are compared, their state is not".to_owned(),
        );
    }
    let (a, b, activity) = match apart(&job_a, &job_b) {
        None => {
            // The second job writes nothing either: what a replay turns off in the
            // run's job, it turns off in this one.
            let mut job_b = job_b;
            skewless::run::apply_overrides(&mut job_b, &options(Arc::new(Diffing::new(None))));
            let diffing = Arc::new(Diffing::new(Some(Arc::new(job_b))));
            let summary = run(job_a, &options(Arc::clone(&diffing))).context("the run failed")?;
            notes.push(format!(
                "both jobs folded in one run from one decode of {} records ({:.2} s)",
                summary.read, summary.wall_time_s
            ));
            diffing.take()
        }
        Some(why) => {
            let first = Arc::new(Diffing::new(None));
            let second = Arc::new(Diffing::new(None));
            run(job_a, &options(Arc::clone(&first))).context("the run of the first job failed")?;
            let summary =
                run(job_b, &options(Arc::clone(&second))).context("the run of the second job failed")?;
            notes.push(format!(
                "{why}, so each job decoded the log itself ({} records)",
                summary.read
            ));
            let (views, _, activity) = first.take();
            (views, second.take().0, activity)
        }
    };
    let compared = compare(&a, &b);
    let mut report = DiffReport::new(
        path_a.display().to_string(),
        path_b.display().to_string(),
        &compared,
        rules,
        Some(&activity),
    );
    report.notes.extend(notes);
    Ok(report)
}

/// Two view stores.
fn stores(a: &str, b: &str, rules: &Rules) -> anyhow::Result<DiffReport> {
    let (store_a, store_b) = (Store::parse(a)?, Store::parse(b)?);
    let (views_a, views_b) = (store_a.read_all()?, store_b.read_all()?);
    let features = |views: &[skewless::replay::stores::StoredView]| -> Views {
        views
            .iter()
            .map(|v| {
                (
                    CompactString::from(v.user_id.as_str()),
                    v.view["features"].to_string(),
                )
            })
            .collect()
    };
    let compared = compare(&features(&views_a.views), &features(&views_b.views));
    let mut report = DiffReport::new(store_a.describe(), store_b.describe(), &compared, rules, None);
    for (store, found) in [(&store_a, &views_a), (&store_b, &views_b)] {
        for problem in found.not_views.iter().take(20) {
            report.notes.push(format!("{}: {problem}", store.describe()));
        }
        if found.not_views.len() > 20 {
            report.notes.push(format!(
                "{}: {} more records that are not views",
                store.describe(),
                found.not_views.len() - 20
            ));
        }
    }
    Ok(report)
}
