//! The training-data export sink (DESIGN.md section 10): rows to Parquet under
//! `<dir>/dt=YYYY-MM-DD/` and to the JSONL form, written by a thread of its own so
//! encoding and compression never stall a worker.
//!
//! # Contract
//! Files are named `part-<process>-<worker>-<seq>.parquet` and written under a
//! temporary name until closed. `seq` begins with the checkpoint epoch the file's
//! rows belong to (`tag * 100000 + n`): at each checkpoint's cut the operator closes
//! its files before any row at or after the cut is written, and holds its output
//! frontier until they are durable, so a checkpoint completes only with every row
//! before its cut in closed files. A run resumed from epoch E removes the files of
//! later tags ([`discard_after`]) and writes them again from the open rows and the
//! log: every row exactly once. Between cuts a file is also closed once it holds
//! `roll_bytes` or has been open `roll_interval`; a date partition gets `_SUCCESS`
//! once the watermark at a cut is past its end plus the longest label window.

pub mod columns;
pub mod parquet;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_schema::SchemaRef;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use self::columns::{Columns, json_line};
use self::parquet::{ParquetFile, batch, schema};
use crate::dlq::letter::DeadLetter;
use crate::model::event::Millis;
use crate::model::features::FeatureSpec;
use crate::model::training::{ExportSpec, SpineRows, date_end, utc_date};
use crate::sinks::{SinkError, SinkFailure};

/// Rows a writer buffers per date before encoding them as one batch (a row group
/// gathers several). Each batch's arrays are freed once encoded, and the allocator
/// keeps freed memory a while for reuse: 8192-row batches peaked 20-30 MiB higher
/// on the bench export, in the same CPU time.
const BATCH_ROWS: usize = 2048;
/// Spine events sent to the writer at once.
const BATCH_SPINES: usize = 2048;
/// File sequence numbers per tag.
const PER_TAG: u64 = 100_000;

/// What the export writes, shared by a process's workers.
#[derive(Debug, Clone)]
pub struct ExportSink {
    /// The columns.
    pub columns: Arc<Columns>,
    /// Their Arrow schema.
    pub schema: SchemaRef,
    /// The export spec.
    pub spec: Arc<ExportSpec>,
    /// Where Parquet goes now (the dataset's directory, or a backfill's aside).
    pub dir: PathBuf,
    /// Where the sorted JSONL parts go, when the JSONL form is on.
    pub jsonl_parts: Option<PathBuf>,
    /// File metadata: job name, features fingerprint, skewless version.
    pub metadata: Vec<(String, String)>,
    /// This process.
    pub process: usize,
}

impl ExportSink {
    /// The sink of job `job`'s export of `features`, writing Parquet into `dir`;
    /// `fingerprint` names the job's state declarations in the files' metadata.
    pub fn new(
        job: &str,
        features: &FeatureSpec,
        spec: &ExportSpec,
        dir: PathBuf,
        process: usize,
        fingerprint: String,
    ) -> ExportSink {
        let columns = Columns::of(features, spec);
        ExportSink {
            schema: schema(&columns),
            columns: Arc::new(columns),
            spec: Arc::new(spec.clone()),
            dir,
            jsonl_parts: spec.formats.jsonl.as_deref().map(parts_dir),
            metadata: vec![
                ("skewless.job".into(), job.to_owned()),
                ("skewless.features_fingerprint".into(), fingerprint),
                ("skewless.version".into(), env!("CARGO_PKG_VERSION").into()),
            ],
            process,
        }
    }
}

/// Where the JSONL form's sorted parts wait to be merged: `<jsonl>.parts`.
pub fn parts_dir(jsonl: &Path) -> PathBuf {
    crate::sinks::with_suffix(jsonl, ".parts")
}

/// The tag of a file named `part-<p>-<w>-<seq>.<ext>`.
fn tag_of(name: &str) -> Option<u64> {
    let stem = name.strip_prefix("part-")?;
    let seq = stem.split('.').next()?.rsplit('-').next()?;
    seq.parse::<u64>().ok().map(|s| s / PER_TAG)
}

