//! The online store: each user's view as JSON at `<prefix><user_id>` (DESIGN.md section
//! 6), written with pipelining, only for users whose state changed, with a TTL
//! refreshed on every write.
//!
//! When Redis fails, the views wait (the newest per user) and are retried with
//! exponential backoff (1 s doubling, capped at 60 s) without holding the worker up;
//! a view still unwritten after `max_retries` retries is dead-lettered as
//! `sink_unavailable`, and stays waiting, so when Redis comes back the store catches up
//! and nothing is lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use compact_str::CompactString;

use super::{Durability, SinkError, ViewSink};
use crate::dlq::letter::{DeadLetter, Reason, wall_clock_seconds};
use crate::metrics::Metrics;
use crate::model::event::Origin;
use crate::model::span::Span;
use crate::model::view::ViewRecord;

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A job's Redis view sink.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisSink {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Key prefix.
    pub key_prefix: String,
    /// Key expiry.
    pub ttl: Span,
}

/// A view waiting to be written.
struct Waiting {
    view: ViewRecord,
    /// Wall-clock seconds of each failed attempt.
    attempts: Vec<f64>,
    dead_lettered: bool,
}

/// One worker's connection to the Redis view store.
pub struct RedisViews {
    job: String,
    client: redis::Client,
    connection: Option<redis::Connection>,
    prefix: String,
    ttl_seconds: u64,
    max_retries: u32,
    waiting: BTreeMap<CompactString, Waiting>,
    backoff: Duration,
    next_attempt: Option<Instant>,
    /// Views written, for metrics and tests.
    written: u64,
    /// Where freshness is reported.
    metrics: Option<Arc<Metrics>>,
}

impl RedisViews {
    /// A store at `sink.url`; connects lazily, so a Redis that is down at start is
    /// retried like one that goes down later.
    pub fn new(job: &str, sink: &RedisSink, max_retries: u32) -> Result<RedisViews, SinkError> {
        let client = redis::Client::open(sink.url.as_str())
            .map_err(|e| SinkError::Store(format!("Redis URL `{}`: {e}", sink.url)))?;
        Ok(RedisViews {
            job: job.to_owned(),
            client,
            connection: None,
            prefix: sink.key_prefix.clone(),
            ttl_seconds: sink.ttl.duration().as_secs().max(1),
            max_retries,
            waiting: BTreeMap::new(),
            backoff: FIRST_BACKOFF,
            next_attempt: None,
            written: 0,
            metrics: None,
        })
    }

    /// Reports the freshness of each view written to `metrics`.
    pub fn with_metrics(mut self, metrics: Option<Arc<Metrics>>) -> RedisViews {
        self.metrics = metrics;
        self
    }

    /// Views written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn key(&self, user_id: &str) -> String {
        format!("{}{user_id}", self.prefix)
    }

    /// One pipelined attempt at everything waiting.
    fn attempt(&mut self) -> redis::RedisResult<()> {
        if self.connection.is_none() {
            let connection = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
            connection.set_read_timeout(Some(IO_TIMEOUT))?;
            connection.set_write_timeout(Some(IO_TIMEOUT))?;
            self.connection = Some(connection);
        }
        let mut pipe = redis::pipe();
        for (user, waiting) in &self.waiting {
            pipe.set_ex(self.key(user), waiting.view.to_json(), self.ttl_seconds)
                .ignore();
        }
        let connection = self.connection.as_mut().expect("connected above");
        pipe.query::<()>(connection)
    }

    /// Writes what is waiting, unless backing off; dead-letters views out of retries.
    fn try_write(&mut self, dead: &mut Vec<DeadLetter>, force: bool) {
        if self.waiting.is_empty() {
            return;
        }
        let now = Instant::now();
        if !force && self.next_attempt.is_some_and(|t| now < t) {
            return;
        }
        match self.attempt() {
            Ok(()) => {
                if self.next_attempt.is_some() {
                    tracing::info!(views = self.waiting.len(), "Redis is back; waiting views written");
                }
                self.written += self.waiting.len() as u64;
                if let Some(metrics) = &self.metrics {
                    for waiting in self.waiting.values() {
                        if let Some(t) = waiting.view.fresh_from {
                            metrics.freshness("redis", t);
                        }
                    }
                }
                self.waiting.clear();
                self.backoff = FIRST_BACKOFF;
                self.next_attempt = None;
            }
            Err(error) => {
                self.connection = None;
                let when = wall_clock_seconds();
                let detail = format!("Redis: {error}");
                tracing::warn!(error = %detail, retry_in = ?self.backoff, views = self.waiting.len(), "Redis write failed");
                let max_retries = self.max_retries as usize;
                let job = self.job.clone();
                for (user, waiting) in self.waiting.iter_mut() {
                    waiting.attempts.push(when);
                    if !waiting.dead_lettered && waiting.attempts.len() > max_retries {
                        waiting.dead_lettered = true;
                        dead.push(sink_unavailable(
                            &job,
                            &format!("{}{user}", self.prefix),
                            waiting,
                            &detail,
                        ));
                    }
                }
                self.next_attempt = Some(now + self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    fn durability(&self) -> Durability {
        if self.waiting.values().all(|w| w.dead_lettered) {
            Durability::Done
        } else {
            let wait = self
                .next_attempt
                .map_or(Duration::ZERO, |t| t.saturating_duration_since(Instant::now()));
            Durability::Pending(wait.max(Duration::from_millis(10)))
        }
    }
}

/// A dead letter for a view Redis would not take.
fn sink_unavailable(job: &str, key: &str, waiting: &Waiting, detail: &str) -> DeadLetter {
    let origin = Origin {
        topic: key.to_owned(),
        partition: None,
        offset: -1,
        key: None,
        broker_timestamp_ms: None,
    };
    let mut letter = DeadLetter::first_attempt(
        job,
        origin,
        waiting.view.to_json().as_bytes(),
        true,
        Reason::SinkUnavailable,
        detail.into(),
    );
    letter.retry_count = waiting.attempts.len().saturating_sub(1) as u32;
    letter.attempt_timestamps = waiting.attempts.clone();
    letter.failure_timestamp = *waiting.attempts.last().unwrap_or(&letter.failure_timestamp);
    letter
}

impl ViewSink for RedisViews {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn write(&mut self, views: &[ViewRecord], dead: &mut Vec<DeadLetter>) -> Result<(), SinkError> {
        for view in views.iter().filter(|v| v.changed) {
            // The newest view of a user replaces an older one still waiting.
            self.waiting.insert(
                view.user_id.clone(),
                Waiting {
                    view: view.clone(),
                    attempts: Vec::new(),
                    dead_lettered: false,
                },
            );
        }
        self.try_write(dead, false);
        Ok(())
    }

    fn flush(&mut self, dead: &mut Vec<DeadLetter>) -> Result<Durability, SinkError> {
        self.try_write(dead, false);
        Ok(self.durability())
    }

    fn finish(&mut self, dead: &mut Vec<DeadLetter>) -> Result<(), SinkError> {
        self.try_write(dead, true);
        let job = self.job.clone();
        let detail = "Redis unavailable at the end of the run".to_owned();
        for (user, waiting) in std::mem::take(&mut self.waiting) {
            if !waiting.dead_lettered {
                dead.push(sink_unavailable(&job, &self.key(&user), &waiting, &detail));
            }
        }
        Ok(())
    }
}
