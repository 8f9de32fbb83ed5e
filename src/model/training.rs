//! Training examples (DESIGN.md section 10): what a job's `[export]`, `[[labels]]` and
//! `[skew]` compile into, and the row the fold hands to the training-data sinks.
//!
//! A row's features are the view's `features` object, rendered by the code that
//! renders views, at the spine event; its labels are folded from the outcomes that
//! follow it within their windows.

use std::path::PathBuf;
use std::sync::Arc;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::model::event::Value;
use crate::model::schema::{FieldRef, FieldType};

/// What a label computes over a row's outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelFn {
    /// Whether any outcome followed (bool).
    Any,
    /// How many outcomes followed (int64).
    Count,
    /// The sum of a number field of the outcomes (float64).
    Sum,
    /// Seconds from the spine event to the first outcome; null if none (float64).
    FirstAfter,
}

impl LabelFn {
    /// The name job files use.
    pub fn name(self) -> &'static str {
        match self {
            LabelFn::Any => "any",
            LabelFn::Count => "count",
            LabelFn::Sum => "sum",
            LabelFn::FirstAfter => "first_after",
        }
    }
}

/// A compiled `[[labels]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelSpec {
    /// The label's name; its column is `label_<name>`.
    pub name: String,
    /// Window W, seconds: outcomes up to `ts + W` count.
    pub window: f64,
    /// What it computes.
    pub func: LabelFn,
    /// It has `match`: its outcomes are logged per item.
    pub per_item: bool,
    /// Per event type (registry index): `None` when the type is not an outcome of
    /// this label, else the fields it reads.
    pub per_type: Vec<Option<OutcomeFields>>,
}

/// The fields a label reads from one outcome type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutcomeFields {
    /// The field that must equal the row's `item_id` (`match`).
    pub matches: Option<FieldRef>,
    /// The number field `sum` adds.
    pub sum: Option<FieldRef>,
}

/// A carried spine payload field, written as a column of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct CarriedField {
    /// The column (the field's canonical name).
    pub name: String,
    /// Where the event carries it.
    pub field: FieldRef,
    /// Its type: string, number or bool.
    pub ty: FieldType,
}

/// Which files the export writes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExportFormats {
    /// Parquet under `dir`, Hive-partitioned by date.
    pub parquet: bool,
    /// The JSONL form, one row per line, sorted.
    pub jsonl: Option<PathBuf>,
}

/// A compiled `[export]` with its labels and skew thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSpec {
    /// The spine event type (registry index).
    pub spine: u16,
    /// Its name.
    pub spine_name: String,
    /// The field whose value is the row id.
    pub row_id: FieldRef,
    /// The string-list field exploded into one row per element.
    pub explode: Option<FieldRef>,
    /// Spine payload fields carried into columns.
    pub carry: Vec<CarriedField>,
    /// The object field holding the served features.
    pub snapshot: Option<FieldRef>,
    /// Where Parquet is written.
    pub dir: PathBuf,
    /// Which formats.
    pub formats: ExportFormats,
    /// Drop rows whose labels are not complete at the end of a bounded input.
    pub complete_only: bool,
    /// A file is closed once it holds this many bytes.
    pub roll_bytes: u64,
    /// A file is closed this long after it was opened.
    pub roll_interval: std::time::Duration,
    /// The labels, in declaration order.
    pub labels: Vec<LabelSpec>,
    /// The longest label window, seconds.
    pub max_window: f64,
    /// Per event type: whether any label reads it.
    pub outcome_types: Vec<bool>,
    /// The skew report's settings.
    pub skew: SkewSpec,
    /// Each feature's column type, in the feature spec's order.
    pub feature_kinds: Vec<FeatureKind>,
}

impl ExportSpec {
    /// Whether the export writes any files (a skew-only run writes none).
    pub fn writes_files(&self) -> bool {
        self.formats.parquet || self.formats.jsonl.is_some()
    }
}

/// A compiled `[skew]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SkewSpec {
    /// The overall mismatch rate above which `skewless skew` fails.
    pub max_mismatch_rate: Option<f64>,
    /// Per-feature thresholds.
    pub per_feature: Vec<(String, f64)>,
    /// The JSON report's path.
    pub report: Option<PathBuf>,
    /// The HTML report's path.
    pub html: Option<PathBuf>,
    /// The carried field the report groups by (`model_version` when carried).
    pub by: Option<usize>,
}

