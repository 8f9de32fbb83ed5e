//! Operator mistakes and hostile input, through the real binary in scratch
//! directories: each is refused with a clear message naming the flag, file or key
//! (or its record is dead-lettered), nothing panics, nothing is lost.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{read_jsonl, repo};
use serde_json::Value;

fn skewless(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_skewless"));
    command.current_dir(dir).env("RUST_LOG", "warn");
    command
}

fn recsys() -> PathBuf {
    repo().join("jobs/recsys.toml")
}

/// `skewless run` of the recsys job over `input`, without checkpoints, with each
/// `(flag, path)` output; expects exit 0 and returns the summary.
fn run_ok(dir: &Path, input: &Path, outputs: &[(&str, &Path)]) -> Value {
    let mut command = skewless(dir);
    command
        .args(["run", "--no-progress"])
        .arg(recsys())
        .arg("--input")
        .arg(input)
        .args(["--checkpoint-dir", ""]);
    for (flag, path) in outputs {
        command.arg(flag).arg(path);
    }
    serde_json::from_slice(&expect(&mut command, 0, &[]).stdout).unwrap()
}

/// Runs `command`; asserts it exits with `code` (never a panic's 101) and that its
/// stderr says each of `says`. Returns the output.
fn expect(command: &mut Command, code: i32, says: &[&str]) -> Output {
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{command:?}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{command:?} panicked:\n{stderr}");
    for text in says {
        assert!(
            stderr.contains(text),
            "{command:?}: stderr lacks {text:?}:\n{stderr}"
        );
    }
    output
}

/// A small valid log of one partition.
fn log(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn view(user: &str, item: &str, id: &str, time: f64) -> String {
    format!(
        r#"{{"event_id":"{id}","event_type":"ecommerce.item_viewed","event_version":"1.0","event_time":{time},"user_id":"{user}","payload":{{"item_id":"{item}","category":"c"}}}}"#
    )
}

/// Case 5: sizes and fractions that panicked are clear errors naming the flag or key.
#[test]
fn huge_durations_and_bad_fractions_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let input = log(dir.path(), "a.jsonl", &[view("u", "i", "e1", 1.0)]);
    expect(
        skewless(dir.path())
            .args(["run"])
            .arg(recsys())
            .arg("--input")
            .arg(&input)
            .args(["--allowed-lateness", "99999999999999999999d"]),
        2,
        &["--allowed-lateness", "longer than 10000 years"],
    );
    let job = dir.path().join("late.toml");
    std::fs::write(
        &job,
        format!(
            "extends = {:?}\n[time]\nallowed_lateness = \"99999999999999999999d\"\n",
            recsys().display().to_string()
        ),
    )
    .unwrap();
    expect(
        skewless(dir.path()).arg("validate").arg(&job),
        1,
        &["late.toml:3:", "time.allowed_lateness", "longer than 10000 years"],
    );
    for (flag, value) in [
        ("--malformed", "2.0"),
        ("--late", "nan"),
        ("--v1", "1.5"),
        ("--start", "nan"),
    ] {
        let out = dir.path().join(format!("gen{flag}"));
        expect(
            skewless(dir.path())
                .args(["gen", "--events", "10", flag, value, "--out"])
                .arg(&out),
            1,
            &[flag],
        );
        assert!(!out.exists(), "{flag} {value}: nothing written");
    }
    expect(
        skewless(dir.path()).args(["gen", "--span", "99999999999999999999d", "--out", "x"]),
        2,
        &["--span"],
    );
}

