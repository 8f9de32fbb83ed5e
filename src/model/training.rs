//! Training examples (DESIGN.md section 10): what a job's `[export]`, `[[labels]]` and
//! `[skew]` compile into, and the row the fold hands to the training-data sinks.
//!
//! A row's features are the view's `features` values, computed by the code that
//! renders views, at the spine event; its labels are folded from the outcomes that
//! follow it within their windows.

use std::path::PathBuf;
use std::sync::Arc;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::model::event::Value;
use crate::model::features::FeatureValue;
use crate::model::schema::{FieldRef, FieldType};
use crate::model::served::Served;

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

/// A spine event whose label windows have closed, on its way to the sinks: the rows
/// it becomes (one per exploded item, else one), sent as one record so that what
/// they share (ids, carried values, features, snapshot) is neither copied per row nor
/// moved through the dataflow once per row.
#[derive(Debug, Clone)]
pub struct SpineRows {
    /// The spine event.
    pub spine: OpenRow,
    /// The labels, row by row, label by label.
    pub labels: Vec<LabelValue>,
    /// No on-time outcome could still change the labels.
    pub labels_complete: bool,
    /// The served features as values, once a reader has parsed them (the skew
    /// counters do, and hand them on to the writer).
    pub parsed: Option<Box<Parsed>>,
}

impl SpineRows {
    /// The rows of `spine`, with `labels` row by row.
    pub fn new(spine: OpenRow, labels: Vec<LabelValue>, labels_complete: bool) -> SpineRows {
        SpineRows {
            spine,
            labels,
            labels_complete,
            parsed: None,
        }
    }

    /// How many rows it becomes.
    pub fn len(&self) -> usize {
        self.spine.items.as_ref().map_or(1, Vec::len)
    }

    /// Whether it becomes no row (an exploded event with an empty list).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its rows, in position order.
    pub fn rows(&self) -> impl Iterator<Item = TrainingRow<'_>> {
        let per_row = self.labels.len() / self.len().max(1);
        (0..self.len()).map(move |position| TrainingRow {
            spine: &self.spine,
            item: self
                .spine
                .items
                .as_ref()
                .map(|items| (position as i32, items[position].as_str())),
            labels: &self.labels[position * per_row..(position + 1) * per_row],
            labels_complete: self.labels_complete,
        })
    }

    /// The features and served features as values, parsed on first use.
    pub fn parsed(&mut self, features: &[String]) -> &Parsed {
        self.parsed
            .get_or_insert_with(|| Box::new(Parsed::of(features, &self.spine)))
    }
}

/// One training example: a row of a [`SpineRows`].
#[derive(Debug, Clone, Copy)]
pub struct TrainingRow<'a> {
    /// Its spine event.
    pub spine: &'a OpenRow,
    /// `(position, item_id)` when exploded.
    pub item: Option<(i32, &'a str)>,
    /// Its labels, in the spec's order.
    pub labels: &'a [LabelValue],
    /// No on-time outcome could still change the labels.
    pub labels_complete: bool,
}

/// A spine event's served features, parsed from the snapshot's JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// Served values as the snapshot holds them, in the spec's order (`None` when
    /// the snapshot lacks the feature; all `None` without a snapshot).
    pub served: Vec<Option<Served>>,
    /// The snapshot's `as_of`, seconds.
    pub served_as_of: Option<f64>,
}

impl Parsed {
    /// Parses `spine`'s snapshot; `features` are the feature names in the spec's order.
    pub fn of(features: &[String], spine: &OpenRow) -> Parsed {
        let mut served = match spine.snapshot.as_deref() {
            Some(snapshot) => fields(snapshot, Names(features, "as_of")),
            None => vec![None; features.len() + 1],
        };
        let served_as_of = served.pop().flatten().and_then(|v| v.as_f64());
        Parsed { served, served_as_of }
    }
}

/// Field names looked up by position: a list, then one more name after it.
struct Names<'a>(&'a [String], &'a str);

impl Names<'_> {
    fn len(&self) -> usize {
        self.0.len() + 1
    }

    /// The position of `name`; `hint` is tried first (snapshots usually list the
    /// features in order).
    fn find(&self, name: &str, hint: usize) -> Option<usize> {
        if self.0.get(hint).is_some_and(|n| n == name) {
            return Some(hint);
        }
        self.0
            .iter()
            .position(|n| n == name)
            .or_else(|| (self.1 == name).then_some(self.0.len()))
    }
}

/// The values of a JSON object's fields `names`, by position (`None` when absent, or
/// when the text is not an object), without building the object: its other fields
/// are skipped unread.
fn fields(text: &str, names: Names<'_>) -> Vec<Option<Served>> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
    struct Seed<'n>(Names<'n>);
    impl<'de> DeserializeSeed<'de> for Seed<'_> {
        type Value = Vec<Option<Served>>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Seed<'_> {
        type Value = Vec<Option<Served>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut values = vec![None; self.0.len()];
            let mut next = 0;
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                match self.0.find(&key, next) {
                    Some(i) => {
                        values[i] = Some(map.next_value()?);
                        next = i + 1;
                    }
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(values)
        }
    }
    let n = names.len();
    let mut de = serde_json::Deserializer::from_str(text);
    Seed(names).deserialize(&mut de).unwrap_or_else(|_| vec![None; n])
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
    /// The features at the spine event, in the spec's order.
    pub features: Arc<[FeatureValue]>,
    /// The served features.
    pub snapshot: Option<Arc<str>>,
    /// The user's outcome count ([`UserOutcomes::next`]) when it opened: its
    /// outcomes are those numbered from here on.
    pub start: u64,
}

