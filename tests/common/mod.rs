//! Helpers shared by the integration tests: running a job into a scratch directory
//! and reading what it wrote. They panic with the context needed to debug a failure.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;
use skewless::job::Job;
use skewless::run::{RunOptions, run_files};
use skewless::summary::Summary;

/// What a run wrote.
pub struct Outputs {
    /// The run summary.
    pub summary: Summary,
    /// The JSONL views, parsed, in file order.
    pub views: Vec<Value>,
    /// The views in SQLite, parsed into the same shape, sorted by user id.
    pub sqlite_views: Vec<Value>,
    /// The dead letters, parsed, in file order.
    pub dead_letters: Vec<Value>,
    /// The training export's JSONL rows, in file order (empty without an export).
    pub rows: Vec<Value>,
    /// The skew report, when the run made one.
    pub skew: Option<Value>,
    /// Its HTML page, when the run made one.
    pub skew_html: Option<String>,
    /// For a run stopped and resumed: the stopped run's summary.
    pub stopped: Option<Summary>,
    /// The scratch directory (kept alive while the outputs are).
    pub dir: tempfile::TempDir,
}

/// Runs `job_path` over `inputs` with `workers` workers, writing every sink into a
/// fresh scratch directory.
pub fn run_job(job_path: &Path, inputs: &[PathBuf], workers: usize) -> Outputs {
    run_job_split(job_path, inputs, workers, None)
}

/// [`run_job`], with plain files over twice `split_bytes` read in byte ranges of about
/// that size by every worker (`None`: the default size).
pub fn run_job_split(
    job_path: &Path,
    inputs: &[PathBuf],
    workers: usize,
    split_bytes: Option<u64>,
) -> Outputs {
    let dir = tempfile::tempdir().expect("scratch dir");
    let summary = run_into(job_path, inputs, workers, dir.path(), None, split_bytes);
    assert!(
        !summary.interrupted,
        "a run to the end is not interrupted: {summary:#?}"
    );
    outputs(summary, dir)
}

/// Runs `job_path` as [`run_job`] does, but stops it once each worker has read
/// `stop_after` records (it checkpoints where it stopped), then runs it again, which
/// resumes from that checkpoint and finishes. Returns what the second run wrote.
pub fn run_job_restarted(job_path: &Path, inputs: &[PathBuf], workers: usize, stop_after: u64) -> Outputs {
    run_job_restarted_split(job_path, inputs, workers, stop_after, None)
}

/// [`run_job_restarted`], with files split as [`run_job_split`] splits them.
pub fn run_job_restarted_split(
    job_path: &Path,
    inputs: &[PathBuf],
    workers: usize,
    stop_after: u64,
    split_bytes: Option<u64>,
) -> Outputs {
    run_job_restarted_on(job_path, inputs, (workers, workers), stop_after, split_bytes)
}

/// [`run_job_restarted_split`], resumed with another number of workers: `(stopped,
/// resumed)`.
pub fn run_job_restarted_on(
    job_path: &Path,
    inputs: &[PathBuf],
    (workers, resumed_workers): (usize, usize),
    stop_after: u64,
    split_bytes: Option<u64>,
) -> Outputs {
    let dir = tempfile::tempdir().expect("scratch dir");
    let first = run_into(
        job_path,
        inputs,
        workers,
        dir.path(),
        Some(stop_after),
        split_bytes,
    );
    assert!(
        first.interrupted,
        "a run stopped after {stop_after} records says it was interrupted: {first:#?}"
    );
    let second = run_into(job_path, inputs, resumed_workers, dir.path(), None, split_bytes);
    assert!(
        second.resumed_from_checkpoint.is_some(),
        "the second run resumed from the checkpoint the stopped one took: {second:#?}"
    );
    assert!(!second.interrupted, "{second:#?}");
    let mut outputs = outputs(second, dir);
    outputs.stopped = Some(first);
    outputs
}