/// Case 2: one deeply nested record does not make the dead-letter queue unreadable,
/// and a line that is not a letter is skipped and counted.
#[test]
fn a_deeply_nested_record_leaves_the_dead_letters_readable() {
    let dir = tempfile::tempdir().unwrap();
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let input = log(dir.path(), "a.jsonl", &[view("u", "i", "e1", 1.0), deep.clone()]);
    let dlq = dir.path().join("dlq.jsonl");
    let summary = run_ok(dir.path(), &input, &[("--dlq", &dlq)]);
    // It does not parse within the parser's nesting limit: invalid_json, kept raw.
    assert_eq!(summary["dlq"]["invalid_json"], 1, "{summary}");
    let letters = read_jsonl(&dlq);
    assert!(
        letters[0]["failure_detail"]
            .as_str()
            .unwrap()
            .contains("recursion limit"),
        "{}",
        letters[0]
    );
    assert_eq!(letters[0]["event"], Value::Null);
    assert_eq!(letters[0]["raw"], deep.as_str());
    // A line that is no letter at all (an editor's slip) is skipped, not fatal.
    let mut text = std::fs::read_to_string(&dlq).unwrap();
    text.push_str(&format!("{deep}\n"));
    std::fs::write(&dlq, text).unwrap();
    let output = expect(
        skewless(dir.path())
            .args(["dlq", "inspect", "--json", "--file"])
            .arg(&dlq),
        0,
        &["dlq.jsonl:2: skipped"],
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["total"], 1, "{report}");
    assert_eq!(report["unreadable"], 1, "{report}");
}

/// Case 4: a backfill stopped by SIGINT says so (exit 130, `interrupted`, the
/// watermark it reached), and the same command again finishes it exactly.
#[test]
fn an_interrupted_backfill_says_so_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    expect(
        skewless(dir.path()).args([
            "gen",
            "--events",
            "300000",
            "--users",
            "3000",
            "--partitions",
            "2",
            "--no-gzip",
            "--out",
            "in",
        ]),
        0,
        &[],
    );
    let run = |dir: &Path| {
        let mut command = skewless(dir);
        command
            .args(["run", "--no-progress", "--workers", "2"])
            .arg(recsys())
            .args(["--input", "in/*.jsonl", "--views-jsonl", "out/views.jsonl"]);
        command
    };
    let child = run(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stop it once it has written its first checkpoint directory entry or after a
    // moment, whichever is first: the input takes seconds to read.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(300) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted before the end of the input"),
        "{stderr}"
    );
    let stopped: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(stopped["interrupted"], true);
    assert_eq!(stopped["conserved"], true);
    let read = stopped["read"].as_u64().unwrap();
    assert!(read < 300_000, "stopped early: {stopped}");
    let watermark = stopped["watermark"].as_f64().unwrap();
    for view in read_jsonl(&dir.path().join("out/views.jsonl")) {
        assert_eq!(
            view["as_of"].as_f64(),
            Some(watermark),
            "views say where the run stopped"
        );
    }

    let output = expect(&mut run(dir.path()), 0, &[]);
    let finished: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(finished["interrupted"], false);
    assert_eq!(finished["read"], 300_000);
    assert!(finished["resumed_from_checkpoint"].is_u64(), "{finished}");
    let resumed = read_jsonl(&dir.path().join("out/views.jsonl"));

    let fresh = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(dir.path().join("in"), fresh.path().join("in")).unwrap();
    let output = expect(&mut run(fresh.path()), 0, &[]);
    let whole: Value = serde_json::from_slice(&output.stdout).unwrap();
    for count in [
        "read",
        "applied",
        "duplicates",
        "late",
        "dlq_total",
        "users",
        "watermark",
    ] {
        assert_eq!(finished[count], whole[count], "{count}");
    }
    assert_eq!(resumed, read_jsonl(&fresh.path().join("out/views.jsonl")));
}

/// Case 8: a directory without segments is an error that names what it skipped.
#[test]
fn a_directory_without_segments_is_an_error_naming_the_skipped_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    for name in ["a.json", "b.json.gz"] {
        std::fs::write(input.join(name), view("u", "i", name, 1.0) + "\n").unwrap();
    }
    expect(
        skewless(dir.path())
            .arg("run")
            .arg(recsys())
            .args(["--input", "in", "--checkpoint-dir", ""]),
        1,
        &["holds no .jsonl or .jsonl.gz segment", "a.json", "b.json.gz"],
    );
}

