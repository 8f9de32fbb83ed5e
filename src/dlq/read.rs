//! Reading a dead-letter queue back, from a Kafka topic or a JSONL file: every
//! letter, and where a record that is not a readable letter was skipped.

use std::path::PathBuf;

use serde_json::Value;

use crate::kafka::settings::{BrokerError, BrokerSettings};

/// Where a dead-letter queue is.
#[derive(Debug, Clone)]
pub enum DlqLocation {
    /// A Kafka topic.
    Topic {
        /// The brokers.
        settings: BrokerSettings,
        /// The topic.
        topic: String,
    },
    /// A JSONL file.
    File(PathBuf),
}

/// Why a dead-letter queue could not be read or requeued.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// What a dead-letter queue held: the letters, and where a record that is not a
/// readable letter was skipped (with why).
#[derive(Debug, Clone, Default)]
pub struct Letters {
    /// The letters, in queue order.
    pub letters: Vec<Value>,
    /// `(where, why)` for each record that was skipped.
    pub skipped: Vec<(String, String)>,
}

impl Letters {
    fn push(&mut self, at: impl FnOnce() -> String, bytes: &[u8]) {
        match parse_letter(bytes) {
            Ok(letter) => self.letters.push(letter),
            Err(why) => self.skipped.push((at(), why)),
        }
    }
}

/// One dead letter: a JSON object. Anything else (not JSON, nested past serde_json's
/// recursion limit, not an object) is not a letter the tools can use.
fn parse_letter(bytes: &[u8]) -> Result<Value, String> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err("not a JSON object".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// Reads every dead letter at `location` (a topic up to its end offsets at the time of
/// the call). A record that is not a readable letter is skipped and listed, so one bad
/// record never hides the rest of the queue.
pub fn read(location: &DlqLocation) -> Result<Letters, DlqError> {
    let mut letters = Letters::default();
    match location {
        DlqLocation::File(path) => {
            let text = std::fs::read(path).map_err(|source| DlqError::Io {
                path: path.display().to_string(),
                source,
            })?;
            for (i, line) in text.split(|&b| b == b'\n').enumerate() {
                if line.trim_ascii().is_empty() {
                    continue;
                }
                letters.push(|| format!("{}:{}", path.display(), i + 1), line);
            }
        }
        DlqLocation::Topic { settings, topic } => {
            crate::kafka::read::read_to_end(settings, topic, "skewless-dlq-reader", |at, payload| {
                letters.push(|| at.to_string(), payload)
            })?;
        }
    }
    Ok(letters)
}
