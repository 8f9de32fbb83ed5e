//! Job definitions: load a `jobs/*.toml` file, check it, and compile it into a [`Job`].
//!
//! A job file declares the whole job: where records come from, the event schemas and
//! their upcasts, the time policy, the per-user state and features, and the sinks.
//! Loading reports every problem it finds, each with the file, line, column and key.
//! A file may `extends = "other.toml"` (relative to itself) and override sections or
//! single fields of the base; lists (`[[events]]`, `[[state]]`, `[[features]]`) are
//! replaced as a whole.

pub mod duration;
pub mod file;
mod locate;

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::IntoDeserializer;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::broker::BrokerSettings;
use crate::features::FeatureSpec;
use crate::schema::Registry;
use duration::Span;
pub use file::LatePolicy;
use file::{
    ArchiveSection, CheckpointSection, EventDecl, FeatureDecl, JobSection, KafkaSection, LimitsSection,
    RedisSection, SinksSection, SourceSection, StateDecl, TimeSection,
};
pub use file::{LagTolerance, StartPosition};

/// Default `limits.max_event_bytes`: 1 MiB.
pub const DEFAULT_MAX_EVENT_BYTES: u64 = 1 << 20;
/// Default `time.allowed_lateness`.
pub const DEFAULT_ALLOWED_LATENESS: Span = Span::secs(5);
/// Default `time.dedup_horizon`.
pub const DEFAULT_DEDUP_HORIZON: Span = Span::secs(24 * 3600);
/// Default `time.idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Span = Span::secs(10);
/// Default `limits.max_retries`.
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// Default `sinks.flush_interval`.
pub const DEFAULT_FLUSH_INTERVAL: Span = Span(std::time::Duration::from_millis(50));
/// Default `source.kafka.brokers`.
pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
/// Default `source.kafka.lag_tolerance.messages`.
pub const DEFAULT_LAG_TOLERANCE_MESSAGES: u64 = 10_000;
/// Default `checkpoint.interval`.
pub const DEFAULT_CHECKPOINT_INTERVAL: Span = Span::secs(30);
/// Default `checkpoint.keep`.
pub const DEFAULT_CHECKPOINT_KEEP: usize = 3;
/// How deep `extends` chains may go.
const MAX_EXTENDS_DEPTH: usize = 8;

/// A compiled, checked job.
#[derive(Debug, Clone)]
pub struct Job {
    /// The job's name.
    pub name: String,
    /// The file it was loaded from.
    pub path: PathBuf,
    /// Input partitions (paths or globs) used when the command line names none.
    pub inputs: Vec<String>,
    /// Records above this size are `oversized`.
    pub max_event_bytes: usize,
    /// Event-time policy.
    pub time: TimePolicy,
    /// Output locations.
    pub sinks: SinkPaths,
    /// Event schemas and upcasts.
    pub registry: Registry,
    /// Per-user state and features.
    pub features: FeatureSpec,
    /// Retries of a retryable failure before it is dead-lettered.
    pub max_retries: u32,
    /// Checkpoints.
    pub checkpoint: CheckpointPolicy,
    /// The Kafka source, when the job reads Kafka.
    pub kafka: Option<KafkaJob>,
}

/// A job's Kafka source.
#[derive(Debug, Clone)]
pub struct KafkaJob {
    /// Brokers and pass-through options.
    pub settings: BrokerSettings,
    /// Topics read.
    pub topics: Vec<String>,
    /// Consumer group.
    pub group: String,
    /// Where to start; `None` for the default (earliest, or committed when stateless).
    pub start: Option<StartPosition>,
    /// When the group counts as behind.
    pub lag_tolerance: LagTolerance,
    /// How often durable offsets are committed.
    pub commit_interval: Span,
}

/// A job's Redis view sink.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisSink {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Key prefix.
    pub key_prefix: String,
    /// Key expiry.
    pub ttl: Span,
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
}

/// The event-time policy of a job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimePolicy {
    /// How far behind its partition's clock an event may be and still be applied.
    pub allowed_lateness: Span,
    /// What happens to late events.
    pub late_policy: LatePolicy,
    /// How long an event id is remembered.
    pub dedup_horizon: Span,
    /// When an idle partition stops holding the watermark back.
    pub idle_timeout: Span,
}

/// When and where a job takes checkpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointPolicy {
    /// The directory; `None` when the job takes none.
    pub dir: Option<PathBuf>,
    /// How often one is taken.
    pub interval: Span,
    /// Complete checkpoints kept.
    pub keep: usize,
}

