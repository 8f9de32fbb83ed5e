//! The archive: every record a job reads, per partition, as zstd (the default) or
//! gzip segment files `<dir>/<topic>/<partition>/<first-offset>.jsonl.zst` (`.gz`)
//! that a backfill reads back as partitions (a directory of segments in name order
//! is one partition).
//!
//! A segment is written under a hidden temporary name and renamed once closed (rolled
//! by size or age, or at the end of the run), so a reader never sees half a segment.
//! Offsets are zero-padded so name order is offset order. [`Archive::durable`] says up
//! to where a partition is in closed segments: offsets are committed only that far.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::write::GzEncoder;

use super::SinkError;
use crate::model::span::Span;

/// How archive segments are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArchiveCompression {
    /// `.jsonl.zst`: decompresses several times faster than gzip.
    #[default]
    Zstd,
    /// `.jsonl.gz`, for readers that only know gzip.
    Gzip,
}

/// A job's archive sink.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchiveSink {
    /// Root directory.
    pub dir: PathBuf,
    /// Segment size limit (uncompressed bytes).
    pub roll_bytes: u64,
    /// Segment age limit.
    pub roll_interval: Span,
    /// How segments are compressed.
    pub compression: ArchiveCompression,
}

/// A segment's compressed writer.
enum Encoder {
    Gzip(GzEncoder<BufWriter<File>>),
    Zstd(zstd::Encoder<'static, BufWriter<File>>),
}

impl Encoder {
    fn new(compression: ArchiveCompression, file: File) -> std::io::Result<Encoder> {
        let buffered = BufWriter::with_capacity(1 << 16, file);
        Ok(match compression {
            ArchiveCompression::Gzip => Encoder::Gzip(GzEncoder::new(buffered, Compression::default())),
            // Level 3, zstd's default: faster than gzip's default and smaller.
            ArchiveCompression::Zstd => Encoder::Zstd(zstd::Encoder::new(buffered, 3)?),
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(out) => out.write_all(bytes),
            Encoder::Zstd(out) => out.write_all(bytes),
        }
    }

    /// Ends the stream (gzip trailer, zstd frame end).
    fn finish(self) -> std::io::Result<BufWriter<File>> {
        match self {
            Encoder::Gzip(out) => out.finish(),
            Encoder::Zstd(out) => out.finish(),
        }
    }
}

fn extension(compression: ArchiveCompression) -> &'static str {
    match compression {
        ArchiveCompression::Gzip => "jsonl.gz",
        ArchiveCompression::Zstd => "jsonl.zst",
    }
}

/// An open segment.
struct Segment {
    tmp: PathBuf,
    path: PathBuf,
    out: Encoder,
    bytes: u64,
    opened: Instant,
    /// The offset after the last record written.
    next: i64,
}

/// One partition's place in the archive.
struct PartitionArchive {
    dir: PathBuf,
    open: Option<Segment>,
    /// The offset after the last record in a closed segment; -1 before any.
    durable: i64,
}

/// One worker's archive writer.
pub struct Archive {
    partitions: Vec<PartitionArchive>,
    roll_bytes: u64,
    roll_interval: Duration,
    compression: ArchiveCompression,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SinkError + '_ {
    move |source| SinkError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Archive {
    /// An archive under `sink.dir` for partitions named `topic/partition`.
    pub fn new(sink: &ArchiveSink, partition_names: &[String]) -> Archive {
        Archive {
            partitions: partition_names
                .iter()
                .map(|name| PartitionArchive {
                    dir: sink.dir.join(name),
                    open: None,
                    durable: -1,
                })
                .collect(),
            roll_bytes: sink.roll_bytes,
            roll_interval: sink.roll_interval.duration(),
            compression: sink.compression,
        }
    }

    /// Appends one record of `partition` at `offset`. Line breaks inside a record
    /// become spaces (JSON whitespace), so each record stays one line.
    pub fn append(
        &mut self,
        partition: usize,
        offset: i64,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), SinkError> {
        let p = &mut self.partitions[partition];
        if p.open.is_none() {
            std::fs::create_dir_all(&p.dir).map_err(io(&p.dir))?;
            let name = format!("{:020}.{}", offset.max(0), extension(self.compression));
            let path = p.dir.join(&name);
            let tmp = p.dir.join(format!(".{name}.tmp"));
            let file = File::create(&tmp).map_err(io(&tmp))?;
            let out = Encoder::new(self.compression, file).map_err(io(&tmp))?;
            p.open = Some(Segment {
                tmp,
                path,
                out,
                bytes: 0,
                opened: now,
                next: offset,
            });
        }
        let full = {
            let segment = p.open.as_mut().expect("opened above");
            let err = io(&segment.tmp);
            if bytes.contains(&b'\n') || bytes.contains(&b'\r') {
                let line: Vec<u8> = bytes
                    .iter()
                    .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b })
                    .collect();
                segment.out.write_all(&line).map_err(&err)?;
            } else {
                segment.out.write_all(bytes).map_err(&err)?;
            }
            segment.out.write_all(b"\n").map_err(&err)?;
            segment.bytes += bytes.len() as u64 + 1;
            segment.next = offset + 1;
            segment.bytes >= self.roll_bytes
        };
        if full {
            close(p)?;
        }
        Ok(())
    }