fn run_into(
    job_path: &Path,
    inputs: &[PathBuf],
    workers: usize,
    dir: &Path,
    stop_after: Option<u64>,
    split_bytes: Option<u64>,
) -> Summary {
    let job = Job::load(job_path).unwrap_or_else(|e| panic!("loading {}: {e}", job_path.display()));
    let out = |name: &str| dir.join(name);
    let options = RunOptions {
        inputs: inputs.iter().map(|p| p.display().to_string()).collect(),
        workers,
        views_sqlite: Some(out("views.sqlite")),
        views_jsonl: Some(out("views.jsonl")),
        dlq: Some(out("dlq.jsonl")),
        summary: Some(out("summary.json")),
        checkpoint_dir: Some(out("checkpoints")),
        stop_after,
        split_bytes,
        export_dir: Some(out("training")),
        skew_report: Some(out("skew.json")),
        ..RunOptions::default()
    };
    let summary = run_files(job, &options)
        .unwrap_or_else(|e| panic!("running {} with {workers} workers: {e}", job_path.display()));
    assert!(summary.conserved, "conservation broken: {summary:#?}");
    let written: Summary =
        serde_json::from_str(&std::fs::read_to_string(out("summary.json")).unwrap()).unwrap();
    // The skew report travels with the returned summary for the command line, and
    // has files of its own.
    let returned = Summary {
        skew: None,
        ..summary.clone()
    };
    assert_eq!(
        written, returned,
        "the summary file differs from the returned summary"
    );
    summary
}

fn outputs(summary: Summary, dir: tempfile::TempDir) -> Outputs {
    let out = |name: &str| dir.path().join(name);
    Outputs {
        views: read_jsonl(&out("views.jsonl")),
        sqlite_views: read_sqlite(&out("views.sqlite")),
        dead_letters: read_jsonl(&out("dlq.jsonl")),
        rows: if out("training.jsonl").exists() {
            read_jsonl(&out("training.jsonl"))
        } else {
            Vec::new()
        },
        skew: std::fs::read_to_string(out("skew.json"))
            .ok()
            .map(|text| serde_json::from_str(&text).expect("the skew report is JSON")),
        skew_html: std::fs::read_to_string(out("skew.html")).ok(),
        summary,
        dir,
        stopped: None,
    }
}

/// Parses every line of a JSONL file.
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}:{}: not JSON ({e}): {line}", path.display(), i + 1))
        })
        .collect()
}

/// Reads the `user_features` table into view-shaped JSON, sorted by user id.
pub fn read_sqlite(path: &Path) -> Vec<Value> {
    let connection =
        rusqlite::Connection::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut statement = connection
        .prepare("SELECT user_id, as_of, features, state FROM user_features ORDER BY user_id")
        .expect("the user_features table exists");
    statement
        .query_map([], |row| {
            let features: String = row.get(2)?;
            let state: String = row.get(3)?;
            Ok(serde_json::json!({
                "user_id": row.get::<_, String>(0)?,
                "as_of": row.get::<_, f64>(1)?,
                "features": serde_json::from_str::<Value>(&features).expect("features are JSON"),
                "state": serde_json::from_str::<Value>(&state).expect("state is JSON"),
            }))
        })
        .expect("query runs")
        .collect::<Result<_, _>>()
        .expect("rows read")
}

/// Dead letters without their wall-clock fields, sorted by origin (topic or file,
/// partition, offset), for comparison.
pub fn normalize_dead_letters(letters: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = letters
        .iter()
        .map(|letter| {
            let mut letter = letter.clone();
            let object = letter.as_object_mut().expect("a dead letter is an object");
            let attempts = object
                .remove("attempt_timestamps")
                .expect("attempt_timestamps present");
            let failed = object
                .remove("failure_timestamp")
                .expect("failure_timestamp present");
            assert!(
                failed.as_f64().is_some_and(|t| t > 1.7e9),
                "failure_timestamp is wall-clock seconds"
            );
            assert_eq!(
                attempts.as_array().map(Vec::len),
                Some(object["retry_count"].as_u64().unwrap() as usize + 1),
                "one attempt timestamp per attempt"
            );
            letter
        })
        .collect();
    out.sort_by_key(|l| {
        (
            l["original_topic"].as_str().unwrap().to_owned(),
            l["original_partition"].as_i64().unwrap_or(-1),
            l["original_offset"].as_i64().unwrap(),
        )
    });
    out
}

