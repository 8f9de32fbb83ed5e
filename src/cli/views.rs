//! `skewless views get`: one user's view from any view store, readably: features
//! first, then state, with `as_of` as a UTC time.

use std::fmt::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use serde_json::Value;

use skewless::job::Job;
use skewless::replay::stores::Store;

use super::explain::utc;

#[derive(Subcommand)]
pub enum ViewsCommand {
    /// Print one user's view.
    Get {
        /// The user.
        user: String,
        /// The store: a SQLite file, a .jsonl snapshot, or
        /// `redis://host:port[/db][?prefix=P]`. Default: the job's (Redis when it
        /// has one, else its SQLite file).
        #[arg(long)]
        store: Option<String>,
        /// The job whose store to read.
        #[arg(long)]
        job: Option<PathBuf>,
        /// Print the view as stored (JSON).
        #[arg(long)]
        json: bool,
    },
}

/// Runs the command.
pub fn main(command: ViewsCommand) -> anyhow::Result<ExitCode> {
    let ViewsCommand::Get {
        user,
        store,
        job,
        json,
    } = command;
    let store = match (store, job) {
        (Some(spec), _) => Store::parse(&spec)?,
        (None, Some(path)) => {
            let job = Job::load(&path)?;
            match (&job.sinks.redis, &job.sinks.views_sqlite, &job.sinks.views_jsonl) {
                (Some(redis), _, _) => Store::Redis {
                    url: redis.url.clone(),
                    prefix: redis.key_prefix.clone(),
                },
                (None, Some(path), _) | (None, None, Some(path)) => {
                    Store::parse(&path.display().to_string())?
                }
                (None, None, None) => bail!("{} writes no view store: name one with --store", path.display()),
            }
        }
        (None, None) => bail!("name the store with --store, or the job whose store to read with --job"),
    };
    let found = store.get(&user)?;
    for problem in &found.not_views {
        eprintln!("{}: {problem}", store.describe());
    }
    let Some(view) = found.views.into_iter().next() else {
        eprintln!("{}: no view of user {user}", store.describe());
        return Ok(ExitCode::FAILURE);
    };
    if json {
        println!("{}", view.view);
    } else {
        print!("{}", readable(&view.view, &store.describe()));
    }
    Ok(ExitCode::SUCCESS)
}

/// A view for a person: features first, then state, `as_of` as a UTC time.
fn readable(view: &Value, store: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "user {} ({store})", view["user_id"].as_str().unwrap_or("?"));
    if let Some(as_of) = view["as_of"].as_f64() {
        let _ = writeln!(out, "as_of: {} ({as_of})", utc(as_of));
    }
    if let Some(through) = view.get("provisional_through").and_then(Value::as_f64) {
        let _ = writeln!(out, "provisional through: {}", utc(through));
    }
    for section in ["features", "state"] {
        let _ = writeln!(out, "{section}:");
        if let Some(map) = view[section].as_object() {
            let width = map.keys().map(String::len).max().unwrap_or(0);
            for (name, value) in map {
                let _ = writeln!(out, "  {name:<width$}  {value}");
            }
        }
    }
    out
}
