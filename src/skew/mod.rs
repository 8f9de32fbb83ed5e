//! The serving-skew report (DESIGN.md section 10): for every spine event that
//! carried the features the server used, each feature's served value against the
//! one a replay computes, counted by feature, model version, UTC hour and serving
//! staleness; the JSON report, the stderr table and the gate.

pub mod html;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::model::training::{ExportSpec, SpineRows};

/// How stale the served features were: `ts - served_as_of`.
pub const STALENESS: [&str; 5] = ["<1s", "1-10s", "10-60s", ">60s", "unknown"];

/// The staleness bucket of a serving `as_of` for a spine event at `ts`.
pub fn staleness_bucket(ts: f64, as_of: Option<f64>) -> u8 {
    match as_of.map(|a| ts - a) {
        None => 4,
        Some(s) if s < 1.0 => 0,
        Some(s) if s < 10.0 => 1,
        Some(s) if s <= 60.0 => 2,
        Some(_) => 3,
    }
}

/// What the counters are keyed by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SkewKey {
    /// The feature's index in the job's features.
    pub feature: u16,
    /// The carried model version ("" when the export carries none).
    pub model_version: String,
    /// The UTC hour of `ts`, in hours since the epoch.
    pub hour: i64,
    /// The staleness bucket (index into [`STALENESS`]).
    pub staleness: u8,
}

/// Counters of one key: a commutative monoid, so they add up in any order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SkewStats {
    /// Spine events with a snapshot.
    pub rows: i64,
    /// Of them, those whose snapshot lacks the feature.
    pub served_missing: i64,
    /// Of the others, those whose served value differs.
    pub mismatches: i64,
    /// Comparisons of two numbers.
    pub numbers: i64,
    /// Sum of their absolute differences.
    pub abs_diff: f64,
    /// Sum of their SMAPE.
    pub smape: f64,
    /// Comparisons of two lists.
    pub lists: i64,
    /// Sum of their Jaccard overlaps.
    pub jaccard: f64,
}

impl Eq for SkewStats {}

impl PartialOrd for SkewStats {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SkewStats {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (
            self.rows,
            self.served_missing,
            self.mismatches,
            self.numbers,
            self.lists,
        )
            .cmp(&(
                other.rows,
                other.served_missing,
                other.mismatches,
                other.numbers,
                other.lists,
            ))
            .then(self.abs_diff.total_cmp(&other.abs_diff))
            .then(self.smape.total_cmp(&other.smape))
            .then(self.jaccard.total_cmp(&other.jaccard))
    }
}

impl differential_dataflow::difference::IsZero for SkewStats {
    fn is_zero(&self) -> bool {
        *self == SkewStats::default()
    }
}

impl differential_dataflow::difference::Semigroup for SkewStats {
    fn plus_equals(&mut self, rhs: &Self) {
        self.rows += rhs.rows;
        self.served_missing += rhs.served_missing;
        self.mismatches += rhs.mismatches;
        self.numbers += rhs.numbers;
        self.abs_diff += rhs.abs_diff;
        self.smape += rhs.smape;
        self.lists += rhs.lists;
        self.jaccard += rhs.jaccard;
    }
}

impl SkewStats {
    /// Served values compared (rows less those missing one).
    pub fn compared(&self) -> i64 {
        self.rows - self.served_missing
    }

    /// mismatches / compared, or 0 when nothing was compared.
    pub fn mismatch_rate(&self) -> f64 {
        if self.compared() > 0 {
            self.mismatches as f64 / self.compared() as f64
        } else {
            0.0
        }
    }
}

/// Whether two numbers agree: within `1e-9 * max(1, |a|, |b|)`.
pub fn numbers_agree(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * 1f64.max(a.abs()).max(b.abs())
}