/// Case 10: the small things.
#[test]
fn flags_that_do_not_fit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = log(dir.path(), "a.jsonl", &[view("u", "i", "e1", 1.0)]);
    let run = || {
        let mut command = skewless(dir.path());
        command.arg("run").arg(recsys()).arg("--input").arg(&input);
        command
    };
    let help = expect(skewless(dir.path()).args(["run", "-h"]), 0, &[]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("--hostfile"));
    expect(
        run().args(["--workers", "0"]),
        1,
        &["--workers must be at least 1"],
    );
    expect(
        run().args(["--topic", "events"]),
        1,
        &["--input reads files and --topic reads Kafka"],
    );
    expect(
        run().args(["--checkpoint-interval", "0s"]),
        1,
        &["--checkpoint-interval must be longer than 0 s"],
    );
    expect(
        skewless(dir.path()).args(["validate", "no-such.toml"]),
        1,
        &["cannot read job file no-such.toml: No such file or directory"],
    );
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[job\nname = 1\n").unwrap();
    let output = expect(
        skewless(dir.path()).arg("validate").arg(&broken),
        1,
        &["TOML syntax"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid job: 1 problem"),
        "only the syntax error, no follow-on guesses:\n{stderr}"
    );
    expect(
        skewless(dir.path()).args(["checkpoint", "list", "no-such-dir"]),
        1,
        &["no checkpoint directory no-such-dir"],
    );
}

/// Case 1: an output on an input, on another output, or where the next run would read
/// it is refused before anything is written, naming both uses.
#[test]
fn outputs_never_overwrite_inputs_or_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    let original = view("u", "i", "e1", 1.0) + "\n";
    std::fs::write(x.join("a.jsonl"), &original).unwrap();
    // A spine file is an input too.
    let y = dir.path().join("y");
    std::fs::create_dir(&y).unwrap();
    let spine = "row_id,user_id,ts\nr1,u,1\n";
    std::fs::write(y.join("spine.csv"), spine).unwrap();
    let run = |extra: &[&str]| {
        let mut command = skewless(dir.path());
        command
            .arg("run")
            .arg(recsys())
            .args(["--checkpoint-dir", "", "--views-sqlite", "v.sqlite"])
            .args(extra);
        command
    };
    for (args, says) in [
        (
            &["-i", "x/a.jsonl", "--dlq", "x/a.jsonl"][..],
            &["--dlq x/a.jsonl is an input of this run"][..],
        ),
        (
            &["-i", "x/a.jsonl", "--views-jsonl", "./x/../x/a.jsonl"],
            &["--views-jsonl"],
        ),
        (
            &["-i", "x/a.jsonl", "--summary-json", "x/a.jsonl"],
            &["--summary-json"],
        ),
        (
            &["-i", "x/a.jsonl", "--views-jsonl", "o.jsonl", "--dlq", "o.jsonl"],
            &["--views-jsonl and --dlq are both o.jsonl"],
        ),
        (
            &["-i", "x/a.jsonl", "--views-jsonl", "v.sqlite"],
            &["--views-sqlite and --views-jsonl are both v.sqlite"],
        ),
        (
            &["-i", "x/*.jsonl", "--dlq", "x/dead.jsonl"],
            &["--dlq x/dead.jsonl matches the input x/*.jsonl"],
        ),
        (
            &["-i", "x", "--views-jsonl", "x/views.jsonl"],
            &["inside the input directory x"],
        ),
        (
            &["-i", "x/a.jsonl", "--spine", "y/spine.csv", "--export-dir", "y"],
            &["--export-dir y is an input of this run (--spine y/spine.csv)"],
        ),
        (
            &[
                "-i",
                "x/a.jsonl",
                "--spine",
                "y/spine.csv",
                "--skew-report",
                "y/spine.csv",
            ],
            &["--skew-report y/spine.csv is an input of this run (--spine y/spine.csv)"],
        ),
    ] {
        expect(&mut run(args), 1, says);
        assert_eq!(
            std::fs::read_to_string(x.join("a.jsonl")).unwrap(),
            original,
            "{args:?}"
        );
        assert!(!dir.path().join("v.sqlite").exists(), "{args:?}: nothing opened");
        assert_eq!(
            std::fs::read_to_string(y.join("spine.csv")).unwrap(),
            spine,
            "{args:?}"
        );
        for written in [&x, &y] {
            assert_eq!(
                std::fs::read_dir(written).unwrap().count(),
                1,
                "{args:?}: nothing written"
            );
        }
    }
}

