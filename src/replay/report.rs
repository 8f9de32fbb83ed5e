//! The diff report: per feature, the users whose values differ beyond the tolerance,
//! by how much, example users and a breakdown by user activity; users and features
//! only one side has. As JSON, a table for stderr, and a self-contained HTML page.

use std::fmt::Write;

use hashbrown::HashMap;
use serde::Serialize;
use serde_json::Value;

use super::compare::{Compared, Differing};
use crate::skew::html::{escape, page_head};

/// Users with at most this many accepted records fall in each activity bucket (the
/// last is unbounded).
const ACTIVITY: [(u64, &str); 5] = [
    (1, "1"),
    (9, "2-9"),
    (99, "10-99"),
    (999, "100-999"),
    (u64::MAX, "1000+"),
];

/// Examples kept per feature and per list of users.
const EXAMPLES: usize = 5;

/// How values are compared.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Numbers agree within this (absolute); without it, within
    /// `1e-9 * max(1, |a|, |b|)` as the skew report compares.
    pub tolerance: Option<f64>,
    /// Features whose differences do not fail the diff.
    pub allow: Vec<String>,
}

impl Rules {
    fn numbers_agree(&self, a: f64, b: f64) -> bool {
        match self.tolerance {
            Some(t) => (a - b).abs() <= t,
            None => crate::skew::numbers_agree(a, b),
        }
    }

    /// Whether two values agree: numbers within the tolerance, lists element by
    /// element, everything else exactly.
    pub fn agree(&self, a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => self.numbers_agree(x, y),
                _ => false,
            },
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(x, y)| self.agree(x, y))
            }
            _ => a == b,
        }
    }
}

/// The largest difference between the numbers of two values of the same shape
/// (numbers, or lists of them and of `[key, score]` pairs with the same keys);
/// `None` when their shapes differ.
fn numeric_gap(a: &Value, b: &Value) -> Option<f64> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => Some((x.as_f64()? - y.as_f64()?).abs()),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .map(|(x, y)| numeric_gap(x, y))
            .try_fold(0.0f64, |m, g| g.map(|g| m.max(g))),
        (x, y) if x == y => Some(0.0),
        _ => None,
    }
}

/// Users of one activity bucket.
#[derive(Debug, Clone, Serialize)]
pub struct Activity {
    /// Accepted records per user, e.g. `10-99`.
    pub records: &'static str,
    /// Users compared in the bucket.
    pub users: u64,
    /// Of them, users whose value of the feature differs.
    pub differing: u64,
}

/// One user's two values.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    /// The user.
    pub user_id: String,
    /// The first side's value.
    pub a: Value,
    /// The second side's value.
    pub b: Value,
}

/// How one feature differs.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureDiff {
    /// The feature.
    pub feature: String,
    /// Users whose values differ beyond the tolerance.
    pub users_differing: u64,
    /// Users whose values differ within it.
    pub within_tolerance: u64,
    /// Of the differing users, the largest absolute difference of their numbers
    /// (values of the same shape only).
    pub max_abs_diff: Option<f64>,
    /// Their mean absolute difference.
    pub mean_abs_diff: Option<f64>,
    /// Differing values of a different shape (another key in a list, a null).
    pub shape_differs: u64,
    /// Some differing users.
    pub examples: Vec<Example>,
    /// Differing users by activity, when the sides were folded from a log.
    pub by_activity: Vec<Activity>,
    /// Differences here do not fail the diff (`--allow`).
    pub allowed: bool,
}

/// The users only one side has.
#[derive(Debug, Clone, Serialize)]
pub struct Lonely {
    /// How many.
    pub users: usize,
    /// Some of them.
    pub examples: Vec<String>,
}

/// What differs between two sides.
#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    /// The first side.
    pub a: String,
    /// The second side.
    pub b: String,
    /// Users of each side.
    pub users_a: usize,
    /// Users of the second side.
    pub users_b: usize,
    /// Users only the first side has.
    pub only_in_a: Lonely,
    /// Users only the second side has.
    pub only_in_b: Lonely,
    /// Features only the second side has.
    pub added_features: Vec<String>,
    /// Features only the first side has.
    pub removed_features: Vec<String>,
    /// Features both have.
    pub features: Vec<FeatureDiff>,
    /// The absolute tolerance, when one was given.
    pub tolerance: Option<f64>,
    /// Features that differ beyond the tolerance and are not allowed to: the diff
    /// fails when there is one.
    pub failed: Vec<String>,
    /// What the reader should know: how the sides were made, what was not a view.
    pub notes: Vec<String>,
}

