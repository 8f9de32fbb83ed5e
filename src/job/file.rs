//! The job file as written: serde structs for each TOML section.
//!
//! Every section and every field is optional here, so that a job can `extends` another
//! and override only what differs; defaults are applied when the job is compiled
//! ([`crate::job::Job`]). Unknown keys are refused everywhere.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::kafka::settings::{LagTolerance, StartPosition};
use crate::model::features::{AggKind, FeatureFn};
use crate::model::schema::FieldType;
use crate::model::span::Span;

/// `[job]`: what the job is called.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSection {
    /// The job's name; DLQ records and summaries carry it. Default: the file's stem.
    pub name: Option<String>,
}

/// `[source]`: where records come from when the command line names nothing.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    /// Archived log partitions: files (`.jsonl`, `.jsonl.gz`), directories of segment
    /// files, or globs of either. Each path is one partition.
    pub files: Option<Vec<String>>,
    /// `[source.kafka]`: read Kafka topics (used when `files` is empty or absent).
    pub kafka: Option<KafkaSection>,
}

/// `[source.kafka]`: Kafka topics as the job's partitions.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// Bootstrap brokers, `host:port[,host:port]`.
    pub brokers: Option<String>,
    /// Topics to read; every partition of each is one partition of the job.
    pub topics: Option<Vec<String>>,
    /// The consumer group offsets are committed under. Default: `skewless-<job>`.
    pub group: Option<String>,
    /// Where to start: `committed`, `earliest`, `latest` or an RFC 3339 time. Default:
    /// `earliest` for jobs with state (they rebuild it from the log), `committed` for
    /// archive-only jobs.
    pub start: Option<StartPosition>,
    /// librdkafka settings passed through (`security.protocol`, `sasl.*`, `ssl.*`).
    /// Secret values never appear in logs or errors.
    pub options: Option<BTreeMap<String, String>>,
    /// When `skewless lag` reports the group as behind. Default: 10000 messages.
    pub lag_tolerance: Option<LagTolerance>,
    /// How often durable offsets are committed. Default: 1 s.
    pub commit_interval: Option<Span>,
}

/// `[limits]`: what a single record may cost.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Records larger than this many bytes are dead-lettered as `oversized`.
    /// Default: [`super::DEFAULT_MAX_EVENT_BYTES`] (1 MiB).
    pub max_event_bytes: Option<u64>,
    /// Retries of a retryable failure (backoff 1 s doubling, at most 60 s) before it is
    /// dead-lettered. Default: 3.
    pub max_retries: Option<u32>,
}

/// What happens to an event that arrives after the lateness bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// Dead-letter it with reason `late_event`.
    Dlq,
    /// Count it as `late` and drop it.
    Drop,
}

/// What a streaming job's online stores get (DESIGN.md section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OnlineViews {
    /// At each flush, the final state with the user's pending on-time events folded
    /// over it: an event is readable one flush after it is read.
    Provisional,
    /// Final views only: an event is readable once the watermark has passed it.
    Final,
}

/// `[time]`: event-time policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeSection {
    /// How far behind its partition's clock an event may be and still be applied.
    /// Default: [`super::DEFAULT_ALLOWED_LATENESS`] (5 s).
    pub allowed_lateness: Option<Span>,
    /// What happens to late events. Default: `dlq`.
    pub late_policy: Option<LatePolicy>,
    /// How long (event time) an `event_id` is remembered for deduplication.
    /// Default: [`super::DEFAULT_DEDUP_HORIZON`] (24 h).
    pub dedup_horizon: Option<Span>,
    /// A partition with no records for this long (wall clock) stops holding the
    /// watermark back. Default: [`super::DEFAULT_IDLE_TIMEOUT`] (10 s).
    pub idle_timeout: Option<Span>,
    /// A partition whose clock runs more than this ahead of the slowest active
    /// partition's (the watermark plus `allowed_lateness`) is not fetched until the
    /// watermark catches up, so pending events stay bounded behind a stalled or
    /// unreachable partition. Default: [`super::DEFAULT_MAX_PARTITION_SKEW`] (60 s).
    pub max_partition_skew: Option<Span>,
}

