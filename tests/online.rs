//! Online views against the real broker (tansu, `scripts/kafka.sh`) and the real Redis
//! (`scripts/redis.sh`), DESIGN.md section 6: an event is readable one flush after it
//! is read, as a provisional view far ahead of the watermark, and becomes final once
//! the watermark passes it; a partition that stalls holds the others to the skew
//! bound, so the events waiting in the fold stay bounded. The live export's serving
//! skew gauges (section 10) follow its closed rows, and come back from a checkpoint.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;
use serde_json::Value;
use skewless::job::Job;
use skewless::kafka::producer::Publisher;
use skewless::run::{RunOptions, run};
use skewless::summary::Summary;

/// A streaming run of `job` over `topic` in the background, until `stop` is set.
fn start(job: &Path, options: RunOptions) -> (Arc<AtomicBool>, JoinHandle<Summary>) {
    let stop = Arc::new(AtomicBool::new(false));
    let job = Job::load(job).unwrap();
    let options = RunOptions {
        stop: Some(Arc::clone(&stop)),
        ..options
    };
    (stop, std::thread::spawn(move || run(job, &options).unwrap()))
}

fn send(publisher: &Publisher, topic: &str, partition: i32, line: &str) {
    publisher
        .send(topic, Some(partition), None, line.as_bytes())
        .unwrap();
    publisher.flush().unwrap();
}

fn redis_view(key: &str) -> Option<Value> {
    let mut connection = redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let text: Option<String> = redis::cmd("GET").arg(key).query(&mut connection).unwrap();
    text.map(|t| serde_json::from_str(&t).unwrap())
}

/// `(as_of, provisional_through, state)` of a user's row in the SQLite store.
fn sqlite_row(path: &Path, user: &str) -> Option<(f64, Option<f64>, Value)> {
    let connection = rusqlite::Connection::open(path).ok()?;
    connection
        .query_row(
            "SELECT as_of, provisional_through, state FROM user_features WHERE user_id = ?1",
            [user],
            |row| {
                let state: String = row.get(2)?;
                Ok((row.get(0)?, row.get(1)?, serde_json::from_str(&state).unwrap()))
            },
        )
        .ok()
}

fn holds(state: &Value, list: &str, item: &str) -> bool {
    state[list]
        .as_array()
        .is_some_and(|items| items.iter().any(|i| i == item))
}

#[test]
fn a_purchase_is_online_one_flush_after_it_is_read_while_the_watermark_is_far_behind() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("fresh");
    let prefix = format!("{}:", unique("fresh-views"));
    kafka().ensure_topic(&topic, 1).unwrap();
    let job = recsys_job(
        dir.path(),
        "fresh",
        &format!(
            "[time]\nallowed_lateness = \"60s\"\n[sinks]\nviews_jsonl = \"\"\n[sinks.redis]\nurl = {:?}\nkey_prefix = {prefix:?}\n[export]\ndir = \"\"\n",
            redis_url()
        ),
    );
    let store = dir.path().join("online.sqlite");
    let (stop, runner) = start(
        &job,
        RunOptions {
            workers: 1,
            topics: vec![topic.clone()],
            group: Some(unique("fresh-group")),
            brokers: Some(kafka().brokers),
            views_sqlite: Some(store.clone()),
            summary: Some(dir.path().join("summary.json")),
            ..RunOptions::default()
        },
    );
    let publisher = Publisher::new(&kafka()).unwrap();
    let t = 1_800_000_000.0;
    send(
        &publisher,
        &topic,
        0,
        &format!(
            r#"{{"event_id":"v1","event_type":"ecommerce.item_viewed","event_version":"1.0","event_time":{t},"user_id":"buyer","payload":{{"item_id":"A","category":"books"}}}}"#
        ),
    );
    send(
        &publisher,
        &topic,
        0,
        &format!(
            r#"{{"event_id":"p1","event_type":"ecommerce.purchase_completed","event_version":"2.0","event_time":{},"user_id":"buyer","payload":{{"item_id":"A","price":12.5,"category":"books"}}}}"#,
            t + 10.0
        ),
    );
    let key = format!("{prefix}buyer");
    let mut seen = None;
    wait_until("the purchase in Redis", Duration::from_secs(60), || {
        seen = redis_view(&key).filter(|v| holds(&v["state"], "purchased_items", "A"));
        seen.is_some()
    });
    let view = seen.unwrap();
    // Provisional: it reaches the purchase, while the watermark is 60 s behind it.
    assert_eq!(view["provisional_through"], t + 10.0, "{view}");
    let as_of = view["as_of"].as_f64().unwrap();
    assert!(
        as_of <= t + 10.0 - 60.0,
        "the watermark is 60 s behind at least: {view}"
    );
    assert_eq!(view["state"]["total_spend"], 12.5, "{view}");
    assert!(holds(&view["state"], "viewed_items", "A"), "{view}");
    // The streaming SQLite store has it too, marked provisional.
    let mut row = None;
    wait_until("the purchase in SQLite", Duration::from_secs(30), || {
        row = sqlite_row(&store, "buyer").filter(|r| holds(&r.2, "purchased_items", "A"));
        row.is_some()
    });
    assert_eq!(row.unwrap().1, Some(t + 10.0));

    // Stopping applies what is pending: both stores then hold the final view.
    stop.store(true, Ordering::Relaxed);
    let summary = runner.join().unwrap();
    assert_eq!(summary.applied, 2, "{summary:#?}");
    let last = redis_view(&key).unwrap();
    assert!(last.get("provisional_through").is_none(), "{last}");
    assert_eq!(
        last["state"], view["state"],
        "the final view is the provisional one"
    );
    let (_, through, state) = sqlite_row(&store, "buyer").unwrap();
    assert_eq!((through, &state), (None, &view["state"]));
}

