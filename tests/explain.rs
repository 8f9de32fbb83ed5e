//! `skewless explain`: golden timelines (duplicates, late events, rejections,
//! upcasts, a time asked about), the final view of every user of every golden job
//! case equal to the full run's, and what it says about inputs it cannot answer from.
//!
//! `SKEWLESS_BLESS=1` rewrites the expected timelines under `tests/explain/`
//! (review the diff before committing it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use serde_json::Value;
use skewless::job::Job;
use skewless::replay::Replay;
use skewless::replay::explain::Explaining;
use skewless::run::{RunOptions, run};

fn case_inputs(case: &str) -> Vec<String> {
    let dir = Path::new("tests/jobs").join(case).join("input");
    let mut inputs: Vec<String> = std::fs::read_dir(common::repo().join(&dir))
        .unwrap()
        .map(|e| dir.join(e.unwrap().file_name()).display().to_string())
        .collect();
    inputs.sort();
    inputs
}

fn explain(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_skewless"))
        .current_dir(common::repo())
        .arg("explain")
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn explain_case(case: &str, user: &str, at: Option<&str>) -> Value {
    let job = format!("tests/jobs/{case}/job.toml");
    let mut args = vec![job.as_str(), "--user", user, "--json"];
    if let Some(at) = at {
        args.extend(["--at", at]);
    }
    let inputs = case_inputs(case);
    for input in &inputs {
        args.extend(["-i", input.as_str()]);
    }
    let (ok, stdout, stderr) = explain(&args);
    assert!(ok, "explain {args:?} failed: {stderr}");
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("explain {args:?} printed no JSON ({e}): {stdout}"))
}