/// Whether a served value equals the recomputed one (section 10's rule).
pub fn agree(served: &Json, computed: &Json) -> bool {
    match (served, computed) {
        (Json::Null, Json::Null) => true,
        (Json::Number(a), Json::Number(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) => numbers_agree(a, b),
            _ => false,
        },
        (Json::String(a), Json::String(b)) => a == b,
        (Json::Bool(a), Json::Bool(b)) => a == b,
        (Json::Array(a), Json::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| agree(x, y)),
        (Json::Object(a), Json::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| agree(v, w)))
        }
        _ => false,
    }
}

/// A list element as the Jaccard overlap compares it: a string by its text, any
/// other value by its JSON text (never equal to a string).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Member<'a> {
    Str(&'a str),
    Text(String),
}

/// A list's elements for the Jaccard overlap, sorted and distinct: a `[key, score]`
/// pair counts as its key.
fn members(list: &[Json]) -> Vec<Member<'_>> {
    let mut members: Vec<Member<'_>> = list
        .iter()
        .map(|item| match item {
            Json::Array(pair) if !pair.is_empty() => &pair[0],
            other => other,
        })
        .map(|value| match value {
            Json::String(s) => Member::Str(s),
            other => Member::Text(other.to_string()),
        })
        .collect();
    members.sort_unstable();
    members.dedup();
    members
}

/// The counters one comparison adds.
pub fn compare(served: Option<&Json>, computed: &Json) -> SkewStats {
    let mut stats = SkewStats {
        rows: 1,
        ..SkewStats::default()
    };
    let Some(served) = served else {
        stats.served_missing = 1;
        return stats;
    };
    stats.mismatches = i64::from(!agree(served, computed));
    match (served, computed) {
        (Json::Number(a), Json::Number(b)) => {
            if let (Some(a), Some(b)) = (a.as_f64(), b.as_f64()) {
                stats.numbers = 1;
                stats.abs_diff = (a - b).abs();
                let scale = (a.abs() + b.abs()) / 2.0;
                stats.smape = if scale > 0.0 { (a - b).abs() / scale } else { 0.0 };
            }
        }
        (Json::Array(a), Json::Array(b)) => {
            let (a, b) = (members(a), members(b));
            let both = a.iter().filter(|m| b.binary_search(m).is_ok()).count();
            let union = a.len() + b.len() - both;
            stats.lists = 1;
            stats.jaccard = if union == 0 {
                1.0
            } else {
                both as f64 / union as f64
            };
        }
        _ => {}
    }
    stats
}

/// The comparisons of one spine event, if it had a snapshot: `(key, counters)` per
/// feature.
pub fn observe(spec: &ExportSpec, features: &[String], spine: &mut SpineRows) -> Vec<(SkewKey, SkewStats)> {
    if spine.spine.snapshot.is_none() {
        return Vec::new();
    }
    let row = &spine.spine;
    let model_version = spec
        .skew
        .by
        .and_then(|i| match &row.carried[i] {
            crate::model::event::Value::Str(s) => Some(s.to_string()),
            _ => None,
        })
        .unwrap_or_default();
    let (ts, hour) = (row.ts, (row.ts / 3600.0).floor() as i64);
    let parsed = spine.parsed(features);
    let staleness = staleness_bucket(ts, parsed.served_as_of);
    parsed
        .served
        .iter()
        .zip(&parsed.features)
        .enumerate()
        .map(|(i, (served, computed))| {
            (
                SkewKey {
                    feature: i as u16,
                    model_version: model_version.clone(),
                    hour,
                    staleness,
                },
                compare(served.as_ref(), computed),
            )
        })
        .collect()
}

/// A mismatching served value, as the report shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Example {
    /// The feature.
    pub feature: String,
    /// The spine row.
    pub row_id: String,
    /// The user.
    pub user_id: String,
    /// The spine event's time.
    pub ts: f64,
    /// What the server used.
    pub served: serde_json::Value,
    /// What the replay computed.
    pub computed: serde_json::Value,
}

/// The counters of a run, by key.
pub type SkewTotals = BTreeMap<SkewKey, SkewStats>;

