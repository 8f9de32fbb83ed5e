//! A backfill's outputs written aside and published at its end: a failed run leaves
//! the previous run's outputs as they were.

use std::path::PathBuf;

use crate::job::Job;
use crate::sinks::{SinkError, replaceable};
use crate::summary::Summary;

/// Where a backfill writes `path` until it is published: `<path>.partial`.
pub(super) fn aside_path(path: &std::path::Path) -> PathBuf {
    crate::sinks::with_suffix(path, ".partial")
}

/// The files a backfill writes under temporary names: the SQLite views and the dead
/// letters (`<path>.partial`) and the JSONL views (per-worker parts, merged). They
/// replace the previous outputs only when the run ends (an interrupted run included:
/// it says so); a failed run removes them, except dead letters a checkpoint will
/// resume with.
#[derive(Debug, Clone)]
pub(super) struct Aside {
    /// `(partial, final)` for each file written aside.
    files: Vec<(PathBuf, PathBuf)>,
    jsonl: Option<PathBuf>,
    peers: usize,
    checkpoints: Option<PathBuf>,
    dead_letters: Option<PathBuf>,
    /// The training export's dataset directory, written as `<dir>.partial`.
    export: Option<PathBuf>,
    /// The export's JSONL parts, merged at the end.
    export_parts: Option<PathBuf>,
}

impl Aside {
    /// Points the job's SQLite and dead-letter paths at their temporary names.
    pub(super) fn new(job: &mut Job, process: usize, processes: usize, peers: usize) -> Aside {
        let mut files = Vec::new();
        for path in [&mut job.sinks.views_sqlite, &mut job.sinks.dlq]
            .into_iter()
            .flatten()
            .filter(|path| replaceable(path))
        {
            let partial = aside_path(path);
            files.push((partial.clone(), std::mem::replace(path, partial)));
        }
        // An interrupted run published its dead letters; a run that resumes it goes
        // on from them (a fresh run starts the file over anyway).
        if process == 0
            && let Some(partial) = &job.sinks.dlq
            && let Some((_, published)) = files.iter().find(|(p, _)| p == partial)
            && !partial.exists()
            && published.exists()
        {
            let _ = std::fs::copy(published, partial);
        }
        // A stale SQLite file of a killed run would be upserted into; a new run
        // starts it afresh (its views are written at the end, from the state). The
        // processes of a cluster share the file, and may have opened it already.
        if processes == 1
            && let Some(sqlite) = &job.sinks.views_sqlite
        {
            for stale in [sqlite.clone(), journal_of(sqlite)] {
                let _ = std::fs::remove_file(stale);
            }
        }
        Aside {
            files,
            jsonl: job.sinks.views_jsonl.clone(),
            peers,
            checkpoints: job.checkpoint.dir.clone(),
            dead_letters: job.sinks.dlq.clone(),
            export: job
                .export
                .as_ref()
                .filter(|e| e.formats.parquet)
                .map(|e| e.dir.clone()),
            export_parts: job
                .export
                .as_ref()
                .and_then(|e| e.formats.jsonl.as_deref())
                .map(crate::sinks::training::parts_dir),
        }
    }

    /// Replaces the final files with what this run wrote, and says so in `summary`.
    pub(super) fn publish(&self, summary: &mut Summary) -> Result<(), SinkError> {
        for (partial, path) in &self.files {
            if partial.exists() {
                std::fs::rename(partial, path).map_err(|source| SinkError::Io {
                    path: path.display().to_string(),
                    source,
                })?;
            }
            let (partial, path) = (partial.display().to_string(), path.display().to_string());
            for shown in summary.outputs.values_mut().filter(|shown| **shown == partial) {
                shown.clone_from(&path);
            }
        }
        if let Some(dir) = &self.export {
            let partial = aside_path(dir);
            let io = |source| SinkError::Io {
                path: dir.display().to_string(),
                source,
            };
            if partial.exists() {
                if dir.exists() {
                    std::fs::remove_dir_all(dir).map_err(io)?;
                }
                std::fs::rename(&partial, dir).map_err(io)?;
            }
        }
        Ok(())
    }

    /// Removes what a failed run wrote aside. Dead letters stay when a checkpoint
    /// holds the run's progress: the next run resumes from both.
    pub(super) fn discard(&self) {
        let resumable = self
            .checkpoints
            .as_deref()
            .is_some_and(|dir| !crate::checkpoint::epochs(dir).is_empty());
        for (partial, _) in &self.files {
            if resumable && Some(partial) == self.dead_letters.as_ref() {
                continue;
            }
            let _ = std::fs::remove_file(partial);
            let _ = std::fs::remove_file(journal_of(partial));
        }
        if !resumable {
            for dir in [
                self.export.as_ref().map(|d| aside_path(d)),
                self.export_parts.clone(),
            ]
            .into_iter()
            .flatten()
            {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        if let Some(path) = &self.jsonl {
            for worker in 0..self.peers {
                let _ = std::fs::remove_file(crate::sinks::jsonl::part_path(path, worker));
            }
            let _ = std::fs::remove_file(path.with_extension("jsonl.tmp"));
        }
    }
}

/// SQLite's rollback journal beside a database file.
fn journal_of(database: &std::path::Path) -> PathBuf {
    let mut journal = database.to_owned().into_os_string();
    journal.push("-journal");
    PathBuf::from(journal)
}
