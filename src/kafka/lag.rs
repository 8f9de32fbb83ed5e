//! Consumer lag of a job's group (`skewless lag`): per partition, the committed offset,
//! the end offset, the lag in messages, and the lag in event time (the newest record's
//! event time minus that of the first record not yet committed).

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::kafka::settings::{BrokerError, BrokerSettings, REQUEST_TIMEOUT};
use crate::kafka::settings::{KafkaJob, LagTolerance};

/// One partition's lag.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionLag {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The group's committed offset; `None` when it has committed nothing.
    pub committed: Option<i64>,
    /// The end offset (high watermark).
    pub end: i64,
    /// Messages between the committed (or earliest) offset and the end.
    pub lag_messages: i64,
    /// Event-time seconds between the first uncommitted record and the newest one;
    /// `None` when there is no lag or the records carry no readable `event_time`.
    pub lag_seconds: Option<f64>,
}

impl PartitionLag {
    /// Whether this partition is further behind than `tolerance` allows.
    pub fn over(&self, tolerance: &LagTolerance) -> bool {
        let messages = tolerance
            .messages
            .is_some_and(|max| self.lag_messages as u64 > max);
        let seconds = match (tolerance.event_time, self.lag_seconds) {
            (Some(max), Some(lag)) => lag > max.as_secs_f64(),
            _ => false,
        };
        messages || seconds
    }
}

/// Measures the lag of `kafka.group` on `kafka.topics`.
pub fn measure(kafka: &KafkaJob) -> Result<Vec<PartitionLag>, BrokerError> {
    let settings = &kafka.settings;
    let broker = |e: rdkafka::error::KafkaError| BrokerError::classify(&e, settings.describe(&e));
    let consumer: BaseConsumer = settings
        .client_config(&[("group.id", &kafka.group), ("enable.auto.commit", "false")])
        .create()
        .map_err(broker)?;
    let partitions = settings.partitions(&kafka.topics)?;
    let mut list = TopicPartitionList::new();
    for (topic, partition) in &partitions {
        list.add_partition(topic, *partition);
    }
    let committed = consumer
        .committed_offsets(list, REQUEST_TIMEOUT)
        .map_err(broker)?;
    let mut out = Vec::new();
    for (topic, partition) in partitions {
        let (low, end) = consumer
            .fetch_watermarks(&topic, partition, REQUEST_TIMEOUT)
            .map_err(broker)?;
        let committed = match committed.find_partition(&topic, partition).map(|e| e.offset()) {
            Some(Offset::Offset(offset)) => Some(offset),
            _ => None,
        };
        let from = committed.unwrap_or(low).max(low);
        let lag_messages = (end - from).max(0);
        let lag_seconds = if lag_messages > 0 {
            let first = event_time_at(settings, &topic, partition, from)?;
            let last = event_time_at(settings, &topic, partition, end - 1)?;
            first.zip(last).map(|(a, b)| (b - a).max(0.0))
        } else {
            None
        };
        out.push(PartitionLag {
            topic,
            partition,
            committed,
            end,
            lag_messages,
            lag_seconds,
        });
    }
    Ok(out)
}

/// The `event_time` of the record at `offset`, if it has one.
fn event_time_at(
    settings: &BrokerSettings,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<Option<f64>, BrokerError> {
    let record = settings
        .record_at("skewless-lag-reader", topic, partition, offset)
        .map_err(|e| BrokerError::classify(&e, settings.describe(&e)))?;
    Ok(record.and_then(|message| {
        serde_json::from_slice::<serde_json::Value>(message.payload().unwrap_or_default())
            .ok()
            .and_then(|v| v["event_time"].as_f64())
    }))
}

/// The lag report as a table.
pub fn render(lags: &[PartitionLag], tolerance: &LagTolerance) -> String {
    let mut out = format!(
        "{:<28} {:>9} {:>12} {:>12} {:>12} {:>14}\n",
        "topic/partition", "", "committed", "end", "lag (msgs)", "lag (event s)"
    );
    for lag in lags {
        out.push_str(&format!(
            "{:<28} {:>9} {:>12} {:>12} {:>12} {:>14}\n",
            format!("{}/{}", lag.topic, lag.partition),
            if lag.over(tolerance) { "BEHIND" } else { "ok" },
            lag.committed.map_or("-".to_owned(), |c| c.to_string()),
            lag.end,
            lag.lag_messages,
            lag.lag_seconds.map_or("-".to_owned(), |s| format!("{s:.1}")),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::span::Span;

    fn lag(messages: i64, seconds: Option<f64>) -> PartitionLag {
        PartitionLag {
            topic: "t".into(),
            partition: 0,
            committed: Some(0),
            end: messages,
            lag_messages: messages,
            lag_seconds: seconds,
        }
    }

    #[test]
    fn tolerance_applies_to_messages_and_event_time() {
        let tolerance = LagTolerance {
            messages: Some(100),
            event_time: Some(Span::secs(60)),
        };
        assert!(!lag(100, Some(60.0)).over(&tolerance));
        assert!(lag(101, None).over(&tolerance));
        assert!(lag(5, Some(61.0)).over(&tolerance));
        assert!(render(&[lag(101, None)], &tolerance).contains("BEHIND"));
    }
}
