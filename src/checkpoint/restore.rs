//! Restoring: the newest complete, intact checkpoint, each worker's share of it, and
//! what `skewless checkpoint inspect` reports of one.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::CheckpointError;
use super::format::{
    FoldSnapshot, Manifest, PartitionState, WorkerPart, epoch_dir, read_manifest, read_part,
};
use super::store::epochs;
use crate::summary::Counts;

/// A complete checkpoint, read and verified.
#[derive(Debug, Clone)]
pub struct Restored {
    /// Its manifest.
    pub manifest: Manifest,
    /// Every worker's part.
    pub parts: Vec<WorkerPart>,
}

/// One worker's share of a restored checkpoint.
#[derive(Debug, Clone, Default)]
pub struct Share {
    /// Every partition's state, by name (a worker looks up its own).
    pub partitions: BTreeMap<String, PartitionState>,
    /// The fold state of this worker's users, one snapshot per part they came from.
    pub fold: Vec<FoldSnapshot>,
    /// Ingest counts carried over (all of them on worker 0, none elsewhere).
    pub ingest_counts: Counts,
    /// Fold counts carried over (all of them on worker 0, none elsewhere).
    pub fold_counts: Counts,
}

impl Restored {
    /// What `worker` of `peers` takes over: the users whose key hash routes to it
    /// (as the exchange by user does: `hash % peers`), whatever number of workers
    /// wrote the checkpoint.
    pub fn share(&self, worker: usize, peers: usize) -> Share {
        let mine = |hash: u64| (hash % peers as u64) as usize == worker;
        let mut share = Share {
            partitions: positions(self),
            ..Share::default()
        };
        for part in &self.parts {
            let fold = &part.fold;
            // Counters are summed and examples merged: all of them on worker 0, none
            // elsewhere.
            let (skew, skew_examples) = if worker == 0 {
                (fold.skew.clone(), fold.skew_examples.clone())
            } else {
                Default::default()
            };
            share.fold.push(FoldSnapshot {
                strings: fold.strings.clone(),
                users: fold.users.iter().filter(|u| mine(u.hash)).cloned().collect(),
                seen: fold.seen.iter().filter(|e| mine(e.2)).copied().collect(),
                seen_late: fold.seen_late.iter().filter(|e| mine(e.2)).copied().collect(),
                pending: fold
                    .pending
                    .iter()
                    .filter(|(_, e)| mine(e.user_hash))
                    .cloned()
                    .collect(),
                max_clock: fold.max_clock,
                open_rows: fold
                    .open_rows
                    .iter()
                    .filter(|r| mine(crate::model::event::key_hash(&r.user_id)))
                    .cloned()
                    .collect(),
                spine_before: fold.spine_before,
                outcomes: fold
                    .outcomes
                    .iter()
                    .filter(|(user, _)| mine(crate::model::event::key_hash(user)))
                    .cloned()
                    .collect(),
                skew,
                skew_examples,
            });
            if worker == 0 {
                share.ingest_counts.merge(&part.ingest_counts);
                share.fold_counts.merge(&part.fold_counts);
            }
        }
        share
    }
}

/// A fingerprint of what shapes a job's state: its state and feature declarations.
/// A job with a training export adds what shapes its open rows (spine, labels, carried
/// fields), which a checkpoint holds too.
pub fn fingerprint(job: &crate::job::Job) -> String {
    let mut shape = format!("{:?}", job.features);
    if let Some(export) = &job.export {
        shape.push_str(&format!(
            "{:?}",
            (
                export.spine,
                export.row_id,
                export.explode,
                &export.carry,
                export.snapshot,
                &export.labels
            )
        ));
    }
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(shape.as_bytes()))
}

/// The time settings that decide which records are late or duplicates, as a
/// checkpoint records them.
pub fn time_settings(job: &crate::job::Job) -> String {
    let time = &job.time;
    format!(
        "allowed_lateness {}, late_policy {}, dedup_horizon {}",
        time.allowed_lateness,
        serde_json::to_value(time.late_policy)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        time.dedup_horizon
    )
}

