//! Crash recovery, rescaling and clusters, against the real binary, broker and Redis:
//! a job killed with SIGKILL again and again, and restarted each time (with another
//! number of workers), ends with exactly the outputs of a run that was never
//! interrupted; damaged checkpoints are refused with a clear message; a broker restart
//! mid-stream changes nothing; two processes give what one does.
//!
//! Kill points are random: `SKEWLESS_CRASH_SEED` picks them (the seed is printed).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use skewless::synthetic::{GenOptions, generate};

/// A child process killed when dropped, so a failing test leaves nothing running.
struct Running(Option<Child>);

impl Running {
    fn spawn(command: &mut Command) -> Running {
        Running(Some(command.spawn().unwrap()))
    }

    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("running")
    }

    fn ended(&mut self) -> bool {
        self.child().try_wait().unwrap().is_some()
    }

    fn kill(&mut self) {
        let child = self.child();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Waits for the process to end and returns what it printed.
    fn finish(mut self) -> Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn skewless() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_skewless"));
    // Never the repository: a default output there would change a later run.
    command.current_dir(std::env::temp_dir()).env("RUST_LOG", "info");
    command
}

/// A small seeded generator for kill points.
struct Dice(u64);

impl Dice {
    fn new() -> Dice {
        let seed = std::env::var("SKEWLESS_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20_261_127);
        eprintln!("crash seed {seed} (set SKEWLESS_CRASH_SEED to replay another)");
        Dice(seed)
    }

    /// A duration in `0..max_ms` milliseconds.
    fn millis(&mut self, max_ms: u64) -> Duration {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        Duration::from_millis((self.0 >> 33) % max_ms)
    }
}

/// Synthetic partitions with every kind of trouble: late events, duplicates,
/// malformed records, v1 purchases, unknown types.
fn synthetic(dir: &Path, events: u64, users: u64, seed: u64) -> Vec<PathBuf> {
    synthetic_days(dir, events, users, seed, 1.0)
}

/// [`synthetic`], over `days` days (over one, rows close before the input ends).
fn synthetic_days(dir: &Path, events: u64, users: u64, seed: u64, days: f64) -> Vec<PathBuf> {
    let out = dir.join("input");
    generate(&GenOptions {
        out: out.clone(),
        events,
        users,
        zipf: 1.0,
        partitions: 4,
        items: 2_000,
        start: 1_767_225_600.0,
        span: days * 86_400.0,
        lateness: 5.0,
        late: 0.01,
        duplicates: 0.02,
        malformed: 0.005,
        v1: 0.1,
        unknown: 0.01,
        seed,
        compression: Some(skewless::sinks::archive::ArchiveCompression::Gzip),
        ..GenOptions::default()
    })
    .unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// Where a backfill writes: views (SQLite and JSONL), dead letters, summary.
struct Outs {
    dir: PathBuf,
}

impl Outs {
    fn new(dir: PathBuf) -> Outs {
        std::fs::create_dir_all(&dir).unwrap();
        Outs { dir }
    }

    fn args(&self, command: &mut Command) {
        for (flag, file) in [
            ("--views-jsonl", "views.jsonl"),
            ("--views-sqlite", "views.sqlite"),
            ("--dlq", "dlq.jsonl"),
            ("--summary-json", "summary.json"),
            ("--export-dir", "training"),
            ("--skew-report", "skew.json"),
        ] {
            command.arg(flag).arg(self.dir.join(file));
        }
    }

    fn rows(&self) -> String {
        std::fs::read_to_string(self.dir.join("training.jsonl")).unwrap()
    }

    fn views(&self) -> String {
        std::fs::read_to_string(self.dir.join("views.jsonl")).unwrap()
    }

    fn sqlite(&self) -> Vec<Value> {
        read_sqlite(&self.dir.join("views.sqlite"))
    }

    fn dead_letters(&self) -> Vec<Value> {
        normalize_dead_letters(&read_jsonl(&self.dir.join("dlq.jsonl")))
    }

    fn summary(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.dir.join("summary.json")).unwrap()).unwrap()
    }