#[test]
fn golden_timelines() {
    let cases = [
        ("duplicates-u1", "duplicates", "u1", None),
        ("duplicates-u2", "duplicates", "u2", None),
        ("late_dlq-u1", "late_dlq", "u1", None),
        ("late_drop-u1", "late_drop", "u1", None),
        ("rejections-u1", "rejections", "u1", None),
        (
            "schema_versions-u1-at",
            "schema_versions",
            "u1",
            Some("1767225603"),
        ),
    ];
    let bless = std::env::var_os("SKEWLESS_BLESS").is_some();
    let mut failed = Vec::new();
    for (name, case, user, at) in cases {
        let got = explain_case(case, user, at);
        let path = common::repo().join(format!("tests/explain/{name}.json"));
        if bless {
            std::fs::write(&path, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
            continue;
        }
        let want: Value = serde_json::from_str(
            &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        )
        .unwrap();
        if got != want {
            failed.push(format!(
                "{name}:\n  got:  {}\n  want: {}",
                serde_json::to_string(&got).unwrap(),
                serde_json::to_string(&want).unwrap()
            ));
        }
    }
    assert!(failed.is_empty(), "timelines differ:\n{}", failed.join("\n"));
}

#[test]
fn timelines_say_what_each_record_came_to() {
    // Independent of the blessed files: the facts a reader looks for.
    let late = explain_case("late_dlq", "u1", None);
    let outcomes: Vec<(&str, &str)> = late["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["event_id"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .collect();
    assert!(outcomes.contains(&("l3", "late")), "{outcomes:?}");
    let l3 = late["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["event_id"] == "l3")
        .unwrap();
    assert!((l3["late_by"].as_f64().unwrap() - 0.1).abs() < 1e-6, "{l3}");
    assert_eq!(l3["dead_lettered"], true);

    let dups = explain_case("duplicates", "u1", None);
    let copies: Vec<&Value> = dups["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "duplicate")
        .collect();
    assert_eq!(copies.len(), 2, "{dups}");
    assert!(copies.iter().all(|c| c["of"]["offset"].is_number()), "{copies:?}");

    let rejected = explain_case("rejections", "u1", None);
    assert!(
        rejected["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["outcome"] == "rejected" && r["reason"] == "missing_required_field"),
        "{rejected}"
    );

    let upcast = explain_case("schema_versions", "u1", Some("1767225603"));
    let first = &upcast["records"][0];
    assert_eq!(first["event_version"], "1.0");
    let spend = first["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["feature"] == "total_spend")
        .unwrap();
    assert_eq!(spend["new"], 10.5, "a v1.0 `amount` is applied as `price`");
    assert!(upcast["left_out"].as_u64().unwrap() > 0);
    assert_eq!(
        upcast["view"]["features"]["n_viewed_items"], 0,
        "the view as of then"
    );
    assert_eq!(upcast["final_view"]["features"]["n_viewed_items"], 1);
}

/// Explains `user` through the library, as the command does.
fn final_view(job: &Path, inputs: &[String], user: &str, workers: usize) -> Option<Value> {
    let explaining = Arc::new(Explaining::new(user, None));
    let options = RunOptions {
        inputs: inputs
            .iter()
            .map(|i| common::repo().join(i).display().to_string())
            .collect(),
        workers,
        replay: Some(Replay::Explain(Arc::clone(&explaining))),
        ..RunOptions::default()
    };
    run(Job::load(job).unwrap(), &options).unwrap();
    explaining.explanation().view
}

#[test]
fn every_users_final_view_equals_the_full_runs() {
    let root = common::repo().join("tests/jobs");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("job.toml").exists())
        .collect();
    cases.sort();
    let mut checked = 0;
    for case in cases {
        let name = case.file_name().unwrap().to_str().unwrap().to_owned();
        let inputs = case_inputs(&name);
        for (i, view) in common::read_jsonl(&case.join("expected/views.jsonl"))
            .into_iter()
            .enumerate()
        {
            let user = view["user_id"].as_str().unwrap();
            let got = final_view(&case.join("job.toml"), &inputs, user, 1 + i % 2);
            assert_eq!(got.as_ref(), Some(&view), "{name}: user {user}");
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} users checked");
}

#[test]
fn what_it_cannot_see_it_says() {
    // A user nobody wrote about: no records, a clear note, exit 0.
    let (ok, stdout, stderr) = explain(&[
        "tests/jobs/duplicates/job.toml",
        "--user",
        "nobody",
        "-i",
        "tests/jobs/duplicates/input/a.jsonl",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("no record of user nobody in the 5 records read"),
        "{stdout}"
    );
    assert!(stdout.contains("view at the end: none"), "{stdout}");

    // A time before anything the input holds.
    let early = explain_case("duplicates", "u1", Some("2020-01-01T00:00:00Z"));
    let notes = early["notes"].to_string();
    assert!(
        notes.contains("is before the earliest record read (2026-01-01T00:00:00.000Z)"),
        "{notes}"
    );
    assert_eq!(early["view"], Value::Null);
    assert_eq!(early["left_out"], early["records"].as_array().unwrap().len());

    // A time that is not one.
    let (ok, _, stderr) = explain(&["jobs/recsys.toml", "--user", "u1", "--at", "yesterday"]);
    assert!(!ok);
    assert!(stderr.contains("`yesterday` is not a time"), "{stderr}");
}

#[test]
fn explained_views_and_late_events_match_the_full_run_on_a_generated_log() {
    // Enough records per partition that clocks are settled from waiting records
    // (thousands per batch), with late events, duplicates and malformed records.
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("log");
    let status = Command::new(env!("CARGO_BIN_EXE_skewless"))
        .args([
            "gen",
            "--events",
            "30000",
            "--users",
            "300",
            "--partitions",
            "2",
            "--span",
            "2h",
        ])
        .args([
            "--late",
            "0.02",
            "--duplicates",
            "0.02",
            "--malformed",
            "0.01",
            "--v1",
            "0.3",
        ])
        .args(["--seed", "7", "--out"])
        .arg(&logs)
        .status()
        .unwrap();
    assert!(status.success());
    let inputs: Vec<PathBuf> = {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&logs)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    };
    let job = common::repo().join("jobs/recsys.toml");
    let full = common::run_job(&job, &inputs, 2);
    let inputs: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
    let late_letters = |user: &str| {
        full.dead_letters
            .iter()
            .filter(|l| l["failure_reason"] == "late_event")
            .filter(|l| l["event"]["user_id"] == user)
            .count()
    };
    let mut late_seen = 0;
    for view in full.views.iter().step_by(full.views.len() / 12) {
        let user = view["user_id"].as_str().unwrap();
        let explaining = Arc::new(Explaining::new(user, None));
        let options = RunOptions {
            inputs: inputs.clone(),
            workers: 2,
            replay: Some(Replay::Explain(Arc::clone(&explaining))),
            ..RunOptions::default()
        };
        run(Job::load(&job).unwrap(), &options).unwrap();
        let explanation = explaining.explanation();
        assert_eq!(explanation.view.as_ref(), Some(view), "user {user}");
        let late = explanation
            .records
            .iter()
            .filter(|r| matches!(r.outcome, skewless::replay::explain::Outcome::Late { .. }))
            .count();
        assert_eq!(late, late_letters(user), "late events of user {user}");
        late_seen += late;
    }
    assert!(late_seen > 0, "the users explained had late events");
}

#[test]
fn over_kafka_it_reads_the_users_partition_and_says_from_where() {
    let dir = tempfile::tempdir().unwrap();
    let inputs: Vec<PathBuf> = case_inputs("duplicates")
        .into_iter()
        .chain(case_inputs("late_dlq"))
        .map(|p| common::repo().join(p))
        .collect();
    let topic = common::unique("explain");
    let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
    skewless::kafka::produce::produce_files(&common::kafka(), &topic, 3, &names, None).unwrap();
    // The same records as files laid out as the topic's partitions.
    let files = common::write_partitions(dir.path(), &common::expected_partitions(&inputs, 3));
    let file_args: Vec<String> = files
        .iter()
        .flat_map(|f| ["-i".to_owned(), f.display().to_string()])
        .collect();
    let brokers = common::kafka().brokers;
    let over_kafka = |user: &str, more: &[&str]| -> Value {
        let mut args = vec!["jobs/recsys.toml", "--user", user, "--json", "--topic", &topic];
        args.extend(["--brokers", &brokers, "--idle", "1s"]);
        args.extend(more);
        let (ok, stdout, stderr) = explain(&args);
        assert!(ok, "{stderr}");
        serde_json::from_str(&stdout).unwrap()
    };
    let outcomes = |explanation: &Value| -> Vec<(String, String)> {
        explanation["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["event_id"].to_string(), r["outcome"].to_string()))
            .collect()
    };
    for user in ["u1", "u2"] {
        let mut args = vec!["jobs/recsys.toml", "--user", user, "--json"];
        args.extend(file_args.iter().map(String::as_str));
        let (ok, stdout, stderr) = explain(&args);
        assert!(ok, "{stderr}");
        let from_files: Value = serde_json::from_str(&stdout).unwrap();
        let from_kafka = over_kafka(user, &[]);
        assert_eq!(outcomes(&from_kafka), outcomes(&from_files), "{user}");
        assert!(!outcomes(&from_kafka).is_empty());
        assert_eq!(
            common::features_and_state(&from_kafka["view"]),
            common::features_and_state(&from_files["view"]),
            "{user}"
        );
        let partition = skewless::kafka::produce::partition_for(Some(user), 3, 0);
        let notes = from_kafka["notes"].to_string();
        assert!(
            notes.contains(&format!(
                "read {topic}/{partition} (where the user's records go) from the earliest"
            )),
            "{notes}"
        );
        assert!(
            from_kafka["records"][0]["source"]["partition"] == partition,
            "{from_kafka}"
        );
    }
    // With a time, it seeks to that time minus the dedup horizon and the lateness.
    let notes = over_kafka("u1", &["--at", "2026-01-01T00:00:01Z"])["notes"].to_string();
    assert!(
        notes.contains("whose broker timestamp is at or after 2025-12-30T23:59:56.000Z"),
        "{notes}"
    );
}