/// The value of a metric line `name{labels...} value` (summed over label sets that
/// contain `label`).
fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A local address no one listens on, for a run's metrics.
fn free_port() -> std::net::SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

fn scrape(addr: std::net::SocketAddr) -> String {
    skewless::metrics::Metrics::fetch(addr).unwrap()
}

#[test]
fn a_stalled_partition_holds_the_others_to_the_skew_bound() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("stall");
    kafka().ensure_topic(&topic, 2).unwrap();
    // Partition 0 stalls after one event; it never turns idle (1 h), so it holds the
    // watermark. Partition 1 has 1000 events over 500 s of event time.
    let job = recsys_job(
        dir.path(),
        "stall",
        "[time]\nallowed_lateness = \"5s\"\nidle_timeout = \"1h\"\nmax_partition_skew = \"30s\"\n[sinks]\nviews_jsonl = \"\"\n[export]\ndir = \"\"\n",
    );
    let t = 1_800_000_000.0;
    let view = |i: usize, time: f64| {
        format!(
            r#"{{"event_id":"e{i}","event_type":"ecommerce.item_viewed","event_version":"1.0","event_time":{time},"user_id":"u{}","payload":{{"item_id":"i{i}","category":"c"}}}}"#,
            i % 50
        )
    };
    let publisher = Publisher::new(&kafka()).unwrap();
    publisher
        .send(&topic, Some(0), None, view(0, t).as_bytes())
        .unwrap();
    let n = 1000;
    for i in 1..=n {
        let line = view(i, t + i as f64 * 0.5);
        publisher.send(&topic, Some(1), None, line.as_bytes()).unwrap();
    }
    publisher.flush().unwrap();
    let addr = free_port();
    let batch = 50;
    let (stop, runner) = start(
        &job,
        RunOptions {
            workers: 1,
            batch,
            topics: vec![topic.clone()],
            group: Some(unique("stall-group")),
            brokers: Some(kafka().brokers),
            views_sqlite: Some(dir.path().join("views.sqlite")),
            summary: Some(dir.path().join("summary.json")),
            metrics_addr: Some(addr),
            ..RunOptions::default()
        },
    );
    // Wait until reading has stopped: the count read holds still for 2 s.
    let mut last = -1.0;
    let mut still = 0;
    wait_until("reading to stop", Duration::from_secs(60), || {
        let Ok(text) = skewless::metrics::Metrics::fetch(addr) else {
            return false;
        };
        let read = metric(&text, "skewless_records_total", "outcome=\"read\"");
        still = if read == last && read > 0.0 { still + 1 } else { 0 };
        last = read;
        still >= 20
    });
    let text = scrape(addr);
    let pending = metric(&text, "skewless_pending_events", "worker=");
    // Partition 1 may run 5 s + 30 s of event time (70 events) past partition 0's
    // clock, plus at most one batch read before its clock is checked again.
    let bound = (1 + 70 + batch) as f64;
    assert!(last <= bound, "read {last} records, more than the bound {bound}");
    assert!(
        pending > 0.0 && pending <= bound,
        "pending {pending}, bound {bound}\n{text}"
    );
    // Partition 0 moves on: the watermark follows, and partition 1 is read to its end.
    publisher
        .send(&topic, Some(0), None, view(n + 1, t + 2000.0).as_bytes())
        .unwrap();
    publisher.flush().unwrap();
    wait_until("every record read", Duration::from_secs(60), || {
        metric(&scrape(addr), "skewless_records_total", "outcome=\"read\"") == (n + 2) as f64
    });
    stop.store(true, Ordering::Relaxed);
    let summary = runner.join().unwrap();
    assert!(summary.conserved, "{summary:#?}");
    assert_eq!(summary.read, (n + 2) as u64);
    assert_eq!(summary.applied, (n + 2) as u64);
    assert_eq!(summary.users, 50);
}