fn lonely(users: &[compact_str::CompactString]) -> Lonely {
    Lonely {
        users: users.len(),
        examples: users.iter().take(EXAMPLES).map(|u| u.to_string()).collect(),
    }
}

impl DiffReport {
    /// The report of `compared` under `rules`; `activity` (accepted records per user)
    /// adds the breakdown.
    pub fn new(
        a: String,
        b: String,
        compared: &Compared,
        rules: &Rules,
        activity: Option<&HashMap<compact_str::CompactString, u64>>,
    ) -> DiffReport {
        let bucket = |records: u64| ACTIVITY.iter().position(|&(max, _)| records <= max).unwrap_or(0);
        let mut compared_per_bucket = [0u64; ACTIVITY.len()];
        if let Some(activity) = activity {
            for &n in activity.values() {
                compared_per_bucket[bucket(n)] += 1;
            }
        }
        let features = compared
            .differing
            .iter()
            .map(|(feature, users)| {
                let beyond: Vec<&Differing> = users.iter().filter(|d| !rules.agree(&d.a, &d.b)).collect();
                let gaps: Vec<f64> = beyond.iter().filter_map(|d| numeric_gap(&d.a, &d.b)).collect();
                let by_activity = activity.map_or_else(Vec::new, |activity| {
                    let mut differing = [0u64; ACTIVITY.len()];
                    for d in &beyond {
                        differing[bucket(activity.get(&d.user_id).copied().unwrap_or(0))] += 1;
                    }
                    ACTIVITY
                        .iter()
                        .enumerate()
                        .map(|(i, &(_, records))| Activity {
                            records,
                            users: compared_per_bucket[i],
                            differing: differing[i],
                        })
                        .collect()
                });
                FeatureDiff {
                    feature: feature.clone(),
                    users_differing: beyond.len() as u64,
                    within_tolerance: (users.len() - beyond.len()) as u64,
                    max_abs_diff: gaps.iter().copied().reduce(f64::max),
                    mean_abs_diff: (!gaps.is_empty()).then(|| gaps.iter().sum::<f64>() / gaps.len() as f64),
                    shape_differs: (beyond.len() - gaps.len()) as u64,
                    examples: beyond
                        .iter()
                        .take(EXAMPLES)
                        .map(|d| Example {
                            user_id: d.user_id.to_string(),
                            a: d.a.clone(),
                            b: d.b.clone(),
                        })
                        .collect(),
                    by_activity,
                    allowed: rules.allow.contains(feature),
                }
            })
            .collect::<Vec<_>>();
        let failed = features
            .iter()
            .filter(|f| f.users_differing > 0 && !f.allowed)
            .map(|f| f.feature.clone())
            .collect();
        let only = |of: &[String], not_in: &[String]| -> Vec<String> {
            of.iter().filter(|f| !not_in.contains(f)).cloned().collect()
        };
        let mut notes = Vec::new();
        for (side, users) in [(&a, &compared.unreadable.0), (&b, &compared.unreadable.1)] {
            if !users.is_empty() {
                notes.push(format!(
                    "{side}: {} users' features are not a JSON object, left out",
                    users.len()
                ));
            }
        }
        DiffReport {
            users_a: compared.users.0,
            users_b: compared.users.1,
            only_in_a: lonely(&compared.only_a),
            only_in_b: lonely(&compared.only_b),
            added_features: only(&compared.features_b, &compared.features_a),
            removed_features: only(&compared.features_a, &compared.features_b),
            features,
            tolerance: rules.tolerance,
            failed,
            notes,
            a,
            b,
        }
    }

    /// Whether nothing differs at all.
    pub fn identical(&self) -> bool {
        self.only_in_a.users == 0
            && self.only_in_b.users == 0
            && self.added_features.is_empty()
            && self.removed_features.is_empty()
            && self.features.iter().all(|f| f.users_differing == 0)
    }