/// One line of the report: a group's counters and rates.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Line {
    /// Spine events with a snapshot.
    pub rows: i64,
    /// Those whose snapshot lacks the feature.
    pub served_missing: i64,
    /// Served values that differ.
    pub mismatches: i64,
    /// mismatches / (rows - served_missing).
    pub mismatch_rate: f64,
    /// Mean absolute difference, for numbers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_abs_diff: Option<f64>,
    /// Mean SMAPE, for numbers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_smape: Option<f64>,
    /// Mean Jaccard overlap, for lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_jaccard: Option<f64>,
}

impl From<&SkewStats> for Line {
    fn from(s: &SkewStats) -> Line {
        let mean = |sum: f64, n: i64| (n > 0).then(|| sum / n as f64);
        Line {
            rows: s.rows,
            served_missing: s.served_missing,
            mismatches: s.mismatches,
            mismatch_rate: s.mismatch_rate(),
            mean_abs_diff: mean(s.abs_diff, s.numbers),
            mean_smape: mean(s.smape, s.numbers),
            mean_jaccard: mean(s.jaccard, s.lists),
        }
    }
}

/// One feature's part of the report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FeatureReport {
    /// The feature.
    pub feature: String,
    /// Overall.
    #[serde(flatten)]
    pub overall: Line,
    /// The threshold it is held to, if any.
    pub max_mismatch_rate: Option<f64>,
    /// Mismatches by serving staleness.
    pub by_staleness: BTreeMap<String, Line>,
    /// By model version.
    pub by_model_version: BTreeMap<String, Line>,
    /// By UTC hour of `ts` (`YYYY-MM-DDTHH`).
    pub by_hour: BTreeMap<String, Line>,
}

/// The skew report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// The job.
    pub job: String,
    /// Spine events with a snapshot.
    pub rows: i64,
    /// All features together.
    pub overall: Line,
    /// The overall threshold.
    pub max_mismatch_rate: Option<f64>,
    /// Per feature, in the job's order.
    pub features: Vec<FeatureReport>,
    /// Features over their threshold.
    pub failed: Vec<String>,
}

/// `YYYY-MM-DDTHH` of an hour since the epoch.
fn hour_label(hour: i64) -> String {
    format!(
        "{}T{:02}",
        crate::model::training::utc_date(hour as f64 * 3600.0),
        hour.rem_euclid(24)
    )
}

impl Report {
    /// The report of `totals` for `spec` and the job's `features`.
    pub fn new(job: &str, spec: &ExportSpec, features: &[String], totals: &SkewTotals) -> Report {
        let mut overall = SkewStats::default();
        let mut reports = Vec::new();
        for (i, name) in features.iter().enumerate() {
            let mut all = SkewStats::default();
            let mut by_staleness: BTreeMap<String, SkewStats> = BTreeMap::new();
            let mut by_model: BTreeMap<String, SkewStats> = BTreeMap::new();
            let mut by_hour: BTreeMap<i64, SkewStats> = BTreeMap::new();
            for (key, stats) in totals.iter().filter(|(k, _)| k.feature as usize == i) {
                use differential_dataflow::difference::Semigroup;
                all.plus_equals(stats);
                by_staleness
                    .entry(STALENESS[key.staleness as usize].to_owned())
                    .or_default()
                    .plus_equals(stats);
                by_model
                    .entry(key.model_version.clone())
                    .or_default()
                    .plus_equals(stats);
                by_hour.entry(key.hour).or_default().plus_equals(stats);
            }
            use differential_dataflow::difference::Semigroup;
            overall.plus_equals(&all);
            let threshold = spec
                .skew
                .per_feature
                .iter()
                .find(|(f, _)| f == name)
                .map(|(_, t)| *t)
                .or(spec.skew.max_mismatch_rate);
            reports.push(FeatureReport {
                feature: name.clone(),
                overall: Line::from(&all),
                max_mismatch_rate: threshold,
                by_staleness: by_staleness.iter().map(|(k, v)| (k.clone(), v.into())).collect(),
                by_model_version: by_model.iter().map(|(k, v)| (k.clone(), v.into())).collect(),
                by_hour: by_hour.iter().map(|(k, v)| (hour_label(*k), v.into())).collect(),
            });
        }
        let failed = reports
            .iter()
            .filter(|r| r.max_mismatch_rate.is_some_and(|t| r.overall.mismatch_rate > t))
            .map(|r| r.feature.clone())
            .collect();
        Report {
            job: job.to_owned(),
            rows: reports.first().map_or(0, |r| r.overall.rows),
            overall: Line::from(&overall),
            max_mismatch_rate: spec.skew.max_mismatch_rate,
            features: reports,
            failed,
        }
    }

