//! Checkpoints: what every worker's state was at one consistent cut of the dataflow,
//! written so a crash loses nothing and applies nothing twice.
//!
//! A checkpoint is a directory `<dir>/ckpt-<epoch>/` with one part per worker
//! (`part-<worker>.bin`: a header with the payload's length and checksum, then the
//! bincode payload) and a `MANIFEST.json` written last. Every file is written under a
//! temporary name, synced, and renamed. A checkpoint without a manifest is incomplete;
//! one whose parts are missing, short or fail their checksum is corrupt; restore skips
//! both, says why, and falls back to the previous complete one. How the cut is agreed
//! between workers is in [`protocol`].

pub mod protocol;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::dedup::SeenEntry;
use crate::event::{Event, Millis};
use crate::features::UserState;
use crate::summary::Counts;

/// The first bytes of a part file (format version 2: events carry their dedup key).
const MAGIC: &[u8; 8] = b"SKWLCKP2";
/// The manifest's file name.
pub const MANIFEST: &str = "MANIFEST.json";

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file could not be written or read.
    #[error("checkpoint file {path}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The checkpoint has no manifest: it was never completed.
    #[error("checkpoint {0} is incomplete (no {MANIFEST}: a worker did not finish its part)")]
    Incomplete(String),
    /// A file is damaged.
    #[error("checkpoint {path} is corrupt: {problem}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// One input partition at the cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionState {
    /// The partition's name (`topic/partition`, or the input path).
    pub name: String,
    /// Where to resume: the next Kafka offset, or the records already read.
    pub position: i64,
    /// The partition's clock.
    pub max_seen: Option<f64>,
    /// Whether it was read to its end.
    pub finished: bool,
}

/// One user's state at the cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserSnapshot {
    /// The key.
    pub user_id: CompactString,
    /// Its key hash.
    pub hash: u64,
    /// Folded state; interned ids refer to [`FoldSnapshot::strings`].
    pub state: UserState,
    /// Whether the user has a view.
    pub has_view: bool,
    /// Whether the user changed since its view was last written.
    pub dirty: bool,
}

/// A fold's state at the cut.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FoldSnapshot {
    /// The worker's interned strings, by id.
    pub strings: Vec<CompactString>,
    /// Every user.
    pub users: Vec<UserSnapshot>,
    /// Ids inside the dedup horizon.
    pub seen: Vec<SeenEntry>,
    /// Ids of late events inside the horizon.
    pub seen_late: Vec<SeenEntry>,
    /// Events received before the cut and not yet applied, with the time they were sent at.
    pub pending: Vec<(Millis, Event)>,
    /// The largest partition clock reported.
    pub max_clock: Option<f64>,
}

/// One worker's part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerPart {
    /// The checkpoint's epoch.
    pub epoch: u64,
    /// The cut: everything sent before this time is in the checkpoint.
    pub cut: Millis,
    /// This worker's index.
    pub worker: usize,
    /// How many workers the run had.
    pub workers: usize,
    /// This worker's input partitions.
    pub partitions: Vec<PartitionState>,
    /// The ingest operator's counts at the cut.
    pub ingest_counts: Counts,
    /// The fold's state.
    pub fold: FoldSnapshot,
    /// The fold's counts at the cut.
    pub fold_counts: Counts,
}

/// A part as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartEntry {
    /// The worker.
    pub worker: usize,
    /// The file, in the checkpoint's directory.
    pub file: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// xxh3-64 of its payload, hex.
    pub checksum: String,
    /// Users in it.
    pub users: u64,
    /// Its partitions and their positions.
    pub partitions: Vec<(String, i64)>,
}

/// The manifest: written last, it makes a checkpoint complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The job.
    pub job: String,
    /// The epoch.
    pub epoch: u64,
    /// The cut (event-time milliseconds).
    pub cut: Millis,
    /// Workers of the run that wrote it.
    pub workers: usize,
    /// Wall-clock seconds when it completed.
    pub completed_at: f64,
    /// Seconds from the request to the manifest.
    pub took_s: f64,
    /// A fingerprint of the job's state declarations: state restores only into the
    /// job that folded it.
    #[serde(default)]
    pub features: String,
    /// The parts.
    pub parts: Vec<PartEntry>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The directory of checkpoint `epoch` under `dir`.
pub fn epoch_dir(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("ckpt-{epoch:010}"))
}

/// The part file of `worker`.
pub fn part_name(worker: usize) -> String {
    format!("part-{worker:04}.bin")
}