/// One label's value on a row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum LabelValue {
    /// `any`.
    Any(bool),
    /// `count`.
    Count(u64),
    /// `sum`.
    Sum(f64),
    /// `first_after`.
    FirstAfter(Option<f64>),
}

impl LabelValue {
    /// The value before any outcome.
    pub fn empty(func: LabelFn) -> LabelValue {
        match func {
            LabelFn::Any => LabelValue::Any(false),
            LabelFn::Count => LabelValue::Count(0),
            LabelFn::Sum => LabelValue::Sum(0.0),
            LabelFn::FirstAfter => LabelValue::FirstAfter(None),
        }
    }

    /// Counts one outcome `after` seconds past the spine event, with `amount` for sums.
    pub fn add(&mut self, after: f64, amount: f64) {
        match self {
            LabelValue::Any(any) => *any = true,
            LabelValue::Count(count) => *count += 1,
            LabelValue::Sum(sum) => *sum += amount,
            LabelValue::FirstAfter(first) => {
                if first.is_none() {
                    *first = Some(after);
                }
            }
        }
    }
}

/// One training example on its way to the sinks.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingRow {
    /// The spine's row id (`impression_id`).
    pub row_id: CompactString,
    /// The user.
    pub user_id: CompactString,
    /// The spine event's time, seconds.
    pub ts: f64,
    /// The spine event's id.
    pub event_id: CompactString,
    /// Carried spine payload values, in the spec's order.
    pub carried: Arc<[Value]>,
    /// `(position, item_id)` when exploded.
    pub item: Option<(i32, CompactString)>,
    /// The view's `features` object at the spine event (JSON text).
    pub features: Arc<str>,
    /// The labels, in the spec's order.
    pub labels: Vec<LabelValue>,
    /// No on-time outcome could still change the labels.
    pub labels_complete: bool,
    /// The spine event's `features_snapshot` (JSON text), when it had one.
    pub snapshot: Option<Arc<str>>,
}

impl TrainingRow {
    /// The JSONL form's sort order: `user_id`, `ts`, `event_id`, `position`.
    pub fn sort_key(&self) -> (&str, u64, &str, i32) {
        (
            &self.user_id,
            self.ts.to_bits(),
            &self.event_id,
            self.item.as_ref().map_or(-1, |(p, _)| *p),
        )
    }
}

/// A spine event whose label windows are still open: the rows it becomes, waiting
/// for their outcomes. Part of checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenRow {
    /// The spine's row id.
    pub row_id: CompactString,
    /// The user.
    pub user_id: CompactString,
    /// The spine event's time, seconds.
    pub ts: f64,
    /// The spine event's id.
    pub event_id: CompactString,
    /// Carried payload values.
    pub carried: Arc<[Value]>,
    /// The exploded items; `None` when the spine is not exploded.
    pub items: Option<Vec<CompactString>>,
    /// The features at the spine event.
    pub features: Arc<str>,
    /// The served features.
    pub snapshot: Option<Arc<str>>,
    /// The user's outcome count ([`UserOutcomes::next`]) when it opened: its
    /// outcomes are those numbered from here on.
    pub start: u64,
}

impl OpenRow {
    /// The rows it becomes, with `labels` (row by row, label by label) and
    /// `labels_complete` as given.
    pub fn rows(self, labels: Vec<LabelValue>, labels_complete: bool, out: &mut Vec<TrainingRow>) {
        let per_row = if self.items.is_some() {
            labels.len() / self.items.as_ref().map_or(1, |i| i.len().max(1))
        } else {
            labels.len()
        };
        let row = |item: Option<(i32, CompactString)>, labels: &[LabelValue]| TrainingRow {
            row_id: self.row_id.clone(),
            user_id: self.user_id.clone(),
            ts: self.ts,
            event_id: self.event_id.clone(),
            carried: Arc::clone(&self.carried),
            item,
            features: Arc::clone(&self.features),
            labels: labels.to_vec(),
            labels_complete,
            snapshot: self.snapshot.clone(),
        };
        match &self.items {
            None => out.push(row(None, &labels)),
            Some(items) => {
                for (position, item) in items.iter().enumerate() {
                    let labels = &labels[position * per_row..(position + 1) * per_row];
                    out.push(row(Some((position as i32, item.clone())), labels));
                }
            }
        }
    }
}