/// Where a job writes.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkPaths {
    /// SQLite views.
    pub views_sqlite: Option<PathBuf>,
    /// JSONL views snapshot.
    pub views_jsonl: Option<PathBuf>,
    /// Dead letters (JSONL).
    pub dlq: Option<PathBuf>,
    /// Run summary (JSON).
    pub summary: Option<PathBuf>,
    /// How often changed views are written in runs over Kafka.
    pub flush_interval: Span,
    /// The Kafka dead-letter topic; `None` for `<first topic>.dlq`.
    pub dlq_topic: Option<String>,
    /// The Redis view sink.
    pub redis: Option<RedisSink>,
    /// The archive sink.
    pub archive: Option<ArchiveSink>,
}

/// One problem in a job file, located by file, line, column and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted key path, such as `time.allowed_lateness` or `state[2].on[0]`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: `{}`: {}",
            self.file.display(),
            self.line,
            self.column,
            self.key,
            self.message
        )
    }
}

/// Why a job could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The file could not be read.
    #[error("cannot read job file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid job.
    #[error("{}", render_problems(.0))]
    Invalid(Vec<Problem>),
}

fn render_problems(problems: &[Problem]) -> String {
    let mut out = format!(
        "invalid job: {} problem{}",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for problem in problems {
        out.push_str("\n  ");
        out.push_str(&problem.to_string());
    }
    out
}

/// The text of one loaded job file.
#[derive(Debug)]
pub struct SourceFile {
    /// Its path.
    pub path: PathBuf,
    /// Its contents.
    pub text: String,
}

/// Collects problems while a job is loaded and compiled.
#[derive(Debug, Default)]
pub struct Problems {
    list: Vec<Problem>,
}

impl Problems {
    /// Records a problem at `span` of `file`.
    pub fn at(&mut self, file: &SourceFile, span: Range<usize>, key: &str, message: impl Into<String>) {
        let (line, column) = locate::line_col(&file.text, span.start);
        self.list.push(Problem {
            file: file.path.clone(),
            line,
            column,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    /// Whether nothing is wrong so far.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// A list section and the file it came from.
#[derive(Debug, Clone)]
pub struct Located<T> {
    /// Index of the file in the loaded layers.
    pub file: usize,
    /// The section's value.
    pub value: T,
}

/// The sections of one file, before defaults.
#[derive(Debug, Default)]
struct Layer {
    job: JobSection,
    source: SourceSection,
    limits: LimitsSection,
    time: TimeSection,
    sinks: SinksSection,
    checkpoint: CheckpointSection,
    events: Option<Vec<EventDecl>>,
    state: Option<Vec<StateDecl>>,
    features: Option<Vec<FeatureDecl>>,
}

/// Every section of a job, merged over its `extends` chain.
struct Merged {
    job: JobSection,
    source: SourceSection,
    limits: LimitsSection,
    time: TimeSection,
    sinks: SinksSection,
    checkpoint: CheckpointSection,
    events: Option<Located<Vec<EventDecl>>>,
    state: Option<Located<Vec<StateDecl>>>,
    features: Option<Located<Vec<FeatureDecl>>>,
}

impl Job {
    /// Loads and checks the job file at `path`.
    pub fn load(path: &Path) -> Result<Job, JobError> {
        let mut files = Vec::new();
        let mut problems = Problems::default();
        let layers = load_chain(path, &mut files, &mut problems, 0)?;
        let merged = merge(layers);
        let job = compile(path, merged, &files, &mut problems);
        match job {
            Some(job) if problems.is_empty() => Ok(job),
            _ => Err(JobError::Invalid(problems.list)),
        }
    }

    /// Allowed lateness in seconds.
    pub fn allowed_lateness_secs(&self) -> f64 {
        self.time.allowed_lateness.as_secs_f64()
    }

    /// Whether the job only archives what it reads (no schemas, no state).
    pub fn archive_only(&self) -> bool {
        self.registry.types().is_empty() && self.sinks.archive.is_some()
    }
}

/// Loads `path` and the files it extends, base first.
fn load_chain(
    path: &Path,
    files: &mut Vec<SourceFile>,
    problems: &mut Problems,
    depth: usize,
) -> Result<Vec<(usize, Layer)>, JobError> {
    let text = std::fs::read_to_string(path).map_err(|source| JobError::Read {
        path: path.to_owned(),
        source,
    })?;
    let index = files.len();
    files.push(SourceFile {
        path: path.to_owned(),
        text,
    });
    let (layer, extends) = parse_layer(&files[index], problems);
    let mut chain = Vec::new();
    if let Some(base) = extends {
        let base_path = path.parent().unwrap_or(Path::new(".")).join(base.get_ref());
        if depth >= MAX_EXTENDS_DEPTH || files.iter().any(|f| f.path == base_path) {
            problems.at(
                &files[index],
                base.span(),
                "extends",
                "`extends` chain is cyclic or deeper than 8 files",
            );
        } else if !base_path.exists() {
            problems.at(
                &files[index],
                base.span(),
                "extends",
                format!("no such job file: {}", base_path.display()),
            );
        } else {
            chain = load_chain(&base_path, files, problems, depth + 1)?;
        }
    }
    chain.push((index, layer));
    Ok(chain)
}

/// Deserializes one section, recording each of its problems against its key.
///
/// Serde stops at a section's first error; to report the next ones too, the entry at
/// fault is dropped and the section read again, until it reads or no entry is at
/// fault. A complaint about a key that was dropped is not reported again.
fn section<'de, T: Deserialize<'de>>(
    file: &SourceFile,
    key: &str,
    mut value: Spanned<DeValue<'de>>,
    problems: &mut Problems,
) -> Option<T> {
    let span = value.span();
    let mut dropped: Vec<String> = Vec::new();
    loop {
        let error = match T::deserialize(value.clone().into_deserializer()) {
            Ok(parsed) if dropped.is_empty() => return Some(parsed),
            Ok(_) => return None,
            Err(error) => error,
        };
        let message = error.message().trim().to_owned();
        if dropped
            .iter()
            .any(|k| message.starts_with(&format!("missing field `{k}`")))
        {
            return None;
        }
        let at = error.span().unwrap_or(span.clone());
        problems.at(
            file,
            at.clone(),
            &locate::key_path(key, &value, at.start),
            message,
        );
        match remove_entry_at(&mut value, at.start) {
            Some(removed) if dropped.len() < 64 => dropped.push(removed),
            _ => return None,
        }
    }
}

/// Removes the entry of a table whose key or value holds `offset`; returns its key.
fn remove_entry_at(value: &mut Spanned<DeValue<'_>>, offset: usize) -> Option<String> {
    let DeValue::Table(table) = value.get_mut() else {
        return None;
    };
    let holds = |span: Range<usize>| span.start <= offset && offset < span.end.max(span.start + 1);
    let name = table
        .iter()
        .find(|(k, v)| holds(k.span()) || holds(v.span()) || !locate::key_path("", v, offset).is_empty())
        .map(|(k, _)| k.get_ref().to_string())?;
    table.remove(name.as_str());
    Some(name)
}

/// Deserializes an array-of-tables section element by element, so every bad
/// element is reported.
fn list_section<'de, T: Deserialize<'de>>(
    file: &SourceFile,
    key: &str,
    value: Spanned<DeValue<'de>>,
    problems: &mut Problems,
) -> Option<Vec<T>> {
    let span = value.span();
    let DeValue::Array(items) = value.into_inner() else {
        problems.at(
            file,
            span,
            key,
            format!("expected an array of tables: write `[[{key}]]`"),
        );
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (index, item) in items.into_iter().enumerate() {
        match section(file, &format!("{key}[{index}]"), item, problems) {
            Some(parsed) => out.push(parsed),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn parse_layer(file: &SourceFile, problems: &mut Problems) -> (Layer, Option<Spanned<String>>) {
    let (root, errors) = DeTable::parse_recoverable(&file.text);
    for error in errors {
        let span = error.span().unwrap_or(0..0);
        problems.at(file, span, "", format!("TOML syntax: {}", error.message().trim()));
    }
    let mut layer = Layer::default();
    let mut extends = None;
    for (key, value) in root.into_inner() {
        let name = key.get_ref().to_string();
        match name.as_str() {
            "extends" => extends = section(file, "extends", value, problems),
            "job" => layer.job = section(file, "job", value, problems).unwrap_or_default(),
            "source" => layer.source = section(file, "source", value, problems).unwrap_or_default(),
            "limits" => layer.limits = section(file, "limits", value, problems).unwrap_or_default(),
            "time" => layer.time = section(file, "time", value, problems).unwrap_or_default(),
            "sinks" => layer.sinks = section(file, "sinks", value, problems).unwrap_or_default(),
            "checkpoint" => layer.checkpoint = section(file, "checkpoint", value, problems).unwrap_or_default(),
            "events" => layer.events = list_section(file, "events", value, problems),
            "state" => layer.state = list_section(file, "state", value, problems),
            "features" => layer.features = list_section(file, "features", value, problems),
            _ => problems.at(
                file,
                key.span(),
                &name,
                "unknown key; expected one of `extends`, `job`, `source`, `limits`, `time`, `sinks`, `checkpoint`, `events`, `state`, `features`",
            ),
        }
    }
    (layer, extends)
}

/// Merges layers, base first: later layers override single fields of the table
/// sections and whole lists.
fn merge(layers: Vec<(usize, Layer)>) -> Merged {
    let mut merged = Merged {
        job: JobSection::default(),
        source: SourceSection::default(),
        limits: LimitsSection::default(),
        time: TimeSection::default(),
        sinks: SinksSection::default(),
        checkpoint: CheckpointSection::default(),
        events: None,
        state: None,
        features: None,
    };
    for (file, layer) in layers {
        let Layer {
            job,
            source,
            limits,
            time,
            sinks,
            checkpoint,
            events,
            state,
            features,
        } = layer;
        overlay(&mut merged.job.name, job.name);
        overlay(&mut merged.source.files, source.files);
        merge_kafka(&mut merged.source.kafka, source.kafka);
        overlay(&mut merged.limits.max_event_bytes, limits.max_event_bytes);
        overlay(&mut merged.limits.max_retries, limits.max_retries);
        overlay(&mut merged.time.allowed_lateness, time.allowed_lateness);
        overlay(&mut merged.time.late_policy, time.late_policy);
        overlay(&mut merged.time.dedup_horizon, time.dedup_horizon);
        overlay(&mut merged.time.idle_timeout, time.idle_timeout);
        overlay(&mut merged.sinks.views_sqlite, sinks.views_sqlite);
        overlay(&mut merged.sinks.views_jsonl, sinks.views_jsonl);
        overlay(&mut merged.sinks.dlq, sinks.dlq);
        overlay(&mut merged.sinks.summary, sinks.summary);
        overlay(&mut merged.sinks.flush_interval, sinks.flush_interval);
        overlay(&mut merged.sinks.dlq_topic, sinks.dlq_topic);
        merge_redis(&mut merged.sinks.redis, sinks.redis);
        merge_archive(&mut merged.sinks.archive, sinks.archive);
        overlay(&mut merged.checkpoint.dir, checkpoint.dir);
        overlay(&mut merged.checkpoint.interval, checkpoint.interval);
        overlay(&mut merged.checkpoint.keep, checkpoint.keep);
        if let Some(value) = events {
            merged.events = Some(Located { file, value });
        }
        if let Some(value) = state {
            merged.state = Some(Located { file, value });
        }
        if let Some(value) = features {
            merged.features = Some(Located { file, value });
        }
    }
    merged
}

fn overlay<T>(base: &mut Option<T>, over: Option<T>) {
    if over.is_some() {
        *base = over;
    }
}

/// Overlays a nested section field by field.
macro_rules! merge_section {
    ($name:ident, $section:ty, [$($field:ident),*]) => {
        fn $name(base: &mut Option<$section>, over: Option<$section>) {
            let Some(over) = over else { return };
            let base = base.get_or_insert_with(Default::default);
            $(overlay(&mut base.$field, over.$field);)*
        }
    };
}
merge_section!(
    merge_kafka,
    KafkaSection,
    [
        brokers,
        topics,
        group,
        start,
        options,
        lag_tolerance,
        commit_interval
    ]
);
merge_section!(merge_redis, RedisSection, [url, key_prefix, ttl]);
merge_section!(merge_archive, ArchiveSection, [dir, roll_bytes, roll_interval]);

fn compile(path: &Path, merged: Merged, files: &[SourceFile], problems: &mut Problems) -> Option<Job> {
    let leaf = &files[0];
    let name = merged.job.name.clone().unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "job".into())
    });
    // A job with neither schemas nor state only archives what it reads.
    let archive_only = merged.events.is_none() && merged.state.is_none() && merged.sinks.archive.is_some();
    let (events, state) = match (merged.events, merged.state) {
        (Some(events), Some(state)) => (events, state),
        (None, None) if archive_only => (
            Located {
                file: 0,
                value: Vec::new(),
            },
            Located {
                file: 0,
                value: Vec::new(),
            },
        ),
        (None, _) => {
            let message = "the job declares no `[[events]]` schemas (only an archive-only job may)";
            problems.at(leaf, 0..0, "events", message);
            return None;
        }
        (_, None) => {
            let message = "the job declares no `[[state]]` aggregations (only an archive-only job may)";
            problems.at(leaf, 0..0, "state", message);
            return None;
        }
    };
    let features = merged.features.unwrap_or(Located {
        file: state.file,
        value: Vec::new(),
    });
    let mut registry = Registry::compile(&events, files, problems);
    let features = FeatureSpec::compile(&mut registry, &state, &features, files, problems)?;
    let max_event_bytes = merged.limits.max_event_bytes.unwrap_or(DEFAULT_MAX_EVENT_BYTES);
    // A sink path defaults to `out/<job>/<file>`; an empty string turns the sink off.
    let sink_path = |set: Option<String>, default: Option<&str>| match set {
        Some(path) if path.is_empty() => None,
        Some(path) => Some(PathBuf::from(path)),
        None => default.map(|file| PathBuf::from(format!("out/{name}/{file}"))),
    };
    let sinks = SinkPaths {
        views_sqlite: sink_path(merged.sinks.views_sqlite, Some("views.sqlite")),
        views_jsonl: sink_path(merged.sinks.views_jsonl, None),
        dlq: sink_path(merged.sinks.dlq, Some("dlq.jsonl")),
        summary: sink_path(merged.sinks.summary, Some("summary.json")),
        flush_interval: merged.sinks.flush_interval.unwrap_or(DEFAULT_FLUSH_INTERVAL),
        dlq_topic: merged.sinks.dlq_topic,
        redis: merged.sinks.redis.map(|redis| RedisSink {
            url: redis.url.unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned()),
            key_prefix: redis.key_prefix.unwrap_or_else(|| "user_state:".to_owned()),
            ttl: redis.ttl.unwrap_or(Span::secs(30 * 86_400)),
        }),
        archive: match merged.sinks.archive {
            None => None,
            Some(ArchiveSection { dir: None, .. }) => {
                problems.at(leaf, 0..0, "sinks.archive.dir", "an archive needs `dir`");
                None
            }
            Some(ArchiveSection {
                dir: Some(dir),
                roll_bytes,
                roll_interval,
            }) => Some(ArchiveSink {
                dir: PathBuf::from(dir),
                roll_bytes: roll_bytes.unwrap_or(64 << 20),
                roll_interval: roll_interval.unwrap_or(Span::secs(300)),
            }),
        },
    };
    if let Some(keep) = merged.checkpoint.keep.as_ref().filter(|k| *k.get_ref() == 0) {
        problems.at(leaf, keep.span(), "checkpoint.keep", "keep at least 1 checkpoint");
    }
    if merged.checkpoint.interval.is_some_and(|i| i.duration().is_zero()) {
        problems.at(
            leaf,
            0..0,
            "checkpoint.interval",
            "the interval must be longer than 0 s",
        );
    }
    let checkpoint = CheckpointPolicy {
        dir: match merged.checkpoint.dir {
            Some(dir) if dir.is_empty() => None,
            Some(dir) => Some(PathBuf::from(dir)),
            None => Some(PathBuf::from(format!("out/{name}/checkpoints"))),
        },
        interval: merged.checkpoint.interval.unwrap_or(DEFAULT_CHECKPOINT_INTERVAL),
        keep: merged
            .checkpoint
            .keep
            .map_or(DEFAULT_CHECKPOINT_KEEP, |k| k.into_inner()),
    };
    let kafka = merged.source.kafka.map(|kafka| KafkaJob {
        settings: BrokerSettings {
            brokers: kafka.brokers.unwrap_or_else(|| DEFAULT_BROKERS.to_owned()),
            options: kafka.options.unwrap_or_default(),
        },
        topics: kafka.topics.unwrap_or_default(),
        group: kafka.group.unwrap_or_else(|| format!("skewless-{name}")),
        start: kafka.start,
        lag_tolerance: kafka.lag_tolerance.unwrap_or(LagTolerance {
            messages: Some(DEFAULT_LAG_TOLERANCE_MESSAGES),
            event_time: None,
        }),
        commit_interval: kafka.commit_interval.unwrap_or(Span::secs(1)),
    });

    Some(Job {
        max_retries: merged.limits.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
        kafka,
        name,
        path: path.to_owned(),
        inputs: merged.source.files.unwrap_or_default(),
        max_event_bytes: usize::try_from(max_event_bytes).unwrap_or(usize::MAX),
        time: TimePolicy {
            allowed_lateness: merged.time.allowed_lateness.unwrap_or(DEFAULT_ALLOWED_LATENESS),
            late_policy: merged.time.late_policy.unwrap_or(LatePolicy::Dlq),
            dedup_horizon: merged.time.dedup_horizon.unwrap_or(DEFAULT_DEDUP_HORIZON),
            idle_timeout: merged.time.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
        },
        sinks,
        checkpoint,
        registry,
        features,
    })
}