    /// Asserts these outputs equal `reference`'s.
    fn assert_same_as(&self, reference: &Outs) {
        let (views, expected) = (self.views(), reference.views());
        assert!(
            views == expected,
            "views differ from the uninterrupted run's ({} vs {} lines)",
            views.lines().count(),
            expected.lines().count()
        );
        assert_eq!(self.sqlite(), reference.sqlite(), "SQLite views differ");
        let (rows, expected) = (self.rows(), reference.rows());
        assert!(
            rows == expected,
            "training rows differ from the uninterrupted run's ({} vs {} rows)",
            rows.lines().count(),
            expected.lines().count()
        );
        assert_eq!(
            parquet_rows(&self.dir.join("training")),
            parquet_rows(&reference.dir.join("training")),
            "Parquet rows differ"
        );
        assert_eq!(
            self.dead_letters(),
            reference.dead_letters(),
            "dead letters differ"
        );
        assert_eq!(
            counts(&self.summary()),
            counts(&reference.summary()),
            "summary counts differ"
        );
        let skew = |outs: &Outs, file: &str| std::fs::read_to_string(outs.dir.join(file)).unwrap();
        assert!(
            skew(self, "skew.json") == skew(reference, "skew.json"),
            "skew reports differ"
        );
        // The page's examples too: each feature's first mismatches in event time,
        // from every worker of every process, and from the checkpoint on a resume.
        assert!(
            skew(self, "skew.html") == skew(reference, "skew.html"),
            "skew report pages differ"
        );
    }
}

/// Every row of a Parquet dataset as `(row_id, position, labels_complete)`, sorted,
/// read with the parquet crate's Arrow reader.
fn parquet_rows(dir: &Path) -> Vec<(String, i32, bool)> {
    use arrow_array::{Array, BooleanArray, Int32Array, StringArray};
    let mut rows = Vec::new();
    for part in glob::glob(&format!("{}/dt=*/part-*.parquet", dir.display())).unwrap() {
        let file = std::fs::File::open(part.unwrap()).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let column = |name: &str| batch.column_by_name(name).unwrap().clone();
            let ids = column("row_id");
            let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
            let positions = column("position");
            let positions = positions.as_any().downcast_ref::<Int32Array>().unwrap();
            let complete = column("labels_complete");
            let complete = complete.as_any().downcast_ref::<BooleanArray>().unwrap();
            for i in 0..batch.num_rows() {
                rows.push((ids.value(i).to_owned(), positions.value(i), complete.value(i)));
            }
        }
    }
    rows.sort();
    rows
}

/// A summary's counts: everything but timings, workers and outputs.
fn counts(summary: &Value) -> Value {
    let mut counts = summary.clone();
    let object = counts.as_object_mut().unwrap();
    for key in [
        "wall_time_s",
        "events_per_s",
        "workers",
        "outputs",
        "resumed_from_checkpoint",
        "processes",
        "training_rows",
    ] {
        object.remove(key);
    }
    counts
}

/// A scratch directory with a synthetic log of `events` for `users` (seeded), and the
/// outputs of an uninterrupted backfill of it with `workers` workers.
fn with_reference(
    events: u64,
    users: u64,
    seed: u64,
    workers: usize,
) -> (tempfile::TempDir, Vec<PathBuf>, Outs) {
    with_reference_days(events, users, seed, workers, 1.0)
}

/// [`with_reference`] over `days` days of events.
fn with_reference_days(
    events: u64,
    users: u64,
    seed: u64,
    workers: usize,
    days: f64,
) -> (tempfile::TempDir, Vec<PathBuf>, Outs) {
    let dir = tempfile::tempdir().unwrap();
    let inputs = synthetic_days(dir.path(), events, users, seed, days);
    let reference = Outs::new(dir.path().join("reference"));
    succeed(backfill(&inputs, &reference, workers, None));
    (dir, inputs, reference)
}

