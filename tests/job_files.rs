//! Job files: every job in the repository loads, and bad job files are refused with
//! every problem named by file, line, column and key, by the library and by
//! `skewless validate`.

use std::path::{Path, PathBuf};
use std::process::Command;

use skewless::job::{Job, JobError, Problem};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn job_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("jobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    for case in std::fs::read_dir(repo().join("tests/jobs")).unwrap() {
        let job = case.unwrap().path().join("job.toml");
        if job.exists() {
            files.push(job);
        }
    }
    files.sort();
    files
}

#[test]
fn every_job_in_the_repository_loads() {
    let files = job_files();
    assert!(files.iter().any(|f| f.ends_with("jobs/recsys.toml")), "{files:?}");
    for file in files {
        if let Err(error) = Job::load(&file) {
            panic!("{} does not load:\n{error}", file.display());
        }
    }
}

#[test]
fn the_recsys_job_declares_the_reference_features() {
    let job = Job::load(&repo().join("jobs/recsys.toml")).unwrap();
    let states: Vec<&str> = job.features.states.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        states,
        [
            "purchased_items",
            "viewed_items",
            "category_interests",
            "total_spend",
            "session_start_time",
            "last_active_time"
        ]
    );
    let features: Vec<&str> = job.features.features.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        features,
        [
            "n_purchased_items",
            "n_viewed_items",
            "total_spend",
            "top_categories",
            "session_active",
            "last_active_time"
        ]
    );
    assert_eq!(job.time.allowed_lateness.as_secs_f64(), 5.0);
    assert_eq!(job.time.dedup_horizon.as_secs_f64(), 86_400.0);
    assert_eq!(job.max_event_bytes, 1 << 20);
}

/// Writes `text` to a job file next to a copy of the recsys job, loads it, and
/// returns its problems.
fn load_bad(text: &str) -> (PathBuf, Vec<Problem>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo().join("jobs/recsys.toml"), dir.path().join("recsys.toml")).unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    match Job::load(&path) {
        Ok(_) => panic!("{text}\n--- loaded, but should have been refused"),
        Err(JobError::Invalid(problems)) => (path, problems, dir),
        Err(other) => panic!("unexpected error: {other}"),
    }
}