/// `[sinks]`: where views, dead letters and the run summary go. An empty string turns a
/// sink off.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinksSection {
    /// SQLite file holding the `user_features` table. Default: `out/<job>/views.sqlite`.
    pub views_sqlite: Option<String>,
    /// JSONL snapshot of every view, sorted by `user_id`, written at the end of a run.
    /// Default: none.
    pub views_jsonl: Option<String>,
    /// JSONL file of dead letters. Default: `out/<job>/dlq.jsonl`.
    pub dlq: Option<String>,
    /// Where the run summary is written. Default: `out/<job>/summary.json`.
    pub summary: Option<String>,
    /// How often a run over Kafka writes the views of the users that changed.
    /// Default: 50 ms.
    pub flush_interval: Option<Span>,
    /// What a streaming run's online stores (Redis, the SQLite store) get at each
    /// flush: `provisional` views (default) or `final` ones only.
    pub online: Option<OnlineViews>,
    /// The Kafka topic for dead letters when the job reads Kafka. Default: the first
    /// input topic's name with `.dlq` appended.
    pub dlq_topic: Option<String>,
    /// `[sinks.redis]`: the online store.
    pub redis: Option<RedisSection>,
    /// `[sinks.archive]`: every record read, as segment files a backfill reads back.
    pub archive: Option<ArchiveSection>,
}

/// `[checkpoint]`: durable state, so a restart resumes instead of starting over.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSection {
    /// Where checkpoints are written; an empty string turns them off. Default:
    /// `out/<job>/checkpoints`.
    pub dir: Option<String>,
    /// How often one is taken (wall clock). Default: 30 s.
    pub interval: Option<Span>,
    /// How many complete checkpoints are kept. Default: 3.
    pub keep: Option<Spanned<usize>>,
}

/// `[sinks.redis]`: views in Redis, one key per user.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    /// `redis://host:port[/db]`.
    pub url: Option<String>,
    /// Key prefix; a view lives at `<prefix><user_id>`. Default: `user_state:`.
    pub key_prefix: Option<String>,
    /// Expiry of each key, refreshed on every write. Default: 30 days.
    pub ttl: Option<Span>,
}

/// `[sinks.archive]`: segment files `<dir>/<topic>/<partition>/<first-offset>.jsonl.zst`
/// (or `.jsonl.gz`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveSection {
    /// The archive's root directory.
    pub dir: Option<String>,
    /// A segment is closed once it holds this many (uncompressed) bytes. Default: 64 MiB.
    pub roll_bytes: Option<u64>,
    /// A segment is closed this long after it was opened. Default: 5 minutes.
    pub roll_interval: Option<Span>,
    /// `zstd` or `gzip`. Default: zstd.
    pub compression: Option<crate::sinks::archive::ArchiveCompression>,
}

/// One payload field of an event schema.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldDecl {
    /// The field's JSON type.
    #[serde(rename = "type")]
    pub ty: FieldType,
    /// Whether the field must be present and non-null. Default: false.
    #[serde(default)]
    pub required: bool,
    /// The value an absent optional field takes (upcast). Default: absent.
    pub default: Option<Spanned<toml::Value>>,
    /// The canonical name this field is known by after upcasting (a v1 `amount`
    /// becomes `price`). Default: the field's own name.
    pub rename: Option<Spanned<String>>,
}

/// `[[events]]`: the schema of one MAJOR version of one event type.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventDecl {
    /// The `event_type` this schema applies to.
    #[serde(rename = "type")]
    pub event_type: Spanned<String>,
    /// The MAJOR version this schema covers; every MINOR version of it is accepted.
    pub version: Spanned<u32>,
    /// The payload's fields by name. A type with no fields takes no payload.
    #[serde(default)]
    pub fields: BTreeMap<Spanned<String>, Spanned<FieldDecl>>,
}

/// The `(decay, increment)` an event type applies to a decayed score.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightDecl {
    /// Factor applied to the old score.
    pub decay: f64,
    /// Amount added after decaying.
    pub increment: f64,
}