/// Writes `bytes` to `path` atomically: a temporary file, synced, then renamed; and the
/// directory synced.
fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<(), CheckpointError> {
    let dir = path.parent().expect("checkpoint files live in a directory");
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension("tmp");
    let file = File::create(&tmp).map_err(io(&tmp))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    write(&mut out).map_err(io(&tmp))?;
    let file = out.into_inner().map_err(|e| CheckpointError::Io {
        path: tmp.display().to_string(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// A writer that hashes and counts what passes through it.
struct Hashing<'w, W> {
    out: &'w mut W,
    hasher: xxhash_rust::xxh3::Xxh3,
    bytes: u64,
}

impl<W: Write> Write for Hashing<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Writes a worker's part; returns its manifest entry.
///
/// The payload is serialized straight into the file (its length and checksum are
/// filled into the header afterwards), so no second copy of the state is held in
/// memory while it is written.
pub fn write_part(dir: &Path, part: &WorkerPart) -> Result<PartEntry, CheckpointError> {
    write_part_as(
        dir,
        part.epoch,
        part.worker,
        part,
        part.fold.users.len() as u64,
        &part.partitions,
    )
}

/// Writes a worker's part from anything that serializes exactly as a [`WorkerPart`]
/// does (a view borrowing the live state, say, so that the state is not copied);
/// returns its manifest entry.
pub fn write_part_as(
    dir: &Path,
    epoch: u64,
    worker: usize,
    part: &impl Serialize,
    users: u64,
    partitions: &[PartitionState],
) -> Result<PartEntry, CheckpointError> {
    let path = epoch_dir(dir, epoch).join(part_name(worker));
    let (mut length, mut checksum) = (0, 0);
    write_atomic(&path, |out| {
        out.write_all(MAGIC)?;
        out.write_all(&[0; 16])?;
        // bincode writes field by field: buffer before hashing, not only after.
        let mut buffered = BufWriter::with_capacity(
            1 << 16,
            Hashing {
                out: &mut *out,
                hasher: xxhash_rust::xxh3::Xxh3::new(),
                bytes: 0,
            },
        );
        bincode::serialize_into(&mut buffered, part).map_err(std::io::Error::other)?;
        let hashing = buffered.into_inner().map_err(|e| e.into_error())?;
        (length, checksum) = (hashing.bytes, hashing.hasher.digest());
        out.seek(SeekFrom::Start(MAGIC.len() as u64))?;
        out.write_all(&length.to_le_bytes())?;
        out.write_all(&checksum.to_le_bytes())
    })?;
    Ok(PartEntry {
        worker,
        file: part_name(worker),
        bytes: length + 24,
        checksum: format!("{checksum:016x}"),
        users,
        partitions: partitions.iter().map(|p| (p.name.clone(), p.position)).collect(),
    })
}

/// Reads and verifies a part file.
pub fn read_part(path: &Path) -> Result<WorkerPart, CheckpointError> {
    let corrupt = |problem: String| CheckpointError::Corrupt {
        path: path.display().to_string(),
        problem,
    };
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io(path))?;
    if bytes.len() >= 24 && bytes[..7] == MAGIC[..7] && bytes[7] != MAGIC[7] {
        return Err(corrupt(format!(
            "format version {} where this build reads version {}",
            bytes[7] as char, MAGIC[7] as char
        )));
    }
    if bytes.len() < 24 || &bytes[..8] != MAGIC {
        return Err(corrupt("not a skewless checkpoint part (bad header)".into()));
    }
    let length = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) as usize;
    let checksum = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    let payload = &bytes[24..];
    if payload.len() != length {
        return Err(corrupt(format!(
            "truncated: {} of {length} payload bytes",
            payload.len()
        )));
    }
    if xxhash_rust::xxh3::xxh3_64(payload) != checksum {
        return Err(corrupt("checksum mismatch".into()));
    }
    bincode::deserialize(payload).map_err(|e| corrupt(format!("undecodable: {e}")))
}

/// Writes the manifest, completing checkpoint `manifest.epoch`.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), CheckpointError> {
    let path = epoch_dir(dir, manifest.epoch).join(MANIFEST);
    let text = serde_json::to_vec_pretty(manifest).expect("a manifest serializes");
    write_atomic(&path, |out| out.write_all(&text))
}

/// Reads a checkpoint's manifest.
pub fn read_manifest(epoch_dir: &Path) -> Result<Manifest, CheckpointError> {
    let path = epoch_dir.join(MANIFEST);
    if !path.exists() {
        return Err(CheckpointError::Incomplete(epoch_dir.display().to_string()));
    }
    let text = std::fs::read(&path).map_err(io(&path))?;
    serde_json::from_slice(&text).map_err(|e| CheckpointError::Corrupt {
        path: path.display().to_string(),
        problem: e.to_string(),
    })
}

