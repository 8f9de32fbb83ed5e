//! Dead letters to Kafka: a record read from topic T goes to `T.dlq` (or to the job's
//! `dlq_topic`), keyed as the original was; dead letters with no Kafka origin (a view
//! Redis would not take) go to the job's default dead-letter topic.
//!
//! librdkafka retries retryable produce failures itself; [`DeadLetterSink::flush`]
//! waits until every dead letter sent is acknowledged, and a dead letter that cannot
//! be delivered fails the run (it would otherwise be lost).

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};

use super::{DeadLetterSink, SinkError};
use crate::broker::BrokerSettings;
use crate::dead_letter::{DeadLetter, LetterKey, key_of};
use crate::dlq::DlqLocation;

const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Records delivery failures.
#[derive(Clone, Default)]
pub struct DeliveryContext {
    failures: Arc<Mutex<Vec<String>>>,
}

impl DeliveryContext {
    /// The delivery failures recorded so far.
    pub fn failures_lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        if let Err((error, message)) = result {
            let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            failures.push(format!(
                "dead letter to `{}` not delivered: {error}",
                message.topic()
            ));
        }
    }
}

/// Where a job's dead letters go in Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterTopics {
    /// Topics the job reads: a dead letter from one of them goes to `<topic>.dlq`.
    pub inputs: BTreeSet<String>,
    /// Where everything goes when set; otherwise where letters without a Kafka origin go.
    pub fixed: Option<String>,
    /// `<first input topic>.dlq`.
    pub default: String,
}

impl DeadLetterTopics {
    /// The dead-letter topics of a job reading `topics`, with an optional fixed one.
    pub fn new(topics: &[String], fixed: Option<String>) -> DeadLetterTopics {
        let default = topics
            .first()
            .map_or_else(|| "skewless.dlq".to_owned(), |t| format!("{t}.dlq"));
        DeadLetterTopics {
            inputs: topics.iter().cloned().collect(),
            fixed,
            default,
        }
    }

    /// The topic a dead letter goes to.
    pub fn topic_for(&self, letter: &DeadLetter) -> String {
        if let Some(fixed) = &self.fixed {
            return fixed.clone();
        }
        match letter.origin.partition {
            Some(_) if self.inputs.contains(&letter.origin.topic) => format!("{}.dlq", letter.origin.topic),
            _ => self.default.clone(),
        }
    }

    /// Every topic a dead letter may go to.
    pub fn all(&self) -> Vec<String> {
        match &self.fixed {
            Some(fixed) => vec![fixed.clone()],
            None => {
                let mut all: BTreeSet<String> = self.inputs.iter().map(|t| format!("{t}.dlq")).collect();
                all.insert(self.default.clone());
                all.into_iter().collect()
            }
        }
    }
}

/// A producer of dead letters, shared by a process's workers.
#[derive(Clone)]
pub struct KafkaDeadLetters {
    settings: BrokerSettings,
    producer: Arc<ThreadedProducer<DeliveryContext>>,
    context: DeliveryContext,
    topics: Arc<DeadLetterTopics>,
    /// Dead letters already in the topics (when resuming from a checkpoint): records
    /// read again give them again, and they are not sent twice.
    present: Arc<HashSet<LetterKey>>,
}

impl KafkaDeadLetters {
    /// A producer for `topics` on the brokers of `settings`.
    pub fn new(settings: &BrokerSettings, topics: DeadLetterTopics) -> Result<KafkaDeadLetters, SinkError> {
        let context = DeliveryContext::default();
        let producer: ThreadedProducer<DeliveryContext> = settings
            .client_config(&[("linger.ms", "5"), ("message.timeout.ms", "120000")])
            .create_with_context(context.clone())
            .map_err(|e| SinkError::Store(format!("dead-letter producer: {}", settings.describe(&e))))?;
        Ok(KafkaDeadLetters {
            settings: settings.clone(),
            producer: Arc::new(producer),
            context,
            topics: Arc::new(topics),
            present: Arc::default(),
        })
    }

    /// A producer for `topics` that skips the dead letters the topics already hold.
    pub fn resume(
        settings: &BrokerSettings,
        topics: DeadLetterTopics,
    ) -> Result<KafkaDeadLetters, SinkError> {
        let mut present = HashSet::new();
        for topic in topics.all() {
            let location = DlqLocation::Topic {
                settings: settings.clone(),
                topic: topic.clone(),
            };
            let records = crate::dlq::read(&location)
                .map_err(|e| SinkError::Store(format!("reading dead letters back from `{topic}`: {e}")))?;
            present.extend(records.iter().filter_map(key_of));
        }
        let mut resumed = KafkaDeadLetters::new(settings, topics)?;
        resumed.present = Arc::new(present);
        Ok(resumed)
    }
}

impl DeadLetterSink for KafkaDeadLetters {
    fn write(&mut self, letters: &[DeadLetter]) -> Result<(), SinkError> {
        for letter in letters {
            if !self.present.is_empty() && letter.key().is_some_and(|key| self.present.contains(&key)) {
                continue;
            }
            let topic = self.topics.topic_for(letter);
            let payload = letter.to_json();
            let key = letter.origin.key.as_deref().map(str::as_bytes);
            loop {
                let mut record: BaseRecord<'_, [u8], str> = BaseRecord::to(&topic).payload(payload.as_str());
                if let Some(key) = key {
                    record = record.key(key);
                }
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        self.producer.poll(Duration::from_millis(10));
                    }
                    Err((error, _)) => {
                        return Err(SinkError::Store(format!(
                            "dead letter to `{topic}`: {}",
                            self.settings.describe(&error)
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.producer.flush(FLUSH_TIMEOUT).map_err(|e| {
            SinkError::Store(format!(
                "dead letters not acknowledged: {}",
                self.settings.describe(&e)
            ))
        })?;
        let failures = std::mem::take(&mut *self.context.failures_lock());
        match failures.into_iter().next() {
            None => Ok(()),
            Some(failure) => Err(SinkError::Store(self.settings.redact(&failure))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letter::{Origin, Reason};

    fn letter(topic: &str, partition: Option<i32>) -> DeadLetter {
        let origin = Origin {
            topic: topic.into(),
            partition,
            offset: 3,
            key: None,
            broker_timestamp_ms: None,
        };
        DeadLetter::first_attempt(
            "job",
            origin,
            b"{}",
            true,
            Reason::InvalidFieldType,
            String::new(),
        )
    }

    #[test]
    fn dead_letters_go_to_their_topics_dlq() {
        let topics = DeadLetterTopics::new(&["a".into(), "b".into()], None);
        assert_eq!(topics.topic_for(&letter("b", Some(1))), "b.dlq");
        assert_eq!(topics.topic_for(&letter("user_state:u1", None)), "a.dlq");
        assert_eq!(topics.all(), vec!["a.dlq".to_owned(), "b.dlq".to_owned()]);
        let fixed = DeadLetterTopics::new(&["a".into()], Some("errors".into()));
        assert_eq!(fixed.topic_for(&letter("a", Some(0))), "errors");
    }
}