/// `[[state]]`: one per-user aggregation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateDecl {
    /// The state's name in the view's `state` object.
    pub name: Spanned<String>,
    /// How events fold into it.
    pub agg: AggKind,
    /// The event types it reads (all but `decayed_score`).
    pub on: Option<Vec<Spanned<String>>>,
    /// The field it reads: a canonical payload field, or `event_time`.
    pub field: Option<Spanned<String>>,
    /// `decayed_score`: the string field whose values are the groups.
    pub group_by: Option<Spanned<String>>,
    /// `decayed_score`: the weights per event type; the types it reads.
    pub weights: Option<BTreeMap<Spanned<String>, WeightDecl>>,
    /// `last_k`: how many values to keep.
    pub k: Option<Spanned<usize>>,
}

/// `[[features]]`: one output feature of the view.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureDecl {
    /// The feature's name in the view's `features` object.
    pub name: Spanned<String>,
    /// What it computes.
    #[serde(rename = "fn")]
    pub func: FeatureFn,
    /// The state it reads.
    pub of: Spanned<String>,
    /// `top_k`: how many pairs.
    pub k: Option<Spanned<usize>>,
}

/// A file format the training export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// Parquet (zstd), Hive-partitioned by date under `dir`.
    Parquet,
    /// One JSON object per row, sorted, at `jsonl`.
    Jsonl,
}

/// `[export]`: training examples, one per spine event (or per element of its
/// exploded list), with the features as they were at that event (DESIGN.md section
/// 10). A file that `extends` another replaces this section as a whole.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSection {
    /// The spine event type. Default: `recommendation.items_shown`.
    pub spine: Option<Spanned<String>>,
    /// The spine payload field that is the row id. Default: `impression_id`.
    pub row_id: Option<Spanned<String>>,
    /// A string-list field of the spine: one row per element (`position`, `item_id`).
    pub explode: Option<Spanned<String>>,
    /// Spine payload fields written as columns (`model_version`).
    pub carry: Option<Vec<Spanned<String>>>,
    /// The object field holding the features the server used. Default:
    /// `features_snapshot` when the spine type has it; `""` turns it off.
    pub snapshot: Option<Spanned<String>>,
    /// Where the Parquet dataset is written. Default: `out/<job>/training`; `""`
    /// turns the export off (a job that extends an exporting one).
    pub dir: Option<String>,
    /// Which formats: `parquet` and/or `jsonl`. Default: `["parquet"]`.
    pub formats: Option<Spanned<Vec<ExportFormat>>>,
    /// The JSONL form's path. Default: `<dir>.jsonl`.
    pub jsonl: Option<String>,
    /// Leave out rows whose label windows had not closed when a bounded input ended.
    /// Default: false (they are written with `labels_complete` false).
    pub complete_only: Option<bool>,
    /// A Parquet file is closed once it holds this many bytes. Default: 128 MiB.
    pub roll_bytes: Option<u64>,
    /// A Parquet file is closed this long after it was opened. Default: 10 minutes.
    pub roll_interval: Option<Span>,
}

/// `[[labels]]`: what happened after a spine event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelDecl {
    /// The label's name; its column is `label_<name>`.
    pub name: Spanned<String>,
    /// The outcome event types.
    pub on: Spanned<Vec<Spanned<String>>>,
    /// How long after the spine event an outcome counts.
    pub window: Spanned<Span>,
    /// An outcome payload field that must equal the row's `item_id`.
    #[serde(rename = "match")]
    pub matches: Option<Spanned<String>>,
    /// What it computes.
    #[serde(rename = "fn")]
    pub func: crate::model::training::LabelFn,
    /// `sum`: the number field added up.
    pub field: Option<Spanned<String>>,
}

/// `[skew]`: the serving-skew report and its gate. A file that `extends` another
/// replaces this section as a whole.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkewSection {
    /// Above this overall mismatch rate `skewless skew` exits 1.
    pub max_mismatch_rate: Option<Spanned<f64>>,
    /// Per-feature thresholds.
    pub per_feature: Option<BTreeMap<Spanned<String>, Spanned<f64>>>,
    /// The JSON report. Default: `out/<job>/skew.json`.
    pub report: Option<String>,
    /// The HTML report. Default: `out/<job>/skew.html`.
    pub html: Option<String>,
}
