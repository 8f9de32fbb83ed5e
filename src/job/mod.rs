//! Job definitions: load a `jobs/*.toml` file, check it, and compile it into a [`Job`].
//!
//! A job file declares the whole job: where records come from, the event schemas and
//! their upcasts, the time policy, the per-user state and features, and the sinks.
//! Loading reports every problem it finds, each with the file, line, column and key.
//! A file may `extends = "other.toml"` (relative to itself) and override sections or
//! single fields of the base; lists (`[[events]]`, `[[state]]`, `[[features]]`) are
//! replaced as a whole.

pub mod compile;
pub mod defaults;
pub mod file;
mod load;
mod locate;
mod problems;

use std::path::{Path, PathBuf};

use crate::kafka::settings::{BrokerSettings, KafkaJob};
use crate::model::features::FeatureSpec;
use crate::model::schema::Registry;
use crate::model::span::Span;
use crate::sinks::archive::ArchiveSink;
use crate::sinks::redis::RedisSink;
pub use defaults::*;
use file::ArchiveSection;
pub use file::{LatePolicy, OnlineViews};
use load::{Merged, load_chain, merge};
pub use problems::{JobError, Located, Problem, Problems, SourceFile};

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
    /// The training-data export (`[export]`), when the job has one.
    pub export: Option<crate::model::training::ExportSpec>,
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
    /// How far a partition's clock may run ahead of the slowest active partition's
    /// before it stops being fetched.
    pub max_partition_skew: Span,
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
    /// What a streaming run's online stores get at each flush.
    pub online: OnlineViews,
    /// The Kafka dead-letter topic; `None` for `<first topic>.dlq`.
    pub dlq_topic: Option<String>,
    /// The Redis view sink.
    pub redis: Option<RedisSink>,
    /// The archive sink.
    pub archive: Option<ArchiveSink>,
}

impl Job {
    /// Loads and checks the job file at `path`.
    pub fn load(path: &Path) -> Result<Job, JobError> {
        let mut files = Vec::new();
        let mut problems = Problems::default();
        let layers = load_chain(path, &mut files, &mut problems, 0)?;
        if problems.syntax {
            return Err(JobError::Invalid(problems.list));
        }
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
    let mut registry = compile::registry(&events, files, problems);
    let features = compile::features(&mut registry, &state, &features, files, problems)?;
    let export = match &merged.export {
        // `dir = ""` turns the export off, as an empty path turns off every sink.
        Some(export) if export.value.dir.as_deref() == Some("") => None,
        Some(export) => compile::export(
            &name,
            &mut registry,
            &features,
            compile::export::ExportDecls {
                export,
                labels: merged.labels.as_ref(),
                skew: merged.skew.as_ref(),
            },
            files,
            problems,
        ),
        None => {
            for (key, file) in [
                ("labels", merged.labels.as_ref().map(|l| l.file)),
                ("skew", merged.skew.as_ref().map(|s| s.file)),
            ] {
                if let Some(file) = file {
                    problems.at(
                        &files[file],
                        0..0,
                        key,
                        format!("`[{key}]` needs an `[export]` section"),
                    );
                }
            }
            None
        }
    };
    let max_event_bytes = merged.limits.max_event_bytes.unwrap_or(DEFAULT_MAX_EVENT_BYTES);
    // A sink path defaults to `out/<job>/<file>`; an empty string turns the sink off.
    let sink_path = |set: Option<String>, default: Option<&str>| match set {
        Some(path) if path.is_empty() => None,
        Some(path) => Some(PathBuf::from(path)),
        None => default.map(|file| defaults::output_path(&name, file)),
    };
    let sinks = SinkPaths {
        views_sqlite: sink_path(merged.sinks.views_sqlite, Some("views.sqlite")),
        views_jsonl: sink_path(merged.sinks.views_jsonl, None),
        dlq: sink_path(merged.sinks.dlq, Some("dlq.jsonl")),
        summary: sink_path(merged.sinks.summary, Some("summary.json")),
        flush_interval: merged.sinks.flush_interval.unwrap_or(DEFAULT_FLUSH_INTERVAL),
        online: merged.sinks.online.unwrap_or(OnlineViews::Provisional),
        dlq_topic: merged.sinks.dlq_topic,
        redis: merged.sinks.redis.map(|redis| {
            let default = defaults::redis();
            RedisSink {
                url: redis.url.unwrap_or(default.url),
                key_prefix: redis.key_prefix.unwrap_or(default.key_prefix),
                ttl: redis.ttl.unwrap_or(default.ttl),
            }
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
                compression,
            }) => Some(ArchiveSink {
                dir: PathBuf::from(dir),
                roll_bytes: roll_bytes.unwrap_or(DEFAULT_ARCHIVE_ROLL_BYTES),
                roll_interval: roll_interval.unwrap_or(DEFAULT_ARCHIVE_ROLL_INTERVAL),
                compression: compression.unwrap_or_default(),
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
            None => Some(defaults::output_path(&name, "checkpoints")),
        },
        interval: merged.checkpoint.interval.unwrap_or(DEFAULT_CHECKPOINT_INTERVAL),
        keep: merged
            .checkpoint
            .keep
            .map_or(DEFAULT_CHECKPOINT_KEEP, |k| k.into_inner()),
    };
    let kafka = merged.source.kafka.map(|kafka| {
        let default = defaults::kafka(&name);
        KafkaJob {
            settings: BrokerSettings {
                brokers: kafka.brokers.unwrap_or(default.settings.brokers),
                options: kafka.options.unwrap_or_default(),
            },
            topics: kafka.topics.unwrap_or_default(),
            group: kafka.group.unwrap_or(default.group),
            start: kafka.start,
            lag_tolerance: kafka.lag_tolerance.unwrap_or(default.lag_tolerance),
            commit_interval: kafka.commit_interval.unwrap_or(default.commit_interval),
        }
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
            max_partition_skew: merged
                .time
                .max_partition_skew
                .unwrap_or(DEFAULT_MAX_PARTITION_SKEW),
        },
        sinks,
        checkpoint,
        registry,
        features,
        export,
    })
}