fn backfill(inputs: &[PathBuf], outs: &Outs, workers: usize, checkpoints: Option<&Path>) -> Command {
    let mut command = skewless();
    command.args(["run", "--no-progress", "--workers", &workers.to_string()]);
    command.arg(repo().join("jobs/recsys.toml"));
    for input in inputs {
        command.arg("--input").arg(input);
    }
    outs.args(&mut command);
    match checkpoints {
        // Small batches keep the workers' watermarks close, so a checkpoint
        // completes within a fraction of a second.
        Some(dir) => command.arg("--checkpoint-dir").arg(dir).args([
            "--checkpoint-interval",
            "200ms",
            "--batch",
            "4096",
        ]),
        None => command.args(["--checkpoint-dir", ""]),
    };
    command
}

fn succeed(mut command: Command) -> Output {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{:?} failed: {}",
        command,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn resumed_from(output: &Output) -> Option<u64> {
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    summary["resumed_from_checkpoint"].as_u64()
}

/// The newest complete checkpoint under `dir`.
fn newest_complete(dir: &Path) -> Option<u64> {
    skewless::checkpoint::epochs(dir)
        .into_iter()
        .filter(|&e| {
            skewless::checkpoint::epoch_dir(dir, e)
                .join(skewless::checkpoint::MANIFEST)
                .exists()
        })
        .max()
}

/// Starts `command`, waits until it completes a checkpoint newer than what `dir`
/// held, then a random while longer, and kills it with SIGKILL. Returns false when
/// the run ended on its own first; panics when it failed. Its log goes to
/// `<dir>.log`.
fn kill_after_next_checkpoint(mut command: Command, dir: &Path, dice: &mut Dice) -> bool {
    let before = newest_complete(dir);
    let log = dir.with_extension("log");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let mut running = Running::spawn(command.stdout(Stdio::null()).stderr(file));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = running.child().try_wait().unwrap() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            assert!(
                status.success(),
                "the run failed ({status}):\n{}",
                tail.join("\n")
            );
            return false;
        }
        if newest_complete(dir) > before {
            break;
        }
        assert!(Instant::now() < deadline, "no checkpoint within 120 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(dice.millis(400));
    running.kill();
    true
}

#[test]
fn a_backfill_killed_five_times_ends_as_if_never_interrupted() {
    let (dir, inputs, reference) = with_reference(600_000, 60_000, 11, 2);

    let crashed = Outs::new(dir.path().join("crashed"));
    let checkpoints = dir.path().join("checkpoints");
    let mut dice = Dice::new();
    let mut kills = 0;
    for workers in [2, 1, 4, 2, 3] {
        if kill_after_next_checkpoint(
            backfill(&inputs, &crashed, workers, Some(&checkpoints)),
            &checkpoints,
            &mut dice,
        ) {
            kills += 1;
        }
    }
    assert_eq!(
        kills, 5,
        "the run ended before it was killed five times: make the input larger"
    );
    let output = succeed(backfill(&inputs, &crashed, 2, Some(&checkpoints)));
    assert!(
        resumed_from(&output).is_some(),
        "the last run resumed from a checkpoint"
    );
    crashed.assert_same_as(&reference);
    assert!(
        skewless::checkpoint::epochs(&checkpoints).is_empty(),
        "a backfill that reached the end leaves no checkpoint to resume"
    );
}

#[test]
fn a_checkpoint_of_two_workers_restores_on_one_and_on_four() {
    // Three days: rows close before the kill, so the checkpoint carries skew counters.
    let (dir, inputs, reference) = with_reference_days(200_000, 20_000, 12, 1, 3.0);

    let first = Outs::new(dir.path().join("w2"));
    let checkpoints = dir.path().join("checkpoints");
    let mut dice = Dice::new();
    // Killed (and resumed on two workers) until a checkpoint carries the skew of rows
    // closed before it.
    let compared = || -> i64 {
        let (restored, _) = skewless::checkpoint::latest(&checkpoints);
        restored
            .expect("a checkpoint")
            .parts
            .iter()
            .flat_map(|part| &part.fold.skew)
            .map(|(_, stats)| stats.rows)
            .sum()
    };
    for kills in 1.. {
        assert!(
            kill_after_next_checkpoint(
                backfill(&inputs, &first, 2, Some(&checkpoints)),
                &checkpoints,
                &mut dice
            ),
            "the run ended before a checkpoint carried skew counters ({kills} kills)"
        );
        if compared() > 0 {
            break;
        }
    }
    for workers in [1, 4] {
        let outs = Outs::new(dir.path().join(format!("w{workers}")));
        let copy = dir.path().join(format!("checkpoints-{workers}"));
        copy_dir(&checkpoints, &copy);
        // A backfill writes its dead letters aside until it ends: the killed run's
        // are in the partial file, which the resume goes on with.
        std::fs::copy(
            first.dir.join("dlq.jsonl.partial"),
            outs.dir.join("dlq.jsonl.partial"),
        )
        .unwrap();
        // So are the training rows written before the checkpoint.
        for aside in ["training.partial", "training.jsonl.parts"] {
            assert!(first.dir.join(aside).is_dir(), "{aside}");
            copy_dir(&first.dir.join(aside), &outs.dir.join(aside));
        }
        let output = succeed(backfill(&inputs, &outs, workers, Some(&copy)));
        assert!(resumed_from(&output).is_some());
        outs.assert_same_as(&reference);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn damaged_checkpoints_are_refused_with_a_clear_message() {
    let (dir, inputs, reference) = with_reference(300_000, 30_000, 13, 2);

    let outs = Outs::new(dir.path().join("crashed"));
    let checkpoints = dir.path().join("checkpoints");
    let mut dice = Dice::new();
    for _ in 0..2 {
        assert!(kill_after_next_checkpoint(
            backfill(&inputs, &outs, 2, Some(&checkpoints)),
            &checkpoints,
            &mut dice
        ));
    }
    let complete: Vec<u64> = skewless::checkpoint::epochs(&checkpoints)
        .into_iter()
        .filter(|&e| Some(e) <= newest_complete(&checkpoints))
        .collect();
    assert!(complete.len() >= 2, "two checkpoints: {complete:?}");
    let newest = *complete.last().unwrap();
    let part = |epoch: u64| {
        skewless::checkpoint::epoch_dir(&checkpoints, epoch).join(skewless::checkpoint::part_name(1))
    };

    // A truncated part: the checkpoint is listed as corrupt, and the run falls back.
    let bytes = std::fs::read(part(newest)).unwrap();
    std::fs::write(part(newest), &bytes[..bytes.len() / 2]).unwrap();
    let list = succeed({
        let mut c = skewless();
        c.args(["checkpoint", "list"]).arg(&checkpoints);
        c
    });
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("corrupt") && text.contains("truncated"), "{text}");
    let backup = dir.path().join("backup");
    copy_dir(&checkpoints, &backup);
    let output = succeed(backfill(&inputs, &outs, 2, Some(&checkpoints)));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("skipping checkpoint") && stderr.contains("truncated"),
        "{stderr}"
    );
    assert!(resumed_from(&output).is_some_and(|e| e < newest));
    outs.assert_same_as(&reference);

    // Every part damaged (a flipped byte): nothing intact to resume from, so the run
    // refuses to start rather than silently starting over.
    for epoch in skewless::checkpoint::epochs(&backup) {
        let file = skewless::checkpoint::epoch_dir(&backup, epoch).join(skewless::checkpoint::part_name(0));
        if let Ok(mut bytes) = std::fs::read(&file) {
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
            std::fs::write(&file, bytes).unwrap();
        }
    }
    let output = backfill(&inputs, &outs, 2, Some(&backup)).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("checksum mismatch")
            && stderr.contains("no intact checkpoint")
            && stderr.contains("--fresh"),
        "{stderr}"
    );
    let mut fresh = backfill(&inputs, &outs, 2, Some(&backup));
    fresh.arg("--fresh");
    let output = succeed(fresh);
    assert_eq!(resumed_from(&output), None);
    outs.assert_same_as(&reference);
}

