//! Streaming against the real broker (tansu, `scripts/kafka.sh`) and the real Redis
//! (`scripts/redis.sh`): replay equals live, the archive reads back to the same views,
//! dead letters reach their topic, offsets are committed only after outputs are
//! durable, lag is reported against the tolerance, secrets stay out of logs, SIGTERM
//! ends a run cleanly, and a Redis outage loses nothing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;
use skewless::job::Job;
use skewless::kafka::lag;
use skewless::kafka::produce::produce_files;
use skewless::kafka::settings::{KafkaJob, LagTolerance};
use skewless::run::{RunOptions, run};

/// The committed sample and two golden inputs (rejections of every kind, late events).
fn inputs() -> Vec<PathBuf> {
    let mut inputs: Vec<PathBuf> = (0..4)
        .map(|p| repo().join(format!("data/sample/part-{p:03}.jsonl.gz")))
        .collect();
    inputs.push(repo().join("tests/jobs/rejections/input/events.jsonl"));
    inputs.push(repo().join("tests/jobs/late_dlq/input/events.jsonl"));
    inputs
}

fn produce(topic: &str, inputs: &[PathBuf]) -> u64 {
    let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
    produce_files(&kafka(), topic, 4, &names, None)
        .unwrap_or_else(|e| panic!("producing to {topic}: {e}"))
        .records
}

fn kafka_job(topic: &str, group: &str) -> KafkaJob {
    KafkaJob {
        settings: kafka(),
        topics: vec![topic.to_owned()],
        group: group.to_owned(),
        start: None,
        lag_tolerance: LagTolerance::default(),
        commit_interval: skewless::model::span::Span::secs(1),
    }
}

/// Views of a backfill over the records as they sit in the topic's partitions.
/// A backfill of `inputs` laid out as the topic's partitions: views, summary and the
/// training rows.
fn backfill_rows(dir: &Path, inputs: &[PathBuf]) -> (Vec<Value>, skewless::summary::Summary, Vec<Value>) {
    let files = write_partitions(&dir.join("partitions"), &expected_partitions(inputs, 4));
    let outputs = run_job(&repo().join("jobs/recsys.toml"), &files, 2);
    (outputs.views, outputs.summary, outputs.rows)
}

fn by_user(views: impl IntoIterator<Item = Value>) -> BTreeMap<String, Value> {
    views
        .into_iter()
        .map(|v| (v["user_id"].as_str().unwrap().to_owned(), features_and_state(&v)))
        .collect()
}

fn streaming_options(topic: &str, group: &str, dir: &Path) -> RunOptions {
    RunOptions {
        workers: 2,
        topics: vec![topic.to_owned()],
        group: Some(group.to_owned()),
        brokers: Some(kafka().brokers),
        exit_when_idle: Some(Duration::from_secs(2)),
        views_sqlite: Some(dir.join("live.sqlite")),
        // Nothing into the repository's out/ (the job files' default paths).
        views_jsonl: Some(PathBuf::new()),
        summary: Some(dir.join("live-summary.json")),
        checkpoint_dir: Some(dir.join("checkpoints")),
        export_dir: Some(dir.join("live-training")),
        skew_report: Some(dir.join("live-skew.json")),
        ..RunOptions::default()
    }
}

