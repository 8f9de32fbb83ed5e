//! The checkpoint's files: what a part holds (partition positions, the fold's users,
//! dedup ids and pending events, the counts), the manifest that completes a
//! checkpoint, and how both are written atomically and read back verified.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::model::event::{Event, Millis};
use crate::model::features::UserState;
use crate::summary::Counts;

/// The first bytes of a part file (format version 8: a fold's part holds its skew
/// report's examples; 7: its skew counters; 6: open rows hold their features as
/// typed values, not as the view's JSON text).
pub(super) const MAGIC: &[u8; 8] = b"SKWLCKP8";
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

/// One remembered id, as a checkpoint holds it: key, event time, user key hash.
pub type SeenEntry = (crate::model::event::IdKey, f64, u64);

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
    /// A digest of the records read so far (files only): a resume reads them again
    /// and refuses an input whose first records are not those the checkpoint saw.
    pub digest: Option<u64>,
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
    /// Training rows whose label windows were open at the cut.
    pub open_rows: Vec<crate::model::training::OpenRow>,
    /// Rows of a spine file earlier than this were opened before the cut.
    pub spine_before: Millis,
    /// The outcome logs of the users with open rows.
    pub outcomes: Vec<(CompactString, crate::model::training::UserOutcomes)>,
    /// The skew counters of the spine events whose rows closed before the cut.
    pub skew: Vec<(crate::skew::SkewKey, crate::skew::SkewStats)>,
    /// The worker's first mismatches of each feature among those rows (worker 0's
    /// also those a checkpoint it resumed from carried).
    pub skew_examples: crate::skew::Examples,
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
    /// The time settings the state was folded under (lateness, late policy, dedup
    /// horizon): a run with others would classify records differently. Empty in
    /// checkpoints written before it was recorded.
    #[serde(default)]
    pub time: String,
    /// The parts.
    pub parts: Vec<PartEntry>,
}

pub(super) fn io(path: &Path) -> impl Fn(std::io::Error) -> CheckpointError + '_ {
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
