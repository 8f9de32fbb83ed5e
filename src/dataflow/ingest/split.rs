//! One big plain `.jsonl` file read by every worker: the file is cut into byte ranges
//! at line starts, dealt to the workers in turn, and each range starts with the
//! partition clock a sequential read of the file has there.
//!
//! That clock is the prefix maximum of the ranges before it: the largest `event_time`
//! of their valid records. A pass over every range (in parallel, on as many threads
//! as the run has workers) finds each range's maximum without decoding most records
//! (the `explain` machinery: the time read without a decode, settled exactly by
//! decoding from the highest down), and counts its lines and records, so that line
//! numbers and record positions are the whole file's. Lateness, dedup order and dead
//! letters are therefore exactly those of a one-worker read of the file.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::decode::Decoder;
use super::replay::{self, MAX_WAITING, light_event_time};
use crate::job::Job;
use crate::source::SourceError;
use crate::source::file::{ByteRange, FilePartition};
use crate::source::lines::{Line, LineReader};

/// Files more than twice this size are cut into ranges of about this many bytes by
/// default: small enough that workers reading neighbouring ranges stay close in
/// event time (about 12k records), big enough that a range costs nothing to start.
/// On a 1.7 GB file of 5M events with 2 workers: 1 MiB 7.0 s, 2 MiB 5.7-6.2 s,
/// 4 MiB 5.4-5.6 s, 8 MiB 5.5-7.5 s, whole 7.5-9.3 s.
pub const DEFAULT_SPLIT_BYTES: u64 = 4 << 20;

/// What a pass over one range found.
#[derive(Default, Clone, Copy)]
struct Scan {
    lines: i64,
    records: i64,
    max: Option<f64>,
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> SourceError + '_ {
    move |source| SourceError::Io {
        path: path.display().to_string(),
        line: 0,
        source,
    }
}

/// The starts of `path`'s ranges: 0, then the first line start at or after each
/// multiple of `bytes`.
fn boundaries(path: &Path, size: u64, bytes: u64) -> Result<Vec<u64>, SourceError> {
    let mut file = std::fs::File::open(path).map_err(io_error(path))?;
    let mut starts = vec![0];
    let mut nominal = bytes;
    let mut block = vec![0u8; 1 << 16];
    while nominal < size {
        let last = *starts.last().expect("starts at 0");
        let mut at = nominal.max(last + 1) - 1;
        file.seek(SeekFrom::Start(at)).map_err(io_error(path))?;
        let start = loop {
            let n = file.read(&mut block).map_err(io_error(path))?;
            if n == 0 {
                break None;
            }
            if let Some(i) = memchr::memchr(b'\n', &block[..n]) {
                break Some(at + i as u64 + 1);
            }
            at += n as u64;
        };
        match start {
            Some(start) if start < size => {
                starts.push(start);
                nominal = start + bytes;
            }
            _ => break,
        }
    }
    Ok(starts)
}

/// Moves `clock` up to `t`.
fn raise(clock: &mut Option<f64>, t: f64) {
    *clock = Some(clock.map_or(t, |c| c.max(t)));
}

/// Lines, records and the largest valid `event_time` of `path[start..end]`.
///
/// As [`super::replay::Unverified`] does for `explain`: a record whose time can be
/// read without a decode waits, when that time is above the clock, and the waiting
/// records are settled by [`replay::settle`]. Here a waiting record is only its time
/// and where it is in the file: the one a settle decodes (about one per batch) is read
/// again, instead of every record being copied as it passes.
fn scan(path: &Path, start: u64, end: u64, job: &Job) -> Result<Scan, SourceError> {
    let mut file = std::fs::File::open(path).map_err(io_error(path))?;
    file.seek(SeekFrom::Start(start)).map_err(io_error(path))?;
    let mut reread = std::fs::File::open(path).map_err(io_error(path))?;
    let mut lines = LineReader::new(file.take(end - start), job.max_event_bytes);
    let decoder = Decoder::new(&job.registry, job.max_event_bytes);
    let mut found = Scan::default();
    // (light time, (offset in the file, length))
    let mut waiting: Vec<(f64, (u64, usize))> = Vec::new();
    let mut record = Vec::new();
    let mut settle = |waiting: &mut Vec<(f64, (u64, usize))>, clock: &mut Option<f64>| {
        let found = replay::settle(waiting, *clock, |&(offset, len)| {
            record.resize(len, 0);
            reread.seek(SeekFrom::Start(offset)).map_err(io_error(path))?;
            reread.read_exact(&mut record).map_err(io_error(path))?;
            Ok::<_, SourceError>(decoder.decode(&record).event_time())
        })?;
        if let Some(t) = found {
            raise(clock, t);
        }
        Ok::<_, SourceError>(())
    };
    loop {
        let offset = start + lines.offset();
        let Some(line) = lines.next_line().map_err(io_error(path))? else {
            break;
        };
        found.lines += 1;
        match line {
            Line::Full(bytes) if bytes.trim_ascii().is_empty() => {}
            Line::Full(bytes) => {
                found.records += 1;
                match light_event_time(bytes) {
                    Some(t) if found.max.is_none_or(|c| t > c) => {
                        waiting.push((t, (offset, bytes.len())));
                        if waiting.len() >= MAX_WAITING {
                            settle(&mut waiting, &mut found.max)?;
                        }
                    }
                    Some(_) => {}
                    None => {
                        if let Some(t) = decoder.decode(bytes).event_time() {
                            raise(&mut found.max, t);
                        }
                    }
                }
            }
            // Refused as oversized before its time is read: it moves no clock.
            Line::Oversized { .. } => found.records += 1,
        }
    }
    settle(&mut waiting, &mut found.max)?;
    Ok(found)
}

