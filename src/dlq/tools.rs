//! Operating a dead-letter queue: summarising it by reason and origin, and
//! re-publishing chosen records to their source topics once the cause is fixed
//! (`skewless dlq inspect|requeue`). Re-published events keep their ids, so a job that
//! already applied one counts the copy as a duplicate.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::read::DlqError;
use crate::kafka::produce::{partition_for, user_key};
use crate::kafka::producer::Publisher;
use crate::kafka::settings::BrokerSettings;

/// A dead-letter queue in numbers.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Inspection {
    /// Dead letters in all.
    pub total: u64,
    /// By `failure_reason`.
    pub by_reason: BTreeMap<String, u64>,
    /// By `original_topic` (a topic, or a file path).
    pub by_origin: BTreeMap<String, u64>,
    /// How many a retry could help.
    pub retryable: u64,
    /// The earliest and latest `failure_timestamp` (wall-clock seconds).
    pub failures_between: Option<(f64, f64)>,
    /// Records of the queue that are not readable letters (skipped, see [`Letters`]).
    pub unreadable: u64,
}

/// Summarises dead letters.
pub fn inspect(records: &[Value]) -> Inspection {
    let mut out = Inspection::default();
    for record in records {
        out.total += 1;
        let reason = record["failure_reason"].as_str().unwrap_or("?").to_owned();
        *out.by_reason.entry(reason).or_default() += 1;
        let origin = record["original_topic"].as_str().unwrap_or("?").to_owned();
        *out.by_origin.entry(origin).or_default() += 1;
        if record["retryable"].as_bool() == Some(true) {
            out.retryable += 1;
        }
        if let Some(t) = record["failure_timestamp"].as_f64() {
            out.failures_between = Some(match out.failures_between {
                None => (t, t),
                Some((a, b)) => (a.min(t), b.max(t)),
            });
        }
    }
    out
}

/// What a requeue did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Requeued {
    /// Records re-published.
    pub published: u64,
    /// Chosen records that did not come from a Kafka topic and no `--to-topic` was given.
    pub skipped_not_from_kafka: u64,
    /// Chosen records with neither the parsed event nor raw bytes.
    pub skipped_empty: u64,
    /// Records of the queue that are not readable letters (skipped, see [`Letters`]).
    pub unreadable: u64,
}

/// Re-publishes the original events of the dead letters with `reason` to their source
/// topics (or `to_topic`), keyed by user as they were.
pub fn requeue(
    records: &[Value],
    reason: &str,
    settings: &BrokerSettings,
    to_topic: Option<&str>,
    dry_run: bool,
) -> Result<Requeued, DlqError> {
    let mut out = Requeued::default();
    let publisher = if dry_run {
        None
    } else {
        Some(Publisher::new(settings)?)
    };
    let mut partition_counts: BTreeMap<String, i32> = BTreeMap::new();
    for record in records
        .iter()
        .filter(|r| r["failure_reason"].as_str() == Some(reason))
    {
        let from_kafka = !record["original_partition"].is_null();
        let topic = match (to_topic, from_kafka) {
            (Some(topic), _) => topic.to_owned(),
            (None, true) => record["original_topic"].as_str().unwrap_or_default().to_owned(),
            (None, false) => {
                out.skipped_not_from_kafka += 1;
                continue;
            }
        };
        let payload = match (&record["event"], record["raw"].as_str()) {
            (Value::Null, Some(raw)) => raw.as_bytes().to_vec(),
            (Value::Null, None) => {
                out.skipped_empty += 1;
                continue;
            }
            (event, _) => serde_json::to_vec(event).expect("JSON serializes"),
        };
        if let Some(publisher) = &publisher {
            let partitions = match partition_counts.get(&topic) {
                Some(&n) => n,
                None => {
                    let n = settings.partitions(std::slice::from_ref(&topic))?.len() as i32;
                    partition_counts.insert(topic.clone(), n);
                    n
                }
            };
            let user = user_key(&payload);
            let fallback = record["original_partition"].as_i64().unwrap_or(0).max(0) as u64;
            let key = record["original_key"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| user.clone());
            let partition = partition_for(user.as_deref(), partitions, fallback);
            publisher.send(
                &topic,
                Some(partition),
                key.as_deref().map(str::as_bytes),
                &payload,
            )?;
        }
        out.published += 1;
    }
    if let Some(publisher) = &publisher {
        publisher.flush()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn inspection_counts_by_reason_origin_and_retryability() {
        let records = vec![
            json!({"failure_reason": "invalid_json", "original_topic": "a", "retryable": false, "failure_timestamp": 5.0}),
            json!({"failure_reason": "invalid_json", "original_topic": "b", "retryable": false, "failure_timestamp": 2.0}),
            json!({"failure_reason": "sink_unavailable", "original_topic": "user_state:u", "retryable": true, "failure_timestamp": 9.0}),
        ];
        let report = inspect(&records);
        assert_eq!(report.total, 3);
        assert_eq!(report.by_reason["invalid_json"], 2);
        assert_eq!(report.by_origin["a"], 1);
        assert_eq!(report.retryable, 1);
        assert_eq!(report.failures_between, Some((2.0, 9.0)));
    }

    #[test]
    fn a_dry_run_counts_what_would_be_requeued() {
        let records = vec![
            json!({"failure_reason": "unsupported_schema_version", "original_topic": "events", "original_partition": 2, "event": {"event_id": "e"}}),
            json!({"failure_reason": "unsupported_schema_version", "original_topic": "log.jsonl", "original_partition": null, "event": {"event_id": "f"}}),
            json!({"failure_reason": "invalid_json", "original_topic": "events", "original_partition": 0, "raw": "{"}),
        ];
        let settings = BrokerSettings::new("127.0.0.1:1");
        let done = requeue(&records, "unsupported_schema_version", &settings, None, true).unwrap();
        assert_eq!(
            done,
            Requeued {
                published: 1,
                skipped_not_from_kafka: 1,
                skipped_empty: 0,
                unreadable: 0
            }
        );
        let done = requeue(
            &records,
            "unsupported_schema_version",
            &settings,
            Some("fixed"),
            true,
        )
        .unwrap();
        assert_eq!(done.published, 2);
    }
}