/// One label's outcomes of one user (of one item, for a label with `match`), in
/// apply order, which is event-time order: each row's label is read off the log
/// when its window closes (from the row's first outcome by binary search, to its
/// window's end likewise), so an outcome costs the same however many rows its user
/// has open (a busy user has thousands).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutcomeLog {
    /// Each outcome's sequence number among its user's outcomes.
    pub seqs: Vec<u64>,
    /// Each outcome's event time.
    pub times: Vec<f64>,
    /// Each outcome's amount (for `sum`).
    pub amounts: Vec<f64>,
}

impl OutcomeLog {
    /// Logs outcome `seq`.
    pub fn push(&mut self, seq: u64, time: f64, amount: f64) {
        self.seqs.push(seq);
        self.times.push(time);
        self.amounts.push(amount);
    }

    /// The label over the outcomes from sequence number `start` on whose time is at
    /// most `until`, for a row at `ts`.
    pub fn label(&self, func: LabelFn, start: u64, ts: f64, until: f64) -> LabelValue {
        let from = self.seqs.partition_point(|&s| s < start);
        let to = from + self.times[from..].partition_point(|&t| t <= until);
        match func {
            LabelFn::Any => LabelValue::Any(to > from),
            LabelFn::Count => LabelValue::Count((to - from) as u64),
            // In apply order from 0, as the fold would add them.
            LabelFn::Sum => LabelValue::Sum(self.amounts[from..to].iter().fold(0.0, |a, b| a + b)),
            LabelFn::FirstAfter => LabelValue::FirstAfter((to > from).then(|| self.times[from] - ts)),
        }
    }

    /// Drops the outcomes before sequence number `start`: no open row reads them.
    pub fn drop_before(&mut self, start: u64) {
        let n = self.seqs.partition_point(|&s| s < start);
        if n > 0 {
            self.seqs.drain(..n);
            self.times.drain(..n);
            self.amounts.drain(..n);
        }
    }

    /// Whether it holds no outcome.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

/// A user's outcome logs: per label, one log, or one per item for labels with
/// `match`; outcomes are numbered, and a row reads those numbered from where the
/// count stood when it opened.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserOutcomes {
    /// The next outcome's sequence number.
    pub next: u64,
    /// Per label (empty for labels with `match`).
    pub all: Vec<OutcomeLog>,
    /// Per item, per label (empty for labels without `match`).
    pub by_item: std::collections::BTreeMap<CompactString, Vec<OutcomeLog>>,
}

/// The column type of a feature (and of its `served__` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureKind {
    /// A count or size: int64.
    Int64,
    /// A sum, a time or another number: float64.
    Float64,
    /// `present`, or the latest bool: bool.
    Bool,
    /// The latest string: string.
    Utf8,
    /// `top_k`: list of `{key string, score float64}`.
    TopK,
    /// The latest value of an `any` field: its JSON text.
    Json,
}

/// The UTC date of `seconds`, `YYYY-MM-DD`.
pub fn utc_date(seconds: f64) -> String {
    let days = (seconds / 86_400.0).floor() as i64;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The end of a `YYYY-MM-DD` date, in epoch seconds.
pub fn date_end(date: &str) -> f64 {
    let mut parts = date.split('-').map(|p| p.parse::<i64>().unwrap_or(0));
    let (y, m, d) = (
        parts.next().unwrap_or(1970),
        parts.next().unwrap_or(1),
        parts.next().unwrap_or(1),
    );
    // Howard Hinnant's days-from-civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days + 1) as f64 * 86_400.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_days() {
        assert_eq!(utc_date(0.0), "1970-01-01");
        assert_eq!(utc_date(1_767_225_600.0), "2026-01-01");
        assert_eq!(utc_date(1_767_225_599.999), "2025-12-31");
        assert_eq!(utc_date(951_782_400.0), "2000-02-29");
        assert_eq!(date_end("2026-01-01"), 1_767_312_000.0);
        assert_eq!(date_end("2000-02-29"), 951_868_800.0);
    }
}
