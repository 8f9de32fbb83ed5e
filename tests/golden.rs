//! Golden job tests: every directory under `tests/jobs/` is a case with a `job.toml`,
//! its input partitions (`input/`, each entry one partition), and the expected
//! `views.jsonl`, `dlq.jsonl` and `summary.json` under `expected/`, and for jobs that
//! export training data the rows (`training.jsonl`) and the skew report (`skew.json`).
//!
//! Each case runs with 1, 2 and 4 workers, with its partitions named in reverse order,
//! and stopped halfway (with 1 and with 2 workers) then resumed from the checkpoint
//! the stop took; all runs must give the expected outputs exactly. Every failing case
//! is reported by name. The SQLite views must equal
//! the JSONL views. `SKEWLESS_BLESS=1` rewrites the expected files from the 1-worker
//! run (review the diff before committing it).

mod common;

use std::path::{Path, PathBuf};

use common::{
    Outputs, normalize_dead_letters, run_job, run_job_restarted, run_job_restarted_split, run_job_split,
    summary_counts,
};
use serde_json::Value;

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/jobs");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/jobs exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.join("job.toml").exists())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no golden cases under {}", root.display());
    cases
}

fn partitions(case: &Path) -> Vec<PathBuf> {
    let dir = case.join("input");
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("readable entry").path())
        .collect();
    inputs.sort();
    // Paths relative to the repository root, as a user would name them.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    inputs
        .into_iter()
        .map(|p| p.strip_prefix(root).map(Path::to_path_buf).unwrap_or(p))
        .collect()
}

fn read_expected(path: &Path) -> Vec<Value> {
    common::read_jsonl(path)
}

fn assert_same(case: &str, what: &str, got: &[Value], want: &[Value]) {
    if got == want {
        return;
    }
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g != w {
            panic!(
                "{case}: {what} differ at record {}\n  got:  {}\n  want: {}",
                i + 1,
                serde_json::to_string(g).unwrap(),
                serde_json::to_string(w).unwrap()
            );
        }
    }
    panic!("{case}: {what}: got {} records, want {}", got.len(), want.len());
}

#[test]
fn golden_jobs() {
    // Relative input paths resolve against the repository root.
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).expect("cd to the repository root");
    let bless = std::env::var_os("SKEWLESS_BLESS").is_some();
    let mut failed = Vec::new();
    let cases = cases();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        if bless {
            bless_case(case);
            continue;
        }
        if let Err(panic) = std::panic::catch_unwind(|| check_case(case, &name)) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("{name}: {message}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} golden cases failed:\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n")
    );
}

/// Rewrites a case's expected files from a 1-worker run.
fn bless_case(case: &Path) {
    let outputs = run_job(&case.join("job.toml"), &partitions(case), 1);
    let expected = case.join("expected");
    std::fs::create_dir_all(&expected).unwrap();
    let lines = |values: &[Value]| {
        values
            .iter()
            .map(|v| serde_json::to_string(v).unwrap() + "\n")
            .collect::<String>()
    };
    std::fs::write(expected.join("views.jsonl"), lines(&outputs.views)).unwrap();
    std::fs::write(
        expected.join("dlq.jsonl"),
        lines(&normalize_dead_letters(&outputs.dead_letters)),
    )
    .unwrap();
    let summary = serde_json::to_string_pretty(&summary_counts(&outputs.summary)).unwrap() + "\n";
    std::fs::write(expected.join("summary.json"), summary).unwrap();
    if !outputs.rows.is_empty() {
        std::fs::write(expected.join("training.jsonl"), lines(&outputs.rows)).unwrap();
    }
    if let Some(skew) = outputs.skew.as_ref().filter(|s| s["rows"].as_i64() > Some(0)) {
        std::fs::write(
            expected.join("skew.json"),
            serde_json::to_string_pretty(skew).unwrap() + "\n",
        )
        .unwrap();
    }
}