/// Splits each of `inputs` (a partition: all its users land in one topic partition)
/// into `rounds` consecutive slices; round `i` holds every partition's `i`-th slice,
/// as files under `dir`. Publishing round after round keeps every partition moving,
/// as a live stream does (a partition silent for `idle_timeout` would stop holding
/// the watermark back, and its next events would be late).
fn rounds(inputs: &[PathBuf], rounds: usize, dir: &Path) -> Vec<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).unwrap();
    let mut out = vec![Vec::new(); rounds];
    for (k, input) in inputs.iter().enumerate() {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::MultiGzDecoder::new(std::fs::File::open(input).unwrap()),
            &mut bytes,
        )
        .unwrap();
        let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
        for (i, slice) in lines.chunks(lines.len().div_ceil(rounds)).enumerate() {
            let path = dir.join(format!("round-{i:03}-part-{k}.jsonl"));
            let mut text = slice.join(&b'\n');
            text.push(b'\n');
            std::fs::write(&path, text).unwrap();
            out[i].push(path);
        }
    }
    out
}

/// Publishes `rounds` to `topic`, `gap` apart, from a thread; returns the records sent.
fn produce_slowly(
    settings: &skewless::kafka::settings::BrokerSettings,
    topic: &str,
    rounds: Vec<Vec<PathBuf>>,
    gap: Duration,
) -> std::thread::JoinHandle<u64> {
    let (settings, topic) = (settings.clone(), topic.to_owned());
    std::thread::spawn(move || {
        let mut produced = 0;
        for round in rounds {
            let names: Vec<String> = round.iter().map(|p| p.display().to_string()).collect();
            produced += skewless::kafka::produce::produce_files(&settings, &topic, 4, &names, None)
                .unwrap()
                .records;
            std::thread::sleep(gap);
        }
        produced
    })
}