/// Reads and verifies checkpoint `epoch`: its manifest and every part it lists.
pub fn load(dir: &Path, epoch: u64) -> Result<Restored, CheckpointError> {
    let at = epoch_dir(dir, epoch);
    let manifest = read_manifest(&at)?;
    if manifest.parts.len() != manifest.workers {
        return Err(CheckpointError::Corrupt {
            path: at.display().to_string(),
            problem: format!(
                "{} parts listed for {} workers",
                manifest.parts.len(),
                manifest.workers
            ),
        });
    }
    let mut parts = Vec::with_capacity(manifest.parts.len());
    for entry in &manifest.parts {
        let part = read_part(&at.join(&entry.file))?;
        if part.epoch != manifest.epoch || part.worker != entry.worker {
            return Err(CheckpointError::Corrupt {
                path: at.join(&entry.file).display().to_string(),
                problem: "the part belongs to another checkpoint or worker".into(),
            });
        }
        parts.push(part);
    }
    Ok(Restored { manifest, parts })
}

/// The newest complete, intact checkpoint under `dir`, skipping (and reporting) newer
/// ones that are incomplete or corrupt.
pub fn latest(dir: &Path) -> (Option<Restored>, Vec<CheckpointError>) {
    let mut refused = Vec::new();
    for epoch in epochs(dir).into_iter().rev() {
        match load(dir, epoch) {
            Ok(restored) => return (Some(restored), refused),
            Err(error) => refused.push(error),
        }
    }
    (None, refused)
}

/// What `skewless checkpoint inspect` shows of one checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The manifest.
    pub manifest: Manifest,
    /// The slowest partition's clock (event-time seconds): the watermark before
    /// allowed lateness.
    pub watermark: Option<f64>,
    /// Every part.
    pub parts: Vec<PartReport>,
}

/// One part, in numbers.
#[derive(Debug, Clone, Serialize)]
pub struct PartReport {
    /// The worker that wrote it.
    pub worker: usize,
    /// Its size.
    pub bytes: u64,
    /// Users.
    pub users: usize,
    /// Dedup ids inside the horizon.
    pub seen: usize,
    /// Ids of late events inside the horizon.
    pub seen_late: usize,
    /// Events received before the cut, not yet applied.
    pub pending: usize,
    /// Records its ingest had read.
    pub read: u64,
    /// Outcomes of records the worker's ingest had decided (dead letters, ignored).
    pub ingest_counts: Counts,
    /// Outcomes of the events its fold had applied (or found duplicate, or late).
    pub fold_counts: Counts,
    /// Its partitions.
    pub partitions: Vec<PartitionState>,
}

impl Inspection {
    /// Describes `restored`.
    pub fn of(restored: &Restored) -> Inspection {
        let parts: Vec<PartReport> = restored
            .parts
            .iter()
            .zip(&restored.manifest.parts)
            .map(|(part, entry)| PartReport {
                worker: part.worker,
                bytes: entry.bytes,
                users: part.fold.users.len(),
                seen: part.fold.seen.len(),
                seen_late: part.fold.seen_late.len(),
                pending: part.fold.pending.len(),
                read: part.ingest_counts.read,
                ingest_counts: part.ingest_counts.clone(),
                fold_counts: part.fold_counts.clone(),
                partitions: part.partitions.clone(),
            })
            .collect();
        let watermark = parts
            .iter()
            .flat_map(|p| &p.partitions)
            .filter(|p| !p.finished)
            .filter_map(|p| p.max_seen)
            .reduce(f64::min);
        Inspection {
            manifest: restored.manifest.clone(),
            watermark,
            parts,
        }
    }
}

/// Partition states of a restored checkpoint by name.
pub fn positions(restored: &Restored) -> BTreeMap<String, PartitionState> {
    restored
        .parts
        .iter()
        .flat_map(|p| p.partitions.iter().cloned())
        .map(|p| (p.name.clone(), p))
        .collect()
}
