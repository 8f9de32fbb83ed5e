//! Archived logs as partitions: `.jsonl`, `.jsonl.gz` and `.jsonl.zst` files, or
//! directories whose files, sorted by name, are one partition's segments (how an
//! archive of one Kafka partition is laid out).

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::Xxh3;

use flate2::read::MultiGzDecoder;

use super::lines::{Line, LineReader};
use super::{Read, Record, Source, SourceError};

/// One partition: a name and its segment files in reading order.
#[derive(Debug, Clone, PartialEq)]
pub struct FilePartition {
    /// The path as given (file or directory); for a byte range of a file, the path
    /// and where the range starts (`path@start`).
    pub name: String,
    /// The files to read, in order.
    pub segments: Vec<PathBuf>,
    /// A byte range of one big plain file, read while other workers read the rest.
    pub range: Option<ByteRange>,
}

/// A byte range of one plain `.jsonl` file, starting at a line, with what a
/// sequential read of the file knows when it gets there.
#[derive(Debug, Clone, PartialEq)]
pub struct ByteRange {
    /// The file's partition name: records are ordered (and their copies told apart)
    /// by it, as if the file were read whole.
    pub file: String,
    /// First byte.
    pub start: u64,
    /// The byte after the last.
    pub end: u64,
    /// Lines of the file before `start`.
    pub lines_before: i64,
    /// Records (non-blank lines) of the file before `start`.
    pub records_before: i64,
    /// The largest `event_time` of the valid records before `start`: the file's
    /// partition clock there.
    pub clock: Option<f64>,
}

/// Whether a file name is a log segment.
pub fn is_segment(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    name.ends_with(".jsonl") || name.ends_with(".jsonl.gz") || name.ends_with(".jsonl.zst")
}

/// Expands `inputs` (paths or globs) into partitions, sorted by name.
pub fn resolve_partitions(inputs: &[String]) -> Result<Vec<FilePartition>, SourceError> {
    let mut partitions = Vec::new();
    for input in inputs {
        let paths: Vec<PathBuf> = if input.contains(['*', '?', '[']) {
            let matches = glob::glob(input).map_err(|e| SourceError::BadGlob {
                pattern: input.clone(),
                message: e.to_string(),
            })?;
            matches.filter_map(Result::ok).collect()
        } else {
            vec![PathBuf::from(input)]
        };
        if paths.is_empty() || paths.iter().any(|p| !p.exists()) {
            return Err(SourceError::NoMatch(input.clone()));
        }
        for path in paths {
            let segments = if path.is_dir() {
                let listing = std::fs::read_dir(&path).map_err(|source| SourceError::Io {
                    path: path.display().to_string(),
                    line: 0,
                    source,
                })?;
                let (mut files, mut skipped): (Vec<PathBuf>, Vec<PathBuf>) = listing
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.is_file())
                    .partition(|p| is_segment(p));
                files.sort();
                skipped.sort();
                let skipped: Vec<String> = skipped.iter().map(|p| p.display().to_string()).collect();
                if files.is_empty() {
                    return Err(SourceError::NoSegments {
                        dir: path.display().to_string(),
                        skipped,
                    });
                }
                for file in &skipped {
                    tracing::warn!(%file, "skipping a file that is not a .jsonl, .jsonl.gz or .jsonl.zst segment");
                }
                files
            } else {
                vec![path.clone()]
            };
            partitions.push(FilePartition {
                name: path.display().to_string(),
                segments,
                range: None,
            });
        }
    }
    partitions.sort_by(|a, b| a.name.cmp(&b.name));
    partitions.dedup_by(|a, b| a.name == b.name);
    Ok(partitions)
}

/// A segment being read.
struct Open {
    path: String,
    reader: LineReader<Box<dyn std::io::Read>>,
    line: i64,
}

struct PartitionReader {
    partition: FilePartition,
    next_segment: usize,
    open: Option<Open>,
    /// Records handed out so far, over all segments.
    records: i64,
    /// A digest of those records' bytes.
    digest: Xxh3,
}

/// Reads file partitions.
pub struct FileSource {
    partitions: Vec<PartitionReader>,
    line_limit: usize,
}

impl FileSource {
    /// A source over `partitions`; lines above `max_event_bytes` are cut short.
    pub fn new(partitions: Vec<FilePartition>, max_event_bytes: usize) -> FileSource {
        FileSource {
            partitions: partitions
                .into_iter()
                .map(|partition| PartitionReader {
                    records: partition.range.as_ref().map_or(0, |r| r.records_before),
                    partition,
                    next_segment: 0,
                    open: None,
                    digest: Xxh3::new(),
                })
                .collect(),
            line_limit: max_event_bytes,
        }
    }

    /// Reads past the first `records` records of `partition`, to resume where a
    /// checkpoint left it. Fails when the partition has fewer, or (given the digest
    /// the checkpoint recorded) when they are not the records the checkpoint saw: it
    /// is not the input the checkpoint was taken over.
    pub fn skip(&mut self, partition: usize, records: i64, digest: Option<u64>) -> Result<(), SourceError> {
        while self.partitions[partition].records < records {
            let want = (records - self.partitions[partition].records).min(1 << 16) as usize;
            if self.read(partition, want, &mut |_| {})? == Read::Finished {
                let reader = &self.partitions[partition];
                return Err(SourceError::Resume(format!(
                    "{} has {} records, but the checkpoint resumes after {records}",
                    reader.partition.name, reader.records
                )));
            }
        }
        let reader = &self.partitions[partition];
        if let Some(expected) = digest
            && reader.digest.digest() != expected
        {
            return Err(SourceError::Resume(format!(
                "{}: its first {records} records are not those the checkpoint read (the input changed since)",
                reader.partition.name
            )));
        }
        Ok(())
    }
}