#[test]
fn replay_equals_live_and_dead_letters_reach_their_topic() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("events");
    let group = unique("materializer");
    let prefix = format!("{}:", unique("views"));
    let produced = produce(&topic, &inputs());
    let job = recsys_redis_job(dir.path(), "live", &prefix);
    let live = run(
        Job::load(&job).unwrap(),
        &streaming_options(&topic, &group, dir.path()),
    )
    .unwrap();
    assert!(live.conserved);
    assert_eq!(live.read, produced);

    let (views, replay, rows) = backfill_rows(dir.path(), &inputs());
    // The live export's rows are the backfill's (the JSONL form, merged at the end).
    let live_rows = read_jsonl(&dir.path().join("live-training.jsonl"));
    assert!(rows.len() > 1000, "the sample has impressions");
    assert_eq!(live_rows.len(), rows.len(), "as many rows live as replayed");
    assert!(live_rows == rows, "live training rows differ from the backfill's");
    let stored = redis_views(&redis_url(), &prefix);
    assert_eq!(stored.len(), views.len(), "one Redis key per user with a view");
    let provisional: Vec<&String> = stored
        .iter()
        .filter(|(_, view)| view.get("provisional_through").is_some())
        .map(|(user, _)| user)
        .collect();
    assert!(
        provisional.is_empty(),
        "views still provisional at the end: {provisional:?}"
    );
    assert_eq!(
        by_user(stored.into_values()),
        by_user(views),
        "Redis views differ from the backfill's"
    );
    for (field, live_count, replay_count) in [
        ("applied", live.applied, replay.applied),
        ("duplicates", live.duplicates, replay.duplicates),
        ("late", live.late, replay.late),
        ("ignored", live.ignored, replay.ignored),
        ("dlq_total", live.dlq_total, replay.dlq_total),
    ] {
        assert_eq!(
            live_count, replay_count,
            "{field}: live {live_count}, replay {replay_count}"
        );
    }

    // Every dead letter is in the topic, with its origin.
    let letters = skewless::dlq::read(&skewless::dlq::DlqLocation::Topic {
        settings: kafka(),
        topic: format!("{topic}.dlq"),
    })
    .unwrap()
    .letters;
    assert_eq!(letters.len() as u64, live.dlq_total);
    let inspection = skewless::dlq::inspect(&letters);
    for (reason, n) in &live.dlq {
        assert_eq!(
            inspection.by_reason.get(reason).copied().unwrap_or(0),
            *n,
            "{reason}"
        );
    }
    for letter in &letters {
        assert_eq!(letter["original_topic"], topic.as_str());
        assert!(
            (0..4).contains(&letter["original_partition"].as_i64().unwrap()),
            "{letter}"
        );
        assert!(letter["original_offset"].as_i64().unwrap() >= 0);
    }

    // Offsets were committed, all the way, once everything was written.
    let lags = lag::measure(&kafka_job(&topic, &group)).unwrap();
    assert!(
        lags.iter()
            .all(|l| l.committed == Some(l.end) && l.lag_messages == 0),
        "{lags:#?}"
    );

    // Requeue re-publishes the chosen records to the source topic.
    let unsupported = live.dlq["unsupported_schema_version"];
    assert!(unsupported > 0);
    let done = skewless::dlq::requeue(&letters, "unsupported_schema_version", &kafka(), None, false).unwrap();
    assert_eq!(done.published, unsupported);
    let after = lag::measure(&kafka_job(&topic, &group)).unwrap();
    let grew: i64 = after.iter().map(|l| l.lag_messages).sum();
    assert_eq!(
        grew as u64, unsupported,
        "requeued records are new records in the source topic"
    );
}

#[test]
fn the_audit_logger_archive_backfills_to_the_live_views_and_resumes_from_its_commits() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("events");
    let group = unique("audit");
    let archive = dir.path().join("archive");
    let mut inputs = inputs();
    let later = inputs.pop().unwrap();
    let first = produce(&topic, &inputs);
    let job = dir.path().join("audit.toml");
    std::fs::write(
        &job,
        format!(
            "extends = {:?}\n[sinks.archive]\ndir = {:?}\nroll_bytes = 200000\n",
            repo().join("jobs/audit-logger.toml").display().to_string(),
            archive.display().to_string()
        ),
    )
    .unwrap();
    let mut options = streaming_options(&topic, &group, dir.path());
    options.views_sqlite = None;
    // Its dead letters (none) go to a file, by default under the repository's out/.
    options.dlq = Some(dir.path().join("dlq.jsonl"));
    let summary = run(Job::load(&job).unwrap(), &options).unwrap();
    assert_eq!((summary.read, summary.archived), (first, first));
    assert!(summary.conserved);
    let lags = lag::measure(&kafka_job(&topic, &group)).unwrap();
    assert!(
        lags.iter().all(|l| l.committed == Some(l.end)),
        "archived records are committed: {lags:#?}"
    );

    // More records arrive; the audit logger resumes where it committed.
    let second = produce(&topic, std::slice::from_ref(&later));
    let summary = run(Job::load(&job).unwrap(), &options).unwrap();
    assert_eq!(
        summary.read, second,
        "a restart resumes from the committed offsets"
    );

    // The archive, read back as partitions, gives the views of the records as produced.
    let partitions: Vec<PathBuf> = (0..4).map(|p| archive.join(format!("{topic}/{p}"))).collect();
    let segments = std::fs::read_dir(&partitions[0]).unwrap().count();
    assert!(segments > 1, "segments roll by size");
    let from_archive = run_job(&repo().join("jobs/recsys.toml"), &partitions, 2);
    let mut all = inputs.clone();
    all.push(later);
    // Records of the two produce runs sit one run after the other in each partition.
    let mut expected = expected_partitions(&inputs, 4);
    for (p, records) in expected_partitions(&all[all.len() - 1..], 4)
        .into_iter()
        .enumerate()
    {
        expected[p].extend(records);
    }
    let files = write_partitions(&dir.path().join("expected"), &expected);
    let reference = run_job(&repo().join("jobs/recsys.toml"), &files, 1);
    assert_eq!(by_user(from_archive.views), by_user(reference.views));
    assert_eq!(from_archive.summary.applied, reference.summary.applied);
    assert_eq!(from_archive.summary.late, reference.summary.late);
}