    /// The table written to stderr.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "serving skew of {}: {} spine events with served features",
            self.job, self.rows
        );
        let _ = writeln!(
            out,
            "{:<24} {:>8} {:>8} {:>10} {:>9} {:>12} {:>8} {:>8}   mismatches by staleness ({})",
            "feature",
            "compared",
            "missing",
            "mismatches",
            "rate",
            "mean |diff|",
            "smape",
            "jaccard",
            STALENESS.join(" / ")
        );
        for f in &self.features {
            let o = &f.overall;
            let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"));
            let stale: Vec<String> = STALENESS
                .iter()
                .map(|b| f.by_staleness.get(*b).map_or(0, |l| l.mismatches).to_string())
                .collect();
            let flag = if self.failed.contains(&f.feature) {
                "  FAIL"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "{:<24} {:>8} {:>8} {:>10} {:>8.2}% {:>12} {:>8} {:>8}   {}{flag}",
                f.feature,
                o.rows - o.served_missing,
                o.served_missing,
                o.mismatches,
                o.mismatch_rate * 100.0,
                opt(o.mean_abs_diff),
                opt(o.mean_smape),
                opt(o.mean_jaccard),
                stale.join(" / ")
            );
        }
        let _ = writeln!(
            out,
            "{:<24} {:>8} {:>8} {:>10} {:>8.2}%",
            "all features",
            self.overall.rows - self.overall.served_missing,
            self.overall.served_missing,
            self.overall.mismatches,
            self.overall.mismatch_rate * 100.0
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_agree_by_section_10s_rule() {
        assert!(agree(&json!(null), &json!(null)));
        assert!(agree(&json!(1e12), &json!(1e12 + 1e-4)));
        assert!(!agree(&json!(1.0), &json!(1.001)));
        assert!(agree(&json!(0.0), &json!(1e-10)));
        assert!(!agree(&json!("5"), &json!(5)));
        assert!(agree(&json!([["a", 1.0]]), &json!([["a", 1.0 + 1e-12]])));
        assert!(!agree(&json!([["a", 1.0]]), &json!([["b", 1.0]])));
        assert!(!agree(&json!(null), &json!(0)));
    }

    #[test]
    fn comparisons_count_missing_mismatches_and_distances() {
        let missing = compare(None, &json!(3));
        assert_eq!(
            (missing.rows, missing.served_missing, missing.mismatches),
            (1, 1, 0)
        );
        let off = compare(Some(&json!(2.0)), &json!(4.0));
        assert_eq!((off.mismatches, off.numbers), (1, 1));
        assert_eq!(off.abs_diff, 2.0);
        assert!((off.smape - 2.0 / 3.0).abs() < 1e-12);
        let lists = compare(Some(&json!([["a", 1.0], ["b", 0.5]])), &json!([["a", 1.0]]));
        assert_eq!((lists.mismatches, lists.lists), (1, 1));
        assert_eq!(lists.jaccard, 0.5);
    }

    #[test]
    fn staleness_buckets() {
        assert_eq!(staleness_bucket(100.0, Some(99.5)), 0);
        assert_eq!(staleness_bucket(100.0, Some(95.0)), 1);
        assert_eq!(staleness_bucket(100.0, Some(50.0)), 2);
        assert_eq!(staleness_bucket(100.0, Some(10.0)), 3);
        assert_eq!(staleness_bucket(100.0, None), 4);
    }
}
