//! The one Kafka producer of the crate: `skewless produce`, `dlq requeue` and the
//! Kafka dead-letter sink all send through a [`Publisher`], which waits (once per
//! full queue, polling) while librdkafka's queue is full and turns delivery failures
//! into an error at the next flush.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};

use super::settings::{BrokerError, BrokerSettings};

/// How long a flush waits for acknowledgements.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);

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
            failures.push(format!("record to `{}` not delivered: {error}", message.topic()));
        }
    }
}

/// A producer that waits for every record to be acknowledged on [`Publisher::flush`].
pub struct Publisher {
    settings: BrokerSettings,
    producer: ThreadedProducer<DeliveryContext>,
    context: DeliveryContext,
}

impl Publisher {
    /// A producer on the brokers of `settings`, for bulk publishing.
    pub fn new(settings: &BrokerSettings) -> Result<Publisher, BrokerError> {
        Publisher::with_config(settings, &[("linger.ms", "5"), ("batch.num.messages", "10000")])
    }

    /// A producer on the brokers of `settings` with these librdkafka settings.
    pub fn with_config(settings: &BrokerSettings, config: &[(&str, &str)]) -> Result<Publisher, BrokerError> {
        let context = DeliveryContext::default();
        let producer = settings
            .client_config(config)
            .create_with_context(context.clone())
            .map_err(|e| BrokerError::classify(&e, settings.describe(&e)))?;
        Ok(Publisher {
            settings: settings.clone(),
            producer,
            context,
        })
    }

    /// Sends one record; waits while librdkafka's queue is full.
    pub fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<(), BrokerError> {
        loop {
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(payload);
            if let Some(key) = key {
                record = record.key(key);
            }
            if let Some(partition) = partition {
                record = record.partition(partition);
            }
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    self.producer.poll(Duration::from_millis(5));
                }
                Err((error, _)) => return Err(BrokerError::classify(&error, self.settings.describe(&error))),
            }
        }
    }

    /// Waits until every record sent is acknowledged (at most `FLUSH_TIMEOUT`); the
    /// first delivery failure since the last flush is the error.
    pub fn flush(&self) -> Result<(), BrokerError> {
        self.producer
            .flush(FLUSH_TIMEOUT)
            .map_err(|e| BrokerError::classify(&e, self.settings.describe(&e)))?;
        let failures = std::mem::take(&mut *self.context.failures_lock());
        match failures.into_iter().next() {
            None => Ok(()),
            Some(failure) => Err(BrokerError::Fatal(self.settings.redact(&failure))),
        }
    }
}
