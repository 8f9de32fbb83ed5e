//! `explain`: every record of one user in the order the fold met it, with its outcome
//! and the features each applied event changed, and the user's view as of a time.
//!
//! The run is the job's own dataflow. Ingest decodes in full only the records that
//! can be the user's (their text holds the user id as a JSON string, or any escape);
//! every other record only moves its partition's clock, which is all lateness needs
//! of it. Its event time is read without a full decode and decoded exactly only
//! when it could move the clock (`dataflow::ingest`). The fold traces the user's
//! events through [`Explaining`]; the outcome of each is read off the fold's own
//! counters, so the trace says what the fold did, not what a second implementation
//! thinks it would do.

use std::sync::Mutex;

use compact_str::CompactString;
use hashbrown::HashMap;
use serde::Serialize;
use serde_json::Value;

use super::lock;
use crate::model::event::{Event, Origin, Position};
use crate::model::view::ViewRecord;

/// What one record of the user came to.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// Applied to the user's state.
    Applied,
    /// A copy of an event id already met; `of` is the copy that won, when this run
    /// read it.
    Duplicate {
        /// Where the winning copy was read.
        of: Option<Origin>,
    },
    /// Behind its partition's clock (or the watermark) by more than the lateness.
    Late {
        /// Seconds behind (partition clock - allowed lateness, or the watermark).
        late_by: Option<f64>,
        /// Dead-lettered (policy `dlq`) rather than dropped.
        dead_lettered: bool,
    },
    /// Dead-lettered before the fold, or by it (a number that would overflow a sum).
    Rejected {
        /// The contract's reason.
        reason: String,
        /// What exactly.
        detail: String,
    },
    /// Its type is one the job does not know.
    Ignored,
}

/// One feature an applied event changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// The feature.
    pub feature: String,
    /// Its value before the event.
    pub old: Value,
    /// Its value after.
    pub new: Value,
}

/// One record of the user.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// What became of it.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// `event_id`, when it could be read.
    pub event_id: Option<String>,
    /// `event_type`, when it could be read.
    pub event_type: Option<String>,
    /// `event_version` as the record says it (payloads of older versions are upcast).
    pub event_version: Option<String>,
    /// `event_time`, when it could be read.
    pub event_time: Option<f64>,
    /// Where it was read.
    pub source: Origin,
    /// Its event time is after the time asked about: the view as of then leaves it out.
    pub after_at: bool,
    /// Features it changed (applied events only).
    pub changes: Vec<Change>,
}

/// What ingest learns of the user's records before the fold sees them.
#[derive(Default)]
struct Trail {
    /// Steps from the fold, in the order it met them.
    steps: Vec<Step>,
    /// Records of the user refused or ignored before the fold, in partition order.
    refused: Vec<Step>,
    /// How far behind the lateness bound each late record of the user was, by position.
    late_by: HashMap<(u64, i64), f64>,
    /// The copy of each event id that won.
    winners: HashMap<CompactString, Origin>,
    /// The user's view just before the first event after the time asked about.
    view_at: Option<Option<ViewRecord>>,
    /// The user's final view.
    final_view: Option<ViewRecord>,
    /// The smallest and largest event time of any record read.
    span: Option<(f64, f64)>,
}

/// One explain run's question, and what its workers gathered.
pub struct Explaining {
    /// The user asked about.
    pub user: CompactString,
    /// The time asked about (event-time seconds); the end when `None`.
    pub at: Option<f64>,
    /// The user id as a JSON string, quotes included.
    needle: memchr::memmem::Finder<'static>,
    trail: Mutex<Trail>,
    /// The Kafka partitions read (those the user's records go to).
    partitions: Mutex<Vec<String>>,
}

/// What an explain run found.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The user asked about.
    pub user_id: String,
    /// The time asked about, if any.
    pub at: Option<f64>,
    /// Every record of the user, in the order the fold met them (records refused
    /// before the fold stand at their event time, or at the end without one).
    pub records: Vec<Step>,
    /// The view as of `at` (the final view without `at`); `None` when the user had
    /// none then.
    pub view: Option<Value>,
    /// The user's final view, when `at` was given.
    pub final_view: Option<Value>,
    /// Records after `at`, which the view as of `at` leaves out.
    pub left_out: usize,
    /// The smallest and largest event time of any record read, any user's.
    pub read_span: Option<(f64, f64)>,
    /// What the run could not see, and where it started reading.
    pub notes: Vec<String>,
}