/// A streaming job with its own Redis prefix and dead-letter topic.
fn stream_job(dir: &Path, name: &str, prefix: &str, dlq_topic: &str) -> PathBuf {
    recsys_job(
        dir,
        name,
        &format!(
            "[job]\nname = \"recovery\"\n[sinks]\nviews_sqlite = \"\"\nviews_jsonl = \"\"\ndlq_topic = {dlq_topic:?}\n[sinks.redis]\nkey_prefix = {prefix:?}\n"
        ),
    )
}

fn stream(job: &Path, topic: &str, group: &str, workers: usize, idle: &str, outs: &Path) -> Command {
    stream_on(&kafka(), job, topic, group, workers, idle, outs)
}

fn stream_on(
    broker: &skewless::kafka::settings::BrokerSettings,
    job: &Path,
    topic: &str,
    group: &str,
    workers: usize,
    idle: &str,
    outs: &Path,
) -> Command {
    let mut command = skewless();
    // The job's training export, beside its job file.
    let training = job.with_extension("training");
    command
        .args(["run", "--no-progress", "--workers", &workers.to_string()])
        .arg("--export-dir")
        .arg(&training)
        .arg("--skew-report")
        .arg(job.with_extension("skew.json"))
        .args(["--brokers", &broker.brokers])
        .args(["--topic", topic, "--group", group, "--redis", &redis_url()])
        .args(["--exit-when-idle", idle, "--checkpoint-interval", "200ms"])
        .arg("--summary-json")
        .arg(outs.join("summary.json"))
        .arg(job);
    command
}

fn dead_letter_topic(settings: &skewless::kafka::settings::BrokerSettings, topic: &str) -> Vec<Value> {
    let records = skewless::dlq::read(&skewless::dlq::DlqLocation::Topic {
        settings: settings.clone(),
        topic: topic.to_owned(),
    })
    .unwrap();
    normalize_dead_letters(&records.letters)
}