fn open_segment(path: &Path, limit: usize, range: Option<&ByteRange>) -> Result<Open, SourceError> {
    let name = path.display().to_string();
    let io = |source| SourceError::Io {
        path: name.clone(),
        line: 0,
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    if let Some(range) = range {
        use std::io::{Read as _, Seek as _};
        file.seek(std::io::SeekFrom::Start(range.start)).map_err(io)?;
        return Ok(Open {
            path: name.clone(),
            reader: LineReader::new(Box::new(file.take(range.end - range.start)), limit),
            line: range.lines_before,
        });
    }
    let reader: Box<dyn std::io::Read> = match path.extension().and_then(|e| e.to_str()) {
        Some("gz") => Box::new(MultiGzDecoder::new(BufReader::with_capacity(1 << 18, file))),
        // Concatenated frames (segments joined with `cat`) read as one stream.
        Some("zst") => {
            Box::new(zstd::Decoder::with_buffer(BufReader::with_capacity(1 << 18, file)).map_err(io)?)
        }
        _ => Box::new(file),
    };
    Ok(Open {
        path: name,
        reader: LineReader::new(reader, limit),
        line: 0,
    })
}

impl Source for FileSource {
    fn partition_names(&self) -> Vec<String> {
        self.partitions.iter().map(|p| p.partition.name.clone()).collect()
    }

    fn partition_keys(&self) -> Vec<String> {
        self.partitions
            .iter()
            .map(|p| {
                p.partition
                    .range
                    .as_ref()
                    .map_or(&p.partition.name, |r| &r.file)
                    .clone()
            })
            .collect()
    }

    fn start_clock(&self, partition: usize) -> Option<f64> {
        self.partitions[partition]
            .partition
            .range
            .as_ref()
            .and_then(|r| r.clock)
    }

    fn read(
        &mut self,
        partition: usize,
        max: usize,
        emit: &mut dyn FnMut(Record<'_>),
    ) -> Result<Read, SourceError> {
        let limit = self.line_limit;
        let reader = &mut self.partitions[partition];
        let mut count = 0;
        while count < max {
            if reader.open.is_none() {
                let Some(path) = reader.partition.segments.get(reader.next_segment) else {
                    return Ok(if count == 0 {
                        Read::Finished
                    } else {
                        Read::Records(count)
                    });
                };
                reader.open = Some(open_segment(path, limit, reader.partition.range.as_ref())?);
                reader.next_segment += 1;
            }
            let open = reader.open.as_mut().expect("opened above");
            let line = open.reader.next_line().map_err(|source| SourceError::Io {
                path: open.path.clone(),
                line: open.line,
                source,
            })?;
            let Some(line) = line else {
                reader.open = None;
                continue;
            };
            open.line += 1;
            let (bytes, oversized_len) = match line {
                Line::Full(bytes) if bytes.trim_ascii().is_empty() => continue,
                Line::Full(bytes) => (bytes, None),
                Line::Oversized { head, len } => (head, Some(len)),
            };
            emit(Record {
                bytes,
                oversized_len,
                topic: &open.path,
                partition: None,
                offset: open.line,
                sequence: reader.records,
                key: None,
                broker_timestamp_ms: None,
            });
            count += 1;
            reader.records += 1;
            reader.digest.update(bytes);
            reader
                .digest
                .update(&oversized_len.unwrap_or(bytes.len()).to_le_bytes());
        }
        Ok(Read::Records(count))
    }

    fn position(&self, partition: usize) -> i64 {
        self.partitions[partition].records
    }

    fn digest(&self, partition: usize) -> Option<u64> {
        Some(self.partitions[partition].digest.digest())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn directories_are_partitions_of_sorted_segments_and_blank_lines_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let part = dir.join("p0");
        std::fs::create_dir(&part).unwrap();
        std::fs::write(part.join("00000002.jsonl"), "c\n").unwrap();
        let mut gz = flate2::write::GzEncoder::new(
            File::create(part.join("00000001.jsonl.gz")).unwrap(),
            flate2::Compression::fast(),
        );
        gz.write_all(b"a\n\n  \nb\n").unwrap();
        gz.finish().unwrap();
        std::fs::write(part.join("notes.txt"), "ignored").unwrap();
        std::fs::write(dir.join("single.jsonl"), "x\ny").unwrap();

        let inputs = vec![
            dir.join("single.jsonl").display().to_string(),
            part.display().to_string(),
        ];
        let partitions = resolve_partitions(&inputs).unwrap();
        assert_eq!(partitions.len(), 2);
        let mut source = FileSource::new(partitions, 1 << 20);
        let names = source.partition_names();
        let p0 = names.iter().position(|n| n.ends_with("p0")).unwrap();
        let mut seen = Vec::new();
        let mut emit = |r: Record<'_>| {
            seen.push((
                String::from_utf8(r.bytes.to_vec()).unwrap(),
                r.topic.rsplit('/').next().unwrap().to_owned(),
                r.offset,
            ))
        };
        assert_eq!(source.read(p0, 10, &mut emit).unwrap(), Read::Records(3));
        assert_eq!(source.read(p0, 10, &mut emit).unwrap(), Read::Finished);
        assert_eq!(
            seen,
            vec![
                ("a".into(), "00000001.jsonl.gz".into(), 1),
                ("b".into(), "00000001.jsonl.gz".into(), 4),
                ("c".into(), "00000002.jsonl".into(), 1),
            ]
        );
    }

    #[test]
    fn a_glob_that_matches_nothing_is_an_error() {
        let err = resolve_partitions(&["/nonexistent/*.jsonl".into()]).unwrap_err();
        assert!(err.to_string().contains("matches no file"), "{err}");
    }
}