impl Explaining {
    /// A question about `user`, as of `at` (seconds) or the end.
    pub fn new(user: &str, at: Option<f64>) -> Explaining {
        let needle = serde_json::to_string(user).expect("a string serializes");
        Explaining {
            user: CompactString::from(user),
            at,
            needle: memchr::memmem::Finder::new(needle.as_bytes()).into_owned(),
            trail: Mutex::default(),
            partitions: Mutex::default(),
        }
    }

    /// Notes the Kafka partitions the run reads.
    pub fn reading(&self, partitions: Vec<String>) {
        *lock(&self.partitions) = partitions;
    }

    /// The Kafka partitions the run read.
    pub fn partitions(&self) -> Vec<String> {
        lock(&self.partitions).clone()
    }

    /// Whether a record's text can be the user's: it holds the user id as a JSON
    /// string, or an escape (which could spell it another way).
    pub fn may_hold(&self, bytes: &[u8]) -> bool {
        memchr::memchr(b'\\', bytes).is_some() || self.needle.find(bytes).is_some()
    }

    /// Notes the event times of records read (any user's): `lowest..=highest`.
    pub fn saw(&self, lowest: f64, highest: f64) {
        if lowest > highest {
            return;
        }
        let mut trail = lock(&self.trail);
        trail.span = Some(match trail.span {
            Some((lo, hi)) => (lo.min(lowest), hi.max(highest)),
            None => (lowest, highest),
        });
    }

    /// Notes how far a late record of the user was behind the lateness bound.
    pub fn late(&self, position: Position, late_by: f64) {
        lock(&self.trail)
            .late_by
            .insert((position.partition, position.offset), late_by);
    }

    /// A record refused before the fold (or of a type the job does not know): kept
    /// when its text parses and its `user_id` is the user.
    pub fn refused(&self, bytes: &[u8], origin: Origin, outcome: Outcome) {
        let Ok(Value::Object(record)) = serde_json::from_slice::<Value>(bytes) else {
            return;
        };
        if record.get("user_id").and_then(Value::as_str) != Some(self.user.as_str()) {
            return;
        }
        let text = |key: &str| record.get(key).and_then(Value::as_str).map(str::to_owned);
        let event_time = record.get("event_time").and_then(Value::as_f64);
        let step = Step {
            outcome,
            event_id: text("event_id"),
            event_type: text("event_type"),
            event_version: text("event_version"),
            event_time,
            source: origin,
            after_at: self.after(event_time),
            changes: Vec::new(),
        };
        lock(&self.trail).refused.push(step);
    }

    fn after(&self, event_time: Option<f64>) -> bool {
        matches!((self.at, event_time), (Some(at), Some(t)) if t > at)
    }

    /// Whether the view as of the time asked about is still to be taken before an
    /// event at `event_time` is applied.
    pub fn wants_view_before(&self, event_time: f64) -> bool {
        self.at.is_some_and(|at| event_time > at) && lock(&self.trail).view_at.is_none()
    }

    /// The user's view as of the time asked about (`None`: it had none).
    pub fn view_at(&self, view: Option<ViewRecord>) {
        lock(&self.trail).view_at.get_or_insert(view);
    }

    /// The user's final view.
    pub fn final_view(&self, view: ViewRecord) {
        if view.user_id == self.user {
            lock(&self.trail).final_view = Some(view);
        }
    }

