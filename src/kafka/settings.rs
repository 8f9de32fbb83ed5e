//! The Kafka connection: broker settings (secrets redacted wherever they are shown),
//! client configurations for consumers and producers, topic metadata and creation, and
//! the classification of broker errors as fatal or retryable.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use serde::Deserialize;

use crate::model::span::Span;

/// How long metadata and admin requests may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the brokers are and how to talk to them.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerSettings {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    /// librdkafka settings passed through as they are (security protocol, SASL, TLS).
    pub options: BTreeMap<String, String>,
}

/// Whether a librdkafka setting holds a secret that must never be shown.
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "jaas",
        "token",
        "private",
        "key.pem",
        "credentials",
    ]
    .iter()
    .any(|word| key.contains(word))
}

impl BrokerSettings {
    /// Settings for `brokers` with no extra options.
    pub fn new(brokers: impl Into<String>) -> BrokerSettings {
        BrokerSettings {
            brokers: brokers.into(),
            options: BTreeMap::new(),
        }
    }

    /// A librdkafka configuration with the brokers and the pass-through options;
    /// `defaults` apply unless the options set the same key.
    pub fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        for (key, value) in &self.options {
            config.set(key, value);
        }
        config
    }

    /// `text` with every secret option value replaced by `[redacted]`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (key, value) in &self.options {
            if is_secret(key) && !value.is_empty() {
                out = out.replace(value.as_str(), "[redacted]");
            }
        }
        out
    }

    /// A broker error as text, with secrets redacted.
    pub fn describe(&self, error: &KafkaError) -> String {
        self.redact(&error.to_string())
    }

    /// The record at `offset` of a partition, read by a throwaway consumer of
    /// `group` that commits nothing; `None` when none arrives within the timeout.
    pub fn record_at(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<Option<rdkafka::message::OwnedMessage>, KafkaError> {
        let consumer: BaseConsumer = self
            .client_config(&[("group.id", group), ("enable.auto.commit", "false")])
            .create()?;
        let mut list = rdkafka::TopicPartitionList::new();
        list.add_partition_offset(topic, partition, rdkafka::Offset::Offset(offset))?;
        consumer.assign(&list)?;
        let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
        while std::time::Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => return Ok(Some(message.detach())),
                Some(Err(e)) => return Err(e),
                None => {}
            }
        }
        Ok(None)
    }

    /// The partitions of `topics`, sorted by topic then partition.
    pub fn partitions(&self, topics: &[String]) -> Result<Vec<(String, i32)>, BrokerError> {
        let consumer: BaseConsumer = self
            .client_config(&[])
            .create()
            .map_err(|e| BrokerError::classify(&e, self.describe(&e)))?;
        let mut out = Vec::new();
        for topic in topics {
            let metadata = consumer
                .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
                .map_err(|e| {
                    BrokerError::classify(&e, format!("metadata of `{topic}`: {}", self.describe(&e)))
                })?;
            let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
                return Err(BrokerError::Fatal(format!("topic `{topic}` does not exist")));
            };
            if let Some(error) = found.error() {
                let code = RDKafkaErrorCode::from(error);
                return Err(BrokerError::Fatal(format!("topic `{topic}`: {code}")));
            }
            if found.partitions().is_empty() {
                return Err(BrokerError::Fatal(format!("topic `{topic}` does not exist")));
            }
            out.extend(found.partitions().iter().map(|p| (topic.clone(), p.id())));
        }
        out.sort();
        Ok(out)
    }

    /// Creates `topic` with `partitions` partitions unless it exists.
    pub fn ensure_topic(&self, topic: &str, partitions: i32) -> Result<(), BrokerError> {
        let admin: AdminClient<DefaultClientContext> = self
            .client_config(&[])
            .create()
            .map_err(|e| BrokerError::classify(&e, self.describe(&e)))?;
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
        let results = futures_executor::block_on(admin.create_topics([&new], &options))
            .map_err(|e| BrokerError::classify(&e, format!("creating `{topic}`: {}", self.describe(&e))))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(BrokerError::Fatal(format!("creating topic `{name}`: {code}")));
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options: BTreeMap<&str, &str> = self
            .options
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret(k) { "[redacted]" } else { v.as_str() }))
            .collect();
        f.debug_struct("BrokerSettings")
            .field("brokers", &self.brokers)
            .field("options", &options)
            .finish()
    }
}