    /// The table for stderr.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "A: {} ({} users)", self.a, self.users_a);
        let _ = writeln!(out, "B: {} ({} users)", self.b, self.users_b);
        let _ = writeln!(
            out,
            "users only in A: {}   only in B: {}",
            self.only_in_a.users, self.only_in_b.users
        );
        for (what, list) in [
            ("added", &self.added_features),
            ("removed", &self.removed_features),
        ] {
            if !list.is_empty() {
                let _ = writeln!(out, "features {what} in B: {}", list.join(", "));
            }
        }
        let _ = writeln!(
            out,
            "{:<22} {:>10} {:>10} {:>14} {:>14}  examples",
            "feature", "differing", "within tol", "max |a-b|", "mean |a-b|"
        );
        let number = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.6}"));
        for f in &self.features {
            let mark = match (f.users_differing > 0, f.allowed) {
                (true, true) => " (allowed)",
                (true, false) => " *",
                _ => "",
            };
            let examples: Vec<&str> = f.examples.iter().map(|e| e.user_id.as_str()).collect();
            let _ = writeln!(
                out,
                "{:<22} {:>10} {:>10} {:>14} {:>14}  {}{mark}",
                f.feature,
                f.users_differing,
                f.within_tolerance,
                number(f.max_abs_diff),
                number(f.mean_abs_diff),
                examples.join(" ")
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }

    /// The self-contained HTML page.
    pub fn html(&self) -> String {
        let mut out = page_head(&format!("skewless: diff of {} and {}", self.a, self.b));
        let _ = write!(
            out,
            "<h1>Views compared</h1><p>A: <code>{}</code> ({} users)<br>B: <code>{}</code> ({} users)<br>\
             users only in A: {} {}<br>users only in B: {} {}</p>",
            escape(&self.a),
            self.users_a,
            escape(&self.b),
            self.users_b,
            self.only_in_a.users,
            escape(&self.only_in_a.examples.join(" ")),
            self.only_in_b.users,
            escape(&self.only_in_b.examples.join(" ")),
        );
        for (what, list) in [
            ("added", &self.added_features),
            ("removed", &self.removed_features),
        ] {
            if !list.is_empty() {
                let _ = write!(out, "<p>Features {what} in B: {}</p>", escape(&list.join(", ")));
            }
        }
        out.push_str(
            "<table><tr><th>feature</th><th>differing users</th><th>within tolerance</th>\
             <th>max |a-b|</th><th>mean |a-b|</th><th>other shape</th></tr>",
        );
        let number = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.6}"));
        for f in &self.features {
            let class = if self.failed.contains(&f.feature) {
                " class=\"fail\""
            } else {
                ""
            };
            let _ = write!(
                out,
                "<tr{class}><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&f.feature),
                if f.allowed { " (allowed)" } else { "" },
                f.users_differing,
                f.within_tolerance,
                number(f.max_abs_diff),
                number(f.mean_abs_diff),
                f.shape_differs
            );
        }
        out.push_str("</table>");
        for f in self.features.iter().filter(|f| f.users_differing > 0) {
            let _ = write!(out, "<h2>{}</h2>", escape(&f.feature));
            if !f.by_activity.is_empty() {
                out.push_str(
                    "<table><tr><th>records per user</th><th>users</th><th>differing</th><th>share</th></tr>",
                );
                for a in &f.by_activity {
                    let share = if a.users > 0 {
                        a.differing as f64 / a.users as f64
                    } else {
                        0.0
                    };
                    let _ = write!(
                        out,
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.2}%</td></tr>",
                        a.records,
                        a.users,
                        a.differing,
                        share * 100.0
                    );
                }
                out.push_str("</table>");
            }
            out.push_str("<table><tr><th>user</th><th>A</th><th>B</th></tr>");
            for e in &f.examples {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
                    escape(&e.user_id),
                    escape(&e.a.to_string()),
                    escape(&e.b.to_string())
                );
            }
            out.push_str("</table>");
        }
        for note in &self.notes {
            let _ = write!(out, "<p>{}</p>", escape(note));
        }
        out.push_str("</body></html>\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_agree_within_the_tolerance_and_gaps_need_the_same_shape() {
        let strict = Rules::default();
        let loose = Rules {
            tolerance: Some(0.01),
            allow: Vec::new(),
        };
        let (a, b) = (json!([["x", 0.3], ["y", 1.0]]), json!([["x", 0.305], ["y", 1.0]]));
        assert!(!strict.agree(&a, &b));
        assert!(loose.agree(&a, &b));
        assert!((numeric_gap(&a, &b).unwrap() - 0.005).abs() < 1e-12);
        assert_eq!(numeric_gap(&json!([["x", 1]]), &json!([["z", 1]])), None);
        assert_eq!(numeric_gap(&json!(null), &json!(2)), None);
        assert!(strict.agree(&json!(1.0), &json!(1.0 + 1e-12)));
    }
}
