//! The serving-skew report (DESIGN.md section 10): for every spine event that
//! carried the features the server used, each feature's served value against the
//! one a replay computes, counted by feature, model version, UTC hour and serving
//! staleness; the JSON report, the stderr table and the gate.

pub mod html;
pub mod sum;

use std::collections::BTreeMap;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::model::features::FeatureValue;
use crate::model::served::Served;
use crate::model::training::{ExportSpec, SpineRows};
use crate::skew::sum::ExactSum;

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
    /// The carried model version ("" when the export carries none); inline up to
    /// 24 bytes, so keying a row's comparisons allocates nothing.
    pub model_version: CompactString,
    /// The UTC hour of `ts`, in hours since the epoch.
    pub hour: i64,
    /// The staleness bucket (index into [`STALENESS`]).
    pub staleness: u8,
}

/// Counters of one key: a commutative monoid, so they add up to the same counters in
/// any order (the sums are exact, see [`ExactSum`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SkewStats {
    /// Spine events with a snapshot.
    pub rows: i64,
    /// Of them, those whose snapshot lacks the feature.
    pub served_missing: i64,
    /// Of the others, those whose served value differs.
    pub mismatches: i64,
    /// Comparisons of two numbers.
    pub numbers: i64,
    /// Comparisons of two lists.
    pub lists: i64,
    /// Sum of the numbers' absolute differences.
    pub abs_diff: ExactSum,
    /// Sum of their SMAPE.
    pub smape: ExactSum,
    /// Sum of the lists' Jaccard overlaps.
    pub jaccard: ExactSum,
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
        self.lists += rhs.lists;
        self.abs_diff.add(&rhs.abs_diff);
        self.smape.add(&rhs.smape);
        self.jaccard.add(&rhs.jaccard);
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

/// Whether a served number agrees with a computed one that JSON would write as
/// `x` (`null` when it is not finite).
fn number_agrees(served: &Json, x: f64) -> bool {
    match served {
        Json::Number(a) if x.is_finite() => a.as_f64().is_some_and(|a| numbers_agree(a, x)),
        Json::Null => !x.is_finite(),
        _ => false,
    }
}

/// Whether a served `[key, score]` pair equals a computed one.
fn pair_agrees(served: &Json, key: &str, score: f64) -> bool {
    match served.as_array().map(Vec::as_slice) {
        Some([Json::String(k), s]) => k == key && number_agrees(s, score),
        _ => false,
    }
}

/// Whether a served value equals the recomputed one (section 10's rule), compared
/// as the view writes the computed one.
pub fn agree(served: &Served, computed: &FeatureValue) -> bool {
    // `top_k` pairs and strings are compared where they are, without building their
    // JSON; everything else by the JSON rule (a number or bool's JSON costs nothing).
    match (served, computed) {
        (Served::Str(a), FeatureValue::Str(b)) => a == b,
        (Served::Pairs(a), FeatureValue::TopK(b)) => {
            a.len() == b.len()
                && a.iter().zip(b).all(|((k, s), (key, score))| {
                    k == key && score.is_finite() && s.as_f64().is_some_and(|s| numbers_agree(s, *score))
                })
        }
        _ => agree_json(&served.to_json(), computed),
    }
}

