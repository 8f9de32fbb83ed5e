//! Kafka topics as partitions: one consumer per worker, assigned its share of the
//! topics' partitions (no group rebalancing: the split is the same on every run, so
//! each user's state stays with one worker). Offsets are committed under the job's
//! group, but only for records whose outputs are durable.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientContext, Statistics};

use crate::kafka::settings::StartPosition;
use crate::kafka::settings::{BrokerError, BrokerSettings, REQUEST_TIMEOUT};
use crate::source::{Read, Record, Source, SourceError};

/// Receives `(topic, partition, consumer lag)` from librdkafka's statistics.
pub type LagReport = Arc<dyn Fn(&str, i32, i64) + Send + Sync>;

/// What the latest statistics said of one partition.
#[derive(Clone, Copy, Debug)]
struct Heard {
    /// Its leader was up.
    reachable: bool,
    /// The consumer was fetching it and had fetched up to the end the broker reported:
    /// nothing was waiting for it then.
    caught_up: bool,
}

/// The consumer's context: receives librdkafka statistics, for lag metrics and to
/// know which partitions' leaders are reachable and which have records still to fetch.
#[derive(Clone, Default)]
pub struct SourceContext {
    lag: Option<LagReport>,
    /// Topic -> partition -> what the latest statistics said of it.
    heard: Arc<std::sync::Mutex<std::collections::HashMap<String, std::collections::HashMap<i32, Heard>>>>,
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        let up: std::collections::HashSet<i32> = statistics
            .brokers
            .values()
            .filter(|b| b.nodeid >= 0 && b.state == "UP")
            .map(|b| b.nodeid)
            .collect();
        let mut heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        for (topic, stats) in &statistics.topics {
            for (partition, p) in &stats.partitions {
                if *partition < 0 {
                    continue;
                }
                // The end a read_committed fetch stops at: the last stable offset,
                // which is the high watermark when no transaction is open.
                let end = if p.ls_offset >= 0 {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                heard.entry(topic.clone()).or_default().insert(
                    *partition,
                    Heard {
                        reachable: up.contains(&p.leader),
                        caught_up: p.fetch_state == "active" && end >= 0 && p.next_offset >= end,
                    },
                );
                if let Some(report) = &self.lag
                    && p.consumer_lag >= 0
                {
                    report(topic, *partition, p.consumer_lag);
                }
            }
        }
    }
}

impl SourceContext {
    /// What the latest statistics said of a partition; `None` before the first.
    fn heard(&self, topic: &str, partition: i32) -> Option<Heard> {
        let heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        heard
            .get(topic)
            .and_then(|partitions| partitions.get(&partition))
            .copied()
    }
}

impl ConsumerContext for SourceContext {
    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(error) = result {
            tracing::warn!(%error, "offset commit failed; a later commit will cover it");
        }
    }
}

struct Assigned {
    topic: String,
    partition: i32,
    queue: rdkafka::consumer::base_consumer::PartitionQueue<SourceContext>,
    /// The offset after the last record handed out.
    next: i64,
}

/// One worker's Kafka partitions.
pub struct KafkaSource {
    settings: BrokerSettings,
    consumer: Arc<BaseConsumer<SourceContext>>,
    assigned: Vec<Assigned>,
}