fn skewless() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_skewless"));
    // Never the repository: a default output there would change a later run.
    command.current_dir(std::env::temp_dir());
    command
}

#[test]
fn lag_is_reported_against_the_jobs_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("events");
    let group = unique("lag");
    produce(&topic, &inputs()[..1]);
    let job = recsys_job(
        dir.path(),
        "lag",
        &format!(
            "[source]\nfiles = []\n[source.kafka]\nbrokers = {:?}\ntopics = [{topic:?}]\ngroup = {group:?}\nlag_tolerance = {{ messages = 10 }}\n",
            kafka().brokers
        ),
    );
    let mut options = streaming_options(&topic, &group, dir.path());
    options.topics.clear();
    run(Job::load(&job).unwrap(), &options).unwrap();
    let under = skewless().args(["lag"]).arg(&job).output().unwrap();
    assert!(
        under.status.success(),
        "{}",
        String::from_utf8_lossy(&under.stdout)
    );
    produce(&topic, &inputs()[4..5]);
    let over = skewless().args(["lag", "--json"]).arg(&job).output().unwrap();
    assert_eq!(
        over.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&over.stdout)
    );
    let lags: Vec<Value> = serde_json::from_slice(&over.stdout).unwrap();
    let behind: i64 = lags.iter().map(|l| l["lag_messages"].as_i64().unwrap()).sum();
    assert!(behind > 10, "{lags:?}");
}

#[test]
fn secrets_never_reach_logs_or_output() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("events");
    produce(&topic, &inputs()[4..5]);
    let secret = "hunter2-never-print-me";
    let job = recsys_job(
        dir.path(),
        "secret",
        &format!(
            "[source]\nfiles = []\n[source.kafka]\nbrokers = {:?}\ntopics = [{topic:?}]\noptions = {{ \"sasl.username\" = \"alice\", \"sasl.password\" = {secret:?} }}\n",
            kafka().brokers
        ),
    );
    let output = skewless()
        .env("RUST_LOG", "debug")
        .args(["run", "--exit-when-idle", "1s", "--no-progress", "--views-sqlite"])
        .arg(dir.path().join("v.sqlite"))
        .arg("--summary-json")
        .arg(dir.path().join("s.json"))
        .arg(&job)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    assert!(text.contains("DEBUG"), "debug logging was on");
    assert!(!text.contains(secret), "the secret was printed:\n{text}");
    let validate = skewless().arg("validate").arg(&job).output().unwrap();
    assert!(!String::from_utf8_lossy(&validate.stdout).contains(secret));
}

/// A child process killed when dropped (so a failing test leaves nothing running).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args(["-s", name])
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(mut running: Running, timeout: Duration) -> (std::process::ExitStatus, String) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = running.0.try_wait().unwrap() {
            let mut stdout = String::new();
            std::io::Read::read_to_string(running.0.stdout.as_mut().unwrap(), &mut stdout).unwrap();
            return (status, stdout);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the job did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Idle means caught up: a partition is idle only once its consumer has fetched all
/// the broker holds, so a run that exits when idle, however short the wait, still
/// reads every record that was in the topic when it started (CI once saw a run give
/// up on two partitions whose first fetch the busy broker answered late).
#[test]
fn a_run_that_exits_when_idle_first_reads_what_the_topic_holds() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("idle-events");
    let produced = produce(&topic, &inputs());
    let mut options = streaming_options(&topic, &unique("idle-group"), dir.path());
    options.exit_when_idle = Some(Duration::from_millis(1));
    options.workers = 3;
    let job = recsys_redis_job(dir.path(), "idle", &format!("{}:", unique("idle")));
    let summary = run(Job::load(&job).unwrap(), &options).unwrap();
    assert_eq!(summary.read, produced, "every record in the topic was read");
    assert!(summary.conserved);
}