/// Asserts two normalized dead-letter lists are equal, naming the first difference.
fn assert_same_letters(got: &[Value], expected: &[Value]) {
    let origin = |l: &Value| (l["original_partition"].clone(), l["original_offset"].clone());
    if let Some(i) = (0..got.len().max(expected.len())).find(|&i| got.get(i) != expected.get(i)) {
        panic!(
            "dead letters differ ({} vs {} expected); first at #{i}: {:?} vs {:?}",
            got.len(),
            expected.len(),
            got.get(i).map(origin),
            expected.get(i).map(origin)
        );
    }
}

/// Asserts a streaming run's outputs (summary counts, the Redis views under a prefix,
/// the dead letters in a topic), given as `(summary, prefix, topic)`, equal an
/// uninterrupted run's.
fn assert_same_stream(
    broker: &skewless::kafka::settings::BrokerSettings,
    got: (&Value, &str, &str),
    expected: (&Value, &str, &str),
) {
    assert_eq!(counts(got.0), counts(expected.0), "summary counts differ");
    let (views_got, views_expected) = (views(got.1), views(expected.1));
    assert_eq!(
        views_got.len(),
        views_expected.len(),
        "a different number of views"
    );
    assert!(
        views_got == views_expected,
        "views differ from the uninterrupted run's"
    );
    assert_same_letters(
        &dead_letter_topic(broker, got.2),
        &dead_letter_topic(broker, expected.2),
    );
}

fn views(prefix: &str) -> BTreeMap<String, Value> {
    redis_views(&redis_url(), prefix)
        .into_iter()
        .map(|(user, view)| (user, features_and_state(&view)))
        .collect()
}

#[test]
fn a_stream_killed_five_times_ends_as_if_never_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = synthetic(dir.path(), 60_000, 6_000, 14);
    let topic = unique("crash-events");
    kafka().ensure_topic(&topic, 4).unwrap();
    let producer = produce_slowly(
        &kafka(),
        &topic,
        rounds(&inputs, 16, &dir.path().join("rounds")),
        Duration::from_millis(1200),
    );

    let crash_prefix = format!("{}:", unique("crash"));
    let crash_dlq = unique("crash-dlq");
    let job = stream_job(dir.path(), "crashing", &crash_prefix, &crash_dlq);
    let checkpoints = dir.path().join("crashing-checkpoints");
    let group = unique("crash-group");
    let mut dice = Dice::new();
    let mut kills = 0;
    for workers in [2, 1, 3, 2, 4] {
        let command = stream(&job, &topic, &group, workers, "60s", dir.path());
        if kill_after_next_checkpoint(command, &checkpoints, &mut dice) {
            kills += 1;
        }
    }
    assert_eq!(kills, 5);
    let produced = producer.join().unwrap();
    let output = succeed(stream(&job, &topic, &group, 2, "3s", dir.path()));
    assert!(
        resumed_from(&output).is_some(),
        "the last run resumed from a checkpoint"
    );
    let crashed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(crashed["read"].as_u64(), Some(produced), "every record read once");

    let reference_prefix = format!("{}:", unique("reference"));
    let reference_dlq = unique("reference-dlq");
    let reference_job = stream_job(dir.path(), "reference", &reference_prefix, &reference_dlq);
    let output = succeed(stream(
        &reference_job,
        &topic,
        &unique("reference-group"),
        2,
        "3s",
        dir.path(),
    ));
    let reference: Value = serde_json::from_slice(&output.stdout).unwrap();

    assert_same_stream(
        &kafka(),
        (&crashed, &crash_prefix, &crash_dlq),
        (&reference, &reference_prefix, &reference_dlq),
    );
    // The live training export: every row exactly once across the files that five
    // killed runs and the last one left, in Parquet and in the JSONL form.
    let rows = |job: &Path| std::fs::read_to_string(job.with_extension("training.jsonl")).unwrap();
    let (got, want) = (rows(&job), rows(&reference_job));
    assert!(want.lines().count() > 1000, "the stream has impressions");
    assert!(
        got == want,
        "training rows differ from the uninterrupted run's ({} vs {} rows)",
        got.lines().count(),
        want.lines().count()
    );
    let parquet = parquet_rows(&job.with_extension("training"));
    assert_eq!(parquet, parquet_rows(&reference_job.with_extension("training")));
    assert_eq!(
        parquet.len(),
        want.lines().count(),
        "no Parquet row twice, none lost"
    );
}

