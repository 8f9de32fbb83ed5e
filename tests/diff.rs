//! `skewless diff` and `skewless views get`: a job diffed with itself, a job with one
//! decay weight changed, jobs that cannot share a decode, and view stores compared
//! (the real Redis written by a streaming job over the real broker against a
//! backfill's SQLite file), with keys changed, missing and not views at all.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;
use skewless::job::Job;
use skewless::run::{ExportMode, RunOptions, run};

fn skewless(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_skewless"))
        .current_dir(repo())
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn diff(args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["diff", "--json"];
    all.extend(args);
    let (code, stdout, stderr) = skewless(&all);
    let report =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("diff {args:?}: no JSON ({e}): {stderr}"));
    (code, report, stderr)
}

fn differing(report: &Value) -> Vec<(String, u64)> {
    report["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["users_differing"].as_u64().unwrap() > 0)
        .map(|f| {
            (
                f["feature"].as_str().unwrap().to_owned(),
                f["users_differing"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_job_diffed_with_itself_differs_in_nothing() {
    let (code, report, stderr) = diff(&["jobs/recsys.toml", "jobs/recsys.toml"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(differing(&report).is_empty(), "{report}");
    assert_eq!(report["users_a"], report["users_b"]);
    assert!(
        report["users_a"].as_u64().unwrap() > 1000,
        "the sample's users: {report}"
    );
    assert_eq!(report["only_in_a"]["users"], 0);
    assert!(report["failed"].as_array().unwrap().is_empty());
    assert!(
        report["notes"]
            .to_string()
            .contains("both jobs folded in one run from one decode"),
        "{report}"
    );
}

/// A log where users `v*` view items in a category they viewed before (their score
/// is decayed) and users `s*` only start sessions (no category score).
fn decay_log(dir: &Path) -> PathBuf {
    let mut lines = Vec::new();
    let mut n = 0;
    for u in 0..12 {
        for (i, category) in ["books", "books", "toys", "books"]
            .iter()
            .take(2 + u % 3)
            .enumerate()
        {
            n += 1;
            lines.push(format!(
                r#"{{"event_id":"e{n}","event_type":"ecommerce.item_viewed","event_version":"1.0","event_time":{},"user_id":"v{u:02}","payload":{{"item_id":"i{i}","category":"{category}"}}}}"#,
                1_767_225_600 + n
            ));
        }
    }
    for u in 0..5 {
        n += 1;
        lines.push(format!(
            r#"{{"event_id":"e{n}","event_type":"session.started","event_version":"1.0","event_time":{},"user_id":"s{u:02}"}}"#,
            1_767_225_600 + n
        ));
    }
    let path = dir.join("decay.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

#[test]
fn one_decay_weight_changed_changes_top_categories_of_the_users_with_a_decayed_score() {
    let dir = tempfile::tempdir().unwrap();
    let log = decay_log(dir.path());
    let base = repo().join("jobs/recsys.toml");
    let changed = dir.path().join("recsys-decay.toml");
    let text = std::fs::read_to_string(&base).unwrap();
    assert!(text.contains("decay = 0.95"));
    std::fs::write(&changed, text.replace("decay = 0.95", "decay = 0.5")).unwrap();
    let html = dir.path().join("diff.html");
    let (code, report, stderr) = diff(&[
        base.to_str().unwrap(),
        changed.to_str().unwrap(),
        log.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "a feature differs: {stderr}");
    assert_eq!(
        differing(&report),
        [("top_categories".to_owned(), 12)],
        "{report}"
    );
    assert_eq!(report["failed"], serde_json::json!(["top_categories"]));
    assert!(stderr.contains("features differ: top_categories"), "{stderr}");
    let top = report["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["feature"] == "top_categories")
        .unwrap();
    // Two views of books: 0.3 * 0.95 + 0.3 against 0.3 * 0.5 + 0.3.
    assert!(top["max_abs_diff"].as_f64().unwrap() >= 0.135 - 1e-9, "{top}");
    assert!(top["examples"][0]["user_id"].as_str().unwrap().starts_with('v'));
    let buckets: u64 = top["by_activity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["differing"].as_u64().unwrap())
        .sum();
    assert_eq!(
        buckets, 12,
        "every differing user is in an activity bucket: {top}"
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("<h2>top_categories</h2>") && !page.contains("http"),
        "self-contained"
    );

    // Allowed, the same difference passes the gate.
    let (code, _, stderr) = diff(&[
        base.to_str().unwrap(),
        changed.to_str().unwrap(),
        log.to_str().unwrap(),
        "--allow",
        "top_categories",
    ]);
    assert_eq!(code, 0, "{stderr}");
    // So does a tolerance wider than the difference.
    let (code, report, _) = diff(&[
        base.to_str().unwrap(),
        changed.to_str().unwrap(),
        log.to_str().unwrap(),
        "--tolerance",
        "0.5",
    ]);
    assert_eq!(code, 0, "{report}");
}

#[test]
fn jobs_that_declare_different_state_are_still_compared_by_feature() {
    let dir = tempfile::tempdir().unwrap();
    let log = decay_log(dir.path());
    let base = repo().join("jobs/recsys.toml");
    let text = std::fs::read_to_string(&base).unwrap();
    // Fewer items kept, and a feature renamed: state differs, a feature is added
    // and one removed.
    let other = dir.path().join("recsys-other.toml");
    std::fs::write(
        &other,
        text.replace("k = 100", "k = 1")
            .replace("name = \"n_viewed_items\"", "name = \"n_recent_views\""),
    )
    .unwrap();
    let (code, report, stderr) = diff(&[
        base.to_str().unwrap(),
        other.to_str().unwrap(),
        log.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "nothing both declare differs: {stderr}");
    assert_eq!(report["added_features"], serde_json::json!(["n_recent_views"]));
    assert_eq!(report["removed_features"], serde_json::json!(["n_viewed_items"]));
    assert!(
        report["notes"].to_string().contains("declare different state"),
        "{report}"
    );
    // Another lateness: the log is decoded once per job.
    let late = dir.path().join("recsys-late.toml");
    std::fs::write(
        &late,
        text.replace("allowed_lateness = \"5s\"", "allowed_lateness = \"60s\""),
    )
    .unwrap();
    let (code, report, _) = diff(&[
        base.to_str().unwrap(),
        late.to_str().unwrap(),
        log.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    assert!(
        report["notes"]
            .to_string()
            .contains("their time settings differ, so each job decoded the log itself"),
        "{report}"
    );
    // Nothing to compare: a clear message.
    let (code, _, stderr) = skewless(&["diff", "jobs/recsys.toml"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("name two job files"), "{stderr}");
}

#[test]
fn stores_agree_after_live_and_backfill_and_the_diff_finds_what_was_tampered_with() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = vec![
        repo().join("data/sample/part-000.jsonl.gz"),
        repo().join("tests/jobs/late_dlq/input/events.jsonl"),
        repo().join("tests/jobs/duplicates/input/a.jsonl"),
    ];
    let topic = unique("diff-events");
    let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
    skewless::kafka::produce::produce_files(&kafka(), &topic, 4, &names, None).unwrap();
    let prefix = format!("{}:", unique("diff"));
    let job = recsys_redis_job(dir.path(), "live", &prefix);
    let live = run(
        Job::load(&job).unwrap(),
        &RunOptions {
            workers: 2,
            topics: vec![topic.clone()],
            group: Some(unique("diff-group")),
            brokers: Some(kafka().brokers),
            exit_when_idle: Some(Duration::from_secs(2)),
            views_sqlite: Some(PathBuf::new()),
            summary: Some(PathBuf::new()),
            checkpoint_dir: Some(PathBuf::new()),
            export: ExportMode::Off,
            ..RunOptions::default()
        },
    )
    .unwrap();
    assert!(live.read > 3000);
    let files = write_partitions(&dir.path().join("partitions"), &expected_partitions(&inputs, 4));
    let backfill = run_job(&repo().join("jobs/recsys.toml"), &files, 2);
    let sqlite = backfill.dir.path().join("views.sqlite");
    let redis = format!("{}?prefix={prefix}", redis_url());

    let (code, same, stderr) = diff(&["--views", sqlite.to_str().unwrap(), "--views", &redis]);
    assert_eq!(code, 0, "live Redis and the backfill agree: {stderr}");
    assert!(differing(&same).is_empty(), "{same}");
    assert_eq!(same["only_in_a"]["users"], 0, "{same}");
    assert_eq!(same["only_in_b"]["users"], 0, "{same}");
    assert_eq!(same["users_a"], backfill.views.len());

    // One key changed, one deleted, two keys that are not views.
    let mut connection = redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let users: Vec<&str> = backfill
        .views
        .iter()
        .map(|v| v["user_id"].as_str().unwrap())
        .collect();
    let (changed, missing) = (users[3], users[7]);
    let key = format!("{prefix}{changed}");
    let mut view: Value = serde_json::from_str(
        &redis::cmd("GET")
            .arg(&key)
            .query::<String>(&mut connection)
            .unwrap(),
    )
    .unwrap();
    view["features"]["total_spend"] =
        serde_json::json!(view["features"]["total_spend"].as_f64().unwrap() + 7.0);
    redis::cmd("SET")
        .arg(&key)
        .arg(view.to_string())
        .query::<()>(&mut connection)
        .unwrap();
    redis::cmd("DEL")
        .arg(format!("{prefix}{missing}"))
        .query::<()>(&mut connection)
        .unwrap();
    redis::cmd("SET")
        .arg(format!("{prefix}junk"))
        .arg("not json")
        .query::<()>(&mut connection)
        .unwrap();
    redis::cmd("HSET")
        .arg(format!("{prefix}hash"))
        .arg("f")
        .arg("v")
        .query::<()>(&mut connection)
        .unwrap();

    let (code, found, stderr) = diff(&["--views", sqlite.to_str().unwrap(), "--views", &redis]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(differing(&found), [("total_spend".to_owned(), 1)], "{found}");
    let spend = found["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["feature"] == "total_spend")
        .unwrap();
    assert_eq!(spend["examples"][0]["user_id"], changed);
    assert!(
        (spend["max_abs_diff"].as_f64().unwrap() - 7.0).abs() < 1e-9,
        "{spend}"
    );
    assert_eq!(found["only_in_a"]["users"], 1);
    assert_eq!(found["only_in_a"]["examples"], serde_json::json!([missing]));
    let notes = found["notes"].to_string();
    assert!(
        notes.contains(&format!("key {prefix}junk: not a view")),
        "{notes}"
    );
    assert!(
        notes.contains(&format!("key {prefix}hash: not a string")),
        "{notes}"
    );

    // One user's view, readably, from either store.
    let (code, text, stderr) = skewless(&["views", "get", changed, "--store", &redis]);
    assert_eq!(code, 0, "{stderr}");
    let features_at = text.find("features:").unwrap();
    let state_at = text.find("state:").unwrap();
    assert!(features_at < state_at, "features first: {text}");
    assert!(text.contains("as_of: 2026-"), "as_of as a UTC time: {text}");
    let (code, _, stderr) = skewless(&["views", "get", missing, "--store", &redis]);
    assert_eq!(code, 1);
    assert!(stderr.contains(&format!("no view of user {missing}")), "{stderr}");
    let (code, text, _) = skewless(&["views", "get", missing, "--store", sqlite.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(text.contains(&format!("user {missing}")), "{text}");
    let (_, _, stderr) = skewless(&["views", "get", "junk", "--store", &redis]);
    assert!(stderr.contains("not a view"), "{stderr}");
    let _: () = redis::cmd("DEL")
        .arg(format!("{prefix}junk"))
        .arg(format!("{prefix}hash"))
        .query(&mut connection)
        .unwrap();
}

#[test]
fn the_second_job_folded_beside_the_first_gives_what_its_own_run_gives() {
    // The sample has duplicates, late events and rejections: the second job shares
    // the first's dedup and lateness in the diff run, and must still equal its own.
    let dir = tempfile::tempdir().unwrap();
    let base = repo().join("jobs/recsys.toml");
    let changed = dir.path().join("recsys-decay.toml");
    let text = std::fs::read_to_string(&base).unwrap();
    std::fs::write(
        &changed,
        text.replace("decay = 0.9,", "decay = 0.7,")
            .replace("\"data/sample", &format!("\"{}/data/sample", repo().display())),
    )
    .unwrap();
    let inputs: Vec<PathBuf> = (0..4)
        .map(|p| repo().join(format!("data/sample/part-{p:03}.jsonl.gz")))
        .collect();
    let own_a = run_job(&base, &inputs, 1);
    let own_b = run_job(&changed, &inputs, 2);
    let features = |views: &[Value]| -> std::collections::BTreeMap<String, Value> {
        views
            .iter()
            .map(|v| (v["user_id"].as_str().unwrap().to_owned(), v["features"].clone()))
            .collect()
    };
    let (a, b) = (features(&own_a.views), features(&own_b.views));
    let expected: Vec<(String, u64)> = ["top_categories", "total_spend"]
        .iter()
        .map(|f| {
            let n = a.iter().filter(|(user, fa)| fa[*f] != b[*user][*f]).count() as u64;
            ((*f).to_owned(), n)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(expected.len(), 1, "only the scores change: {expected:?}");
    for workers in ["1", "2"] {
        let (code, report, stderr) =
            diff(&[base.to_str().unwrap(), changed.to_str().unwrap(), "-w", workers]);
        assert_eq!(code, 1, "{stderr}");
        assert_eq!(differing(&report), expected, "{workers} workers: {report}");
        assert_eq!(report["users_b"].as_u64().unwrap() as usize, b.len());
    }
}