impl KafkaSource {
    /// A consumer in `group` reading `partitions` from `start`, except those with an
    /// offset in `resume` (from a checkpoint), which start there. `on_lag` receives the
    /// consumer lag per partition from librdkafka's statistics.
    pub fn open(
        settings: &BrokerSettings,
        group: &str,
        partitions: &[(String, i32)],
        start: StartPosition,
        resume: &[Option<i64>],
        on_lag: Option<LagReport>,
    ) -> Result<KafkaSource, SourceError> {
        let broker = |e: rdkafka::error::KafkaError| SourceError::Broker(settings.describe(&e));
        let config = settings.client_config(&[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
            // Freshness: do not wait half a second for a fetch to fill up.
            ("fetch.wait.max.ms", "20"),
            // Every second: which partitions' leaders are up (a partition that cannot
            // be fetched is not idle), and consumer lag for the metrics.
            ("statistics.interval.ms", "1000"),
        ]);
        let context = SourceContext {
            lag: on_lag,
            heard: Default::default(),
        };
        let consumer: BaseConsumer<SourceContext> = config.create_with_context(context).map_err(broker)?;
        let consumer = Arc::new(consumer);
        let mut list = TopicPartitionList::new();
        for (topic, partition) in partitions {
            list.add_partition(topic, *partition);
        }
        let mut offsets = match start {
            StartPosition::Earliest => uniform(&list, Offset::Beginning),
            StartPosition::Latest => uniform(&list, Offset::End),
            StartPosition::Committed => uniform(&list, Offset::Stored),
            // A worker with no partitions (more workers than partitions) asks nothing.
            StartPosition::At(_) if partitions.is_empty() => TopicPartitionList::new(),
            StartPosition::At(millis) => offsets_at(settings, &consumer, partitions, millis)?,
        };
        let mut next = vec![-1; partitions.len()];
        for (i, (topic, partition)) in partitions.iter().enumerate() {
            if let Some(offset) = resume.get(i).copied().flatten().filter(|&o| o >= 0) {
                offsets
                    .set_partition_offset(topic, *partition, Offset::Offset(offset))
                    .map_err(broker)?;
                next[i] = offset;
            }
        }
        consumer.assign(&offsets).map_err(broker)?;
        let mut assigned = Vec::new();
        for ((topic, partition), next) in partitions.iter().zip(next) {
            let queue = consumer.split_partition_queue(topic, *partition).ok_or_else(|| {
                SourceError::Broker(format!(
                    "cannot read partition {partition} of `{topic}` on its own queue"
                ))
            })?;
            assigned.push(Assigned {
                topic: topic.clone(),
                partition: *partition,
                queue,
                next,
            });
        }
        Ok(KafkaSource {
            settings: settings.clone(),
            consumer,
            assigned,
        })
    }

    fn classify(&self, error: &rdkafka::error::KafkaError) -> BrokerError {
        BrokerError::classify(error, self.settings.describe(error))
    }
}

/// The first offset of each partition whose broker timestamp is at or after `millis`.
///
/// Each answer is checked by reading the record there: a broker that has no record at
/// or after the time must answer "end", but the test broker (tansu 0.6) answers the
/// earliest offset instead; a record older than the time means "end".
fn offsets_at(
    settings: &BrokerSettings,
    consumer: &BaseConsumer<SourceContext>,
    partitions: &[(String, i32)],
    millis: i64,
) -> Result<TopicPartitionList, SourceError> {
    let broker = |e: rdkafka::error::KafkaError| SourceError::Broker(settings.describe(&e));
    let mut times = TopicPartitionList::new();
    for (topic, partition) in partitions {
        times
            .add_partition_offset(topic, *partition, Offset::Offset(millis))
            .map_err(broker)?;
    }
    let found = consumer
        .offsets_for_times(times, REQUEST_TIMEOUT)
        .map_err(broker)?;
    let mut checked = TopicPartitionList::new();
    for (topic, partition) in partitions {
        let mut offset = found
            .find_partition(topic, *partition)
            .map_or(Offset::End, |e| e.offset());
        if let Offset::Offset(at) = offset {
            let (_, end) = consumer
                .fetch_watermarks(topic, *partition, REQUEST_TIMEOUT)
                .map_err(broker)?;
            if at >= end || timestamp_at(settings, topic, *partition, at)?.is_some_and(|t| t < millis) {
                offset = Offset::End;
            }
        }
        checked
            .add_partition_offset(topic, *partition, offset)
            .map_err(broker)?;
    }
    Ok(checked)
}