/// The epochs under `dir`, ascending.
pub fn epochs(dir: &Path) -> Vec<u64> {
    let mut out: Vec<u64> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("ckpt-")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out
}

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
pub fn fingerprint(job: &crate::job::Job) -> String {
    format!(
        "{:016x}",
        xxhash_rust::xxh3::xxh3_64(format!("{:?}", job.features).as_bytes())
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

/// Removes all but the newest `keep` complete checkpoints, and incomplete ones older
/// than the newest complete one.
pub fn prune(dir: &Path, keep: usize) -> Result<(), CheckpointError> {
    let epochs = epochs(dir);
    let complete: Vec<u64> = epochs
        .iter()
        .copied()
        .filter(|&e| epoch_dir(dir, e).join(MANIFEST).exists())
        .collect();
    let Some(&newest) = complete.last() else {
        return Ok(());
    };
    let kept: Vec<u64> = complete.iter().rev().take(keep.max(1)).copied().collect();
    for epoch in epochs {
        let stale = if epoch_dir(dir, epoch).join(MANIFEST).exists() {
            !kept.contains(&epoch)
        } else {
            epoch < newest
        };
        if stale {
            let path = epoch_dir(dir, epoch);
            std::fs::remove_dir_all(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// Removes every checkpoint under `dir` (a finished run, or `--fresh`).
pub fn clear(dir: &Path) -> Result<(), CheckpointError> {
    for epoch in epochs(dir) {
        let path = epoch_dir(dir, epoch);
        std::fs::remove_dir_all(&path).map_err(io(&path))?;
    }
    Ok(())
}

/// What `skewless checkpoint list` shows of one checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    /// The epoch.
    pub epoch: u64,
    /// `complete`, or why not.
    pub status: String,
    /// The manifest, when complete.
    pub manifest: Option<Manifest>,
}

/// Every checkpoint under `dir`, newest first, each verified.
pub fn list(dir: &Path) -> Vec<Listing> {
    epochs(dir)
        .into_iter()
        .rev()
        .map(|epoch| match load(dir, epoch) {
            Ok(restored) => Listing {
                epoch,
                status: "complete".into(),
                manifest: Some(restored.manifest),
            },
            Err(error) => Listing {
                epoch,
                status: error.to_string(),
                manifest: read_manifest(&epoch_dir(dir, epoch)).ok(),
            },
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn part(epoch: u64, worker: usize) -> WorkerPart {
        WorkerPart {
            epoch,
            cut: 1000,
            worker,
            workers: 2,
            partitions: vec![PartitionState {
                name: format!("p{worker}"),
                position: 42,
                max_seen: Some(1.5),
                finished: false,
            }],
            ingest_counts: Counts {
                read: 42,
                ..Counts::default()
            },
            fold: FoldSnapshot {
                strings: vec!["books".into()],
                ..FoldSnapshot::default()
            },
            fold_counts: Counts::default(),
        }
    }

    fn complete(dir: &Path, epoch: u64) {
        let parts: Vec<PartEntry> = (0..2)
            .map(|w| write_part(dir, &part(epoch, w)).unwrap())
            .collect();
        let manifest = Manifest {
            job: "j".into(),
            epoch,
            cut: 1000,
            workers: 2,
            completed_at: 0.0,
            took_s: 0.0,
            features: String::new(),
            parts,
        };
        write_manifest(dir, &manifest).unwrap();
    }

    #[test]
    fn parts_round_trip_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        complete(dir.path(), 1);
        let restored = load(dir.path(), 1).unwrap();
        assert_eq!(restored.parts[1], part(1, 1));
        assert_eq!(positions(&restored)["p0"].position, 42);

        let file = epoch_dir(dir.path(), 1).join(part_name(1));
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() - 5]).unwrap();
        let error = load(dir.path(), 1).unwrap_err().to_string();
        assert!(
            error.contains("corrupt") && error.contains("truncated"),
            "{error}"
        );
        let mut older = bytes.clone();
        older[7] = b'1';
        std::fs::write(&file, &older).unwrap();
        let error = load(dir.path(), 1).unwrap_err().to_string();
        assert!(error.contains("format version 1"), "{error}");
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        std::fs::write(&file, &flipped).unwrap();
        assert!(
            load(dir.path(), 1)
                .unwrap_err()
                .to_string()
                .contains("checksum mismatch")
        );
    }

    #[test]
    fn the_latest_intact_checkpoint_wins_and_old_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        for epoch in 1..=4 {
            complete(dir.path(), epoch);
        }
        write_part(dir.path(), &part(5, 0)).unwrap(); // incomplete: no manifest
        std::fs::write(epoch_dir(dir.path(), 4).join(part_name(0)), b"garbage").unwrap();
        let (restored, refused) = latest(dir.path());
        assert_eq!(restored.unwrap().manifest.epoch, 3);
        assert_eq!(refused.len(), 2);
        assert!(refused[0].to_string().contains("incomplete"), "{}", refused[0]);
        assert!(refused[1].to_string().contains("bad header"), "{}", refused[1]);
        prune(dir.path(), 2).unwrap();
        assert_eq!(epochs(dir.path()), vec![3, 4, 5]);
        let listing = list(dir.path());
        assert_eq!(listing.iter().map(|l| l.epoch).collect::<Vec<_>>(), vec![5, 4, 3]);
        assert_eq!(listing[2].status, "complete");
    }
}
