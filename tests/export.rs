//! The training export as its users meet it: pyarrow reading the Parquet dataset,
//! the skew report of a simulated serving store that lags (and of one that does
//! not), and `skewless skew` as a gate.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::run_job;
use skewless::synthetic::{GenOptions, generate};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Python with pyarrow that `scripts/test.sh` installs (`SKEWLESS_PYTHON`).
fn python() -> PathBuf {
    std::env::var_os("SKEWLESS_PYTHON").map_or_else(
        || {
            let home = std::env::var_os("HOME").expect("HOME is set");
            Path::new(&home).join(".cache/skewless/venv/bin/python")
        },
        PathBuf::from,
    )
}

fn sample() -> Vec<PathBuf> {
    (0..4)
        .map(|p| repo().join(format!("data/sample/part-{p:03}.jsonl.gz")))
        .collect()
}

#[test]
fn pyarrow_reads_the_partitioned_dataset_as_the_jsonl_form() {
    let outputs = run_job(&repo().join("jobs/recsys.toml"), &sample(), 2);
    let dataset = outputs.dir.path().join("training");
    let dates: Vec<String> = std::fs::read_dir(&dataset)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(dates.iter().any(|d| d == "dt=2026-01-01"), "{dates:?}");
    let output = Command::new(python())
        .arg(repo().join("tests/python/read_export.py"))
        .arg(&dataset)
        .arg(outputs.dir.path().join("training.jsonl"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {} (scripts/test.sh installs it): {e}",
                python().display()
            )
        });
    assert!(
        output.status.success(),
        "pyarrow disagrees with the JSONL form:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with(&format!("ok {} rows", outputs.rows.len())),
        "{stdout}"
    );
}

/// Generates a log whose impressions carry what a store lagging `lag` served.
fn log_with_store(dir: &Path, lag: (f64, f64), wrong_values: f64) -> Vec<PathBuf> {
    let report = generate(&GenOptions {
        out: dir.to_owned(),
        events: 20_000,
        users: 300,
        partitions: 2,
        span: 6.0 * 3600.0,
        // No out-of-order events: an exact store then knows every earlier event.
        lateness: 0.0,
        serving_lag: lag,
        wrong_values,
        compression: None,
        ..GenOptions::default()
    })
    .unwrap();
    report.files
}

#[test]
fn a_store_that_is_exact_has_no_skew_and_a_lagging_one_is_stale_not_wrong() {
    // The generator's store is an independent implementation of DESIGN.md section 5:
    // with no lag and no wrong values, every served value equals the replay's.
    let exact = tempfile::tempdir().unwrap();
    let outputs = run_job(
        &repo().join("jobs/recsys.toml"),
        &log_with_store(exact.path(), (0.0, 0.0), 0.0),
        2,
    );
    let report = outputs.skew.expect("a skew report");
    assert!(report["rows"].as_u64().unwrap() > 500, "{report}");
    for feature in report["features"].as_array().unwrap() {
        assert_eq!(feature["served_missing"], 0, "{feature}");
        assert_eq!(feature["mismatches"], 0, "{feature}");
    }

    // A store 5 to 30 s behind: mismatches, all from staleness of 1 s or more.
    let lagging = tempfile::tempdir().unwrap();
    let outputs = run_job(
        &repo().join("jobs/recsys.toml"),
        &log_with_store(lagging.path(), (5.0, 30.0), 0.0),
        2,
    );
    let report = outputs.skew.expect("a skew report");
    assert!(report["overall"]["mismatches"].as_u64().unwrap() > 0, "{report}");
    for feature in report["features"].as_array().unwrap() {
        let stale = &feature["by_staleness"];
        assert!(
            stale.get("<1s").is_none(),
            "no served value is fresher than 5 s: {stale}"
        );
        assert!(
            stale.get("unknown").is_none(),
            "every snapshot says its as_of: {stale}"
        );
    }
}

