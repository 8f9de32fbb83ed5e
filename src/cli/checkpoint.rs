//! `skewless checkpoint list|inspect`: a job's checkpoints, or one in detail.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum CheckpointCommand {
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

/// `skewless checkpoint list|inspect`.
pub fn main(command: CheckpointCommand) -> anyhow::Result<ExitCode> {
    use skewless::checkpoint;
    match command {
        CheckpointCommand::List { dir, json } => {
            if !dir.is_dir() {
                anyhow::bail!("no checkpoint directory {}", dir.display());
            }
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

/// Event-time milliseconds as RFC 3339.
fn format_millis(millis: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(millis);
    humantime::format_rfc3339_millis(time).to_string()
}
