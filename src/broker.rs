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
