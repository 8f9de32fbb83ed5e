//! Before a run opens anything for writing: no output may be an input, another
//! output, or a file the next run would read back as input. Each refusal names both
//! uses of the path.

use std::path::{Component, Path, PathBuf};

use super::RunError;
use crate::job::Job;
use crate::source::file::{FilePartition, is_segment};

/// One use of a path by the run.
struct Use {
    what: &'static str,
    path: PathBuf,
    /// The path as the user wrote it, for messages.
    shown: String,
}

/// `path` made absolute against the working directory, with `.` and `..` resolved
/// lexically (outputs need not exist yet, so no symlinks are followed), and through
/// the parent's real path where the parent exists (so `a/../b` and a symlinked
/// directory name the same file).
fn absolute(path: &Path) -> PathBuf {
    let joined = std::env::current_dir().unwrap_or_default().join(path);
    let mut clean = PathBuf::new();
    for part in joined.components() {
        match part {
            Component::ParentDir => {
                clean.pop();
            }
            Component::CurDir => {}
            other => clean.push(other),
        }
    }
    match (
        clean.parent().and_then(|p| p.canonicalize().ok()),
        clean.file_name(),
    ) {
        (Some(parent), Some(name)) => parent.join(name),
        _ => clean,
    }
}

/// Refuses a run whose outputs collide with each other or with its inputs.
/// `partitions` are the file inputs (empty for Kafka), `patterns` the input paths
/// or globs as given, `spine` the spine file (`--spine`).
pub fn check(
    job: &Job,
    partitions: &[FilePartition],
    patterns: &[String],
    spine: Option<&Path>,
) -> Result<(), RunError> {
    let sinks = &job.sinks;
    let mut outputs = Vec::new();
    for (what, path) in [
        ("--views-sqlite", &sinks.views_sqlite),
        ("--views-jsonl", &sinks.views_jsonl),
        ("--dlq", &sinks.dlq),
        ("--summary-json", &sinks.summary),
        ("--checkpoint-dir", &job.checkpoint.dir),
    ] {
        if let Some(path) = path {
            outputs.push(Use {
                what,
                path: absolute(path),
                shown: path.display().to_string(),
            });
        }
    }
    if let Some(export) = &job.export {
        let dir = export.formats.parquet.then_some(&export.dir);
        for (what, path) in [
            ("--export-dir", dir),
            ("the export's JSONL form", export.formats.jsonl.as_ref()),
            ("--skew-report", export.skew.report.as_ref()),
            ("the skew report's HTML", export.skew.html.as_ref()),
        ] {
            if let Some(path) = path {
                outputs.push(Use {
                    what,
                    path: absolute(path),
                    shown: path.display().to_string(),
                });
            }
        }
    }
    let refuse = |message: String| Err(RunError::Options(message));
    for (i, a) in outputs.iter().enumerate() {
        for b in &outputs[i + 1..] {
            // Two outputs may both go to a device such as /dev/null.
            if a.path == b.path && !a.path.starts_with("/dev") {
                return refuse(format!(
                    "{} and {} are both {}: one would overwrite the other",
                    a.what, b.what, a.shown
                ));
            }
            // The checkpoint directory holds files of its own.
            for (dir, file) in [(a, b), (b, a)] {
                if dir.what == "--checkpoint-dir" && file.path.starts_with(&dir.path) {
                    return refuse(format!(
                        "{} {} is inside {} {}",
                        file.what, file.shown, dir.what, dir.shown
                    ));
                }
            }
        }
    }
    // An output that is an input, or a directory that holds one.
    let destroys = |input: &Path, shown: &str| {
        let input = absolute(input);
        match outputs.iter().find(|o| input.starts_with(&o.path)) {
            Some(output) => refuse(format!(
                "{} {} is an input of this run ({shown}): the run would destroy what it reads",
                output.what, output.shown
            )),
            None => Ok(()),
        }
    };
    if let Some(spine) = spine {
        destroys(spine, &format!("--spine {}", spine.display()))?;
    }
    for partition in partitions {
        let root = absolute(Path::new(&partition.name));
        for segment in &partition.segments {
            destroys(segment, &segment.display().to_string())?;
        }
        // A segment written inside a directory partition is read by the next run.
        for output in &outputs {
            if output.path.starts_with(&root) && output.path != root && is_segment(&output.path) {
                return refuse(format!(
                    "{} {} is inside the input directory {}: the next run would read it as input",
                    output.what, output.shown, partition.name
                ));
            }
        }
    }
    for pattern in patterns.iter().filter(|p| p.contains(['*', '?', '['])) {
        let Ok(glob) = glob::Pattern::new(&absolute(Path::new(pattern)).to_string_lossy()) else {
            continue;
        };
        for output in &outputs {
            if glob.matches_path(&output.path) {
                return refuse(format!(
                    "{} {} matches the input {pattern}: the next run would read it as input",
                    output.what, output.shown
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_compare_after_dots_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        assert_eq!(
            absolute(&dir.path().join("link/x.jsonl")),
            absolute(&dir.path().join("real/./sub/../x.jsonl"))
        );
    }
}