    /// The fold met one of the user's events: what it did, and the user's features
    /// (as JSON objects) before and after.
    pub fn met(&self, event: &Event, outcome: Outcome, before: &str, after: &str, type_name: &str) {
        let record = event.late_record.as_ref();
        let mut trail = lock(&self.trail);
        let outcome = match outcome {
            Outcome::Duplicate { .. } => Outcome::Duplicate {
                of: trail.winners.get(&event.event_id).cloned(),
            },
            Outcome::Late { dead_lettered, .. } => Outcome::Late {
                late_by: trail
                    .late_by
                    .get(&(event.position.partition, event.position.offset))
                    .copied(),
                dead_lettered,
            },
            other => other,
        };
        let source = record.map(|r| r.origin.clone()).unwrap_or_else(|| Origin {
            topic: String::new(),
            partition: None,
            offset: event.position.offset,
            key: None,
            broker_timestamp_ms: None,
        });
        if matches!(outcome, Outcome::Applied | Outcome::Late { .. }) {
            trail
                .winners
                .entry(event.event_id.clone())
                .or_insert_with(|| source.clone());
        }
        let event_version = record.and_then(|r| {
            serde_json::from_str::<Value>(&r.text)
                .ok()?
                .get("event_version")?
                .as_str()
                .map(str::to_owned)
        });
        trail.steps.push(Step {
            changes: if outcome == Outcome::Applied {
                changes(before, after)
            } else {
                Vec::new()
            },
            outcome,
            event_id: Some(event.event_id.to_string()),
            event_type: Some(type_name.to_owned()),
            event_version,
            event_time: Some(event.event_time),
            source,
            after_at: self.after(Some(event.event_time)),
        });
    }

    /// Everything gathered, once the run is over.
    pub fn explanation(&self) -> Explanation {
        let mut trail = lock(&self.trail);
        let trail = std::mem::take(&mut *trail);
        let mut records = trail.steps;
        // Records refused before the fold stand at their event time among the others
        // (workers report them in no particular order between partitions).
        let mut refused = trail.refused;
        refused.sort_by(|a, b| {
            let time = |s: &Step| s.event_time.unwrap_or(f64::INFINITY);
            time(a)
                .total_cmp(&time(b))
                .then_with(|| a.source.topic.cmp(&b.source.topic))
                .then_with(|| a.source.partition.cmp(&b.source.partition))
                .then_with(|| a.source.offset.cmp(&b.source.offset))
        });
        for step in refused {
            let at = match step.event_time {
                Some(t) => records
                    .iter()
                    .position(|s| s.event_time.is_some_and(|u| u > t))
                    .unwrap_or(records.len()),
                None => records.len(),
            };
            records.insert(at, step);
        }
        let json =
            |view: &ViewRecord| -> Value { serde_json::from_str(&view.to_json()).expect("a view is JSON") };
        let final_view = trail.final_view.as_ref().map(json);
        let (view, final_view) = match (self.at, trail.view_at) {
            (None, _) => (final_view, None),
            (Some(_), None) => (final_view.clone(), final_view),
            (Some(at), Some(view)) => (
                view.map(|mut v| {
                    v.as_of = at;
                    json(&v)
                }),
                final_view,
            ),
        };
        Explanation {
            user_id: self.user.to_string(),
            at: self.at,
            left_out: records.iter().filter(|s| s.after_at).count(),
            records,
            view,
            final_view,
            read_span: trail.span,
            notes: Vec::new(),
        }
    }
}

/// The features that differ between two features objects, in the second's order.
fn changes(before: &str, after: &str) -> Vec<Change> {
    let parse = |text: &str| match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let (before, after) = (parse(before), parse(after));
    after
        .into_iter()
        .filter_map(|(feature, new)| {
            let old = before.get(&feature).cloned().unwrap_or(Value::Null);
            (old != new).then_some(Change { feature, old, new })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_records_that_can_name_the_user_are_decoded() {
        let explaining = Explaining::new("u1", None);
        assert!(explaining.may_hold(br#"{"user_id":"u1"}"#));
        assert!(!explaining.may_hold(br#"{"user_id":"u10"}"#));
        assert!(explaining.may_hold(br#"{"user_id":"\u0075\u0031"}"#));
        let changes = changes(r#"{"a":1,"b":[1]}"#, r#"{"a":1,"b":[1,2],"c":null}"#);
        assert_eq!(
            changes,
            [Change {
                feature: "b".into(),
                old: serde_json::json!([1]),
                new: serde_json::json!([1, 2]),
            }]
        );
    }
}
