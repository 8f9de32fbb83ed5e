//! Dead letters to a JSONL file, one record per line, shared by a process's workers.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{DeadLetterSink, SinkError, create_parent};
use crate::dead_letter::DeadLetter;

/// A JSONL dead-letter file.
#[derive(Clone)]
pub struct DeadLetterFile {
    path: PathBuf,
    out: Arc<Mutex<BufWriter<File>>>,
}

impl DeadLetterFile {
    /// Creates (truncating) the file at `path`.
    pub fn create(path: &Path) -> Result<DeadLetterFile, SinkError> {
        create_parent(path)?;
        let file = File::create(path).map_err(|source| SinkError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(DeadLetterFile {
            path: path.to_owned(),
            out: Arc::new(Mutex::new(BufWriter::new(file))),
        })
    }
}

impl DeadLetterSink for DeadLetterFile {
    fn write(&mut self, letters: &[DeadLetter]) -> Result<(), SinkError> {
        let err = |source| SinkError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let mut out = self.out.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for letter in letters {
            out.write_all(letter.to_json().as_bytes()).map_err(err)?;
            out.write_all(b"\n").map_err(err)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        let err = |source| SinkError::Io {
            path: self.path.display().to_string(),
            source,
        };
        self.out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .flush()
            .map_err(err)
    }
}