/// The broker timestamp of the record at `offset`.
fn timestamp_at(
    settings: &BrokerSettings,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<Option<i64>, SourceError> {
    let record = settings
        .record_at("skewless-peek", topic, partition, offset)
        .map_err(|e| SourceError::Broker(settings.describe(&e)))?;
    Ok(record.and_then(|m| m.timestamp().to_millis()))
}

fn uniform(list: &TopicPartitionList, offset: Offset) -> TopicPartitionList {
    let mut out = list.clone();
    out.set_all_offsets(offset)
        .expect("partitions were added without offsets");
    out
}

impl Source for KafkaSource {
    fn partition_names(&self) -> Vec<String> {
        self.assigned
            .iter()
            .map(|a| format!("{}/{}", a.topic, a.partition))
            .collect()
    }

    fn read(
        &mut self,
        partition: usize,
        max: usize,
        emit: &mut dyn FnMut(Record<'_>),
    ) -> Result<Read, SourceError> {
        let mut count = 0;
        while count < max {
            let assigned = &self.assigned[partition];
            match assigned.queue.poll(Duration::ZERO) {
                None => break,
                Some(Ok(message)) => {
                    let offset = message.offset();
                    emit(Record {
                        bytes: message.payload().unwrap_or_default(),
                        oversized_len: None,
                        topic: &assigned.topic,
                        partition: Some(assigned.partition),
                        offset,
                        sequence: offset,
                        key: message.key(),
                        broker_timestamp_ms: message.timestamp().to_millis(),
                    });
                    self.assigned[partition].next = offset + 1;
                    count += 1;
                }
                Some(Err(error)) => match self.classify(&error) {
                    BrokerError::Retryable(text) => {
                        tracing::warn!(partition = %self.partition_names()[partition], error = %text, "broker unavailable; retrying");
                        break;
                    }
                    BrokerError::Fatal(text) => return Err(SourceError::Broker(text)),
                },
            }
        }
        // Serve the main queue: errors and statistics arrive there.
        if let Some(Err(error)) = self.consumer.poll(Duration::ZERO) {
            match self.classify(&error) {
                BrokerError::Retryable(text) => tracing::warn!(error = %text, "broker unavailable; retrying"),
                BrokerError::Fatal(text) => return Err(SourceError::Broker(text)),
            }
        }
        let assigned = &self.assigned[partition];
        let heard = self.consumer.context().heard(&assigned.topic, assigned.partition);
        Ok(match heard {
            _ if count > 0 => Read::Records(count),
            // Empty only once the consumer is known to have fetched all there was from
            // a reachable leader. A partition whose first fetch is slow to come (a busy
            // broker), or whose leader is down, may have records waiting: not idle.
            Some(Heard {
                reachable: true,
                caught_up: true,
            }) => Read::Empty,
            _ => Read::Waiting,
        })
    }

    fn position(&self, partition: usize) -> i64 {
        self.assigned[partition].next
    }

    fn commit(&mut self, positions: &[(usize, i64)]) -> Result<(), SourceError> {
        self.commit_with(positions, CommitMode::Sync)
    }

    fn commit_in_background(&mut self, positions: &[(usize, i64)]) -> Result<(), SourceError> {
        self.commit_with(positions, CommitMode::Async)
    }

    fn hold(&mut self, partition: usize, held: bool) -> Result<(), SourceError> {
        // A paused partition is not fetched (nor prefetched); it resumes at the record
        // after the last one handed out.
        let assigned = &self.assigned[partition];
        let mut list = TopicPartitionList::new();
        list.add_partition(&assigned.topic, assigned.partition);
        let result = if held {
            self.consumer.pause(&list)
        } else {
            self.consumer.resume(&list)
        };
        result.map_err(|e| SourceError::Broker(self.settings.describe(&e)))
    }

    fn set_waker(&mut self, waker: Arc<dyn Fn() + Send + Sync>) {
        for assigned in &mut self.assigned {
            let waker = Arc::clone(&waker);
            assigned.queue.set_nonempty_callback(move || waker());
        }
    }
}

impl KafkaSource {
    /// Commits `positions`; with [`CommitMode::Async`] the broker's answer comes to
    /// [`SourceContext::commit_callback`].
    fn commit_with(&mut self, positions: &[(usize, i64)], mode: CommitMode) -> Result<(), SourceError> {
        let mut list = TopicPartitionList::new();
        for &(partition, next) in positions {
            if next >= 0 {
                let a = &self.assigned[partition];
                list.add_partition_offset(&a.topic, a.partition, Offset::Offset(next))
                    .map_err(|e| SourceError::Broker(self.settings.describe(&e)))?;
            }
        }
        if list.count() == 0 {
            return Ok(());
        }
        match self.consumer.commit(&list, mode) {
            Ok(()) => Ok(()),
            Err(error) => match self.classify(&error) {
                // A later commit covers these offsets too.
                BrokerError::Retryable(text) => {
                    tracing::warn!(error = %text, "offset commit failed; a later commit will cover it");
                    Ok(())
                }
                BrokerError::Fatal(text) => Err(SourceError::Broker(format!("committing offsets: {text}"))),
            },
        }
    }
}
