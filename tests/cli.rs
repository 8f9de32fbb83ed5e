//! The `skewless` command as a user runs it: the README's first command on the sample
//! data, `gen`, and clear errors for bad input.

use std::path::Path;
use std::process::Command;

/// A scratch directory that a command sees as the repository: `jobs/` and `data/`
/// are linked in, so the README's commands run as written, and whatever they write
/// (`out/<job>/...`, checkpoints included) lands in the scratch directory, never in
/// the repository, where a leftover checkpoint would change a later run.
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in ["jobs", "data"] {
        std::os::unix::fs::symlink(repo.join(name), dir.path().join(name)).unwrap();
    }
    dir
}

fn skewless(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_skewless"));
    command.current_dir(dir).env("RUST_LOG", "warn");
    command
}

#[test]
fn run_on_the_sample_data_prints_a_conserved_summary_and_where_the_views_went() {
    // The README's first command, as written: the job's default inputs and outputs.
    let dir = workspace();
    let out = |name: &str| format!("out/recsys/{name}");
    let output = skewless(dir.path())
        .args(["run", "jobs/recsys.toml", "--workers", "2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("stdout is the JSON summary");
    assert_eq!(summary["conserved"], true);
    assert_eq!(
        summary["read"], 12_000,
        "the committed sample holds 12000 records"
    );
    assert!(summary["users"].as_u64().unwrap() > 1000);
    assert!(summary["dlq"]["late_event"].as_u64().unwrap() > 0);
    assert!(summary["dlq"]["invalid_json"].as_u64().unwrap() > 0);
    assert!(
        stderr.contains(&format!("views_sqlite: {}", out("views.sqlite"))),
        "{stderr}"
    );
    assert!(
        !stderr.contains("\x1b["),
        "no colour codes when stderr is not a terminal: {stderr}"
    );
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(out("summary.json"))).unwrap())
            .unwrap();
    assert_eq!(on_disk, summary);
    assert!(dir.path().join(out("views.sqlite")).exists());
    assert!(
        !dir.path().join(out("checkpoints")).exists(),
        "a backfill that reached its end leaves no checkpoint"
    );
    let views = std::fs::read_to_string(dir.path().join(out("views.jsonl"))).unwrap();
    assert_eq!(views.lines().count() as u64, summary["users"].as_u64().unwrap());
}

#[test]
fn gen_is_deterministic_and_its_output_runs() {
    let workspace = workspace();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for dir in [a.path(), b.path()] {
        let status = skewless(dir)
            .args([
                "gen",
                "--events",
                "3000",
                "--users",
                "50",
                "--partitions",
                "3",
                "--malformed",
                "0.02",
            ])
            .args([
                "--duplicates",
                "0.02",
                "--late",
                "0.02",
                "--v1",
                "0.5",
                "--seed",
                "9",
                "--out",
            ])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success());
    }
    for name in ["part-000.jsonl.gz", "part-001.jsonl.gz", "part-002.jsonl.gz"] {
        assert_eq!(
            std::fs::read(a.path().join(name)).unwrap(),
            std::fs::read(b.path().join(name)).unwrap(),
            "{name}"
        );
    }
    let summary = a.path().join("summary.json");
    let status = skewless(workspace.path())
        .args(["run", "jobs/recsys.toml", "--input"])
        .arg(a.path().join("*.jsonl.gz"))
        .args(["--views-sqlite", &a.path().join("v.sqlite").display().to_string()])
        .args(["--dlq", &a.path().join("d.jsonl").display().to_string()])
        .args(["--summary-json", &summary.display().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(summary["read"], 3000);
    assert!(summary["duplicates"].as_u64().unwrap() > 0);
    assert!(summary["dlq_total"].as_u64().unwrap() > 0);
}

#[test]
fn an_input_that_matches_nothing_is_a_clear_error() {
    let dir = workspace();
    let output = skewless(dir.path())
        .args([
            "run",
            "jobs/recsys.toml",
            "--input",
            "no/such/dir/*.jsonl.gz",
            "--summary-json",
            "/dev/null",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("input `no/such/dir/*.jsonl.gz` matches no file"),
        "{stderr}"
    );
    assert!(!dir.path().join("no").exists());
}