/// Runs one case every way and compares each run with its expected outputs.
fn check_case(case: &Path, name: &str) {
    let job = case.join("job.toml");
    let inputs = partitions(case);
    let expected = case.join("expected");
    let want_views = read_expected(&expected.join("views.jsonl"));
    let want_dlq = read_expected(&expected.join("dlq.jsonl"));
    let want_summary: Value =
        serde_json::from_str(&std::fs::read_to_string(expected.join("summary.json")).unwrap()).unwrap();
    let want_rows = if expected.join("training.jsonl").exists() {
        read_expected(&expected.join("training.jsonl"))
    } else {
        Vec::new()
    };
    let want_skew: Option<Value> = std::fs::read_to_string(expected.join("skew.json"))
        .ok()
        .map(|text| serde_json::from_str(&text).unwrap());
    let check = |label: &str, outputs: Outputs| {
        assert_same(label, "training rows", &outputs.rows, &want_rows);
        if let Some(want) = &want_skew {
            assert_eq!(outputs.skew.as_ref(), Some(want), "{label}: skew report");
        }
        assert_same(label, "views", &outputs.views, &want_views);
        assert_same(label, "SQLite views", &outputs.sqlite_views, &want_views);
        assert_same(
            label,
            "dead letters",
            &normalize_dead_letters(&outputs.dead_letters),
            &want_dlq,
        );
        assert_eq!(summary_counts(&outputs.summary), want_summary, "{label}: summary");
    };
    let mut reversed = inputs.clone();
    reversed.reverse();
    for (workers, inputs) in [(1, &inputs), (2, &inputs), (4, &inputs), (3, &reversed)] {
        check(
            &format!("{name} ({workers} workers)"),
            run_job(&job, inputs, workers),
        );
    }
    // Every file cut into byte ranges that every worker reads (a few records each).
    for (workers, bytes, inputs) in [(2, 300, &inputs), (3, 700, &reversed), (1, 300, &inputs)] {
        check(
            &format!("{name} ({workers} workers, files read in {bytes}-byte ranges)"),
            run_job_split(&job, inputs, workers, Some(bytes)),
        );
    }
    let read = want_summary["read"]
        .as_u64()
        .expect("the summary counts records read");
    if read >= 8 {
        let label = format!("{name} (2 workers, 300-byte ranges, stopped, resumed)");
        check(
            &label,
            run_job_restarted_split(&job, &inputs, 2, read / 4, Some(300)),
        );
    }

    for workers in [1, 2] {
        // Halfway through the records each worker reads.
        let stop_after = read / (2 * workers as u64);
        if stop_after == 0 {
            continue;
        }
        let label = format!("{name} ({workers} workers, stopped after {stop_after} records, resumed)");
        check(&label, run_job_restarted(&job, &inputs, workers, stop_after));
    }
}

#[test]
fn a_stopped_export_resumes_to_the_same_rows_however_the_workers_interleave() {
    // Where two workers learn of a checkpoint's cut at different moments, and one of
    // them holds its capability at the cut as soon as it stops, the other's fold once
    // applied a spine event (e05) ahead of an equal-time event not yet read (e04), so
    // the resumed run's row missed it: about one run in thirty. Many runs, every one
    // exact.
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).expect("cd to the repository root");
    let case = Path::new("tests/jobs/export_labels");
    let want = read_expected(&case.join("expected/training.jsonl"));
    let mut wrong = Vec::new();
    for run in 0..80 {
        let outputs = run_job_restarted(&case.join("job.toml"), &partitions(case), 2, 3);
        if outputs.rows != want {
            wrong.push(run);
        }
    }
    assert!(wrong.is_empty(), "runs {wrong:?} of 80 gave other rows");
}

#[test]
fn zstd_archives_read_as_the_gzip_ones_do() {
    // The sample as .jsonl.zst, one partition as two frames joined (segments
    // concatenated with `cat`), gives the gzip sample's views, dead letters and counts.
    let dir = tempfile::tempdir().unwrap();
    let mut gz = Vec::new();
    let mut zst = Vec::new();
    for p in 0..4 {
        let path = common::repo().join(format!("data/sample/part-{p:03}.jsonl.gz"));
        let mut text = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::MultiGzDecoder::new(std::fs::File::open(&path).unwrap()),
            &mut text,
        )
        .unwrap();
        let middle = text.len() / 2 + text[text.len() / 2..].iter().position(|&b| b == b'\n').unwrap() + 1;
        let mut frames = zstd::encode_all(&text[..middle], 3).unwrap();
        frames.extend(zstd::encode_all(&text[middle..], 3).unwrap());
        let out = dir.path().join(format!("part-{p:03}.jsonl.zst"));
        std::fs::write(&out, frames).unwrap();
        gz.push(path);
        zst.push(out);
    }
    let job = common::repo().join("jobs/recsys.toml");
    let from_gz = run_job(&job, &gz, 2);
    let from_zst = run_job(&job, &zst, 2);
    assert_eq!(from_zst.views, from_gz.views);
    assert_eq!(
        summary_counts(&from_zst.summary),
        summary_counts(&from_gz.summary)
    );
    assert_eq!(from_zst.dead_letters.len(), from_gz.dead_letters.len());
    assert!(from_gz.summary.read == 12_000, "{:?}", from_gz.summary.read);
}