#[test]
fn sigterm_flushes_commits_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("events");
    let group = unique("term");
    let prefix = format!("{}:", unique("views"));
    let produced = produce(&topic, &inputs()[..2]);
    let job = recsys_job(
        dir.path(),
        "term",
        &format!("[sinks.redis]\nkey_prefix = {prefix:?}\n"),
    );
    let child = skewless()
        .args([
            "run",
            "--no-progress",
            "--workers",
            "2",
            "--topic",
            &topic,
            "--group",
            &group,
            "--redis",
            &redis_url(),
        ])
        .arg("--views-sqlite")
        .arg(dir.path().join("v.sqlite"))
        .arg("--views-jsonl")
        .arg(dir.path().join("v.jsonl"))
        .arg("--summary-json")
        .arg(dir.path().join("s.json"))
        .arg(&job)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let running = Running(child);
    wait_until("views in Redis", Duration::from_secs(60), || {
        redis_views(&redis_url(), &prefix).len() > 100
    });
    signal(&running.0, "TERM");
    let (status, stdout) = wait_exit(running, Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
    let summary: Value = serde_json::from_str(&stdout).expect("a summary on stdout");
    assert_eq!(summary["conserved"], true);
    let read = summary["read"].as_u64().unwrap();
    assert!(read > 0 && read <= produced);
    // The stop flushed everything pending: Redis holds every view the snapshot holds.
    let snapshot = read_jsonl(&dir.path().join("v.jsonl"));
    assert_eq!(
        by_user(redis_views(&redis_url(), &prefix).into_values()),
        by_user(snapshot)
    );
    // And committed everything it had read.
    let lags = lag::measure(&kafka_job(&topic, &group)).unwrap();
    let committed: i64 = lags.iter().map(|l| l.committed.unwrap_or(0)).sum();
    assert_eq!(committed as u64, read, "{lags:#?}");
}

/// A Redis of this test's own, with an append-only file so a restart keeps its data.
struct OwnRedis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnRedis {
    fn start(dir: &Path) -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = OwnRedis {
            port,
            dir: dir.to_owned(),
            child: None,
        };
        redis.up();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "yes",
            ])
            .args(["--appendfsync", "always", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/redis.sh installs it)");
        self.child = Some(child);
        let url = self.url();
        wait_until("our Redis to answer", Duration::from_secs(10), || {
            redis::Client::open(url.as_str())
                .unwrap()
                .get_connection()
                .is_ok()
        });
    }

    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.down();
    }
}

/// The first or second half of each input's lines, as files named like the inputs.
fn halves(dir: &Path, inputs: &[PathBuf], second: bool) -> Vec<PathBuf> {
    let partitions = expected_partitions(inputs, 4);
    let half_dir = dir.join(if second { "second" } else { "first" });
    let halves: Vec<Vec<Vec<u8>>> = partitions
        .into_iter()
        .map(|records| {
            let middle = records.len() / 2;
            if second {
                records[middle..].to_vec()
            } else {
                records[..middle].to_vec()
            }
        })
        .collect();
    write_partitions(&half_dir, &halves)
}

