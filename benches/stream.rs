//! Streaming benchmark (`scripts/bench-stream.sh`), against the local broker and Redis.
//!
//! 1. Freshness: run the job live while a producer publishes events stamped with the
//!    wall clock at a fixed rate (5k events/s by default); some events are the first
//!    event of a fresh user, and the time from producing one to its view being readable
//!    in Redis is measured: p50 and p99, beside the broker's own produce-to-consume
//!    latency at that rate with a plain consumer. Once per `allowed_lateness` in
//!    `LATENESS` (default `5s,60s`), with the job's online views as `ONLINE` says
//!    (default `provisional`).
//! 2. Throughput: publish a synthetic log (1M events by default) to a 4-partition topic,
//!    read it back with a plain rdkafka consumer (the broker's own read rate), then run
//!    the recsys job over it into Redis, and report both rates.
//!
//! Environment: `SKEWLESS_KAFKA`, `SKEWLESS_REDIS`, `STREAM_EVENTS`, `FRESH_RATE`,
//! `FRESH_SECONDS`, `LATENESS`, `ONLINE`, `PARTITION_SKEW`, `THROUGHPUT_ONLY`,
//! `FRESHNESS_ONLY`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use skewless::job::Job;
use skewless::kafka::produce::{partition_for, produce_files};
use skewless::kafka::producer::Publisher;
use skewless::kafka::settings::BrokerSettings;
use skewless::run::{RunOptions, run};
use skewless::synthetic::{GenOptions, generate};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()
    )
}

fn job(dir: &std::path::Path, prefix: &str, lateness: &str) -> Job {
    let path = dir.join("bench-stream.toml");
    let base = concat!(env!("CARGO_MANIFEST_DIR"), "/jobs/recsys.toml");
    // Checkpoints at the default interval unless CHECKPOINT_INTERVAL says otherwise
    // ("" for none), in the scratch directory.
    let interval = std::env::var("CHECKPOINT_INTERVAL").unwrap_or_else(|_| "30s".into());
    let checkpoints = if interval.is_empty() {
        String::new()
    } else {
        dir.join("checkpoints").display().to_string()
    };
    let interval = if interval.is_empty() {
        "30s".into()
    } else {
        interval
    };
    let online = std::env::var("ONLINE").unwrap_or_else(|_| "provisional".into());
    let partition_skew = std::env::var("PARTITION_SKEW").unwrap_or_else(|_| "60s".into());
    std::fs::write(
        &path,
        format!(
            "extends = {base:?}\n[source]\nfiles = []\n[time]\nallowed_lateness = {lateness:?}\nmax_partition_skew = {partition_skew:?}\n\
             [sinks]\nviews_sqlite = \"\"\nviews_jsonl = \"\"\nsummary = \"\"\nonline = {online:?}\n\
             [sinks.redis]\nkey_prefix = {prefix:?}\n[checkpoint]\ndir = {checkpoints:?}\ninterval = {interval:?}\n"
        ),
    )
    .unwrap();
    Job::load(&path).unwrap()
}

/// Reads a topic to its end with a plain consumer: the broker's own read rate.
fn raw_read(settings: &BrokerSettings, topic: &str) -> (u64, f64) {
    let consumer: BaseConsumer = settings
        .client_config(&[
            ("group.id", "bench-raw"),
            ("enable.auto.commit", "false"),
            ("fetch.wait.max.ms", "20"),
        ])
        .create()
        .unwrap();
    let partitions = settings.partitions(&[topic.to_owned()]).unwrap();
    let mut list = TopicPartitionList::new();
    let mut remaining = 0i64;
    for (t, p) in &partitions {
        let (low, high) = consumer.fetch_watermarks(t, *p, Duration::from_secs(10)).unwrap();
        remaining += high - low;
        list.add_partition_offset(t, *p, Offset::Beginning).unwrap();
    }
    consumer.assign(&list).unwrap();
    let started = Instant::now();
    let mut read = 0u64;
    while (read as i64) < remaining {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            read += 1;
        }
    }
    (read, started.elapsed().as_secs_f64())
}

