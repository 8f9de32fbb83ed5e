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
        gzip: false,
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