/// Case 6: a resume under other time settings, or over inputs that changed since the
/// checkpoint, is refused (it would count records as neither run did).
#[test]
fn a_resume_refuses_other_time_settings_and_changed_inputs() {
    use skewless::job::{Job, LatePolicy};
    use skewless::model::span::Span;
    use skewless::run::{RunOptions, run_files};
    use skewless::synthetic::{GenOptions, generate};

    let dir = tempfile::tempdir().unwrap();
    let make = |seed: u64| {
        generate(&GenOptions {
            out: dir.path().join("in"),
            events: 4000,
            users: 200,
            partitions: 2,
            late: 0.01,
            duplicates: 0.01,
            seed,
            compression: None,
            ..GenOptions::default()
        })
        .unwrap()
    };
    make(1);
    let job = Job::load(&recsys()).unwrap();
    let options = |stop_after: Option<u64>| RunOptions {
        inputs: vec![dir.path().join("in/*.jsonl").display().to_string()],
        views_sqlite: Some(dir.path().join("v.sqlite")),
        views_jsonl: Some(dir.path().join("views.jsonl")),
        dlq: Some(dir.path().join("dlq.jsonl")),
        summary: Some(dir.path().join("summary.json")),
        checkpoint_dir: Some(dir.path().join("checkpoints")),
        export_dir: Some(dir.path().join("training")),
        skew_report: Some(dir.path().join("skew.json")),
        stop_after,
        ..RunOptions::default()
    };
    assert!(run_files(job.clone(), &options(Some(1500))).unwrap().interrupted);

    let refused = |options: RunOptions, says: &str| {
        let error = run_files(job.clone(), &options).unwrap_err().to_string();
        assert!(error.contains(says), "{error}");
        assert!(error.contains("--fresh"), "{error}");
    };
    let mut other = options(None);
    other.late_policy = Some(LatePolicy::Drop);
    refused(other, "late_policy drop");
    let mut other = options(None);
    other.allowed_lateness = Some(Span::secs(60));
    refused(other, "this run has allowed_lateness 60s");

    // The same file names, other contents.
    make(2);
    refused(options(None), "are not those the checkpoint read");
    let mut fresh = options(None);
    fresh.fresh = true;
    let summary = run_files(job, &fresh).unwrap();
    assert_eq!(summary.read, 4000);
}

/// Case 3: a run that fails leaves the previous run's outputs as they were, and no
/// debris beside them.
#[test]
fn a_failed_run_leaves_the_previous_outputs_and_no_debris() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let good = log(
        dir.path(),
        "good.jsonl",
        &[
            view("u", "i", "e1", 1.0),
            "not json".to_owned(),
            view("v", "j", "e2", 2.0),
        ],
    );
    // A gzip file cut short: the second run fails on it after reading the good file.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for i in 0..2000 {
        writeln!(gz, "{}", view("w", "k", &format!("g{i}"), 3.0)).unwrap();
    }
    let bytes = gz.finish().unwrap();
    let cut = dir.path().join("cut.jsonl.gz");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = dir.path().join("out");
    let run = |inputs: &[&Path]| {
        let mut command = skewless(dir.path());
        command.arg("run").arg(recsys()).arg("--no-progress");
        for input in inputs {
            command.arg("--input").arg(input);
        }
        for (flag, name) in [
            ("--views-sqlite", "views.sqlite"),
            ("--views-jsonl", "views.jsonl"),
            ("--dlq", "dlq.jsonl"),
            ("--summary-json", "summary.json"),
            ("--export-dir", "training"),
            ("--skew-report", "skew.json"),
        ] {
            command.arg(flag).arg(out.join(name));
        }
        command
            .arg("--checkpoint-dir")
            .arg(dir.path().join("checkpoints"));
        command
    };
    expect(&mut run(&[&good]), 0, &[]);
    let listing = || {
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = listing();
    assert_eq!(
        before,
        [
            "dlq.jsonl",
            "skew.html",
            "skew.json",
            "summary.json",
            "training",
            "training.jsonl",
            "views.jsonl",
            "views.sqlite"
        ]
    );
    // A file's bytes; a directory's (the training dataset) paths and bytes.
    fn tree_bytes(path: &Path) -> Vec<u8> {
        if !path.is_dir() {
            return std::fs::read(path).unwrap();
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        entries
            .iter()
            .flat_map(|e| [e.display().to_string().into_bytes(), tree_bytes(e)])
            .flatten()
            .collect()
    }
    let contents =
        |names: &[String]| -> Vec<Vec<u8>> { names.iter().map(|n| tree_bytes(&out.join(n))).collect() };
    let saved = contents(&before);
    expect(&mut run(&[&good, &cut]), 1, &["cut.jsonl.gz"]);
    assert_eq!(listing(), before, "no debris");
    assert_eq!(contents(&before), saved, "the previous outputs are as they were");
}

fn purchase(user: &str, id: &str, time: f64, price: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","event_type":"ecommerce.purchase_completed","event_version":"2.0","event_time":{time},"user_id":"{user}","payload":{{"item_id":"i-{id}","price":{price},"category":"c"}}}}"#
    )
}