fn throughput(settings: &BrokerSettings, redis: &str) {
    let events: u64 = env("STREAM_EVENTS", 1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let options = GenOptions {
        out: dir.path().join("log"),
        events,
        users: (events / 10).max(100),
        partitions: 4,
        span: 86_400.0,
        v1: 0.2,
        duplicates: 0.005,
        late: 0.001,
        malformed: 0.001,
        unknown: 0.02,
        compression: None,
        seed: 42,
        ..GenOptions::default()
    };
    let files = generate(&options).unwrap().files;
    let topic = unique("bench-stream");
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let produced = produce_files(settings, &topic, 4, &names, None).unwrap();
    println!(
        "produce             {:>9} events in {:>6.2} s = {:>8.0} events/s",
        produced.records,
        produced.seconds,
        produced.records as f64 / produced.seconds
    );
    let (read, seconds) = raw_read(settings, &topic);
    println!(
        "broker read (raw)   {read:>9} events in {seconds:>6.2} s = {:>8.0} events/s",
        read as f64 / seconds
    );
    let idle = Duration::from_secs(5);
    let workers: usize = env("STREAM_WORKERS", 2);
    let run_options = RunOptions {
        workers,
        batch: env("STREAM_BATCH", 0),
        topics: vec![topic.clone()],
        group: Some(unique("bench-group")),
        brokers: Some(settings.brokers.clone()),
        redis: Some(redis.to_owned()),
        exit_when_idle: Some(idle),
        ..RunOptions::default()
    };
    let summary = run(job(dir.path(), &format!("{topic}:"), "5s"), &run_options).unwrap();
    let busy = summary.wall_time_s - idle.as_secs_f64();
    println!(
        "skewless to Redis   {:>9} events in {busy:>6.2} s = {:>8.0} events/s ({workers} workers; {} views)",
        summary.read,
        summary.read as f64 / busy,
        summary.users
    );
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn freshness(settings: &BrokerSettings, redis: &str, lateness: &str) {
    let rate: f64 = env("FRESH_RATE", 5_000.0);
    let seconds: f64 = env("FRESH_SECONDS", 20.0);
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("bench-fresh");
    settings.ensure_topic(&topic, 4).unwrap();
    let prefix = format!("{topic}:");
    let stop = Arc::new(AtomicBool::new(false));
    let run_options = RunOptions {
        workers: 2,
        topics: vec![topic.clone()],
        group: Some(unique("bench-fresh-group")),
        brokers: Some(settings.brokers.clone()),
        redis: Some(redis.to_owned()),
        start: Some(skewless::kafka::settings::StartPosition::Latest),
        stop: Some(Arc::clone(&stop)),
        ..RunOptions::default()
    };
    let job = job(dir.path(), &prefix, lateness);
    let bound = job.allowed_lateness_secs();
    let runner = std::thread::spawn(move || run(job, &run_options).unwrap());
    std::thread::sleep(Duration::from_secs(2));

    // Probes: the first event of a fresh user; its key appears once its view is written.
    let probes: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let (probes, latencies, done) = (Arc::clone(&probes), Arc::clone(&latencies), Arc::clone(&done));
        let mut connection = redis::Client::open(redis).unwrap().get_connection().unwrap();
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) || !probes.lock().unwrap().is_empty() {
                let pending: Vec<String> = probes.lock().unwrap().keys().cloned().collect();
                if !pending.is_empty() {
                    let mut pipe = redis::pipe();
                    for key in &pending {
                        pipe.exists(key);
                    }
                    let found: Vec<bool> = pipe.query(&mut connection).unwrap();
                    let seen = Instant::now();
                    let mut probes = probes.lock().unwrap();
                    for (key, exists) in pending.iter().zip(found) {
                        if exists {
                            let sent = probes.remove(key).unwrap();
                            latencies
                                .lock()
                                .unwrap()
                                .push(seen.duration_since(sent).as_secs_f64());
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let publisher = Publisher::new(settings).unwrap();
    let total = (rate * seconds) as u64;
    let started = Instant::now();
    for i in 0..total {
        let probe = i % 200 == 0;
        let user = if probe {
            format!("probe-{i}")
        } else {
            format!("user-{}", i % 10_000)
        };
        let line = format!(
            r#"{{"event_id":"f-{i}","event_type":"ecommerce.item_viewed","event_version":"1.0","event_time":{:.3},"user_id":"{user}","payload":{{"item_id":"item-{}","category":"books"}}}}"#,
            now(),
            i % 5000
        );
        let partition = partition_for(Some(&user), 4, 0);
        publisher
            .send(&topic, Some(partition), Some(user.as_bytes()), line.as_bytes())
            .unwrap();
        if probe {
            probes
                .lock()
                .unwrap()
                .insert(format!("{prefix}{user}"), Instant::now());
        }
        let due = Duration::from_secs_f64((i + 1) as f64 / rate);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    publisher.flush().unwrap();
    let produced_for = started.elapsed().as_secs_f64();
    // Keep the stream moving past the lateness bound so the last probes are applied
    // (final online views wait for it).
    let tail = Instant::now();
    let mut i = total;
    while tail.elapsed() < Duration::from_secs_f64(bound + 8.0) && !probes.lock().unwrap().is_empty() {
        let user = format!("user-{}", i % 10_000);
        let line = format!(
            r#"{{"event_id":"f-{i}","event_type":"session.started","event_version":"1.0","event_time":{:.3},"user_id":"{user}"}}"#,
            now()
        );
        publisher
            .send(
                &topic,
                Some(partition_for(Some(&user), 4, 0)),
                Some(user.as_bytes()),
                line.as_bytes(),
            )
            .unwrap();
        i += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    done.store(true, Ordering::Relaxed);
    probes.lock().unwrap().clear();
    poller.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let summary = runner.join().unwrap();
    let mut latencies = latencies.lock().unwrap().clone();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "freshness at {:.0} events/s for {produced_for:.1} s, allowed_lateness {lateness}, online {} ({} events read): {} probes, p50 {:.3} s, p99 {:.3} s, max {:.3} s",
        rate,
        std::env::var("ONLINE").unwrap_or_else(|_| "provisional".into()),
        summary.read,
        latencies.len(),
        at(0.5),
        at(0.99),
        latencies.last().copied().unwrap_or(0.0)
    );
}

/// The broker's own produce-to-consume latency at `rate`, with a plain consumer.
fn broker_latency(settings: &BrokerSettings, rate: f64, seconds: f64) -> (f64, f64) {
    let topic = unique("bench-latency");
    settings.ensure_topic(&topic, 4).unwrap();
    let consumer: BaseConsumer = settings
        .client_config(&[
            ("group.id", "bench-latency"),
            ("enable.auto.commit", "false"),
            ("fetch.wait.max.ms", "20"),
        ])
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..4 {
        list.add_partition_offset(&topic, p, Offset::End).unwrap();
    }
    consumer.assign(&list).unwrap();
    let total = (rate * seconds) as u64;
    let producer = {
        let settings = settings.clone();
        let topic = topic.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            let publisher = Publisher::new(&settings).unwrap();
            let started = Instant::now();
            for i in 0..total {
                let line = format!("{:.6}", now());
                publisher
                    .send(&topic, Some((i % 4) as i32), None, line.as_bytes())
                    .unwrap();
                let due = Duration::from_secs_f64((i + 1) as f64 / rate);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            publisher.flush().unwrap();
        })
    };
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds + 30.0);
    while (latencies.len() as u64) < total && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            use rdkafka::message::Message;
            let sent: f64 = std::str::from_utf8(message.payload().unwrap())
                .unwrap()
                .parse()
                .unwrap();
            latencies.push(now() - sent);
        }
    }
    producer.join().unwrap();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99))
}

fn main() {
    let settings =
        BrokerSettings::new(std::env::var("SKEWLESS_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into()));
    let redis = std::env::var("SKEWLESS_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    // Freshness first: tansu keeps its log in SQLite and slows down as that file grows,
    // so after the throughput phase has published its log the broker's own latency is
    // several times higher (scripts/bench-stream.sh runs a fresh broker).
    if std::env::var_os("THROUGHPUT_ONLY").is_none() {
        let rate: f64 = env("FRESH_RATE", 5_000.0);
        let lateness = std::env::var("LATENESS").unwrap_or_else(|_| "5s,60s".into());
        for lateness in lateness.split(',') {
            // The broker alone, then skewless, in the same run: they share the machine.
            let (p50, p99) = broker_latency(&settings, rate, 10.0);
            println!("broker latency at {rate:.0} events/s (plain consumer): p50 {p50:.3} s, p99 {p99:.3} s");
            freshness(&settings, &redis, lateness.trim());
        }
    }
    if std::env::var_os("FRESHNESS_ONLY").is_none() {
        throughput(&settings, &redis);
    }
}