/// Where a Kafka source starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// The group's committed offsets (earliest where none).
    Committed,
    /// The earliest retained offset.
    Earliest,
    /// The end: only new records.
    Latest,
    /// The first offset whose broker timestamp is at or after this time (ms since the epoch).
    At(i64),
}

impl std::str::FromStr for StartPosition {
    type Err = String;

    fn from_str(text: &str) -> Result<StartPosition, String> {
        match text {
            "committed" => Ok(StartPosition::Committed),
            "earliest" => Ok(StartPosition::Earliest),
            "latest" => Ok(StartPosition::Latest),
            time => humantime::parse_rfc3339_weak(time)
                .map_err(|_| {
                    format!("invalid start `{time}`: write committed, earliest, latest or an RFC 3339 time")
                })
                .and_then(|t| {
                    t.duration_since(std::time::UNIX_EPOCH)
                        .map(|d| StartPosition::At(d.as_millis() as i64))
                        .map_err(|_| format!("start `{time}` is before 1970"))
                }),
        }
    }
}

impl<'de> Deserialize<'de> for StartPosition {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<StartPosition, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How far behind a consumer group may be before `skewless lag` fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LagTolerance {
    /// Messages behind the end offset, per partition.
    pub messages: Option<u64>,
    /// Event time behind the newest message, per partition.
    pub event_time: Option<Span>,
}

/// A job's Kafka source.
#[derive(Debug, Clone)]
pub struct KafkaJob {
    /// Brokers and pass-through options.
    pub settings: BrokerSettings,
    /// Topics read.
    pub topics: Vec<String>,
    /// Consumer group.
    pub group: String,
    /// Where to start; `None` for the default (earliest, or committed when stateless).
    pub start: Option<StartPosition>,
    /// When the group counts as behind.
    pub lag_tolerance: LagTolerance,
    /// How often durable offsets are committed.
    pub commit_interval: Span,
}

/// A broker failure, classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// Retrying cannot help: bad configuration, authorization, unknown topic.
    #[error("{0}")]
    Fatal(String),
    /// The broker is unreachable or busy; retrying may help.
    #[error("{0} (retryable)")]
    Retryable(String),
}

impl BrokerError {
    /// Classifies a librdkafka error; `text` is its (redacted) description.
    pub fn classify(error: &KafkaError, text: String) -> BrokerError {
        match error.rdkafka_error_code() {
            Some(code) if retryable(code) => BrokerError::Retryable(text),
            _ => BrokerError::Fatal(text),
        }
    }
}

/// Whether a librdkafka error code is transient.
pub fn retryable(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        BrokerTransportFailure
            | AllBrokersDown
            | OperationTimedOut
            | RequestTimedOut
            | NetworkException
            | LeaderNotAvailable
            | NotLeaderForPartition
            | NotCoordinator
            | CoordinatorNotAvailable
            | CoordinatorLoadInProgress
            | QueueFull
            | Resolve
            | MessageTimedOut
            | NotEnoughReplicas
    )
}

/// Whether a raw response error is transient.
pub fn retryable_resp(code: RDKafkaRespErr) -> bool {
    retryable(RDKafkaErrorCode::from(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show() {
        let mut settings = BrokerSettings::new("127.0.0.1:9092");
        settings.options.insert("sasl.password".into(), "hunter2".into());
        settings.options.insert("sasl.username".into(), "alice".into());
        settings
            .options
            .insert("ssl.key.password".into(), "s3cr3t".into());
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("alice"));
        assert_eq!(
            settings.redact("login failed for alice with hunter2"),
            "login failed for alice with [redacted]"
        );
    }

    #[test]
    fn transport_failures_are_retryable_and_auth_failures_fatal() {
        assert!(retryable(RDKafkaErrorCode::BrokerTransportFailure));
        assert!(retryable(RDKafkaErrorCode::AllBrokersDown));
        assert!(!retryable(RDKafkaErrorCode::TopicAuthorizationFailed));
        assert!(!retryable(RDKafkaErrorCode::UnknownTopicOrPartition));
    }
}