fn has(problems: &[Problem], file: &Path, line: usize, key: &str, says: &str) {
    assert!(
        problems
            .iter()
            .any(|p| p.file == file && p.line == line && p.key == key && p.message.contains(says)),
        "no problem at {}:{line} `{key}` saying {says:?}; got:\n{}",
        file.display(),
        problems
            .iter()
            .map(|p| format!("  {p}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn unknown_keys_and_bad_values_are_named_by_line_and_key() {
    let (file, problems, _dir) = load_bad(
        r#"extends = "recsys.toml"
colour = "blue"

[time]
allowed_lateness = "5x"
late_polcy = "drop"

[sinks]
views_sqlite = 7
"#,
    );
    has(&problems, &file, 2, "colour", "unknown key");
    has(
        &problems,
        &file,
        5,
        "time.allowed_lateness",
        "invalid duration `5x`",
    );
    has(
        &problems,
        &file,
        6,
        "time.late_polcy",
        "unknown field `late_polcy`",
    );
    has(&problems, &file, 9, "sinks.views_sqlite", "invalid type");
    assert_eq!(problems.len(), 4, "{problems:#?}");
}

#[test]
fn unknown_fields_inside_a_section_are_refused() {
    let (file, problems, _dir) = load_bad("extends = \"recsys.toml\"\n[time]\nlate_polcy = \"drop\"\n");
    has(
        &problems,
        &file,
        3,
        "time.late_polcy",
        "unknown field `late_polcy`",
    );
}

#[test]
fn references_to_unknown_types_fields_and_states_are_refused_all_at_once() {
    let (file, problems, _dir) = load_bad(
        r#"[[events]]
type = "shop.viewed"
version = 1
fields.item = { type = "string", required = true }
fields.price = { type = "number", default = "free" }

[[state]]
name = "seen"
agg = "distinct"
on = ["shop.viewd"]
field = "item"

[[state]]
name = "spend"
agg = "sum"
on = ["shop.viewed"]
field = "item"

[[state]]
name = "spend"
agg = "count"
on = ["shop.viewed"]

[[features]]
name = "top"
fn = "top_k"
of = "spend"
k = 3

[[features]]
name = "n"
fn = "count"
of = "nothing"
"#,
    );
    has(
        &problems,
        &file,
        5,
        "events[0].fields.price.default",
        "default must be a number",
    );
    has(
        &problems,
        &file,
        10,
        "state[0].on[0]",
        "no `[[events]]` schema declares type `shop.viewd`",
    );
    has(
        &problems,
        &file,
        17,
        "state[1].field",
        "cannot read `item`, a string field",
    );
    has(&problems, &file, 20, "state[2].name", "unique");
    has(&problems, &file, 27, "features[0].fn", "does not apply");
    has(
        &problems,
        &file,
        33,
        "features[1].of",
        "no state is named `nothing`",
    );
    assert!(problems.len() >= 6);
}

#[test]
fn syntax_errors_and_missing_bases_are_located() {
    let (file, problems, _dir) = load_bad("[time]\nallowed_lateness = \"5s\n");
    assert!(
        problems
            .iter()
            .any(|p| p.file == file && p.line == 2 && p.message.contains("TOML syntax")),
        "{problems:#?}"
    );
    let (file, problems, _dir) = load_bad("extends = \"missing.toml\"\n");
    has(&problems, &file, 1, "extends", "no such job file");
}

#[test]
fn the_validate_command_checks_every_file_and_fails_on_a_bad_one() {
    let binary = env!("CARGO_BIN_EXE_skewless");
    let good = Command::new(binary)
        .arg("validate")
        .args(job_files())
        .output()
        .unwrap();
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert!(stdout.contains("jobs/recsys.toml: ok"), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[time]\nallowed_lateness = \"soon\"\n").unwrap();
    let output = Command::new(binary)
        .arg("validate")
        .arg(repo().join("jobs/recsys.toml"))
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("{}:2:", bad.display())), "{stderr}");
    assert!(stderr.contains("`time.allowed_lateness`"), "{stderr}");
}

#[test]
fn every_bad_field_of_one_entry_is_reported_without_follow_up_noise() {
    let (file, problems, _dir) = load_bad(
        r#"extends = "recsys.toml"
[[state]]
agg = "sideways"
on = ["session.started"]
field = 12
"#,
    );
    has(&problems, &file, 3, "state[0].agg", "unknown variant `sideways`");
    has(&problems, &file, 5, "state[0].field", "invalid type");
    has(&problems, &file, 2, "state[0]", "missing field `name`");
    assert_eq!(problems.len(), 3, "{problems:#?}");
}

#[test]
fn decay_weights_outside_zero_to_one_and_infinite_increments_are_refused() {
    let (file, problems, _dir) = load_bad(
        r#"[[events]]
type = "shop.viewed"
version = 1
fields.category = { type = "string", required = true }

[[events]]
type = "shop.bought"
version = 1
fields.category = { type = "string", required = true }

[[state]]
name = "interests"
agg = "decayed_score"
group_by = "category"
weights."shop.viewed" = { decay = 1.5, increment = 1.0 }
weights."shop.bought" = { decay = 0.9, increment = inf }
"#,
    );
    has(
        &problems,
        &file,
        15,
        "state[0].weights.\"shop.viewed\"",
        "`decay` must be above 0 and at most 1, not 1.5",
    );
    has(
        &problems,
        &file,
        16,
        "state[0].weights.\"shop.bought\"",
        "`increment` must be a finite number, not inf",
    );
}

#[test]
fn export_labels_and_skew_are_checked_like_every_other_section() {
    let (file, problems, _dir) = load_bad(
        r#"extends = "recsys.toml"

[export]
spine = "recommendation.items_shown"
explode = "model_version"
carry = ["no_such_field"]
formats = ["parquet"]

[[labels]]
name = "clicked"
on = ["ecommerce.item_viewed"]
window = "30m"
match = "sku"
fn = "any"

[[labels]]
name = "spend"
on = ["ecommerce.purchase_completed"]
window = "0s"
fn = "sum"

[skew]
max_mismatch_rate = 1.5
per_feature = { no_such_feature = 0.1 }
"#,
    );
    has(&problems, &file, 5, "export.explode", "it must be a string_list");
    has(
        &problems,
        &file,
        6,
        "export.carry[0]",
        "has no field `no_such_field`",
    );
    has(&problems, &file, 13, "labels[0].match", "has no field `sku`");
    has(&problems, &file, 19, "labels[1].window", "longer than 0 s");
    has(&problems, &file, 17, "labels[1].field", "`sum` needs `field`");
    has(&problems, &file, 23, "skew.max_mismatch_rate", "between 0 and 1");
    has(
        &problems,
        &file,
        24,
        "skew.per_feature.no_such_feature",
        "no feature is named",
    );
}

#[test]
fn an_unknown_export_format_is_named() {
    let (file, problems, _dir) =
        load_bad("extends = \"recsys.toml\"\n[export]\nformats = [\"parquet\", \"csv\"]\n");
    has(
        &problems,
        &file,
        3,
        "export.formats[1]",
        "unknown variant `csv`, expected `parquet` or `jsonl`",
    );
}

#[test]
fn online_views_and_the_partition_skew_are_checked() {
    let (file, problems, _dir) = load_bad(
        "extends = \"recsys.toml\"\n[time]\nmax_partition_skew = \"soon\"\n[sinks]\nonline = \"eventually\"\n",
    );
    has(
        &problems,
        &file,
        3,
        "time.max_partition_skew",
        "invalid duration `soon`",
    );
    has(
        &problems,
        &file,
        5,
        "sinks.online",
        "unknown variant `eventually`, expected `provisional` or `final`",
    );
    let job = Job::load(&repo().join("jobs/feature-materializer.toml")).unwrap();
    assert_eq!(job.sinks.online, skewless::job::OnlineViews::Provisional);
    assert_eq!(job.time.max_partition_skew.as_secs_f64(), 60.0);
}