#[test]
fn a_redis_outage_loses_nothing_and_holds_back_commits() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = OwnRedis::start(&dir.path().join("redis"));
    let topic = unique("events");
    let group = unique("outage");
    let prefix = "outage:";
    let sample: Vec<PathBuf> = inputs()[..4].to_vec();
    // Each sample file lands whole in one partition: its first half goes first.
    let first = halves(dir.path(), &sample, false);
    let second = halves(dir.path(), &sample, true);
    let first_counts: Vec<usize> = expected_partitions(&first, 4).iter().map(Vec::len).collect();
    produce(&topic, &first);
    let job = recsys_job(
        dir.path(),
        "outage",
        &format!("[sinks.redis]\nkey_prefix = {prefix:?}\n"),
    );
    let child = skewless()
        .args([
            "run",
            "--no-progress",
            "--topic",
            &topic,
            "--group",
            &group,
            "--redis",
            &redis.url(),
        ])
        .arg("--views-sqlite")
        .arg(dir.path().join("v.sqlite"))
        .arg("--summary-json")
        .arg(dir.path().join("s.json"))
        .arg(&job)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let running = Running(child);
    wait_until("the first half's views", Duration::from_secs(60), || {
        redis_views(&redis.url(), prefix).len() > 500
    });

    redis.down();
    produce(&topic, &second);
    // Views of the second half cannot be written; their offsets must not be committed.
    std::thread::sleep(Duration::from_millis(2500));
    let during = lag::measure(&kafka_job(&topic, &group)).unwrap();
    for lag in &during {
        let committed = lag.committed.unwrap_or(0);
        assert!(
            committed <= first_counts[lag.partition as usize] as i64,
            "partition {} committed {committed} past the first half ({}) while Redis was down",
            lag.partition,
            first_counts[lag.partition as usize]
        );
    }
    // Out of retries (1 + 2 + 4 s), views are dead-lettered, and still wait for Redis.
    wait_until(
        "views Redis would not take in the dead-letter topic",
        Duration::from_secs(60),
        || {
            skewless::dlq::read(&skewless::dlq::DlqLocation::Topic {
                settings: kafka(),
                topic: format!("{topic}.dlq"),
            })
            .is_ok_and(|read| {
                read.letters
                    .iter()
                    .any(|l| l["failure_reason"] == "sink_unavailable")
            })
        },
    );
    redis.up();
    signal(&running.0, "TERM");
    let (status, stdout) = wait_exit(running, Duration::from_secs(120));
    assert!(status.success(), "exit status {status}");
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["conserved"], true);

    let mut all = first.clone();
    all.extend(second.iter().cloned());
    let mut expected = expected_partitions(&first, 4);
    for (p, records) in expected_partitions(&second, 4).into_iter().enumerate() {
        expected[p].extend(records);
    }
    let files = write_partitions(&dir.path().join("expected"), &expected);
    let reference = run_job(&repo().join("jobs/recsys.toml"), &files, 1);
    assert_eq!(
        by_user(redis_views(&redis.url(), prefix).into_values()),
        by_user(reference.views),
        "after the outage Redis caught up with every view"
    );
    let letters = skewless::dlq::read(&skewless::dlq::DlqLocation::Topic {
        settings: kafka(),
        topic: format!("{topic}.dlq"),
    })
    .unwrap()
    .letters;
    let unavailable: Vec<&Value> = letters
        .iter()
        .filter(|l| l["failure_reason"] == "sink_unavailable")
        .collect();
    assert!(
        !unavailable.is_empty(),
        "views Redis would not take were dead-lettered"
    );
    for letter in unavailable {
        assert_eq!(letter["retryable"], true);
        assert!(letter["retry_count"].as_u64().unwrap() >= 3, "{letter}");
        assert!(letter["original_topic"].as_str().unwrap().starts_with(prefix));
    }
}

#[test]
fn start_positions_pick_where_reading_begins() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("events");
    let first = produce(&topic, &inputs()[4..5]);
    std::thread::sleep(Duration::from_millis(1500));
    let between = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    std::thread::sleep(Duration::from_millis(1500));
    let second = produce(&topic, &inputs()[5..6]);
    let job = Job::load(&repo().join("jobs/recsys.toml")).unwrap();
    let read_from = |start: &str| {
        let mut options = streaming_options(&topic, &unique("start"), dir.path());
        options.start = Some(start.parse().unwrap());
        run(job.clone(), &options).unwrap().read
    };
    assert_eq!(read_from("earliest"), first + second);
    assert_eq!(read_from(&between), second, "offsets-for-times at {between}");
    assert_eq!(read_from("latest"), 0);
    // `committed` with no commits starts at the earliest offset, then resumes.
    let group = unique("committed");
    let mut options = streaming_options(&topic, &group, dir.path());
    options.start = Some("committed".parse().unwrap());
    assert_eq!(run(job.clone(), &options).unwrap().read, first + second);
    assert_eq!(
        run(job.clone(), &options).unwrap().read,
        0,
        "a second run resumes after the commits"
    );
}