/// A port nothing listens on now, with `count - 1` free ports after it.
fn free_ports(count: u16) -> u16 {
    let bindable = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    let mut dice = Dice(std::process::id() as u64 ^ 0x5eed);
    loop {
        let base = 20_000 + dice.millis(30_000).as_millis() as u16;
        if (base..base + count).all(bindable) {
            return base;
        }
    }
}

/// A broker of this test's own (tansu, through `scripts/kafka.sh`, on a free port
/// with its data in `dir`), stopped when dropped.
struct OwnBroker {
    port: u16,
    data: PathBuf,
}

impl OwnBroker {
    fn start(dir: &Path) -> OwnBroker {
        let broker = OwnBroker {
            port: free_ports(1),
            data: dir.join("broker"),
        };
        broker.script("start");
        broker
    }

    fn settings(&self) -> skewless::kafka::settings::BrokerSettings {
        skewless::kafka::settings::BrokerSettings::new(format!("127.0.0.1:{}", self.port))
    }

    fn script(&self, action: &str) {
        let status = Command::new(repo().join("scripts/kafka.sh"))
            .arg(action)
            .env("SKEWLESS_KAFKA_PORT", self.port.to_string())
            .env("SKEWLESS_KAFKA_DATA", &self.data)
            .status()
            .unwrap();
        assert!(status.success(), "scripts/kafka.sh {action} failed");
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.script("stop");
    }
}

#[test]
fn a_broker_restart_mid_stream_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = OwnBroker::start(dir.path());
    let settings = broker.settings();
    let inputs = synthetic(dir.path(), 40_000, 4_000, 16);
    let topic = "restart-events";
    settings.ensure_topic(topic, 4).unwrap();
    let (restart_prefix, steady_prefix) = (
        format!("{}:", unique("restart")),
        format!("{}:", unique("steady")),
    );
    let job = stream_job(dir.path(), "restarting", &restart_prefix, "restart-dlq");
    let checkpoints = dir.path().join("restarting-checkpoints");
    let outs = dir.path().join("restarting");
    std::fs::create_dir_all(&outs).unwrap();
    let mut running = Running::spawn(
        stream_on(&settings, &job, topic, "restart-group", 2, "15s", &outs)
            .stdout(std::fs::File::create(outs.join("stdout")).unwrap())
            .stderr(std::fs::File::create(outs.join("stderr")).unwrap()),
    );
    // Records keep coming (no partition falls idle, which would change what is
    // late), with the broker down for a while in the middle: the job must wait for
    // it without taking its partitions for idle, reconnect and read on.
    let mut produced = 0;
    let produce = |round: &[PathBuf]| {
        let names: Vec<String> = round.iter().map(|p| p.display().to_string()).collect();
        let records = skewless::kafka::produce::produce_files(&settings, topic, 4, &names, None)
            .unwrap()
            .records;
        std::thread::sleep(Duration::from_millis(700));
        records
    };
    let rounds = rounds(&inputs, 8, &dir.path().join("rounds"));
    for round in &rounds[..4] {
        produced += produce(round);
    }
    wait_until(
        "a checkpoint with state before the outage",
        Duration::from_secs(5),
        || {
            skewless::checkpoint::list(&checkpoints).iter().any(|l| {
                l.status == "complete"
                    && l.manifest
                        .as_ref()
                        .is_some_and(|m| m.parts.iter().any(|p| p.users > 0))
            })
        },
    );
    broker.script("stop");
    std::thread::sleep(Duration::from_secs(4));
    assert!(!running.ended(), "the job waits for the broker to come back");
    broker.script("start");
    for round in &rounds[4..] {
        produced += produce(round);
    }
    let status = running.finish().status;
    let log = std::fs::read_to_string(outs.join("stderr")).unwrap();
    assert!(status.success(), "the job ends cleanly: {log}");
    assert!(log.contains("broker unavailable"), "the job saw the outage");
    let restarted: Value = serde_json::from_slice(&std::fs::read(outs.join("stdout")).unwrap()).unwrap();
    assert_eq!(
        restarted["read"].as_u64(),
        Some(produced),
        "every record read once"
    );

    let reference_job = stream_job(dir.path(), "steady", &steady_prefix, "steady-dlq");
    let output = succeed(stream_on(
        &settings,
        &reference_job,
        topic,
        "steady-group",
        2,
        "3s",
        &outs,
    ));
    let reference: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_same_stream(
        &settings,
        (&restarted, &restart_prefix, "restart-dlq"),
        (&reference, &steady_prefix, "steady-dlq"),
    );
}