/// Removes the files written after checkpoint `epoch` (tags above it) and every
/// temporary file, under `dir` and its date partitions.
pub fn discard_after(dir: &Path, epoch: u64) -> std::io::Result<usize> {
    let mut removed = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_dir() && name.starts_with("dt=") {
            removed += discard_after(&path, epoch)?;
        } else if name.ends_with(".tmp") || tag_of(&name).is_some_and(|t| t > epoch) {
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Merges the JSONL form's parts into `path`, sorted by `user_id`, `ts`, `event_id`,
/// `position` (written aside and renamed).
pub fn merge_jsonl(parts: &Path, path: &Path) -> Result<u64, SinkError> {
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |source| SinkError::Io { path: p, source }
    };
    let mut lines: Vec<(SortKey, String)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(parts) {
        for entry in entries {
            let entry = entry.map_err(io(parts))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("part-") || name.ends_with(".tmp") {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).map_err(io(&entry.path()))?;
            lines.extend(text.lines().map(|l| (SortKey::of(l), l.to_owned())));
        }
    }
    lines.sort_by(|a, b| a.0.cmp(&b.0));
    crate::sinks::create_parent(path)?;
    let tmp = path.with_extension("jsonl.tmp");
    let mut text = String::with_capacity(lines.iter().map(|l| l.1.len() + 1).sum());
    for (_, line) in &lines {
        text.push_str(line);
        text.push('\n');
    }
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok(lines.len() as u64)
}

/// The JSONL form's order.
#[derive(Debug, Default, PartialEq, PartialOrd)]
struct SortKey(String, f64, String, i64);

impl SortKey {
    fn of(line: &str) -> SortKey {
        #[derive(serde::Deserialize)]
        struct Key {
            user_id: String,
            ts: f64,
            event_id: String,
            position: Option<i64>,
        }
        serde_json::from_str::<Key>(line)
            .map(|k| SortKey(k.user_id, k.ts, k.event_id, k.position.unwrap_or(-1)))
            .unwrap_or_default()
    }

    fn cmp(&self, other: &SortKey) -> std::cmp::Ordering {
        self.partial_cmp(other).unwrap_or(std::cmp::Ordering::Equal)
    }
}

enum Command {
    /// Rows to write, and the input frontier (seconds) they were sent at: no row of a
    /// date whose end plus the longest window is before it can still come.
    Rows(Vec<SpineRows>, f64),
    /// Close the files open longer than the roll interval.
    Roll,
    /// Close every file; later rows get `tag`. Dates whose end plus the longest
    /// window is not past `watermark` are marked `_SUCCESS`.
    Close { tag: u64, watermark: Option<f64> },
}

/// A date's spine events not yet encoded, and the rows they become.
#[derive(Default)]
struct Buffer {
    spines: Vec<SpineRows>,
    rows: usize,
}

/// A Parquet file being written and when it was opened.
type OpenFile = (ParquetFile, Instant);

/// One worker's writer thread.
struct Writer {
    sink: ExportSink,
    worker: usize,
    tag: u64,
    next: u64,
    /// Per date: its open file (and when it was opened) and the rows not yet encoded.
    open: BTreeMap<String, (Option<OpenFile>, Buffer)>,
    jsonl: Vec<(SortKey, String)>,
    dates: BTreeSet<String>,
    marked: BTreeSet<String>,
    /// When rows were last buffered with no file open.
    started: Instant,
}

impl Writer {
    fn seq(&mut self) -> u64 {
        self.next += 1;
        self.tag * PER_TAG + self.next - 1
    }

    fn write(&mut self, mut spines: Vec<SpineRows>) -> Result<(), SinkError> {
        let (columns, kinds) = (&self.sink.columns, &self.sink.spec.feature_kinds);
        if self.sink.jsonl_parts.is_some() {
            for spine in spines.iter_mut() {
                spine.parsed(&columns.features);
                let parsed = spine.parsed.as_deref().expect("just parsed");
                for row in spine.rows() {
                    let key = SortKey(
                        row.spine.user_id.to_string(),
                        row.spine.ts,
                        row.spine.event_id.to_string(),
                        row.item.map_or(-1, |i| i64::from(i.0)),
                    );
                    self.jsonl.push((key, json_line(columns, kinds, row, parsed)));
                }
            }
        }
        if !self.sink.spec.formats.parquet {
            return Ok(());
        }
        for spine in spines {
            let date = utc_date(spine.spine.ts);
            if !self.open.contains_key(&date) {
                self.dates.insert(date.clone());
                self.open.insert(date.clone(), (None, Buffer::default()));
            }
            let full = {
                let (_, buffer) = self.open.get_mut(&date).expect("just inserted");
                buffer.rows += spine.len();
                buffer.spines.push(spine);
                buffer.rows >= BATCH_ROWS
            };
            if full {
                self.encode(&date)?;
            }
        }
        Ok(())
    }

    /// Encodes a date's buffered rows into its file (opened on first use).
    fn encode(&mut self, date: &str) -> Result<(), SinkError> {
        let needs_file = matches!(self.open.get(date), Some((None, buffer)) if !buffer.spines.is_empty());
        let seq = needs_file.then(|| self.seq());
        let (process, worker) = (self.sink.process, self.worker);
        let (file, buffer) = self.open.get_mut(date).expect("an open date");
        if buffer.spines.is_empty() {
            return Ok(());
        }
        if let Some(seq) = seq {
            let path = self
                .sink
                .dir
                .join(format!("dt={date}"))
                .join(format!("part-{process}-{worker}-{seq:011}.parquet"));
            *file = Some((
                ParquetFile::create(path, &self.sink.schema, &self.sink.metadata)?,
                Instant::now(),
            ));
        }
        let batch = batch(&self.sink.columns, &self.sink.schema, &mut buffer.spines);
        buffer.spines.clear();
        buffer.rows = 0;
        let (file, _) = file.as_mut().expect("opened");
        file.write(&batch)?;
        let full = file.bytes() as u64 >= self.sink.spec.roll_bytes;
        if full {
            self.roll(date)?;
        }
        Ok(())
    }

    /// Closes a date's file (its rows stay in this tag: a resumed run keeps or drops
    /// them with the rest of it).
    fn roll(&mut self, date: &str) -> Result<(), SinkError> {
        if let Some((file @ Some(_), _)) = self.open.get_mut(date) {
            let (file, _) = file.take().expect("some");
            file.close()?;
        }
        Ok(())
    }

    /// Closes the files of the dates no row can still come for (their end plus the
    /// longest window is before `at`): a backfill over many days holds one open
    /// file per recent date, not per date.
    fn close_dates_before(&mut self, at: f64) -> Result<(), SinkError> {
        let max_window = self.sink.spec.max_window;
        let done: Vec<String> = self
            .open
            .keys()
            .filter(|date| date_end(date) + max_window < at)
            .cloned()
            .collect();
        for date in done {
            self.encode(&date)?;
            if let Some((Some((file, _)), _)) = self.open.remove(&date) {
                file.close()?;
            }
        }
        Ok(())
    }

    /// Closes the files open longer than the roll interval, their buffered rows
    /// encoded first.
    fn roll_old(&mut self) -> Result<(), SinkError> {
        let interval = self.sink.spec.roll_interval;
        let old: Vec<String> = self
            .open
            .iter()
            .filter(|(_, (file, buffer))| match file {
                Some((_, opened)) => opened.elapsed() >= interval,
                None => !buffer.spines.is_empty() && self.started.elapsed() >= interval,
            })
            .map(|(date, _)| date.clone())
            .collect();
        for date in old {
            self.encode(&date)?;
            self.roll(&date)?;
        }
        if self.open.values().all(|(file, _)| file.is_none()) {
            self.started = Instant::now();
        }
        Ok(())
    }

    fn close(&mut self, tag: u64, watermark: Option<f64>) -> Result<(), SinkError> {
        let dates: Vec<String> = self.open.keys().cloned().collect();
        for date in dates {
            self.encode(&date)?;
            if let Some((Some((file, _)), _)) = self.open.remove(&date) {
                file.close()?;
            }
        }
        if let Some(parts) = self.sink.jsonl_parts.clone()
            && !self.jsonl.is_empty()
        {
            let seq = self.seq();
            let path = parts.join(format!(
                "part-{}-{}-{seq:011}.jsonl",
                self.sink.process, self.worker
            ));
            self.jsonl.sort_by(|a, b| a.0.cmp(&b.0));
            let mut text = String::new();
            for (_, line) in self.jsonl.drain(..) {
                text.push_str(&line);
                text.push('\n');
            }
            write_durably(&path, &path.with_extension("tmp"), text.as_bytes())?;
        }
        if let Some(watermark) = watermark {
            for date in &self.dates {
                let end = date_end(date);
                if end + self.sink.spec.max_window <= watermark && self.marked.insert(date.clone()) {
                    // Every worker may mark a date: each through a name of its own.
                    let marker = self.sink.dir.join(format!("dt={date}")).join("_SUCCESS");
                    let tmp = marker.with_extension(format!("{}-{}.tmp", self.sink.process, self.worker));
                    write_durably(&marker, &tmp, b"")?;
                }
            }
        }
        self.tag = tag;
        self.next = 0;
        Ok(())
    }
}

/// Writes a file under a temporary name, syncs it and renames it.
fn write_durably(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<(), SinkError> {
    let io = |source| SinkError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let file = std::fs::File::create(tmp).map_err(io)?;
    std::io::Write::write_all(&mut &file, bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(tmp, path).map_err(io)
}

/// What the operator and its writer thread share.
struct Shared {
    /// `Close` commands done.
    closed: AtomicU64,
    /// The writer's first failure.
    error: Mutex<Option<SinkError>>,
    /// Rows written, for the summary.
    rows: AtomicU64,
}

/// The checkpoint in progress, `(epoch, cut)`, once its cut is fixed.
pub type CutSource = Rc<dyn Fn() -> Option<(u64, Millis)>>;

/// Rows written by a run's export, for its summary.
pub type RowCount = Arc<AtomicU64>;

/// Writing training rows.
pub trait WriteRows<'s> {
    /// Writes every row through `sink` on a thread of its own. Files are closed at
    /// each checkpoint's cut and at the end; the returned (empty) stream's frontier
    /// passes a time once every row before it is in a closed file. `first_tag` is
    /// the epoch of the next checkpoint.
    fn write_rows(
        self,
        sink: ExportSink,
        worker: usize,
        first_tag: u64,
        cut: CutSource,
        failure: SinkFailure,
        written: RowCount,
    ) -> Stream<'s, Millis, Vec<DeadLetter>>;
}

impl<'s> WriteRows<'s> for Stream<'s, Millis, Vec<SpineRows>> {
    fn write_rows(
        self,
        sink: ExportSink,
        worker: usize,
        first_tag: u64,
        cut: CutSource,
        failure: SinkFailure,
        written: RowCount,
    ) -> Stream<'s, Millis, Vec<DeadLetter>> {
        let scope = self.scope();
        let mut builder = OperatorBuilder::new("WriteRows".to_owned(), scope);
        let activator = scope
            .worker()
            .sync_activator_for(builder.operator_info().address.to_vec());
        let mut input = builder.new_input(self, Pipeline);
        let (output, stream) = builder.new_output::<Vec<DeadLetter>>();
        let _output = OutputBuilder::<_, CapacityContainerBuilder<Vec<DeadLetter>>>::from(output);
        let shared = Arc::new(Shared {
            closed: AtomicU64::new(0),
            error: Mutex::new(None),
            rows: AtomicU64::new(0),
        });
        let (tx, rx) = sync_channel::<Command>(4);
        let thread_shared = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name(format!("export-{worker}"))
            .spawn(move || {
                let mut writer = Writer {
                    sink,
                    worker,
                    tag: first_tag,
                    next: 0,
                    open: BTreeMap::new(),
                    jsonl: Vec::new(),
                    dates: BTreeSet::new(),
                    marked: BTreeSet::new(),
                    started: Instant::now(),
                };
                let tick = (writer.sink.spec.roll_interval / 4).max(Duration::from_millis(50));
                loop {
                    let command = match rx.recv_timeout(tick) {
                        Ok(command) => command,
                        Err(RecvTimeoutError::Timeout) => Command::Roll,
                        Err(RecvTimeoutError::Disconnected) => break,
                    };
                    let result = match command {
                        Command::Roll => writer.roll_old(),
                        Command::Rows(rows, at) => {
                            let n = rows.iter().map(SpineRows::len).sum::<usize>() as u64;
                            writer.write(rows).and_then(|()| {
                                thread_shared.rows.fetch_add(n, Ordering::Relaxed);
                                writer.close_dates_before(at)
                            })
                        }
                        Command::Close { tag, watermark } => {
                            let result = writer.close(tag, watermark);
                            thread_shared.closed.fetch_add(1, Ordering::Release);
                            let _ = activator.activate();
                            result
                        }
                    };
                    if let Err(error) = result {
                        *thread_shared.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
                        let _ = activator.activate();
                        return;
                    }
                }
            })
            .expect("the export thread starts");
        builder.build(move |_capabilities| {
            let mut tx: Option<SyncSender<Command>> = Some(tx);
            let mut handle = Some(handle);
            let mut tag = first_tag;
            // Rows sent since the last close: the earliest time among them.
            let mut unclosed: Option<Capability<Millis>> = None;
            // Closes sent and not yet done, each with the earliest time it covers.
            let mut closing: VecDeque<(u64, Capability<Millis>)> = VecDeque::new();
            let mut closes_sent = 0u64;
            let mut last_frontier: Option<Millis> = None;
            let mut finished = false;
            let mut reported = 0u64;
            let mut report = move |shared: &Shared| {
                let now = shared.rows.load(Ordering::Relaxed);
                written.fetch_add(now - reported, Ordering::Relaxed);
                reported = now;
            };
            move |frontiers| {
                let fail = |error: SinkError| {
                    if failure.borrow().is_none() {
                        *failure.borrow_mut() = Some(error);
                    }
                };
                if let Some(error) = shared.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    fail(error);
                    tx = None;
                }
                let Some(sender) = tx.as_ref() else {
                    unclosed = None;
                    closing.clear();
                    input.for_each(|_, _| {});
                    return;
                };
                let cut = cut();
                let mut close = |tag: &mut u64,
                                 next: u64,
                                 unclosed: &mut Option<Capability<Millis>>,
                                 watermark: Option<f64>| {
                    if let Some(cap) = unclosed.take() {
                        closing.push_back((closes_sent, cap));
                    }
                    closes_sent += 1;
                    *tag = next;
                    let _ = sender.send(Command::Close { tag: next, watermark });
                };
                input.for_each(|cap, rows| {
                    let time = *cap.least().expect("totally ordered time");
                    if let Some((epoch, at)) = cut
                        && tag <= epoch
                        && time >= at
                    {
                        close(&mut tag, epoch + 1, &mut unclosed, None);
                    }
                    match &unclosed {
                        Some(held) if held.time() <= &time => {}
                        _ => unclosed = cap.retain_least(0),
                    }
                    // In bounded pieces: the channel's memory is its depth times this.
                    let mut rows = std::mem::take(rows);
                    let at = time as f64 / 1000.0;
                    while rows.len() > BATCH_SPINES {
                        let rest = rows.split_off(BATCH_SPINES);
                        let _ = sender.send(Command::Rows(rows, at));
                        rows = rest;
                    }
                    let _ = sender.send(Command::Rows(rows, at));
                });
                let frontier = frontiers[0].frontier().first().copied();
                if frontier.is_some() {
                    last_frontier = frontier;
                }
                if let Some((epoch, at)) = cut
                    && tag <= epoch
                    && frontier.is_none_or(|f| f >= at)
                {
                    close(&mut tag, epoch + 1, &mut unclosed, Some(at as f64 / 1000.0));
                }
                if frontier.is_none() && !finished {
                    finished = true;
                    let watermark = last_frontier.map(|f| f as f64 / 1000.0);
                    let same = tag;
                    close(&mut tag, same, &mut unclosed, watermark);
                }
                let done = shared.closed.load(Ordering::Acquire);
                while closing.front().is_some_and(|(index, _)| *index < done) {
                    closing.pop_front();
                }
                report(&shared);
                if finished && done == closes_sent {
                    tx = None;
                    if let Some(handle) = handle.take() {
                        let _ = handle.join();
                    }
                    if let Some(error) = shared.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
                        fail(error);
                    }
                    report(&shared);
                }
            }
        });
        stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_come_from_file_names() {
        assert_eq!(tag_of("part-0-1-00000300002.parquet"), Some(3));
        assert_eq!(tag_of("part-0-1-00000000002.jsonl"), Some(0));
        assert_eq!(tag_of("_SUCCESS"), None);
    }
}