#[test]
fn the_skew_report_is_the_same_byte_for_byte_for_any_number_of_workers() {
    // Its means are sums of thousands of differences that the workers' counters add
    // up in whatever order their batches meet: held exactly, they come out the same.
    let dir = tempfile::tempdir().unwrap();
    let log = log_with_store(dir.path(), (0.5, 45.0), 0.05);
    let job = repo().join("jobs/recsys.toml");
    let first = run_job(&job, &log, 1);
    let one = first.skew.expect("a skew report");
    assert!(one["overall"]["mismatches"].as_u64().unwrap() > 100, "{one}");
    // The page's examples are each feature's first mismatches in event time,
    // whichever worker met them first.
    let page = first.skew_html.expect("an HTML report");
    assert!(page.contains("<th>row_id</th>"), "no example rows: {page}");
    let mut reversed = log.clone();
    reversed.reverse();
    for (workers, log, split) in [(2, &log, None), (3, &reversed, Some(64 * 1024))] {
        let other = common::run_job_split(&job, log, workers, split);
        assert_eq!(
            serde_json::to_string(&other.skew.expect("a skew report")).unwrap(),
            serde_json::to_string(&one).unwrap(),
            "{workers} workers"
        );
        assert!(
            other.skew_html.as_ref() == Some(&page),
            "{workers} workers: the HTML report differs"
        );
    }
}

#[test]
fn a_stopped_and_resumed_run_reports_the_skew_of_every_spine_event() {
    // Three days, so that the rows of the first day or so close (and are compared)
    // before the stop, and their counters travel in the checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let log = generate(&GenOptions {
        out: dir.path().to_owned(),
        events: 20_000,
        users: 300,
        partitions: 2,
        span: 3.0 * 86_400.0,
        serving_lag: (0.5, 45.0),
        wrong_values: 0.05,
        compression: None,
        ..GenOptions::default()
    })
    .unwrap()
    .files;
    let job = repo().join("jobs/recsys.toml");
    let whole = run_job(&job, &log, 2);
    let read = whole.summary.read;
    let total = whole.skew.as_ref().unwrap()["rows"].as_i64().unwrap();
    assert!(total > 500, "{total}");
    // Resumed on as many workers, and on another number of them.
    for workers in [(2, 2), (2, 3)] {
        let resumed = common::run_job_restarted_on(&job, &log, workers, read / 2, None);
        assert_eq!(resumed.rows.len(), whole.rows.len());
        let stopped = resumed.stopped.as_ref().and_then(|s| s.skew.as_ref()).unwrap();
        assert!(
            stopped.rows > total / 10 && stopped.rows < total,
            "{workers:?}: the stopped run compared {} of {total} spine events",
            stopped.rows
        );
        assert_eq!(
            serde_json::to_string(&resumed.skew).unwrap(),
            serde_json::to_string(&whole.skew).unwrap(),
            "{workers:?}"
        );
        // And the page shows the examples the uninterrupted run shows: the earliest
        // of them were met before the stop and come from the checkpoint.
        let page = whole.skew_html.as_ref().expect("an HTML report");
        assert!(
            resumed.skew_html.as_ref() == Some(page),
            "{workers:?}: the HTML report differs"
        );
    }
}