#[test]
fn two_processes_give_what_one_process_with_one_worker_gives() {
    let (dir, inputs, reference) = with_reference(300_000, 30_000, 17, 1);

    // Two processes of two workers, killed together after a checkpoint...
    let outs = Outs::new(dir.path().join("cluster"));
    let checkpoints = dir.path().join("checkpoints");
    let port = free_ports(2);
    let hostfile = dir.path().join("hostfile");
    std::fs::write(&hostfile, format!("127.0.0.1:{port}\n127.0.0.1:{}\n", port + 1)).unwrap();
    let process = |index: usize| {
        let mut command = backfill(&inputs, &outs, 2, Some(&checkpoints));
        command
            .args(["-n", "2", "-p", &index.to_string(), "-H"])
            .arg(&hostfile);
        let log = std::fs::File::create(dir.path().join(format!("process-{index}.log"))).unwrap();
        Running::spawn(command.stdout(Stdio::null()).stderr(log))
    };
    let mut processes = [process(1), process(0)];
    let log =
        |index: usize| std::fs::read_to_string(dir.path().join(format!("process-{index}.log"))).unwrap();
    wait_until("a checkpoint of the cluster", Duration::from_secs(120), || {
        for (running, index) in processes.iter_mut().zip([1, 0]) {
            assert!(
                !running.ended(),
                "process {index} ended before a checkpoint: {}",
                log(index)
            );
        }
        newest_complete(&checkpoints).is_some()
    });
    for (running, index) in processes.iter_mut().zip([1, 0]) {
        assert!(
            !running.ended(),
            "process {index} ended before it was killed: {}",
            log(index)
        );
        running.kill();
    }
    let parts = skewless::checkpoint::epoch_dir(&checkpoints, newest_complete(&checkpoints).unwrap());
    assert!(
        parts.join(skewless::checkpoint::part_name(3)).exists(),
        "four workers' parts"
    );

    // ...then resumed by scripts/cluster.sh, two processes of one worker each.
    let mut command = Command::new(repo().join("scripts/cluster.sh"));
    command
        .env("SKEWLESS_BIN", env!("CARGO_BIN_EXE_skewless"))
        .env("SKEWLESS_CLUSTER_PORT", free_ports(2).to_string())
        .env("SKEWLESS_CLUSTER_LOGS", dir.path().join("logs"))
        .arg("2")
        .args(backfill(&inputs, &outs, 1, Some(&checkpoints)).get_args().skip(1));
    let output = succeed(command);
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["processes"], 2);
    assert_eq!(summary["workers"], 2);
    assert!(summary["resumed_from_checkpoint"].is_u64(), "{summary}");
    outs.assert_same_as(&reference);
}