/// Case 9: a sum that would overflow is never written as null: the event that would
/// overflow it is dead-lettered. Integers beyond 2^53 are read as the nearest double.
#[test]
fn numbers_that_would_overflow_are_dead_lettered_and_big_integers_round() {
    let dir = tempfile::tempdir().unwrap();
    let input = log(
        dir.path(),
        "a.jsonl",
        &[
            purchase("u", "p1", 1.0, "1e308"),
            purchase("u", "p2", 2.0, "1e308"),
            purchase("v", "p3", 1.0, "9007199254740993"),
        ],
    );
    let views = dir.path().join("views.jsonl");
    let dlq = dir.path().join("dlq.jsonl");
    let summary = run_ok(dir.path(), &input, &[("--views-jsonl", &views), ("--dlq", &dlq)]);
    assert_eq!(summary["applied"], 2, "{summary}");
    assert_eq!(summary["dlq"]["invalid_field_type"], 1, "{summary}");
    let letters = read_jsonl(&dlq);
    assert_eq!(letters[0]["event"]["event_id"], "p2");
    assert!(
        letters[0]["failure_detail"]
            .as_str()
            .unwrap()
            .contains("overflows"),
        "{}",
        letters[0]
    );
    let views = read_jsonl(&views);
    assert_eq!(views[0]["state"]["total_spend"], 1e308, "{}", views[0]);
    assert_eq!(views[0]["features"]["n_purchased_items"], 1);
    // 2^53 + 1 has no double: it is read as 2^53.
    assert_eq!(
        views[1]["state"]["total_spend"], 9007199254740992.0,
        "{}",
        views[1]
    );
}

/// Case 7: a stop request ends a run whose read never returns (a FIFO without a
/// writer, `/dev/zero`) within a couple of seconds, instead of never.
#[test]
fn a_stop_is_honoured_while_a_read_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.jsonl");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for input in [fifo.as_path(), Path::new("/dev/zero")] {
        let mut child = skewless(dir.path())
            .args(["run", "--no-progress"])
            .arg(recsys())
            .arg("--input")
            .arg(input)
            .args(["--checkpoint-dir", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let stopped = Instant::now();
        assert!(
            Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if stopped.elapsed() > Duration::from_secs(10) {
                child.kill().unwrap();
                panic!("{}: SIGINT was not honoured within 10 s", input.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(130), "{}", input.display());
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert!(stderr.contains("the run was blocked"), "{stderr}");
        // What it had written aside is gone, as after any failed run.
        let out = dir.path().join("out/recsys");
        let debris: Vec<_> = std::fs::read_dir(&out)
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|name| name.contains(".partial"))
                    .collect()
            })
            .unwrap_or_default();
        assert!(debris.is_empty(), "{}: {debris:?}", input.display());
    }
}

/// Outputs sent to /dev/null are written there, never replaced by a rename (as root a
/// rename would turn the device into a file).
#[test]
fn outputs_to_dev_null_leave_it_a_device() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let input = log(
        dir.path(),
        "a.jsonl",
        &[view("u", "i", "e1", 1.0), "{".to_owned()],
    );
    let null = Path::new("/dev/null");
    let summary = run_ok(
        dir.path(),
        &input,
        &[
            ("--dlq", null),
            ("--summary-json", null),
            ("--views-jsonl", null),
            ("--views-sqlite", &dir.path().join("v.sqlite")),
        ],
    );
    assert_eq!(summary["read"], 2);
    assert!(std::fs::metadata(null).unwrap().file_type().is_char_device());
    assert!(!Path::new("/dev/null.partial").exists());
}