#[test]
fn skew_exits_1_naming_the_features_over_their_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let case = repo().join("tests/jobs/export_skew");
    let output = Command::new(env!("CARGO_BIN_EXE_skewless"))
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .arg("skew")
        .arg(case.join("job.toml"))
        .arg(case.join("input/a.jsonl"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("serving skew over its threshold: total_spend"),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("the report on stdout");
    assert_eq!(report["failed"], serde_json::json!(["total_spend"]));
    // The report and its page, and nothing else: no views, rows or dead letters.
    let html = std::fs::read_to_string(dir.path().join("out/recsys/skew.html")).unwrap();
    assert!(
        html.contains("<svg") && !html.contains("<script"),
        "self-contained"
    );
    assert!(!dir.path().join("out/recsys/views.sqlite").exists());
    assert!(!dir.path().join("out/recsys/training").exists());
}

/// Runs the export_labels case with `--spine` and returns the rows and dead letters.
fn with_spine(spine: &Path) -> (Vec<serde_json::Value>, Vec<serde_json::Value>, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let case = repo().join("tests/jobs/export_labels");
    let options = skewless::run::RunOptions {
        inputs: vec![
            case.join("input/a.jsonl").display().to_string(),
            case.join("input/b.jsonl").display().to_string(),
        ],
        workers: 2,
        views_sqlite: Some(PathBuf::new()),
        views_jsonl: Some(PathBuf::new()),
        dlq: Some(dir.path().join("dlq.jsonl")),
        summary: Some(PathBuf::new()),
        checkpoint_dir: Some(PathBuf::new()),
        export_dir: Some(dir.path().join("training")),
        skew_report: Some(dir.path().join("skew.json")),
        spine: Some(spine.to_owned()),
        ..skewless::run::RunOptions::default()
    };
    let job = skewless::job::Job::load(&case.join("job.toml")).unwrap();
    let summary = skewless::run::run(job, &options).unwrap();
    (
        common::read_jsonl(&dir.path().join("training.jsonl")),
        common::read_jsonl(&dir.path().join("dlq.jsonl")),
        serde_json::to_value(summary.spine_rows).unwrap(),
    )
}

#[test]
fn a_spine_file_gives_point_in_time_rows_and_dead_letters_its_bad_rows() {
    const T0: f64 = 1_767_225_600.0;
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("spine.jsonl");
    std::fs::write(
        &jsonl,
        [
            // At the time of u1's events e04, e05 (the log's impression) and e06: after
            // all three.
            format!(
                r#"{{"row_id":"s1","user_id":"u1","ts":{},"item_id":"i1"}}"#,
                T0 + 20.0
            ),
            // A user with no history, before anything happened.
            format!(r#"{{"row_id":"s2","user_id":"u9","ts":{}}}"#, T0 + 5.0),
            r#"{"row_id":"s3","user_id":"u1"}"#.to_owned(),
            format!(r#"{{"row_id":"s4","user_id":"","ts":{}}}"#, T0),
            r#"{"row_id":"s5","user_id":"u1","ts":"noon"}"#.to_owned(),
        ]
        .join("\n"),
    )
    .unwrap();
    let (rows, letters, counts) = with_spine(&jsonl);
    assert_eq!(counts, serde_json::json!({"read": 5, "dead_lettered": 3}));
    let ids: Vec<&str> = rows.iter().map(|r| r["row_id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["s1", "s2"],
        "only the file's rows: the log's impressions are not the spine"
    );
    let s1 = &rows[0];
    assert_eq!(s1["event_id"], "");
    assert_eq!(s1["item_id"], "i1");
    assert_eq!(s1["n_viewed_items"], 2, "e01 and e04 come before it");
    assert_eq!(
        s1["n_purchased_items"], 1,
        "e06, at its own time, comes before it"
    );
    assert_eq!(s1["label_viewed_30m"], true, "e07 at exactly ts + 30 m");
    assert_eq!(
        s1["label_purchased_24h"], false,
        "e09 is late, i1 was never bought"
    );
    assert_eq!(
        s1["label_spend_24h"], 12.25,
        "e10 only: e06 is not after it, e09 is late"
    );
    assert_eq!(s1["model_version"], serde_json::Value::Null);
    let s2 = &rows[1];
    assert_eq!(
        (s2["n_viewed_items"].clone(), s2["item_id"].clone()),
        (0.into(), "".into())
    );
    let lines: Vec<(String, i64)> = letters
        .iter()
        // The log's own dead letter (its late e09) is there too.
        .filter(|l| l["failure_reason"] == "invalid_spine_row")
        .map(|l| {
            (
                l["original_topic"].as_str().unwrap().to_owned(),
                l["original_offset"].as_i64().unwrap(),
            )
        })
        .collect();
    let path = jsonl.display().to_string();
    assert_eq!(lines, [(path.clone(), 3), (path.clone(), 4), (path, 5)]);

    // The same rows from CSV and from Parquet (ts as a timestamp column).
    let csv = dir.path().join("spine.csv");
    std::fs::write(
        &csv,
        format!(
            "row_id,user_id,ts,item_id\ns1,u1,{},i1\ns2,u9,{},\n",
            T0 + 20.0,
            T0 + 5.0
        ),
    )
    .unwrap();
    assert_eq!(with_spine(&csv).0, rows);
    let parquet = dir.path().join("spine.parquet");
    {
        use arrow_array::{ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray};
        use std::sync::Arc;
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("row_id", Arc::new(StringArray::from(vec!["s1", "s2"]))),
            ("user_id", Arc::new(StringArray::from(vec!["u1", "u9"]))),
            (
                "ts",
                Arc::new(TimestampMillisecondArray::from(vec![
                    (T0 as i64 + 20) * 1000,
                    (T0 as i64 + 5) * 1000,
                ])),
            ),
            ("item_id", Arc::new(StringArray::from(vec![Some("i1"), None]))),
        ];
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let file = std::fs::File::create(&parquet).unwrap();
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }
    assert_eq!(with_spine(&parquet).0, rows);
}
