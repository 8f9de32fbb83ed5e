//! Sources: where records' bytes and partition positions come from.
//!
//! A [`Source`] owns the partitions one worker reads and hands out raw records, one
//! partition at a time and in partition order. It knows nothing of JSON, schemas or
//! time: everything after the bytes is shared by every source (the dataflow's ingest operator),
//! which is what makes a backfill of an archive give the same answer as the live run.

pub mod file;

pub mod lines;
pub mod spine;

use std::sync::Arc;

use crate::model::event::Origin;

/// A raw record and where it came from.
#[derive(Debug)]
pub struct Record<'a> {
    /// The record's bytes (without the line terminator), or its first
    /// [`crate::model::event::MAX_RAW_BYTES`] when it is oversized.
    pub bytes: &'a [u8],
    /// The record's full length, when `bytes` holds only its head because it was too
    /// large to keep.
    pub oversized_len: Option<usize>,
    /// The Kafka topic, or the file path.
    pub topic: &'a str,
    /// The Kafka partition; `None` for files.
    pub partition: Option<i32>,
    /// The Kafka offset, or the 1-based line number in its file.
    pub offset: i64,
    /// The record's place in its partition, increasing: the Kafka offset, or for a
    /// partition of several files, the count of records before it in all of them.
    /// It orders copies of one event, so it must not restart with each segment.
    pub sequence: i64,
    /// The Kafka message key.
    pub key: Option<&'a [u8]>,
    /// The broker timestamp in milliseconds.
    pub broker_timestamp_ms: Option<i64>,
}

impl Record<'_> {
    /// The record's origin, owned, for a dead letter.
    pub fn origin(&self) -> Origin {
        Origin {
            topic: self.topic.to_owned(),
            partition: self.partition,
            offset: self.offset,
            key: self.key.map(|k| String::from_utf8_lossy(k).into_owned()),
            broker_timestamp_ms: self.broker_timestamp_ms,
        }
    }
}

/// What a read from one partition gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// This many records were handed out (at least one).
    Records(usize),
    /// Nothing right now; more may come.
    Empty,
    /// Nothing handed out now, but records may be waiting: the source cannot be
    /// reached (a broker outage), or has not yet fetched all there is (or heard how
    /// much there is). The partition is not idle.
    Waiting,
    /// Nothing, ever again.
    Finished,
}

fn skipped_list(skipped: &[String]) -> String {
    match skipped.len() {
        0 => String::new(),
        n if n <= 5 => format!(" (skipped: {})", skipped.join(", ")),
        n => format!(" (skipped {n} files: {}, ...)", skipped[..5].join(", ")),
    }
}

/// Why a source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file could not be opened or read.
    #[error("cannot read {path} (after line {line})")]
    Io {
        /// The file.
        path: String,
        /// The last line read before the failure.
        line: i64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A spine file (`--spine`) cannot be read as a table at all.
    #[error("spine file {0}")]
    Spine(String),
    /// An input path or glob matched nothing.
    #[error("input `{0}` matches no file")]
    NoMatch(String),
    /// An input directory holds no segment file (`.jsonl`, `.jsonl.gz`).
    #[error("input directory {dir} holds no .jsonl or .jsonl.gz segment{}", skipped_list(.skipped))]
    NoSegments {
        /// The directory.
        dir: String,
        /// The files in it that were not segments.
        skipped: Vec<String>,
    },
    /// An input glob is malformed.
    #[error("input `{pattern}` is not a valid glob: {message}")]
    BadGlob {
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        message: String,
    },
    /// A broker-side failure that retries could not fix.
    #[error("{0}")]
    Broker(String),
    /// The archive of what was read could not be written.
    #[error("archive: {0}")]
    Archive(String),
    /// A source cannot be put back where a checkpoint left it.
    #[error("cannot resume from the checkpoint: {0}; run with --fresh to start over")]
    Resume(String),
}

/// The partitions one worker reads.
pub trait Source {
    /// The names of this worker's partitions: stable across runs and independent of
    /// the order inputs were given in. Positions are keyed by them.
    fn partition_names(&self) -> Vec<String>;

    /// What orders each partition's records among copies of one event (hashed into
    /// their positions): the name, except for a byte range of a file, which is
    /// ordered as the whole file.
    fn partition_keys(&self) -> Vec<String> {
        self.partition_names()
    }

    /// The clock a partition starts at before any record of it is read: a byte range
    /// of a file starts where a sequential read of the file would be.
    fn start_clock(&self, partition: usize) -> Option<f64> {
        let _ = partition;
        None
    }

    /// Hands out up to `max` records of `partition`, in partition order, to `emit`.
    fn read(
        &mut self,
        partition: usize,
        max: usize,
        emit: &mut dyn FnMut(Record<'_>),
    ) -> Result<Read, SourceError>;

    /// Where `partition` stands: the position after the last record handed out (a
    /// Kafka offset; for files, the number of records read). -1 before any record.
    fn position(&self, partition: usize) -> i64;

    /// A digest of the records of `partition` handed out so far, for sources whose
    /// records a resume reads again (files): a checkpoint keeps it, and the resume
    /// checks that the input still starts with the same records.
    fn digest(&self, partition: usize) -> Option<u64> {
        let _ = partition;
        None
    }

    /// Everything before these `(partition, position)`s has durable outputs: record it
    /// (Kafka commits the offsets under the job's group). Files keep no such record.
    fn commit(&mut self, positions: &[(usize, i64)]) -> Result<(), SourceError> {
        let _ = positions;
        Ok(())
    }

    /// As [`Source::commit`], without waiting for the broker's answer: for the periodic
    /// commits of a running job, so that its worker never stalls on a round trip. A
    /// failure the broker reports later is logged, and the next commit covers the
    /// same positions.
    fn commit_in_background(&mut self, positions: &[(usize, i64)]) -> Result<(), SourceError> {
        self.commit(positions)
    }

    /// Stops fetching `partition` (`held`), or fetches it again: a partition that runs
    /// too far ahead of the watermark waits for it (`time.max_partition_skew`). Sources
    /// that prefetch (Kafka) stop prefetching it; others are simply not read.
    fn hold(&mut self, partition: usize, held: bool) -> Result<(), SourceError> {
        let _ = (partition, held);
        Ok(())
    }

    /// Asks the source to call `waker` when a partition that was empty has records.
    fn set_waker(&mut self, waker: Arc<dyn Fn() + Send + Sync>) {
        let _ = waker;
    }
}
