//! The fold's part of the training export (DESIGN.md section 10): at each applied
//! spine event, the user's features as the view renders them; at each applied
//! outcome, the labels of the user's open rows; rows leave once the frontier has
//! passed `ts + max W`, or at the end of a bounded input.
//!
//! Memory is the open rows only: at most the longest window's worth of spine events.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use compact_str::CompactString;
use hashbrown::HashMap;

use crate::model::event::{Event, Millis, Value, to_millis};
use crate::model::features::{Interner, UserState, render_features};
use crate::model::schema::FieldRef;
use crate::model::training::{ExportSpec, LabelValue, OpenRow, TrainingRow};

/// The open rows of one worker's users.
pub(super) struct Spine {
    /// Open rows by user, oldest first.
    pub(super) open: HashMap<CompactString, Vec<OpenRow>>,
    /// When each spine event's rows may leave: `(deadline, user)`.
    deadlines: BinaryHeap<Reverse<(Millis, CompactString)>>,
    /// The state of a user with no history.
    empty: UserState,
    /// How many rows are open.
    pub(super) rows: usize,
}

fn value(event: &Event, field: FieldRef) -> &Value {
    match field {
        FieldRef::Slot(slot) => &event.values[slot],
        FieldRef::EventTime => &Value::Null,
    }
}

impl Spine {
    pub(super) fn new(empty: UserState) -> Spine {
        Spine {
            open: HashMap::new(),
            deadlines: BinaryHeap::new(),
            empty,
            rows: 0,
        }
    }

    /// When `row`'s labels are final.
    fn deadline(spec: &ExportSpec, ts: f64) -> Millis {
        to_millis(ts + spec.max_window)
    }

    /// Counts an applied event as an outcome of the user's open rows. Rows precede
    /// it: they were opened by events applied before it.
    pub(super) fn outcome(&mut self, spec: &ExportSpec, event: &Event) {
        if !spec.outcome_types[event.event_type as usize] {
            return;
        }
        let Some(rows) = self.open.get_mut(&event.user_id) else {
            return;
        };
        let labels = spec.labels.len();
        for row in rows.iter_mut() {
            let after = event.event_time - row.ts;
            for (l, label) in spec.labels.iter().enumerate() {
                let Some(fields) = &label.per_type[event.event_type as usize] else {
                    continue;
                };
                if event.event_time > row.ts + label.window {
                    continue;
                }
                let amount = match fields.sum.map(|f| value(event, f)) {
                    Some(Value::Num(n)) => *n,
                    _ => 0.0,
                };
                match (fields.matches, &row.items) {
                    (None, items) => {
                        let n = items.as_ref().map_or(1, Vec::len);
                        for r in 0..n {
                            row.labels[r * labels + l].add(after, amount);
                        }
                    }
                    (Some(field), Some(items)) => {
                        let Value::Str(wanted) = value(event, field) else {
                            continue;
                        };
                        for (r, item) in items.iter().enumerate() {
                            if item == wanted {
                                row.labels[r * labels + l].add(after, amount);
                            }
                        }
                    }
                    // A row with no item matches nothing.
                    (Some(_), None) => {}
                }
            }
        }
    }

    /// Opens the rows of an applied spine event, with the features `state` renders.
    pub(super) fn open(
        &mut self,
        spec: &ExportSpec,
        features: &crate::model::features::FeatureSpec,
        interner: &Interner,
        state: Option<&UserState>,
        event: &Event,
    ) {
        let rendered: Arc<str> = render_features(features, interner, state.unwrap_or(&self.empty)).into();
        let row_id = match value(event, spec.row_id) {
            Value::Str(s) => s.clone(),
            _ => CompactString::default(),
        };
        let items = spec.explode.map(|f| match value(event, f) {
            Value::List(items) => items.clone(),
            _ => Vec::new(),
        });
        let snapshot = spec.snapshot.and_then(|f| match value(event, f) {
            Value::Json(text) => Some(Arc::from(text.as_str())),
            _ => None,
        });
        let n = items.as_ref().map_or(1, Vec::len);
        let labels = (0..n)
            .flat_map(|_| spec.labels.iter().map(|l| LabelValue::empty(l.func)))
            .collect();
        let carried: Arc<[Value]> = spec.carry.iter().map(|c| value(event, c.field).clone()).collect();
        self.rows += n;
        self.deadlines.push(Reverse((
            Self::deadline(spec, event.event_time),
            event.user_id.clone(),
        )));
        self.open.entry(event.user_id.clone()).or_default().push(OpenRow {
            row_id,
            user_id: event.user_id.clone(),
            ts: event.event_time,
            event_id: event.event_id.clone(),
            carried,
            items,
            features: rendered,
            snapshot,
            labels,
        });
    }

    /// Moves the rows whose deadline is before `frontier` to `out`, complete.
    pub(super) fn close_before(&mut self, spec: &ExportSpec, frontier: Millis, out: &mut Vec<TrainingRow>) {
        while let Some(Reverse((deadline, _))) = self.deadlines.peek()
            && *deadline < frontier
        {
            let Some(Reverse((_, user))) = self.deadlines.pop() else {
                break;
            };
            let Some(rows) = self.open.get_mut(&user) else {
                continue;
            };
            let closed = rows
                .iter()
                .take_while(|r| Self::deadline(spec, r.ts) < frontier)
                .count();
            for row in rows.drain(..closed) {
                self.rows -= row.items.as_ref().map_or(1, Vec::len);
                row.rows(true, out);
            }
            if rows.is_empty() {
                self.open.remove(&user);
            }
        }
    }

    /// Every open row, at the end of a bounded input whose largest event time is
    /// `max_clock`: complete when `ts + max W` is not past it.
    pub(super) fn close_all(
        &mut self,
        spec: &ExportSpec,
        max_clock: Option<f64>,
        out: &mut Vec<TrainingRow>,
    ) {
        self.deadlines.clear();
        self.rows = 0;
        for (_, rows) in self.open.drain() {
            for row in rows {
                let complete = max_clock.is_some_and(|m| row.ts + spec.max_window <= m);
                if complete || !spec.complete_only {
                    row.rows(complete, out);
                }
            }
        }
    }

    /// Takes over rows from a checkpoint.
    pub(super) fn restore(&mut self, spec: &ExportSpec, rows: Vec<OpenRow>) {
        for row in rows {
            self.rows += row.items.as_ref().map_or(1, Vec::len);
            self.deadlines
                .push(Reverse((Self::deadline(spec, row.ts), row.user_id.clone())));
            self.open.entry(row.user_id.clone()).or_default().push(row);
        }
        for open in self.open.values_mut() {
            open.sort_by(|a, b| a.ts.total_cmp(&b.ts).then_with(|| a.event_id.cmp(&b.event_id)));
        }
    }

    /// The open rows, for a checkpoint.
    pub(super) fn all(&self) -> impl Iterator<Item = &OpenRow> {
        self.open.values().flatten()
    }
}