/// The summary's counters (no wall-clock fields, no output paths).
pub fn summary_counts(summary: &Summary) -> Value {
    serde_json::json!({
        "read": summary.read,
        "applied": summary.applied,
        "duplicates": summary.duplicates,
        "ignored": summary.ignored,
        "late": summary.late,
        "late_dropped": summary.late_dropped,
        "dlq": summary.dlq.iter().filter(|(_, n)| **n > 0).collect::<std::collections::BTreeMap<_, _>>(),
        "dlq_total": summary.dlq_total,
        "users": summary.users,
        "watermark": summary.watermark,
    })
}

/// The test broker's address (`SKEWLESS_KAFKA`, default 127.0.0.1:9092).
pub fn kafka() -> skewless::kafka::settings::BrokerSettings {
    skewless::kafka::settings::BrokerSettings::new(
        std::env::var("SKEWLESS_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into()),
    )
}

/// The test Redis (`SKEWLESS_REDIS`, default redis://127.0.0.1:6379).
pub fn redis_url() -> String {
    std::env::var("SKEWLESS_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Writes a job file that extends the repository's recsys job with `body`, keeping
/// its checkpoints in `dir`.
pub fn recsys_job(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let base = repo().join("jobs/recsys.toml");
    let checkpoints = dir.join(format!("{name}-checkpoints"));
    std::fs::write(
        &path,
        format!(
            "extends = {:?}\n{body}\n[checkpoint]\ndir = {:?}\n",
            base.display().to_string(),
            checkpoints.display().to_string()
        ),
    )
    .unwrap();
    path
}

/// [`recsys_job`] writing its views to the test Redis under `prefix`, and no JSONL
/// snapshot.
pub fn recsys_redis_job(dir: &Path, name: &str, prefix: &str) -> PathBuf {
    recsys_job(
        dir,
        name,
        &format!(
            "[sinks]\nviews_jsonl = \"\"\n[sinks.redis]\nurl = {:?}\nkey_prefix = {prefix:?}\n",
            redis_url()
        ),
    )
}

/// Every line of the files `inputs` names (in the order `skewless produce` reads them:
/// sorted by path), routed to partitions as `skewless produce` routes them.
pub fn expected_partitions(inputs: &[PathBuf], partitions: i32) -> Vec<Vec<Vec<u8>>> {
    let mut sorted: Vec<&PathBuf> = inputs.iter().collect();
    sorted.sort_by_key(|p| p.display().to_string());
    let mut out = vec![Vec::new(); partitions as usize];
    for (index, path) in sorted.into_iter().enumerate() {
        let mut bytes = Vec::new();
        let file = std::fs::File::open(path).unwrap();
        if path.extension().is_some_and(|e| e == "gz") {
            std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(file), &mut bytes).unwrap();
        } else {
            std::io::Read::read_to_end(&mut std::io::BufReader::new(file), &mut bytes).unwrap();
        }
        for line in bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.trim_ascii().is_empty())
        {
            let user = skewless::kafka::produce::user_key(line);
            let p = skewless::kafka::produce::partition_for(user.as_deref(), partitions, index as u64);
            out[p as usize].push(line.to_vec());
        }
    }
    out
}

/// Writes each partition's records to `<dir>/p<N>.jsonl`, for a backfill.
pub fn write_partitions(dir: &Path, partitions: &[Vec<Vec<u8>>]) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    partitions
        .iter()
        .enumerate()
        .map(|(i, records)| {
            let path = dir.join(format!("p{i}.jsonl"));
            let mut text = Vec::new();
            for record in records {
                text.extend_from_slice(record);
                text.push(b'\n');
            }
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

/// The views stored in Redis under `prefix`, by user id.
pub fn redis_views(url: &str, prefix: &str) -> std::collections::BTreeMap<String, Value> {
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut connection)
        .unwrap();
    keys.into_iter()
        .map(|key| {
            let text: String = redis::cmd("GET").arg(&key).query(&mut connection).unwrap();
            (
                key[prefix.len()..].to_owned(),
                serde_json::from_str(&text).unwrap(),
            )
        })
        .collect()
}

/// A view without its `as_of` (when it was written differs between live and replay).
pub fn features_and_state(view: &Value) -> Value {
    serde_json::json!({ "user_id": view["user_id"], "features": view["features"], "state": view["state"] })
}

/// Waits until `ready` holds, polling; panics after `timeout` with `what`.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
