//! Reading a whole topic back: every record of every partition, from the earliest
//! retained offset up to the end offsets at the time of the call. The dead-letter
//! tools read a queue with it, and the Kafka dead-letter sink reads what its topics
//! already hold when it resumes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::settings::{BrokerError, BrokerSettings, REQUEST_TIMEOUT};

/// How long a read may take before it returns what it has.
const READ_DEADLINE: Duration = Duration::from_secs(60);

/// Calls `visit(at, payload)` for each record of `topic` up to its current end offsets,
/// `at` being `topic/partition@offset`. Reads without committing, as `group`.
pub fn read_to_end(
    settings: &BrokerSettings,
    topic: &str,
    group: &str,
    mut visit: impl FnMut(&str, &[u8]),
) -> Result<(), BrokerError> {
    let broker = |e: rdkafka::error::KafkaError| BrokerError::classify(&e, settings.describe(&e));
    let consumer: BaseConsumer = settings
        .client_config(&[("group.id", group), ("enable.auto.commit", "false")])
        .create()
        .map_err(broker)?;
    let partitions = settings.partitions(&[topic.to_owned()])?;
    let mut ends = BTreeMap::new();
    let mut list = TopicPartitionList::new();
    for (_, partition) in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *partition, REQUEST_TIMEOUT)
            .map_err(broker)?;
        if high > low {
            ends.insert(*partition, high);
            list.add_partition_offset(topic, *partition, Offset::Offset(low))
                .map_err(broker)?;
        }
    }
    if ends.is_empty() {
        return Ok(());
    }
    consumer.assign(&list).map_err(broker)?;
    let deadline = Instant::now() + READ_DEADLINE;
    while !ends.is_empty() && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => return Err(broker(e)),
            Some(Ok(message)) => {
                let at = format!("{topic}/{}@{}", message.partition(), message.offset());
                visit(&at, message.payload().unwrap_or_default());
                if ends
                    .get(&message.partition())
                    .is_some_and(|&end| message.offset() + 1 >= end)
                {
                    ends.remove(&message.partition());
                }
            }
        }
    }
    Ok(())
}
