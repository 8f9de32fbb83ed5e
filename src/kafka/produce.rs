//! Publishing records to Kafka: log files to a topic (`skewless produce`), and dead
//! letters back to their source topics (`skewless dlq requeue`).
//!
//! Records are keyed by `user_id` and sent to partition `key_hash(user_id) mod N`, so one
//! user's records keep their order in one partition, and anyone can tell which
//! partition a record went to ([`partition_for`]).

use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::kafka::producer::Publisher;
use crate::kafka::settings::{BrokerError, BrokerSettings};
use crate::model::event::key_hash;
use crate::source::Read;
use crate::source::file::{FileSource, resolve_partitions};
use crate::source::{Source, SourceError};

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The broker refused or could not be reached.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// An input could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// The `user_id` of a record, when it is a JSON object with a string `user_id`.
pub fn user_key(record: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Key {
        user_id: Option<serde_json::Value>,
    }
    let key: Key = serde_json::from_slice(record).ok()?;
    match key.user_id? {
        serde_json::Value::String(user) if !user.is_empty() => Some(user),
        _ => None,
    }
}

/// The partition (of `partitions`) a record goes to: by its user, or, for a record
/// with none, by `fallback` (the index of the input it came from, so an input's
/// keyless records stay together and in order).
pub fn partition_for(user: Option<&str>, partitions: i32, fallback: u64) -> i32 {
    let n = partitions.max(1) as u64;
    (user.map_or(fallback, key_hash) % n) as i32
}

/// What a publishing run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProduceReport {
    /// Records sent.
    pub records: u64,
    /// Records per partition.
    pub per_partition: Vec<u64>,
    /// Seconds it took, acknowledgements included.
    pub seconds: f64,
}

/// Publishes every record of `inputs` (files, directories, globs) to `topic`, creating
/// it with `partitions` partitions when missing; at most `rate` records per second.
/// Records without a `user_id` go to the partition numbered like their input.
pub fn produce_files(
    settings: &BrokerSettings,
    topic: &str,
    partitions: i32,
    inputs: &[String],
    rate: Option<f64>,
) -> Result<ProduceReport, ProduceError> {
    settings.ensure_topic(topic, partitions)?;
    let partitions = settings.partitions(&[topic.to_owned()])?.len() as i32;
    let publisher = Publisher::new(settings)?;
    let started = Instant::now();
    let mut report = ProduceReport {
        per_partition: vec![0; partitions as usize],
        ..ProduceReport::default()
    };
    let mut source = FileSource::new(resolve_partitions(inputs)?, usize::MAX);
    let mut failure = None;
    for index in 0..source.partition_names().len() {
        loop {
            let mut emit = |record: crate::source::Record<'_>| {
                if failure.is_some() {
                    return;
                }
                let user = user_key(record.bytes);
                let partition = partition_for(user.as_deref(), partitions, index as u64);
                if let Err(e) = publisher.send(
                    topic,
                    Some(partition),
                    user.as_deref().map(str::as_bytes),
                    record.bytes,
                ) {
                    failure = Some(e);
                    return;
                }
                report.records += 1;
                report.per_partition[partition as usize] += 1;
                if let Some(rate) = rate {
                    let due = Duration::from_secs_f64(report.records as f64 / rate);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            };
            let read = source.read(index, 10_000, &mut emit)?;
            if let Some(error) = failure.take() {
                return Err(error.into());
            }
            if read == Read::Finished {
                break;
            }
        }
    }
    publisher.flush()?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_go_by_user_and_keyless_ones_by_position() {
        assert_eq!(
            user_key(br#"{"event_id":"e","user_id":"u7"}"#).as_deref(),
            Some("u7")
        );
        assert_eq!(user_key(br#"{"user_id":7}"#), None);
        assert_eq!(user_key(b"not json"), None);
        let p = partition_for(Some("u7"), 4, 99);
        assert_eq!(p, (key_hash("u7") % 4) as i32);
        assert_eq!(partition_for(None, 4, 6), 2);
    }
}