#[test]
fn the_skew_gauges_follow_the_live_export_and_come_back_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("skew-gauge");
    kafka().ensure_topic(&topic, 1).unwrap();
    let job = recsys_job(
        dir.path(),
        "skew-gauge",
        "[time]\nallowed_lateness = \"5s\"\n[sinks]\nviews_jsonl = \"\"\n",
    );
    let t = 1_800_000_000.0;
    // u1 viewed an item; the store served n_viewed_items 0 (it is 1) and
    // n_purchased_items 0 (right); a day later another view moves the watermark past
    // the impression's longest label window, and its row closes.
    let publisher = Publisher::new(&kafka()).unwrap();
    for line in [
        format!(
            r#"{{"event_id":"v1","event_type":"ecommerce.item_viewed","event_version":"1.0","event_time":{t},"user_id":"u1","payload":{{"item_id":"i1","category":"c"}}}}"#
        ),
        format!(
            r#"{{"event_id":"s1","event_type":"recommendation.items_shown","event_version":"1.0","event_time":{},"user_id":"u1","payload":{{"impression_id":"imp1","recommended_items":["i1","i2"],"model_version":"m1","features_snapshot":{{"as_of":{t},"n_viewed_items":0,"n_purchased_items":0}}}}}}"#,
            t + 10.0
        ),
        format!(
            r#"{{"event_id":"v2","event_type":"ecommerce.item_viewed","event_version":"1.0","event_time":{},"user_id":"u2","payload":{{"item_id":"i3","category":"c"}}}}"#,
            t + 86_400.0 + 100.0
        ),
    ] {
        send(&publisher, &topic, 0, &line);
    }
    let checkpoints = dir.path().join("skew-gauge-checkpoints");
    let group = unique("skew-gauge-group");
    let options = |addr: std::net::SocketAddr| RunOptions {
        workers: 1,
        topics: vec![topic.clone()],
        group: Some(group.clone()),
        brokers: Some(kafka().brokers),
        views_sqlite: Some(dir.path().join("views.sqlite")),
        summary: Some(dir.path().join("summary.json")),
        export_dir: Some(dir.path().join("training")),
        skew_report: Some(dir.path().join("skew.json")),
        checkpoint_interval: Some(skewless::model::span::Span::secs(1)),
        metrics_addr: Some(addr),
        ..RunOptions::default()
    };
    let gauge = |addr, feature: &str| {
        let text = skewless::metrics::Metrics::fetch(addr).ok()?;
        let label = format!("feature=\"{feature}\"");
        text.lines()
            .any(|l| l.starts_with("skewless_skew_mismatch_rate") && l.contains(&label))
            .then(|| metric(&text, "skewless_skew_mismatch_rate", &label))
    };
    let addr = free_port();
    let (stop, runner) = start(&job, options(addr));
    wait_until("the impression's skew", Duration::from_secs(60), || {
        gauge(addr, "n_viewed_items") == Some(1.0)
    });
    assert_eq!(gauge(addr, "n_purchased_items"), Some(0.0));
    // A checkpoint that holds the counters (a stream takes them while events flow),
    // then a clean stop.
    let mut beat = 0;
    wait_until("a checkpoint with the counters", Duration::from_secs(60), || {
        beat += 1;
        send(
            &publisher,
            &topic,
            0,
            &format!(
                r#"{{"event_id":"b{beat}","event_type":"ecommerce.item_viewed","event_version":"1.0","event_time":{},"user_id":"u3","payload":{{"item_id":"i4","category":"c"}}}}"#,
                t + 86_400.0 + 200.0 + f64::from(beat)
            ),
        );
        let (restored, _) = skewless::checkpoint::latest(&checkpoints);
        restored.is_some_and(|r| {
            r.parts
                .iter()
                .flat_map(|p| &p.fold.skew)
                .any(|(_, stats)| stats.mismatches > 0)
        })
    });
    stop.store(true, Ordering::Relaxed);
    runner.join().unwrap();

    // Resumed with nothing new to read: the gauges come from the checkpoint.
    let addr = free_port();
    let (stop, runner) = start(&job, options(addr));
    wait_until("the restored skew", Duration::from_secs(60), || {
        gauge(addr, "n_viewed_items") == Some(1.0)
    });
    assert_eq!(gauge(addr, "n_purchased_items"), Some(0.0));
    stop.store(true, Ordering::Relaxed);
    let summary = runner.join().unwrap();
    assert!(summary.resumed_from_checkpoint.is_some(), "{summary:#?}");
}