    /// Closes segments older than the roll interval.
    pub fn roll_due(&mut self, now: Instant) -> Result<(), SinkError> {
        for p in &mut self.partitions {
            if p.open
                .as_ref()
                .is_some_and(|s| now.duration_since(s.opened) >= self.roll_interval)
            {
                close(p)?;
            }
        }
        Ok(())
    }

    /// Closes every open segment.
    pub fn close_all(&mut self) -> Result<(), SinkError> {
        self.partitions.iter_mut().try_for_each(close)
    }

    /// The offset after the last record of `partition` in a closed segment.
    pub fn durable(&self, partition: usize) -> i64 {
        self.partitions[partition].durable
    }
}

/// Finishes the open segment of a partition: trailer, fsync, rename, fsync dir.
fn close(p: &mut PartitionArchive) -> Result<(), SinkError> {
    let Some(segment) = p.open.take() else {
        return Ok(());
    };
    let err = io(&segment.tmp);
    let buffered = segment.out.finish().map_err(&err)?;
    let file = buffered.into_inner().map_err(|e| SinkError::Io {
        path: segment.tmp.display().to_string(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(&err)?;
    std::fs::rename(&segment.tmp, &segment.path).map_err(io(&segment.path))?;
    File::open(&p.dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io(&p.dir))?;
    p.durable = segment.next;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::span::Span;
    use crate::source::file::{FileSource, resolve_partitions};
    use crate::source::{Read, Source};

    #[test]
    fn segments_roll_by_size_and_read_back_in_order_as_one_partition() {
        let dir = tempfile::tempdir().unwrap();
        let sink = ArchiveSink {
            dir: dir.path().to_owned(),
            roll_bytes: 40,
            roll_interval: Span::secs(3600),
            compression: ArchiveCompression::Zstd,
        };
        let mut archive = Archive::new(&sink, &["events/2".to_owned()]);
        let now = Instant::now();
        let records: Vec<String> = (0..7)
            .map(|i| format!(r#"{{"n":{i},"pad":"xxxxxxxxxx"}}"#))
            .collect();
        for (i, record) in records.iter().enumerate() {
            archive.append(0, 100 + i as i64, record.as_bytes(), now).unwrap();
        }
        assert!(archive.durable(0) > 100, "a full segment is closed and durable");
        assert!(archive.durable(0) < 107, "the last segment is still open");
        let partition_dir = dir.path().join("events/2");
        let visible: Vec<_> = std::fs::read_dir(&partition_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with('.'))
            .collect();
        assert!(
            visible.iter().all(|n| n.ends_with(".jsonl.zst") && n.len() == 30),
            "{visible:?}"
        );
        archive.close_all().unwrap();
        assert_eq!(archive.durable(0), 107);

        let partitions = resolve_partitions(&[partition_dir.display().to_string()]).unwrap();
        let mut source = FileSource::new(partitions, 1 << 20);
        let mut read = Vec::new();
        while let Ok(Read::Records(_)) = source.read(0, 100, &mut |r| {
            read.push(String::from_utf8(r.bytes.to_vec()).unwrap())
        }) {}
        assert_eq!(read, records);
    }

    #[test]
    fn line_breaks_inside_a_record_do_not_split_it() {
        let dir = tempfile::tempdir().unwrap();
        let sink = ArchiveSink {
            dir: dir.path().to_owned(),
            roll_bytes: 1 << 20,
            roll_interval: Span::secs(3600),
            compression: ArchiveCompression::Gzip,
        };
        let mut archive = Archive::new(&sink, &["t/0".to_owned()]);
        archive
            .append(0, 0, b"{\n  \"a\": 1\r\n}", Instant::now())
            .unwrap();
        archive.close_all().unwrap();
        let file = std::fs::read_dir(dir.path().join("t/0"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(File::open(file).unwrap()),
            &mut text,
        )
        .unwrap();
        assert_eq!(text, "{   \"a\": 1  }\n");
    }
}