/// Cuts every plain single-file partition of more than twice `bytes` into byte
/// ranges (in file order, so dealing them out in turn spreads each file over the
/// workers); other partitions pass unchanged. `bytes == 0` cuts nothing.
pub fn split_files(
    partitions: Vec<FilePartition>,
    job: &Job,
    bytes: u64,
    threads: usize,
) -> Result<Vec<FilePartition>, SourceError> {
    let mut out = Vec::with_capacity(partitions.len());
    let mut pending: Vec<(usize, FilePartition, Vec<u64>, u64)> = Vec::new();
    for partition in partitions {
        let file = match partition.segments.as_slice() {
            [file] if bytes > 0 && file.extension().is_some_and(|e| e == "jsonl") => file.clone(),
            _ => {
                out.push(partition);
                continue;
            }
        };
        let size = std::fs::metadata(&file).map_err(io_error(&file))?.len();
        if size <= bytes.saturating_mul(2) {
            out.push(partition);
            continue;
        }
        let starts = boundaries(&file, size, bytes)?;
        pending.push((out.len(), partition, starts, size));
        out.push(FilePartition {
            name: String::new(),
            segments: Vec::new(),
            range: None,
        });
    }
    if pending.is_empty() {
        return Ok(out);
    }
    // Every range of every file, scanned on `threads` threads.
    let work: Vec<(usize, u64, u64)> = pending
        .iter()
        .enumerate()
        .flat_map(|(f, (_, _, starts, size))| {
            (0..starts.len()).map(move |i| (f, starts[i], starts.get(i + 1).copied().unwrap_or(*size)))
        })
        .collect();
    let next = AtomicUsize::new(0);
    let began = Instant::now();
    let scans: Vec<Result<Vec<(usize, Scan)>, SourceError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.clamp(1, work.len()))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(f, start, end)) = work.get(i) else {
                            return Ok(done);
                        };
                        done.push((i, scan(&pending[f].1.segments[0], start, end, job)?));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a scan thread panicked"))
            .collect()
    });
    tracing::debug!(
        files = pending.len(),
        ranges = work.len(),
        seconds = began.elapsed().as_secs_f64(),
        "files read in byte ranges"
    );
    let mut found = vec![Scan::default(); work.len()];
    for result in scans {
        for (i, scan) in result? {
            found[i] = scan;
        }
    }
    let mut i = 0;
    let mut split = vec![Vec::new(); out.len()];
    for (slot, partition, starts, size) in &pending {
        let (mut lines, mut records, mut clock) = (0i64, 0i64, None::<f64>);
        for (k, &start) in starts.iter().enumerate() {
            let end = starts.get(k + 1).copied().unwrap_or(*size);
            split[*slot].push(FilePartition {
                name: format!("{}@{start:012}", partition.name),
                segments: partition.segments.clone(),
                range: Some(ByteRange {
                    file: partition.name.clone(),
                    start,
                    end,
                    lines_before: lines,
                    records_before: records,
                    clock,
                }),
            });
            let scan = found[i];
            lines += scan.lines;
            records += scan.records;
            clock = match (clock, scan.max) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            i += 1;
        }
    }
    Ok(out
        .into_iter()
        .zip(split)
        .flat_map(|(partition, ranges)| {
            if ranges.is_empty() {
                vec![partition]
            } else {
                ranges
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_file_at_line_starts_with_its_clock_and_counts() {
        let job = Job::load(concat!(env!("CARGO_MANIFEST_DIR"), "/jobs/recsys.toml").as_ref()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.jsonl");
        let mut text = String::new();
        let mut times = Vec::new();
        for i in 0..60 {
            // Out of order, blank lines, a record that is not valid (its time must not
            // count), and one with no time at all.
            let t = 1000 + (i * 7) % 23;
            match i % 10 {
                3 => text.push('\n'),
                5 => text.push_str(&format!("{{\"event_time\":{},\"oops\"\n", 5000 + i)),
                7 => text.push_str("not json\n"),
                _ => {
                    times.push((text.len(), t as f64));
                    text.push_str(&format!(
                        r#"{{"event_id":"e{i}","event_type":"session.started","event_version":"1.0","event_time":{t},"user_id":"u{i}"}}"#
                    ));
                    text.push('\n');
                }
            }
        }
        std::fs::write(&path, &text).unwrap();
        let whole = FilePartition {
            name: path.display().to_string(),
            segments: vec![path.clone()],
            range: None,
        };
        let ranges = split_files(vec![whole.clone()], &job, 400, 2).unwrap();
        assert!(ranges.len() > 5, "{}", ranges.len());
        let mut expect_start = 0;
        for partition in &ranges {
            let range = partition.range.as_ref().unwrap();
            assert_eq!(range.start, expect_start);
            assert!(range.start == 0 || text.as_bytes()[range.start as usize - 1] == b'\n');
            let before = &text[..range.start as usize];
            assert_eq!(range.lines_before, before.matches('\n').count() as i64);
            assert_eq!(
                range.records_before,
                before.lines().filter(|l| !l.trim().is_empty()).count() as i64
            );
            let clock = times
                .iter()
                .filter(|(at, _)| (*at as u64) < range.start)
                .map(|(_, t)| *t)
                .reduce(f64::max);
            assert_eq!(range.clock, clock, "at {}", range.start);
            expect_start = range.end;
        }
        assert_eq!(expect_start, text.len() as u64);
        // Small files, and cutting nothing, pass unchanged.
        assert_eq!(
            split_files(vec![whole.clone()], &job, 0, 2).unwrap(),
            vec![whole.clone()]
        );
        assert_eq!(
            split_files(vec![whole.clone()], &job, 1 << 20, 2).unwrap(),
            vec![whole]
        );
    }
}
