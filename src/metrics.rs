//! Prometheus metrics and the endpoint that serves them (`--metrics-addr`).
//!
//! Records by outcome, dead letters by reason, late records, watermark lag per worker,
//! consumer lag per partition, and sink write latency. Labels never carry user ids.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::dlq::letter::Reason;
use crate::summary::Counts;

/// The job's metrics.
pub struct Metrics {
    registry: Registry,
    records: IntCounterVec,
    dead_letters: IntCounterVec,
    late: IntCounter,
    watermark_lag: IntGaugeVec,
    consumer_lag: IntGaugeVec,
    sink_write: HistogramVec,
    freshness: HistogramVec,
    pending: IntGaugeVec,
    skew: GaugeVec,
}

impl Metrics {
    /// Metrics of job `job`, registered and zeroed.
    pub fn new(job: &str) -> Metrics {
        let registry = Registry::new_custom(None, Some([("job".to_owned(), job.to_owned())].into()))
            .expect("valid labels");
        let records = IntCounterVec::new(
            Opts::new(
                "skewless_records_total",
                "Records read, by outcome (read counts every record)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let dead_letters = IntCounterVec::new(
            Opts::new("skewless_dead_letters_total", "Dead letters by failure reason"),
            &["reason"],
        )
        .expect("valid metric");
        let late = IntCounter::new(
            "skewless_late_records_total",
            "Events later than the lateness bound",
        )
        .expect("valid");
        let watermark_lag = IntGaugeVec::new(
            Opts::new(
                "skewless_watermark_lag_seconds",
                "Wall clock minus the worker's watermark (event time)",
            ),
            &["worker"],
        )
        .expect("valid metric");
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "skewless_consumer_lag_messages",
                "Messages between the consumer's position and the end",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        let sink_write = HistogramVec::new(
            HistogramOpts::new(
                "skewless_sink_write_seconds",
                "Time to write (and flush) a batch of views",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["sink"],
        )
        .expect("valid metric");
        let freshness = HistogramVec::new(
            HistogramOpts::new(
                "skewless_view_freshness_seconds",
                "Wall clock at an online view write minus the event time of the newest event it made readable",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
            &["sink"],
        )
        .expect("valid metric");
        let pending = IntGaugeVec::new(
            Opts::new(
                "skewless_pending_events",
                "Events received by the fold and waiting for the watermark, per worker",
            ),
            &["worker"],
        )
        .expect("valid metric");
        let skew = GaugeVec::new(
            Opts::new(
                "skewless_skew_mismatch_rate",
                "Share of served feature values that differ from the replay's (spine events with a snapshot)",
            ),
            &["feature"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(records.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(dead_letters.clone()),
            Box::new(late.clone()),
            Box::new(watermark_lag.clone()),
            Box::new(consumer_lag.clone()),
            Box::new(sink_write.clone()),
            Box::new(freshness.clone()),
            Box::new(pending.clone()),
            Box::new(skew.clone()),
        ] {
            registry.register(collector).expect("registered once");
        }
        for outcome in [
            "read",
            "applied",
            "duplicate",
            "ignored",
            "late_dropped",
            "dead_lettered",
            "archived",
        ] {
            records.with_label_values(&[outcome]);
        }
        Metrics {
            registry,
            records,
            dead_letters,
            late,
            watermark_lag,
            consumer_lag,
            sink_write,
            freshness,
            pending,
            skew,
        }
    }

    /// Records how fresh an online write was: wall clock now minus `event_time`.
    pub fn freshness(&self, sink: &str, event_time: f64) {
        let age = crate::dlq::letter::wall_clock_seconds() - event_time;
        self.freshness.with_label_values(&[sink]).observe(age.max(0.0));
    }

    /// Sets a worker's count of events waiting for the watermark.
    pub fn pending_events(&self, worker: usize, events: usize) {
        self.pending
            .with_label_values(&[&worker.to_string()])
            .set(events as i64);
    }

    /// Sets a feature's serving-skew mismatch rate.
    pub fn skew_mismatch_rate(&self, feature: &str, rate: f64) {
        self.skew.with_label_values(&[feature]).set(rate);
    }

    /// Adds a batch of outcome counts.
    pub fn observe(&self, delta: &Counts) {
        for (outcome, n) in [
            ("read", delta.read),
            ("applied", delta.applied),
            ("duplicate", delta.duplicates),
            ("ignored", delta.ignored),
            ("late_dropped", delta.late_dropped),
            ("dead_lettered", delta.dlq_total()),
            ("archived", delta.archived),
        ] {
            if n > 0 {
                self.records.with_label_values(&[outcome]).inc_by(n);
            }
        }
        for reason in Reason::ALL {
            let n = delta.dlq[reason.index()];
            if n > 0 {
                self.dead_letters.with_label_values(&[reason.as_str()]).inc_by(n);
            }
        }
        self.late.inc_by(delta.late);
    }

    /// Sets a worker's watermark lag.
    pub fn watermark_lag(&self, worker: usize, seconds: i64) {
        self.watermark_lag
            .with_label_values(&[&worker.to_string()])
            .set(seconds);
    }

    /// Sets a partition's consumer lag.
    pub fn consumer_lag(&self, topic: &str, partition: i32, messages: i64) {
        self.consumer_lag
            .with_label_values(&[topic, &partition.to_string()])
            .set(messages);
    }

    /// Records the time a sink took to write a batch.
    pub fn sink_write(&self, sink: &str, seconds: f64) {
        self.sink_write.with_label_values(&[sink]).observe(seconds);
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding");
        String::from_utf8(out).expect("UTF-8")
    }

    /// The response (status line, headers and body) of `GET /metrics` from a job
    /// serving its metrics at `addr`, for tools and tests.
    pub fn fetch(addr: SocketAddr) -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: skewless\r\n\r\n")?;
        let mut response = String::new();
        std::io::Read::read_to_string(&mut stream, &mut response)?;
        Ok(response)
    }

    /// Serves `GET /metrics` on `addr` from a background thread.
    pub fn serve(self: &Arc<Self>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr)?;
        let bound = listener.local_addr()?;
        let metrics = Arc::clone(self);
        std::thread::Builder::new().name("metrics".into()).spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(&stream);
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    continue;
                }
                // Drain the headers.
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let mut stream = &stream;
                let response = if request.starts_with("GET /metrics") {
                    let body = metrics.render();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
                };
                let _ = stream.write_all(response.as_bytes());
            }
        })?;
        Ok(bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_and_reasons_are_counted_and_served() {
        let metrics = Arc::new(Metrics::new("recsys"));
        let mut delta = Counts {
            read: 10,
            applied: 7,
            duplicates: 1,
            late: 1,
            ..Counts::default()
        };
        delta.dead_letter(Reason::InvalidJson);
        delta.dead_letter(Reason::LateEvent);
        metrics.observe(&delta);
        metrics.consumer_lag("events", 3, 42);
        metrics.sink_write("redis", 0.002);
        metrics.freshness("redis", crate::dlq::letter::wall_clock_seconds() - 0.04);
        metrics.pending_events(1, 17);
        let text = metrics.render();
        assert!(
            text.contains(r#"skewless_view_freshness_seconds_bucket{sink="redis",job="recsys",le="0.05"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"skewless_pending_events{worker="1",job="recsys"} 17"#),
            "{text}"
        );
        assert!(
            text.contains(r#"skewless_records_total{outcome="applied",job="recsys"} 7"#),
            "{text}"
        );
        assert!(text.contains(r#"skewless_dead_letters_total{reason="invalid_json",job="recsys"} 1"#));
        assert!(
            text.contains(r#"skewless_consumer_lag_messages{partition="3",topic="events",job="recsys"} 42"#)
        );
        assert!(text.contains("skewless_sink_write_seconds_count"));

        let addr = metrics.serve("127.0.0.1:0".parse().unwrap()).unwrap();
        let response = Metrics::fetch(addr).unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(response.contains("skewless_late_records_total"));
    }
}
