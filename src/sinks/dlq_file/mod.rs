//! Dead letters to a JSONL file, one record per line, shared by a process's workers.
//!
//! A fresh run starts the file anew. A run resumed from a checkpoint appends, and
//! skips the dead letters the file already holds (records read again after the
//! checkpoint give the same dead letters), so each appears once.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{DeadLetterSink, SinkError, create_parent};
use crate::dlq::letter::{DeadLetter, LetterKey, key_of};

struct Inner {
    file: File,
    /// Lines not yet written; written with one `write` per flush (or per MiB), so the
    /// lines of processes appending to one file never interleave.
    buffer: Vec<u8>,
    present: HashSet<LetterKey>,
}

/// Bytes buffered before they are written without waiting for a flush.
const WRITE_AT: usize = 1 << 20;

/// A JSONL dead-letter file.
#[derive(Clone)]
pub struct DeadLetterFile {
    path: PathBuf,
    inner: Arc<Mutex<Inner>>,
}

impl DeadLetterFile {
    /// Creates (truncating) the file at `path`.
    pub fn create(path: &Path) -> Result<DeadLetterFile, SinkError> {
        create_parent(path)?;
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)
            .map_err(io_error(path))?;
        drop(file);
        DeadLetterFile::append(path)
    }

    /// Opens the file at `path` to append (another process of a cluster created it).
    pub fn append(path: &Path) -> Result<DeadLetterFile, SinkError> {
        create_parent(path)?;
        Ok(DeadLetterFile::with(path, open_append(path)?, HashSet::new()))
    }

    /// Opens the file at `path` to append, remembering the dead letters it holds. A
    /// line cut short by a crash is removed first.
    pub fn resume(path: &Path) -> Result<DeadLetterFile, SinkError> {
        create_parent(path)?;
        let mut present = HashSet::new();
        if path.exists() {
            let bytes = std::fs::read(path).map_err(io_error(path))?;
            let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if whole < bytes.len() {
                tracing::warn!(path = %path.display(), bytes = bytes.len() - whole, "removing a dead letter cut short by a crash");
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_error(path))?;
                file.set_len(whole as u64).map_err(io_error(path))?;
            }
            for line in bytes[..whole].split(|&b| b == b'\n') {
                if let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) {
                    present.extend(key_of(&value));
                }
            }
        }
        Ok(DeadLetterFile::with(path, open_append(path)?, present))
    }

    fn with(path: &Path, file: File, present: HashSet<LetterKey>) -> DeadLetterFile {
        DeadLetterFile {
            path: path.to_owned(),
            inner: Arc::new(Mutex::new(Inner {
                file,
                buffer: Vec::new(),
                present,
            })),
        }
    }
}

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn open_append(path: &Path) -> Result<File, SinkError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_error(path))
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> SinkError + '_ {
    move |source| SinkError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Inner {
    fn write_out(&mut self, path: &Path) -> Result<(), SinkError> {
        if !self.buffer.is_empty() {
            self.file.write_all(&self.buffer).map_err(io_error(path))?;
            self.buffer.clear();
        }
        Ok(())
    }
}

impl DeadLetterSink for DeadLetterFile {
    fn write(&mut self, letters: &[DeadLetter]) -> Result<(), SinkError> {
        let mut inner = lock(&self.inner);
        for letter in letters {
            if letter.key().is_some_and(|key| inner.present.contains(&key)) {
                continue;
            }
            inner.buffer.extend_from_slice(letter.to_json().as_bytes());
            inner.buffer.push(b'\n');
        }
        if inner.buffer.len() >= WRITE_AT {
            inner.write_out(&self.path)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        lock(&self.inner).write_out(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::letter::Reason;
    use crate::model::event::Origin;

    fn letter(offset: i64) -> DeadLetter {
        let origin = Origin {
            topic: "log.jsonl".into(),
            partition: None,
            offset,
            key: None,
            broker_timestamp_ms: None,
        };
        DeadLetter::first_attempt("j", origin, b"{", false, Reason::InvalidJson, "eof".into())
    }

    #[test]
    fn a_resumed_file_keeps_what_it_has_and_skips_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dlq.jsonl");
        let mut first = DeadLetterFile::create(&path).unwrap();
        first.write(&[letter(1), letter(2)]).unwrap();
        first.flush().unwrap();
        let mut resumed = DeadLetterFile::resume(&path).unwrap();
        resumed.write(&[letter(2), letter(3)]).unwrap();
        resumed.flush().unwrap();
        let offsets: Vec<i64> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["original_offset"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(offsets, vec![1, 2, 3]);
    }
}