/// One outcome as a log holds it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Its sequence number among its user's outcomes.
    pub seq: u64,
    /// Its event time.
    pub time: f64,
    /// Its amount (for `sum`).
    pub amount: f64,
}

/// One label's outcomes of one user (of one item, for a label with `match`), in
/// apply order, which is event-time order: each row's label is read off the log
/// when its window closes (from the row's first outcome by binary search, to its
/// window's end likewise), so an outcome costs the same however many rows its user
/// has open (a busy user has thousands).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutcomeLog(pub Vec<Outcome>);

impl OutcomeLog {
    /// Logs outcome `seq`.
    pub fn push(&mut self, seq: u64, time: f64, amount: f64) {
        self.0.push(Outcome { seq, time, amount });
    }

    /// The label over the outcomes from sequence number `start` on whose time is at
    /// most `until`, for a row at `ts`.
    pub fn label(&self, func: LabelFn, start: u64, ts: f64, until: f64) -> LabelValue {
        let from = self.0.partition_point(|o| o.seq < start);
        let counted = &self.0[from..from + self.0[from..].partition_point(|o| o.time <= until)];
        match func {
            LabelFn::Any => LabelValue::Any(!counted.is_empty()),
            LabelFn::Count => LabelValue::Count(counted.len() as u64),
            // In apply order from 0, as the fold would add them.
            LabelFn::Sum => LabelValue::Sum(counted.iter().fold(0.0, |a, o| a + o.amount)),
            LabelFn::FirstAfter => LabelValue::FirstAfter(counted.first().map(|o| o.time - ts)),
        }
    }

    /// Drops the outcomes before sequence number `start`: no open row reads them.
    pub fn drop_before(&mut self, start: u64) {
        let n = self.0.partition_point(|o| o.seq < start);
        if n > 0 {
            self.0.drain(..n);
        }
    }

    /// Whether it holds no outcome.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many outcomes it holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// The per-label logs of one item that open rows of a user show.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ItemLogs {
    /// Per label (empty logs for labels without `match`); no logs at all until the
    /// item's first outcome.
    pub logs: Vec<OutcomeLog>,
    /// How many of the user's open rows show the item (not checkpointed: counted
    /// again from the restored rows).
    #[serde(skip)]
    pub shown: u32,
}

/// A user's outcome logs: per label, one log, or one per item for labels with
/// `match`; outcomes are numbered, and a row reads those numbered from where the
/// count stood when it opened. Only the items open rows show are logged: a row
/// reads only outcomes after it opened, of its own item.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserOutcomes {
    /// The next outcome's sequence number.
    pub next: u64,
    /// Per label (empty for labels with `match`).
    pub all: Vec<OutcomeLog>,
    /// Per item shown (empty for labels without `match`).
    pub by_item: hashbrown::HashMap<CompactString, ItemLogs>,
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
    use serde_json::json;

    use super::*;

    fn spine(snapshot: Option<&str>) -> OpenRow {
        OpenRow {
            row_id: "r".into(),
            user_id: "u".into(),
            ts: 10.0,
            event_id: "e".into(),
            carried: Arc::from(Vec::new()),
            items: None,
            features: Arc::from(Vec::new()),
            snapshot: snapshot.map(Arc::from),
            start: 0,
        }
    }

    #[test]
    fn served_values_are_by_feature_position_in_any_order() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let parsed = Parsed::of(
            &names,
            &spine(Some(r#"{"c":true,"zz":{"deep":[1]},"as_of":7.5,"a":"1","a":2}"#)),
        );
        // Absent is None, a later duplicate key wins, unknown fields are skipped.
        let served = |v: serde_json::Value| Some(Served::from(v));
        assert_eq!(parsed.served, vec![served(json!(2)), None, served(json!(true))]);
        assert_eq!(parsed.served_as_of, Some(7.5));

        let none = Parsed::of(&names, &spine(None));
        assert_eq!(none.served, vec![None, None, None]);
        assert_eq!(none.served_as_of, None);

        // A snapshot that is not an object serves nothing.
        let odd = Parsed::of(&names, &spine(Some("[1,2]")));
        assert_eq!(odd.served, vec![None, None, None]);
    }

    #[test]
    fn outcome_logs_count_from_a_rows_start_up_to_its_window() {
        let mut log = OutcomeLog::default();
        for (seq, time, amount) in [(0, 1.0, 5.0), (1, 2.0, 7.0), (2, 3.0, 11.0), (3, 9.0, 13.0)] {
            log.push(seq, time, amount);
        }
        assert_eq!(log.label(LabelFn::Count, 1, 1.5, 3.0), LabelValue::Count(2));
        assert_eq!(log.label(LabelFn::Sum, 1, 1.5, 3.0), LabelValue::Sum(18.0));
        assert_eq!(log.label(LabelFn::Any, 3, 8.0, 8.5), LabelValue::Any(false));
        assert_eq!(
            log.label(LabelFn::FirstAfter, 2, 2.5, 100.0),
            LabelValue::FirstAfter(Some(0.5))
        );
        log.drop_before(2);
        assert_eq!(log.len(), 2);
        assert_eq!(log.label(LabelFn::Count, 0, 0.0, 100.0), LabelValue::Count(2));
    }

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
