//! The JSONL view snapshot: every user's view at the end of a run, one per line,
//! sorted by `user_id`.
//!
//! Each worker writes its own sorted part (`<path>.part-<worker>`); once the dataflow
//! has finished, [`merge_parts`] merges them into the final file.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{SinkError, ViewSink, create_parent};
use crate::dlq::letter::DeadLetter;
use crate::model::view::ViewRecord;

/// One worker's part of the snapshot.
pub struct JsonlPart {
    path: PathBuf,
    out: BufWriter<File>,
}

/// The part file of `worker` for the snapshot at `path`.
pub fn part_path(path: &Path, worker: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".part-{worker}"));
    PathBuf::from(name)
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> SinkError + '_ {
    move |source| SinkError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl JsonlPart {
    /// Creates the part of `worker` for the snapshot at `path`.
    pub fn create(path: &Path, worker: usize) -> Result<JsonlPart, SinkError> {
        create_parent(path)?;
        let part = part_path(path, worker);
        let file = File::create(&part).map_err(io_error(&part))?;
        Ok(JsonlPart {
            out: BufWriter::with_capacity(1 << 20, file),
            path: part,
        })
    }
}

impl ViewSink for JsonlPart {
    fn name(&self) -> &'static str {
        "jsonl"
    }

    fn write(&mut self, views: &[ViewRecord], _dead: &mut Vec<DeadLetter>) -> Result<(), SinkError> {
        for view in views.iter().filter(|v| v.snapshot) {
            let mut line = view.to_json();
            line.push('\n');
            self.out
                .write_all(line.as_bytes())
                .map_err(io_error(&self.path))?;
        }
        Ok(())
    }

    fn finish(&mut self, _dead: &mut Vec<DeadLetter>) -> Result<(), SinkError> {
        self.out.flush().map_err(io_error(&self.path))?;
        self.out.get_ref().sync_all().map_err(io_error(&self.path))
    }
}

/// The `user_id` a snapshot line starts with.
fn line_key(line: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Key {
        user_id: String,
    }
    let mut stream = serde_json::Deserializer::from_str(line).into_iter::<Key>();
    stream
        .next()
        .and_then(Result::ok)
        .map(|k| k.user_id)
        .unwrap_or_default()
}

/// Merges the sorted parts of `workers` workers into `path` and removes them.
pub fn merge_parts(path: &Path, workers: impl IntoIterator<Item = usize>) -> Result<(), SinkError> {
    let mut parts = Vec::new();
    for worker in workers {
        let part = part_path(path, worker);
        if part.exists() {
            let file = File::open(&part).map_err(io_error(&part))?;
            parts.push((part, BufReader::with_capacity(1 << 20, file).lines()));
        }
    }
    let regular = super::replaceable(path);
    let tmp = if regular {
        path.with_extension("jsonl.tmp")
    } else {
        path.to_owned()
    };
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(io_error(&tmp))?);
    let mut heads: Vec<Option<(String, String)>> = Vec::with_capacity(parts.len());
    for (part, lines) in parts.iter_mut() {
        heads.push(next_line(lines, part)?);
    }
    while let Some(best) = smallest(&heads) {
        let (_, line) = heads[best].take().expect("smallest is some");
        out.write_all(line.as_bytes())
            .and_then(|_| out.write_all(b"\n"))
            .map_err(io_error(&tmp))?;
        let (part, lines) = &mut parts[best];
        heads[best] = next_line(lines, part)?;
    }
    out.flush().map_err(io_error(&tmp))?;
    if regular {
        out.get_ref().sync_all().map_err(io_error(&tmp))?;
    }
    if regular {
        std::fs::rename(&tmp, path).map_err(io_error(path))?;
    }
    for (part, _) in parts {
        std::fs::remove_file(&part).map_err(io_error(&part))?;
    }
    Ok(())
}

/// The part whose next line has the smallest key.
fn smallest(heads: &[Option<(String, String)>]) -> Option<usize> {
    (0..heads.len()).filter(|&i| heads[i].is_some()).min_by(|&a, &b| {
        heads[a]
            .as_ref()
            .map(|h| &h.0)
            .cmp(&heads[b].as_ref().map(|h| &h.0))
    })
}

fn next_line(
    lines: &mut std::io::Lines<BufReader<File>>,
    part: &Path,
) -> Result<Option<(String, String)>, SinkError> {
    match lines.next() {
        None => Ok(None),
        Some(line) => {
            let line = line.map_err(io_error(part))?;
            Ok(Some((line_key(&line), line)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(user: &str) -> ViewRecord {
        ViewRecord {
            user_id: user.into(),
            as_of: 1.5,
            features: "{}".into(),
            state: "{}".into(),
            changed: true,
            snapshot: true,
            ..ViewRecord::default()
        }
    }

    #[test]
    fn parts_merge_into_one_sorted_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("views.jsonl");
        let mut a = JsonlPart::create(&path, 0).unwrap();
        let mut b = JsonlPart::create(&path, 1).unwrap();
        a.write(&[view("a"), view("c"), view("e\"q")], &mut Vec::new())
            .unwrap();
        b.write(&[view("b"), view("d")], &mut Vec::new()).unwrap();
        a.finish(&mut Vec::new()).unwrap();
        b.finish(&mut Vec::new()).unwrap();
        merge_parts(&path, 0..2).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let users: Vec<String> = text.lines().map(line_key).collect();
        assert_eq!(users, vec!["a", "b", "c", "d", "e\"q"]);
        assert!(!part_path(&path, 0).exists());
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["as_of"], 1.5);
    }
}
