//! Dead letters to Kafka: a record read from topic T goes to `T.dlq` (or to the job's
//! `dlq_topic`), keyed as the original was; dead letters with no Kafka origin (a view
//! Redis would not take) go to the job's default dead-letter topic.
//!
//! librdkafka retries retryable produce failures itself; [`DeadLetterSink::flush`]
//! waits until every dead letter sent is acknowledged, and a dead letter that cannot
//! be delivered fails the run (it would otherwise be lost).

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use super::{DeadLetterSink, SinkError};
use crate::dlq::letter::{DeadLetter, LetterKey, key_of};
use crate::kafka::producer::Publisher;
use crate::kafka::settings::BrokerSettings;

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
    producer: Arc<Publisher>,
    topics: Arc<DeadLetterTopics>,
    /// Dead letters already in the topics (when resuming from a checkpoint): records
    /// read again give them again, and they are not sent twice.
    present: Arc<HashSet<LetterKey>>,
}

impl KafkaDeadLetters {
    /// A producer for `topics` on the brokers of `settings`.
    pub fn new(settings: &BrokerSettings, topics: DeadLetterTopics) -> Result<KafkaDeadLetters, SinkError> {
        let producer =
            Publisher::with_config(settings, &[("linger.ms", "5"), ("message.timeout.ms", "120000")])
                .map_err(|e| SinkError::Store(format!("dead-letter producer: {e}")))?;
        Ok(KafkaDeadLetters {
            producer: Arc::new(producer),
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
            // A record that is not a letter cannot be one this sink wrote: skip it.
            crate::kafka::read::read_to_end(settings, &topic, "skewless-dlq-resume", |_, payload| {
                if let Ok(letter) = serde_json::from_slice::<serde_json::Value>(payload) {
                    present.extend(key_of(&letter));
                }
            })
            .map_err(|e| SinkError::Store(format!("reading dead letters back from `{topic}`: {e}")))?;
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
            self.producer
                .send(&topic, None, key, payload.as_bytes())
                .map_err(|e| SinkError::Store(format!("dead letter to `{topic}`: {e}")))?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.producer
            .flush()
            .map_err(|e| SinkError::Store(format!("dead letters not acknowledged: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::letter::Reason;
    use crate::model::event::Origin;

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