/// [`agree`] over the served value's JSON.
fn agree_json(served: &Json, computed: &FeatureValue) -> bool {
    match (served, computed) {
        (Json::Null, c) => c.is_null(),
        (_, FeatureValue::Num(x)) => number_agrees(served, *x),
        (Json::Number(_), FeatureValue::UInt(n)) => number_agrees(served, *n as f64),
        (Json::String(a), FeatureValue::Str(b)) => a == b,
        (Json::Bool(a), FeatureValue::Bool(b)) => a == b,
        (Json::Array(a), FeatureValue::List(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.as_str() == Some(y.as_str()))
        }
        (Json::Array(a), FeatureValue::TopK(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(x, (key, score))| pair_agrees(x, key, *score))
        }
        (Json::Object(a), FeatureValue::Scores(b)) => {
            a.len() == b.len()
                && b.iter()
                    .all(|(group, score)| a.get(group.as_str()).is_some_and(|v| number_agrees(v, *score)))
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

/// Sorted and distinct.
fn distinct(mut members: Vec<Member<'_>>) -> Vec<Member<'_>> {
    members.sort_unstable();
    members.dedup();
    members
}

/// A served list's elements for the Jaccard overlap: a `[key, score]` pair counts as
/// its key; `None` when the value is not a list.
fn members(served: &Served) -> Option<Vec<Member<'_>>> {
    let list = match served {
        Served::Pairs(pairs) => return Some(distinct(pairs.iter().map(|(k, _)| Member::Str(k)).collect())),
        Served::Other(Json::Array(list)) => list,
        _ => return None,
    };
    Some(distinct(
        list.iter()
            .map(|item| match item {
                Json::Array(pair) if !pair.is_empty() => &pair[0],
                other => other,
            })
            .map(|value| match value {
                Json::String(s) => Member::Str(s),
                other => Member::Text(other.to_string()),
            })
            .collect(),
    ))
}

/// A computed list's elements, likewise; `None` when the value is not a list.
fn computed_members(value: &FeatureValue) -> Option<Vec<Member<'_>>> {
    match value {
        FeatureValue::List(items) => Some(distinct(items.iter().map(|s| Member::Str(s)).collect())),
        FeatureValue::TopK(pairs) => Some(distinct(pairs.iter().map(|(k, _)| Member::Str(k)).collect())),
        _ => None,
    }
}

/// The counters one comparison adds.
pub fn compare(served: Option<&Served>, computed: &FeatureValue) -> SkewStats {
    let mut stats = SkewStats {
        rows: 1,
        ..SkewStats::default()
    };
    let Some(served) = served else {
        stats.served_missing = 1;
        return stats;
    };
    stats.mismatches = i64::from(!agree(served, computed));
    if let (Served::Number(a), Some(b)) = (served, computed.number()) {
        if let Some(a) = a.as_f64() {
            stats.numbers = 1;
            stats.abs_diff = ExactSum::of((a - b).abs());
            let scale = (a.abs() + b.abs()) / 2.0;
            stats.smape = ExactSum::of(if scale > 0.0 { (a - b).abs() / scale } else { 0.0 });
        }
    } else if let (Some(a), Some(b)) = (members(served), computed_members(computed)) {
        let both = a.iter().filter(|m| b.binary_search(m).is_ok()).count();
        let union = a.len() + b.len() - both;
        stats.lists = 1;
        stats.jaccard = ExactSum::of(if union == 0 {
            1.0
        } else {
            both as f64 / union as f64
        });
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
            crate::model::event::Value::Str(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let (ts, hour) = (row.ts, (row.ts / 3600.0).floor() as i64);
    spine.parsed(features);
    let parsed = spine.parsed.as_deref().expect("parsed above");
    let staleness = staleness_bucket(ts, parsed.served_as_of);
    parsed
        .served
        .iter()
        .zip(spine.spine.features.iter())
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
    /// What the server used, as JSON text.
    pub served: String,
    /// What the replay computed, as JSON text.
    pub computed: String,
}

/// The order examples are chosen in: the earliest spine event first, ties by
/// feature, row, user and values, so the same log gives the same examples whatever
/// the number of workers, the order their rows close in, or a resume.
fn by_time(a: &Example, b: &Example) -> std::cmp::Ordering {
    a.ts.total_cmp(&b.ts).then_with(|| {
        (&a.feature, &a.row_id, &a.user_id, &a.served, &a.computed).cmp(&(
            &b.feature,
            &b.row_id,
            &b.user_id,
            &b.served,
            &b.computed,
        ))
    })
}

/// Up to this many example mismatches are kept per feature, for the HTML report.
pub const EXAMPLES_PER_FEATURE: usize = 5;

/// Each feature's first [`EXAMPLES_PER_FEATURE`] mismatches in event time: the
/// examples the HTML report shows. Each worker keeps its own and worker 0 merges
/// them (the first of all are among the first of each worker's).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Examples(Vec<Example>);

impl Examples {
    /// Where the `n`th kept example of `feature` (from 0) is.
    fn nth_of(&self, feature: &str, n: usize) -> Option<usize> {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, e)| e.feature == feature)
            .nth(n)
            .map(|(i, _)| i)
    }

    /// The latest time a mismatch of `feature` can have and still be kept: the time
    /// of its last example once it has all of them (a tie is kept or not by
    /// [`Examples::keep`]), else infinite.
    pub fn bound(&self, feature: &str) -> f64 {
        self.nth_of(feature, EXAMPLES_PER_FEATURE - 1)
            .map_or(f64::INFINITY, |i| self.0[i].ts)
    }

    /// Keeps `example` if it is among its feature's first; true if it was kept.
    pub fn keep(&mut self, example: Example) -> bool {
        let Err(at) = self.0.binary_search_by(|e| by_time(e, &example)) else {
            return false;
        };
        self.0.insert(at, example);
        match self.nth_of(&self.0[at].feature, EXAMPLES_PER_FEATURE) {
            Some(beyond) => {
                self.0.remove(beyond);
                beyond != at
            }
            None => true,
        }
    }

    /// Every kept example, earliest first.
    pub fn all(&self) -> &[Example] {
        &self.0
    }
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
        let mean = |sum: ExactSum, n: i64| (n > 0).then(|| sum.to_f64() / n as f64);
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
                    .entry(key.model_version.to_string())
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

    fn served(value: Json) -> Served {
        Served::from(value)
    }

    #[test]
    fn values_agree_by_section_10s_rule() {
        use FeatureValue as V;
        let top = |pairs: &[(&str, f64)]| V::TopK(pairs.iter().map(|(k, s)| ((*k).into(), *s)).collect());
        assert!(agree(&served(json!(null)), &V::Null));
        assert!(agree(&served(json!(null)), &V::Num(f64::INFINITY)));
        assert!(agree(&served(json!(1e12)), &V::Num(1e12 + 1e-4)));
        assert!(!agree(&served(json!(1.0)), &V::Num(1.001)));
        assert!(agree(&served(json!(0.0)), &V::Num(1e-10)));
        assert!(agree(&served(json!(3)), &V::UInt(3)));
        assert!(!agree(&served(json!("5")), &V::UInt(5)));
        assert!(!agree(&served(json!("5")), &V::Num(5.0)));
        assert!(agree(&served(json!("a")), &V::Str("a".into())));
        assert!(agree(&served(json!(true)), &V::Bool(true)));
        assert!(!agree(&served(json!(1)), &V::Bool(true)));
        assert!(agree(&served(json!([["a", 1.0]])), &top(&[("a", 1.0 + 1e-12)])));
        assert!(!agree(&served(json!([["a", 1.0]])), &top(&[("b", 1.0)])));
        assert!(!agree(
            &served(json!([["a", 1.0], ["b", 2.0]])),
            &top(&[("a", 1.0)])
        ));
        assert!(!agree(&served(json!(["a"])), &top(&[("a", 1.0)])));
        assert!(agree(
            &served(json!(["x", "y"])),
            &V::List(vec!["x".into(), "y".into()])
        ));
        assert!(!agree(
            &served(json!(["y", "x"])),
            &V::List(vec!["x".into(), "y".into()])
        ));
        let scores = V::Scores(vec![("a".into(), 1.0), ("b".into(), 2.0)]);
        assert!(agree(&served(json!({"b": 2.0, "a": 1.0})), &scores));
        assert!(!agree(&served(json!({"a": 1.0})), &scores));
        assert!(!agree(&served(json!({"a": 1.0, "c": 2.0})), &scores));
        assert!(!agree(&served(json!(null)), &V::UInt(0)));
    }

    #[test]
    fn comparisons_count_missing_mismatches_and_distances() {
        let missing = compare(None, &FeatureValue::UInt(3));
        assert_eq!(
            (missing.rows, missing.served_missing, missing.mismatches),
            (1, 1, 0)
        );
        let off = compare(Some(&served(json!(2.0))), &FeatureValue::Num(4.0));
        assert_eq!((off.mismatches, off.numbers), (1, 1));
        assert_eq!(off.abs_diff.to_f64(), 2.0);
        assert_eq!(off.smape.to_f64(), 2.0 / 3.0);
        let lists = compare(
            Some(&served(json!([["a", 1.0], ["b", 0.5]]))),
            &FeatureValue::TopK(vec![("a".into(), 1.0)]),
        );
        assert_eq!((lists.mismatches, lists.lists), (1, 1));
        assert_eq!(lists.jaccard.to_f64(), 0.5);
        let ids = compare(
            Some(&served(json!(["a", 1]))),
            &FeatureValue::List(vec!["a".into(), "1".into()]),
        );
        assert_eq!((ids.mismatches, ids.lists), (1, 1));
        assert_eq!(ids.jaccard.to_f64(), 1.0 / 3.0);
    }

    proptest::proptest! {
        /// The typed comparison is the JSON rule: for served values of every shape
        /// (pairs, numbers near the computed ones, strings, lists, objects) against
        /// computed values of every kind, the verdict and the counters are those of
        /// the served value's JSON.
        #[test]
        fn typed_comparison_is_the_json_rule(
            pairs in proptest::collection::vec(("[ab]", 0u8..3), 0..3),
            number in proptest::prop_oneof![
                proptest::strategy::Just(1.0f64),
                proptest::strategy::Just(1.0 + 1e-12),
                proptest::strategy::Just(2.0),
                proptest::strategy::Just(f64::INFINITY),
            ],
            shape in 0usize..9,
            kind in 0usize..8,
        ) {
            use FeatureValue as V;
            let score = |n: u8| [1.0, 1.0 + 1e-12, 2.0][n as usize];
            let json_pairs: Vec<Json> = pairs.iter().map(|(k, n)| json!([k, score(*n)])).collect();
            let value = match shape {
                0 => Json::Null,
                1 => json!(1),
                2 => json!(1.0 + 1e-12),
                3 => json!("a"),
                4 => json!(true),
                5 => Json::Array(json_pairs),
                6 => json!(pairs.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()),
                7 => json!(["a", 1]),
                _ => json!({"a": 1.0, "b": 2.0}),
            };
            let computed = match kind {
                0 => V::Null,
                1 => V::UInt(1),
                2 => V::Num(number),
                3 => V::Str("a".into()),
                4 => V::Bool(true),
                5 => V::TopK(pairs.iter().map(|(k, n)| (k.as_str().into(), if *n == 2 { number } else { score(*n) })).collect()),
                6 => V::List(pairs.iter().map(|(k, _)| k.as_str().into()).collect()),
                _ => V::Scores(vec![("a".into(), 1.0), ("b".into(), number)]),
            };
            let typed = served(value.clone());
            proptest::prop_assert_eq!(agree(&typed, &computed), agree_json(&value, &computed));
            // A list of pairs counted as the JSON list it is.
            if let Json::Array(_) = value {
                let by_json = compare(Some(&Served::Other(value.clone())), &computed);
                proptest::prop_assert_eq!(compare(Some(&typed), &computed), by_json);
            }
        }
    }

    proptest::proptest! {
        /// Whatever order the mismatches come in, and however they are dealt to
        /// workers whose kept examples are then merged, each feature's examples are
        /// its first five in time, in time order; and past `bound` is only what `keep`
        /// would not keep.
        #[test]
        fn examples_are_each_features_first_whatever_the_order_and_the_workers(
            mismatches in proptest::collection::vec((0usize..3, 0u8..20, 0u8..4), 0..40),
            order in proptest::collection::vec(0usize..1000, 40),
            workers in 1usize..4,
        ) {
            let example = |&(feature, ts, row): &(usize, u8, u8)| Example {
                feature: ["a", "b", "c"][feature].into(),
                row_id: format!("r{row}"),
                user_id: "u".into(),
                ts: f64::from(ts),
                served: "1".into(),
                computed: "2".into(),
            };
            let mut shuffled: Vec<(usize, &(usize, u8, u8))> =
                mismatches.iter().enumerate().map(|(i, m)| (order[i], m)).collect();
            shuffled.sort_by_key(|(k, _)| *k);
            let mut kept = vec![Examples::default(); workers];
            for (i, (_, m)) in shuffled.iter().enumerate() {
                let worker = &mut kept[i % workers];
                let example = example(m);
                if example.ts > worker.bound(&example.feature) {
                    let was = worker.clone();
                    proptest::prop_assert!(!worker.keep(example));
                    proptest::prop_assert_eq!(&*worker, &was);
                } else {
                    worker.keep(example);
                }
            }
            let mut merged = Examples::default();
            for worker in &kept {
                for e in worker.all() {
                    merged.keep(e.clone());
                }
            }
            let mut expected: Vec<Example> = mismatches.iter().map(example).collect();
            expected.sort_by(by_time);
            expected.dedup();
            let mut per_feature = std::collections::HashMap::new();
            expected.retain(|e| {
                let n = per_feature.entry(e.feature.clone()).or_insert(0);
                *n += 1;
                *n <= EXAMPLES_PER_FEATURE
            });
            proptest::prop_assert_eq!(merged.all(), &expected[..]);
        }
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
