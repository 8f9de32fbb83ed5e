//! Every default of a job in one table: job loading fills absent keys from it, and the
//! command line's overrides build absent sections from it, so the two never disagree.

use std::path::PathBuf;

use crate::kafka::settings::{BrokerSettings, KafkaJob, LagTolerance};
use crate::model::span::Span;
use crate::sinks::redis::RedisSink;

/// Default `limits.max_event_bytes`: 1 MiB.
pub const DEFAULT_MAX_EVENT_BYTES: u64 = 1 << 20;
/// Default `time.allowed_lateness`.
pub const DEFAULT_ALLOWED_LATENESS: Span = Span::secs(5);
/// Default `time.dedup_horizon`.
pub const DEFAULT_DEDUP_HORIZON: Span = Span::secs(24 * 3600);
/// Default `time.idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Span = Span::secs(10);
/// Default `limits.max_retries`.
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// Default `time.max_partition_skew`.
pub const DEFAULT_MAX_PARTITION_SKEW: Span = Span::secs(60);
/// Default `sinks.flush_interval`.
pub const DEFAULT_FLUSH_INTERVAL: Span = Span(std::time::Duration::from_millis(50));
/// Default `source.kafka.brokers`.
pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
/// Default `source.kafka.lag_tolerance.messages`.
pub const DEFAULT_LAG_TOLERANCE_MESSAGES: u64 = 10_000;
/// Default `checkpoint.interval`.
pub const DEFAULT_CHECKPOINT_INTERVAL: Span = Span::secs(30);
/// Default `checkpoint.keep`.
pub const DEFAULT_CHECKPOINT_KEEP: usize = 3;
/// Default `sinks.redis.url`.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Default `sinks.redis.key_prefix`.
pub const DEFAULT_REDIS_KEY_PREFIX: &str = "user_state:";
/// Default `sinks.redis.ttl`: 30 days.
pub const DEFAULT_REDIS_TTL: Span = Span::secs(30 * 86_400);
/// Default `export.roll_bytes`: 128 MiB.
pub const DEFAULT_EXPORT_ROLL_BYTES: u64 = 128 << 20;
/// Default `export.roll_interval`: 10 minutes.
pub const DEFAULT_EXPORT_ROLL_INTERVAL: Span = Span::secs(600);
/// Default `sinks.archive.roll_bytes`: 64 MiB.
pub const DEFAULT_ARCHIVE_ROLL_BYTES: u64 = 64 << 20;
/// Default `sinks.archive.roll_interval`: 5 minutes.
pub const DEFAULT_ARCHIVE_ROLL_INTERVAL: Span = Span::secs(300);
/// Default `source.kafka.commit_interval`.
pub const DEFAULT_COMMIT_INTERVAL: Span = Span::secs(1);

/// The Kafka source of job `name` where nothing is set: the default brokers, no
/// topics, group `skewless-<name>`, the default start, lag tolerance and commits.
pub fn kafka(name: &str) -> KafkaJob {
    KafkaJob {
        settings: BrokerSettings::new(DEFAULT_BROKERS),
        topics: Vec::new(),
        group: format!("skewless-{name}"),
        start: None,
        lag_tolerance: LagTolerance {
            messages: Some(DEFAULT_LAG_TOLERANCE_MESSAGES),
            event_time: None,
        },
        commit_interval: DEFAULT_COMMIT_INTERVAL,
    }
}

/// The Redis view sink where nothing is set.
pub fn redis() -> RedisSink {
    RedisSink {
        url: DEFAULT_REDIS_URL.to_owned(),
        key_prefix: DEFAULT_REDIS_KEY_PREFIX.to_owned(),
        ttl: DEFAULT_REDIS_TTL,
    }
}

/// Where job `name` writes an output `file` by default: `out/<name>/<file>`.
pub fn output_path(name: &str, file: &str) -> PathBuf {
    PathBuf::from(format!("out/{name}/{file}"))
}
